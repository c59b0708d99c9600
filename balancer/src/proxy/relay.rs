//! Moving bytes between a client and its node once both are connected.
//!
//! Two copy loops, one per direction, each reading into its own buffer
//! (16 KiB; it doubles up to 64 KiB while reads fill it, as in a bulk
//! transfer, and goes back to 16 KiB at the first read under 8 KiB) and
//! writing all of it to the other side, both polled by the
//! connection's one task (so no wake-up can be lost between a reading task
//! and a writing task, the failure issue 18 found in the node when its
//! reader and writer were two tasks on one stream). The connection ends on
//! an error in either direction, after `idle_timeout` without a byte either
//! way, or at EOF:
//! - by default (`--half-close`, nginx's `proxy_half_close on`, HAProxy's
//!   behaviour): the write half towards the other side is shut down and the
//!   reverse direction keeps flowing until it ends too, so a client that
//!   sends its last request and shuts down its side still gets the replies.
//! - with `--half-close false` (nginx's default, `proxy_half_close off`):
//!   when one side stops sending, both connections are closed. Bytes
//!   already read from that side have been written whole to the other;
//!   bytes the other side was still sending are dropped.
//!
//! Cost per chunk: the readiness event, one `recv` into user space, one
//! `send` out. A `recv` that fills less than the buffer marks the socket not
//! ready (tokio does this for edge-triggered epoll, as nginx does), so a
//! small chat frame costs no extra `recv` that would return EAGAIN. Closing
//! at the first EOF would save, per connection, the two `shutdown`s and the
//! wait for the node's own EOF that half-close needs; in the conn-rate
//! benchmark that was within noise, so half-close stays the default.
//! splice(2) through a pipe
//! would save the copies but costs a pipe (two more fds) per direction,
//! which at the 20,000-fd ceiling would halve the connections a process can
//! hold; see docs/balancer.md.

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Bytes read per chunk in each direction, at first.
const CHUNK: usize = 16 * 1024;
/// What a direction's buffer grows to, doubling at each read that fills it.
const MAX_CHUNK: usize = 64 * 1024;

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending half.
    Closed,
    /// A read or write failed (reset, broken pipe).
    Error,
    /// No byte either way for `idle_timeout`.
    Idle,
}

impl End {
    pub const ALL: [End; 3] = [End::Closed, End::Error, End::Idle];

    pub fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::Idle => "idle",
        }
    }
}

/// What a relayed connection did.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    pub end: End,
    /// Bytes read from the client (and written to the node).
    pub from_client: u64,
    /// Bytes read from the node (and written to the client).
    pub to_client: u64,
}

/// How the relay ends at EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEof {
    /// Close both sides at the first EOF (`--half-close false`, nginx's
    /// default).
    CloseBoth,
    /// Shut down the other side's write half and keep relaying the other
    /// way (`--half-close`, the default).
    HalfClose,
}

/// Relays until the connection ends; `first` is sent to the node before
/// anything from the client (the PROXY header, if any).
pub async fn relay(
    mut client: TcpStream,
    mut node: TcpStream,
    first: &[u8],
    idle: Duration,
    at_eof: AtEof,
) -> Relayed {
    let from_client = Cell::new(0);
    let to_client = Cell::new(0);
    let end = if !first.is_empty() && node.write_all(first).await.is_err() {
        End::Error
    } else {
        let last = Cell::new(Instant::now());
        let (client_r, client_w) = client.split();
        let (node_r, node_w) = node.split();
        let up = Copy {
            from: client_r,
            to: node_w,
            moved: &from_client,
            last: &last,
        };
        let down = Copy {
            from: node_r,
            to: client_w,
            moved: &to_client,
            last: &last,
        };
        let ended = |r: io::Result<()>| if r.is_ok() { End::Closed } else { End::Error };
        match at_eof {
            AtEof::CloseBoth => tokio::select! {
                r = up.run() => ended(r),
                r = down.run() => ended(r),
                () = idle_for(&last, idle) => End::Idle,
            },
            // An error in one direction ends both (try_join returns at the
            // first error): the other copy may be waiting for a peer that
            // is gone.
            AtEof::HalfClose => tokio::select! {
                r = async { tokio::try_join!(up.run_then_shut(), down.run_then_shut()) } => {
                    ended(r.map(|_| ()))
                }
                () = idle_for(&last, idle) => End::Idle,
            },
        }
    };
    Relayed {
        end,
        from_client: from_client.get(),
        to_client: to_client.get(),
    }
}

/// Returns once `idle` has passed since `last`.
async fn idle_for(last: &Cell<Instant>, idle: Duration) {
    loop {
        let since = last.get().elapsed();
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

/// One direction: bytes read from `from` are written to `to`, counted in
/// `moved`, and each read notes the time in `last`.
struct Copy<'a> {
    from: ReadHalf<'a>,
    to: WriteHalf<'a>,
    moved: &'a Cell<u64>,
    last: &'a Cell<Instant>,
}

impl Copy<'_> {
    /// Copies until EOF (Ok) or an error.
    async fn run(mut self) -> io::Result<()> {
        self.copy().await
    }

    /// Copies until EOF, then shuts down the write half of `to` (the peer
    /// sees EOF, the other direction stays open).
    async fn run_then_shut(mut self) -> io::Result<()> {
        self.copy().await?;
        let _ = self.to.shutdown().await;
        Ok(())
    }

    async fn copy(&mut self) -> io::Result<()> {
        // Read into spare capacity: the buffer is never zeroed.
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            buf.clear();
            let n = self.from.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.last.set(Instant::now());
            self.to.write_all(&buf).await?;
            self.moved.set(self.moved.get() + n as u64);
            // A full read means a bulk transfer: read more per call. A
            // short one after that means it is over: give the memory back.
            if n == buf.capacity() && buf.capacity() < MAX_CHUNK {
                buf.reserve_exact(buf.capacity());
            } else if n < CHUNK / 2 && buf.capacity() > CHUNK {
                buf = Vec::with_capacity(CHUNK);
            }
        }
    }
}
