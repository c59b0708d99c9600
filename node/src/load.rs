//! What the node reports of its load to balancers (`LoadRequest` →
//! `LoadReply`): open connections against capacity, how busy each shard's
//! executor was over the last second, the bytes queued to clients, and
//! whether the node is draining.
//!
//! Each shard writes its own figures into its [`ShardLoad`] (connections as
//! they open and close, the rest once a second from a sampling task); any
//! shard answers a probe by reading them all. Relaxed atomics suffice: a
//! report is a snapshot for a heuristic, not a ledger.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::command::LoadReport;
use crate::metric_names;

/// One shard's figures.
#[derive(Debug, Default)]
pub struct ShardLoad {
    pub connections: AtomicU32,
    /// Busy fraction of the last second, in millionths.
    busy_ppm: AtomicU32,
    pub outbound_bytes: AtomicU64,
}

/// The node's figures, shared by every shard.
#[derive(Debug)]
pub struct NodeLoad {
    pub node_id: String,
    /// Where clients reach the node (`--advertise-addr`, else the bound
    /// client address); set once the port is bound.
    pub address: OnceLock<String>,
    /// `--max-connections`.
    pub capacity: u32,
    draining: AtomicBool,
    pub shards: Vec<ShardLoad>,
}

impl NodeLoad {
    pub fn new(node_id: String, capacity: u32, shards: usize) -> NodeLoad {
        NodeLoad {
            node_id,
            address: OnceLock::new(),
            capacity,
            draining: AtomicBool::new(false),
            shards: (0..shards).map(|_| ShardLoad::default()).collect(),
        }
    }

    /// Open client connections on every shard.
    pub fn connections(&self) -> u32 {
        self.shards
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// Marks the node as taking no new connections (or again taking them).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        metrics::gauge!(metric_names::DRAINING).set(if draining { 1.0 } else { 0.0 });
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> LoadReport {
        LoadReport {
            node_id: self.node_id.clone(),
            address: self.address.get().cloned().unwrap_or_default(),
            connections: self.connections(),
            capacity: self.capacity,
            shard_busy: self
                .shards
                .iter()
                .map(|s| s.busy_ppm.load(Ordering::Relaxed) as f32 / 1e6)
                .collect(),
            outbound_bytes: self
                .shards
                .iter()
                .map(|s| s.outbound_bytes.load(Ordering::Relaxed))
                .sum(),
            draining: self.draining(),
        }
    }
}

impl ShardLoad {
    /// Records that the executor ran tasks for `busy` of the last `window`;
    /// returns the fraction.
    pub fn set_busy(&self, busy: Duration, window: Duration) -> f64 {
        let fraction = (busy.as_secs_f64() / window.as_secs_f64().max(1e-9)).clamp(0.0, 1.0);
        self.busy_ppm
            .store((fraction * 1e6) as u32, Ordering::Relaxed);
        fraction
    }
}

thread_local! {
    /// This shard thread's time spent running tasks since the last sample,
    /// and since when it has been running (not parked).
    static BUSY: std::cell::Cell<(Duration, Option<Instant>)> =
        const { std::cell::Cell::new((Duration::ZERO, None)) };
}

/// The shard's runtime is about to park (nothing to run): ends a busy span.
pub fn parked() {
    BUSY.with(|b| {
        let (busy, since) = b.get();
        b.set((busy + since.map_or(Duration::ZERO, |s| s.elapsed()), None));
    });
}

/// The shard's runtime woke up: starts a busy span.
pub fn unparked() {
    BUSY.with(|b| b.set((b.get().0, Some(Instant::now()))));
}

/// The busy time since the last call, on this thread (the sampler runs on
/// the shard it samples, so its own span is still open and is split).
fn take_busy() -> Duration {
    BUSY.with(|b| {
        let (busy, since) = b.get();
        let now = Instant::now();
        let open = since.map_or(Duration::ZERO, |s| now.duration_since(s));
        b.set((Duration::ZERO, since.map(|_| now)));
        busy + open
    })
}

/// Samples the running shard once a second: its busy fraction (time spent
/// running tasks, counted by the runtime's park and unpark hooks) and the
/// bytes its sessions have queued (`queued` computes them).
pub async fn sample(load: &NodeLoad, shard: usize, label: String, queued: impl Fn() -> u64) {
    const EVERY: Duration = Duration::from_secs(1);
    let busy = metrics::gauge!(metric_names::SHARD_BUSY_RATIO, "shard" => label.clone());
    let outbound = metrics::gauge!(metric_names::OUTBOUND_BYTES, "shard" => label);
    let mine = &load.shards[shard];
    let mut last = Instant::now();
    let _ = take_busy();
    loop {
        tokio::time::sleep(EVERY).await;
        let ran = take_busy();
        let window = last.elapsed();
        last = Instant::now();
        busy.set(mine.set_busy(ran, window));
        let bytes = queued();
        mine.outbound_bytes.store(bytes, Ordering::Relaxed);
        outbound.set(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_adds_up_the_shards() {
        let load = NodeLoad::new("n1".into(), 100, 2);
        load.address.set("127.0.0.1:6000".into()).unwrap();
        load.shards[0].connections.store(3, Ordering::Relaxed);
        load.shards[1].connections.store(4, Ordering::Relaxed);
        load.shards[0].outbound_bytes.store(10, Ordering::Relaxed);
        load.shards[1].outbound_bytes.store(5, Ordering::Relaxed);
        load.shards[0].set_busy(Duration::from_millis(250), Duration::from_secs(1));
        load.shards[1].set_busy(Duration::from_secs(3), Duration::from_secs(1));
        load.set_draining(true);
        let r = load.report();
        assert_eq!((r.connections, r.capacity, r.outbound_bytes), (7, 100, 15));
        assert_eq!(r.shard_busy, vec![0.25, 1.0]);
        assert!(r.draining);
        assert_eq!(
            (r.node_id.as_str(), r.address.as_str()),
            ("n1", "127.0.0.1:6000")
        );
    }
}
