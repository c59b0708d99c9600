//! The state of one client connection, shared by its task (`connection`),
//! the handlers (`service`) and the router: the login state machine, what
//! was pushed, and the catch-up of stored messages.
//!
//! The login state is an explicit machine, `Phase`, private to this
//! module: every transition is a method of [`Session`]:
//!
//! ```text
//! Anonymous ──start_login──▶ LoggingIn ──logged_in──▶ Online{catching_up} ──log_out/close──▶ Anonymous
//!                                └──login_failed──▶ Anonymous
//! ```
//!
//! Delivery is "store first, push as a shortcut": while a session is logging
//! in or catching up on stored messages, live pushes are dropped and noted as
//! missed, and the catch-up ([`Session::catch_up`]) reads the store again;
//! once caught up, a push is written only if its id is above the last one
//! written. So a user gets every stored message exactly once per connection,
//! in id order.
//!
//! In a cluster there are no live message pushes, only wake-ups
//! ([`Session::wake`]): each one makes the session catch up from the store,
//! in one task at a time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::TokenBucket;
use crate::command::{ErrorCode, Failure, Push, Reply, RequestKind};
use crate::config::Config;
use crate::engine::{Op, StoreClient};
use crate::event::ConnId;
use crate::metric_names;
use crate::model::{MessageId, UserId, now_ms};
use crate::outbound::{CloseReason, Outbound};
use crate::protocol::{Encoder, Wire};

/// Its logs keep the target they had when this code was in the module
/// that also served the socket (log filters name it).
const LOG: &str = "chat_node::session";

/// Who a logged-in session is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub name: Arc<str>,
    pub epoch: u64,
}

/// Where a connection is in the login state machine.
#[derive(Debug, Clone)]
enum Phase {
    Anonymous,
    /// A login is with the store; pushes that arrive now are noted as missed.
    LoggingIn {
        missed: bool,
    },
    Online {
        who: Identity,
        /// Highest message id written to this connection.
        last_pushed: MessageId,
        /// Stored messages are still being read: live pushes are dropped.
        catching_up: bool,
        missed: bool,
        /// When the login completed (ms since the epoch): messages sent
        /// since count in the delivery latency, older ones were offline.
        online_since_ms: u64,
    },
}

/// The state of one connection shared by its tasks and the router.
pub struct Session {
    pub conn: ConnId,
    pub wire: Wire,
    encoder: RefCell<Encoder>,
    pub outbound: Outbound,
    phase: RefCell<Phase>,
    /// Highest message id a JSON client has been sent and the store told of.
    json_acked: Cell<MessageId>,
    /// The JSON client acknowledges messages itself (msgid 50): its other
    /// requests no longer count as proof of reading.
    json_explicit: Cell<bool>,
    /// Highest message id written to a JSON client that has not yet shown
    /// it read on (see [`Session::proved_reading`]).
    json_written: Cell<MessageId>,
    /// Counts the changes of the session's user (logins and logouts): bytes
    /// taken to be written under one count are acknowledged only for the
    /// user of that same count, so no cursor moves with another user's ids.
    user_change: Cell<u64>,
    /// Whether a catch-up task is reading the store for this session.
    catch_up_running: Cell<bool>,
    /// The catch-up is sending a login's backlog (paced by the client's
    /// reading), not messages that arrived since (bounded like live pushes).
    login_backlog: Cell<bool>,
    /// When bytes last came from the client (the takeover of a silent
    /// session reads it).
    last_heard: Cell<Instant>,
    /// The sends this connection may still make (`--send-rate`).
    send_budget: RefCell<Option<TokenBucket>>,
    /// Started once the reply to the request being handled is queued.
    after_reply: RefCell<Option<Box<dyn FnOnce()>>>,
}

impl Session {
    pub fn new(
        conn: ConnId,
        wire: Wire,
        max_outbound: usize,
        send_budget: Option<TokenBucket>,
    ) -> Session {
        Session {
            conn,
            wire,
            encoder: RefCell::new(Encoder::new(wire)),
            outbound: Outbound::new(max_outbound),
            phase: RefCell::new(Phase::Anonymous),
            json_acked: Cell::new(0),
            json_explicit: Cell::new(false),
            json_written: Cell::new(0),
            user_change: Cell::new(0),
            catch_up_running: Cell::new(false),
            login_backlog: Cell::new(false),
            last_heard: Cell::new(Instant::now()),
            send_budget: RefCell::new(send_budget),
            after_reply: RefCell::new(None),
        }
    }

