//! The store thread: the one place where the node's requests meet the
//! durable state, and the sequencer that gives every message its order.
//!
//! Shards send [`Op`]s over a bounded channel. The thread takes every op that
//! is waiting (up to `max_batch`), runs them against the [`Store`] inside one
//! transaction, commits once (group commit), and only then answers each op and
//! emits the [`RouterEvent`]s the batch produced. Events are sent, in commit
//! order, to the router of the recipient's home shard (`user % shards`): since
//! every channel on that path is FIFO, a user's session receives routes and
//! messages in the order the store committed them. Routes go out before the
//! answers, so a login's route is queued before its reply; deliveries after
//! them. An answer only wakes the handler, which queues the reply when its
//! connection's task next runs, so a push can still reach a connection
//! before the reply that caused it (a message to oneself, or to a user on
//! the same shard): clients must not rely on that order.
//!
//! In a cluster (with a [`Publisher`]) other nodes append too, so commit
//! order on this node is not message order for a user. There a new message
//! only wakes the recipient's session, which reads the store past the last
//! message it pushed. The recipient's node comes from their session claim,
//! read inside the same transaction: this node's router for its own users,
//! the bus for users of other nodes.
//!
//! Reads that need no order with writes (a user's record before a login, a
//! page of stored messages) go to a second thread, the reader
//! ([`run_reader`]), on its own store handle: on SQLite its batches are read
//! transactions, so catching up never takes the write lock from this node's
//! writer or from the other nodes sharing the file.
//!
//! Every `lease_every` the thread renews the node's lease, sends the bus's
//! heartbeats, and releases the users of nodes whose lease has expired,
//! telling their friends they went offline. When the channel is quiet it also
//! deletes acknowledged messages in small slices between batches. The
//! pending gauge is counted by [`run_gauges`], on a thread of its own.

use std::collections::{HashMap, VecDeque};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

pub mod mailbox;
#[cfg(test)]
mod tests;

use self::mailbox::Mailboxes;
use crate::bus::{self, Publisher};
use crate::command::{LoginInfo, Push};
use crate::event::{ConnId, RouterEvent};
use crate::metric_names;
use crate::store::{
    Contact, Conversation, GroupId, GroupInfo, HistoryPage, MessageId, NewMessage, Store,
    StoreError, StoredMessage, Target, Unread, UserId, UserRecord,
};

type Answer<T> = oneshot::Sender<Result<T, StoreError>>;

/// One request to the store thread.
pub enum Op {
    Register {
        name: String,
        password_hash: String,
        answer: Answer<UserId>,
    },
    User {
        id: UserId,
        answer: Answer<Option<UserRecord>>,
    },
    /// Claims the user's session, routes it to `conn` and returns what a login
    /// shows, with the first `page` pending messages.
    Login {
        user: UserId,
        shard: usize,
        conn: ConnId,
        epoch: u64,
        page: usize,
        answer: Answer<LoginInfo>,
    },
    /// Releases the session if `epoch` still holds it and unroutes `conn`.
    Logout {
        user: UserId,
        conn: ConnId,
        epoch: u64,
        answer: Option<Answer<()>>,
    },
    AddFriend {
        user: UserId,
        friend: UserId,
        answer: Answer<Contact>,
    },
    CreateGroup {
        creator: UserId,
        name: String,
        description: String,
        answer: Answer<GroupId>,
    },
    JoinGroup {
        group: GroupId,
        user: UserId,
        answer: Answer<GroupInfo>,
    },
    RemoveFriend {
        user: UserId,
        friend: UserId,
        answer: Answer<()>,
    },
    LeaveGroup {
        group: GroupId,
        user: UserId,
        answer: Answer<()>,
    },
    RemoveMember {
        group: GroupId,
        by: UserId,
        member: UserId,
        answer: Answer<()>,
    },
    /// `group` as `user`, a member, sees it (read).
    GroupInfo {
        group: GroupId,
        user: UserId,
        answer: Answer<GroupInfo>,
    },
    /// The user named exactly `name` (read).
    FindUser {
        name: String,
        answer: Answer<Option<Contact>>,
    },
    /// A page of history (read).
    History {
        user: UserId,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: usize,
        answer: Answer<HistoryPage>,
    },
    /// Moves a read position; a direct conversation's peer is told.
    MarkRead {
        user: UserId,
        conversation: Conversation,
        up_to: MessageId,
        answer: Answer<bool>,
    },
    /// Who read a group message (read).
    Readers {
        user: UserId,
        group: GroupId,
        message: MessageId,
        answer: Answer<(u64, u64)>,
    },
    /// The next page of a user's groups after a login's (read).
    GroupsPage {
        user: UserId,
        after: GroupId,
        max_members: usize,
        answer: Answer<Vec<GroupInfo>>,
    },
    /// Unread counts per conversation (read).
    Unread {
        user: UserId,
        answer: Answer<Vec<Unread>>,
    },
    Append {
        message: NewMessage,
        answer: Answer<Arc<StoredMessage>>,
    },
    Pending {
        user: UserId,
        after: MessageId,
        limit: usize,
        answer: Answer<Vec<StoredMessage>>,
    },
    Ack {
        user: UserId,
        up_to: MessageId,
        answer: Option<Answer<()>>,
    },
    /// Another login of `user` found their session held: asks the session
    /// on this node to close if it has been silent (no answer).
    Takeover { user: UserId },
    /// Commits what came before and ends the thread (sent once every shard
    /// has stopped).
    Stop,
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Register { .. } => "register",
            Op::User { .. } => "user",
            Op::Login { .. } => "login",
            Op::Logout { .. } => "logout",
            Op::AddFriend { .. } => "add_friend",
            Op::CreateGroup { .. } => "create_group",
            Op::JoinGroup { .. } => "join_group",
            Op::RemoveFriend { .. } => "remove_friend",
            Op::LeaveGroup { .. } => "leave_group",
            Op::RemoveMember { .. } => "remove_member",
            Op::GroupInfo { .. } => "group_info",
            Op::FindUser { .. } => "find_user",
            Op::History { .. } => "history",
            Op::MarkRead { .. } => "mark_read",
            Op::Readers { .. } => "readers",
            Op::Unread { .. } => "unread",
            Op::GroupsPage { .. } => "groups_page",
            Op::Append { .. } => "append",
            Op::Pending { .. } => "pending",
            Op::Ack { .. } => "ack",
            Op::Takeover { .. } => "takeover",
            Op::Stop => "stop",
        }
    }

    /// Whether the reader thread serves this op.
    fn is_read(&self) -> bool {
        matches!(
            self,
            Op::User { .. }
                | Op::Pending { .. }
                | Op::GroupInfo { .. }
                | Op::FindUser { .. }
                | Op::History { .. }
                | Op::Readers { .. }
                | Op::Unread { .. }
                | Op::GroupsPage { .. }
        )
    }
}

