//! One client connection's life, as explicit states (as in sozu):
//! [`Phase::Connecting`] (a node is chosen and connected, possibly several
//! in turn, see [`connect`](super::connect)), [`Phase::Relaying`] (bytes
//! both ways, see [`relay`](super::relay)), then closed, when the event
//! loop drops it after [`Conn::finish`].
//!
//! Every transition is a method called by the thread's event loop: a
//! readiness event on either socket ([`Conn::on_event`]) or the
//! connection's deadline passing ([`Conn::on_deadline`]): the connect
//! timeout while connecting, the idle timeout while relaying. Each returns
//! `Some(Ending)` once the connection is over. Both sockets are registered
//! once, for reading and writing, edge-triggered, and are never
//! re-registered or deregistered: closing a socket takes it out of the
//! epoll set, which saves two `epoll_ctl` calls per connection against a
//! runtime that deregisters first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use mio::event::Event;
use mio::{Interest, Registry, Token};

use super::connect::{Attempt, NoNode, Search};
use super::relay::{AtEof, End, Flow, Pipe, Side};
use crate::access_log::{Entry, Writer as AccessLog};
use crate::config::Tuning;
use crate::metric_names;
use crate::pool::{Pool, Upstream};

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Choosing and connecting a node (possibly several in turn).
    Connecting,
    /// Both sides connected; bytes flow.
    Relaying,
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ending {
    /// No node took it.
    NoNode(NoNode),
    /// It was relayed, then ended so.
    Relayed(End),
}

/// What a connection's handlers need from its thread.
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub pool: &'a Pool,
    pub log: &'a mut Option<AccessLog>,
    /// The event loop's clock, read once per wake-up.
    pub now: Instant,
    /// Counts the event loop's wake-ups.
    pub turn: u64,
}

/// The tokens of a connection's two sockets.
pub fn tokens(id: usize) -> (Token, Token) {
    (Token(id << 1), Token(id << 1 | 1))
}

/// The connection a token belongs to, and whether it is the node's socket.
pub fn of_token(token: Token) -> (usize, bool) {
    (token.0 >> 1, token.0 & 1 == 1)
}

/// The largest connection id whose tokens stay clear of the event loop's
/// own.
pub const MAX_ID: usize = usize::MAX >> 2;

pub struct Conn {
    /// Unique on its thread, so that a deadline set for an earlier
    /// connection with the same id is recognized.
    pub serial: u64,
    id: usize,
    client: Side,
    peer: SocketAddr,
    accepted: (Instant, SystemTime),
    tuning: Tuning,
    state: State,
}

enum State {
    Connecting {
        search: Search,
        attempt: Attempt,
        deadline: Instant,
        /// The event loop's turn in which the attempt's socket was
        /// registered.
        registered: u64,
    },
    Relaying(Relay),
    /// Between states, while a transition runs.
    Moving,
}

struct Relay {
    node: Side,
    upstream: Arc<Upstream>,
    /// Client to node.
    up: Pipe,
    /// Node to client.
    down: Pipe,
    /// When a byte last moved either way.
    last: Instant,
    connect_time: Duration,
    gauge: metrics::Gauge,
}

