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
//!
//! **Reconnection** (`--reconnect`). When a user's connection ends (closed
//! by the server, reset, cut) while the run goes on, its receiving task
//! makes it whole again: it waits a backoff delay (full jitter, the
//! ceiling 100 ms doubling to 5 s, as the client library's
//! [`chat_client::reconnect::Backoff`]), connects to the same target (the
//! next one in `--target`'s list after each failed attempt; a redirecting
//! balancer is asked again each time), logs in with the same id and
//! password (`AlreadyOnline`, timeouts and I/O failures are retried; only
//! `InvalidCredentials` and `UnknownUser` end the attempts) and goes on
//! receiving. From the drop to the re-login the user is offline: the
//! actions scheduled for it are skipped (`not_connected`), never queued.
//! The login reply's pending messages are checked holding the user's inbox
//! lock from the login request on, as a `relogin` does, and pushes on the
//! new connection are read only after them, so that nothing is miscounted
//! as reordered or duplicated. Those pending messages count as
//! `delivered_after_reconnect`, pushed ones as `delivered_live`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chat_client::reconnect::Backoff;
use chat_client::{Conversation, ErrorCode, GroupId, MessageId, UserId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore};

use crate::config::{Protocol, RunConfig, ScenarioKind};
use crate::outcome::Metric;
use crate::payload::{GROUP_STREAM, Stamp};
use crate::record::{Recorder, add, inc};
use crate::session::{Failure, Received, Session};
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

/// How a message reached its recipient, for the `delivered_*` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Pushed on the connection.
    Push,
    /// Pending in the reply to a login (the first one, or a `relogin`).
    Login,
    /// Pending in the reply to the login of a reconnection.
    Reconnect,
}

/// One virtual user.
pub struct User {
    /// Index in this process.
    pub index: u32,
    pub id: UserId,
    /// The current connection (replaced by a reconnection).
    session: Mutex<Arc<Session>>,
    /// False from a drop until the reconnection logged in again
    /// (`--reconnect` only).
    pub connected: AtomicBool,
    /// Which target the next connection goes to (`target mod` the list).
    target: AtomicU64,
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
    /// The current connection.
    pub fn session(&self) -> Arc<Session> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether message `seq` of `sender`'s `stream` arrived.
    pub fn has(&self, sender: u32, stream: u64, seq: u64) -> bool {
        self.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .has(sender, stream, seq)
    }

    /// The next sequence number on `stream`.
    pub fn next_seq(&self, stream: u64) -> u64 {
        let mut seqs = self.seqs.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = seqs.entry(stream).or_default();
        *seq += 1;
        *seq - 1
    }

    /// Checks and records one message received (pushed, or pending at login).
    pub fn receive(&self, m: &Received, rec: &Recorder, ack_every: u64, via: Via) {
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
                inc(match via {
                    Via::Push => &rec.counts.delivered_live,
                    Via::Login => &rec.counts.delivered_at_login,
                    Via::Reconnect => &rec.counts.delivered_after_reconnect,
                });
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
            if self.has(sender, stream, seq) {
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
            self.session().ack(id);
        }
    }
}

/// A group of this process's users.
pub struct Group {
    pub id: GroupId,
    pub members: Vec<u32>,
}

/// A message sent whose acknowledgement never came (`--reconnect`): whether
/// the server took it, its recipients tell at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unconfirmed {
    pub sender: u32,
    pub stream: u64,
    pub seq: u64,
}

/// Every user and group of this process.
pub struct Population {
    pub users: Vec<Arc<User>>,
    pub groups: Vec<Group>,
    /// Set when the run is ending: receivers stop counting disconnects (and
    /// stop reconnecting).
    pub stopping: Arc<AtomicBool>,
    /// Sends of unknown outcome (`--reconnect`).
    unconfirmed: Mutex<Vec<Unconfirmed>>,
    /// `--chaos`: every acknowledged send, to attribute losses to faults.
    pub acked: Option<crate::chaos::AckedLog>,
}

impl Population {
    /// Notes a send whose acknowledgement never came.
    pub fn unconfirmed(&self, m: Unconfirmed) {
        self.unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(m);
    }

    /// Receipts due from the sends of unknown outcome that no recipient
    /// got (so far): the server did not take those messages. A message
    /// some recipient got was taken, and is due to every recipient.
    pub fn unconfirmed_missing(&self) -> u64 {
        let list = self
            .unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .map(|m| {
                let recipients = self.recipients(m.sender, m.stream);
                let taken = recipients
                    .iter()
                    .any(|&r| self.users[r as usize].has(m.sender, m.stream, m.seq));
                if taken { 0 } else { recipients.len() as u64 }
            })
            .sum()
    }

    /// Recipients of `m` that have not received it (so far).
    pub fn missing_recipients(&self, m: &Unconfirmed) -> Vec<u32> {
        self.recipients(m.sender, m.stream)
            .into_iter()
            .filter(|&r| !self.users[r as usize].has(m.sender, m.stream, m.seq))
            .collect()
    }

