//! Shared pieces of the cluster tests: a local cluster started through
//! `chat-testkit`, FlatBuffers users placed on chosen nodes, and waits
//! that each end at a deadline (for events, a login once a lease expired, a
//! metric).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_client::{Client, ErrorCode, Event, Login};
use chat_testkit::{ClusterOptions, LocalCluster, metric_value, scrape};

/// `--lease-ttl` of every test node: short, so that a crashed node's users
/// are free again quickly.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// A cluster of `nodes` nodes with one shard each; `node_args[i]` are extra
/// flags for node `i`. Node logs at `TEST_NODE_LOG` (default warn).
pub fn cluster(nodes: usize, node_args: &[&[&str]]) -> LocalCluster {
    LocalCluster::start(ClusterOptions {
        nodes,
        shards: 1,
        lease_ttl: LEASE_TTL,
        node_args: node_args
            .iter()
            .map(|args| args.iter().map(|s| s.to_string()).collect())
            .collect(),
        log: std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        binary: Some(env!("CARGO_BIN_EXE_chat-node").into()),
        ..ClusterOptions::default()
    })
    .expect("starting a local cluster")
}

/// Registers `name` (password "pw") and logs in, both on the node at `addr`.
pub async fn fb_user(addr: SocketAddr, name: &str) -> (Client, u64) {
    let c = Client::connect(addr).await.expect("connect");
    let id = c.register(name, "pw").await.expect("register");
    c.login(id, "pw").await.expect("login");
    (c, id)
}

/// Asserts that the next event of `client` is a presence push about `user`,
/// within `within`.
pub async fn expect_presence(
    client: &Client,
    user: u64,
    name: &str,
    online: bool,
    within: Duration,
) {
    match client.next_event_timeout(within).await {
        Ok(Event::Presence {
            user_id,
            name: n,
            online: o,
        }) => assert_eq!(
            (user_id, n.as_str(), o),
            (user, name, online),
            "presence push"
        ),
        other => panic!(
            "expected a presence push ({name} online: {online}) within {within:?}, got {other:?}"
        ),
    }
}

/// Logs `user` in on the node at `addr`, retrying while the user is still
/// claimed (`AlreadyOnline`) by a node that died, until `within` has passed.
/// Returns the session and when the login succeeded.
pub async fn login_once_released(
    addr: SocketAddr,
    user: u64,
    password: &str,
    within: Duration,
) -> (Client, Login, Instant) {
    let started = Instant::now();
    loop {
        let c = Client::connect(addr).await.expect("connect");
        match c.login(user, password).await {
            Ok(login) => return (c, login, Instant::now()),
            Err(e) if e.code() == Some(ErrorCode::AlreadyOnline) => {
                assert!(
                    started.elapsed() < within,
                    "user {user} still claimed {:?} after losing its node (lease {LEASE_TTL:?})",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("login of user {user} on {addr}: {e}"),
        }
    }
}

/// The sum of the series matching `series` on the node whose metrics are at
/// `metrics_addr` (0 when it has none yet).
pub async fn metric(metrics_addr: SocketAddr, series: &str) -> f64 {
    let series = series.to_owned();
    tokio::task::spawn_blocking(move || {
        let text = scrape(metrics_addr).expect("GET /metrics");
        metric_value(&text, &series).unwrap_or(0.0)
    })
    .await
    .expect("scrape task")
}

/// Polls `series` on a node until `ok(value)`, up to `within`; returns the
/// last value read.
pub async fn wait_for_metric(
    metrics_addr: SocketAddr,
    series: &str,
    within: Duration,
    ok: impl Fn(f64) -> bool,
) -> Result<f64, f64> {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(metrics_addr, series).await;
        if ok(value) {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(value);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