impl Conn {
    /// A client just accepted: registers it and starts connecting a node;
    /// `None` if no node can be tried (then it is already logged and
    /// counted, and the client is closed).
    pub fn open(
        client: mio::net::TcpStream,
        peer: SocketAddr,
        id: usize,
        serial: u64,
        ctx: &mut Ctx<'_>,
    ) -> Option<Conn> {
        // TCP_NODELAY is inherited from the listener (see `chat_ops::listen::reuse_port`).
        let mut conn = Conn {
            serial,
            id,
            client: Side::new(client),
            peer,
            accepted: (ctx.now, SystemTime::now()),
            tuning: ctx.pool.tuning(),
            state: State::Moving,
        };
        tracing::trace!(%peer, phase = ?Phase::Connecting, "client accepted");
        let (client_token, _) = tokens(id);
        if let Err(e) = ctx.registry.register(
            &mut conn.client.stream,
            client_token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%peer, error = %e, "registering a client failed; closing it");
            return None;
        }
        match conn.connect_next(Search::default(), ctx) {
            None => Some(conn),
            Some(ending) => {
                conn.finish(ending, ctx);
                None
            }
        }
    }

    /// When [`Conn::on_deadline`] must be called: the connect timeout while
    /// connecting, the idle timeout while relaying.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Relaying(r) => r.last.checked_add(self.tuning.idle_timeout),
            State::Moving => None,
        }
    }

    /// A readiness event on one of its sockets.
    pub fn on_event(
        &mut self,
        node_side: bool,
        event: &Event,
        ctx: &mut Ctx<'_>,
    ) -> Option<Ending> {
        match &mut self.state {
            State::Connecting {
                attempt,
                registered,
                ..
            } => {
                if !node_side {
                    // Bytes or EOF from the client wait until a node is
                    // connected; the event is remembered for then.
                    self.client.note(event);
                    return None;
                }
                if *registered == ctx.turn {
                    // Left over from the socket of a failed attempt, handed
                    // out in the same wake-up as its failure.
                    return None;
                }
                let settled = match attempt.stream.take_error() {
                    // A connecting socket turns writable only once
                    // connected (or with an error, which take_error reads).
                    Ok(None) if event.is_writable() => Ok(()),
                    Ok(None) => return None,
                    Ok(Some(e)) | Err(e) => Err(e),
                };
                match settled {
                    Ok(()) => self.relay(event, ctx),
                    Err(e) => self.connect_failed(&e, ctx),
                }
            }
            State::Relaying(r) => {
                if node_side {
                    r.node.note(event);
                } else {
                    self.client.note(event);
                }
                self.pump(ctx.now)
            }
            State::Moving => None,
        }
    }

    /// Its deadline may have passed.
    pub fn on_deadline(&mut self, ctx: &mut Ctx<'_>) -> Option<Ending> {
        if self.deadline().is_none_or(|d| ctx.now < d) {
            return None;
        }
        match self.state {
            State::Connecting { .. } => {
                self.connect_failed(&std::io::ErrorKind::TimedOut.into(), ctx)
            }
            State::Relaying(_) => Some(Ending::Relayed(End::Idle)),
            State::Moving => None,
        }
    }

    /// Counts, logs and closes it.
    pub fn finish(self, ending: Ending, ctx: &mut Ctx<'_>) {
        let peer = self.peer;
        let mut entry = Entry {
            client: peer,
            accepted: self.accepted.1,
            upstream: None,
            connect_time: None,
            to_client: 0,
            from_client: 0,
            duration: ctx.now.saturating_duration_since(self.accepted.0),
            end: "no_upstream",
        };
        match ending {
            Ending::NoNode(why) => no_node(peer, &why),
            Ending::Relayed(end) => {
                metrics::counter!(metric_names::CLOSED_TOTAL, "end" => end.name()).increment(1);
                if let State::Relaying(r) = &self.state {
                    r.upstream.open.fetch_sub(1, Ordering::Relaxed);
                    r.gauge.decrement(1.0);
                    tracing::trace!(%peer, upstream = %r.upstream.label, end = end.name(), "connection closed");
                    entry.upstream = Some(r.upstream.label.clone());
                    entry.connect_time = Some(r.connect_time);
                    entry.to_client = r.down.moved;
                    entry.from_client = r.up.moved;
                    entry.end = end.name();
                }
            }
        }
        if let Some(log) = ctx.log.as_mut() {
            log.log(&entry, ctx.now);
        }
    }

    /// Starts connecting the next candidate, or ends with no node.
    fn connect_next(&mut self, mut search: Search, ctx: &mut Ctx<'_>) -> Option<Ending> {
        let (_, node_token) = tokens(self.id);
        loop {
            let mut attempt = match search.next(ctx.pool, &self.tuning) {
                Ok(attempt) => attempt,
                Err(why) => return Some(Ending::NoNode(why)),
            };
            let registered = ctx.registry.register(
                &mut attempt.stream,
                node_token,
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                search.failed(attempt, &e);
                continue;
            }
            self.state = State::Connecting {
                search,
                attempt,
                deadline: ctx.now + self.tuning.connect_timeout,
                registered: ctx.turn,
            };
            return None;
        }
    }

    fn connect_failed(&mut self, error: &std::io::Error, ctx: &mut Ctx<'_>) -> Option<Ending> {
        let State::Connecting {
            mut search,
            attempt,
            ..
        } = std::mem::replace(&mut self.state, State::Moving)
        else {
            return None;
        };
        search.failed(attempt, error);
        self.connect_next(search, ctx)
    }

    /// The node accepted: relay from now on.
    fn relay(&mut self, event: &Event, ctx: &mut Ctx<'_>) -> Option<Ending> {
        let State::Connecting {
            search, attempt, ..
        } = std::mem::replace(&mut self.state, State::Moving)
        else {
            return None;
        };
        let header = match search.connected(&attempt, &self.client.stream, self.peer) {
            Ok(header) => header,
            Err(why) => return Some(Ending::NoNode(why)),
        };
        let upstream = attempt.upstream;
        upstream.open.fetch_add(1, Ordering::Relaxed);
        let gauge =
            metrics::gauge!(metric_names::OPEN_CONNECTIONS, "upstream" => upstream.label.clone());
        gauge.increment(1.0);
        tracing::trace!(peer = %self.peer, upstream = %upstream.label, phase = ?Phase::Relaying, "relaying");
        let mut node = Side::new(attempt.stream);
        node.note(event);
        self.state = State::Relaying(Relay {
            node,
            upstream,
            up: Pipe::new(header),
            down: Pipe::new(Vec::new()),
            last: ctx.now,
            connect_time: ctx.now.saturating_duration_since(self.accepted.0),
            gauge,
        });
        self.pump(ctx.now)
    }

    /// Moves what both sides allow.
    fn pump(&mut self, now: Instant) -> Option<Ending> {
        let State::Relaying(r) = &mut self.state else {
            return None;
        };
        let at_eof = if self.tuning.half_close {
            AtEof::HalfClose
        } else {
            AtEof::CloseBoth
        };
        let before = r.up.moved + r.down.moved;
        let down_ended = r.down.ended();
        let up =
            r.up.pump(&mut self.client, &mut r.node.stream, at_eof, down_ended);
        let down = match up {
            Ok(_) => {
                let up_ended = r.up.ended();
                r.down
                    .pump(&mut r.node, &mut self.client.stream, at_eof, up_ended)
            }
            Err(_) => Ok(Flow::Open),
        };
        if r.up.moved + r.down.moved != before {
            r.last = now;
        }
        match (up, down) {
            (Err(_), _) | (_, Err(_)) => Some(Ending::Relayed(End::Error)),
            (Ok(Flow::Ended), Ok(Flow::Ended)) => Some(Ending::Relayed(End::Closed)),
            (Ok(Flow::Ended), _) | (_, Ok(Flow::Ended)) if at_eof == AtEof::CloseBoth => {
                Some(Ending::Relayed(End::Closed))
            }
            _ => None,
        }
    }
}

