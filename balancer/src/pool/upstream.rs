//! One node as the balancer sees it: its configured spec (updated in place on
//! reload), what its probes last said, what failed connects said, and the
//! counters the choice reads (open connections, picks).
//!
//! Data flow: the probe thread writes reports and probe failures, the proxy
//! executors write connect outcomes and open/close counts, the choice and the
//! admin endpoint read a [`Snapshot`]. The mutex guards only the health
//! record; counters and the admin API's runtime [`Overrides`] are atomics.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chat_client::LoadReport;

use crate::config::UpstreamSpec;
use crate::metric_names;

/// A node in the pool. Shared by the proxy (through open connections, which
/// keep it alive after a reload removed it), the probes and the admin.
#[derive(Debug)]
pub struct Upstream {
    /// `addr` as text: the metrics label.
    pub label: String,
    spec: RwLock<UpstreamSpec>,
    health: Mutex<Health>,
    /// Open relayed connections.
    pub open: AtomicU32,
    /// Connections picked for this node, ever.
    pub picks: AtomicU64,
    /// Set when a reload dropped the node: its probe stops, it gets no more
    /// connections, its open ones stay.
    pub removed: AtomicBool,
    /// Set through the admin API (`POST /upstreams/ADDR/...`); a reload
    /// clears them.
    overrides: Overrides,
}

/// Runtime overrides from the admin API, read by every snapshot.
#[derive(Debug, Default)]
struct Overrides {
    drain: AtomicBool,
    down: AtomicBool,
    /// 0: none (a weight is at least 1).
    weight: AtomicU32,
}

/// The runtime overrides of a node at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverrideState {
    /// No new connections, except in panic mode (as a node's own drain).
    pub drain: bool,
    /// No new connections at all (as `down` in the config).
    pub down: bool,
    /// Used in place of the configured weight.
    pub weight: Option<u32>,
}

/// One change through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// `drain` (true) and `undrain` (false).
    Drain(bool),
    /// `down` (true) and `up` (false).
    Down(bool),
    /// `weight?value=N`.
    Weight(u32),
}

/// What the balancer knows about a node's health.
#[derive(Debug, Clone)]
pub struct Health {
    /// The last valid report, when it arrived, and `picks` when its probe was
    /// sent (so that picks since then can be added to its connections).
    pub report: Option<(LoadReport, Instant, u64)>,
    /// Failed probes in a row.
    pub probe_failures: u32,
    pub probe_error: Option<String>,
    /// Marked down by probes (until one succeeds).
    pub probe_down: bool,
    /// Failed connects in the current `fail_timeout` window.
    pub connect_failures: u32,
    pub window_start: Instant,
    /// Marked down by failed connects until then.
    pub failed_until: Option<Instant>,
    pub connect_error: Option<String>,
    /// When the node was added or last came back up: the start of its slow start.
    pub up_since: Instant,
}

/// Why a node gets no new connections.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    /// `down` in the config.
    Configured,
    /// `down` through the admin API.
    AdminDown,
    /// `drain` through the admin API.
    AdminDrain,
    /// Its last report says it is draining.
    Draining,
    /// `probe_fails` probes failed in a row; the last error.
    Probes(String),
    /// `max_fails` connects failed within `fail_timeout`; down for the rest of it.
    Connects { error: String, for_secs: f64 },
    /// `max_conns` reached.
    Full,
    /// Dropped by a reload.
    Removed,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Configured => write!(f, "down in the configuration"),
            Unavailable::AdminDown => {
                write!(f, "down through the admin API (POST .../up ends it)")
            }
            Unavailable::AdminDrain => write!(
                f,
                "drained through the admin API (POST .../undrain ends it)"
            ),
            Unavailable::Draining => write!(f, "draining (its last report says so)"),
            Unavailable::Probes(e) => write!(f, "load probes failing: {e}"),
            Unavailable::Connects { error, for_secs } => {
                write!(f, "connects failing ({error}); retried in {for_secs:.1}s")
            }
            Unavailable::Full => write!(f, "max_conns reached"),
            Unavailable::Removed => write!(f, "removed by a reload"),
        }
    }
}

