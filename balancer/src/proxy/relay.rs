//! Moving bytes between a client and its node once both are connected.
//!
//! Two copy loops, one per direction, each reading into its own buffer and
//! writing all of it to the other side. When one side stops sending (EOF),
//! the copy shuts down the write half of the other side and the reverse
//! direction keeps flowing (half-close); the connection ends when both
//! directions have ended, on an error in either, or after `idle_timeout`
//! without a byte either way.
//!
//! Both copy loops are polled by the connection's one task (`try_zip` in
//! one future): the halves `futures_lite::io::split` makes share that task's
//! waker, so no wake-up can be lost between a reading task and a writing
//! task, the failure issue 18 found in the node when its reader and writer
//! were two tasks on one stream.
//!
//! This is a plain read/write relay through glommio's io_uring sockets: one
//! copy into user space and one out per chunk. splice(2) through a pipe would
//! save those copies but costs a pipe (two more fds) per direction, which at
//! the 20,000-fd ceiling would halve the connections a process can hold;
//! see docs/balancer.md.

use std::cell::Cell;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Bytes read per chunk in each direction.
const CHUNK: usize = 16 * 1024;

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

/// Relays until the connection ends; `first` is sent to the node before
/// anything from the client (the PROXY header, if any).
pub async fn relay(client: TcpStream, node: TcpStream, first: &[u8], idle: Duration) -> Relayed {
    let from_client = Cell::new(0);
    let to_client = Cell::new(0);
    let end = relay_counting(client, node, first, idle, &from_client, &to_client).await;
    Relayed {
        end,
        from_client: from_client.get(),
        to_client: to_client.get(),
    }
}

async fn relay_counting(
    client: TcpStream,
    node: TcpStream,
    first: &[u8],
    idle: Duration,
    from_client: &Cell<u64>,
    to_client: &Cell<u64>,
) -> End {
    let (client_r, mut client_w) = futures_lite::io::split(client);
    let (node_r, mut node_w) = futures_lite::io::split(node);
    if !first.is_empty() && node_w.write_all(first).await.is_err() {
        return End::Error;
    }
    let last = Cell::new(Instant::now());
    let up = copy(client_r, &mut node_w, &last, from_client);
    let down = copy(node_r, &mut client_w, &last, to_client);
    // An error in one direction ends both (try_zip returns at the first
    // error): the other copy may be waiting for a peer that is gone.
    let both = async {
        match futures_lite::future::try_zip(up, down).await {
            Ok(_) => End::Closed,
            Err(()) => End::Error,
        }
    };
    futures_lite::future::or(both, async {
        loop {
            let since = last.get().elapsed();
            if since >= idle {
                return End::Idle;
            }
            glommio::timer::sleep(idle - since).await;
        }
    })
    .await
}

/// Copies `from` to `to` until EOF (then half-closes `to`), counting the
/// bytes in `moved`.
async fn copy(
    mut from: impl AsyncRead + Unpin,
    to: &mut (impl AsyncWrite + Unpin),
    last: &Cell<Instant>,
    moved: &Cell<u64>,
) -> Result<(), ()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => {
                // shutdown(SHUT_WR): the peer sees EOF, the other way stays open.
                let _ = to.close().await;
                return Ok(());
            }
            Ok(n) => {
                last.set(Instant::now());
                if to.write_all(&buf[..n]).await.is_err() {
                    return Err(());
                }
                moved.set(moved.get() + n as u64);
            }
            Err(_) => {
                let _ = to.close().await;
                return Err(());
            }
        }
    }
}