/// The shards' handle on the store threads.
#[derive(Clone)]
pub struct StoreClient {
    tx: flume::Sender<Op>,
    reads: flume::Sender<Op>,
}

fn stopped() -> StoreError {
    StoreError::Backend("store thread stopped".into())
}

impl StoreClient {
    /// Sends an op built around a fresh answer channel and waits for the answer.
    pub async fn call<T>(&self, op: impl FnOnce(Answer<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let op = op(tx);
        let to = if op.is_read() { &self.reads } else { &self.tx };
        to.send_async(op).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Sends an op nobody waits for (acks, logouts of closed connections).
    pub async fn tell(&self, op: Op) {
        let _ = self.tx.send_async(op).await;
    }

    /// Like [`StoreClient::tell`], from code that can not wait: the op is
    /// queued at once, or by a task of its own while the queue is full.
    pub fn tell_now(&self, op: Op) {
        if let Err(flume::TrySendError::Full(op)) = self.tx.try_send(op) {
            let store = self.clone();
            tokio::task::spawn_local(async move { store.tell(op).await });
        }
    }

    /// Asks the threads to commit what they have and end (blocking).
    pub fn stop(&self) {
        let _ = self.reads.send(Op::Stop);
        let _ = self.tx.send(Op::Stop);
    }
}

/// Settings of the store thread.
pub struct WriterConfig {
    pub node_id: String,
    pub shards: usize,
    pub max_batch: usize,
    /// How long a batch waits after its first op for more (`--commit-window`;
    /// zero commits at once).
    pub commit_window: Duration,
    /// How often acknowledged messages are compacted.
    pub maintenance_every: Duration,
    /// The node's lease: how long it lasts, how often it is renewed.
    pub lease_ttl: Duration,
    pub lease_every: Duration,
    /// The bus to other nodes; `None` when the node runs alone.
    pub bus: Option<Publisher>,
    /// `--max-pending-per-user` (0 = no cap).
    pub max_pending_per_user: u64,
    /// Friends, groups and members each user and group may have.
    pub limits: Limits,
}

/// What one user or group may hold (`--max-friends`,
/// `--max-groups-per-user`, `--max-group-members`); 0 = no limit. Checked
/// by the writer inside the transaction that would pass them, with an index
/// count each, so they hold across the nodes sharing a store.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub friends: u64,
    pub groups_per_user: u64,
    pub group_members: u64,
    /// Members (over all groups) in a login reply's page of groups.
    pub login_group_members: usize,
}

/// `LimitReached` when `count` is at `limit` (0 = none).
fn within(count: u64, limit: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if limit > 0 && count >= limit {
        crate::metrics::counter(metric_names::REFUSED_TOTAL, &[("reason", "limit_reached")])
            .increment(1);
        return Err(StoreError::LimitReached {
            what: what(),
            limit,
        });
    }
    Ok(())
}

/// The ops waiting for the writer and for the reader.
pub struct OpQueues {
    pub writes: flume::Receiver<Op>,
    pub reads: flume::Receiver<Op>,
}

/// Creates the op channels: `capacity` ops may wait on each before senders
/// wait too.
pub fn channel(capacity: usize) -> (StoreClient, OpQueues) {
    let (tx, writes) = flume::bounded(capacity);
    let (reads_tx, reads) = flume::bounded(capacity);
    let client = StoreClient {
        tx,
        reads: reads_tx,
    };
    (client, OpQueues { writes, reads })
}

/// Runs the reader thread until it gets `Op::Stop` or every `StoreClient` is
/// dropped: takes every waiting read (up to `max_batch`), runs them in one
/// read transaction and answers them.
pub fn run_reader<S: Store>(mut store: S, ops: flume::Receiver<Op>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut replies: Vec<Reply> = Vec::with_capacity(max_batch);
    loop {
        let stopping = take_batch(&ops, None, Duration::ZERO, max_batch, &mut batch);
        for op in batch.drain(..) {
            crate::metrics::counter(metric_names::STORE_OPS_TOTAL, &[("op", op.kind())])
                .increment(1);
            replies.push(read(&mut store, op));
        }
        let failed = store.commit().err();
        if let Some(e) = &failed {
            tracing::error!(error = %e, "store read failed");
            metrics::counter!(metric_names::STORE_ERRORS_TOTAL).increment(1);
            store.rollback();
        }
        for reply in replies.drain(..) {
            reply(failed.as_ref());
        }
        if stopping {
            return;
        }
    }
}

/// Runs a read op ([`Op::is_read`]); its answer waits for the batch's end.
fn read<S: Store>(store: &mut S, op: Op) -> Reply {
    match op {
        Op::User { id, answer } => answer_later(answer, store.user(id)),
        Op::Pending {
            user,
            after,
            limit,
            answer,
        } => answer_later(answer, store.pending(user, after, limit)),
        Op::GroupInfo {
            group,
            user,
            answer,
        } => answer_later(answer, group_as_member(store, group, user)),
        Op::FindUser { name, answer } => answer_later(answer, store.find_user(&name)),
        Op::History {
            user,
            conversation,
            before,
            limit,
            answer,
        } => answer_later(answer, store.history(user, conversation, before, limit)),
        Op::Readers {
            user,
            group,
            message,
            answer,
        } => answer_later(answer, store.readers(user, group, message)),
        Op::Unread { user, answer } => answer_later(answer, store.unread(user)),
        Op::GroupsPage {
            user,
            after,
            max_members,
            answer,
        } => answer_later(answer, store.groups_page(user, after, max_members)),
        other => {
            // Dropping the answer fails the caller.
            tracing::error!(op = other.kind(), "not a read op");
            Box::new(|_| {})
        }
    }
}

/// `group` if `user` is one of its members: `UnknownGroup` if there is no
/// such group, `NotAMember` if they are not in it (nobody else sees who is).
fn group_as_member<S: Store>(
    store: &mut S,
    group: GroupId,
    user: UserId,
) -> Result<GroupInfo, StoreError> {
    let info = store.group(group)?.ok_or(StoreError::UnknownGroup(group))?;
    if !info.members.iter().any(|m| m.id == user) {
        return Err(StoreError::NotAMember { user, group });
    }
    Ok(info)
}

/// Waits up to `wait` (forever with `None`) for a first op, then takes the
/// ops already waiting, and those that come within `window` of the first
/// (`--commit-window`), up to `max` in `batch`; returns true once `Op::Stop`
/// came or every sender is gone.
fn take_batch(
    ops: &flume::Receiver<Op>,
    wait: Option<Duration>,
    window: Duration,
    max: usize,
    batch: &mut Vec<Op>,
) -> bool {
    let first = match wait {
        Some(wait) => ops
            .recv_timeout(wait)
            .map_err(|e| matches!(e, flume::RecvTimeoutError::Disconnected)),
        None => ops.recv().map_err(|_| true),
    };
    match first {
        Ok(Op::Stop) | Err(true) => return true,
        Ok(op) => batch.push(op),
        Err(false) => return false,
    }
    let until = Instant::now() + window;
    while batch.len() < max {
        let next = match ops.try_recv() {
            Err(flume::TryRecvError::Empty) if !window.is_zero() => ops
                .recv_deadline(until)
                .map_err(|e| matches!(e, flume::RecvTimeoutError::Disconnected)),
            next => next.map_err(|e| matches!(e, flume::TryRecvError::Disconnected)),
        };
        match next {
            Ok(Op::Stop) | Err(true) => return true,
            Ok(op) => batch.push(op),
            Err(false) => break,
        }
    }
    false
}

/// An answered op whose answer waits for the commit.
type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

fn answer_later<T: Send + 'static>(answer: Answer<T>, result: Result<T, StoreError>) -> Reply {
    Box::new(move |failed_commit| {
        let result = match (failed_commit, result) {
            (Some(e), Ok(_)) => Err(e.clone()),
            (_, r) => r,
        };
        let _ = answer.send(result);
    })
}

