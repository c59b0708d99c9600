//! One client connection, from accept to close.
//!
//! A connection is served by two tasks on the shard that accepted it: the
//! reader (detects the protocol from the first byte, decodes requests, runs
//! the handlers one at a time and queues their replies) and the writer (takes
//! everything queued in the [`Outbound`] and writes it). Pushes reach the
//! session from the router through [`Session::deliver`].
//!
//! The login state is an explicit machine, [`Phase`]:
//!
//! ```text
//! Anonymous ──login──▶ LoggingIn ──ok──▶ Online{catching_up} ──logout──▶ Anonymous
//!                          └──failure──▶ Anonymous
//! ```
//!
//! Delivery is "store first, push as a shortcut": while a session is logging
//! in or catching up on stored messages, live pushes are dropped and noted as
//! missed, and the catch-up reads the store again; once caught up, a push is
//! written only if its id is above the last one written. So a user gets every
//! stored message exactly once per connection, in id order.
//!
//! In a cluster there are no live message pushes, only wake-ups
//! ([`Session::wake`]): each one makes the session catch up from the store,
//! in one task at a time ([`Session::catch_up_running`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chat_schema::proxy_v2;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::command::{Push, Reply, Request, RequestKind};
use crate::outbound::{CloseReason, Outbound};
use crate::protocol::{Decoded, Decoder, Encoder, Wire};
use crate::service;
use crate::shard::Shard;
use crate::store::writer::{ConnId, Op};
use crate::store::{MessageId, UserId};

/// How long a closing connection may take to flush its queued bytes.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Who a logged-in session is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub name: Arc<str>,
    pub epoch: u64,
}

/// Where a connection is in the login state machine.
#[derive(Debug, Clone)]
pub enum Phase {
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
    pub phase: RefCell<Phase>,
    /// Highest message id a JSON client has been sent and the store told of.
    json_acked: Cell<MessageId>,
    /// Whether a catch-up task is reading the store for this session.
    pub catch_up_running: Cell<bool>,
}

