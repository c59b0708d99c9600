//! The nodes and the choice between them, separate from moving bytes (as in
//! pingora, load balancing is its own layer).
//!
//! - [`upstream`]: one node's spec and health (reports, probe and connect
//!   failures, open connections, slow start);
//! - [`choice`]: power of two random choices on the reported load.
//!
//! The [`Pool`] holds the current list (swapped whole on reload, each node
//! kept by address so that its counters survive) and the tunables. The proxy
//! and redirect listeners call [`Pool::pick`]; the probe thread and the proxy
//! feed outcomes back into each [`Upstream`]; the admin API sets runtime
//! [`Override`]s on them (drain, down, weight), which a reload clears.

pub mod choice;
pub mod upstream;

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub use choice::Tier;
pub use upstream::{Override, Snapshot, Unavailable, Upstream};

use crate::config::{Tuning, UpstreamSpec};
use crate::metric_names;

/// Every node and the settings the choice and the probes use.
#[derive(Debug)]
pub struct Pool {
    upstreams: RwLock<Arc<Vec<Arc<Upstream>>>>,
    tuning: RwLock<Tuning>,
}

/// A chosen node.
pub struct Pick {
    pub upstream: Arc<Upstream>,
    pub tier: Tier,
}

impl Pool {
    pub fn new(specs: Vec<UpstreamSpec>, tuning: Tuning) -> Pool {
        let list = specs
            .into_iter()
            .map(|s| Arc::new(Upstream::new(s)))
            .collect();
        Pool {
            upstreams: RwLock::new(Arc::new(list)),
            tuning: RwLock::new(tuning),
        }
    }

    pub fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Chooses a node for a new connection, skipping `tried` (nodes that
    /// already failed this connection); `None` when nothing is left: no
    /// node available (and no `--panic`), or every candidate tried.
    pub fn pick(&self, tried: &[Arc<Upstream>]) -> Option<Pick> {
        let list = self.upstreams();
        let tuning = self.tuning();
        let max_age = tuning.report_max_age;
        let now = Instant::now();
        let snaps: Vec<Snapshot> = list.iter().map(|u| u.snapshot(now, max_age)).collect();
        let exclude: Vec<usize> = (0..list.len())
            .filter(|&i| tried.iter().any(|t| Arc::ptr_eq(t, &list[i])))
            .collect();
        let (i, tier, by_report) =
            choice::choose(&snaps, &exclude, tuning.panic, &mut rand::rng())?;
        let upstream = list[i].clone();
        upstream.picks.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric_names::PICKS_TOTAL, "upstream" => upstream.label.clone())
            .increment(1);
        if !by_report {
            metrics::counter!(metric_names::FALLBACK_PICKS_TOTAL).increment(1);
        }
        if tier == Tier::Panic {
            metrics::counter!(metric_names::PANIC_TOTAL).increment(1);
            // In panic mode every connection gets here.
            if let Some(held) = crate::log_limit::allow("panic", "") {
                tracing::warn!(upstream = %upstream.label, "no node available: --panic, trying one anyway{}", crate::log_limit::More(held));
            }
        }
        Some(Pick { upstream, tier })
    }

    /// The node at `addr` (as written in the config, or any spelling of the
    /// same socket address).
    pub fn find(&self, addr: &str) -> Option<Arc<Upstream>> {
        let parsed: Option<std::net::SocketAddr> = addr.parse().ok();
        self.upstreams()
            .iter()
            .find(|u| u.label == addr || parsed.is_some_and(|a| a == u.spec().addr))
            .cloned()
    }

    /// Applies a reloaded configuration: nodes are matched by address (their
    /// counters and health stay), new ones added, missing ones marked removed
    /// (open connections to them stay open).
    pub fn reload(&self, specs: Vec<UpstreamSpec>, tuning: Tuning) {
        let old = self.upstreams();
        let mut list = Vec::with_capacity(specs.len());
        for spec in specs {
            match old.iter().find(|u| u.spec().addr == spec.addr) {
                Some(u) => {
                    if u.set_spec(spec) {
                        tracing::info!(upstream = %u.label, "reload: upstream changed");
                    }
                    let overrides = u.overrides();
                    if u.clear_overrides() {
                        tracing::info!(upstream = %u.label, ?overrides, "reload: runtime overrides from the admin API cleared");
                    }
                    list.push(u.clone());
                }
                None => {
                    let u = Arc::new(Upstream::new(spec));
                    tracing::info!(upstream = %u.label, "reload: upstream added");
                    list.push(u);
                }
            }
        }
        for u in old.iter() {
            if !list.iter().any(|n| Arc::ptr_eq(n, u)) {
                u.removed.store(true, Ordering::Relaxed);
                tracing::info!(upstream = %u.label, open = u.open.load(Ordering::Relaxed), "reload: upstream removed; its open connections stay");
            }
        }
        *self.tuning.write().unwrap_or_else(|e| e.into_inner()) = tuning;
        *self.upstreams.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }
}
