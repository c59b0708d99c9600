//! The state of one executor of the node (a shard): its sessions, the
//! routes of the users it is home to, and what its connections share (ids,
//! the read buffer, the batched JSON acknowledgements). `executor` runs it;
//! `router` and `connection` change it only through its methods.
//!
//! A connection lives on the shard that accepted it. The shard's id is its
//! peer id in the channel mesh that links all shards (see `router`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::admission::PerAddress;
use crate::command::Push;
use crate::config::Config;
use crate::engine::{Op, StoreClient};
use crate::event::ConnId;
use crate::load::NodeLoad;
use crate::model::{MessageId, UserId};
use crate::outbound::CloseReason;
use crate::session::Session;

/// What a session is handed.
#[derive(Debug)]
pub enum Delivery {
    Push(Push),
    /// New messages are stored for the session's user: read them.
    Wake,
    /// Another login of the session's user waits: close if silent.
    Takeover,
}

/// A delivery handed from the home shard of its user to the shard holding
/// the user's session.
#[derive(Debug)]
pub struct Forward {
    pub conn: ConnId,
    pub delivery: Delivery,
}

/// Where a user's session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub shard: usize,
    pub conn: ConnId,
}

/// Bytes read from a socket at a time (into the shard's scratch buffer).
pub const READ_CHUNK: usize = 16 * 1024;

/// How long what JSON connections wrote, and quiet acknowledgements, may
/// wait before the store is told (see [`Shard::note_delivered`]).
pub const ACK_DELAY: Duration = Duration::from_millis(20);

/// The state of one executor. Only touched from its own thread.
pub struct Shard {
    pub id: usize,
    /// `id` as a metrics label.
    pub label: String,
    pub config: Arc<Config>,
    pub store: StoreClient,
    sessions: RefCell<HashMap<ConnId, Rc<Session>>>,
    /// Routes of the users whose home shard this is.
    routes: RefCell<HashMap<UserId, Route>>,
    /// The node's load report, this shard's part written here.
    pub load: Arc<NodeLoad>,
    /// Open connections per client address.
    pub per_address: Arc<PerAddress>,
    /// Connections this shard is refusing now (see `executor::MAX_REFUSING`).
    pub refusing: Cell<usize>,
    /// Where every connection of this shard reads into: bytes are copied
    /// out to the connection only while they wait to be handled, so an idle
    /// connection holds no read buffer.
    pub scratch: RefCell<Vec<u8>>,
    /// What JSON connections have written, or clients acknowledged quietly,
    /// and the store has not been told yet: the highest message id per user
    /// (see [`Shard::note_delivered`]).
    acks: RefCell<HashMap<UserId, MessageId>>,
    acks_due: Cell<bool>,
    next_conn: Cell<u64>,
    epochs: Arc<AtomicU64>,
}

impl Shard {
    /// The shard of mesh peer `id`, with no sessions and no routes yet.
    pub fn new(
        id: usize,
        config: Arc<Config>,
        store: StoreClient,
        load: Arc<NodeLoad>,
        per_address: Arc<PerAddress>,
        epochs: Arc<AtomicU64>,
    ) -> Shard {
        Shard {
            id,
            label: id.to_string(),
            config,
            store,
            sessions: RefCell::new(HashMap::new()),
            routes: RefCell::new(HashMap::new()),
            load,
            per_address,
            refusing: Cell::new(0),
            scratch: RefCell::new(vec![0; READ_CHUNK]),
            acks: RefCell::new(HashMap::new()),
            acks_due: Cell::new(false),
            next_conn: Cell::new(0),
            epochs,
        }
    }

    /// A connection of this shard starts being served.
    pub fn add_session(&self, session: Rc<Session>) {
        self.sessions.borrow_mut().insert(session.conn, session);
    }

    /// Connection `conn` of this shard is closed.
    pub fn remove_session(&self, conn: ConnId) {
        self.sessions.borrow_mut().remove(&conn);
    }

    /// Whether no connection of this shard is open.
    pub fn has_no_sessions(&self) -> bool {
        self.sessions.borrow().is_empty()
    }

