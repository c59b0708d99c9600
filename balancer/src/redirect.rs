//! Redirect mode: a client asks "which node?" and connects there itself, so
//! the balancer leaves the data path.
//!
//! The protocol is the node's FlatBuffers framing (4-byte little-endian
//! length, then an `Envelope`). A `WhichNodeRequest` is answered with a
//! `WhichNodeReply` carrying the chosen node's client-facing address from its
//! last load report (its configured address if it has not reported yet) and
//! node id, under the request's id; a `PingRequest` with a `PingReply`.
//! Anything else that parses gets an `ErrorReply` (BadRequest) and the
//! connection stays; bytes that are not a frame (too long, empty, failing
//! verification) get an `ErrorReply` and the connection is closed. Each
//! connection must send a complete frame within [`READ_WITHIN`].
//!
//! Cost: an answer is a pick from the pool (no I/O), a FlatBuffers reply of
//! a few dozen bytes and one `send`; its time from the whole request frame to
//! the reply written is the histogram
//! [`REDIRECT_ANSWER_SECONDS`](crate::metric_names::REDIRECT_ANSWER_SECONDS)
//! (buckets from 5 µs).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_schema::fb;
use chat_schema::frame::{self, PREFIX_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::metric_names;
use crate::pool::Pool;

/// Largest request accepted: "which node?" is a few dozen bytes.
const MAX_FRAME: usize = 4096;

/// How long a connection may stay silent, and a reply may take to write.
const READ_WITHIN: Duration = Duration::from_secs(10);

/// Starts redirect thread `i`: a single-threaded tokio runtime with its own
/// listener on `addr` (shared with the other redirect threads through
/// SO_REUSEPORT). Returns the bound address once it listens. On `stop` it
/// stops accepting and lets open connections finish within `grace`.
pub fn start(
    i: usize,
    addr: std::net::SocketAddr,
    pool: Arc<Pool>,
    grace: Duration,
    stop: flume::Receiver<()>,
) -> anyhow::Result<(std::net::SocketAddr, std::thread::JoinHandle<()>)> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("redirect-{i}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = bound_tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let listener =
                    match chat_ops::listen::reuse_port(addr).and_then(TcpListener::from_std) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = bound_tx.send(Err(anyhow::anyhow!(
                                "binding --redirect-listen {addr}: {e}"
                            )));
                            return;
                        }
                    };
                let _ = bound_tx.send(Ok(listener.local_addr().expect("bound")));
                let open = Rc::new(Cell::new(0usize));
                tokio::select! {
                    () = serve(listener, pool, open.clone()) => {}
                    _ = stop.recv_async() => {}
                }
                let deadline = Instant::now() + grace;
                while open.get() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("starting redirect thread {i}: {e}"))?;
    let bound = bound_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("redirect thread {i} exited while binding"))??;
    Ok((bound, handle))
}

/// Accepts redirect clients on `listener` until dropped.
async fn serve(listener: TcpListener, pool: Arc<Pool>, open: Rc<Cell<usize>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let pool = pool.clone();
                open.set(open.get() + 1);
                let open = open.clone();
                tokio::task::spawn_local(async move {
                    let _ = stream.set_nodelay(true);
                    answer(stream, &pool).await;
                    open.set(open.get() - 1);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "redirect accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, pool: &Pool) {
    let peer = stream.peer_addr().ok();
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        // Answer every complete frame in the buffer.
        loop {
            let len = match frame::frame_len(&buf, MAX_FRAME) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => return refuse(&mut stream, peer, &e.to_string()).await,
            };
            if buf.len() < PREFIX_LEN + len {
                break;
            }
            // The answer's cost: from a whole frame to its reply written.
            let started = Instant::now();
            let whole: Vec<u8> = buf.drain(..PREFIX_LEN + len).collect();
            let reply = match frame::parse_frame(&whole, MAX_FRAME) {
                Ok(envelope) => reply_to(envelope, pool),
                Err(e) => return refuse(&mut stream, peer, &e.to_string()).await,
            };
            if !matches!(
                timeout(READ_WITHIN, stream.write_all(&reply)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            metrics::histogram!(metric_names::REDIRECT_ANSWER_SECONDS)
                .record(started.elapsed().as_secs_f64());
        }
        match timeout(READ_WITHIN, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Answers garbage with an `ErrorReply` and closes.
async fn refuse(stream: &mut TcpStream, peer: Option<std::net::SocketAddr>, why: &str) {
    metrics::counter!(metric_names::BAD_INPUT_TOTAL, "port" => "redirect").increment(1);
    tracing::info!(?peer, %why, "redirect: not a request frame; closing");
    let reply = error_reply(0, fb::ErrorCode::BadRequest, why);
    let _ = timeout(READ_WITHIN, stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
}

fn reply_to(envelope: fb::Envelope<'_>, pool: &Pool) -> Vec<u8> {
    let id = envelope.request_id();
    match envelope.body_type() {
        fb::Body::WhichNodeRequest => {
            let Some(pick) = pool.pick(&[]) else {
                return error_reply(id, fb::ErrorCode::Overloaded, "no node available");
            };
            metrics::counter!(metric_names::REDIRECTS_TOTAL, "upstream" => pick.upstream.label.clone())
                .increment(1);
            let snap = pick
                .upstream
                .snapshot(std::time::Instant::now(), std::time::Duration::MAX);
            let (address, node_id) = match snap.health.report {
                Some((r, _, _)) if !r.address.is_empty() => (r.address, r.node_id),
                Some((r, _, _)) => (pick.upstream.label.clone(), r.node_id),
                None => (pick.upstream.label.clone(), String::new()),
            };
            frame::encode(id, |b| {
                let address = b.create_string(&address);
                let node_id = b.create_string(&node_id);
                let r = fb::WhichNodeReply::create(
                    b,
                    &fb::WhichNodeReplyArgs {
                        address: Some(address),
                        node_id: Some(node_id),
                    },
                );
                (fb::Body::WhichNodeReply, r.as_union_value())
            })
        }
        fb::Body::PingRequest => {
            let time_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            frame::encode(id, |b| {
                let r = fb::PingReply::create(b, &fb::PingReplyArgs { time_ms });
                (fb::Body::PingReply, r.as_union_value())
            })
        }
        other => {
            metrics::counter!(metric_names::BAD_INPUT_TOTAL, "port" => "redirect").increment(1);
            error_reply(
                id,
                fb::ErrorCode::BadRequest,
                &format!(
                    "a balancer answers WhichNodeRequest and PingRequest, not {}",
                    other.variant_name().unwrap_or("an unknown body")
                ),
            )
        }
    }
}

fn error_reply(id: u64, code: fb::ErrorCode, message: &str) -> Vec<u8> {
    frame::encode(id, |b| {
        let message = b.create_string(message);
        let r = fb::ErrorReply::create(
            b,
            &fb::ErrorReplyArgs {
                code,
                message: Some(message),
                retry_after_ms: 0,
            },
        );
        (fb::Body::ErrorReply, r.as_union_value())
    })
}
