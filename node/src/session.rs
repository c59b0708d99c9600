//! One client connection, from accept to close.
//!
//! A connection is served by one task on the shard that accepted it,
//! [`Connection`], which owns the socket: it detects the protocol from the
//! first byte, decodes requests, runs the handlers one at a time (their
//! replies are queued in the [`Outbound`]) and writes everything queued.
//! Pushes reach the session from the router through [`Session::deliver`].
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
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chat_schema::proxy;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::admission::TokenBucket;
use crate::command::{ErrorCode, Failure, Push, Reply, Request, RequestKind};
use crate::outbound::{CloseReason, Outbound};
use crate::protocol::{Decoded, Decoder, Encoder, Wire};
use crate::service;
use crate::shard::Shard;
use crate::store::writer::{ConnId, Op};
use crate::store::{MessageId, UserId};

/// How long a closing connection may take to flush its queued bytes.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How long a connection closed with an error keeps reading (and dropping)
/// what its client still sends, so that the error reply is not lost to a
/// reset.
const LINGER: Duration = Duration::from_secs(1);

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
    /// Highest message id written to a JSON client that has not yet shown
    /// it read on (see [`Session::proved_reading`]).
    json_written: Cell<MessageId>,
    /// Counts the changes of the session's user (logins and logouts): bytes
    /// taken to be written under one count are acknowledged only for the
    /// user of that same count, so no cursor moves with another user's ids.
    user_change: Cell<u64>,
    /// Whether a catch-up task is reading the store for this session.
    pub catch_up_running: Cell<bool>,
    /// The catch-up is sending a login's backlog (paced by the client's
    /// reading), not messages that arrived since (bounded like live pushes).
    pub login_backlog: Cell<bool>,
    /// When bytes last came from the client (the takeover of a silent
    /// session reads it).
    last_heard: Cell<Instant>,
    /// The sends this connection may still make (`--send-rate`).
    send_budget: RefCell<Option<TokenBucket>>,
}

