//! A client's TCP connection on its shard's runtime, with a read and a write
//! timeout: a read (or write) that has waited that long fails with
//! `TimedOut`, which is how a connection's idle timeout and a refused
//! client's grace end. The rest of the node reads and writes it through
//! `futures_lite`'s `AsyncRead` and `AsyncWrite`.
//!
//! Costs: a read or write that would block registers the task's waker with
//! the runtime's epoll readiness (the socket is registered once, at accept)
//! and, while a timeout is set, arms one timer in the runtime's wheel; the
//! timer is dropped as soon as the operation makes progress, so a busy
//! connection re-arms it once per wait, not once per byte.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A connected TCP socket with optional read and write timeouts.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
    read: Deadline,
    write: Deadline,
}

/// One direction's timeout: armed when an operation first has to wait,
/// dropped when it makes progress.
#[derive(Debug, Default)]
struct Deadline {
    timeout: Cell<Option<Duration>>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    /// Whether the waiting operation has now waited the whole timeout; arms
    /// the timer (and registers `cx`'s waker with it) on the first wait.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.timeout.get() else {
            return false;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.timer = None;
            return true;
        }
        false
    }

    /// One read or write: `attempt` it; when it would block, wait for
    /// readiness (`ready`) and try again, until it makes progress, fails,
    /// or has waited the whole timeout.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut attempt: impl FnMut() -> io::Result<usize>,
        mut ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match attempt() {
                Ok(n) => {
                    self.timer = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            match ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if self.expired(cx) {
                return Poll::Ready(Err(timed_out()));
            }
            return Poll::Pending;
        }
    }

    fn set(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(io::Error::new(ErrorKind::InvalidInput, "zero timeout"));
        }
        self.timeout.set(timeout);
        Ok(())
    }
}

fn timed_out() -> io::Error {
    io::Error::new(ErrorKind::TimedOut, "operation timed out")
}

impl Socket {
    pub fn new(stream: TcpStream) -> Socket {
        Socket {
            stream,
            read: Deadline::default(),
            write: Deadline::default(),
        }
    }

    /// Reads that wait longer than `timeout` fail with `TimedOut` (`None`:
    /// they wait for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read.set(timeout)
    }

    /// Writes that wait longer than `timeout` fail with `TimedOut`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write.set(timeout)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Shuts down one or both directions (`shutdown(2)`, which never waits).
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        SockRef::from(&self.stream).shutdown(how)
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let Socket { stream, read, .. } = self.get_mut();
        read.poll(cx, || stream.try_read(buf), |cx| stream.poll_read_ready(cx))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Socket { stream, write, .. } = self.get_mut();
        write.poll(
            cx,
            || stream.try_write(buf),
            |cx| stream.poll_write_ready(cx),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the sending direction (the socket itself closes when dropped).
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&self.stream).shutdown(Shutdown::Write))
    }
}
