//! Chat traffic on a schedule: the pacer computes the intended time of the
//! k-th action of a segment (`start + k / rate`) and starts each when it is
//! due, whatever the server is doing (open model), or releases it to one
//! closed loop that takes its actions one at a time (closed model). Every
//! action's latency counts from its intended time (corrected) and from its
//! actual start (uncorrected); how late the pacer itself started (or
//! released) it is recorded as the generator's lag.
//!
//! An action is a direct message to a random friend, a group message, or
//! (in `mixed` and `history`, by `--mix`) a logout followed by a login, a
//! mark-read of a conversation up to the last message the user received in
//! it, or a browse: 1 to 3 history pages of one conversation, each asked
//! once the previous one arrived (its latency from then; the first page's
//! from the action's scheduled time). Each message carries a [`Stamp`] so
//! that its recipients can measure delivery. Browses and mark-reads count in
//! the window's `window_sent`/`window_acked` like sends (so the achieved
//! rate is of every action), in their own counters and latency metrics
//! (`history`, `mark_read`), not in `sent`/`acked`.
//!
//! **Closed model.** One loop per sender; the schedule's slots go to the
//! loops in turn (slot k to loop k mod L), and a loop takes its next slot
//! only once its previous message is done: in the one-to-one scenarios the
//! senders are the first half of the users, each paired with a fixed
//! receiver in the second half, and a message is done once the receiver got
//! it and the sender got its ack; in `group`, `mixed` and `history`, once
//! acknowledged (a browse or a mark-read: once answered).
//! A loop behind its slots sends at once (the corrected latency counts
//! from the slot). At the segment's end no loop starts anything new; the
//! segment ends once every loop's last message is done, or `--drain` after
//! the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chat_client::{Conversation, MessageId};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::{Model, RunConfig, ScenarioKind};
use crate::outcome::Metric;
use crate::payload::{GROUP_STREAM, Stamp};
use crate::population::{LocalConversation, Population, Unconfirmed, User, Via, closed_pairs};
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
    /// Mark a conversation read up to the last message received in it.
    Read,
    /// Page back through a conversation's history.
    History,
}

/// Who sends in a segment: users that can (open model, group, mixed), or
/// closed-loop pairs, each sender with its one receiver.
struct Senders {
    users: Vec<u32>,
    /// `receivers[i]`: the one user `users[i]` sends to (closed pairs).
    receivers: Option<Vec<u32>>,
}

impl Senders {
    fn of(pop: &Population, config: &RunConfig) -> Senders {
        if config.closed_pairs() {
            let (users, receivers) = closed_pairs(pop.users.len() as u32).into_iter().unzip();
            return Senders {
                users,
                receivers: Some(receivers),
            };
        }
        Senders {
            users: pop
                .users
                .iter()
                .filter(|u| u.active && can_send(u, config.scenario))
                .map(|u| u.index)
                .collect(),
            receivers: None,
        }
    }
}

/// What every action works with.
#[derive(Clone)]
struct Scene {
    pop: Arc<Population>,
    rec: Arc<Recorder>,
    config: Arc<RunConfig>,
}

/// Runs the traffic of one segment. Open model: returns when its last
/// action has been started (acks and deliveries may still be in flight).
/// Closed model: returns when every loop's last message is done, or
/// `config.drain` after the segment's end (the loops still waiting are
/// stopped; what they waited for is counted as it stands).
pub async fn run_segment(
    segment: Segment,
    pop: &Arc<Population>,
    rec: &Arc<Recorder>,
    config: &Arc<RunConfig>,
) {
    let senders = Senders::of(pop, config);
    if senders.users.is_empty() {
        rec.error("schedule: no user can send (no friends or groups)");
        return;
    }
    let scene = Scene {
        pop: pop.clone(),
        rec: rec.clone(),
        config: config.clone(),
    };
    let closed =
        (config.model == Model::Closed).then(|| ClosedLoops::start(segment, &senders, &scene));
    let slots = closed.as_ref().map(|c| c.slots.clone());
    let users = senders.users;
    // The pacer sleeps on its own thread: tokio's timers fire on a 1 ms
    // grid, which would make every send up to a millisecond late (and the
    // corrected latency that much longer); a thread sleeps to within tens
    // of microseconds.
    let paced =
        tokio::task::spawn_blocking(move || pace(segment, &users, slots.as_deref(), &scene)).await;
    if let Err(e) = paced {
        tracing::error!(error = %e, "the pacer failed");
    }
    if let Some(loops) = closed {
        loops
            .finish(rec.clock.at(segment.end_us) + config.drain)
            .await;
    }
}