    /// The connection is about to serve another user (a login) or none (a
    /// logout): what was sent to the previous user stops counting as
    /// delivered, and the JSON acknowledgement position starts again.
    pub fn user_changed(&self) {
        self.user_change.set(self.user_change.get() + 1);
        self.json_acked.set(0);
        self.json_written.set(0);
        self.outbound.forget_messages();
    }

    /// Counts [`Session::user_changed`] calls: a task working for one login
    /// stops once this moves.
    pub fn user_generation(&self) -> u64 {
        self.user_change.get()
    }

    /// Queues `failure` as the reply to request 0 and closes the connection
    /// with `reason` (the reply is flushed first).
    pub fn close_with_error(&self, failure: Failure, reason: CloseReason) {
        self.reply(0, RequestKind::Unknown, &Reply::Error(failure));
        self.outbound.close(reason);
    }

    /// Another login of this session's user waits: if nothing came from
    /// the client for `window` (a phone that lost its signal), the session
    /// is told why and closed, its logout frees the user; a live session
    /// stays (the other login gets `AlreadyOnline`). A zero `window` never
    /// closes.
    pub fn close_if_silent(&self, window: Duration) {
        let silent = self.last_heard.get().elapsed();
        if window.is_zero() || silent < window || self.identity().is_none() {
            return;
        }
        tracing::debug!(
            target: LOG,
            conn = self.conn,
            ?silent,
            "silent session replaced by a new login"
        );
        self.close_with_error(
            Failure::new(
                ErrorCode::NotLoggedIn,
                format!(
                    "logged in again elsewhere while this session was silent for {}; closing",
                    humantime::format_duration(Duration::from_secs(silent.as_secs()))
                ),
            ),
            CloseReason::Replaced,
        );
    }

    /// A JSON client showed it reads on (it sent a request, or closed its
    /// side cleanly): what was written to it before counts as delivered.
    /// Returns the user and message id the store must be told of (batched,
    /// see `Shard::note_delivered`), if any. The seed's client can not
    /// acknowledge; counting the bytes the kernel took as delivered lost
    /// what a client that then stopped reading or died had not read (issue
    /// 17). A client that only listens has its messages delivered again at
    /// its next login until it sends something.
    ///
    /// A client that acknowledges itself (msgid 50, see
    /// [`Session::acknowledges_itself`]) is never credited this way: a
    /// request it sent before a push reached it would count that push as
    /// read.
    pub fn proved_reading(&self) -> Option<(UserId, MessageId)> {
        self.proved_reading_up_to(self.json_written.get())
    }

    /// [`Session::proved_reading`] for what was written up to `written`.
    pub fn proved_reading_up_to(&self, written: MessageId) -> Option<(UserId, MessageId)> {
        if !self.json_explicit.get()
            && written > self.json_acked.get()
            && let Some(who) = self.identity()
        {
            self.json_acked.set(written);
            return Some((who.user, written));
        }
        None
    }

    /// The JSON client sent an acknowledgement of its own (msgid 50): from
    /// now on, on this connection, only those acknowledge its messages.
    pub fn acknowledges_itself(&self) {
        self.json_explicit.set(true);
    }

    /// Highest message id written to a JSON client (taken to be delivered
    /// once it shows it reads on).
    pub fn json_written(&self) -> MessageId {
        self.json_written.get()
    }

    /// The connection's task wrote bytes taken from the queue under user
    /// generation `generation` (see [`Session::user_generation`]), whose
    /// pushes go up to message `last`: for a JSON client they count as
    /// delivered once it shows it reads on, if the user is still the same.
    pub fn wrote(&self, last: MessageId, generation: u64) {
        if self.wire == Wire::Json
            && last > self.json_written.get()
            && generation == self.user_change.get()
        {
            self.json_written.set(last);
        }
    }

    /// Bytes came from the client at `now`.
    pub fn heard(&self, now: Instant) {
        self.last_heard.set(now);
    }

    /// Takes a token for one send: `Err` with the milliseconds to wait.
    pub fn take_send_token(&self) -> Result<(), u32> {
        match &mut *self.send_budget.borrow_mut() {
            Some(bucket) => bucket.take(Instant::now()),
            None => Ok(()),
        }
    }