impl Session {
    fn new(conn: ConnId, wire: Wire, max_outbound: usize) -> Session {
        Session {
            conn,
            wire,
            encoder: RefCell::new(Encoder::new(wire)),
            outbound: Outbound::new(max_outbound),
            phase: RefCell::new(Phase::Anonymous),
            json_acked: Cell::new(0),
            catch_up_running: Cell::new(false),
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
            Push::Presence { .. } => 0,
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
}

/// Counts a message pushed and, when it was sent while the recipient was
/// online (`since_ms`: their login), how long after its sending.
fn count_delivery(push: &Push, since_ms: u64) {
    if let Push::Message(m) = push {
        let kind = if m.group_id == 0 { "direct" } else { "group" };
        metrics::counter!("chat_node_messages_delivered_total", "kind" => kind).increment(1);
        if m.time_ms >= since_ms {
            let age_ms = crate::service::now_ms().saturating_sub(m.time_ms);
            metrics::histogram!("chat_node_delivery_latency_seconds", "kind" => kind)
                .record(age_ms as f64 / 1e3);
        }
    }
}

/// Counts a connection in the shard's load report while it lives.
struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads the PROXY protocol v2 header a balancer sends first; returns the
/// real client address (`None` for the balancer's own LOCAL connections)
/// and leaves what followed the header at the start of `buf[..*filled]`.
async fn read_proxy_header(
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    buf: &mut [u8],
    filled: &mut usize,
) -> Result<Option<SocketAddr>, String> {
    loop {
        match proxy_v2::decode(&buf[..*filled]) {
            Ok(Some((header, used))) => {
                buf.copy_within(used..*filled, 0);
                *filled -= used;
                return Ok(match header {
                    proxy_v2::Header::Proxy { source, .. } => Some(source),
                    proxy_v2::Header::Local => None,
                });
            }
            Ok(None) if *filled < buf.len() => {}
            Ok(None) => return Err("PROXY header longer than the buffer".into()),
            Err(e) => return Err(e.to_string()),
        }
        match reader.read(&mut buf[*filled..]).await {
            Ok(0) => return Err("closed inside the PROXY header".into()),
            Ok(n) => *filled += n,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _counted = Counted::new(&shard.load.shards[shard.id].connections);
    let _ = stream.set_nodelay(true);
    let idle = shard.config.idle_timeout;
    let _ = stream.set_read_timeout(Some(idle));
    let _ = stream.set_write_timeout(Some(idle));
    let peer = stream.peer_addr().ok();
    let (mut reader, mut writer) = futures_lite::io::split(stream);

    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut client = peer;
    if let Some(peer) = peer
        && shard.config.proxy_protocol_from.contains(&peer.ip())
    {
        match read_proxy_header(&mut reader, &mut buf, &mut filled).await {
            Ok(source) => {
                client = source.or(Some(peer));
                metrics::counter!("chat_node_proxied_connections_total").increment(1);
            }
            Err(reason) => {
                tracing::warn!(%peer, %reason, "bad PROXY protocol header; closing");
                metrics::counter!("chat_node_proxy_header_errors_total").increment(1);
                return;
            }
        }
    }
    if filled == 0 {
        filled = match reader.read(&mut buf).await {
            Ok(0) => return,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed before its first byte");
                return;
            }
            Ok(n) => n,
        };
    }
    buf.truncate(filled);
    tracing::debug!(client = ?client, "connection");
    let wire = Wire::detect(buf[0]);
    let conn = shard.next_conn_id();
    let session = Rc::new(Session::new(conn, wire, shard.config.max_outbound));
    shard.sessions.borrow_mut().insert(conn, session.clone());
    metrics::gauge!("chat_node_connections", "shard" => shard.label.clone(), "protocol" => wire.name()).increment(1.0);
    metrics::counter!("chat_node_connections_accepted_total", "protocol" => wire.name())
        .increment(1);

    let writer_task = {
        let (shard, session) = (shard.clone(), session.clone());
        glommio::spawn_local(async move {
            let mut out = Vec::with_capacity(16 * 1024);
            while let Some(last) = session.outbound.take(&mut out).await {
                if writer.write_all(&out).await.is_err() {
                    session.outbound.close(CloseReason::IoError);
                    break;
                }
                out.clear();
                if session.wire == Wire::Json && last > session.json_acked.get() {
                    // The seed's client can not ack: what is written counts as delivered.
                    if let Some(who) = session.identity() {
                        session.json_acked.set(last);
                        shard
                            .store
                            .tell(Op::Ack {
                                user: who.user,
                                up_to: last,
                                answer: None,
                            })
                            .await;
                    }
                }
            }
            let _ = writer.close().await;
        })
    };

    let reason = read_loop(&shard, &session, &mut reader, buf).await;
    session.outbound.close(reason);
    let reason = session.outbound.closed().unwrap_or(reason);
    // Let the writer flush what is queued, but not wait on a client that does
    // not read: dropping the task cancels its write and closes the socket.
    let grace = match reason {
        CloseReason::SlowConsumer | CloseReason::IoError => Duration::ZERO,
        _ => FLUSH_GRACE,
    };
    futures_lite::future::or(writer_task, glommio::timer::sleep(grace)).await;
    if reason == CloseReason::SlowConsumer {
        metrics::counter!("chat_node_slow_consumer_disconnects_total").increment(1);
    }
    metrics::counter!("chat_node_connections_closed_total", "reason" => reason.name()).increment(1);
    tracing::debug!(conn, client = ?client, reason = reason.name(), "connection closed");

    let phase = std::mem::replace(&mut *session.phase.borrow_mut(), Phase::Anonymous);
    if let Phase::Online { who, .. } = phase {
        shard
            .store
            .tell(Op::Logout {
                user: who.user,
                conn,
                epoch: who.epoch,
                answer: None,
            })
            .await;
    }
    shard.sessions.borrow_mut().remove(&conn);
    metrics::gauge!("chat_node_connections", "shard" => shard.label.clone(), "protocol" => wire.name()).decrement(1.0);
}

/// Reads and handles requests until the connection must close; returns why.
async fn read_loop(
    shard: &Rc<Shard>,
    session: &Rc<Session>,
    reader: &mut futures_lite::io::ReadHalf<TcpStream>,
    mut buf: Vec<u8>,
) -> CloseReason {
    let mut decoder = Decoder::new(session.wire, shard.config.max_frame);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut start = 0;
        loop {
            let (used, unit) = decoder.decode(&buf[start..]);
            start += used;
            let Some(unit) = unit else { break };
            match unit {
                Decoded::Request(request) => handle(shard, session, request).await,
                Decoded::Invalid {
                    request_id,
                    kind,
                    failure,
                } => {
                    metrics::counter!("chat_node_bad_input_total", "protocol" => session.wire.name(), "code" => failure.code.label()).increment(1);
                    session.reply(request_id, kind, &Reply::Error(failure));
                }
                Decoded::Fatal(failure) => {
                    metrics::counter!("chat_node_bad_input_total", "protocol" => session.wire.name(), "code" => failure.code.label()).increment(1);
                    session.reply(0, RequestKind::Unknown, &Reply::Error(failure));
                    return CloseReason::ProtocolError;
                }
            }
            if let Some(reason) = session.outbound.closed() {
                return reason;
            }
        }
        buf.drain(..start);
        if !session.outbound.drained().await {
            return session.outbound.closed().unwrap_or(CloseReason::IoError);
        }
        let read = futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
            session.outbound.wait_closed().await;
            None
        })
        .await;
        match read {
            None => return session.outbound.closed().unwrap_or(CloseReason::Shutdown),
            Some(Ok(0)) => return CloseReason::ClientClosed,
            Some(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return CloseReason::IdleTimeout;
            }
            Some(Err(_)) => return CloseReason::IoError,
        }
    }
}

async fn handle(shard: &Rc<Shard>, session: &Rc<Session>, request: Request) {
    let kind = RequestKind::from(&request.command);
    let label = request.command.kind();
    let started = Instant::now();
    let reply = service::handle(shard, session, request.command).await;
    let outcome = match &reply {
        Reply::Error(f) => f.code.label(),
        _ => "ok",
    };
    metrics::counter!("chat_node_requests_total", "kind" => label, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("chat_node_request_duration_seconds", "kind" => label)
        .record(started.elapsed().as_secs_f64());
    session.reply(request.id, kind, &reply);
    service::catch_up(shard, session).await;
}
