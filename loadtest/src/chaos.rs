//! `--chaos`: faults injected into `--local`'s cluster while the traffic
//! runs, and what each cost.
//!
//! The first fault comes one `--chaos-every` after the traffic starts, the
//! next one interval later, and so on until the traffic ends, going round
//! the kinds of `--chaos-faults` in order ([`FaultKind`]: a node killed
//! with SIGKILL and restarted, `nats-server` restarted, the balancer
//! restarted, a node paused with SIGSTOP for longer than its lease and then
//! resumed). A node fault hits the node with the most open connections
//! then (`chat_node_connections`), so that it always hits users. Faults
//! never overlap: a fault whose
//! recovery is still going on when the next one is due delays it.
//!
//! **Recovery.** A fault has recovered at the first check (every 100 ms,
//! after the injection ended: the process is back and serving, NATS has
//! every node subscribed again, or the paused node was resumed and counted
//! its lease lapse, `chat_node_lease_lapses_total`) at which, on two checks
//! in a row:
//! - every virtual user is connected and logged in (none between a drop
//!   and its re-login): `online_us`, from the fault's start;
//! - and delivery has caught up: the receipts due and not yet received
//!   (`expected − delivered`, less the receipts of sends of unknown outcome
//!   that reached no one) are no more than 250 ms of the offered traffic
//!   (at least 10): `recovery_us`, from the fault's start.
//!
//! A fault not recovered by the end of the drain has no recovery time.
//!
//! **Loss per fault.** Every acknowledged send is kept (intended time and
//! message); at the end, each receipt of one that its recipient never got
//! counts in `acked_lost`, and in the `lost` of the last fault that
//! started at or before the send's intended time (`lost_before_faults`
//! before the first one). When some are missing, their recipients log out
//! and in again at the end: those the login reply lists count in
//! `found_at_final_login` (stuck in the store rather than lost; they stay
//! missing in the counters).
//!
//! **Delivery outside faults.** Delivery latencies (corrected, measured
//! window) of messages whose time in flight, from the intended send to the
//! receipt, overlaps no fault window (from a fault's start to its recovery,
//! open while it recovers) go into their own histogram
//! (`delivery_outside_faults`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chat_testkit::LocalCluster;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::humantime_serde;
use crate::outcome::histogram_serde;
use crate::payload::Stamp;
use crate::population::{Population, Unconfirmed};
use crate::record::Recorder;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a node, then start it again (same ports, node id, data).
    Kill,
    /// SIGKILL `nats-server`, then start it again on the same port.
    Nats,
    /// SIGKILL the balancer, then start it again on the same ports.
    Balancer,
    /// SIGSTOP a node for its lease plus a second, then SIGCONT it.
    Stop,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Nats,
        FaultKind::Balancer,
        FaultKind::Stop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Nats => "nats",
            FaultKind::Balancer => "balancer",
            FaultKind::Stop => "stop",
        }
    }

    fn on_node(self) -> bool {
        matches!(self, FaultKind::Kill | FaultKind::Stop)
    }
}

/// `kill,nats,balancer,stop` (any order, repeats allowed) → the kinds.
pub fn parse_faults(text: &str) -> Result<Vec<FaultKind>, String> {
    let mut kinds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == part)
            .ok_or_else(|| format!("unknown fault {part:?} (kill, nats, balancer, stop)"))?;
        kinds.push(kind);
    }
    if kinds.is_empty() {
        return Err("no fault kind given".into());
    }
    Ok(kinds)
}

/// The chaos settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosConfig {
    /// Time between faults (and from the traffic's start to the first).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The kinds, in turn.
    pub faults: Vec<FaultKind>,
    /// The local nodes' `--lease-ttl`.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl ChaosConfig {
    /// How long a `stop` fault keeps its node paused: past its lease.
    pub fn stop_for(&self) -> Duration {
        self.lease_ttl + Duration::from_secs(1)
    }
}