    /// Who receives `sender`'s messages on `stream`.
    fn recipients(&self, sender: u32, stream: u64) -> Vec<u32> {
        if stream & GROUP_STREAM == 0 {
            return vec![stream as u32];
        }
        self.groups
            .get((stream & !GROUP_STREAM) as usize)
            .map(|g| g.members.iter().copied().filter(|&m| m != sender).collect())
            .unwrap_or_default()
    }

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
    /// Its number among the arrivals (which target it went to).
    n: u64,
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
                session: Mutex::new(Arc::new(a.session)),
                connected: AtomicBool::new(true),
                target: AtomicU64::new(a.n),
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
                user.receive(m, rec, config.ack_every, Via::Login);
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
            if let Err(f) = user.session().add_friend(friend_id).await {
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
        match creator.session().create_group(&name).await {
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
                let ok = match user.session().join_group(id).await {
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
    let redial = config.reconnect.then(|| {
        Arc::new(Redial {
            dialer: dialer.clone(),
            config: config.clone(),
            chat_replies,
            backoff: Backoff::default(),
        })
    });
    for user in &users {
        tokio::spawn(receive_loop(
            user.clone(),
            rec.clone(),
            config.ack_every,
            stopping.clone(),
            redial.clone(),
        ));
    }
    Population {
        users,
        groups,
        stopping,
        unconfirmed: Mutex::default(),
        acked: config.chaos.is_some().then(crate::chaos::AckedLog::default),
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
        config.json_acks,
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
            n,
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
        n,
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
/// With `redial` (`--reconnect`), a connection that ends while the run goes
/// on is made again, and receiving goes on on the new one.
async fn receive_loop(
    user: Arc<User>,
    rec: Arc<Recorder>,
    ack_every: u64,
    stopping: Arc<AtomicBool>,
    redial: Option<Arc<Redial>>,
) {
    loop {
        let session = user.session();
        while let Some(m) = session.next_received().await {
            let _inbox = user.inbox.lock().await;
            user.receive(&m, &rec, ack_every, Via::Push);
            while let Some(m) = session.try_received() {
                user.receive(&m, &rec, ack_every, Via::Push);
            }
            user.ack_all();
        }
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        if redial.is_some() {
            user.connected.store(false, Ordering::Relaxed);
        }
        user.online.store(false, Ordering::Relaxed);
        inc(&rec.counts.disconnects);
        rec.error("connection: closed by server");
        let Some(redial) = &redial else {
            return;
        };
        if !redial.resume(&user, &rec, &stopping).await {
            return;
        }
    }
}

/// What a reconnection needs (`--reconnect`).
struct Redial {
    dialer: Arc<Dialer>,
    config: RunConfig,
    chat_replies: bool,
    backoff: Backoff,
}

/// Whether a failed login is worth another attempt: not when the
/// credentials or the user are refused.
fn retryable(f: &Failure) -> bool {
    ![ErrorCode::InvalidCredentials, ErrorCode::UnknownUser]
        .iter()
        .any(|c| c.name() == f.0)
}

impl Redial {
    /// Connects `user` again and logs it in, attempt after attempt with
    /// backoff, until it is back (true) or the run ends or the login is
    /// refused for good (false).
    async fn resume(&self, user: &User, rec: &Recorder, stopping: &AtomicBool) -> bool {
        let config = &self.config;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // Attempt 1 goes where the user was; each further one to the
            // next target.
            if attempt > 1 {
                user.target.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(self.backoff.delay(attempt)).await;
            if stopping.load(Ordering::Relaxed) {
                return false;
            }
            let target = user.target.load(Ordering::Relaxed);
            let started = rec.clock.now_us();
            let stream = match self.dialer.dial_target(u64::from(user.index), target).await {
                Ok(s) => s,
                Err(e) => {
                    rec.error(format!("reconnect: {}", e.kind()));
                    continue;
                }
            };
            let session = match Session::start(
                stream,
                config.protocol,
                config.request_timeout,
                self.chat_replies,
                config.json_acks,
            ) {
                Ok(s) => Arc::new(s),
                Err(f) => {
                    rec.error(format!("reconnect: {}", f.0));
                    continue;
                }
            };
            let inbox = user.inbox.lock().await;
            let pending = if config.connect_only {
                session.ping().await.map(|()| Vec::new())
            } else {
                session.login(user.id, &config.password).await
            };
            let pending = match pending {
                Ok(p) => p,
                Err(f) => {
                    drop(inbox);
                    rec.error(format!("reconnect: login: {}", f.0));
                    session.close().await;
                    if retryable(&f) {
                        continue;
                    }
                    return false;
                }
            };
            // The new connection first, so that acknowledgements go on it.
            *user.session.lock().unwrap_or_else(PoisonError::into_inner) = session.clone();
            inc(&rec.counts.connections_opened);
            inc(&rec.counts.reconnects);
            if !config.connect_only {
                rec.latency(Metric::Login, started, started);
                inc(&rec.counts.logins);
            }
            for m in &pending {
                user.receive(m, rec, config.ack_every, Via::Reconnect);
            }
            user.ack_all();
            user.connected.store(true, Ordering::Relaxed);
            user.online.store(true, Ordering::Relaxed);
            drop(inbox);
            if stopping.load(Ordering::Relaxed) {
                // The run ended meanwhile: its connections are being
                // closed, this one too.
                session.close().await;
                return false;
            }
            return true;
        }
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
