//! A node behind real proxies that speak the PROXY protocol: nginx's stream
//! module (`proxy_protocol on`, v1), HAProxy (`send-proxy`, v1, and
//! `send-proxy-v2`, v2) and chat-balancer (`proxy_protocol=v1|v2`). Clients
//! connect from 127.0.0.2 while every proxy reaches the node from
//! 127.0.0.1 (which the node trusts with `--proxy-protocol-from`), so the
//! node's log shows 127.0.0.2 only if it read the client address from the
//! header. Also: headers split across TCP reads, and garbage, over-long and
//! broken headers from a trusted source, sent straight to the node.
//!
//! nginx, its stream module and HAProxy are Debian packages that
//! `scripts/test.sh` installs; without them these tests fail and say so.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_schema::proxy;
use chat_testkit::{
    BalancerOptions, LocalBalancer, LocalNode, NodeOptions, find_binary, free_port, metric_value,
    scrape,
};
use common::Json;

const WAIT: Duration = Duration::from_secs(10);
/// Where clients connect from; no proxy is there, so only a header can tell
/// the node this address.
const CLIENT_IP: &str = "127.0.0.2";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// Connections each test makes through its front.
const CLIENTS: usize = 3;

/// A node trusting 127.0.0.1 for PROXY headers, its stderr (debug log of
/// `chat_node::session`, no colours) kept in a file.
struct LoggedNode {
    node: LocalNode,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggedNode {
    fn start() -> LoggedNode {
        let dir = tempfile::Builder::new()
            .prefix("chat-proxy-fronts-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("node.log");
        // The harness starts the binary it is given with its flags: a shell
        // wrapper keeps the node's stderr (exec: the pid stays the node's).
        let wrapper = dir.path().join("chat-node");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nNO_COLOR=1 exec '{}' \"$@\" 2>>'{}'\n",
                env!("CARGO_BIN_EXE_chat-node"),
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let node = LocalNode::start(NodeOptions {
            binary: Some(wrapper),
            shards: 1,
            args: vec!["--proxy-protocol-from".into(), "127.0.0.1".into()],
            log: "warn,chat_node::session=debug".into(),
            ..NodeOptions::default()
        })
        .expect("starting chat-node");
        LoggedNode {
            node,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = scrape(self.node.metrics_addr).expect("scraping the node");
        metric_value(&text, name).unwrap_or(0.0)
    }

    fn proxied(&self) -> f64 {
        self.metric("chat_node_proxied_connections_total")
    }

    /// The node's debug line for the PROXY header whose source is `source`.
    fn header_line(&self, source: &str) -> Option<String> {
        let wanted = format!("source=Some({source})");
        self.log()
            .lines()
            .find(|l| l.contains("PROXY header") && l.contains(&wanted))
            .map(str::to_owned)
    }
}

/// A program the test needs, or a failure saying how to get it.
fn need(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file());
    match found {
        Some(path) => path,
        None => panic!(
            "{program} not found (PATH, /usr/sbin): run scripts/test.sh, which installs nginx, \
             libnginx-mod-stream and haproxy from Debian (or: apt-get install -y nginx \
             libnginx-mod-stream haproxy)"
        ),
    }
}

/// An nginx or HAProxy process in a temporary directory, killed when dropped.
struct Front {
    name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
}

impl Front {
    fn log(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "log") {
                all += &std::fs::read_to_string(entry.path()).unwrap_or_default();
            }
        }
        all
    }
}

/// A proxy process in front of the node.
trait Proxy {
    fn name(&self) -> &str;
    /// Its exit status, once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus>;
    fn output(&self) -> String;
}

impl Proxy for Front {
    fn name(&self) -> &str {
        self.name
    }
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    fn output(&self) -> String {
        self.log()
    }
}

impl Proxy for LocalBalancer {
    fn name(&self) -> &str {
        "chat-balancer"
    }
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.try_wait()
    }
    fn output(&self) -> String {
        self.log()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn new_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("chat-{name}-"))
        .tempdir()
        .unwrap()
}

fn output_to(dir: &Path) -> (Stdio, Stdio) {
    let out = std::fs::File::create(dir.join("output.log")).unwrap();
    (Stdio::from(out.try_clone().unwrap()), Stdio::from(out))
}

/// nginx's stream module on `listen`, relaying to `node` with
/// `proxy_protocol on`.
fn nginx(listen: SocketAddr, node: SocketAddr) -> Front {
    let nginx = need("nginx");
    assert!(
        Path::new(STREAM_MODULE).is_file(),
        "{STREAM_MODULE} not found: run scripts/test.sh, which installs libnginx-mod-stream \
         (or: apt-get install -y libnginx-mod-stream)"
    );
    let dir = new_dir("nginx");
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {STREAM_MODULE};\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             stream {{\n\
             \x20   server {{\n\
             \x20       listen {listen};\n\
             \x20       proxy_pass {node};\n\
             \x20       proxy_protocol on;\n\
             \x20   }}\n\
             }}\n"
        ),
    )
    .unwrap();
    let (out, err) = output_to(dir.path());
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("starting nginx");
    Front {
        name: "nginx",
        child,
        dir,
    }
}

