//! One client connection, from accept to close: the one task that owns
//! its socket.
//!
//! A connection is served by one task on the shard that accepted it,
//! `Connection`, which owns the socket: it reads a trusted balancer's PROXY
//! header, detects the protocol from the first byte, decodes requests, runs
//! the handlers (`service`) one at a time (their replies are queued in the
//! session's [`Outbound`](crate::outbound::Outbound)) and writes everything
//! queued. The state the router and the handlers share with it is the
//! [`Session`]; pushes reach it from the router through the shard.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chat_schema::proxy;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::admission::TokenBucket;
use crate::command::{Command, ErrorCode, Failure, Reply, Request, RequestKind};
use crate::engine::Op;
use crate::metric_names;
use crate::model::MessageId;
use crate::outbound::CloseReason;
use crate::protocol::{Decoded, Decoder, Encoder, Wire};
use crate::service;
use crate::session::Session;
use crate::shard::Shard;
use crate::socket::Socket as TcpStream;

/// Its logs keep the target they had when this code was in `session` (log
/// filters name it: the PROXY protocol tests read these).
const LOG: &str = "chat_node::session";

/// How long a closing connection may take to flush its queued bytes.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How long a connection closed with an error keeps reading (and dropping)
/// what its client still sends, so that the error reply is not lost to a
/// reset.
const LINGER: Duration = Duration::from_secs(1);

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
                tracing::debug!(target: LOG, %peer, %version, source = ?source, "PROXY header");
                client = source.or(Some(peer));
                metrics::counter!(metric_names::PROXIED_CONNECTIONS_TOTAL).increment(1);
            }
            Err(reason) => {
                tracing::warn!(target: LOG, %peer, %reason, "bad PROXY protocol header; closing");
                metrics::counter!(metric_names::PROXY_HEADER_ERRORS_TOTAL).increment(1);
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
                tracing::debug!(target: LOG, error = %e, "connection failed before its protocol was known");
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
        tokio::time::sleep(LINGER),
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
            metrics::counter!(metric_names::CONNECTIONS_REFUSED_TOTAL, "reason" => "per_ip")
                .increment(1);
            let ip = opened.client.map(|c| c.ip());
            tracing::debug!(
                target: LOG,
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
    tracing::debug!(target: LOG, client = ?client, "connection");
    let conn = shard.next_conn_id();
    let budget = TokenBucket::new(shard.config.send_rate, shard.config.send_burst);
    let session = Rc::new(Session::new(conn, wire, shard.config.max_outbound, budget));
    shard.add_session(session.clone());
    metrics::gauge!(metric_names::CONNECTIONS, "shard" => shard.label.clone(), "protocol" => wire.name()).increment(1.0);
    metrics::counter!(metric_names::CONNECTIONS_ACCEPTED_TOTAL, "protocol" => wire.name())
        .increment(1);

    let mut connection = Connection::new(&shard, &session, stream, first);
    let reason = connection.run().await;
    // What was written before the client closed its side (not what the
    // closing flush still writes).
    let written_before_close = session.json_written();
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
        tokio::time::sleep(grace).await;
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
        metrics::counter!(metric_names::SLOW_CONSUMER_DISCONNECTS_TOTAL).increment(1);
    }
    metrics::counter!(metric_names::CONNECTIONS_CLOSED_TOTAL, "reason" => reason.name())
        .increment(1);
    tracing::debug!(target: LOG, conn, client = ?client, reason = reason.name(), "connection closed");

    if reason == CloseReason::ClientClosed && session.wire == Wire::Json {
        // The client closed its side cleanly after reading (one that dies
        // with unread bytes resets the connection instead).
        if let Some((user, up_to)) = session.proved_reading_up_to(written_before_close) {
            shard.note_delivered(user, up_to);
        }
    }
    if let Some(who) = session.close() {
        shard.flush_delivered(who.user).await;
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
    shard.remove_session(conn);
    metrics::gauge!(metric_names::CONNECTIONS, "shard" => shard.label.clone(), "protocol" => wire.name()).decrement(1.0);
}

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
    /// [`Session::user_generation`] when `out` was taken.
    out_user_change: u64,
    /// The request being handled.
    handler: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// Since when the connection serves no user (accepted, or logged out;
    /// the login deadline counts from it), and the [`Session::user_generation`]
    /// it was taken at.
    anonymous_since: (Instant, u64),
    /// Since when `inbuf` holds part of a request (the frame deadline).
    partial_since: Option<Instant>,
    /// The timer of the nearest deadline, while one applies.
    deadline: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
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
        let change = self.session.user_generation();
        if self.anonymous_since.1 != change {
            self.anonymous_since = (Instant::now(), change);
        }
        let anonymous = self.session.is_anonymous();
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
                slot => &mut slot.insert((at, Box::pin(tokio::time::sleep(at - now)))).1,
            };
            if timer.as_mut().poll(cx).is_pending() {
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
        metrics::counter!(metric_names::BAD_INPUT_TOTAL, "protocol" => self.session.wire.name(), "code" => code.label()).increment(1);
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
            // An acknowledgement of its own switches the client off the
            // implicit rule before it could count as proof of reading.
            if let Decoded::Request(r) = &unit
                && matches!(r.command, Command::DeliveryAck { .. })
            {
                session.acknowledges_itself();
            }
            if let Some((user, up_to)) = session.proved_reading() {
                self.shard.note_delivered(user, up_to);
            }
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
                metrics::counter!(metric_names::BAD_INPUT_TOTAL, "protocol" => session.wire.name(), "code" => failure.code.label()).increment(1);
                session.reply(request_id, kind, &Reply::Error(failure));
            }
            Decoded::Fatal(failure) => {
                metrics::counter!(metric_names::BAD_INPUT_TOTAL, "protocol" => session.wire.name(), "code" => failure.code.label()).increment(1);
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
                self.session.heard(now);
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
                        self.out_user_change = self.session.user_generation();
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
        // A JSON client's pushes count as delivered once it shows it reads on.
        self.session.wrote(last, self.out_user_change);
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
    let quiet = matches!(request.command, Command::DeliveryAck { quiet: true, .. });
    let reply = service::handle(&shard, &session, request.command).await;
    let outcome = match &reply {
        Reply::Error(f) => f.code.label(),
        _ => "ok",
    };
    crate::metrics::counter(
        metric_names::REQUESTS_TOTAL,
        &[("kind", label), ("outcome", outcome)],
    )
    .increment(1);
    crate::metrics::histogram(metric_names::REQUEST_DURATION_SECONDS, &[("kind", label)])
        .record(started.elapsed().as_secs_f64());
    // A quiet acknowledgement is answered only when it fails.
    if !quiet || matches!(reply, Reply::Error(_)) {
        session.reply(request.id, kind, &reply);
    }
    session.catch_up(&shard.store, &shard.config).await;
}
