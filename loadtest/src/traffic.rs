//! Chat traffic on a schedule: the pacer computes the intended time of the
//! k-th action of a segment (`start + k / rate`) and starts each when it is
//! due, whatever the server is doing (open model), or hands it to one user
//! who waits for the previous ack first (closed model). Every action's
//! latency counts from its intended time (corrected) and from its actual
//! start (uncorrected); how late the pacer itself started it is recorded as
//! the generator's lag.
//!
//! An action is a direct message to a random friend, a group message, or
//! (in `mixed`) a logout followed by a login. Each message carries a
//! [`Stamp`] so that its recipients can measure delivery.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;

use crate::config::{Model, RunConfig, ScenarioKind};
use crate::outcome::Metric;
use crate::payload::{GROUP_STREAM, Stamp};
use crate::population::{Population, User};
use crate::record::{Recorder, add, inc};
use crate::session::Ack;

/// A stretch of traffic at one rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub start_us: u64,
    pub end_us: u64,
    pub rate: f64,
}

impl Segment {
    /// Intended time of action `k`.
    fn at(&self, k: u64) -> u64 {
        self.start_us + (k as f64 * 1e6 / self.rate) as u64
    }
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Group,
    Relogin,
}

/// Runs the traffic of one segment; returns when its last action has been
/// started (acks and deliveries may still be in flight).
pub async fn run_segment(
    segment: Segment,
    pop: &Arc<Population>,
    rec: &Arc<Recorder>,
    config: &Arc<RunConfig>,
) {
    let (pop, rec, config) = (pop.clone(), rec.clone(), config.clone());
    // The pacer sleeps on its own thread: tokio's timers fire on a 1 ms
    // grid, which would make every send up to a millisecond late (and the
    // corrected latency that much longer); a thread sleeps to within tens
    // of microseconds.
    let paced = tokio::task::spawn_blocking(move || pace(segment, &pop, &rec, &config)).await;
    if let Err(e) = paced {
        tracing::error!(error = %e, "the pacer failed");
    }
}

/// The pacer's loop (on a blocking thread, inside the runtime).
fn pace(segment: Segment, pop: &Arc<Population>, rec: &Arc<Recorder>, config: &Arc<RunConfig>) {
    let senders: Vec<u32> = pop
        .users
        .iter()
        .filter(|u| u.active && can_send(u, config.scenario))
        .map(|u| u.index)
        .collect();
    if senders.is_empty() {
        rec.error("schedule: no user can send (no friends or groups)");
        return;
    }
    let closed =
        (config.model == Model::Closed).then(|| spawn_closed_loops(&senders, pop, rec, config));
    let mut rng = SmallRng::from_os_rng();
    let mut k = 0u64;
    loop {
        let intended = segment.at(k);
        if intended >= segment.end_us {
            break;
        }
        let due = rec.clock.instant(intended);
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Every action due by now, each with its own intended time.
        let now = rec.clock.now_us();
        while segment.at(k) <= now && segment.at(k) < segment.end_us {
            let intended = segment.at(k);
            k += 1;
            if rec.in_window(intended) {
                inc(&rec.counts.window_offered);
            }
            let sender = senders[rng.random_range(0..senders.len())];
            rec.lag(intended, rec.clock.now_us());
            match &closed {
                Some(queues) => {
                    let _ = queues[sender_slot(&senders, sender)].send(intended);
                }
                None => {
                    let kind = pick_kind(config, &mut rng);
                    if let Some(ack) = act(kind, sender, intended, pop, rec, config, &mut rng) {
                        let rec = rec.clone();
                        tokio::spawn(async move { finish(ack, rec).await });
                    }
                }
            }
        }
    }
}

fn can_send(user: &User, scenario: ScenarioKind) -> bool {
    match scenario {
        ScenarioKind::Group => !user.groups.is_empty(),
        ScenarioKind::Mixed => !user.friends.is_empty() || !user.groups.is_empty(),
        _ => !user.friends.is_empty(),
    }
}

fn sender_slot(senders: &[u32], sender: u32) -> usize {
    senders.binary_search(&sender).unwrap_or(0)
}

fn pick_kind(config: &RunConfig, rng: &mut SmallRng) -> Kind {
    match config.scenario {
        ScenarioKind::Group => Kind::Group,
        ScenarioKind::Mixed => {
            let m = &config.mix;
            let x = rng.random::<f64>() * (m.direct + m.group + m.relogin);
            if x < m.direct {
                Kind::Direct
            } else if x < m.direct + m.group {
                Kind::Group
            } else {
                Kind::Relogin
            }
        }
        _ => Kind::Direct,
    }
}

/// A send in flight: its ack, and when it was intended and made.
pub struct InFlight {
    ack: Ack,
    intended: u64,
    started: u64,
}

