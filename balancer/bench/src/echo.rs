//! `echo`: the upstream the other measurements talk to, through a proxy or
//! directly.
//!
//! `--mode echo` (default) writes back every byte it reads, which serves
//! both the small request/response measurements and bulk throughput (each
//! byte then crosses the proxy twice); `--mode discard` reads and counts
//! only (for `bulk --mode upload`).
//!
//! A connection whose first 4 bytes are a chat frame's length rather than
//! [`MAGIC`](crate::request::MAGIC) is chat-balancer's load probe: by
//! default (`--probes answer`) its `LoadRequest`s are answered like a node
//! would (its open connections, capacity 10 000, an idle shard), so that the
//! balancer routes on fresh reports and its redirect mode has a node to
//! name; `--probes silent` never answers (the balancer then marks it down
//! after `--probe-fails` probes and routes in panic mode).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::request::CHUNK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EchoMode {
    /// Write back every byte read.
    Echo,
    /// Read and count, write nothing.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeMode {
    /// Answer each `LoadRequest` like a chat node would: its open
    /// connections, capacity 10 000, one idle shard, not draining.
    Answer,
    /// Treat a chat frame like any other bytes: echo it back (a balancer
    /// reading it as a reply sees junk).
    Echo,
    /// Read chat frames and never answer (the probe times out).
    Silent,
    /// Close the connection at once.
    Close,
}

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Echo every byte back, or discard and count.
    #[arg(long, value_enum, default_value = "echo")]
    pub mode: EchoMode,
    /// What to do with a connection whose first bytes are a chat frame (a
    /// balancer's load probe) rather than this program's traffic.
    #[arg(long, value_enum, default_value = "answer")]
    pub probes: ProbeMode,
    /// Worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
}

pub async fn serve(args: EchoArgs) -> anyhow::Result<()> {
    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener: TcpListener = socket.listen(4096)?;
    eprintln!(
        "tcp-bench echo: listening on {} ({:?}, probes {:?})",
        args.listen, args.mode, args.probes
    );
    let discarded = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    if args.mode == EchoMode::Discard {
        let discarded = discarded.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = discarded.load(Ordering::Relaxed);
                if now != last {
                    eprintln!("tcp-bench echo: {now} bytes discarded so far");
                    last = now;
                }
            }
        });
    }
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let discarded = discarded.clone();
                let open = open.clone();
                open.fetch_add(1, Ordering::Relaxed);
                let node = Node {
                    address: args.listen,
                    open: open.clone(),
                };
                tokio::spawn(async move {
                    let _ = echo_conn(stream, args.mode, args.probes, &discarded, &node).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("tcp-bench echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// True when `first` (at least 4 bytes) starts like a chat frame: a
/// little-endian length from 1 to 64 KiB.
fn looks_like_frame(first: &[u8]) -> bool {
    let len = u32::from_le_bytes(first[..4].try_into().expect("4 bytes"));
    (1..=64 * 1024).contains(&len)
}

/// What the echo upstream tells a load probe.
struct Node {
    address: SocketAddr,
    open: Arc<AtomicU64>,
}

/// Answers the `LoadRequest` frames of a balancer's probe connection (other
/// frames are ignored) until it closes. `buf[..len]` holds what was read.
async fn answer_probes(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    mut len: usize,
    node: &Node,
) -> std::io::Result<()> {
    use chat_schema::fb;
    use chat_schema::frame::{DEFAULT_MAX_FRAME, PREFIX_LEN, encode, frame_len, parse_frame};
    let junk = |e: String| std::io::Error::new(ErrorKind::InvalidData, e);
    loop {
        while let Some(body) =
            frame_len(&buf[..len], DEFAULT_MAX_FRAME).map_err(|e| junk(e.to_string()))?
        {
            let whole = PREFIX_LEN + body;
            if len < whole {
                break;
            }
            let env =
                parse_frame(&buf[..whole], DEFAULT_MAX_FRAME).map_err(|e| junk(e.to_string()))?;
            if env.body_type() == fb::Body::LoadRequest {
                let reply = encode(env.request_id(), |b| {
                    let node_id = b.create_string(&format!("echo-{}", node.address.port()));
                    let address = b.create_string(&node.address.to_string());
                    let shard_busy = b.create_vector(&[0.0f32]);
                    let r = fb::LoadReply::create(
                        b,
                        &fb::LoadReplyArgs {
                            node_id: Some(node_id),
                            address: Some(address),
                            // Less the probe connection itself.
                            connections: node.open.load(Ordering::Relaxed).saturating_sub(1) as u32,
                            capacity: 10_000,
                            shard_busy: Some(shard_busy),
                            outbound_bytes: 0,
                            draining: false,
                        },
                    );
                    (fb::Body::LoadReply, r.as_union_value())
                });
                stream.write_all(&reply).await?;
            }
            buf.copy_within(whole..len, 0);
            len -= whole;
        }
        if len == buf.len() {
            return Err(junk("frame larger than the buffer".into()));
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

async fn echo_conn(
    mut stream: TcpStream,
    mode: EchoMode,
    probes: ProbeMode,
    discarded: &AtomicU64,
    node: &Node,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut first = true;
    let mut held = 0usize;
    loop {
        let n = stream.read(&mut buf[held..]).await?;
        if n == 0 {
            return Ok(());
        }
        let mut len = held + n;
        if first {
            if len < 4 {
                // Wait for the 4 bytes that tell a probe from a request.
                held = len;
                continue;
            }
            first = false;
            held = 0;
            if probes != ProbeMode::Echo && looks_like_frame(&buf[..4]) {
                match probes {
                    ProbeMode::Close => return Ok(()),
                    ProbeMode::Answer => return answer_probes(&mut stream, buf, len, node).await,
                    ProbeMode::Silent | ProbeMode::Echo => {}
                }
                // Silent: swallow everything, answer nothing.
                loop {
                    if stream.read(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
            }
        } else {
            len = n;
        }
        match mode {
            EchoMode::Echo => stream.write_all(&buf[..len]).await?,
            EchoMode::Discard => {
                discarded.fetch_add(len as u64, Ordering::Relaxed);
            }
        }
    }
}