/// The pacer's loop (on a blocking thread, inside the runtime): each action
/// is started (open model) or released to its closed loop when it is due.
/// Its lag and the window's offered actions are counted locally and added
/// once per batch of due actions, so that a high rate costs little more
/// than the actions themselves.
fn pace(segment: Segment, senders: &[u32], slots: Option<&Slots>, scene: &Scene) {
    // A sleep ends up to the thread's timer slack late (50 µs by default on
    // Linux), and that lateness would count in every action's corrected
    // latency as the generator's lag: ask for 1 µs.
    // SAFETY: PR_SET_TIMERSLACK changes only this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
    let rec = &scene.rec;
    let mut rng = SmallRng::from_os_rng();
    let mut lags = rec.lags();
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
        let mut offered = 0;
        while segment.at(k) <= now && segment.at(k) < segment.end_us {
            let intended = segment.at(k);
            if rec.in_window(intended) {
                offered += 1;
            }
            lags.record(intended, rec.clock.now_us());
            if slots.is_none() {
                let sender = senders[rng.random_range(0..senders.len())];
                let kind = pick_kind(&scene.config, &mut rng);
                match scene.act(kind, sender, None, intended, &mut rng) {
                    Some(Action::Send(f)) => {
                        let scene = scene.clone();
                        tokio::spawn(async move { finish(f, &scene).await });
                    }
                    Some(Action::Request(r)) => {
                        tokio::spawn(r.run());
                    }
                    None => {}
                }
            }
            k += 1;
        }
        if let Some(slots) = slots {
            slots.release_until(k);
        }
        add(&rec.counts.window_offered, offered);
        if lags.late() > 0 {
            rec.add_lags(&mut lags);
        }
    }
    rec.add_lags(&mut lags);
    if let Some(slots) = slots {
        slots.close();
    }
}

fn can_send(user: &User, scenario: ScenarioKind) -> bool {
    match scenario {
        ScenarioKind::Group => !user.groups.is_empty(),
        ScenarioKind::Mixed | ScenarioKind::History => {
            !user.friends.is_empty() || !user.groups.is_empty()
        }
        _ => !user.friends.is_empty(),
    }
}

fn pick_kind(config: &RunConfig, rng: &mut SmallRng) -> Kind {
    match config.scenario {
        ScenarioKind::Group => Kind::Group,
        ScenarioKind::Mixed | ScenarioKind::History => {
            let m = &config.mix;
            let weights = [
                (Kind::Direct, m.direct),
                (Kind::Group, m.group),
                (Kind::Relogin, m.relogin),
                (Kind::Read, m.read),
                (Kind::History, m.history),
            ];
            let total: f64 = weights.iter().map(|(_, w)| w).sum();
            let mut x = rng.random::<f64>() * total;
            let mut last = Kind::Direct;
            for (kind, w) in weights {
                if w <= 0.0 {
                    continue;
                }
                if x < w {
                    return kind;
                }
                x -= w;
                last = kind;
            }
            last
        }
        _ => Kind::Direct,
    }
}

/// What [`Scene::act`] started: a send to await, or a request to run
/// (spawned in the open model, awaited by a closed loop).
enum Action {
    Send(InFlight),
    Request(Request),
}

/// A request of an action that sends no message.
struct Request {
    user: Arc<User>,
    what: Asked,
    intended: u64,
    rec: Arc<Recorder>,
}

enum Asked {
    /// Up to `pages` history pages of `conversation`, newest first.
    Browse {
        conversation: Conversation,
        pages: u32,
    },
    /// Mark `conversation` read up to `up_to`.
    MarkRead {
        conversation: Conversation,
        up_to: MessageId,
    },
}

impl Request {
    async fn run(self) {
        let Request {
            user,
            what,
            intended,
            rec,
        } = self;
        match what {
            Asked::Browse {
                conversation,
                pages,
            } => browse(&user, conversation, pages, intended, &rec).await,
            Asked::MarkRead {
                conversation,
                up_to,
            } => mark_read(&user, conversation, up_to, intended, &rec).await,
        }
    }
}

