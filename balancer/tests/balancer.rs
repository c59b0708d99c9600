//! End-to-end tests of `chat-balancer`: real `chat-node` processes and a real
//! balancer on loopback, started through `chat-testkit`. Every wait has a
//! deadline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn addrs(nodes: &[&chat_testkit::LocalNode]) -> Vec<String> {
    nodes.iter().map(|n| n.addr.to_string()).collect()
}

fn signal(pid: Option<u32>, sig: i32) {
    // SAFETY: kill(2) on a child's pid has no memory effects.
    unsafe {
        libc::kill(pid.expect("running") as i32, sig);
    }
}

/// Three nodes, one already holding 200 connections: 300 new connections
/// through the balancer go to the other two. Then one node is paused with
/// SIGSTOP: its probes fail, it is marked down, new connections keep
/// working without it.
#[test]
fn skewed_load_goes_to_the_idle_nodes_and_a_paused_node_is_skipped() {
    let cap = ["--max-connections", "1000"];
    let nodes = [node(&cap), node(&cap), node(&cap)];
    let b = balancer(
        &addrs(&[&nodes[0], &nodes[1], &nodes[2]]),
        &["--probe-interval", "250ms", "--report-max-age", "1s"],
    );
    let held: Vec<Json> = (0..200).map(|_| ping_through(nodes[0].addr)).collect();
    wait_reports(&b, &[nodes[0].addr, nodes[1].addr, nodes[2].addr]);
    wait_for(
        "node 0 to report its 200 connections",
        Duration::from_secs(10),
        || {
            upstream_status(&b, nodes[0].addr)
                .is_some_and(|u| u["report"]["connections"].as_u64() >= Some(200))
                .then_some(())
        },
    );
    let before: Vec<f64> = nodes.iter().map(node_connections).collect();
    let relayed: Vec<Json> = (0..300).map(|_| ping_through(b.addr)).collect();
    let added: Vec<f64> = nodes
        .iter()
        .zip(&before)
        .map(|(n, b)| node_connections(n) - b)
        .collect();
    eprintln!("skew: 300 new connections split {added:?} (round-robin: 100 each)");
    assert_eq!(added.iter().sum::<f64>(), 300.0, "{added:?}");
    // Round-robin gives the loaded node 100; the load-based choice almost none.
    assert!(added[0] <= 30.0, "loaded node got {added:?}");
    assert!(added[1] >= 100.0 && added[2] >= 100.0, "{added:?}");

    // Pause node 2: its probes go unanswered and it is marked down.
    signal(nodes[2].pid(), libc::SIGSTOP);
    let paused_at = Instant::now();
    wait_for(
        "the paused node marked down",
        Duration::from_secs(10),
        || (state(&b, nodes[2].addr) == "probe_failed").then_some(()),
    );
    eprintln!("paused node marked down after {:?}", paused_at.elapsed());
    let picks = |b: &chat_testkit::LocalBalancer| {
        upstream_status(b, nodes[2].addr).unwrap()["picks"]
            .as_u64()
            .unwrap()
    };
    let picks_before = picks(&b);
    let started = Instant::now();
    let more: Vec<Json> = (0..50).map(|_| ping_through(b.addr)).collect();
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
    assert_eq!(picks(&b), picks_before, "nothing sent to the paused node");
    signal(nodes[2].pid(), libc::SIGCONT);
    wait_for("the resumed node up again", Duration::from_secs(10), || {
        (state(&b, nodes[2].addr) == "up").then_some(())
    });
    // Connections relayed to it before the pause still work.
    for mut c in relayed.into_iter().chain(more) {
        assert!(c.ping(Duration::from_secs(5)));
    }
    drop(held);
    assert!(b.log().contains("marked down"), "{}", b.log());
}