/// Like [`answer_later`], for ops whose sender may not wait for an answer.
fn answer_if_asked<T: Send + 'static>(
    answer: Option<Answer<T>>,
    result: Result<T, StoreError>,
) -> Reply {
    match answer {
        Some(answer) => answer_later(answer, result),
        None => Box::new(|_| {}),
    }
}

/// Runs the store thread until it gets `Op::Stop` or every `StoreClient` is
/// dropped.
pub fn run<S: Store>(
    store: S,
    ops: flume::Receiver<Op>,
    routers: Vec<flume::Sender<Vec<RouterEvent>>>,
    config: WriterConfig,
) {
    let mut writer = Writer::new(store, routers, config);
    let mut batch = Vec::with_capacity(writer.config.max_batch);
    let mut stopping = false;
    while !stopping {
        stopping = take_batch(
            &ops,
            Some(writer.wait()),
            writer.config.commit_window,
            writer.config.max_batch,
            &mut batch,
        );
        writer.run_batch(&mut batch);
        writer.tick(ops.is_empty());
    }
    writer.finish();
}

/// Runs the store's writer as a task of the executor it is spawned on
/// (`--store-on-shard`), until it gets `Op::Stop` or every `StoreClient` is
/// dropped.
///
/// A node with one shard then runs a message's whole path on one thread: no
/// wake-up of a store thread and no second executor sleep per message. The
/// cost: while a batch runs and commits (tens of microseconds for a few
/// ops), the shard serves no socket. Only for SQLite, whose calls do not
/// wait on a network.
pub async fn run_on_executor<S: Store>(
    store: S,
    ops: flume::Receiver<Op>,
    routers: Vec<flume::Sender<Vec<RouterEvent>>>,
    config: WriterConfig,
) {
    let mut writer = Writer::new(store, routers, config);
    writer.inline = true;
    let max = writer.config.max_batch;
    let mut batch = Vec::with_capacity(max);
    let mut stopping = false;
    while !stopping {
        let wait = writer.wait();
        let first = futures_lite::future::or(async { Some(ops.recv_async().await) }, async {
            tokio::time::sleep(wait).await;
            None
        })
        .await;
        match first {
            Some(Ok(Op::Stop)) | Some(Err(_)) => stopping = true,
            Some(Ok(op)) => batch.push(op),
            None => {}
        }
        let window = writer.config.commit_window;
        if !stopping && !batch.is_empty() && !window.is_zero() {
            // The connections run meanwhile, and their writes join this
            // batch (senders that find the channel full wait for it).
            tokio::time::sleep(window).await;
        }
        while !stopping && batch.len() < max {
            match ops.try_recv() {
                Ok(Op::Stop) => stopping = true,
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        writer.run_batch(&mut batch);
        writer.tick(ops.is_empty());
        // Let the answered sessions and the router run before the next batch.
        futures_lite::future::yield_now().await;
    }
    writer.finish();
}

/// The writer's state between batches: the group commit, the lease and the
/// maintenance schedule. Driven by [`run`] on a thread of its own or by
/// [`run_on_executor`] as a task.
struct Writer<S> {
    store: S,
    routers: Vec<flume::Sender<Vec<RouterEvent>>>,
    config: WriterConfig,
    replies: Vec<Reply>,
    out: Outbox,
    last_maintenance: Instant,
    last_lease: Instant,
    /// When the last successful renewal of the lease started.
    last_renewed: Instant,
    compacting: bool,
    last_slice: Instant,
    /// Runs on an executor: sends to routers never block.
    inline: bool,
    mailboxes: Mailboxes,
}

impl<S: Store> Writer<S> {
    fn new(store: S, routers: Vec<flume::Sender<Vec<RouterEvent>>>, config: WriterConfig) -> Self {
        let mailboxes = Mailboxes::new(config.max_pending_per_user);
        Writer {
            store,
            routers,
            replies: Vec::with_capacity(config.max_batch),
            out: Outbox::new(config.shards),
            config,
            last_maintenance: Instant::now(),
            last_lease: Instant::now(),
            last_renewed: Instant::now(),
            compacting: false,
            last_slice: Instant::now(),
            inline: false,
            mailboxes,
        }
    }

    /// How long to wait for a first op before the lease or maintenance is due.
    fn wait(&self) -> Duration {
        if self.compacting {
            Duration::from_millis(1)
        } else {
            self.config
                .lease_every
                .saturating_sub(self.last_lease.elapsed())
                .min(self.config.maintenance_every)
        }
    }

    /// Runs `batch` in one transaction, commits, answers every op and sends
    /// the events, in commit order.
    fn run_batch(&mut self, batch: &mut Vec<Op>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        crate::metrics::histogram(metric_names::STORE_BATCH_OPS, &[]).record(batch.len() as f64);
        let mut step = Step {
            store: &mut self.store,
            out: &mut self.out,
            node: &self.config.node_id,
            cluster: self.config.bus.is_some(),
            mailboxes: Some(&mut self.mailboxes),
            limits: self.config.limits,
        };
        for op in batch.drain(..) {
            crate::metrics::counter(metric_names::STORE_OPS_TOTAL, &[("op", op.kind())])
                .increment(1);
            self.replies.push(step.run(op));
        }
        let failed = commit(&mut self.store, &mut self.out, "batch");
        crate::metrics::histogram(metric_names::STORE_COMMIT_SECONDS, &[])
            .record(started.elapsed().as_secs_f64());
        self.out.send_routes(&self.routers, self.inline);
        for reply in self.replies.drain(..) {
            reply(failed.as_ref());
        }
        self.out
            .send(&self.routers, self.config.bus.as_mut(), self.inline);
    }

    /// The lease, heartbeats and maintenance, when due; `idle` when no op
    /// waits (compaction slices run then, or once a `SLICE_GAP` under load).
    fn tick(&mut self, idle: bool) {
        if self.inline {
            // Anything a full router queue left waiting.
            self.out
                .send(&self.routers, self.config.bus.as_mut(), self.inline);
        }
        if self.last_lease.elapsed() >= self.config.lease_every {
            self.last_lease = Instant::now();
            // In a cluster, a lease that ran out before this renewal (the
            // process was stopped, the machine stalled) may have let other
            // nodes release this node's users, who may have logged in
            // elsewhere: this node's sessions are closed before it serves
            // again, so a user never has two live sessions.
            // Other nodes compare the lease with their own clocks: anything
            // within one renewal period of the lease counts as run out.
            let lapse_after = self
                .config
                .lease_ttl
                .saturating_sub(self.config.lease_every);
            if self.config.bus.is_some() && self.last_renewed.elapsed() >= lapse_after {
                tracing::warn!(
                    since = ?self.last_renewed.elapsed(),
                    ttl = ?self.config.lease_ttl,
                    "this node's lease ran out; closing its sessions"
                );
                metrics::counter!(metric_names::LEASE_LAPSES_TOTAL).increment(1);
                self.out.broadcast(RouterEvent::LeaseLost);
            }
            let attempt = Instant::now();
            if lease_tick(&mut self.store, &mut self.out, &self.config) {
                self.last_renewed = attempt;
            }
            self.out
                .send(&self.routers, self.config.bus.as_mut(), self.inline);
            if let Some(bus) = self.config.bus.as_mut() {
                bus.heartbeat();
            }
        }
        // Compaction goes in small slices when no request is waiting (and at
        // most one per SLICE_GAP under constant load), so that requests never
        // wait behind a long transaction.
        if !self.compacting && self.last_maintenance.elapsed() >= self.config.maintenance_every {
            self.last_maintenance = Instant::now();
            self.compacting = true;
        }
        if self.compacting && (idle || self.last_slice.elapsed() >= SLICE_GAP) {
            self.last_slice = Instant::now();
            self.compacting = compact_slice(&mut self.store);
        }
    }

    /// Compacts what is left and ends the lease (the node is stopping).
    fn finish(mut self) {
        while compact_slice(&mut self.store) {}
        // Every session has logged out: the lease ends with the node.
        if let Err(e) = self
            .store
            .end_lease(&self.config.node_id)
            .and_then(|()| self.store.commit())
        {
            tracing::warn!(error = %e, "ending the lease failed; it expires by itself");
            self.store.rollback();
        }
    }
}

/// Commits, or on failure rolls back and forgets the batch's events; returns
/// the failure.
fn commit<S: Store>(store: &mut S, out: &mut Outbox, what: &str) -> Option<StoreError> {
    let failed = store.commit().err();
    if let Some(e) = &failed {
        tracing::error!(error = %e, what, "store commit failed; answered with errors");
        metrics::counter!(metric_names::STORE_ERRORS_TOTAL).increment(1);
        store.rollback();
        out.clear();
    }
    failed
}

/// Renews this node's lease and releases the users of nodes whose lease has
/// expired, telling their friends.
fn lease_tick<S: Store>(store: &mut S, out: &mut Outbox, config: &WriterConfig) -> bool {
    let node = config.node_id.as_str();
    let mut step = Step {
        store,
        out,
        node,
        cluster: config.bus.is_some(),
        mailboxes: None,
        limits: config.limits,
    };
    let done = step
        .store
        .renew_lease(node, config.lease_ttl)
        .and_then(|()| step.reap());
    if let Err(e) = done {
        tracing::warn!(error = %e, "renewing the lease failed");
        metrics::counter!(metric_names::STORE_ERRORS_TOTAL).increment(1);
        store.rollback();
        out.clear();
        return false;
    }
    commit(store, out, "lease").is_none()
}

/// Router events and bus events of one batch, sent once it is committed.
struct Outbox {
    /// Route and unroute events, per shard of this node.
    routes: Vec<Vec<RouterEvent>>,
    /// Every other event, per shard of this node.
    local: Vec<Vec<RouterEvent>>,
    /// Per other node.
    remote: HashMap<String, Vec<bus::Event>>,
    /// Committed events a full router queue did not take yet (writer on an
    /// executor only), per shard, oldest first.
    overflow: Vec<VecDeque<Vec<RouterEvent>>>,
}

impl Outbox {
    fn new(shards: usize) -> Outbox {
        Outbox {
            routes: vec![Vec::new(); shards],
            local: vec![Vec::new(); shards],
            remote: HashMap::new(),
            overflow: vec![VecDeque::new(); shards],
        }
    }

    /// Forgets the events of a batch that failed to commit (committed ones
    /// waiting in `overflow` stay).
    fn clear(&mut self) {
        self.routes.iter_mut().for_each(Vec::clear);
        self.local.iter_mut().for_each(Vec::clear);
        self.remote.clear();
    }

    /// Queues `event` for every shard's router.
    fn broadcast(&mut self, event: RouterEvent) {
        for list in &mut self.local {
            list.push(event.clone());
        }
    }

    /// Queues `event` for the router of its user's home shard.
    fn push(&mut self, event: RouterEvent) {
        let shard = event.home_shard(self.local.len());
        match event {
            RouterEvent::Route { .. } | RouterEvent::Unroute { .. } => {
                self.routes[shard].push(event)
            }
            _ => self.local[shard].push(event),
        }
    }

    /// Sends the batch's route changes. A delivery of the same batch that
    /// they overtake finds its session's route or, if the session was
    /// leaving, no route: the message waits in the store.
    fn send_routes(&mut self, routers: &[flume::Sender<Vec<RouterEvent>>], inline: bool) {
        Self::flush(&mut self.routes, &mut self.overflow, routers, inline);
    }

    /// Sends everything else: deliveries and presence, here and to other
    /// nodes.
    fn send(
        &mut self,
        routers: &[flume::Sender<Vec<RouterEvent>>],
        bus: Option<&mut Publisher>,
        inline: bool,
    ) {
        Self::flush(&mut self.routes, &mut self.overflow, routers, inline);
        Self::flush(&mut self.local, &mut self.overflow, routers, inline);
        if let Some(bus) = bus {
            for (node, events) in self.remote.drain() {
                bus.publish(&node, events);
            }
        }
    }

    /// Hands each shard's events to its router. On a thread of its own the
    /// writer waits while a router's queue is full; on an executor
    /// (`inline`) it must not block the thread that may be the one to run
    /// that router, so what a full queue does not take waits in `overflow`,
    /// in order, and goes first at the next flush (the writer flushes at
    /// least once per lease period).
    fn flush(
        lists: &mut [Vec<RouterEvent>],
        overflow: &mut [VecDeque<Vec<RouterEvent>>],
        routers: &[flume::Sender<Vec<RouterEvent>>],
        inline: bool,
    ) {
        for (shard, list) in lists.iter_mut().enumerate() {
            if !inline {
                if !list.is_empty() {
                    // A router that is gone belongs to a shard that stopped.
                    let _ = routers[shard].send(std::mem::take(list));
                }
                continue;
            }
            let waiting = &mut overflow[shard];
            if !list.is_empty() {
                waiting.push_back(std::mem::take(list));
            }
            while let Some(events) = waiting.pop_front() {
                match routers[shard].try_send(events) {
                    Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
                    Err(flume::TrySendError::Full(events)) => {
                        waiting.push_front(events);
                        break;
                    }
                }
            }
        }
    }
}

/// Acknowledged messages deleted per compaction transaction (about a
/// millisecond of work).
const COMPACT_SLICE: usize = 50;
/// Under constant load, the time between two compaction slices.
const SLICE_GAP: Duration = Duration::from_secs(1);

/// Deletes one slice of acknowledged messages; true if there may be more.
fn compact_slice<S: Store>(store: &mut S) -> bool {
    match store
        .compact(COMPACT_SLICE)
        .and_then(|n| store.commit().map(|()| n))
    {
        Ok(deleted) => {
            metrics::counter!(metric_names::MESSAGES_COMPACTED_TOTAL).increment(deleted);
            deleted as usize == COMPACT_SLICE
        }
        Err(e) => {
            tracing::warn!(error = %e, "compaction failed");
            metrics::counter!(metric_names::STORE_ERRORS_TOTAL).increment(1);
            store.rollback();
            false
        }
    }
}

/// Counts the stored, unacknowledged deliveries for the
/// `chat_node_pending_messages` gauge every `every`, on a thread of its own
/// with its own store handle, until `stop` is dropped; once more at the end.
///
/// The count can take seconds on a large store (members times messages of
/// every group): here it only holds a read snapshot, never the writer (it
/// used to run on the store thread, and stalled every write for its
/// duration, issue 17). Backends that can not count (`None`) end the thread.
pub fn run_gauges<S: Store>(mut store: S, every: Duration, stop: flume::Receiver<()>) {
    loop {
        let stopping = !matches!(
            stop.recv_timeout(every),
            Err(flume::RecvTimeoutError::Timeout)
        );
        match store
            .pending_total()
            .and_then(|n| store.commit().map(|()| n))
        {
            Ok(Some(pending)) => {
                metrics::gauge!(metric_names::PENDING_MESSAGES).set(pending as f64)
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "counting pending messages failed");
                metrics::counter!(metric_names::STORE_ERRORS_TOTAL).increment(1);
                store.rollback();
            }
        }
        if stopping {
            return;
        }
    }
}

/// Runs the ops of one batch, collecting the events they produce.
struct Step<'a, S> {
    store: &'a mut S,
    out: &'a mut Outbox,
    node: &'a str,
    /// Whether other nodes share the store (a bus is configured).
    cluster: bool,
    /// The per-recipient cap (`None` where no message is stored).
    mailboxes: Option<&'a mut Mailboxes>,
    limits: Limits,
}

