//! Proxy mode: the threads that accept clients and relay them to nodes.
//!
//! One thread per `--threads`, each running its own single-threaded tokio
//! runtime (epoll) with its own listener on the same port (SO_REUSEPORT; the
//! kernel spreads new connections), as nginx's workers do with `listen ...
//! reuseport`. A connection lives on the thread that accepted it and goes
//! through explicit states (as in sozu): [`Phase::Connecting`] (a node is
//! chosen and connected, see [`connect`]), [`Phase::Relaying`] (bytes both
//! ways, see [`relay`]), then closed. The redirect listener, when
//! configured, runs on the same threads.
//!
//! Why epoll and not io_uring (glommio, which the node uses): a relay does
//! almost nothing per byte, so its cost is the per-connection and
//! per-readiness bookkeeping. With glommio every read was an io_uring
//! operation armed, completed and reaped, and every connection several;
//! measured against nginx and HAProxy on this machine kind, the glommio relay
//! opened 0.64x their connections per second. The figures of both designs
//! are in docs/balancer.md.
//!
//! Stopping: each thread stops accepting when told, then waits for its open
//! connections to finish, up to the shutdown grace, and returns.

pub mod connect;
pub mod relay;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::access_log::{Entry, Writer as AccessLog};
use crate::metric_names;
use crate::pool::Pool;

/// Connections the kernel queues per listener before they are accepted.
const BACKLOG: u32 = 1024;

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Choosing and connecting a node (possibly several in turn).
    Connecting,
    /// Both sides connected; bytes flow.
    Relaying,
}

/// What every thread shares.
#[derive(Clone)]
pub struct Wiring {
    pub pool: Arc<Pool>,
    pub listen: SocketAddr,
    pub redirect_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    /// Share the ports with other processes (`--reuse-port`).
    pub reuse_port: bool,
    pub access_log: Option<crate::access_log::Target>,
}

/// Running proxy threads.
pub struct Executors {
    pub listen: SocketAddr,
    pub redirect_listen: Option<SocketAddr>,
    stop: Vec<flume::Sender<()>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Executors {
    /// Starts `threads` proxy threads; returns once all listen. Thread 0
    /// binds first so that port 0 resolves to one port for all.
    pub fn start(mut wiring: Wiring, threads: usize) -> anyhow::Result<Executors> {
        for (flag, addr) in [
            ("listen", Some(wiring.listen)),
            ("redirect-listen", wiring.redirect_listen),
        ] {
            if let Some(addr) = addr
                && !wiring.reuse_port
            {
                chat_ops::listen::check_free(addr)
                    .map_err(|e| anyhow::anyhow!("binding --{flag} {addr}: {e}"))?;
            }
        }
        let mut stop = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads {
            let (stop_tx, stop_rx) = flume::bounded(1);
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let w = wiring.clone();
            let handle = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
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
                        let (listener, redirect) = match bind(&w) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return;
                            }
                        };
                        let addrs = (
                            listener.local_addr().expect("bound"),
                            redirect.as_ref().map(|r| r.local_addr().expect("bound")),
                        );
                        let log = match w.access_log.as_ref().map(|t| t.open()).transpose() {
                            Ok(out) => out.map(crate::access_log::Writer::new),
                            Err(e) => {
                                let _ = bound_tx.send(Err(anyhow::anyhow!("--access-log {e}")));
                                return;
                            }
                        };
                        let _ = bound_tx.send(Ok(addrs));
                        run(listener, redirect, w, stop_rx, log).await
                    })
                })
                .map_err(|e| anyhow::anyhow!("starting proxy thread {i}: {e}"))?;
            let (listen, redirect) = bound_rx
                .recv()
                .map_err(|_| anyhow::anyhow!("proxy thread {i} exited while binding"))??;
            wiring.listen = listen;
            wiring.redirect_listen = redirect;
            stop.push(stop_tx);
            handles.push(handle);
        }
        Ok(Executors {
            listen: wiring.listen,
            redirect_listen: wiring.redirect_listen,
            stop,
            handles,
        })
    }

    /// A handle that tells every thread to stop accepting.
    pub fn stopper(&self) -> Vec<flume::Sender<()>> {
        self.stop.clone()
    }

    /// Waits until every thread has returned.
    pub fn wait(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

fn bind(w: &Wiring) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let listener =
        listen(w.listen).map_err(|e| anyhow::anyhow!("binding --listen {}: {e}", w.listen))?;
    let redirect = match w.redirect_listen {
        Some(addr) => Some(
            listen(addr).map_err(|e| anyhow::anyhow!("binding --redirect-listen {addr}: {e}"))?,
        ),
        None => None,
    };
    Ok((listener, redirect))
}

