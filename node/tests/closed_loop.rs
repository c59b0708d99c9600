//! Every request a client writes is handled: closed-loop one-to-one traffic
//! at saturation over real TCP, in both protocols, counted end to end.
//!
//! 50 sender/receiver pairs; each sender writes its next message only once
//! its receiver has been pushed the previous one (the generator of issue 18,
//! which found requests read by the node and never handled: the pair then
//! stalls for good). The test counts what the senders wrote and what the
//! receivers got, and fails on any pair that stalls, any loss and any
//! difference between the clients' counts and the node's own counters.
//! Several short runs, each on a fresh node, because a lost wake-up shows in
//! some runs only.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_client::Client;
use chat_testkit::{BalancerOptions, LocalBalancer, LocalNode, NodeOptions, metric_value};
use common::{json_register, node_with};

const PAIRS: usize = 50;
const RUNS: usize = 4;
const RUN_FOR: Duration = Duration::from_secs(5);
/// A push not seen this long after its send means the pair stalled.
const STALL: Duration = Duration::from_secs(5);

/// What one pair did in one run.
#[derive(Debug, Default, Clone, Copy)]
struct PairCount {
    written: u64,
    delivered: u64,
    stalled: bool,
}

/// The node's own count of direct-message requests it handled.
fn node_handled(node: &LocalNode) -> f64 {
    let text = chat_testkit::scrape(node.metrics_addr).expect("scraping /metrics");
    metric_value(
        &text,
        r#"chat_node_requests_total{kind="direct_message",outcome="ok"}"#,
    )
    .unwrap_or(0.0)
}

fn check(protocol: &str, run: usize, counts: &[PairCount], handled: f64) {
    let written: u64 = counts.iter().map(|c| c.written).sum();
    let delivered: u64 = counts.iter().map(|c| c.delivered).sum();
    let stalled: Vec<usize> = (0..counts.len()).filter(|&i| counts[i].stalled).collect();
    eprintln!(
        "{protocol} run {run}: written {written}, delivered {delivered}, node handled {handled}, stalled pairs {stalled:?}"
    );
    assert!(
        stalled.is_empty(),
        "{protocol} run {run}: pairs {stalled:?} stalled: a written request was never handled (written {written}, delivered {delivered}, node handled {handled})"
    );
    assert_eq!(
        written, delivered,
        "{protocol} run {run}: every message delivered"
    );
    assert_eq!(
        handled, written as f64,
        "{protocol} run {run}: the node handled every request written"
    );
    assert!(
        written > PAIRS as u64 * 10,
        "{protocol} run {run}: the run carried traffic"
    );
}

// ---- seed JSON, raw sockets ----

