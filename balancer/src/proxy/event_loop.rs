//! One proxy thread's event loop: `epoll` through `mio`, edge-triggered,
//! with its own listener on the shared port.
//!
//! Each wake-up reads the clock once, hands every readiness event to its
//! connection's state machine ([`Conn`]), accepts up to [`ACCEPT_BATCH`]
//! new clients (more at the next turn, without sleeping, so a burst of
//! connects cannot starve the open ones), then runs the deadlines that have
//! passed. Deadlines are a heap holding one entry per connection: when an
//! entry comes due the connection says whether its own deadline (connect
//! timeout, or last byte + idle timeout) has really passed, and if not the
//! entry goes back for that time. Activity therefore costs no heap work,
//! and no timer is armed in the kernel: the loop's `epoll_wait` timeout is
//! the nearest deadline.
//!
//! Connection ids index a vector; an id freed during a wake-up is reused
//! only after that wake-up's events are all handled, so a stale event for a
//! closed connection never reaches a new one.
//!
//! Failure semantics: an `accept` error (typically out of file
//! descriptors) is counted and logged, and accepting pauses for
//! [`ACCEPT_BACKOFF`] instead of spinning; the clients wait in the kernel's
//! backlog. Stopping: the listener is closed at once; open connections may
//! finish within the shutdown grace, then the rest are closed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Poll, Token};

use super::conn::{self, Conn, Ctx, Ending};
use crate::access_log::Writer as AccessLog;
use crate::metric_names;
use crate::pool::Pool;

pub const LISTENER: Token = Token(usize::MAX);
pub const WAKER: Token = Token(usize::MAX - 1);

/// Clients accepted per wake-up before the open connections get a turn.
const ACCEPT_BATCH: usize = 64;
/// How long accepting pauses after an `accept` error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a proxy thread runs.
pub struct EventLoop {
    pub poll: Poll,
    pub listener: TcpListener,
    pub pool: Arc<Pool>,
    pub stop: Arc<AtomicBool>,
    pub shutdown_grace: Duration,
    pub log: Option<AccessLog>,
}

impl EventLoop {
    /// Serves until told to stop and the open connections are done.
    pub fn run(self) {
        let EventLoop {
            mut poll,
            listener,
            pool,
            stop,
            shutdown_grace,
            mut log,
        } = self;
        let mut listener = Some(listener);
        let mut conns = Conns::default();
        let mut events = Events::with_capacity(1024);
        // Clients may have queued before the listener was registered.
        let mut accept_ready = true;
        let mut accept_paused: Option<Instant> = None;
        let mut stopping: Option<Instant> = None;
        let mut turn = 0u64;
        loop {
            let now = Instant::now();
            let timeout = if accept_ready && accept_paused.is_none() && listener.is_some() {
                Some(Duration::ZERO)
            } else {
                [
                    conns.next_deadline(),
                    accept_paused,
                    log.as_ref().and_then(|l| l.due()),
                    stopping,
                ]
                .into_iter()
                .flatten()
                .min()
                .map(|at| at.saturating_duration_since(now))
            };
            if let Err(e) = poll.poll(&mut events, timeout)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "epoll_wait failed; this proxy thread stops");
                break;
            }
            let mut ctx = Ctx {
                registry: poll.registry(),
                pool: &pool,
                log: &mut log,
                now: Instant::now(),
                turn,
            };
            turn += 1;
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept_ready = true,
                    WAKER => {}
                    token => {
                        let (id, node_side) = conn::of_token(token);
                        conns.handle(id, &mut ctx, |c, ctx| c.on_event(node_side, event, ctx));
                    }
                }
            }
            if accept_paused.is_some_and(|until| ctx.now >= until) {
                accept_paused = None;
            }
            if let Some(l) = &listener
                && accept_ready
                && accept_paused.is_none()
            {
                match accept(l, &mut conns, &mut ctx) {
                    Accepted::Drained => accept_ready = false,
                    Accepted::More => {}
                    Accepted::Failed => accept_paused = Some(ctx.now + ACCEPT_BACKOFF),
                }
            }
            conns.expire(&mut ctx);
            conns.recycle();
            if let Some(log) = ctx.log.as_mut()
                && log.due().is_some_and(|due| ctx.now >= due)
            {
                log.flush();
            }
            if stopping.is_none() && stop.load(Ordering::Relaxed) {
                // Closing the listener: new clients are refused from now on.
                listener = None;
                stopping = Some(ctx.now + shutdown_grace);
            }
            if let Some(grace_over) = stopping {
                if conns.open == 0 {
                    break;
                }
                if ctx.now >= grace_over {
                    tracing::warn!(
                        open = conns.open,
                        "shutdown grace over: closing the connections still open"
                    );
                    break;
                }
            }
        }
        if let Some(log) = log.as_mut() {
            log.flush();
        }
    }
}

