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

    fn progressed(&mut self) {
        self.timer = None;
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

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.stream.set_nodelay(nodelay)
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
        let this = self.get_mut();
        loop {
            match this.stream.try_read(buf) {
                Ok(n) => {
                    this.read.progressed();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            match this.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if this.read.expired(cx) {
                return Poll::Ready(Err(timed_out()));
            }
            return Poll::Pending;
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.stream.try_write(buf) {
                Ok(n) => {
                    this.write.progressed();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            match this.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if this.write.expired(cx) {
                return Poll::Ready(Err(timed_out()));
            }
            return Poll::Pending;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the sending direction (the socket itself closes when dropped).
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&self.stream).shutdown(Shutdown::Write))
    }
}