impl Unavailable {
    /// Short name for metrics and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Unavailable::Configured => "configured_down",
            Unavailable::AdminDown => "admin_down",
            Unavailable::AdminDrain => "admin_drain",
            Unavailable::Draining => "draining",
            Unavailable::Probes(_) => "probe_failed",
            Unavailable::Connects { .. } => "connect_failed",
            Unavailable::Full => "max_conns",
            Unavailable::Removed => "removed",
        }
    }
}

/// A consistent view of one node for one decision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub spec: UpstreamSpec,
    pub health: Health,
    pub open: u32,
    pub picks: u64,
    pub unavailable: Option<Unavailable>,
    /// The report, if younger than `report_max_age`.
    pub fresh: bool,
    /// Weight (the admin API's override, else `spec.weight`) scaled by the
    /// slow-start ramp (0.1..=1 of it).
    pub effective_weight: f64,
    pub overrides: OverrideState,
}

impl Upstream {
    pub fn new(spec: UpstreamSpec) -> Upstream {
        let now = Instant::now();
        Upstream {
            label: spec.addr.to_string(),
            spec: RwLock::new(spec),
            health: Mutex::new(Health {
                report: None,
                probe_failures: 0,
                probe_error: None,
                probe_down: false,
                connect_failures: 0,
                window_start: now,
                failed_until: None,
                connect_error: None,
                up_since: now,
            }),
            open: AtomicU32::new(0),
            picks: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            overrides: Overrides::default(),
        }
    }

    /// Applies a change from the admin API.
    pub fn set_override(&self, change: Override) {
        let o = &self.overrides;
        match change {
            Override::Drain(on) => o.drain.store(on, Ordering::Relaxed),
            Override::Down(on) => o.down.store(on, Ordering::Relaxed),
            Override::Weight(w) => o.weight.store(w.max(1), Ordering::Relaxed),
        }
    }

    pub fn overrides(&self) -> OverrideState {
        let o = &self.overrides;
        OverrideState {
            drain: o.drain.load(Ordering::Relaxed),
            down: o.down.load(Ordering::Relaxed),
            weight: Some(o.weight.load(Ordering::Relaxed)).filter(|w| *w > 0),
        }
    }

    /// Drops every override (a reload); returns whether there were any.
    pub fn clear_overrides(&self) -> bool {
        let o = &self.overrides;
        let drain = o.drain.swap(false, Ordering::Relaxed);
        let down = o.down.swap(false, Ordering::Relaxed);
        let weight = o.weight.swap(0, Ordering::Relaxed);
        drain || down || weight > 0
    }

