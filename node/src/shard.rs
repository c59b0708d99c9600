//! One executor of the node: its listener, its sessions, and the routes of the
//! users it is home to.
//!
//! Every shard binds the client port with SO_REUSEPORT, so the kernel spreads
//! new connections over the shards; a connection then lives on the shard that
//! accepted it. The shard's id is its peer id in the channel mesh that links
//! all shards (see `router`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;

use crate::admission::PerAddress;
use crate::config::Config;
use crate::load::{self, NodeLoad};
use crate::router::{self, Delivery, Forward, Route};
use crate::service;
use crate::session::{self, Session};
use crate::store::writer::{ConnId, Op, RouterEvent, StoreClient};
use crate::store::{MessageId, UserId};

/// How long what JSON connections wrote may wait before the store is told
/// (see [`Shard::note_written`]).
pub const ACK_DELAY: Duration = Duration::from_millis(20);

/// The state of one executor. Only touched from its own thread.
pub struct Shard {
    pub id: usize,
    /// `id` as a metrics label.
    pub label: String,
    pub config: Arc<Config>,
    pub store: StoreClient,
    pub sessions: RefCell<HashMap<ConnId, Rc<Session>>>,
    /// Routes of the users whose home shard this is.
    pub routes: RefCell<HashMap<UserId, Route>>,
    /// The node's load report, this shard's part written here.
    pub load: Arc<NodeLoad>,
    /// Open connections per client address.
    pub per_address: Arc<PerAddress>,
    /// Connections this shard is refusing now (see [`MAX_REFUSING`]).
    pub refusing: Cell<usize>,
    /// Where every connection of this shard reads into: bytes are copied
    /// out to the connection only while they wait to be handled, so an idle
    /// connection holds no read buffer.
    pub scratch: RefCell<Vec<u8>>,
    /// What JSON connections have written and the store has not been told
    /// yet: the highest message id per user (see [`Shard::note_written`]).
    acks: RefCell<HashMap<UserId, MessageId>>,
    acks_due: Cell<bool>,
    next_conn: Cell<u64>,
    epochs: Arc<AtomicU64>,
}

impl Shard {
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