/// kill -9 of a node: new connections fail over at once, the node is marked
/// down for fail_timeout, then used again once it is back.
#[test]
fn a_killed_node_is_failed_over_marked_down_and_used_again() {
    let mut n0 = node(&[]);
    let n1 = node(&[]);
    let b = balancer(
        &[
            format!("{} max_fails=1 fail_timeout=2s", n0.addr),
            format!("{} max_fails=1 fail_timeout=2s", n1.addr),
        ],
        // Ten failed probes in a row (3 s) before a probe marks a node
        // down: a loaded test machine that stalls the live node for a
        // second must not make it look dead (the killed one is marked down
        // by its failed connects).
        &["--probe-interval", "300ms", "--probe-fails", "10"],
    );
    wait_reports(&b, &[n0.addr, n1.addr]);
    n0.kill9();
    // The dead process's io_uring keeps its listening socket for a few ms
    // after the process is reaped (connections made then are reset): start
    // once the kernel refuses connections.
    wait_for(
        "the killed node's port closed",
        Duration::from_secs(5),
        || TcpStream::connect(n0.addr).is_err().then_some(()),
    );
    for i in 0..20 {
        let started = Instant::now();
        let mut c = Json::connect(b.addr);
        assert!(
            c.ping(Duration::from_secs(5)),
            "ping {i} after the kill: {}",
            b.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "failed over within connect_timeout"
        );
    }
    let down = state(&b, n0.addr);
    assert!(
        down == "connect_failed" || down == "probe_failed",
        "killed node is down: {down}"
    );
    n0.restart().expect("restarting node 0");
    let back = Instant::now();
    wait_for(
        "the restarted node up again",
        Duration::from_secs(10),
        || (state(&b, n0.addr) == "up").then_some(()),
    );
    let mut held = Vec::new();
    wait_for(
        "the restarted node used again",
        Duration::from_secs(10),
        || {
            held.push(ping_through(b.addr));
            (node_connections(&n0) >= 1.0).then_some(())
        },
    );
    eprintln!("restarted node used again after {:?}", back.elapsed());
}

/// SIGUSR1 on a node: no new connection reaches it, its open ones work.
#[test]
fn a_draining_node_gets_no_new_connections_and_keeps_its_open_ones() {
    let n0 = node(&[]);
    let n1 = node(&[]);
    let b = balancer(&addrs(&[&n0, &n1]), &["--probe-interval", "200ms"]);
    wait_reports(&b, &[n0.addr, n1.addr]);
    let mut open: Vec<Json> = (0..20).map(|_| ping_through(b.addr)).collect();
    let on_n0 = node_connections(&n0);
    assert!(on_n0 >= 1.0, "some connections on node 0 before the drain");
    signal(n0.pid(), libc::SIGUSR1);
    wait_for("node 0 draining", Duration::from_secs(5), || {
        (state(&b, n0.addr) == "draining").then_some(())
    });
    let more: Vec<Json> = (0..40).map(|_| ping_through(b.addr)).collect();
    assert_eq!(
        node_connections(&n0),
        on_n0,
        "no new connection on the draining node"
    );
    for c in &mut open {
        assert!(
            c.ping(Duration::from_secs(5)),
            "open connections keep working"
        );
    }
    drop(more);
}

/// SIGHUP with a changed upstream list while 100 relayed connections chat:
/// none dropped, new ones follow the new list; an invalid file is refused.
#[test]
fn reload_changes_upstreams_and_keeps_open_connections() {
    let (n0, n1, n2) = (node(&[]), node(&[]), node(&[]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("balancer.toml");
    let write = |ups: &[SocketAddr]| {
        let list: Vec<String> = ups.iter().map(|a| format!("\"{a}\"")).collect();
        std::fs::write(
            &file,
            format!(
                "probe_interval = \"200ms\"\nupstream = [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
    };
    write(&[n0.addr, n1.addr]);
    let b = balancer(&[], &["--config", file.to_str().unwrap()]);
    wait_reports(&b, &[n0.addr, n1.addr]);
    let mut open: Vec<Json> = (0..100).map(|_| ping_through(b.addr)).collect();

    // Chat on a background thread while the list changes.
    let mut chatting: Vec<Json> = open.drain(..50).collect();
    let chatter = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            for c in &mut chatting {
                assert!(c.ping(Duration::from_secs(5)), "dropped during the reload");
            }
        }
        chatting
    });
    write(&[n1.addr, n2.addr]);
    b.signal(libc::SIGHUP);
    wait_for("the new list", Duration::from_secs(5), || {
        (upstream_status(&b, n2.addr).is_some() && upstream_status(&b, n0.addr).is_none())
            .then_some(())
    });
    wait_reports(&b, &[n2.addr]);
    open.extend(chatter.join().expect("chatting through the reload"));
    let on_n0 = node_connections(&n0);
    let on_n2 = node_connections(&n2);
    let new: Vec<Json> = (0..30).map(|_| ping_through(b.addr)).collect();
    assert_eq!(
        node_connections(&n0),
        on_n0,
        "removed node gets nothing new"
    );
    assert!(
        node_connections(&n2) > on_n2,
        "added node gets new connections"
    );
    for c in &mut open {
        assert!(c.ping(Duration::from_secs(5)), "open connection kept");
    }

    std::fs::write(&file, "upstream = [\"127.0.0.1:1 weight=zero\"]\n").unwrap();
    b.signal(libc::SIGHUP);
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        b.log().contains("reload refused").then_some(())
    });
    assert!(upstream_status(&b, n2.addr).is_some(), "old list kept");
    assert_eq!(
        balancer_metric(&b, "chat_balancer_reloads_total{result=\"refused\"}"),
        1.0
    );
    drop(new);
}

