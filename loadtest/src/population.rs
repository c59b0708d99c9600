//! The virtual users of a run and how they come to be: each connects,
//! registers and logs in at its scheduled arrival time (`--connect-rate`,
//! open model: an arrival is not delayed by slow earlier ones), then users
//! befriend their neighbours and form groups. Each user gets a receiving
//! task that checks every message pushed to it against its [`Tally`] and
//! acknowledges them; when the run marks conversations read (`--mix
//! read=N`), it also keeps the last message id received per conversation.
//!
//! User `n` of this process is `<prefix>-<worker>-<n>`; friends and groups
//! never cross processes, so a message's sender and recipients share a
//! clock. Closed-loop pairs ([`closed_pairs`]) make no friends: the node
//! delivers a one-to-one message to any user. With `--connect-only`, a user
//! only connects and pings (no name, no login).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chat_client::{Conversation, GroupId, MessageId, UserId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore};

use crate::config::{Protocol, RunConfig, ScenarioKind};
use crate::outcome::Metric;
use crate::payload::{GROUP_STREAM, Stamp};
use crate::record::{Recorder, add, inc};
use crate::session::{Received, Session};
use crate::tally::{Receipt, Tally};
use crate::target::Dialer;

/// Setup requests in flight at once (friends, groups).
const SETUP_CONCURRENCY: usize = 256;

/// A conversation among this process's users: with the user of this index,
/// or in the group of this index of [`Population::groups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalConversation {
    Direct(u32),
    Group(u32),
}

impl LocalConversation {
    /// The conversation `stamp`'s message belongs to, for its recipient.
    fn of(stamp: &Stamp) -> LocalConversation {
        if stamp.stream & GROUP_STREAM != 0 {
            LocalConversation::Group((stamp.stream & !GROUP_STREAM) as u32)
        } else {
            LocalConversation::Direct(stamp.sender)
        }
    }
}

/// One virtual user.
pub struct User {
    /// Index in this process.
    pub index: u32,
    pub id: UserId,
    pub session: Session,
    /// Indices of this user's friends.
    pub friends: Vec<u32>,
    /// Indices of this user's groups.
    pub groups: Vec<u32>,
    /// Chats in the `mixed` scenario (every user chats in the others).
    pub active: bool,
    /// Logged in (a re-login clears it for a moment).
    pub online: AtomicBool,
    /// Next sequence number per stream this user sends on.
    seqs: Mutex<HashMap<u64, u64>>,
    tally: Mutex<Tally>,
    /// Receipts since the last acknowledgement.
    unacked: AtomicU64,
    /// Woken at each new receipt (a closed loop waits for its message).
    arrivals: Notify,
    /// Held while receipts are checked: a re-login holds it from its login
    /// request until the pending messages of the reply are checked, so that
    /// pushes that follow the reply are checked after them, in the order the
    /// node sent them (the reply and the pushes reach two different tasks).
    pub inbox: tokio::sync::Mutex<()>,
    /// The highest server id received per conversation, kept only when the
    /// run marks conversations read.
    last_received: Option<Mutex<HashMap<LocalConversation, MessageId>>>,
}

impl User {
    /// The next sequence number on `stream`.
    pub fn next_seq(&self, stream: u64) -> u64 {
        let mut seqs = self.seqs.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = seqs.entry(stream).or_default();
        *seq += 1;
        *seq - 1
    }

    /// Checks and records one message received (pushed, or pending at login).
    pub fn receive(&self, m: &Received, rec: &Recorder, ack_every: u64) {
        let Some(stamp) = Stamp::parse(&m.text) else {
            rec.error("receive: foreign message");
            return;
        };
        let receipt = self
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .receive(&stamp, m.message_id);
        if let (Some(last), Some(id)) = (&self.last_received, m.message_id) {
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            let newest = last.entry(LocalConversation::of(&stamp)).or_default();
            *newest = (*newest).max(id);
        }
        match receipt {
            Receipt::New | Receipt::OutOfOrder => {
                inc(&rec.counts.delivered);
                if receipt == Receipt::OutOfOrder {
                    inc(&rec.counts.out_of_order);
                }
                rec.latency(Metric::Delivery, stamp.intended_us, stamp.sent_us);
                self.arrivals.notify_waiters();
            }
            Receipt::Redelivered => inc(&rec.counts.redelivered),
            Receipt::Duplicate => inc(&rec.counts.duplicated),
        }
        if self.unacked.fetch_add(1, Ordering::Relaxed) + 1 >= ack_every {
            self.ack_all();
        }
    }

    /// A conversation this user received messages in, picked at random,
    /// with the id of the last message received there; `None` before the
    /// first message (or when the run does not mark conversations read).
    pub fn read_target(&self, rng: &mut impl rand::Rng) -> Option<(LocalConversation, MessageId)> {
        let last = self
            .last_received
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_empty() {
            return None;
        }
        let n = rng.random_range(0..last.len());
        last.iter().nth(n).map(|(c, id)| (*c, *id))
    }