/// One fault and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// `node-0`, `nats-server`, `balancer`.
    pub target: String,
    /// When it started, µs on the run's clock.
    pub at_us: u64,
    /// How long the injection took (to the process serving again; `stop`:
    /// to the SIGCONT and the node counting its lease lapse).
    pub injected_us: u64,
    /// Why the injection failed, if it did.
    pub error: Option<String>,
    /// Connections that dropped from the start to the recovery (or the end).
    pub dropped: u64,
    /// From the start until every user was connected and logged in again.
    pub online_us: Option<u64>,
    /// From the start until, besides, delivery caught up (see the module).
    pub recovery_us: Option<u64>,
    /// Receipts of acknowledged sends intended from this fault's start to
    /// the next one's that never came.
    pub lost: u64,
}

/// What the faults of a run cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChaosOutcome {
    pub every_us: u64,
    pub lease_ttl_us: u64,
    pub faults: Vec<Fault>,
    /// Receipts of acknowledged sends that never came.
    pub acked_lost: u64,
    /// Of those, the ones of sends intended before the first fault.
    pub lost_before_faults: u64,
    /// Of those, the ones that a fresh login of their recipient at the end
    /// listed as pending: stuck in the store, never pushed.
    #[serde(default)]
    pub found_at_final_login: u64,
    /// Corrected delivery latency of the messages in flight outside every
    /// fault window (measured window only).
    #[serde(with = "histogram_serde")]
    pub delivery_outside_faults: Histogram<u64>,
}