/// Starts one action by `sender`; returns the send to await, if any.
fn act(
    kind: Kind,
    sender: u32,
    intended: u64,
    pop: &Arc<Population>,
    rec: &Arc<Recorder>,
    config: &Arc<RunConfig>,
    rng: &mut SmallRng,
) -> Option<InFlight> {
    let user = &pop.users[sender as usize];
    let kind = match kind {
        Kind::Direct if user.friends.is_empty() => Kind::Group,
        Kind::Group if user.groups.is_empty() => Kind::Direct,
        k => k,
    };
    if kind == Kind::Relogin {
        tokio::spawn(relogin(user.clone(), intended, rec.clone(), config.clone()));
        return None;
    }
    if !user.online.load(Ordering::Relaxed) {
        rec.error("send: sender offline");
        inc(&rec.counts.send_failed);
        return None;
    }
    let started = rec.clock.now_us();
    let (recipients, sent) = match kind {
        Kind::Group => {
            let g = user.groups[rng.random_range(0..user.groups.len())];
            let group = &pop.groups[g as usize];
            let stream = GROUP_STREAM | u64::from(g);
            let text = stamp(user, stream, intended, started, config);
            (
                group.members.len() as u64 - 1,
                user.session.send_group(group.id, &text),
            )
        }
        _ => {
            let f = user.friends[rng.random_range(0..user.friends.len())];
            let stream = u64::from(f);
            let text = stamp(user, stream, intended, started, config);
            (1, user.session.send_direct(pop.users[f as usize].id, &text))
        }
    };
    match sent {
        Ok(ack) => {
            inc(&rec.counts.sent);
            add(&rec.counts.expected, recipients);
            if rec.in_window(intended) {
                inc(&rec.counts.window_sent);
            }
            Some(InFlight {
                ack,
                intended,
                started,
            })
        }
        Err(f) => {
            inc(&rec.counts.send_failed);
            rec.error(format!("send: {}", f.0));
            None
        }
    }
}

fn stamp(user: &User, stream: u64, intended: u64, sent: u64, config: &RunConfig) -> String {
    Stamp {
        sender: user.index,
        stream,
        seq: user.next_seq(stream),
        intended_us: intended,
        sent_us: sent,
    }
    .text(config.text_size)
}

/// Waits for a send's ack and records it.
async fn finish(f: InFlight, rec: Arc<Recorder>) {
    match f.ack.wait().await {
        Ok(true) => {
            rec.latency(Metric::SendAck, f.intended, f.started);
            inc(&rec.counts.acked);
            if rec.in_window(f.intended) {
                inc(&rec.counts.window_acked);
            }
        }
        Ok(false) => {}
        Err(failure) => {
            inc(&rec.counts.send_failed);
            rec.error(format!("send: {}", failure.0));
        }
    }
}

/// Logs a user out and in again: what it missed meanwhile arrives with the
/// login. Login latency counts from the action's intended time.
async fn relogin(user: Arc<User>, intended: u64, rec: Arc<Recorder>, config: Arc<RunConfig>) {
    if !user.online.swap(false, Ordering::Relaxed) {
        return;
    }
    user.ack_all();
    if let Err(f) = user.session.logout().await {
        rec.error(format!("logout: {}", f.0));
        return;
    }
    inc(&rec.counts.logouts);
    let started = rec.clock.now_us();
    match user.session.login(user.id, &config.password).await {
        Ok(pending) => {
            rec.latency(Metric::Login, intended, started);
            inc(&rec.counts.logins);
            for m in &pending {
                user.receive(m, &rec, config.ack_every);
            }
            user.ack_all();
            user.online.store(true, Ordering::Relaxed);
        }
        Err(f) => rec.error(format!("login: {}", f.0)),
    }
}

/// Closed model: one task per sender, each taking its intended times in
/// turn and waiting for the ack of one message before sending the next.
fn spawn_closed_loops(
    senders: &[u32],
    pop: &Arc<Population>,
    rec: &Arc<Recorder>,
    config: &Arc<RunConfig>,
) -> Vec<mpsc::UnboundedSender<u64>> {
    senders
        .iter()
        .map(|&sender| {
            let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
            let (pop, rec, config) = (pop.clone(), rec.clone(), config.clone());
            tokio::spawn(async move {
                let mut rng = SmallRng::from_os_rng();
                while let Some(intended) = rx.recv().await {
                    let kind = match pick_kind(&config, &mut rng) {
                        Kind::Relogin => Kind::Direct,
                        k => k,
                    };
                    if let Some(f) = act(kind, sender, intended, &pop, &rec, &config, &mut rng) {
                        finish(f, rec.clone()).await;
                    }
                }
            });
            tx
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_the_rate() {
        let s = Segment {
            start_us: 1_000_000,
            end_us: 2_000_000,
            rate: 4.0,
        };
        let times: Vec<u64> = (0..5).map(|k| s.at(k)).collect();
        assert_eq!(
            times,
            vec![1_000_000, 1_250_000, 1_500_000, 1_750_000, 2_000_000]
        );
    }
}
