//! What nginx and HAProxy users rely on, end to end with a real node and
//! real balancer processes: several processes on one port (`--reuse-port`)
//! and a binary upgrade that drops no open connection, checking a
//! configuration without running it (`-t`), the access log, and nginx's
//! `proxy_half_close` (`--half-close`), and bulk transfers relayed whole.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chat_testkit::{free_port, metric_value};
use common::*;

const BALANCER: &str = env!("CARGO_BIN_EXE_chat-balancer");

/// A second balancer process on `listen`, started by hand (the harness picks
/// its own ports); its admin port is returned with it.
fn spawn_balancer(listen: SocketAddr, upstream: SocketAddr, extra: &[&str]) -> (Child, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let child = Command::new(BALANCER)
        .args(["--listen", &listen.to_string()])
        .args(["--redirect-listen", "off"])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--upstream", &upstream.to_string()])
        .args(["--threads", "1"])
        .args(extra)
        .env("CHAT_BALANCER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chat-balancer");
    (child, admin)
}

fn accepted(admin: SocketAddr) -> f64 {
    chat_testkit::scrape(admin)
        .ok()
        .and_then(|m| metric_value(&m, "chat_balancer_accepted_total"))
        .unwrap_or(0.0)
}

fn wait_admin(admin: SocketAddr) {
    wait_for(
        "the second balancer's admin port",
        Duration::from_secs(10),
        || chat_testkit::scrape(admin).ok().map(|_| ()),
    );
}

fn stop(mut child: Child) -> Output {
    // SAFETY: kill(2) on a child's pid has no memory effects.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.try_wait();
    child.wait_with_output().expect("balancer output")
}

#[test]
fn two_processes_share_a_port_with_reuse_port_and_not_without() {
    let n = node(&[]);
    let a = balancer(&[n.addr.to_string()], &["--reuse-port"]);

    // Without --reuse-port the port another process listens on is refused.
    let (refused, _) = spawn_balancer(a.addr, n.addr, &[]);
    let out = refused.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "a second process without --reuse-port must fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another process listens"), "{stderr}");

    let (b, b_admin) = spawn_balancer(a.addr, n.addr, &["--reuse-port"]);
    wait_admin(b_admin);
    // The kernel spreads new connections over both processes' sockets.
    let mut both = false;
    for _ in 0..20 {
        for _ in 0..20 {
            let mut c = ping_through(a.addr);
            assert!(c.ping(Duration::from_secs(5)), "relayed");
        }
        if balancer_metric(&a, "chat_balancer_accepted_total") > 0.0 && accepted(b_admin) > 0.0 {
            both = true;
            break;
        }
    }
    assert!(
        both,
        "connections reached both processes: {} and {}",
        balancer_metric(&a, "chat_balancer_accepted_total"),
        accepted(b_admin)
    );
    let out = stop(b);
    assert!(out.status.success(), "{out:?}");
}

/// Start the new binary on the same port, SIGTERM the old one: the old one's
/// open connections keep working until their clients close them, and new
/// connections go to the new process.
#[test]
fn a_binary_upgrade_drops_no_open_connection() {
    let n = node(&[]);
    let mut old = balancer(
        &[n.addr.to_string()],
        &["--reuse-port", "--shutdown-grace", "60s"],
    );
    let mut open: Vec<Json> = (0..10).map(|_| ping_through(old.addr)).collect();
    let (new, new_admin) = spawn_balancer(old.addr, n.addr, &["--reuse-port"]);
    wait_admin(new_admin);
    old.signal(libc::SIGTERM);
    wait_for(
        "the old process to stop accepting",
        Duration::from_secs(5),
        || old.log().contains("stopping").then_some(()),
    );
    // The executors close their listeners just after that line.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        let mut c = ping_through(old.addr);
        assert!(c.ping(Duration::from_secs(5)), "a new connection is served");
    }
    for (i, c) in open.iter_mut().enumerate() {
        assert!(c.ping(Duration::from_secs(5)), "open connection {i} kept");
    }
    assert!(
        old.try_wait().is_none(),
        "the old process waits for its clients"
    );
    drop(open);
    let status = wait_for("the old process to exit", Duration::from_secs(10), || {
        old.try_wait()
    });
    assert!(status.success(), "{status:?}");
    assert!(accepted(new_admin) >= 1.0);
    let out = stop(new);
    assert!(out.status.success(), "{out:?}");
}