    pub fn spec(&self) -> UpstreamSpec {
        self.spec.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies a reloaded spec; returns whether anything changed.
    pub fn set_spec(&self, spec: UpstreamSpec) -> bool {
        let mut current = self.spec.write().unwrap_or_else(|e| e.into_inner());
        let changed = *current != spec;
        *current = spec;
        changed
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self, now: Instant, report_max_age: Duration) -> Snapshot {
        let spec = self.spec();
        let health = self.health().clone();
        let open = self.open.load(Ordering::Relaxed);
        let overrides = self.overrides();
        let fresh = health
            .report
            .as_ref()
            .is_some_and(|(_, at, _)| now.saturating_duration_since(*at) <= report_max_age);
        let unavailable = if self.removed.load(Ordering::Relaxed) {
            Some(Unavailable::Removed)
        } else if spec.down {
            Some(Unavailable::Configured)
        } else if overrides.down {
            Some(Unavailable::AdminDown)
        } else if overrides.drain {
            Some(Unavailable::AdminDrain)
        } else if health.probe_down {
            Some(Unavailable::Probes(
                health.probe_error.clone().unwrap_or_default(),
            ))
        } else if let Some(until) = health.failed_until.filter(|u| *u > now) {
            Some(Unavailable::Connects {
                error: health.connect_error.clone().unwrap_or_default(),
                for_secs: (until - now).as_secs_f64(),
            })
        } else if health.report.as_ref().is_some_and(|(r, _, _)| r.draining) {
            Some(Unavailable::Draining)
        } else if spec.max_conns > 0 && open >= spec.max_conns {
            Some(Unavailable::Full)
        } else {
            None
        };
        let ramp = if spec.slow_start.is_zero() {
            1.0
        } else {
            let up_for = now.saturating_duration_since(health.up_since).as_secs_f64();
            (0.1 + 0.9 * up_for / spec.slow_start.as_secs_f64()).min(1.0)
        };
        Snapshot {
            effective_weight: overrides.weight.unwrap_or(spec.weight) as f64 * ramp,
            overrides,
            spec,
            health,
            open,
            picks: self.picks.load(Ordering::Relaxed),
            unavailable,
            fresh,
        }
    }

    /// A probe answered: records the report (sanitised) and clears probe
    /// failures. `picks_at_send` is `picks` when the probe was sent.
    pub fn probe_ok(&self, mut report: LoadReport, picks_at_send: u64) {
        for busy in &mut report.shard_busy {
            *busy = if busy.is_finite() {
                busy.clamp(0.0, 1.0)
            } else {
                1.0
            };
        }
        let mut h = self.health();
        if h.probe_down {
            tracing::info!(upstream = %self.label, node = %report.node_id, "upstream up again: probe answered");
            h.up_since = Instant::now();
        }
        let draining = report.draining;
        let was_draining = h.report.as_ref().is_some_and(|(r, _, _)| r.draining);
        if draining != was_draining {
            tracing::info!(upstream = %self.label, draining, "upstream drain state changed");
        }
        h.probe_down = false;
        h.probe_failures = 0;
        h.probe_error = None;
        h.report = Some((report, Instant::now(), picks_at_send));
    }

    /// A probe failed (no connection, no answer in time, an error or junk).
    pub fn probe_failed(&self, error: String, probe_fails: u32) {
        metrics::counter!(metric_names::PROBE_FAILURES_TOTAL, "upstream" => self.label.clone())
            .increment(1);
        let mut h = self.health();
        h.probe_failures = h.probe_failures.saturating_add(1);
        if h.probe_failures >= probe_fails && !h.probe_down {
            h.probe_down = true;
            tracing::warn!(upstream = %self.label, failures = h.probe_failures, %error, "upstream marked down: load probes failing");
        } else if !h.probe_down {
            tracing::debug!(upstream = %self.label, failures = h.probe_failures, %error, "load probe failed");
        }
        h.probe_error = Some(error);
    }

    /// A connect succeeded: passive failures are forgotten.
    pub fn connect_ok(&self) {
        let mut h = self.health();
        h.connect_failures = 0;
    }

    /// A connect failed: nginx `max_fails`/`fail_timeout` accounting.
    pub fn connect_failed(&self, error: String) {
        metrics::counter!(metric_names::CONNECT_FAILURES_TOTAL, "upstream" => self.label.clone())
            .increment(1);
        let spec = self.spec();
        let now = Instant::now();
        let mut h = self.health();
        h.connect_error = Some(error.clone());
        if spec.max_fails == 0 {
            return;
        }
        if now.saturating_duration_since(h.window_start) > spec.fail_timeout {
            h.window_start = now;
            h.connect_failures = 0;
        }
        h.connect_failures += 1;
        if h.connect_failures >= spec.max_fails {
            // Tried again while down (panic mode): extend quietly, the
            // proxy's rate-limited "connect failed" line covers it.
            let was_down = h.failed_until.is_some_and(|u| u > now);
            h.failed_until = Some(now + spec.fail_timeout);
            // Once the timeout passes one more failure marks it down again,
            // as nginx does with the single request it lets through.
            h.connect_failures = spec.max_fails - 1;
            h.window_start = now + spec.fail_timeout;
            h.up_since = now + spec.fail_timeout;
            if !was_down {
                tracing::warn!(upstream = %self.label, %error, fail_timeout = ?spec.fail_timeout, "upstream marked down: connects failing");
            }
        }
    }
}