/// Pages back through `conversation`: up to `pages` history pages, each
/// below the oldest message of the previous one, fewer when the history
/// ends or a request fails. The first page's latency counts from the
/// action's scheduled time, each later one from when it was asked (a user
/// asks for the next page once the previous one is there). The action is
/// in the window's acknowledged ones once its first page came.
async fn browse(
    user: &User,
    conversation: Conversation,
    pages: u32,
    intended: u64,
    rec: &Recorder,
) {
    let mut before = None;
    for page in 0..pages {
        let started = rec.clock.now_us();
        let from = if page == 0 { intended } else { started };
        let counted = page == 0 && rec.action_in_window(intended, started);
        inc(&rec.counts.history_requests);
        if counted {
            inc(&rec.counts.window_sent);
        }
        match user.session().history(conversation, before).await {
            Ok(p) => {
                rec.latency(Metric::History, from, started);
                inc(&rec.counts.history_pages);
                add(&rec.counts.history_messages, p.messages);
                if counted {
                    inc(&rec.counts.window_acked);
                }
                match p.next_before {
                    Some(oldest) => before = Some(oldest),
                    None => return,
                }
            }
            Err(f) => {
                inc(&rec.counts.history_failed);
                rec.error(format!("history: {}", f.0));
                return;
            }
        }
    }
}

/// Marks `conversation` read up to `up_to`.
async fn mark_read(
    user: &User,
    conversation: Conversation,
    up_to: MessageId,
    intended: u64,
    rec: &Recorder,
) {
    let started = rec.clock.now_us();
    let counted = rec.action_in_window(intended, started);
    inc(&rec.counts.mark_read_requests);
    if counted {
        inc(&rec.counts.window_sent);
    }
    match user.session().mark_read(conversation, up_to).await {
        Ok(()) => {
            rec.latency(Metric::MarkRead, intended, started);
            inc(&rec.counts.marked_read);
            if counted {
                inc(&rec.counts.window_acked);
            }
        }
        Err(f) => {
            inc(&rec.counts.mark_read_failed);
            rec.error(format!("mark_read: {}", f.0));
        }
    }
}

/// A send in flight: its ack, when it was intended and made, which
/// message it is, and for a one-to-one message what its receiver will get.
pub struct InFlight {
    ack: Ack,
    intended: u64,
    started: u64,
    message: Unconfirmed,
    receipt: Option<Due>,
}

/// A one-to-one message its receiver is due to get.
#[derive(Debug, Clone, Copy)]
struct Due {
    receiver: u32,
    sender: u32,
    stream: u64,
    seq: u64,
}

impl Scene {
    /// Starts one action by `sender` (a direct message goes to `to`, else to a
    /// random friend); returns the send to await or the request to run, if
    /// any. A mark-read with nothing received yet becomes a message.
    fn act(
        &self,
        kind: Kind,
        sender: u32,
        to: Option<u32>,
        intended: u64,
        rng: &mut SmallRng,
    ) -> Option<Action> {
        let (pop, rec, config) = (&self.pop, &self.rec, &self.config);
        let user = &pop.users[sender as usize];
        let asked = match kind {
            Kind::Read => user.read_target(rng).and_then(|(c, up_to)| {
                Some(Asked::MarkRead {
                    conversation: pop.conversation(c)?,
                    up_to,
                })
            }),
            Kind::History => pick_conversation(user, rng).and_then(|c| {
                Some(Asked::Browse {
                    conversation: pop.conversation(c)?,
                    pages: rng.random_range(1..=3),
                })
            }),
            _ => None,
        };
        if let Some(what) = asked {
            if !user.online.load(Ordering::Relaxed) {
                let (failed, name) = match what {
                    Asked::Browse { .. } => (&rec.counts.history_failed, "history"),
                    Asked::MarkRead { .. } => (&rec.counts.mark_read_failed, "mark_read"),
                };
                if user.connected.load(Ordering::Relaxed) {
                    rec.error(format!("{name}: user offline"));
                } else {
                    rec.error(format!("{name}: not connected"));
                    inc(&rec.counts.not_connected);
                }
                inc(failed);
                return None;
            }
            return Some(Action::Request(Request {
                user: user.clone(),
                what,
                intended,
                rec: rec.clone(),
            }));
        }
        let kind = match kind {
            Kind::Read | Kind::History => Kind::Direct,
            k => k,
        };
        let kind = match kind {
            Kind::Direct if to.is_none() && user.friends.is_empty() => Kind::Group,
            Kind::Group if user.groups.is_empty() => Kind::Direct,
            k => k,
        };
        if kind == Kind::Relogin {
            tokio::spawn(relogin(user.clone(), intended, rec.clone(), config.clone()));
            return None;
        }
        if !user.online.load(Ordering::Relaxed) {
            // Between a drop and the re-login (`--reconnect`) the send is
            // skipped, not queued: it is not due to anyone.
            if user.connected.load(Ordering::Relaxed) {
                rec.error("send: sender offline");
            } else {
                rec.error("send: not connected");
                inc(&rec.counts.not_connected);
            }
            inc(&rec.counts.send_failed);
            return None;
        }
        let started = rec.clock.now_us();
        let session = user.session();
        let (recipients, receipt, sent, message) = match kind {
            Kind::Group => {
                let g = user.groups[rng.random_range(0..user.groups.len())];
                let group = &pop.groups[g as usize];
                let stream = GROUP_STREAM | u64::from(g);
                let (text, seq) = stamp(user, stream, intended, started, config);
                (
                    group.members.len() as u64 - 1,
                    None,
                    session.send_group(group.id, &text),
                    Unconfirmed {
                        sender,
                        stream,
                        seq,
                    },
                )
            }
            _ => {
                let f = to.unwrap_or_else(|| user.friends[rng.random_range(0..user.friends.len())]);
                let stream = u64::from(f);
                let (text, seq) = stamp(user, stream, intended, started, config);
                let due = Due {
                    receiver: f,
                    sender,
                    stream,
                    seq,
                };
                (
                    1,
                    Some(due),
                    session.send_direct(pop.users[f as usize].id, &text),
                    Unconfirmed {
                        sender,
                        stream,
                        seq,
                    },
                )
            }
        };
        match sent {
            Ok(ack) => {
                inc(&rec.counts.sent);
                add(&rec.counts.expected, recipients);
                if rec.action_in_window(intended, started) {
                    inc(&rec.counts.window_sent);
                }
                Some(Action::Send(InFlight {
                    ack,
                    intended,
                    started,
                    message,
                    receipt,
                }))
            }
            Err(f) => {
                inc(&rec.counts.send_failed);
                rec.error(format!("send: {}", f.0));
                None
            }
        }
    }
}