impl<S: Store> Step<'_, S> {
    /// Queues an event for a router of this node.
    fn emit(&mut self, event: RouterEvent) {
        self.out.push(event);
    }

    /// Tells `user`'s session about a new message or a friend's presence,
    /// on whichever node it is.
    fn notify(&mut self, user: UserId, event: RouterEvent) -> Result<(), StoreError> {
        if !self.cluster {
            self.emit(event);
            return Ok(());
        }
        let Some(node) = self.store.session_node(user)? else {
            return Ok(());
        };
        let event = match event {
            RouterEvent::Deliver { user, .. } => RouterEvent::Wake { user },
            other => other,
        };
        if node == self.node {
            self.emit(event);
            return Ok(());
        }
        let remote = match event {
            RouterEvent::Wake { user } => bus::Event::Wake { user },
            RouterEvent::Presence {
                user,
                who,
                name,
                online,
            } => bus::Event::Presence {
                user,
                who,
                name: name.to_string(),
                online,
            },
            RouterEvent::Takeover { user } => bus::Event::Takeover { user },
            RouterEvent::Notify {
                user,
                push: Push::RemovedFromGroup { group },
            } => bus::Event::RemovedFromGroup { user, group },
            RouterEvent::Notify {
                user,
                push: Push::FriendRemoved { friend },
            } => bus::Event::FriendRemoved { user, friend },
            RouterEvent::Notify {
                user,
                push: Push::ReadReceipt { reader, up_to, .. },
            } => bus::Event::ReadReceipt {
                user,
                reader,
                up_to,
            },
            _ => return Ok(()),
        };
        self.out.remote.entry(node).or_default().push(remote);
        Ok(())
    }

    /// Tells every online friend of `user` that they came online or left.
    fn tell_friends(
        &mut self,
        user: UserId,
        name: &Arc<str>,
        online: bool,
    ) -> Result<(), StoreError> {
        let friends = self.store.friends(user)?;
        self.tell(&friends, user, name, online)
    }

    /// Tells those of `friends` who are online that `user` came online or
    /// left.
    fn tell(
        &mut self,
        friends: &[Contact],
        user: UserId,
        name: &Arc<str>,
        online: bool,
    ) -> Result<(), StoreError> {
        for friend in friends {
            if friend.online && friend.id != user {
                self.notify(
                    friend.id,
                    RouterEvent::Presence {
                        user: friend.id,
                        who: user,
                        name: name.clone(),
                        online,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Releases the users of nodes whose lease has expired and tells their
    /// friends they are offline.
    fn reap(&mut self) -> Result<(), StoreError> {
        for node in self.store.expired_nodes()? {
            if node == self.node {
                continue;
            }
            let users = self.store.release_node(&node)?;
            tracing::info!(%node, users = users.len(), "lease expired; released its users");
            metrics::counter!(metric_names::EXPIRED_LEASES_TOTAL).increment(1);
            for user in users {
                if let Some(record) = self.store.user(user)? {
                    self.tell_friends(user, &record.name.into(), false)?;
                }
            }
        }
        Ok(())
    }

    fn run(&mut self, op: Op) -> Reply {
        match op {
            Op::Register {
                name,
                password_hash,
                answer,
            } => answer_later(answer, self.store.create_user(&name, &password_hash)),
            op @ (Op::User { .. }
            | Op::Pending { .. }
            | Op::GroupInfo { .. }
            | Op::FindUser { .. }
            | Op::History { .. }
            | Op::Readers { .. }
            | Op::Unread { .. }
            | Op::GroupsPage { .. }) => read(self.store, op),
            Op::Login {
                user,
                shard,
                conn,
                epoch,
                page,
                answer,
            } => answer_later(answer, self.login(user, shard, conn, epoch, page)),
            Op::Logout {
                user,
                conn,
                epoch,
                answer,
            } => answer_if_asked(answer, self.logout(user, conn, epoch)),
            Op::AddFriend {
                user,
                friend,
                answer,
            } => answer_later(answer, self.add_friend(user, friend)),
            Op::CreateGroup {
                creator,
                name,
                description,
                answer,
            } => answer_later(answer, self.create_group(creator, &name, &description)),
            Op::JoinGroup {
                group,
                user,
                answer,
            } => answer_later(answer, self.join_group(group, user)),
            Op::RemoveFriend {
                user,
                friend,
                answer,
            } => answer_later(answer, self.remove_friend(user, friend)),
            Op::LeaveGroup {
                group,
                user,
                answer,
            } => answer_later(answer, self.store.leave_group(group, user)),
            Op::RemoveMember {
                group,
                by,
                member,
                answer,
            } => answer_later(answer, self.remove_member(group, by, member)),
            Op::MarkRead {
                user,
                conversation,
                up_to,
                answer,
            } => answer_later(answer, self.mark_read(user, conversation, up_to)),
            Op::Append { message, answer } => answer_later(answer, self.append(&message)),
            Op::Ack {
                user,
                up_to,
                answer,
            } => {
                if let Some(m) = self.mailboxes.as_deref_mut() {
                    m.acked(user);
                }
                answer_if_asked(answer, self.store.ack(user, up_to))
            }
            Op::Takeover { user } => {
                // Wherever the session is: this node's router, or over the
                // bus to the node that holds it.
                if let Err(e) = self.notify(user, RouterEvent::Takeover { user }) {
                    tracing::warn!(error = %e, user, "takeover: finding the session failed");
                }
                Box::new(|_| {})
            }
            Op::Stop => Box::new(|_| {}),
        }
    }

    fn login(
        &mut self,
        user: UserId,
        shard: usize,
        conn: ConnId,
        epoch: u64,
        page: usize,
    ) -> Result<LoginInfo, StoreError> {
        let record = self
            .store
            .user(user)?
            .ok_or(StoreError::UnknownUser(user))?;
        self.store.claim_session(user, self.node, epoch)?;
        let friends = self.store.friends(user)?;
        let groups = self
            .store
            .groups_page(user, 0, self.limits.login_group_members)?;
        let more_groups = self
            .store
            .group_count(user)?
            .saturating_sub(groups.len() as u64);
        let pending = self.store.pending(user, 0, page)?;
        self.emit(RouterEvent::Route { user, shard, conn });
        let name: Arc<str> = record.name.as_str().into();
        self.tell(&friends, user, &name, true)?;
        Ok(LoginInfo {
            user,
            name: record.name,
            friends,
            groups,
            pending,
            unread: Vec::new(),
            more_groups,
        })
    }

    fn logout(&mut self, user: UserId, conn: ConnId, epoch: u64) -> Result<(), StoreError> {
        let released = self.store.release_session(user, self.node, epoch)?;
        self.emit(RouterEvent::Unroute { user, conn });
        if released {
            let name: Arc<str> = match self.store.user(user)? {
                Some(record) => record.name.into(),
                None => return Ok(()),
            };
            self.tell_friends(user, &name, false)?;
        }
        Ok(())
    }

    fn create_group(
        &mut self,
        creator: UserId,
        name: &str,
        description: &str,
    ) -> Result<GroupId, StoreError> {
        let limit = self.limits.groups_per_user;
        if limit > 0 {
            within(self.store.group_count(creator)?, limit, || {
                format!("user {creator} is in as many groups as one user may be")
            })?;
        }
        self.store.create_group(creator, name, description)
    }

    fn join_group(&mut self, group: GroupId, user: UserId) -> Result<GroupInfo, StoreError> {
        let limits = self.limits;
        if limits.groups_per_user > 0 {
            within(
                self.store.group_count(user)?,
                limits.groups_per_user,
                || format!("user {user} is in as many groups as one user may be"),
            )?;
        }
        if limits.group_members > 0 {
            within(
                self.store.member_count(group)?,
                limits.group_members,
                || format!("group {group} has as many members as a group may have"),
            )?;
        }
        self.store.join_group(group, user)
    }

    fn add_friend(&mut self, user: UserId, friend: UserId) -> Result<Contact, StoreError> {
        let limit = self.limits.friends;
        if limit > 0 {
            for who in [user, friend] {
                within(self.store.friend_count(who)?, limit, || {
                    format!("user {who} has as many friends as one user may have")
                })?;
            }
        }
        let contact = self.store.add_friend(user, friend)?;
        if contact.online
            && let Some(me) = self.store.user(user)?
        {
            self.notify(
                friend,
                RouterEvent::Presence {
                    user: friend,
                    who: user,
                    name: me.name.into(),
                    online: true,
                },
            )?;
        }
        Ok(contact)
    }

    /// Ends the friendship; the other user, if online, is told.
    fn remove_friend(&mut self, user: UserId, friend: UserId) -> Result<(), StoreError> {
        self.store.remove_friend(user, friend)?;
        self.notify(
            friend,
            RouterEvent::Notify {
                user: friend,
                push: Push::FriendRemoved { friend: user },
            },
        )
    }

    /// Moves the read position; in a direct conversation the peer, if
    /// online, gets a read receipt.
    fn mark_read(
        &mut self,
        user: UserId,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<bool, StoreError> {
        let moved = self.store.mark_read(user, conversation, up_to)?;
        if let (true, Conversation::Direct(peer)) = (moved, conversation)
            && peer != user
        {
            self.notify(
                peer,
                RouterEvent::Notify {
                    user: peer,
                    push: Push::ReadReceipt {
                        reader: user,
                        peer,
                        up_to,
                    },
                },
            )?;
        }
        Ok(moved)
    }

    /// Removes `member`; they are told, if online.
    fn remove_member(
        &mut self,
        group: GroupId,
        by: UserId,
        member: UserId,
    ) -> Result<(), StoreError> {
        self.store.remove_member(group, by, member)?;
        self.notify(
            member,
            RouterEvent::Notify {
                user: member,
                push: Push::RemovedFromGroup { group },
            },
        )
    }

    fn append(&mut self, message: &NewMessage) -> Result<Arc<StoredMessage>, StoreError> {
        if let (Target::User(to), Some(m)) = (message.target, self.mailboxes.as_deref_mut()) {
            m.admit(self.store, to)?;
        }
        let stored = Arc::new(self.store.append(message)?);
        if let (Target::User(to), Some(m)) = (message.target, self.mailboxes.as_deref_mut()) {
            m.stored(to);
        }
        crate::metrics::counter(metric_names::MESSAGES_STORED_TOTAL, &[]).increment(1);
        match message.target {
            Target::User(to) => self.notify(
                to,
                RouterEvent::Deliver {
                    user: to,
                    message: stored.clone(),
                },
            )?,
            Target::Group(group) => {
                for member in self.store.group_members(group)? {
                    if member != message.sender_id {
                        self.notify(
                            member,
                            RouterEvent::Deliver {
                                user: member,
                                message: stored.clone(),
                            },
                        )?;
                    }
                }
            }
        }
        Ok(stored)
    }
}