/// Redirect mode names a live node; a client connects there and is served.
#[test]
fn redirect_mode_returns_a_live_node() {
    let n0 = node(&[]);
    let n1 = node(&[]);
    let b = balancer(&addrs(&[&n0, &n1]), &["--probe-interval", "200ms"]);
    wait_reports(&b, &[n0.addr, n1.addr]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redirect = chat_client::Client::connect(b.redirect_addr).await.unwrap();
        let (address, node_id) =
            tokio::time::timeout(Duration::from_secs(5), redirect.which_node())
                .await
                .expect("an answer")
                .expect("which node");
        let live = [n0.addr.to_string(), n1.addr.to_string()];
        assert!(live.contains(&address), "{address} is one of {live:?}");
        assert!(node_id.starts_with("local-"), "{node_id}");
        let direct = chat_client::Client::connect(address.as_str())
            .await
            .unwrap();
        direct.ping().await.expect("the named node serves");
    });
}

/// The PROXY header towards an upstream with proxy_protocol=v1, v2 and on
/// (= v2): a stand-in upstream sees the header of that version with the
/// client's address, then the client's bytes; the probes' own connections
/// come with the LOCAL (v2) or UNKNOWN (v1) header.
#[test]
fn proxy_protocol_carries_the_client_address() {
    use chat_schema::proxy::{self, Header, Version};
    for (option, version) in [
        ("v1", Version::V1),
        ("v2", Version::V2),
        ("on", Version::V2),
    ] {
        let stand_in = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = stand_in.local_addr().unwrap();
        let b = balancer(&[format!("{up} proxy_protocol={option}")], &[]);
        let mut client = TcpStream::connect(b.addr).unwrap();
        let client_addr = client.local_addr().unwrap();
        client.write_all(b"hello").unwrap();
        // Probes connect too; find the relayed connection.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut locals = 0;
        let header = loop {
            assert!(Instant::now() < deadline, "{option}: no relayed connection");
            let (mut s, _) = stand_in.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 128];
            let mut filled = 0;
            let decoded = loop {
                match proxy::decode(&buf[..filled]) {
                    Ok(Some(d)) => break d,
                    Ok(None) => {}
                    Err(e) => panic!("{option}: bad header: {e}"),
                }
                let n = s.read(&mut buf[filled..]).unwrap();
                assert!(n > 0, "{option}: closed inside the header");
                filled += n;
            };
            assert_eq!(decoded.version, version, "proxy_protocol={option}");
            match decoded.header {
                Header::Local => locals += 1,
                Header::Proxy {
                    source,
                    destination,
                } if source == client_addr => {
                    // (Other relayed connections are the harness's readiness checks.)
                    let mut rest = buf[decoded.used..filled].to_vec();
                    while rest.len() < 5 {
                        let mut more = [0u8; 16];
                        let n = s.read(&mut more).unwrap();
                        assert!(n > 0);
                        rest.extend_from_slice(&more[..n]);
                    }
                    assert_eq!(&rest[..5], b"hello");
                    break (source, destination);
                }
                Header::Proxy { .. } => {}
            }
        };
        assert_eq!(header, (client_addr, b.addr), "proxy_protocol={option}");
        eprintln!("proxy_protocol={option}: {locals} probe connection(s) before the client's");
    }
}

/// The same with a real node that trusts the balancer, for v1 and v2: the
/// node serves the relayed stream and counts it as proxied; the probes' LOCAL
/// (v2) and UNKNOWN (v1) headers are accepted too.
#[test]
fn a_node_behind_proxy_protocol_serves_relayed_clients() {
    for option in ["v1", "v2"] {
        a_node_behind_proxy_protocol_serves(option);
    }
}