fn check(args: &[&str]) -> Output {
    Command::new(BALANCER)
        .args(args)
        .env("CHAT_BALANCER_LOG", "warn")
        .output()
        .expect("running chat-balancer -t")
}

#[test]
fn check_config_validates_prints_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let file = dir.path().join("b.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"{listen}\"\nupstream = [\"127.0.0.1:6000 weight=2\", \"127.0.0.1:6001 backup proxy_protocol=v1\"]\nreuse_port = true\naccess_log = \"{}\"\n",
            dir.path().join("access.log").display()
        ),
    )
    .unwrap();
    let ok = check(&["-t", "--config", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        stdout.contains(&format!("listen {listen} reuse_port")),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream 127.0.0.1:6000 weight=2 max_fails=1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream 127.0.0.1:6001 weight=1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("slow_start=0s proxy_protocol=v1 backup"),
        "{stdout}"
    );
    assert!(stdout.contains("is ok"), "{stdout}");
    assert!(
        TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err(),
        "-t binds nothing"
    );
    let long = check(&["--check-config", "--upstream", "127.0.0.1:6000"]);
    assert!(long.status.success(), "{long:?}");

    for (args, reason) in [
        (
            vec!["-t", "--upstream", "127.0.0.1:6000 weight=0"],
            "weight",
        ),
        (vec!["-t"], "at least one --upstream"),
        (
            vec!["-t", "--upstream", "127.0.0.1:1", "--listen", "nowhere"],
            "not an address",
        ),
        (
            vec![
                "-t",
                "--upstream",
                "127.0.0.1:1",
                "--access-log",
                "/nonexistent/dir/access.log",
            ],
            "--access-log",
        ),
    ] {
        let out = check(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid"), "{args:?}: {stderr}");
    }
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "upstreams = [\"127.0.0.1:6000\"]\n").unwrap();
    let out = check(&["-t", "--config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_access_log_has_one_line_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let n = node(&[]);
    let b = balancer(
        &[n.addr.to_string()],
        &["--access-log", path.to_str().unwrap()],
    );
    let mut c = ping_through(b.addr);
    assert!(c.ping(Duration::from_secs(5)));
    let client = c.stream.local_addr().unwrap();
    drop(c);
    // (The harness's own readiness check made a line too.)
    let line = wait_for("the access log line", Duration::from_secs(5), || {
        log_lines(&path)
            .into_iter()
            .find(|l| l.starts_with(&format!("{client} ")))
    });
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words[0], client.to_string(), "{line}");
    assert!(
        words[1].starts_with('[') && words[1].ends_with("Z]"),
        "{line}"
    );
    assert_eq!(&words[2..4], ["TCP", "200"], "{line}");
    let sent: u64 = words[4].parse().unwrap();
    let received: u64 = words[5].parse().unwrap();
    assert!(sent > 0 && received > 0, "bytes both ways: {line}");
    assert!(words[6].parse::<f64>().is_ok(), "{line}");
    assert_eq!(words[7], format!("\"{}\"", n.addr), "{line}");
    assert!(words[8].trim_matches('"').parse::<f64>().is_ok(), "{line}");
    assert_eq!(words[9], "closed", "{line}");

    // No node: a 502 line.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let path2 = dir.path().join("access2.log");
    let b2 = balancer(
        &[dead.to_string()],
        &["--access-log", path2.to_str().unwrap()],
    );
    let mut s = TcpStream::connect(b2.addr).unwrap();
    let mut buf = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        std::io::Read::read(&mut s, &mut buf).unwrap_or(0),
        0,
        "closed"
    );
    let client = s.local_addr().unwrap();
    let line = wait_for("the 502 line", Duration::from_secs(5), || {
        log_lines(&path2)
            .into_iter()
            .find(|l| l.starts_with(&format!("{client} ")))
    });
    assert!(
        line.contains(" TCP 502 0 0 ") && line.ends_with("\"-\" \"-\" no_upstream"),
        "{line}"
    );
}