    /// A JSON connection of `user` has written messages up to `up_to` (the
    /// seed's client can not acknowledge, so written counts as delivered).
    /// The store is told within [`ACK_DELAY`], one op per user for all the
    /// shard's writes meanwhile, instead of one store op (and one store
    /// thread wake-up and commit) per write; a connection that closes tells
    /// its own at once ([`Shard::flush_written`]). A crash inside the delay
    /// delivers those messages again at the next login, as it would any
    /// message written and not yet read.
    pub fn note_written(self: &Rc<Self>, user: UserId, up_to: MessageId) {
        let mut acks = self.acks.borrow_mut();
        let last = acks.entry(user).or_insert(0);
        *last = (*last).max(up_to);
        if !self.acks_due.replace(true) {
            let shard = self.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(ACK_DELAY).await;
                shard.acks_due.set(false);
                let acks = std::mem::take(&mut *shard.acks.borrow_mut());
                for (user, up_to) in acks {
                    shard.store.tell_now(Op::Ack {
                        user,
                        up_to,
                        answer: None,
                    });
                }
            })
            .detach();
        }
    }

    /// Tells the store at once what [`Shard::note_written`] holds for
    /// `user` (the user is leaving this connection), ahead of any op sent
    /// after this returns.
    pub async fn flush_written(&self, user: UserId) {
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
            glommio::spawn_local(async move { service::catch_up(&shard, &session).await }).detach();
        }
    }

    /// Closes every session of this shard with `reason`.
    pub fn close_all(&self, reason: crate::outbound::CloseReason) {
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

/// What every shard shares, handed to each executor when it starts.
#[derive(Clone)]
pub struct Wiring {
    pub config: Arc<Config>,
    pub store: StoreClient,
    pub mesh: MeshBuilder<Forward, glommio::channels::channel_mesh::Full>,
    /// Router inbox of each shard, indexed by mesh peer id.
    pub routers: Arc<Vec<flume::Receiver<Vec<RouterEvent>>>>,
    pub epochs: Arc<AtomicU64>,
    pub load: Arc<NodeLoad>,
    /// Open connections per client address (`--max-connections-per-ip`).
    pub per_address: Arc<PerAddress>,
}

/// Connections being refused (answered `Overloaded`, then closed) at once
/// per shard; over it a refused connection is closed with no answer.
const MAX_REFUSING: usize = 256;

/// Runs one shard: accepts on `listener` until `shutdown` fires, then closes its
/// sessions (they release their users) and returns.
pub async fn run(listener: TcpListener, wiring: Wiring, shutdown: flume::Receiver<()>) {
    let (senders, receivers) = match wiring.mesh.join().await {
        Ok(mesh) => mesh,
        Err(_) => {
            tracing::error!("joining the shard mesh failed");
            return;
        }
    };
    let id = senders.peer_id();
    let shard = Rc::new(Shard {
        id,
        label: id.to_string(),
        config: wiring.config.clone(),
        store: wiring.store.clone(),
        sessions: RefCell::new(HashMap::new()),
        routes: RefCell::new(HashMap::new()),
        load: wiring.load.clone(),
        per_address: wiring.per_address.clone(),
        refusing: Cell::new(0),
        scratch: RefCell::new(vec![0; crate::session::READ_CHUNK]),
        acks: RefCell::new(HashMap::new()),
        acks_due: Cell::new(false),
        next_conn: Cell::new(0),
        epochs: wiring.epochs.clone(),
    });
    router::receive(shard.clone(), receivers);
    let router_task = {
        let shard = shard.clone();
        let events = wiring.routers[id].clone();
        glommio::spawn_local(async move { router::run(&shard, events, &senders).await })
    };
    let lag_probe = glommio::spawn_local(measure_lag(shard.label.clone()));
    let sampler = {
        let s = shard.clone();
        glommio::spawn_local(async move {
            let queued = || -> u64 {
                s.sessions
                    .borrow()
                    .values()
                    .map(|session| session.outbound.queued() as u64)
                    .sum()
            };
            load::sample(&s.load, s.id, s.label.clone(), queued).await
        })
    };
    tracing::debug!(shard = id, "shard ready");

    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = shutdown.recv_async().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                if shard.load.connections() >= shard.load.capacity {
                    // Over --max-connections: an `Overloaded` error in the
                    // client's protocol, then closed; counted.
                    metrics::counter!("chat_node_connections_refused_total", "reason" => "max_connections").increment(1);
                    if shard.refusing.get() < MAX_REFUSING {
                        let capacity = shard.load.capacity;
                        glommio::spawn_local(session::refuse(
                            shard.clone(),
                            stream,
                            format!("max number of connections reached ({capacity}); try another node or later"),
                        ))
                        .detach();
                    }
                    continue;
                }
                glommio::spawn_local(session::serve(shard.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                // Typically out of file descriptors: back off instead of spinning.
                metrics::counter!("chat_node_accept_errors_total").increment(1);
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);

    let open: Vec<Rc<Session>> = shard.sessions.borrow().values().cloned().collect();
    for s in &open {
        s.outbound.close(crate::outbound::CloseReason::Shutdown);
    }
    drop(open);
    // Sessions flush their queues and release their users; give them a moment.
    for _ in 0..500 {
        if shard.sessions.borrow().is_empty() {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    drop(router_task);
    drop(lag_probe);
    drop(sampler);
}

/// How late a 10 ms timer fires on this executor: near zero while every task
/// yields promptly, large when something blocks the thread.
async fn measure_lag(shard: String) {
    const TICK: Duration = Duration::from_millis(10);
    let lag = metrics::histogram!("chat_node_event_loop_lag_seconds", "shard" => shard);
    loop {
        let started = std::time::Instant::now();
        glommio::timer::sleep(TICK).await;
        lag.record(started.elapsed().saturating_sub(TICK).as_secs_f64());
    }
}

/// Binds the client port for one shard (glommio sets SO_REUSEPORT, so every
/// shard can bind the same port).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
}
