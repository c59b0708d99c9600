//! Shared pieces of the balancer's end-to-end tests: nodes and balancers
//! started through `chat-testkit`, a seed-JSON connection, polling with
//! deadlines.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chat_testkit::{BalancerOptions, LocalBalancer, LocalNode, NodeOptions, metric_value, scrape};
use serde_json::Value;

/// The `chat-node` binary: `CHAT_NODE_BIN`, else the one next to this
/// test's executable. Cargo builds only this crate's own binaries for its
/// tests, so the test command builds the node first (`scripts/test.sh` runs
/// `cargo build --workspace --all-targets` before the tests); a missing
/// binary fails the test with the harness's message saying so.
pub fn node_binary() -> std::path::PathBuf {
    chat_testkit::find_binary("chat-node", "CHAT_NODE_BIN").unwrap_or_else(|e| panic!("{e}"))
}

pub fn node(args: &[&str]) -> LocalNode {
    LocalNode::start(NodeOptions {
        binary: Some(node_binary()),
        shards: 1,
        args: args.iter().map(|s| s.to_string()).collect(),
        log: std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        ..NodeOptions::default()
    })
    .expect("starting chat-node")
}

pub fn balancer(upstreams: &[String], args: &[&str]) -> LocalBalancer {
    LocalBalancer::start(BalancerOptions {
        binary: Some(env!("CARGO_BIN_EXE_chat-balancer").into()),
        upstreams: upstreams.to_vec(),
        args: args.iter().map(|s| s.to_string()).collect(),
        log: std::env::var("TEST_BALANCER_LOG").unwrap_or_else(|_| "info".into()),
        threads: 2,
    })
    .expect("starting chat-balancer")
}

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what`
/// after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The balancer's view of the upstream at `addr` in /status.json.
pub fn upstream_status(b: &LocalBalancer, addr: SocketAddr) -> Option<Value> {
    let status = b.status_json().ok()?;
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["address"] == addr.to_string())
        .cloned()
}

pub fn state(b: &LocalBalancer, addr: SocketAddr) -> String {
    upstream_status(b, addr)
        .and_then(|u| u["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits until every upstream has reported at least once.
pub fn wait_reports(b: &LocalBalancer, addrs: &[SocketAddr]) {
    wait_for("first load reports", Duration::from_secs(10), || {
        addrs
            .iter()
            .all(|a| upstream_status(b, *a).is_some_and(|u| u["report"].is_object()))
            .then_some(())
    });
}

/// Open client connections a node counts (its `chat_node_connections` gauge).
pub fn node_connections(node: &LocalNode) -> f64 {
    scrape(node.metrics_addr)
        .ok()
        .and_then(|m| metric_value(&m, "chat_node_connections"))
        .unwrap_or(0.0)
}

pub fn balancer_metric(b: &LocalBalancer, series: &str) -> f64 {
    b.metrics()
        .ok()
        .and_then(|m| metric_value(&m, series))
        .unwrap_or(0.0)
}

/// A connection speaking the seed's JSON protocol (NUL-terminated objects).
pub struct Json {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Json {
    pub fn connect(addr: SocketAddr) -> Json {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        Json::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Json {
        stream.set_nodelay(true).unwrap();
        Json {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, request: &str) {
        let mut bytes = request.as_bytes().to_vec();
        bytes.push(0);
        self.stream.write_all(&bytes).expect("write");
    }

    /// The next object, or `None` if nothing complete arrives in `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let object: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&object[..end]).ok();
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next object whose msgid is `msgid` (others skipped), within 10 s.
    pub fn recv_msgid(&mut self, msgid: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .try_recv(left)
                .unwrap_or_else(|| panic!("no msgid {msgid} within 10 s"));
            if v["msgid"] == msgid {
                return v;
            }
        }
    }

    pub fn ask(&mut self, request: &str, reply_msgid: u64) -> Value {
        self.send(request);
        self.recv_msgid(reply_msgid)
    }

    /// A seed-JSON ping (msgid 18 → 19); whether it was answered in `wait`.
    pub fn ping(&mut self, wait: Duration) -> bool {
        self.send(r#"{"msgid":18}"#);
        self.try_recv(wait).is_some_and(|v| v["msgid"] == 19)
    }
}

/// Opens a connection through `addr` and checks that a ping is answered.
pub fn ping_through(addr: SocketAddr) -> Json {
    let mut c = Json::connect(addr);
    assert!(
        c.ping(Duration::from_secs(5)),
        "ping through {addr} answered"
    );
    c
}