/// An upstream on a free port serving each connection with `serve` on a
/// thread of its own.
fn raw_upstream(serve: fn(TcpStream)) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// An upstream that reads until EOF, then answers "bye" and closes: what
/// it gets back tells whether the balancer kept the reverse direction open
/// after the client's EOF.
fn bye_after_eof() -> SocketAddr {
    raw_upstream(|mut stream| {
        use std::io::{Read, Write};
        let mut sink = Vec::new();
        if stream.read_to_end(&mut sink).is_ok() {
            let _ = stream.write_all(b"bye");
        }
    })
}

/// Sends "hello", shuts down its write half, and returns what comes back
/// until EOF.
fn hello_then_eof(balancer: SocketAddr) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut client = TcpStream::connect(balancer).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"hello").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    client
        .read_to_end(&mut back)
        .expect("the balancer ends the connection (EOF or reset), never hangs");
    back
}

#[test]
fn half_close_keeps_the_other_direction_open_unless_turned_off() {
    // The upstream answers no load probe, so --panic lets it be picked.
    let up = bye_after_eof();
    let closing = chat_testkit::LocalBalancer::start(chat_testkit::BalancerOptions {
        upstreams: vec![up.to_string()],
        args: vec!["--panic".into(), "--half-close".into(), "false".into()],
        ..Default::default()
    })
    .unwrap();
    let half = chat_testkit::LocalBalancer::start(chat_testkit::BalancerOptions {
        upstreams: vec![up.to_string()],
        args: vec!["--panic".into()],
        ..Default::default()
    })
    .unwrap();
    // --half-close false, nginx's default: the client's EOF ends the relay,
    // the late answer is not relayed.
    assert_eq!(hello_then_eof(closing.addr), b"");
    // The default (nginx's proxy_half_close on): the node's answer after the
    // client's EOF arrives.
    assert_eq!(hello_then_eof(half.addr), b"bye");
}

/// An upstream that echoes every byte back.
fn echo_upstream() -> SocketAddr {
    raw_upstream(|mut stream| {
        let mut reader = stream.try_clone().unwrap();
        let _ = std::io::copy(&mut reader, &mut stream);
    })
}

#[test]
fn a_bulk_transfer_and_the_small_messages_after_it_are_relayed_whole() {
    use std::io::{Read, Write};
    // The relay's buffers grow while reads fill them and shrink at the
    // first short read: nothing may be lost, repeated or reordered across
    // either change.
    let balancer = chat_testkit::LocalBalancer::start(chat_testkit::BalancerOptions {
        upstreams: vec![echo_upstream().to_string()],
        args: vec!["--panic".into()],
        ..Default::default()
    })
    .unwrap();
    let mut client = TcpStream::connect(balancer.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let bulk: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut writer = client.try_clone().unwrap();
    let sent = bulk.clone();
    let sending = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; bulk.len()];
    client
        .read_exact(&mut back)
        .expect("the whole transfer echoed");
    sending.join().unwrap().unwrap();
    assert!(back == bulk, "the echoed bytes differ from those sent");
    for i in 0..20 {
        let small = format!("message {i}");
        client.write_all(small.as_bytes()).unwrap();
        let mut echoed = vec![0u8; small.len()];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, small.as_bytes());
    }
}