    /// Whether no user is logged in or logging in on this connection.
    pub fn is_anonymous(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Anonymous)
    }

    /// A login's password checked out: it is now with the store, and
    /// pushes that arrive meanwhile are noted as missed.
    pub fn start_login(&self) {
        *self.phase.borrow_mut() = Phase::LoggingIn { missed: false };
    }

    /// Whether a push arrived while the login was with the store.
    pub fn missed_while_logging_in(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::LoggingIn { missed: true })
    }

    /// The login failed (or was undone): the connection serves no user.
    pub fn login_failed(&self) {
        *self.phase.borrow_mut() = Phase::Anonymous;
    }

    /// The store logged `who` in: the connection serves them, having
    /// written their messages up to `last_pushed` (the login reply's);
    /// `catching_up` when stored messages must be read still, `backlog`
    /// when those are a login's backlog (paced by the client's reading).
    pub fn logged_in(
        &self,
        who: Identity,
        last_pushed: MessageId,
        catching_up: bool,
        backlog: bool,
    ) {
        self.user_changed();
        *self.phase.borrow_mut() = Phase::Online {
            who,
            last_pushed,
            online_since_ms: now_ms(),
            catching_up,
            missed: false,
        };
        self.login_backlog.set(backlog);
    }

    /// A logout: the connection serves no user any more.
    pub fn log_out(&self) {
        *self.phase.borrow_mut() = Phase::Anonymous;
        self.user_changed();
    }

    /// The connection closed: it serves no user any more; returns who was
    /// logged in, if anyone (the caller releases them).
    pub fn close(&self) -> Option<Identity> {
        match std::mem::replace(&mut *self.phase.borrow_mut(), Phase::Anonymous) {
            Phase::Online { who, .. } => Some(who),
            _ => None,
        }
    }

    /// The logged-in identity and the highest message id written to this
    /// connection, if logged in.
    pub fn delivered(&self) -> Option<(Identity, MessageId)> {
        match &*self.phase.borrow() {
            Phase::Online {
                who, last_pushed, ..
            } => Some((who.clone(), *last_pushed)),
            _ => None,
        }
    }

    /// The logged-in identity, if any.
    pub fn identity(&self) -> Option<Identity> {
        match &*self.phase.borrow() {
            Phase::Online { who, .. } => Some(who.clone()),
            _ => None,
        }
    }

    /// Queues the reply to a request.
    pub fn reply(&self, request_id: u64, kind: RequestKind, reply: &Reply) {
        let last = match reply {
            Reply::LoggedIn(info) => info.pending.last().map_or(0, |m| m.id),
            _ => 0,
        };
        self.outbound.reply(last, |buf| {
            self.encoder
                .borrow_mut()
                .reply(request_id, kind, reply, buf)
        });
        let after = self.after_reply.borrow_mut().take();
        if let Some(start) = after {
            start();
        }
    }

    /// Runs `start` right after the reply to the request being handled is
    /// queued: what a handler sends after its reply (a login's remaining
    /// groups) never reaches the client before it, however the executor
    /// orders the tasks. A connection handles one request at a time, so
    /// the next reply queued is that request's.
    pub fn after_reply(&self, start: impl FnOnce() + 'static) {
        *self.after_reply.borrow_mut() = Some(Box::new(start));
    }

    /// Writes a stored message found while catching up; the caller paces
    /// these with [`Outbound::drained`], so they are queued like replies and
    /// never count as overflow.
    pub fn push_stored(&self, push: &Push, id: MessageId) {
        let since = {
            let mut phase = self.phase.borrow_mut();
            let Phase::Online {
                last_pushed,
                online_since_ms,
                ..
            } = &mut *phase
            else {
                return;
            };
            if id <= *last_pushed {
                return;
            }
            *last_pushed = id;
            *online_since_ms
        };
        self.outbound.reply(id, |buf| {
            self.encoder.borrow_mut().push(push, buf);
        });
        count_delivery(push, since);
    }

    /// New messages are stored for this session's user: notes that the
    /// session must read the store, and returns whether a catch-up task must
    /// be started for it.
    pub fn wake(&self) -> bool {
        match &mut *self.phase.borrow_mut() {
            Phase::Anonymous => false,
            Phase::LoggingIn { missed } => {
                *missed = true;
                false
            }
            Phase::Online {
                catching_up,
                missed,
                ..
            } => {
                *catching_up = true;
                *missed = true;
                !self.catch_up_running.get()
            }
        }
    }

    /// A push from the router for this connection.
    pub fn deliver(&self, push: &Push) {
        let id = match push {
            Push::Message(m) => m.id,
            _ => 0,
        };
        let since = {
            let mut phase = self.phase.borrow_mut();
            match &mut *phase {
                Phase::Anonymous => return,
                Phase::LoggingIn { missed } => {
                    *missed |= id != 0;
                    return;
                }
                Phase::Online {
                    last_pushed,
                    catching_up,
                    missed,
                    online_since_ms,
                    ..
                } => {
                    if id != 0 {
                        if *catching_up {
                            *missed = true;
                            return;
                        }
                        if id <= *last_pushed {
                            return;
                        }
                        *last_pushed = id;
                    }
                    *online_since_ms
                }
            }
        };
        // Over the bound the queue closes the connection (slow consumer); the
        // message stays stored for the next login.
        let mut written = false;
        let queued = self.outbound.push(id, |buf| {
            written = self.encoder.borrow_mut().push(push, buf);
        });
        if queued.is_ok() && written {
            count_delivery(push, since);
        }
    }

    /// Whether the queue may take more stored messages: a login's backlog
    /// waits for the client to read (it is paced by the reading); other
    /// messages (a cluster's wake-ups, pushes missed while logging in) are
    /// not: with the queue over its bound the client is a slow consumer and
    /// is disconnected, as with live pushes on one node. False when closing.
    async fn room_for_more(&self, config: &Config) -> bool {
        if self.outbound.queued() >= config.max_outbound && !self.login_backlog.get() {
            self.outbound.close(CloseReason::SlowConsumer);
            return false;
        }
        self.outbound.drained().await
    }

    /// Sends the stored messages the session has not seen yet, page by page
    /// (read through `store`), while it is catching up (after a login with a
    /// long backlog, or when live pushes were missed during one). Returns
    /// once live pushes can take over. One catch-up runs at a time.
    pub async fn catch_up(self: &Rc<Self>, store: &StoreClient, config: &Config) {
        if self.catch_up_running.replace(true) {
            return;
        }
        self.read_backlog(store, config).await;
        self.catch_up_running.set(false);
    }

    async fn read_backlog(&self, store: &StoreClient, config: &Config) {
        loop {
            let (user, after) = {
                let mut phase = self.phase.borrow_mut();
                match &mut *phase {
                    Phase::Online {
                        who,
                        last_pushed,
                        catching_up: true,
                        missed,
                        ..
                    } => {
                        *missed = false;
                        (who.user, *last_pushed)
                    }
                    _ => return,
                }
            };
            if !self.room_for_more(config).await {
                return;
            }
            let limit = config.pending_page;
            let page = match store
                .call(|answer| Op::Pending {
                    user,
                    after,
                    limit,
                    answer,
                })
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    // (the target it had when this was in `service`)
                    tracing::warn!(target: "chat_node::service", error = %e, user, "catch-up read failed; messages stay stored");
                    return;
                }
            };
            let full = page.len() >= limit;
            for message in page {
                if self.outbound.queued() >= config.max_outbound
                    && !self.room_for_more(config).await
                {
                    return;
                }
                let id = message.id;
                self.push_stored(&Push::Message(Arc::new(message)), id);
            }
            let mut phase = self.phase.borrow_mut();
            if let Phase::Online {
                catching_up,
                missed,
                ..
            } = &mut *phase
            {
                if !full && !*missed {
                    *catching_up = false;
                    self.login_backlog.set(false);
                    return;
                }
            } else {
                return;
            }
        }
    }
}

/// Counts a message pushed and, when it was sent while the recipient was
/// online (`since_ms`: their login), how long after its sending.
fn count_delivery(push: &Push, since_ms: u64) {
    if let Push::Message(m) = push {
        let kind = if m.group_id == 0 { "direct" } else { "group" };
        crate::metrics::counter(metric_names::MESSAGES_DELIVERED_TOTAL, &[("kind", kind)])
            .increment(1);
        if m.time_ms >= since_ms {
            let age_ms = now_ms().saturating_sub(m.time_ms);
            crate::metrics::histogram(metric_names::DELIVERY_LATENCY_SECONDS, &[("kind", kind)])
                .record(age_ms as f64 / 1e3);
        }
    }
}