/// HAProxy in TCP mode on `listen`, relaying to `node` with `send_proxy`
/// (`send-proxy` or `send-proxy-v2`); no health checks.
fn haproxy(listen: SocketAddr, node: SocketAddr, send_proxy: &str) -> Front {
    let haproxy = need("haproxy");
    let dir = new_dir("haproxy");
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n\
             \x20   maxconn 100\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             frontend clients\n\
             \x20   bind {listen}\n\
             \x20   default_backend node\n\
             backend node\n\
             \x20   server n {node} {send_proxy}\n"
        ),
    )
    .unwrap();
    let (out, err) = output_to(dir.path());
    let child = Command::new(haproxy)
        .arg("-f")
        .arg(&conf)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("starting haproxy");
    Front {
        name: "haproxy",
        child,
        dir,
    }
}

/// A TCP connection to `to` from `from` (a loopback address).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(to))
            .await
            .expect("connect timed out")
            .expect("connect");
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// A ping from `from` through `front`; the client's address, or `None` if
/// the ping got no answer.
fn ping_from(from: &str, front: SocketAddr) -> Option<SocketAddr> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(format!("{from}:0").parse().ok()?).ok()?;
        let stream = tokio::time::timeout(WAIT, socket.connect(front))
            .await
            .ok()?
            .ok()?;
        let stream = stream.into_std().ok()?;
        stream.set_nonblocking(false).ok()?;
        Some(stream)
    })?;
    let local = stream.local_addr().ok()?;
    let mut json = Json::over(stream);
    json.send(r#"{"msgid":18}"#);
    let pong = json.try_recv(Duration::from_secs(2))?;
    (pong["msgid"] == 19).then_some(local)
}