enum Accepted {
    /// The backlog is empty; the next client makes a new event.
    Drained,
    /// A batch was taken; more may wait.
    More,
    /// `accept` failed: pause.
    Failed,
}

fn accept(listener: &TcpListener, conns: &mut Conns, ctx: &mut Ctx<'_>) -> Accepted {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => {
                metrics::counter!(metric_names::ACCEPTED_TOTAL).increment(1);
                conns.open(stream, peer, ctx);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Accepted::Drained,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                metrics::counter!(metric_names::ACCEPT_ERRORS_TOTAL).increment(1);
                tracing::warn!(error = %e, "accept failed");
                return Accepted::Failed;
            }
        }
    }
    Accepted::More
}

/// The thread's connections and their deadlines.
#[derive(Default)]
struct Conns {
    slots: Vec<Option<Conn>>,
    /// Ids free for new connections.
    free: Vec<usize>,
    /// Ids freed during this wake-up, free from the next one on.
    freed: Vec<usize>,
    /// (when, connection serial, id): one entry per connection.
    deadlines: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    serial: u64,
    open: usize,
}

impl Conns {
    fn open(&mut self, stream: mio::net::TcpStream, peer: std::net::SocketAddr, ctx: &mut Ctx<'_>) {
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.slots.len() < conn::MAX_ID => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return,
        };
        self.serial += 1;
        match Conn::open(stream, peer, id, self.serial, ctx) {
            Some(c) => {
                if let Some(at) = c.deadline() {
                    self.deadlines.push(Reverse((at, c.serial, id)));
                }
                self.slots[id] = Some(c);
                self.open += 1;
            }
            None => self.freed.push(id),
        }
    }

    /// Runs a transition on connection `id`, closing it if it ends.
    fn handle(
        &mut self,
        id: usize,
        ctx: &mut Ctx<'_>,
        transition: impl FnOnce(&mut Conn, &mut Ctx<'_>) -> Option<Ending>,
    ) {
        let Some(Some(c)) = self.slots.get_mut(id) else {
            return;
        };
        if let Some(ending) = transition(c, ctx) {
            let c = self.slots[id].take().expect("checked above");
            c.finish(ending, ctx);
            self.freed.push(id);
            self.open -= 1;
        }
    }

    /// Runs every deadline that has passed.
    fn expire(&mut self, ctx: &mut Ctx<'_>) {
        // Entries put back go in after the loop: one due again at once (a
        // zero connect timeout) waits for the next wake-up.
        let mut again = Vec::new();
        while let Some(&Reverse((at, serial, id))) = self.deadlines.peek() {
            if at > ctx.now {
                break;
            }
            self.deadlines.pop();
            if !matches!(self.slots.get(id), Some(Some(c)) if c.serial == serial) {
                continue;
            }
            self.handle(id, ctx, |c, ctx| c.on_deadline(ctx));
            if let Some(Some(c)) = self.slots.get(id)
                && c.serial == serial
                && let Some(next) = c.deadline()
            {
                again.push(Reverse((next, serial, id)));
            }
        }
        self.deadlines.extend(again);
    }

    /// Makes the ids freed during this wake-up reusable.
    fn recycle(&mut self) {
        self.free.append(&mut self.freed);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }
}
