//! What a node tells balancers: the load probe in both protocols, draining on
//! SIGUSR1, the connection cap, and the PROXY protocol v2 header from a
//! trusted balancer. Real `chat-node` processes over real TCP.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chat_client::{Client, LoadReport};
use chat_schema::proxy;
use chat_testkit::{metric_value, scrape};
use common::{Json, node_with};

const WAIT: Duration = Duration::from_secs(10);

/// Probes until `ok` holds for the report, or panics after `WAIT`.
async fn probe_until(client: &Client, what: &str, ok: impl Fn(&LoadReport) -> bool) -> LoadReport {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = client.load().await.expect("load probe");
        if ok(&report) {
            return report;
        }
        assert!(Instant::now() < deadline, "{what}: last report {report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a child process we started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

#[tokio::test]
async fn the_load_probe_needs_no_login_and_follows_connections_and_draining() {
    let node = node_with(&["--max-connections", "50"]);
    let probe = Client::connect(node.addr).await.unwrap();
    let first = probe.load().await.unwrap();
    assert_eq!(first.node_id, node.node_id());
    assert_eq!(first.address, node.addr.to_string());
    assert_eq!(first.capacity, 50);
    assert_eq!(first.shard_busy.len(), 2, "one figure per shard");
    assert!(first.shard_busy.iter().all(|b| (0.0..=1.0).contains(b)));
    assert!(!first.draining);
    // The probe's own connection (once the harness's readiness check has
    // been seen closing).
    probe_until(&probe, "only the probe connected", |r| r.connections == 1).await;

    let others: Vec<Client> = futures_join(3, node.addr).await;
    probe_until(&probe, "three more connections", |r| r.connections == 4).await;
    drop(others);
    probe_until(&probe, "connections closed", |r| r.connections == 1).await;

    let pid = node.pid().expect("running");
    signal(pid, libc::SIGUSR1);
    probe_until(&probe, "draining after SIGUSR1", |r| r.draining).await;
    // A draining node still serves: only balancers act on the flag.
    let late = Client::connect(node.addr).await.unwrap();
    late.ping().await.unwrap();
    signal(pid, libc::SIGUSR2);
    probe_until(&probe, "not draining after SIGUSR2", |r| !r.draining).await;

    // The seed-JSON side has the same probe (msgid 20, reply 21).
    let mut json = Json::connect(node.addr);
    let reply = json.ask(r#"{"msgid":20}"#);
    assert_eq!(reply["msgid"], 21);
    assert_eq!(reply["nodeid"], node.node_id());
    assert_eq!(reply["capacity"], 50);
    assert_eq!(reply["draining"], false);
}

async fn futures_join(n: usize, addr: std::net::SocketAddr) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..n {
        let c = Client::connect(addr).await.unwrap();
        c.ping().await.unwrap();
        out.push(c);
    }
    out
}

#[tokio::test]
async fn connections_over_the_cap_get_overloaded_and_are_closed() {
    let node = node_with(&["--max-connections", "2"]);
    let a = Client::connect(node.addr).await.unwrap();
    a.ping().await.unwrap();
    // The harness's readiness check may not have been seen closing yet.
    probe_until(&a, "only this connection open", |r| r.connections == 1).await;
    let b = Client::connect(node.addr).await.unwrap();
    b.ping().await.unwrap();

    let mut third = TcpStream::connect(node.addr).unwrap();
    third.set_read_timeout(Some(WAIT)).unwrap();
    let _ = third.write_all(b"{\"msgid\":18}\0");
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with(r#"{"msgid":17,"errno":1,"errcode":18,"#)
            && answer.contains("max number of connections reached (2)"),
        "the connection over the cap gets Overloaded, then is closed: {answer:?}"
    );
    let text = scrape(node.metrics_addr).unwrap();
    assert!(
        metric_value(
            &text,
            "chat_node_connections_refused_total{reason=\"max_connections\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // The two within the cap go on.
    a.ping().await.unwrap();
    b.ping().await.unwrap();
}

/// `--max-connections-per-ip 2`: a third connection from one address gets
/// `Overloaded` and is closed, while other addresses are served; closing
/// one makes room again.
#[tokio::test]
async fn one_address_holds_at_most_its_cap() {
    let node = node_with(&["--max-connections-per-ip", "2"]);
    let mut first = json_from("127.0.0.2", node.addr).await;
    let mut second = json_from("127.0.0.2", node.addr).await;
    assert_eq!(first.ask(r#"{"msgid":18}"#)["msgid"], 19);
    assert_eq!(second.ask(r#"{"msgid":18}"#)["msgid"], 19);
    let mut third = json_from("127.0.0.2", node.addr).await;
    third.send(r#"{"msgid":18}"#);
    let refused = third.try_recv(WAIT).expect("an answer before the close");
    assert_eq!(
        (refused["msgid"].as_u64(), refused["errcode"].as_u64()),
        (Some(17), Some(18)),
        "{refused}"
    );
    assert!(
        refused["errmsg"]
            .as_str()
            .unwrap()
            .contains("too many connections from your address (2)"),
        "{refused}"
    );
    assert!(third.closed_within(WAIT));
    let mut elsewhere = json_from("127.0.0.3", node.addr).await;
    assert_eq!(elsewhere.ask(r#"{"msgid":18}"#)["msgid"], 19);
    let text = scrape(node.metrics_addr).unwrap();
    assert_eq!(
        metric_value(
            &text,
            "chat_node_connections_refused_total{reason=\"per_ip\"}"
        ),
        Some(1.0)
    );
    drop(first);
    let room = Instant::now();
    loop {
        let mut again = json_from("127.0.0.2", node.addr).await;
        again.send(r#"{"msgid":18}"#);
        if again.try_recv(WAIT).is_some_and(|v| v["msgid"] == 19) {
            break;
        }
        assert!(room.elapsed() < WAIT, "no room after a connection closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(second.ask(r#"{"msgid":18}"#)["msgid"], 19);
}

/// A login reply too big for the socket at once (a long offline backlog)
/// counts in the outbound bytes of the load report while it is written,
/// not only what waits behind it.
#[tokio::test]
async fn bytes_being_written_count_in_the_load_report() {
    let node = node_with(&["--pending-page", "3000", "--send-rate", "0"]);
    let alice = Client::connect(node.addr).await.unwrap();
    let a = alice.register("alice", "pw").await.unwrap();
    alice.login(a, "pw").await.unwrap();
    let bob_client = Client::connect(node.addr).await.unwrap();
    let b = bob_client.register("bob", "pw").await.unwrap();
    drop(bob_client);
    let text = "q".repeat(4000);
    for _ in 0..3000 {
        alice.send_direct(b, &text).await.unwrap();
    }
    // Bob logs in over JSON and reads nothing: a reply of about 12 MB.
    let mut bob = Json::connect(node.addr);
    bob.send(&format!(r#"{{"msgid":1,"id":{b},"pwd":"pw"}}"#));
    let report = probe_until(&alice, "the reply's bytes counted", |r| {
        r.outbound_bytes > 1 << 20
    })
    .await;
    assert!(report.outbound_bytes < 16 << 20, "{report:?}");
    drop(bob);
    probe_until(&alice, "nothing queued once bob left", |r| {
        r.outbound_bytes == 0
    })
    .await;
}

/// A JSON connection to `to` from the loopback address `from`.
async fn json_from(from: &str, to: std::net::SocketAddr) -> Json {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(to).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    Json::over(stream)
}

#[tokio::test]
async fn a_trusted_balancer_sends_the_real_client_in_a_proxy_header() {
    // The balancer stands at 127.0.0.2; the harness's own checks come from
    // 127.0.0.1 and need no header.
    const BALANCER: &str = "127.0.0.2";
    let node = node_with(&["--proxy-protocol-from", BALANCER]);

    let mut relayed = json_from(BALANCER, node.addr).await;
    let mut header = Vec::new();
    proxy::encode(
        proxy::Version::V2,
        "203.0.113.7:4444".parse().unwrap(),
        node.addr,
        &mut header,
    );
    relayed.send_raw(&header);
    let pong = relayed.ask(r#"{"msgid":18}"#);
    assert_eq!(pong["msgid"], 19, "the stream after the header is served");

    // From a trusted source, a connection without the header is refused.
    // (Its first bytes are JSON, so the refusal comes at once.)
    let mut bare = json_from(BALANCER, node.addr).await;
    bare.send(r#"{"msgid":18}"#);
    assert!(bare.closed_within(WAIT));
    // And so is a broken header.
    let mut broken = json_from(BALANCER, node.addr).await;
    let mut bad = header.clone();
    bad[12] = 0x99;
    broken.send_raw(&bad);
    assert!(broken.closed_within(WAIT));

    let text = scrape(node.metrics_addr).unwrap();
    assert_eq!(
        metric_value(&text, "chat_node_proxied_connections_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "chat_node_proxy_header_errors_total"),
        Some(2.0)
    );
}

#[tokio::test]
async fn untrusted_sources_are_served_without_a_header() {
    let node = node_with(&["--proxy-protocol-from", "127.0.0.2"]);
    let mut plain = json_from("127.0.0.3", node.addr).await;
    assert_eq!(plain.ask(r#"{"msgid":18}"#)["msgid"], 19);
}