    /// Bytes queued for all the connections of this shard.
    pub fn queued(&self) -> u64 {
        self.sessions
            .borrow()
            .values()
            .map(|session| session.outbound.queued() as u64)
            .sum()
    }

    /// `user` (homed here) is now served at `route`.
    pub fn set_route(&self, user: UserId, route: Route) {
        self.routes.borrow_mut().insert(user, route);
    }

    /// `user` (homed here) left connection `conn`: their route goes, unless
    /// it already names another connection.
    pub fn unroute(&self, user: UserId, conn: ConnId) {
        let mut routes = self.routes.borrow_mut();
        if routes.get(&user).is_some_and(|r| r.conn == conn) {
            routes.remove(&user);
        }
    }

    /// Where the session of `user` (homed here) lives, if they are online.
    pub fn route(&self, user: UserId) -> Option<Route> {
        self.routes.borrow().get(&user).copied()
    }

    /// A connection id unique within the node.
    pub fn next_conn_id(&self) -> ConnId {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        ((self.id as u64) << 48) | n
    }

    /// A session epoch unique within the node and across its restarts.
    pub fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed)
    }

    /// `user` has messages up to `up_to` (a JSON connection wrote them: the
    /// seed's client can not acknowledge, so written counts as delivered; or
    /// a client acknowledged them quietly). The store is told within
    /// [`ACK_DELAY`], one op per user for all the shard's notes meanwhile, instead of one store op (and one store
    /// thread wake-up and commit) per write; a connection that closes tells
    /// its own at once ([`Shard::flush_delivered`]). A crash inside the delay
    /// delivers those messages again at the next login, as it would any
    /// message written and not yet read.
    pub fn note_delivered(self: &Rc<Self>, user: UserId, up_to: MessageId) {
        let mut acks = self.acks.borrow_mut();
        let last = acks.entry(user).or_insert(0);
        *last = (*last).max(up_to);
        if !self.acks_due.replace(true) {
            let shard = self.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(ACK_DELAY).await;
                shard.acks_due.set(false);
                let acks = std::mem::take(&mut *shard.acks.borrow_mut());
                for (user, up_to) in acks {
                    shard.store.tell_now(Op::Ack {
                        user,
                        up_to,
                        answer: None,
                    });
                }
            });
        }
    }

    /// Tells the store at once what [`Shard::note_delivered`] holds for
    /// `user` (the user is leaving this connection), ahead of any op sent
    /// after this returns.
    pub async fn flush_delivered(&self, user: UserId) {
        let held = self.acks.borrow_mut().remove(&user);
        if let Some(up_to) = held {
            self.store
                .tell(Op::Ack {
                    user,
                    up_to,
                    answer: None,
                })
                .await;
        }
    }

    /// Hands a delivery to a local session, if it is still there.
    pub fn deliver(self: &Rc<Self>, conn: ConnId, delivery: Delivery) {
        let session = self.sessions.borrow().get(&conn).cloned();
        if let Some(session) = session {
            match delivery {
                Delivery::Push(push) => session.deliver(&push),
                Delivery::Wake => self.wake(&session),
                Delivery::Takeover => session.close_if_silent(self.config.takeover_after),
            }
        }
    }

    /// Makes `session` read the store for what it has not pushed yet, in a
    /// task of its own unless one is running.
    fn wake(self: &Rc<Self>, session: &Rc<Session>) {
        if session.wake() {
            let (shard, session) = (self.clone(), session.clone());
            tokio::task::spawn_local(
                async move { session.catch_up(&shard.store, &shard.config).await },
            );
        }
    }

    /// Closes every session of this shard with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        let open: Vec<Rc<Session>> = self.sessions.borrow().values().cloned().collect();
        for session in &open {
            session.outbound.close(reason);
        }
    }

    /// Wakes every session of this shard (NATS may have lost wake-ups).
    pub fn resync(self: &Rc<Self>) {
        let open: Vec<Rc<Session>> = self.sessions.borrow().values().cloned().collect();
        for session in &open {
            self.wake(session);
        }
    }
}