    /// Returns once message `seq` of `sender`'s `stream` has arrived.
    pub async fn received(&self, sender: u32, stream: u64, seq: u64) {
        loop {
            let arrival = self.arrivals.notified();
            tokio::pin!(arrival);
            // Registered before the check, so that an arrival between the
            // check and the wait still wakes it.
            arrival.as_mut().enable();
            let has = self
                .tally
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .has(sender, stream, seq);
            if has {
                return;
            }
            arrival.await;
        }
    }

    /// Acknowledges everything received so far.
    pub fn ack_all(&self) {
        if self.unacked.swap(0, Ordering::Relaxed) == 0 {
            return;
        }
        let highest = self
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .highest_id();
        if let Some(id) = highest {
            self.session.ack(id);
        }
    }
}

/// A group of this process's users.
pub struct Group {
    pub id: GroupId,
    pub members: Vec<u32>,
}

/// Every user and group of this process.
pub struct Population {
    pub users: Vec<Arc<User>>,
    pub groups: Vec<Group>,
    /// Set when the run is ending: receivers stop counting disconnects.
    pub stopping: Arc<AtomicBool>,
}

impl Population {
    /// The node's name of a conversation among this process's users.
    pub fn conversation(&self, c: LocalConversation) -> Option<Conversation> {
        match c {
            LocalConversation::Direct(u) => self
                .users
                .get(u as usize)
                .map(|u| Conversation::Direct(u.id)),
            LocalConversation::Group(g) => self
                .groups
                .get(g as usize)
                .map(|g| Conversation::Group(g.id)),
        }
    }
}

/// How the setup is going, for the progress bar.
#[derive(Debug, Default)]
pub struct SetupProgress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    /// What is being set up (`users`, `friends`, `groups`).
    pub stage: Mutex<&'static str>,
}

impl SetupProgress {
    fn stage(&self, name: &'static str, total: u64) {
        *self.stage.lock().unwrap_or_else(PoisonError::into_inner) = name;
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }
}

/// A user connected and logged in, before friends and groups.
struct Arrived {
    index: u32,
    id: UserId,
    session: Session,
    pending: Vec<Received>,
}

/// When users arrive: `count` users of worker `worker`, `rate` per second
/// from `start_us`.
#[derive(Debug, Clone, Copy)]
pub struct Arrivals {
    pub worker: u32,
    pub count: u64,
    pub start_us: u64,
    pub rate: f64,
}