/// The faults' hands on `--local`'s cluster (which [`crate::local::Local`]
/// takes out and tears down when dropped: a fault then fails).
#[derive(Clone)]
pub struct Injector {
    cluster: Arc<Mutex<Option<LocalCluster>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Injector {
    pub fn new(cluster: Arc<Mutex<Option<LocalCluster>>>) -> Injector {
        Injector { cluster }
    }

    /// Runs `f` on the cluster unless it was torn down.
    fn with<T>(&self, f: impl FnOnce(&mut LocalCluster) -> T) -> Result<T, String> {
        match lock(&self.cluster).as_mut() {
            Some(c) => Ok(f(c)),
            None => Err("the cluster was torn down".into()),
        }
    }

    /// The node with the most open connections (`chat_node_connections`;
    /// the first on a tie or when none answers).
    fn busiest_node(&self) -> usize {
        let addrs = self.with(|c| c.metrics_addrs()).unwrap_or_default();
        let open = |addr| {
            chat_testkit::scrape(addr)
                .ok()
                .and_then(|t| chat_testkit::metric_value(&t, "chat_node_connections"))
                .unwrap_or(0.0)
        };
        let counts: Vec<f64> = addrs.into_iter().map(open).collect();
        (0..counts.len())
            .rev()
            .max_by(|&a, &b| counts[a].total_cmp(&counts[b]))
            .unwrap_or(0)
    }

    /// Injects one fault (blocking: run it on a blocking thread); returns
    /// its target, and the error if it failed.
    fn inject(&self, kind: FaultKind, stop_for: Duration) -> (String, Option<String>) {
        let node = if kind.on_node() {
            self.busiest_node()
        } else {
            0
        };
        let target = match kind {
            FaultKind::Kill | FaultKind::Stop => format!("node-{node}"),
            FaultKind::Nats => "nats-server".into(),
            FaultKind::Balancer => "balancer".into(),
        };
        let result = match kind {
            FaultKind::Kill => self
                .with(|c| c.kill9_and_restart_node(node).map_err(|e| e.to_string()))
                .and_then(|r| r),
            FaultKind::Nats => self
                .with(|c| c.restart_nats().map_err(|e| e.to_string()))
                .and_then(|r| r),
            FaultKind::Balancer => self
                .with(|c| c.restart_balancer().map_err(|e| e.to_string()))
                .and_then(|r| r),
            FaultKind::Stop => self.stop(node, stop_for),
        };
        (target, result.err())
    }

    /// SIGSTOP node `i` for `stop_for` (the lock is not held meanwhile),
    /// SIGCONT, then waits (up to 10 s) until the node counted its lease
    /// lapse: from then on it closes its sessions.
    fn stop(&self, i: usize, stop_for: Duration) -> Result<(), String> {
        let metrics = self.with(|c| c.node(i).metrics_addr)?;
        let lapses = || {
            chat_testkit::scrape(metrics)
                .ok()
                .and_then(|t| chat_testkit::metric_value(&t, "chat_node_lease_lapses_total"))
                .unwrap_or(0.0)
        };
        let before = lapses();
        self.with(|c| c.stop_node(i))?;
        std::thread::sleep(stop_for);
        self.with(|c| c.continue_node(i))?;
        let resumed = Instant::now();
        while lapses() <= before {
            if resumed.elapsed() > Duration::from_secs(10) {
                return Err("the node did not count a lease lapse within 10 s of SIGCONT".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The sessions close right after the lapse is counted: let the
        // users see their connections end.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }
}

/// When the faults of a run may come.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The traffic's start and end, µs on the run's clock.
    pub t0: u64,
    pub end_us: u64,
    /// The end of the drain: recoveries are watched until then at most.
    pub deadline: tokio::time::Instant,
    /// The traffic's offered rate, per second.
    pub offered_rate: f64,
}

/// Runs the faults of `config` from `t0 + every` until the traffic's end,
/// each followed by its recovery, watched until the deadline at the latest.
pub async fn run(
    injector: Injector,
    config: ChaosConfig,
    schedule: Schedule,
    pop: Arc<Population>,
    rec: Arc<Recorder>,
) -> Vec<Fault> {
    let Schedule {
        t0,
        end_us,
        deadline,
        offered_rate,
    } = schedule;
    let every = config.every.as_micros() as u64;
    let mut faults = Vec::new();
    let mut next = t0 + every;
    let backlog_limit = (offered_rate * 0.25).max(10.0) as u64;
    while next < end_us {
        tokio::time::sleep_until(rec.clock.at(next)).await;
        let kind = config.faults[faults.len() % config.faults.len()];
        let disconnects = rec.counts.disconnects.load(Ordering::Relaxed);
        let at_us = rec.clock.now_us();
        let window = rec.fault_started(at_us);
        let (inj, stop_for) = (injector.clone(), config.stop_for());
        let (target, error) =
            match tokio::task::spawn_blocking(move || inj.inject(kind, stop_for)).await {
                Ok(done) => done,
                Err(e) => (kind.name().into(), Some(e.to_string())),
            };
        let injected_us = rec.clock.now_us() - at_us;
        eprintln!(
            "chaos: {} {target} at {:.1}s{}",
            kind.name(),
            at_us as f64 / 1e6,
            error
                .as_deref()
                .map_or_else(String::new, |e| format!(": FAILED: {e}"))
        );
        let (online_us, recovery_us) = recover(&pop, &rec, at_us, backlog_limit, deadline).await;
        if let Some(r) = recovery_us {
            rec.fault_ended(window, at_us + r);
        }
        eprintln!(
            "chaos: {} {target}: {}",
            kind.name(),
            match recovery_us {
                Some(r) => format!("recovered after {:.2}s", r as f64 / 1e6),
                None => "not recovered".into(),
            }
        );
        faults.push(Fault {
            kind,
            target,
            at_us,
            injected_us,
            error,
            dropped: rec.counts.disconnects.load(Ordering::Relaxed) - disconnects,
            online_us,
            recovery_us,
            lost: 0,
        });
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        next = (next + every).max(rec.clock.now_us());
    }
    faults
}

/// Watches a fault's recovery (see the module): returns the times from
/// `at_us` until every user was back, and until delivery caught up too.
async fn recover(
    pop: &Population,
    rec: &Recorder,
    at_us: u64,
    backlog_limit: u64,
    deadline: tokio::time::Instant,
) -> (Option<u64>, Option<u64>) {
    let mut online = None;
    let mut held = (false, false);
    loop {
        let now = rec.clock.now_us();
        let all_online = pop
            .users
            .iter()
            .all(|u| u.connected.load(Ordering::Relaxed) && u.online.load(Ordering::Relaxed));
        let caught_up = all_online && {
            let c = rec.counts.snapshot();
            let due = c
                .expected
                .saturating_sub(c.delivered)
                .saturating_sub(pop.unconfirmed_missing());
            due <= backlog_limit
        };
        // Twice in a row: a connection about to close is not yet seen.
        if all_online && held.0 && online.is_none() {
            online = Some(now - at_us);
        }
        if caught_up && held.1 {
            return (online.or(Some(now - at_us)), Some(now - at_us));
        }
        held = (all_online, caught_up);
        if !all_online {
            online = None;
        }
        if tokio::time::Instant::now() >= deadline {
            return (online, None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acknowledged sends, kept to tell at the end which ones were lost.
#[derive(Default)]
pub struct AckedLog {
    sends: Mutex<Vec<(u64, Unconfirmed)>>,
}

impl AckedLog {
    /// Notes an acknowledged send intended at `intended_us`.
    pub fn push(&self, intended_us: u64, message: Unconfirmed) {
        lock(&self.sends).push((intended_us, message));
    }

    /// Counts the receipts of acknowledged sends never received, in total
    /// and per fault (into `faults[i].lost`); returns the total and those
    /// before the first fault.
    pub fn attribute(&self, pop: &Population, faults: &mut [Fault]) -> (u64, u64) {
        let sends = lock(&self.sends);
        let (mut total, mut before) = (0, 0);
        for (intended, m) in sends.iter() {
            let missing = pop.missing_recipients(m).len() as u64;
            if missing == 0 {
                continue;
            }
            if total < 20 {
                tracing::warn!(
                    sender = m.sender,
                    stream = m.stream,
                    seq = m.seq,
                    intended_s = *intended as f64 / 1e6,
                    missing,
                    "an acknowledged message never reached (every) recipient"
                );
            }
            total += missing;
            match faults.iter_mut().rev().find(|f| f.at_us <= *intended) {
                Some(f) => f.lost += missing,
                None => before += missing,
            }
        }
        (total, before)
    }

    /// Receipts of acknowledged sends still missing: logs each recipient
    /// concerned out and in again on its connection (at the end of the run)
    /// and counts those of the missing messages that its login reply lists:
    /// stuck in the store (the node did not push them), not lost. Nothing
    /// is recorded: they stay missing in the counters.
    pub async fn found_at_login(&self, pop: &Population, password: &str) -> u64 {
        let mut by_user: HashMap<u32, Vec<Unconfirmed>> = HashMap::new();
        for (_, m) in lock(&self.sends).iter() {
            for r in pop.missing_recipients(m) {
                by_user.entry(r).or_default().push(*m);
            }
        }
        let mut found = 0;
        for (r, missing) in by_user {
            let user = &pop.users[r as usize];
            let session = user.session();
            let _inbox = user.inbox.lock().await;
            if session.logout().await.is_err() {
                continue;
            }
            let Ok(pending) = session.login(user.id, password).await else {
                continue;
            };
            for stamp in pending.iter().filter_map(|m| Stamp::parse(&m.text)) {
                let is_missing = missing.iter().any(|u| {
                    (u.sender, u.stream, u.seq) == (stamp.sender, stamp.stream, stamp.seq)
                });
                if is_missing {
                    found += 1;
                }
            }
            tracing::warn!(
                recipient = r,
                missing = missing.len(),
                pending = pending.len(),
                "acknowledged messages missing: logged in again to look for them"
            );
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse_and_reject_nonsense() {
        assert_eq!(
            parse_faults("kill, nats,balancer,stop").unwrap(),
            FaultKind::ALL
        );
        assert_eq!(
            parse_faults("stop,stop").unwrap(),
            [FaultKind::Stop, FaultKind::Stop]
        );
        assert!(parse_faults("kill,reboot").unwrap_err().contains("reboot"));
        assert!(parse_faults(" , ").is_err());
    }

    #[test]
    fn a_stop_outlasts_the_lease() {
        let c = ChaosConfig {
            every: Duration::from_secs(30),
            faults: FaultKind::ALL.to_vec(),
            lease_ttl: Duration::from_secs(3),
        };
        assert!(c.stop_for() > c.lease_ttl);
    }
}