/// Counts and logs (at most every few seconds per cause) a client
/// connection that no node took; the caller closes it.
fn no_node(peer: SocketAddr, why: &NoNode) {
    use crate::log_limit::{More, allow};
    if *why == NoNode::ClientGone {
        tracing::debug!(%peer, "the client's socket failed before relaying; closing it");
        return;
    }
    metrics::counter!(metric_names::NO_UPSTREAM_TOTAL).increment(1);
    match why {
        NoNode::OutOfFds => {
            if let Some(held) = allow("out_of_fds", "") {
                tracing::warn!(%peer, "out of file descriptors: no socket to a node, closing the client (raise the open-files limit or lower the load){}", More(held));
            }
        }
        NoNode::NoneAvailable => {
            metrics::counter!(metric_names::FAIL_FAST_TOTAL).increment(1);
            if let Some(held) = allow("no_node", "") {
                tracing::warn!(%peer, "no node available: closing the connection at once (--panic would try them anyway){}", More(held));
            }
        }
        NoNode::AllFailed { tried, last, error } => {
            if let Some(held) = allow("no_node", last) {
                tracing::warn!(%peer, tried, last = %last, %error, "no node accepted the connection; closing it{}", More(held));
            }
        }
        NoNode::ClientGone => {}
    }
}