fn a_node_behind_proxy_protocol_serves(option: &str) {
    let n = node(&["--proxy-protocol-from", "127.0.0.1"]);
    let b = balancer(&[format!("{} proxy_protocol={option}", n.addr)], &[]);
    wait_reports(&b, &[n.addr]);
    let mut relayed = ping_through(b.addr);
    let r = relayed.ask(r#"{"msgid":4,"name":"via-proxy","pwd":"pw"}"#, 5);
    assert_eq!(r["errno"], 0, "{r}");
    let metrics = chat_testkit::scrape(n.metrics_addr).unwrap();
    let proxied = chat_testkit::metric_value(&metrics, "chat_node_proxied_connections_total");
    assert!(
        proxied >= Some(2.0),
        "{option}: probe and client proxied: {proxied:?}"
    );
    assert_eq!(
        chat_testkit::metric_value(&metrics, "chat_node_proxy_header_errors_total"),
        None,
        "{option}: no connection was refused"
    );
}

/// Garbage on the proxy and redirect ports, and a fake node answering probes
/// with junk: no crash, a clear log line, the fake node marked down.
#[test]
fn garbage_from_clients_and_nodes_is_survived() {
    let n = node(&[]);
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in fake.incoming().flatten() {
            let _ = s.write_all(&[
                0x10, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ]);
            let mut sink = [0u8; 256];
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.read(&mut sink);
        }
    });
    let mut b = balancer(
        &[n.addr.to_string(), fake_addr.to_string()],
        &["--probe-interval", "200ms"],
    );
    wait_for("the fake node marked down", Duration::from_secs(10), || {
        (state(&b, fake_addr) == "probe_failed").then_some(())
    });
    let why = upstream_status(&b, fake_addr).unwrap()["why_down"].clone();
    eprintln!("fake node: {why}");
    assert!(b.log().contains("marked down"), "{}", b.log());

    // Junk through the proxy port reaches the node, which closes it.
    let mut junk = TcpStream::connect(b.addr).unwrap();
    junk.write_all(&[0xff; 300]).unwrap();
    let _ = junk.shutdown(std::net::Shutdown::Write);
    // Redirect port: junk, an oversized length, a truncated frame.
    for bytes in [
        vec![0xffu8; 64],
        (1u32 << 30).to_le_bytes().to_vec(),
        vec![0x40, 0, 0, 0, 1, 2, 3],
        b"{\"msgid\":18}\0".to_vec(),
    ] {
        let mut s = TcpStream::connect(b.redirect_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
        s.write_all(&bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        if !reply.is_empty() {
            let env = chat_schema::frame::parse_frame(&reply, 4096).expect("a valid reply frame");
            assert_eq!(env.body_type(), chat_schema::fb::Body::ErrorReply);
        }
    }
    assert!(b.try_wait().is_none(), "balancer alive");
    ping_through(b.addr);
    assert!(balancer_metric(&b, "chat_balancer_bad_input_total") >= 2.0);
}

/// The seed's JSON flow (register, login, chat) through proxy mode, in front
/// of a two-node cluster.
#[test]
fn seed_json_flow_through_proxy_mode() {
    let cluster = chat_testkit::LocalCluster::start(chat_testkit::ClusterOptions {
        nodes: 2,
        shards: 1,
        binary: Some(node_binary()),
        balancer: Some(chat_testkit::BalancerOptions {
            binary: Some(env!("CARGO_BIN_EXE_chat-balancer").into()),
            args: vec!["--probe-interval".into(), "200ms".into()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("cluster with a balancer");
    let b = cluster.balancer().expect("balancer").addr;
    let register = |name: &str| {
        let r = Json::connect(b).ask(
            &format!(r#"{{"msgid":4,"name":"{name}","pwd":"123456"}}"#),
            5,
        );
        assert_eq!(r["errno"], 0, "{r}");
        r["id"].as_u64().unwrap()
    };
    let (a, z) = (register("ann"), register("zed"));
    let login = |id: u64| {
        let mut c = Json::connect(b);
        let r = c.ask(&format!(r#"{{"msgid":1,"id":{id},"pwd":"123456"}}"#), 2);
        assert_eq!(r["errno"], 0, "{r}");
        c
    };
    let (mut ann, mut zed) = (login(a), login(z));
    ann.send(&format!(
        r#"{{"msgid":6,"id":{a},"toid":{z},"msg":"hello via the balancer"}}"#
    ));
    let push = zed.recv_msgid(6);
    assert_eq!(push["msg"], "hello via the balancer", "{push}");
    assert_eq!(push["id"].as_u64(), Some(a));
    zed.send(&format!(
        r#"{{"msgid":6,"id":{z},"toid":{a},"msg":"and back"}}"#
    ));
    assert_eq!(ann.recv_msgid(6)["msg"], "and back");
}

/// SIGTERM: no new connections, open ones finish, then the process exits.
#[test]
fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let n = node(&[]);
    let mut b = balancer(&[n.addr.to_string()], &["--shutdown-grace", "5s"]);
    let mut open = ping_through(b.addr);
    b.signal(libc::SIGTERM);
    wait_for("the listener closed", Duration::from_secs(5), || {
        TcpStream::connect_timeout(&b.addr, Duration::from_millis(200))
            .is_err()
            .then_some(())
    });
    assert!(
        open.ping(Duration::from_secs(5)),
        "open connection still relayed"
    );
    assert!(b.try_wait().is_none(), "waits for the open connection");
    drop(open);
    let status = wait_for("the balancer to exit", Duration::from_secs(5), || {
        b.try_wait()
    });
    assert!(status.success(), "{status:?}");
}

/// The seed's nginx config as translated in `docs/balancer.md` (its TOML
/// block, with the two upstream ports swapped for two real nodes and the
/// listen address for a free port) runs in front of two nodes, and a seed
/// JSON client registers through it on both.
#[test]
fn the_seeds_nginx_config_translated_runs_in_front_of_two_nodes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/balancer.md"))
        .expect("docs/balancer.md");
    let after = &doc[doc.find("As a file").expect("the TOML translation")..];
    let start = after.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let toml = &after[start..start + after[start..].find("```").expect("end of block")];
    assert!(toml.contains("127.0.0.1:9190") && toml.contains("127.0.0.1:9192"));

    let (n0, n1) = (node(&[]), node(&[]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("balancer.toml");
    std::fs::write(
        &file,
        toml.replace("127.0.0.1:9190", &n0.addr.to_string())
            .replace("127.0.0.1:9192", &n1.addr.to_string()),
    )
    .unwrap();
    // The harness's --listen (a free port) wins over the file's 0.0.0.0:8000.
    let b = balancer(&[], &["--config", file.to_str().unwrap()]);
    for i in 0..12 {
        let r = Json::connect(b.addr).ask(
            &format!(r#"{{"msgid":4,"name":"seed-{i}","pwd":"123456"}}"#),
            5,
        );
        assert_eq!(r["errno"], 0, "{r}");
    }
    // Each node has its own store here, so both having registered users
    // shows both were used.
    let used = [&n0, &n1]
        .iter()
        .filter(|n| {
            chat_testkit::scrape(n.metrics_addr)
                .ok()
                .and_then(|m| {
                    chat_testkit::metric_value(
                        &m,
                        "chat_node_requests_total{kind=\"register\",outcome=\"ok\"}",
                    )
                })
                .is_some_and(|v| v > 0.0)
        })
        .count();
    assert_eq!(used, 2, "registrations went to both nodes");
}

/// The `chat` client asks the redirect port for a node and talks to it
/// directly: it registers there.
#[test]
fn chat_connects_through_the_redirect_port() {
    let n0 = node(&[]);
    let n1 = node(&[]);
    // A loaded test machine may stall the nodes past three 200 ms probes;
    // ten let them be slow without being taken for down.
    let b = balancer(
        &addrs(&[&n0, &n1]),
        &["--probe-interval", "200ms", "--probe-fails", "10"],
    );
    wait_reports(&b, &[n0.addr, n1.addr]);
    let chat = chat_testkit::find_binary("chat", "CHAT_BIN").unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(chat)
        .arg("--balancer")
        .arg(b.redirect_addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"2\nredirected\nsecret\n3\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "chat did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let chosen = [n0.addr, n1.addr]
        .iter()
        .find(|a| text.contains(&format!("chose {a}")))
        .copied();
    assert!(chosen.is_some(), "chat names a live node: {text}");
    assert!(text.contains("name redirected register success"), "{text}");
}
