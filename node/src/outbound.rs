//! The bytes waiting to be written to one client, and the signal that closes
//! the connection.
//!
//! Producers (the session answering requests, the router delivering pushes)
//! append encoded frames; the connection's task takes everything queued in
//! one go and writes it with one call, so a burst of pushes costs one
//! syscall. The queue is bounded in bytes: a push that would grow it past the
//! bound marks the client a slow consumer and closes the connection, so a
//! client that stops reading never makes the node's memory grow. Replies are
//! bounded differently: the session stops reading requests while the queue is
//! over its bound.
//!
//! Everything here lives on one executor: `Rc`/`RefCell`, no locks.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::model::MessageId;

/// Why the connection is being closed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    IdleTimeout,
    /// A request's bytes did not all arrive within `--frame-timeout`.
    FrameTimeout,
    /// No login within `--login-timeout` of connecting.
    LoginTimeout,
    /// Silent for `--takeover-after` while another login of its user waited.
    Replaced,
    /// The node's lease ran out (in a cluster): its users may be elsewhere.
    LeaseLost,
    SlowConsumer,
    ProtocolError,
    IoError,
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::ClientClosed,
        CloseReason::IdleTimeout,
        CloseReason::FrameTimeout,
        CloseReason::LoginTimeout,
        CloseReason::Replaced,
        CloseReason::LeaseLost,
        CloseReason::SlowConsumer,
        CloseReason::ProtocolError,
        CloseReason::IoError,
        CloseReason::Shutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::Replaced => "replaced",
            CloseReason::LeaseLost => "lease_lost",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::IoError => "io_error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Default)]
struct Inner {
    buf: Vec<u8>,
    /// Highest message id among the pushes in `buf`.
    last_message: MessageId,
    /// Bytes the connection's task took from `buf` and has not written yet:
    /// they count against the bound and in the load report as much as
    /// `buf` (a large reply taken in one go would hide otherwise).
    in_flight: usize,
    close: Option<CloseReason>,
    /// The connection's task: woken when bytes are queued or closing starts.
    writer: Option<Waker>,
    /// Tasks waiting for the queue to drain or the connection to close.
    waiters: Vec<Waker>,
}

/// Outbound queue of one connection.
pub struct Outbound {
    limit: usize,
    inner: RefCell<Inner>,
}

/// The queue was over its bound: the connection is closing.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

impl Outbound {
    pub fn new(limit: usize) -> Outbound {
        Outbound {
            limit,
            inner: RefCell::new(Inner::default()),
        }
    }

    /// Appends a reply, which may carry messages up to `message` (a login's
    /// stored messages; 0 for none). Never refused while open: the reader
    /// applies back-pressure instead, see [`Outbound::drained`].
    pub fn reply(&self, message: MessageId, write: impl FnOnce(&mut Vec<u8>)) {
        let mut inner = self.inner.borrow_mut();
        if inner.close.is_some() {
            return;
        }
        write(&mut inner.buf);
        inner.last_message = inner.last_message.max(message);
        if let Some(w) = inner.writer.take() {
            w.wake();
        }
    }