/// Connects, registers and logs in the users as `arrivals` says, then makes
/// friends and groups. Returns the population; users that failed are
/// counted and left out.
pub async fn set_up(
    config: &RunConfig,
    arrivals: Arrivals,
    dialer: &Arc<Dialer>,
    rec: &Arc<Recorder>,
    progress: &Arc<SetupProgress>,
) -> Population {
    let Arrivals {
        worker,
        count,
        start_us,
        rate,
    } = arrivals;
    let chat_replies = match config.protocol {
        Protocol::Fb => true,
        Protocol::Json => match dialer.dial(u64::from(worker)).await {
            Ok(s) => crate::session::server_replies_to_chat(s, Duration::from_secs(1)).await,
            Err(_) => true,
        },
    };
    progress.stage("users", count);
    let mut arriving = FuturesUnordered::new();
    for n in 0..count {
        let intended = start_us + (n as f64 * 1e6 / rate) as u64;
        let (config, dialer, rec, progress) = (
            config.clone(),
            dialer.clone(),
            rec.clone(),
            progress.clone(),
        );
        arriving.push(tokio::spawn(async move {
            tokio::time::sleep_until(rec.clock.at(intended)).await;
            let got = arrive(&config, worker, n, intended, chat_replies, &dialer, &rec).await;
            inc(&progress.done);
            got
        }));
    }
    let mut arrived = Vec::new();
    while let Some(joined) = arriving.next().await {
        if let Ok(Some(a)) = joined {
            arrived.push(a);
        }
    }
    arrived.sort_by_key(|a| a.index);
    // Users are re-indexed densely so that friends and groups never name a
    // user that failed to arrive.
    for (i, a) in arrived.iter_mut().enumerate() {
        a.index = i as u32;
    }
    let n = arrived.len() as u32;
    // Closed-loop pairs need no friendship: the node delivers a one-to-one
    // message to any user.
    let friends = if matches!(config.scenario, ScenarioKind::Group | ScenarioKind::Connect)
        || config.closed_pairs()
    {
        Vec::new()
    } else {
        friend_pairs(n, config.friends)
    };
    let groups = if matches!(
        config.scenario,
        ScenarioKind::Group | ScenarioKind::Mixed | ScenarioKind::History
    ) {
        group_members(n, config.group_size)
    } else {
        Vec::new()
    };
    let active_every = (1.0 / config.active).round().max(1.0) as u32;
    let track_reads = matches!(config.scenario, ScenarioKind::Mixed | ScenarioKind::History)
        && config.mix.read > 0.0;
    let mut friends_of = vec![Vec::new(); n as usize];
    for &(x, y) in &friends {
        friends_of[x as usize].push(y);
        friends_of[y as usize].push(x);
    }
    let mut groups_of = vec![Vec::new(); n as usize];
    for (g, members) in groups.iter().enumerate() {
        for &m in members {
            groups_of[m as usize].push(g as u32);
        }
    }
    let users: Vec<Arc<User>> = arrived
        .into_iter()
        .map(|a| {
            let my_friends = std::mem::take(&mut friends_of[a.index as usize]);
            let my_groups = std::mem::take(&mut groups_of[a.index as usize]);
            let user = Arc::new(User {
                index: a.index,
                id: a.id,
                session: a.session,
                friends: my_friends,
                groups: my_groups,
                active: config.scenario != ScenarioKind::Mixed || a.index % active_every == 0,
                online: AtomicBool::new(true),
                seqs: Mutex::default(),
                tally: Mutex::default(),
                unacked: AtomicU64::new(0),
                arrivals: Notify::new(),
                inbox: tokio::sync::Mutex::new(()),
                last_received: track_reads.then(Mutex::default),
            });
            for m in &a.pending {
                user.receive(m, rec, config.ack_every);
            }
            user
        })
        .collect();
    add(&rec.counts.users, users.len() as u64);

    progress.stage("friends", friends.len() as u64);
    let limit = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut work = FuturesUnordered::new();
    for &(a, b) in &friends {
        let (user, friend_id) = (users[a as usize].clone(), users[b as usize].id);
        let (rec, progress, limit) = (rec.clone(), progress.clone(), limit.clone());
        work.push(tokio::spawn(async move {
            let _permit = limit.acquire().await;
            if let Err(f) = user.session.add_friend(friend_id).await {
                rec.error(format!("add_friend: {}", f.0));
            }
            inc(&progress.done);
        }));
    }
    while work.next().await.is_some() {}

    progress.stage("groups", users.len() as u64);
    let mut made = Vec::new();
    for (g, members) in groups.into_iter().enumerate() {
        let creator = users[members[0] as usize].clone();
        let name = format!("{}-{worker}-g{g}", config.prefix);
        match creator.session.create_group(&name).await {
            Ok(id) => {
                inc(&progress.done);
                made.push((id, members));
            }
            Err(f) => rec.error(format!("create_group: {}", f.0)),
        }
    }
    let mut groups = Vec::new();
    for (id, members) in made {
        let mut joins = FuturesUnordered::new();
        for &m in &members[1..] {
            let (user, rec, progress, limit) = (
                users[m as usize].clone(),
                rec.clone(),
                progress.clone(),
                limit.clone(),
            );
            joins.push(tokio::spawn(async move {
                let _permit = limit.acquire().await;
                let ok = match user.session.join_group(id).await {
                    Ok(()) => true,
                    Err(f) => {
                        rec.error(format!("join_group: {}", f.0));
                        false
                    }
                };
                inc(&progress.done);
                ok.then_some(m)
            }));
        }
        let mut joined = vec![members[0]];
        while let Some(j) = joins.next().await {
            if let Ok(Some(m)) = j {
                joined.push(m);
            }
        }
        joined.sort_unstable();
        groups.push(Group {
            id,
            members: joined,
        });
    }

    let stopping = Arc::new(AtomicBool::new(false));
    for user in &users {
        tokio::spawn(receive_loop(
            user.clone(),
            rec.clone(),
            config.ack_every,
            stopping.clone(),
        ));
    }
    Population {
        users,
        groups,
        stopping,
    }
}