/// A listener on `addr` that other threads (and, with `--reuse-port`, other
/// processes) may share.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts until told to stop, then lets open connections finish.
async fn run(
    listener: TcpListener,
    redirect: Option<TcpListener>,
    wiring: Wiring,
    stop: flume::Receiver<()>,
    log: Option<Rc<AccessLog>>,
) {
    let open = Rc::new(Cell::new(0usize));
    let redirect_task = redirect.map(|r| {
        let pool = wiring.pool.clone();
        let open = open.clone();
        tokio::task::spawn_local(async move { crate::redirect::serve(r, pool, open).await })
    });
    let stopped = stop.recv_async();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => None,
            accepted = listener.accept() => Some(accepted),
        };
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                metrics::counter!(metric_names::ACCEPTED_TOTAL).increment(1);
                let pool = wiring.pool.clone();
                let guard = Open::new(&open);
                let log = log.clone();
                tokio::task::spawn_local(async move {
                    let _guard = guard;
                    serve(stream, peer, &pool, log.as_ref()).await;
                });
            }
            Some(Err(e)) => {
                // Typically out of file descriptors: back off instead of spinning.
                metrics::counter!(metric_names::ACCEPT_ERRORS_TOTAL).increment(1);
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    if let Some(task) = redirect_task {
        task.abort();
    }
    let deadline = Instant::now() + wiring.shutdown_grace;
    while open.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if open.get() > 0 {
        tracing::warn!(
            open = open.get(),
            "shutdown grace over: closing the connections still open"
        );
    }
    if let Some(log) = &log {
        log.flush();
    }
}

/// Counts a connection on its executor while it lives.
struct Open(Rc<Cell<usize>>);

impl Open {
    fn new(count: &Rc<Cell<usize>>) -> Open {
        count.set(count.get() + 1);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Counts and logs (at most every few seconds per cause) a client
/// connection that no node took; the caller closes it.
fn no_node(peer: SocketAddr, why: &connect::NoNode) {
    use crate::log_limit::{More, allow};
    if *why == connect::NoNode::ClientGone {
        tracing::debug!(%peer, "the client's socket failed before relaying; closing it");
        return;
    }
    metrics::counter!(metric_names::NO_UPSTREAM_TOTAL).increment(1);
    match why {
        connect::NoNode::NoneAvailable => {
            metrics::counter!(metric_names::FAIL_FAST_TOTAL).increment(1);
            if let Some(held) = allow("no_node", "") {
                tracing::warn!(%peer, "no node available: closing the connection at once (--panic would try them anyway){}", More(held));
            }
        }
        connect::NoNode::AllFailed { tried, last, error } => {
            if let Some(held) = allow("no_node", last) {
                tracing::warn!(%peer, tried, last = %last, %error, "no node accepted the connection; closing it{}", More(held));
            }
        }
        connect::NoNode::ClientGone => {}
    }
}

/// Serves one client connection: connect a node, relay, account.
async fn serve(client: TcpStream, peer: SocketAddr, pool: &Pool, log: Option<&Rc<AccessLog>>) {
    let _ = client.set_nodelay(true);
    let accepted = (Instant::now(), SystemTime::now());
    let mut entry = log.map(|_| Entry {
        client: peer,
        accepted: accepted.1,
        upstream: None,
        connect_time: None,
        to_client: 0,
        from_client: 0,
        duration: Duration::ZERO,
        end: "no_upstream",
    });
    let mut phase = Phase::Connecting;
    tracing::trace!(%peer, ?phase, "client accepted");
    let tuning = pool.tuning();
    let connected = match connect::connect(pool, &tuning, &client, peer).await {
        Ok(connected) => connected,
        Err(why) => {
            no_node(peer, &why);
            if let (Some(log), Some(mut entry)) = (log, entry) {
                entry.duration = accepted.0.elapsed();
                log.log(&entry);
            }
            return;
        }
    };
    phase = Phase::Relaying;
    let upstream = connected.upstream;
    if let Some(entry) = entry.as_mut() {
        entry.upstream = Some(upstream.label.clone());
        entry.connect_time = Some(accepted.0.elapsed());
    }
    upstream.open.fetch_add(1, Ordering::Relaxed);
    let gauge =
        metrics::gauge!(metric_names::OPEN_CONNECTIONS, "upstream" => upstream.label.clone());
    gauge.increment(1.0);
    tracing::trace!(%peer, upstream = %upstream.label, ?phase, "relaying");
    let relayed = relay::relay(
        client,
        connected.stream,
        &connected.header,
        tuning.idle_timeout,
        if tuning.half_close {
            relay::AtEof::HalfClose
        } else {
            relay::AtEof::CloseBoth
        },
    )
    .await;
    upstream.open.fetch_sub(1, Ordering::Relaxed);
    gauge.decrement(1.0);
    let end = relayed.end;
    metrics::counter!(metric_names::CLOSED_TOTAL, "end" => end.name()).increment(1);
    tracing::trace!(%peer, upstream = %upstream.label, end = end.name(), "connection closed");
    if let (Some(log), Some(mut entry)) = (log, entry) {
        entry.to_client = relayed.to_client;
        entry.from_client = relayed.from_client;
        entry.duration = accepted.0.elapsed();
        entry.end = end.name();
        log.log(&entry);
    }
}