impl Session {
    fn new(
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
            json_written: Cell::new(0),
            user_change: Cell::new(0),
            catch_up_running: Cell::new(false),
            login_backlog: Cell::new(false),
            last_heard: Cell::new(Instant::now()),
            send_budget: RefCell::new(send_budget),
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
    /// side cleanly): what was written to it before counts as delivered, and
    /// the store is told (batched, see [`Shard::note_written`]). The seed's
    /// client can not acknowledge; counting the bytes the kernel took as
    /// delivered lost what a client that then stopped reading or died had
    /// not read (issue 17). A client that only listens has its messages
    /// delivered again at its next login until it sends something.
    pub fn proved_reading(&self, shard: &Rc<Shard>) {
        self.proved_reading_up_to(shard, self.json_written.get());
    }

    /// [`Session::proved_reading`] for what was written up to `written`.
    fn proved_reading_up_to(&self, shard: &Rc<Shard>, written: MessageId) {
        if written > self.json_acked.get()
            && let Some(who) = self.identity()
        {
            self.json_acked.set(written);
            shard.note_written(who.user, written);
        }
    }

    /// Takes a token for one send: `Err` with the milliseconds to wait.
    pub fn take_send_token(&self) -> Result<(), u32> {
        match &mut *self.send_budget.borrow_mut() {
            Some(bucket) => bucket.take(Instant::now()),
            None => Ok(()),
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
}

/// Counts a message pushed and, when it was sent while the recipient was
/// online (`since_ms`: their login), how long after its sending.
fn count_delivery(push: &Push, since_ms: u64) {
    if let Push::Message(m) = push {
        let kind = if m.group_id == 0 { "direct" } else { "group" };
        crate::metrics::counter("chat_node_messages_delivered_total", &[("kind", kind)])
            .increment(1);
        if m.time_ms >= since_ms {
            let age_ms = crate::service::now_ms().saturating_sub(m.time_ms);
            crate::metrics::histogram("chat_node_delivery_latency_seconds", &[("kind", kind)])
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

/// Reads the PROXY protocol header (v1 or v2, told apart by the first bytes)
/// a trusted proxy sends first, however many reads it takes; returns its
/// version and the real client address (`None` for the proxy's own LOCAL or
/// UNKNOWN connections) and leaves what followed the header at the start of
/// `buf[..*filled]`. Garbage is refused as soon as it cannot be a header,
/// and a header as soon as it runs past its limit (107 bytes for v1,
/// `proxy::MAX_V2_HEADER` for v2), so `buf` never fills up waiting.
async fn read_proxy_header(
    stream: &mut TcpStream,
    buf: &mut [u8],
    filled: &mut usize,
) -> Result<(proxy::Version, Option<SocketAddr>), String> {
    debug_assert!(buf.len() >= proxy::MAX_HEADER);
    loop {
        match proxy::decode(&buf[..*filled]) {
            Ok(Some(decoded)) => {
                buf.copy_within(decoded.used..*filled, 0);
                *filled -= decoded.used;
                return Ok((
                    decoded.version,
                    match decoded.header {
                        proxy::Header::Proxy { source, .. } => Some(source),
                        proxy::Header::Local => None,
                    },
                ));
            }
            Ok(None) if *filled < buf.len() => {}
            Ok(None) => return Err("PROXY header longer than the buffer".into()),
            Err(e) => return Err(e.to_string()),
        }
        match stream.read(&mut buf[*filled..]).await {
            Ok(0) => return Err("closed inside the PROXY header".into()),
            Ok(n) => *filled += n,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A connection whose first bytes were read: its protocol and the real
/// client address are known.
struct Opened {
    stream: TcpStream,
    client: Option<SocketAddr>,
    wire: Wire,
    /// Bytes read so far (after any PROXY header), not yet decoded.
    first: Vec<u8>,
}

/// Reads a trusted balancer's PROXY header, if one is due, then the first
/// bytes until they tell the protocol (one read, nearly always). `None` if
/// the connection closed or failed first (a bad PROXY header is logged and
/// counted).
async fn open(shard: &Shard, mut stream: TcpStream) -> Option<Opened> {
    let peer = stream.peer_addr().ok();
    // On the heap, not in the future: a connection's task would otherwise
    // keep these 4 KiB for its whole life (a future is as large as its
    // largest state).
    let mut first = vec![0u8; 4096];
    let mut filled = 0;
    let mut client = peer;
    if let Some(peer) = peer
        && shard.config.proxy_protocol_from.contains(&peer.ip())
    {
        match read_proxy_header(&mut stream, &mut first, &mut filled).await {
            Ok((version, source)) => {
                tracing::debug!(%peer, %version, source = ?source, "PROXY header");
                client = source.or(Some(peer));
                metrics::counter!("chat_node_proxied_connections_total").increment(1);
            }
            Err(reason) => {
                tracing::warn!(%peer, %reason, "bad PROXY protocol header; closing");
                metrics::counter!("chat_node_proxy_header_errors_total").increment(1);
                return None;
            }
        }
    }
    let wire = loop {
        if let Some(wire) = Wire::detect(&first[..filled]) {
            break wire;
        }
        if filled == first.len() {
            // Only whitespace so far: JSON skips it.
            break Wire::Json;
        }
        filled += match stream.read(&mut first[filled..]).await {
            Ok(0) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "connection failed before its protocol was known");
                return None;
            }
            Ok(n) => n,
        };
    };
    Some(Opened {
        stream,
        client,
        wire,
        first: {
            first.truncate(filled);
            first.shrink_to_fit();
            first
        },
    })
}

/// Closes the sending side and reads (and drops) what the client still
/// sends for up to [`LINGER`] or until it closes: a socket closed with
/// unread bytes sends a reset, and a reset can make the client's kernel drop
/// the error reply it has not read yet (nginx's `lingering_close` for the
/// same reason). Used after the node closes a connection with an error.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    futures_lite::future::or(
        async {
            let mut sink = [0u8; 512];
            while let Ok(1..) = stream.read(&mut sink).await {}
        },
        glommio::timer::sleep(LINGER),
    )
    .await;
}

/// How long a refused connection may take to send its first bytes (to tell
/// its protocol) before it is closed with no answer.
const REFUSE_WAIT: Duration = Duration::from_secs(1);

/// Answers a connection the node will not serve with `Overloaded` and
/// `message` in the client's protocol, then closes it (the accept loop, at
/// `--max-connections`).
pub async fn refuse(shard: Rc<Shard>, stream: TcpStream, message: String) {
    shard.refusing.set(shard.refusing.get() + 1);
    let _ = stream.set_read_timeout(Some(REFUSE_WAIT));
    let _ = stream.set_write_timeout(Some(REFUSE_WAIT));
    if let Some(opened) = open(&shard, stream).await {
        answer_and_close(opened, &message).await;
    }
    shard.refusing.set(shard.refusing.get() - 1);
}

/// Writes `Overloaded` with `message` as the reply to request 0, lingers,
/// closes.
async fn answer_and_close(mut opened: Opened, message: &str) {
    let mut out = Vec::new();
    Encoder::new(opened.wire).reply(
        0,
        RequestKind::Unknown,
        &Reply::Error(Failure::new(ErrorCode::Overloaded, message)),
        &mut out,
    );
    if opened.stream.write_all(&out).await.is_ok() {
        linger(&mut opened.stream).await;
    }
    let _ = opened.stream.close().await;
}

/// Serves one accepted connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _counted = Counted::new(&shard.load.shards[shard.id].connections);
    let _ = stream.set_nodelay(true);
    let idle = shard.config.idle_timeout;
    let _ = stream.set_read_timeout(Some(idle));
    let _ = stream.set_write_timeout(Some(idle));
    let Some(opened) = open(&shard, stream).await else {
        return;
    };
    let _slot = match opened.client.map(|c| shard.per_address.admit(c.ip())) {
        None | Some(Ok(None)) => None,
        Some(Ok(slot)) => slot,
        Some(Err(limit)) => {
            metrics::counter!("chat_node_connections_refused_total", "reason" => "per_ip")
                .increment(1);
            let ip = opened.client.map(|c| c.ip());
            tracing::debug!(
                ?ip,
                limit,
                "connection over --max-connections-per-ip refused"
            );
            let message = format!(
                "too many connections from your address ({limit}); close some and try again"
            );
            let _ = opened.stream.set_read_timeout(Some(REFUSE_WAIT));
            answer_and_close(opened, &message).await;
            return;
        }
    };
    let Opened {
        stream,
        client,
        wire,
        first,
    } = opened;
    tracing::debug!(client = ?client, "connection");
    let conn = shard.next_conn_id();
    let budget = TokenBucket::new(shard.config.send_rate, shard.config.send_burst);
    let session = Rc::new(Session::new(conn, wire, shard.config.max_outbound, budget));
    shard.sessions.borrow_mut().insert(conn, session.clone());
    metrics::gauge!("chat_node_connections", "shard" => shard.label.clone(), "protocol" => wire.name()).increment(1.0);
    metrics::counter!("chat_node_connections_accepted_total", "protocol" => wire.name())
        .increment(1);

    let mut connection = Connection::new(&shard, &session, stream, first);
    let reason = connection.run().await;
    // What was written before the client closed its side (not what the
    // closing flush still writes).
    let written_before_close = session.json_written.get();
    session.outbound.close(reason);
    let reason = session.outbound.closed().unwrap_or(reason);
    // A request being handled finishes first (a login the store completed
    // must be undone by the logout below), then what is queued is flushed,
    // but no client that does not read is waited for.
    if let Some(handler) = connection.handler.take() {
        handler.await;
    }
    let grace = match reason {
        CloseReason::SlowConsumer | CloseReason::IoError => Duration::ZERO,
        _ => FLUSH_GRACE,
    };
    futures_lite::future::or(connection.flush(), async {
        glommio::timer::sleep(grace).await;
    })
    .await;
    if matches!(
        reason,
        CloseReason::ProtocolError | CloseReason::FrameTimeout | CloseReason::LoginTimeout
    ) {
        linger(&mut connection.stream).await;
    }
    let _ = connection.stream.close().await;
    drop(connection);
    if reason == CloseReason::SlowConsumer {
        metrics::counter!("chat_node_slow_consumer_disconnects_total").increment(1);
    }
    metrics::counter!("chat_node_connections_closed_total", "reason" => reason.name()).increment(1);
    tracing::debug!(conn, client = ?client, reason = reason.name(), "connection closed");

    if reason == CloseReason::ClientClosed && session.wire == Wire::Json {
        // The client closed its side cleanly after reading (one that dies
        // with unread bytes resets the connection instead).
        session.proved_reading_up_to(&shard, written_before_close);
    }
    let phase = std::mem::replace(&mut *session.phase.borrow_mut(), Phase::Anonymous);
    if let Phase::Online { who, .. } = phase {
        shard.flush_written(who.user).await;
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

/// Bytes read from a socket at a time (into the shard's scratch buffer).
pub const READ_CHUNK: usize = 16 * 1024;
/// Units decoded and handled (or bytes moved) in one poll before the
/// connection yields to the shard's other tasks.
const POLL_BUDGET: usize = 64;
/// Buffers that grew past this while busy are given back once empty.
const KEEP_BUFFER: usize = 4 * 1024;

/// The one task that owns a connection's socket.
///
/// It reads requests, runs their handlers one at a time and writes what the
/// outbound queue holds, all from one poll function: every wake-up (bytes
/// readable, the socket writable, a handler's answer, a queued push, a
/// close) polls all three, each registering the same task, so no wake-up
/// can be lost between a reading task and a writing task (issue 18: with the
/// stream split between two tasks, requests were read and never handled).
/// An idle connection holds no read or write buffer.
struct Connection {
    shard: Rc<Shard>,
    session: Rc<Session>,
    stream: TcpStream,
    decoder: Decoder,
    /// Bytes read and not yet decoded.
    inbuf: Vec<u8>,
    /// Bytes taken from the outbound queue, `out[written..]` still to write.
    out: Vec<u8>,
    written: usize,
    /// Highest message id among the pushes in `out`.
    out_last: MessageId,
    /// [`Session::user_change`] when `out` was taken.
    out_user_change: u64,
    /// The request being handled.
    handler: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Since when the connection serves no user (accepted, or logged out;
    /// the login deadline counts from it), and the [`Session::user_change`]
    /// it was taken at.
    anonymous_since: (Instant, u64),
    /// Since when `inbuf` holds part of a request (the frame deadline).
    partial_since: Option<Instant>,
    /// The timer of the nearest deadline, while one applies.
    deadline: Option<(Instant, glommio::timer::Timer)>,
}

impl Connection {
    fn new(shard: &Rc<Shard>, session: &Rc<Session>, stream: TcpStream, inbuf: Vec<u8>) -> Self {
        let partial_since = (!inbuf.is_empty()).then(Instant::now);
        Connection {
            shard: shard.clone(),
            session: session.clone(),
            stream,
            decoder: Decoder::new(session.wire, shard.config.max_frame),
            inbuf,
            out: Vec::new(),
            written: 0,
            out_last: 0,
            out_user_change: 0,
            handler: None,
            anonymous_since: (Instant::now(), 0),
            partial_since,
            deadline: None,
        }
    }

    /// Serves the connection until it must close; returns why.
    async fn run(&mut self) -> CloseReason {
        poll_fn(|cx| self.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        self.session.outbound.register(cx.waker());
        if let Some(reason) = self.check_deadlines(cx) {
            return Poll::Ready(reason);
        }
        for _ in 0..POLL_BUDGET {
            if let Poll::Ready(Err(reason)) = self.poll_write(cx) {
                return Poll::Ready(reason);
            }
            if let Some(reason) = self.session.outbound.closed() {
                return Poll::Ready(reason);
            }
            if let Some(handler) = self.handler.as_mut() {
                match handler.as_mut().poll(cx) {
                    Poll::Ready(()) => self.handler = None,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if self.next_request() {
                continue;
            }
            // Replies are bounded by not reading requests while too much
            // waits to be written.
            let waiting = self.session.outbound.queued();
            if waiting >= self.shard.config.max_outbound {
                return Poll::Pending;
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(reason)) => return Poll::Ready(reason),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Budget spent: let the shard's other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Closes the connection, with an error in its protocol, when a request
    /// is incomplete for longer than `--frame-timeout` (a client that
    /// trickles bytes would otherwise keep it forever: the idle timeout
    /// restarts at every read) or it has not logged in within
    /// `--login-timeout`; otherwise arms a timer for the nearest deadline.
    /// Logged in with no partial request, nothing is armed.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        let config = &self.shard.config;
        let change = self.session.user_change.get();
        if self.anonymous_since.1 != change {
            self.anonymous_since = (Instant::now(), change);
        }
        let anonymous = matches!(*self.session.phase.borrow(), Phase::Anonymous);
        let login = anonymous.then(|| {
            (
                self.anonymous_since.0 + config.login_timeout,
                CloseReason::LoginTimeout,
            )
        });
        // A request waiting for its handler is the node's delay, not the
        // client's: the frame deadline counts only while none runs.
        let frame = self
            .partial_since
            .filter(|_| self.handler.is_none())
            .map(|since| (since + config.frame_timeout, CloseReason::FrameTimeout));
        let Some((at, reason)) = [login, frame].into_iter().flatten().min_by_key(|d| d.0) else {
            self.deadline = None;
            return None;
        };
        let now = Instant::now();
        if now < at {
            let timer = match &mut self.deadline {
                Some((armed, timer)) if *armed == at => timer,
                slot => &mut slot.insert((at, glommio::timer::Timer::new(at - now))).1,
            };
            if Pin::new(timer).poll(cx).is_pending() {
                return None;
            }
        }
        self.deadline = None;
        let (code, message) = match reason {
            CloseReason::LoginTimeout => (
                ErrorCode::NotLoggedIn,
                format!(
                    "not logged in within {}; closing",
                    humantime::format_duration(config.login_timeout)
                ),
            ),
            _ => (
                ErrorCode::BadRequest,
                format!(
                    "request incomplete after {}; closing",
                    humantime::format_duration(config.frame_timeout)
                ),
            ),
        };
        metrics::counter!("chat_node_bad_input_total", "protocol" => self.session.wire.name(), "code" => code.label()).increment(1);
        self.session
            .close_with_error(Failure::new(code, message), reason);
        Some(reason)
    }

    /// Decodes the next unit in `inbuf`: starts its handler, or answers a
    /// bad unit. Returns whether there was one.
    fn next_request(&mut self) -> bool {
        let (used, unit) = self.decoder.decode(&self.inbuf);
        self.inbuf.drain(..used);
        if used > 0 {
            // A unit ended; what is left (if anything) starts the next.
            self.partial_since = (!self.inbuf.is_empty()).then(Instant::now);
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_BUFFER {
            self.inbuf = Vec::new();
        }
        let Some(unit) = unit else {
            return false;
        };
        let session = &self.session;
        if session.wire == Wire::Json {
            session.proved_reading(&self.shard);
        }
        match unit {
            Decoded::Request(request) => {
                self.handler = Some(Box::pin(handle(
                    self.shard.clone(),
                    session.clone(),
                    request,
                )));
            }
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
                session.close_with_error(failure, CloseReason::ProtocolError);
            }
        }
        true
    }

    /// Reads what the socket has into `inbuf`.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CloseReason>> {
        let mut scratch = self.shard.scratch.borrow_mut();
        match Pin::new(&mut self.stream).poll_read(cx, &mut scratch) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(CloseReason::ClientClosed)),
            Poll::Ready(Ok(n)) => {
                self.inbuf.extend_from_slice(&scratch[..n]);
                let now = Instant::now();
                self.partial_since.get_or_insert(now);
                self.session.last_heard.set(now);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                Poll::Ready(Err(CloseReason::IdleTimeout))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(CloseReason::IoError)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what is queued until the socket takes no more (`Pending`) or
    /// nothing is left (`Ready(Ok)`); `Ready(Err)` when the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CloseReason>> {
        loop {
            if self.written == self.out.len() {
                self.wrote_all();
                match self.session.outbound.try_take(&mut self.out) {
                    Some(last) => {
                        self.session.outbound.set_in_flight(self.out.len());
                        self.out_last = last;
                        self.out_user_change = self.session.user_change.get();
                    }
                    None => return Poll::Ready(Ok(())),
                }
            }
            match Pin::new(&mut self.stream).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.session.outbound.close(CloseReason::IoError);
                    return Poll::Ready(Err(CloseReason::IoError));
                }
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.session
                        .outbound
                        .set_in_flight(self.out.len() - self.written);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// `out` is written: a JSON client's pushes in it count as delivered,
    /// and the buffer is emptied (and given back if it grew large).
    fn wrote_all(&mut self) {
        let last = std::mem::take(&mut self.out_last);
        let session = &self.session;
        if session.wire == Wire::Json
            && last > session.json_written.get()
            && self.out_user_change == session.user_change.get()
        {
            // Delivered once the client shows it reads on.
            session.json_written.set(last);
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::new();
        }
    }

    /// Writes everything queued (the connection is closing).
    async fn flush(&mut self) {
        poll_fn(|cx| {
            self.session.outbound.register(cx.waker());
            self.poll_write(cx).map(|_| ())
        })
        .await
    }
}

async fn handle(shard: Rc<Shard>, session: Rc<Session>, request: Request) {
    let kind = RequestKind::from(&request.command);
    let label = request.command.kind();
    let started = Instant::now();
    let reply = service::handle(&shard, &session, request.command).await;
    let outcome = match &reply {
        Reply::Error(f) => f.code.label(),
        _ => "ok",
    };
    crate::metrics::counter(
        "chat_node_requests_total",
        &[("kind", label), ("outcome", outcome)],
    )
    .increment(1);
    crate::metrics::histogram("chat_node_request_duration_seconds", &[("kind", label)])
        .record(started.elapsed().as_secs_f64());
    session.reply(request.id, kind, &reply);
    service::catch_up(&shard, &session).await;
}