/// One user's arrival: connect, register, log in. Latencies are measured
/// corrected from the scheduled arrival (the time to get online) and
/// uncorrected from the start of each step.
async fn arrive(
    config: &RunConfig,
    worker: u32,
    n: u64,
    intended: u64,
    chat_replies: bool,
    dialer: &Dialer,
    rec: &Recorder,
) -> Option<Arrived> {
    let started = rec.clock.now_us();
    rec.lag(intended, started);
    let stream = match dialer.dial(n).await {
        Ok(s) => s,
        Err(e) => {
            inc(&rec.counts.connections_failed);
            rec.error(format!("connect: {}", e.kind()));
            return None;
        }
    };
    rec.latency(Metric::Connect, intended, started);
    inc(&rec.counts.connections_opened);
    let session = match Session::start(
        stream,
        config.protocol,
        config.request_timeout,
        chat_replies,
    ) {
        Ok(s) => s,
        Err(f) => {
            rec.error(format!("connect: {}", f.0));
            return None;
        }
    };
    if config.connect_only {
        // An idle connection: one ping, no user behind it.
        if let Err(f) = session.ping().await {
            rec.error(format!("ping: {}", f.0));
            return None;
        }
        if rec.in_window(intended) {
            inc(&rec.counts.window_acked);
        }
        return Some(Arrived {
            index: n as u32,
            id: 0,
            session,
            pending: Vec::new(),
        });
    }
    let name = format!("{}-{worker}-{n}", config.prefix);
    let step = rec.clock.now_us();
    let id = match session.register(&name, &config.password).await {
        Ok(id) => id,
        Err(f) => {
            rec.error(format!("register: {}", f.0));
            return None;
        }
    };
    rec.latency(Metric::Register, intended, step);
    let step = rec.clock.now_us();
    let pending = match session.login(id, &config.password).await {
        Ok(p) => p,
        Err(f) => {
            rec.error(format!("login: {}", f.0));
            return None;
        }
    };
    rec.latency(Metric::Login, intended, step);
    inc(&rec.counts.logins);
    if rec.in_window(intended) {
        inc(&rec.counts.window_acked);
    }
    Some(Arrived {
        index: n as u32,
        id,
        session,
        pending,
    })
}

/// Mutual friendships: user `i` befriends `i+1 ..= i+k` (mod n), with
/// `k = ceil(friends / 2)`, so every user ends with about `friends`.
pub fn friend_pairs(n: u32, friends: u32) -> Vec<(u32, u32)> {
    let k = friends
        .div_ceil(2)
        .min(n.saturating_sub(1) / 2)
        .max(u32::from(n > 1));
    let mut seen = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    for i in 0..n {
        for d in 1..=k {
            let j = (i + d) % n;
            if i != j && seen.insert((i.min(j), i.max(j))) {
                pairs.push((i, j));
            }
        }
    }
    pairs
}

/// Closed-loop pairs of `n` users: sender `i` of the first half, receiver
/// `i + n/2` (an odd last user stays idle).
pub fn closed_pairs(n: u32) -> Vec<(u32, u32)> {
    (0..n / 2).map(|i| (i, i + n / 2)).collect()
}

/// Consecutive users in groups of `size`; a short last group joins the one
/// before it.
pub fn group_members(n: u32, size: u32) -> Vec<Vec<u32>> {
    let mut groups: Vec<Vec<u32>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(size as usize)
        .map(<[u32]>::to_vec)
        .collect();
    if groups.len() > 1 && groups.last().is_some_and(|g| g.len() < 2) {
        let last = groups.pop().unwrap_or_default();
        if let Some(prev) = groups.last_mut() {
            prev.extend(last);
        }
    }
    groups.retain(|g| g.len() >= 2);
    groups
}

/// Receives what is pushed to `user` until its connection ends;
/// acknowledges every `ack_every` messages and whenever the inbox runs dry.
async fn receive_loop(
    user: Arc<User>,
    rec: Arc<Recorder>,
    ack_every: u64,
    stopping: Arc<AtomicBool>,
) {
    while let Some(m) = user.session.next_received().await {
        let _inbox = user.inbox.lock().await;
        user.receive(&m, &rec, ack_every);
        while let Some(m) = user.session.try_received() {
            user.receive(&m, &rec, ack_every);
        }
        user.ack_all();
    }
    if !stopping.load(Ordering::Relaxed) {
        user.online.store(false, Ordering::Relaxed);
        inc(&rec.counts.disconnects);
        rec.error("connection: closed by server");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendships_are_mutual_and_even() {
        let pairs = friend_pairs(10, 4);
        let mut degree = [0; 10];
        for &(a, b) in &pairs {
            assert_ne!(a, b);
            degree[a as usize] += 1;
            degree[b as usize] += 1;
        }
        assert!(degree.iter().all(|&d| d == 4), "{degree:?}");
        assert_eq!(friend_pairs(2, 4), vec![(0, 1)]);
        assert!(friend_pairs(1, 4).is_empty());
    }

    #[test]
    fn closed_pairs_send_from_the_first_half_to_the_second() {
        let pairs = closed_pairs(100);
        assert_eq!(pairs.len(), 50);
        assert_eq!(pairs[0], (0, 50));
        assert_eq!(pairs[49], (49, 99));
        let mut seen: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>(), "every user in one pair");
        assert_eq!(closed_pairs(5), vec![(0, 2), (1, 3)], "user 4 stays idle");
        assert!(closed_pairs(1).is_empty());
    }

    #[test]
    fn groups_cover_every_user() {
        let g = group_members(25, 10);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        let g = group_members(21, 10);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 11]);
        let g = group_members(3, 10);
        assert_eq!(g, vec![vec![0, 1, 2]]);
    }
}