/// Waits until a ping through `front` (from 127.0.0.3) is answered: the
/// front is up and relaying, and its one relayed connection is counted.
fn wait_relaying(front: &mut impl Proxy, addr: SocketAddr, node: &LoggedNode) {
    let started = Instant::now();
    loop {
        if let Some(probe) = ping_from("127.0.0.3", addr) {
            // Counted once the node has logged its header.
            while node.header_line(&probe.to_string()).is_none() {
                assert!(started.elapsed() < WAIT, "{}", node.log());
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        if let Some(status) = front.exited() {
            panic!(
                "{} exited ({status}) before relaying; its output:\n{}",
                front.name(),
                front.output()
            );
        }
        assert!(
            started.elapsed() < WAIT,
            "{} did not relay a ping within {WAIT:?}; its output:\n{}\nnode log:\n{}",
            front.name(),
            front.output(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `CLIENTS` connections from 127.0.0.2 through `front`: each is served,
/// the node saw 127.0.0.2 (and the client's port) in a `version` header,
/// and it counted exactly those connections as proxied.
fn clients_through(front_addr: SocketAddr, node: &LoggedNode, version: proxy::Version) {
    let before = node.proxied();
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let stream = connect_from(CLIENT_IP, front_addr);
        let client = stream.local_addr().unwrap();
        let mut json = Json::over(stream);
        let pong = json.ask(r#"{"msgid":18}"#);
        assert_eq!(pong["msgid"], 19, "served through the front: {pong}");
        held.push((client, json));
    }
    let log = node.log();
    for (client, _) in &held {
        assert_eq!(client.ip().to_string(), CLIENT_IP);
        let line = node
            .header_line(&client.to_string())
            .unwrap_or_else(|| panic!("no PROXY header from {client} in the node's log:\n{log}"));
        assert!(
            line.contains(&format!("version={version}")),
            "{client} came in a {version} header: {line}"
        );
        let seen = format!("client=Some({client})");
        assert!(
            log.lines()
                .any(|l| l.contains(" connection") && l.contains(&seen)),
            "the node logs the connection as from {client}:\n{log}"
        );
    }
    assert_eq!(
        node.proxied() - before,
        CLIENTS as f64,
        "proxied connections counted"
    );
    assert_eq!(node.metric("chat_node_proxy_header_errors_total"), 0.0);
    eprintln!(
        "{version}: {CLIENTS} clients from {CLIENT_IP} seen by the node as such, e.g. {}",
        node.header_line(&held[0].0.to_string()).unwrap()
    );
}

fn front_test(start: impl FnOnce(SocketAddr, SocketAddr) -> Front, version: proxy::Version) {
    let node = LoggedNode::start();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut front = start(listen, node.node.addr);
    wait_relaying(&mut front, listen, &node);
    clients_through(listen, &node, version);
}

#[test]
fn nginx_proxy_protocol_on_sends_v1_and_the_node_sees_the_client() {
    front_test(nginx, proxy::Version::V1);
}

#[test]
fn haproxy_send_proxy_sends_v1_and_the_node_sees_the_client() {
    front_test(
        |listen, node| haproxy(listen, node, "send-proxy"),
        proxy::Version::V1,
    );
}

#[test]
fn haproxy_send_proxy_v2_sends_v2_and_the_node_sees_the_client() {
    front_test(
        |listen, node| haproxy(listen, node, "send-proxy-v2"),
        proxy::Version::V2,
    );
}

/// The `chat-balancer` binary: `CHAT_BALANCER_BIN`, else the one next to
/// this test's executable. Cargo builds only this crate's binaries for its
/// tests, so the test command builds the balancer first (`scripts/test.sh`
/// runs `cargo build --workspace --all-targets` before the tests); a missing
/// binary fails the test with the harness's message saying so.
fn balancer_binary() -> PathBuf {
    find_binary("chat-balancer", "CHAT_BALANCER_BIN").unwrap_or_else(|e| panic!("{e}"))
}

/// chat-balancer with `proxy_protocol=option`: clients are seen as
/// themselves, and the balancer's probes come with a header without an
/// address (v1 `PROXY UNKNOWN`, v2 LOCAL) that the node accepts.
fn balancer_test(option: &str, version: proxy::Version) {
    let node = LoggedNode::start();
    // (The harness's readiness check sends a v2 LOCAL header too.)
    let probe = format!("version={version} source=None");
    let probes = |node: &LoggedNode| node.log().lines().filter(|l| l.contains(&probe)).count();
    let before = probes(&node);
    let mut balancer = LocalBalancer::start(BalancerOptions {
        binary: Some(balancer_binary()),
        upstreams: vec![format!("{} proxy_protocol={option}", node.node.addr)],
        args: vec!["--probe-interval".into(), "200ms".into()],
        threads: 1,
        ..BalancerOptions::default()
    })
    .expect("starting chat-balancer");
    // The probe's connection: a header of this version with no address.
    let started = Instant::now();
    while probes(&node) == before {
        assert!(
            started.elapsed() < WAIT,
            "no probe with a {version} header without address; node log:\n{}\nbalancer log:\n{}",
            node.log(),
            balancer.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Probes keep one connection open: once the balancer relays, the count
    // moves by the clients only.
    let addr = balancer.addr;
    wait_relaying(&mut balancer, addr, &node);
    clients_through(addr, &node, version);
}

#[test]
fn chat_balancer_proxy_protocol_v1_and_the_node_sees_the_client() {
    balancer_test("v1", proxy::Version::V1);
}

#[test]
fn chat_balancer_proxy_protocol_v2_and_the_node_sees_the_client() {
    balancer_test("v2", proxy::Version::V2);
}

/// Whether the peer closes `stream` (FIN or reset) within `WAIT`.
fn closed(mut stream: TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                );
            }
        }
    }
}

/// Headers cut into several TCP segments are waited for; garbage, an
/// over-long v1 line, a broken v1 line and a v2 header announcing too many
/// bytes are refused at once: counted, logged, connection closed.
#[test]
fn split_headers_are_waited_for_and_bad_ones_refused() {
    let node = LoggedNode::start();
    let addr = node.node.addr;
    let proxied = node.proxied();

    let mut v2 = Vec::new();
    proxy::encode(
        proxy::Version::V2,
        "198.51.100.7:7777".parse().unwrap(),
        addr,
        &mut v2,
    );
    let v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 6000\r\n".to_vec();
    for (header, cuts, source) in [
        (v1, vec![4, 20, 41], "203.0.113.9:4444"),
        (v2, vec![1, 12, 15, 20], "198.51.100.7:7777"),
    ] {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut json = Json::over(stream);
        let mut from = 0;
        for cut in cuts {
            json.send_raw(&header[from..cut]);
            from = cut;
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut rest = header[from..].to_vec();
        rest.extend_from_slice(b"{\"msgid\":18}\0");
        json.send_raw(&rest);
        assert_eq!(json.recv()["msgid"], 19, "served after a split header");
        assert!(
            node.header_line(source).is_some(),
            "the node saw {source}:\n{}",
            node.log()
        );
    }
    assert_eq!(node.proxied() - proxied, 2.0);

    let mut too_long_v2 = proxy::local(proxy::Version::V2);
    too_long_v2[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let bad: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            "not a PROXY protocol header",
        ),
        (
            "over-long v1",
            [&b"PROXY TCP6 "[..], &[b'1'; 200]].concat(),
            "longer than 107 bytes",
        ),
        (
            "broken v1",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n{\"msgid\":18}\0".to_vec(),
            "bad PROXY protocol v1 header",
        ),
        ("over-long v2", too_long_v2, "over the limit"),
    ];
    for (what, bytes, reason) in &bad {
        let mut stream = TcpStream::connect(addr).unwrap();
        // The node may close before everything is written.
        let _ = stream.write_all(bytes);
        assert!(closed(stream), "{what}: connection closed");
        let log = node.log();
        assert!(
            log.lines()
                .any(|l| l.contains("bad PROXY protocol header") && l.contains(reason)),
            "{what}: logged with {reason:?}:\n{log}"
        );
    }
    assert_eq!(
        node.metric("chat_node_proxy_header_errors_total"),
        bad.len() as f64
    );
    assert_eq!(node.proxied() - proxied, 2.0, "none of them proxied");
}