/// Reads NUL-terminated objects from a socket.
struct Objects<R> {
    read: R,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Objects<R> {
    fn new(read: R) -> Self {
        Objects {
            read,
            buf: Vec::new(),
        }
    }

    /// The next object whose msgid is `msgid` (others are skipped), or
    /// `None` when the connection ends or nothing comes for `STALL`.
    async fn next_of(&mut self, msgid: u32) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let tag = format!("{{\"msgid\":{msgid},");
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let object: Vec<u8> = self.buf.drain(..=end).collect();
                let object = String::from_utf8_lossy(&object[..end]).into_owned();
                if object.starts_with(&tag) {
                    return Some(object);
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(STALL, self.read.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

async fn json_login(addr: SocketAddr, id: u64, rcvbuf: Option<u32>) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(format!("{{\"msgid\":1,\"id\":{id},\"pwd\":\"123456\"}}\0").as_bytes())
        .await
        .unwrap();
    let mut objects = Objects::new(&mut stream);
    let reply = objects.next_of(2).await.expect("login reply");
    assert!(reply.contains("\"errno\":0"), "{reply}");
    assert!(objects.buf.is_empty());
    stream
}

async fn json_pair(addr: SocketAddr, from: u64, to: u64) -> PairCount {
    use tokio::io::AsyncWriteExt;
    let sender = json_login(addr, from, Some(2048)).await;
    let mut receiver = Objects::new(json_login(addr, to, None).await);
    // The sender's acknowledgements (msgid 12) are read by a task of their
    // own: the next request is written as soon as the push arrives, while
    // the node may still be writing the previous acknowledgement.
    let (acks, mut sender) = sender.into_split();
    let ack_reader = tokio::spawn(async move {
        let mut acks = Objects::new(acks);
        let mut n = 0u64;
        while acks.next_of(12).await.is_some() {
            n += 1;
        }
        n
    });
    let mut count = PairCount::default();
    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        let n = count.written;
        let request = format!(
            "{{\"msgid\":6,\"id\":{from},\"name\":\"s\",\"toid\":{to},\"msg\":\"m{n}\",\"time\":\"t\"}}\0"
        );
        sender.write_all(request.as_bytes()).await.expect("write");
        count.written += 1;
        match receiver.next_of(6).await {
            Some(push) => {
                assert!(push.contains(&format!("\"msg\":\"m{n}\"")), "{push}");
                count.delivered += 1;
            }
            None => {
                count.stalled = true;
                break;
            }
        }
    }
    sender.shutdown().await.unwrap();
    let acked = ack_reader.await.unwrap();
    if acked != count.written {
        count.stalled = true;
    }
    count
}

/// Runs the pairs over JSON against `addr` (a node, or a balancer in front
/// of `node`) and checks the counts.
fn json_closed_loop(what: &str, node: &LocalNode, addr: SocketAddr, run: usize) {
    // One thread drives every connection, as a lean generator does.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let users: Vec<u64> = (0..PAIRS * 2)
        .map(|i| json_register(node.addr, &format!("u{i}")))
        .collect();
    let counts = runtime.block_on(async move {
        let tasks: Vec<_> = users
            .chunks(2)
            .map(|pair| tokio::spawn(json_pair(addr, pair[0], pair[1])))
            .collect();
        let mut counts = Vec::new();
        for task in tasks {
            counts.push(task.await.unwrap());
        }
        counts
    });
    check(what, run, &counts, node_handled(node));
}

#[test]
fn json_closed_loop_handles_every_request() {
    for run in 0..RUNS {
        let node = node_with(&[]);
        json_closed_loop("json", &node, node.addr, run);
    }
}

/// One shard, whose executor also runs the store's writer (the default on
/// two cores).
#[test]
fn json_closed_loop_with_the_writer_on_the_shard_handles_every_request() {
    for run in 0..RUNS / 2 {
        let node = LocalNode::start(NodeOptions {
            binary: Some(env!("CARGO_BIN_EXE_chat-node").into()),
            shards: 1,
            args: vec!["--store-on-shard".into()],
            ..NodeOptions::default()
        })
        .expect("starting chat-node");
        json_closed_loop("json, writer on the shard", &node, node.addr, run);
    }
}

/// The same through chat-balancer's proxy mode: the relay moves every byte
/// both ways (its two directions share one task; see its module doc).
#[test]
fn json_closed_loop_through_the_balancer_handles_every_request() {
    let binary = chat_testkit::find_binary("chat-balancer", "CHAT_BALANCER_BIN")
        .unwrap_or_else(|e| panic!("{e}"));
    for run in 0..RUNS / 2 {
        let node = node_with(&[]);
        let balancer = LocalBalancer::start(BalancerOptions {
            binary: Some(binary.clone()),
            upstreams: vec![node.addr.to_string()],
            log: "warn".into(),
            ..BalancerOptions::default()
        })
        .expect("starting chat-balancer");
        json_closed_loop("json via balancer", &node, balancer.addr, run);
    }
}

// ---- FlatBuffers, the client library ----

async fn fb_pair(addr: SocketAddr, from: u64, to: u64) -> PairCount {
    let sender = Client::connect(addr).await.expect("connect");
    sender.login(from, "pw").await.expect("login");
    let receiver = Client::connect(addr).await.expect("connect");
    receiver.login(to, "pw").await.expect("login");
    let mut count = PairCount::default();
    let mut acks = Vec::new();
    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        let n = count.written;
        // The next send goes out as soon as the push arrives, without
        // waiting for the previous acknowledgement.
        acks.push(
            sender
                .start_request(&chat_client::Request::DirectMessage {
                    user_id: from,
                    to_id: to,
                    text: &format!("m{n}"),
                })
                .expect("queue the send"),
        );
        count.written += 1;
        match receiver.next_message_timeout(STALL).await {
            Ok(message) => {
                assert_eq!(message.text, format!("m{n}"));
                count.delivered += 1;
                if n % 64 == 63 {
                    receiver.ack(message.id).await.expect("ack");
                }
            }
            Err(_) => {
                count.stalled = true;
                break;
            }
        }
    }
    for ack in acks {
        if !matches!(tokio::time::timeout(STALL, ack.wait()).await, Ok(Ok(_))) {
            count.stalled = true;
        }
    }
    count
}

#[test]
fn flatbuffers_closed_loop_handles_every_request() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for run in 0..RUNS {
        let node = node_with(&[]);
        let addr = node.addr;
        let counts = runtime.block_on(async move {
            let registrar = Client::connect(addr).await.expect("connect");
            let mut users = Vec::new();
            for i in 0..PAIRS * 2 {
                users.push(registrar.register(&format!("u{i}"), "pw").await.unwrap());
            }
            let tasks: Vec<_> = users
                .chunks(2)
                .map(|pair| tokio::spawn(fb_pair(addr, pair[0], pair[1])))
                .collect();
            let mut counts = Vec::new();
            for task in tasks {
                counts.push(task.await.unwrap());
            }
            counts
        });
        check("flatbuffers", run, &counts, node_handled(&node));
    }
}