    /// Appends a push carrying message `message` (0 for none). Over the bound
    /// the connection is closed as a slow consumer and `Overflow` returned.
    pub fn push(
        &self,
        message: MessageId,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Overflow> {
        let overflow = {
            let mut inner = self.inner.borrow_mut();
            if inner.close.is_some() {
                return Err(Overflow);
            }
            write(&mut inner.buf);
            inner.last_message = inner.last_message.max(message);
            inner.buf.len() + inner.in_flight > self.limit
        };
        if overflow {
            self.close(CloseReason::SlowConsumer);
            return Err(Overflow);
        }
        if let Some(w) = self.inner.borrow_mut().writer.take() {
            w.wake();
        }
        Ok(())
    }

    /// Starts closing the connection (the first reason given wins). The writer
    /// still flushes what is queued.
    pub fn close(&self, reason: CloseReason) {
        let (writer, waiters) = {
            let mut inner = self.inner.borrow_mut();
            if inner.close.is_some() {
                return;
            }
            inner.close = Some(reason);
            (inner.writer.take(), std::mem::take(&mut inner.waiters))
        };
        writer.into_iter().chain(waiters).for_each(Waker::wake);
    }

    /// Why the connection is closing, once it is.
    pub fn closed(&self) -> Option<CloseReason> {
        self.inner.borrow().close
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        let inner = self.inner.borrow();
        inner.buf.len() + inner.in_flight
    }

    /// The connection's task has `bytes` taken and not yet written.
    pub fn set_in_flight(&self, bytes: usize) {
        let wake = {
            let mut inner = self.inner.borrow_mut();
            let was = inner.buf.len() + inner.in_flight;
            inner.in_flight = bytes;
            let now = inner.buf.len() + inner.in_flight;
            // Waiters for room are woken when the total drops below the bound.
            if was >= self.limit && now < self.limit {
                std::mem::take(&mut inner.waiters)
            } else {
                Vec::new()
            }
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// Registers the connection's task, to be woken when bytes are queued or
    /// the connection starts closing. Called on every poll of that task.
    pub fn register(&self, waker: &Waker) {
        let mut inner = self.inner.borrow_mut();
        match &inner.writer {
            Some(w) if w.will_wake(waker) => {}
            _ => inner.writer = Some(waker.clone()),
        }
    }

    /// Swaps everything queued into `out` (which must be empty) and returns
    /// the highest message id it holds; `None` when nothing is queued. Wakes
    /// the tasks waiting for the queue to drain.
    pub fn try_take(&self, out: &mut Vec<u8>) -> Option<MessageId> {
        let mut inner = self.inner.borrow_mut();
        if inner.buf.is_empty() {
            return None;
        }
        std::mem::swap(&mut inner.buf, out);
        let wake = std::mem::take(&mut inner.waiters);
        let last = std::mem::take(&mut inner.last_message);
        drop(inner);
        wake.into_iter().for_each(Waker::wake);
        Some(last)
    }

    /// Forgets which messages the queued bytes carry (they stay queued):
    /// the session's user changed, and what was queued for the previous one
    /// must never count as delivered to the next.
    pub fn forget_messages(&self) {
        self.inner.borrow_mut().last_message = 0;
    }

    /// Waits until the queue holds less than its bound, or the connection is
    /// closing (returns false then).
    pub async fn drained(&self) -> bool {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.close.is_some() {
                return Poll::Ready(false);
            }
            if inner.buf.len() + inner.in_flight < self.limit {
                return Poll::Ready(true);
            }
            inner.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn writer_takes_everything_queued_at_once() {
        let q = Outbound::new(100);
        let mut out = Vec::new();
        assert_eq!(q.try_take(&mut out), None);
        q.reply(0, |b| b.extend_from_slice(b"ab"));
        q.push(7, |b| b.extend_from_slice(b"cd")).unwrap();
        assert_eq!(q.try_take(&mut out), Some(7));
        assert_eq!(out, b"abcd");
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn queued_bytes_and_closing_wake_the_registered_task() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let q = Outbound::new(100);
        q.register(&waker);
        q.reply(0, |b| b.push(1));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        q.register(&waker);
        q.push(3, |b| b.push(2)).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        q.register(&waker);
        q.close(CloseReason::Shutdown);
        assert_eq!(count.0.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn push_over_the_bound_closes_as_slow_consumer() {
        let q = Outbound::new(4);
        q.push(1, |b| b.extend_from_slice(b"1234")).unwrap();
        assert_eq!(q.push(2, |b| b.extend_from_slice(b"5")), Err(Overflow));
        assert_eq!(q.closed(), Some(CloseReason::SlowConsumer));
        assert!(!block_on(q.drained()));
        // What was queued is still flushed, then nothing is left.
        let mut out = Vec::new();
        assert!(q.try_take(&mut out).is_some());
        out.clear();
        assert_eq!(q.try_take(&mut out), None);
    }

    #[test]
    fn replies_are_not_refused_but_reader_waits() {
        let q = Outbound::new(2);
        q.reply(0, |b| b.extend_from_slice(b"long reply"));
        assert_eq!(q.closed(), None);
        let mut out = Vec::new();
        q.try_take(&mut out);
        assert!(block_on(q.drained()));
    }
}