/// One of `user`'s conversations at random: a friend's or a group's.
fn pick_conversation(user: &User, rng: &mut SmallRng) -> Option<LocalConversation> {
    let n = user.friends.len() + user.groups.len();
    if n == 0 {
        return None;
    }
    let i = rng.random_range(0..n);
    Some(match user.friends.get(i) {
        Some(&f) => LocalConversation::Direct(f),
        None => LocalConversation::Group(user.groups[i - user.friends.len()]),
    })
}

/// The message's text, and its sequence number on `stream`.
fn stamp(user: &User, stream: u64, intended: u64, sent: u64, config: &RunConfig) -> (String, u64) {
    let seq = user.next_seq(stream);
    let text = Stamp {
        sender: user.index,
        stream,
        seq,
        intended_us: intended,
        sent_us: sent,
    }
    .text(config.text_size);
    (text, seq)
}

/// Waits for a send's ack and records it. With `--reconnect`, a send that
/// got no ack is noted as of unknown outcome: its recipients tell at the
/// end whether the server took it (see [`Population::unconfirmed_missing`]).
async fn finish(f: InFlight, scene: &Scene) {
    let InFlight {
        ack,
        intended,
        started,
        message,
        ..
    } = f;
    let rec = &scene.rec;
    match ack.wait().await {
        Ok(true) => {
            rec.latency(Metric::SendAck, intended, started);
            inc(&rec.counts.acked);
            if let Some(log) = &scene.pop.acked {
                log.push(intended, message);
            }
            if rec.action_in_window(intended, started) {
                inc(&rec.counts.window_acked);
            }
        }
        Ok(false) => {}
        Err(failure) => {
            inc(&rec.counts.send_failed);
            rec.error(format!("send: {}", failure.0));
            if scene.config.reconnect {
                scene.pop.unconfirmed(message);
            }
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
    // One connection throughout: if it drops meanwhile, a reconnection
    // (`--reconnect`) logs in on a new one, and this login fails.
    let session = user.session();
    if let Err(f) = session.logout().await {
        rec.error(format!("logout: {}", f.0));
        return;
    }
    inc(&rec.counts.logouts);
    let started = rec.clock.now_us();
    let _inbox = user.inbox.lock().await;
    match session.login(user.id, &config.password).await {
        Ok(pending) => {
            rec.latency(Metric::Login, intended, started);
            inc(&rec.counts.logins);
            for m in &pending {
                user.receive(m, &rec, config.ack_every, Via::Login);
            }
            user.ack_all();
            user.online.store(true, Ordering::Relaxed);
        }
        Err(f) => rec.error(format!("login: {}", f.0)),
    }
}

/// Closed model: the slots of a segment's schedule, released by the pacer
/// when due. Slot k belongs to loop `k mod L`, which takes its slots in
/// order, each only after its previous message is done.
struct Slots {
    /// Slots released so far (slots `0..released`).
    released: AtomicU64,
    /// The pacer is done: no slot will be released any more.
    closed: AtomicBool,
    /// One per loop, woken when one of its slots is released.
    wake: Vec<Notify>,
}

impl Slots {
    fn new(loops: usize) -> Slots {
        Slots {
            released: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            wake: (0..loops).map(|_| Notify::new()).collect(),
        }
    }

    /// Releases every slot below `end`, waking the loops they belong to.
    fn release_until(&self, end: u64) {
        let from = self.released.swap(end, Ordering::SeqCst);
        let loops = self.wake.len() as u64;
        // A permit is kept when a loop is busy: it finds its slot released
        // the next time it looks. One wake per loop is enough.
        for k in from..end.min(from + loops) {
            self.wake[(k % loops) as usize].notify_one();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for w in &self.wake {
            w.notify_one();
        }
    }

    /// Waits until slot `k` is released (true) or the pacer is done without
    /// releasing it (false).
    async fn take(&self, k: u64) -> bool {
        let wake = &self.wake[(k % self.wake.len() as u64) as usize];
        loop {
            if self.released.load(Ordering::SeqCst) > k {
                return true;
            }
            if self.closed.load(Ordering::SeqCst) {
                return self.released.load(Ordering::SeqCst) > k;
            }
            wake.notified().await;
        }
    }
}

/// The loops of a closed-model segment.
struct ClosedLoops {
    slots: Arc<Slots>,
    loops: Vec<JoinHandle<()>>,
}

impl ClosedLoops {
    /// One loop per sender, waiting for its slots.
    fn start(segment: Segment, senders: &Senders, scene: &Scene) -> ClosedLoops {
        let count = senders.users.len();
        let slots = Arc::new(Slots::new(count));
        let loops = senders
            .users
            .iter()
            .enumerate()
            .map(|(i, &sender)| {
                let to = senders.receivers.as_ref().map(|r| r[i]);
                let one = Loop {
                    first: i as u64,
                    step: count as u64,
                    sender,
                    to,
                    segment,
                };
                tokio::spawn(one.run(slots.clone(), scene.clone()))
            })
            .collect();
        ClosedLoops { slots, loops }
    }

    /// Waits for every loop to end, until `deadline`; stops those still
    /// waiting then.
    async fn finish(self, deadline: tokio::time::Instant) {
        for mut one in self.loops {
            if tokio::time::timeout_at(deadline, &mut one).await.is_err() {
                one.abort();
            }
        }
    }
}

/// One closed loop: a sender taking slots `first`, `first + step`, ...
struct Loop {
    first: u64,
    step: u64,
    sender: u32,
    /// The fixed receiver of a one-to-one pair.
    to: Option<u32>,
    segment: Segment,
}

impl Loop {
    async fn run(self, slots: Arc<Slots>, scene: Scene) {
        let (pop, rec, config) = (&scene.pop, &scene.rec, &scene.config);
        let mut rng = SmallRng::from_os_rng();
        let mut k = self.first;
        while slots.take(k).await {
            // The traffic window is over: nothing new starts; what is in
            // flight was awaited before this point.
            if rec.clock.now_us() >= self.segment.end_us {
                break;
            }
            let intended = self.segment.at(k);
            k += self.step;
            let kind = match (self.to, pick_kind(config, &mut rng)) {
                (Some(_), _) | (None, Kind::Relogin) => Kind::Direct,
                (None, kind) => kind,
            };
            let f = match scene.act(kind, self.sender, self.to, intended, &mut rng) {
                Some(Action::Send(f)) => f,
                Some(Action::Request(r)) => {
                    r.run().await;
                    continue;
                }
                None => continue,
            };
            let receipt = f.receipt;
            let acked = finish(f, &scene);
            match (self.to, receipt) {
                (Some(_), Some(due)) => {
                    let receiver = &pop.users[due.receiver as usize];
                    let delivered = receiver.received(due.sender, due.stream, due.seq);
                    let delivered = async {
                        if tokio::time::timeout(config.request_timeout, delivered)
                            .await
                            .is_err()
                        {
                            rec.error("delivery: timeout");
                        }
                    };
                    tokio::join!(acked, delivered);
                }
                _ => acked.await,
            }
        }
    }
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
