//! Proxy mode: the threads that accept clients and relay them to nodes.
//!
//! One thread per `--threads`, each running its own event loop
//! ([`event_loop`]: `epoll` through `mio`) with its own listener on the same
//! port (SO_REUSEPORT; the kernel spreads new connections), as nginx's
//! workers do with `listen ... reuseport`. A connection lives on the thread
//! that accepted it and goes through explicit states ([`conn`]): connecting
//! a node ([`connect`]), relaying ([`relay`]), closed. The redirect
//! listener, when configured, has threads of its own
//! ([`redirect`](crate::redirect)), off
//! the data path.
//!
//! Why an event loop of our own, and not glommio (io_uring, which the node
//! also left) or tokio: a relay does almost nothing per byte, so its cost is the
//! per-connection and per-readiness bookkeeping. With glommio every read
//! was an io_uring operation armed, completed and reaped, and every
//! connection several: the glommio relay opened 0.64x the connections per
//! second of nginx and HAProxy here. On tokio each connection paid two
//! `epoll_ctl(DEL)` before closing and an `eventfd` write for its connect
//! timer, about 10 % more CPU per connection than nginx. The figures of all
//! three designs are in docs/balancer.md.
//!
//! Stopping: each thread stops accepting when told, then waits for its open
//! connections to finish, up to the shutdown grace, and returns.

pub mod conn;
pub mod connect;
pub mod event_loop;
pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::pool::Pool;

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

/// Running proxy (and redirect) threads.
pub struct Executors {
    pub listen: SocketAddr,
    pub redirect_listen: Option<SocketAddr>,
    stopper: Stopper,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// Tells every proxy and redirect thread to stop accepting.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    wakers: Vec<Arc<mio::Waker>>,
    redirect: Vec<flume::Sender<()>>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for tx in &self.redirect {
            let _ = tx.try_send(());
        }
    }
}

impl Executors {
    /// Starts `threads` proxy threads (and as many redirect threads if a
    /// redirect port is configured); returns once all listen. The first
    /// thread of each kind binds first so that port 0 resolves to one port
    /// for all.
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
        let mut stopper = Stopper {
            flag: Arc::new(AtomicBool::new(false)),
            wakers: Vec::new(),
            redirect: Vec::new(),
        };
        let mut handles = Vec::new();
        // The redirect port first: once the proxy port takes connections,
        // everything listens.
        if let Some(mut addr) = wiring.redirect_listen {
            for i in 0..threads {
                let (stop_tx, stop_rx) = flume::bounded(1);
                let (bound, handle) = crate::redirect::start(
                    i,
                    addr,
                    wiring.pool.clone(),
                    wiring.shutdown_grace,
                    stop_rx,
                )?;
                addr = bound;
                stopper.redirect.push(stop_tx);
                handles.push(handle);
            }
            wiring.redirect_listen = Some(addr);
        }
        for i in 0..threads {
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let w = wiring.clone();
            let flag = stopper.flag.clone();
            let handle = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || match proxy_thread(&w, flag) {
                    Ok((event_loop, addr, waker)) => {
                        let _ = bound_tx.send(Ok((addr, waker)));
                        event_loop.run();
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                })
                .map_err(|e| anyhow::anyhow!("starting proxy thread {i}: {e}"))?;
            let (listen, waker) = bound_rx
                .recv()
                .map_err(|_| anyhow::anyhow!("proxy thread {i} exited while binding"))??;
            wiring.listen = listen;
            stopper.wakers.push(waker);
            handles.push(handle);
        }
        Ok(Executors {
            listen: wiring.listen,
            redirect_listen: wiring.redirect_listen,
            stopper,
            handles,
        })
    }

    /// A handle that tells every thread to stop accepting.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Waits until every thread has returned.
    pub fn wait(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// Sets up one proxy thread's event loop: its listener, its `epoll`, its
/// waker, its access log.
fn proxy_thread(
    w: &Wiring,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(event_loop::EventLoop, SocketAddr, Arc<mio::Waker>)> {
    let listener = chat_ops::listen::reuse_port(w.listen)
        .map_err(|e| anyhow::anyhow!("binding --listen {}: {e}", w.listen))?;
    let addr = listener.local_addr()?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let poll = mio::Poll::new().map_err(|e| anyhow::anyhow!("epoll: {e}"))?;
    poll.registry()
        .register(&mut listener, event_loop::LISTENER, mio::Interest::READABLE)?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), event_loop::WAKER)?);
    let log = match w.access_log.as_ref().map(|t| t.open()).transpose() {
        Ok(out) => out.map(crate::access_log::Writer::new),
        Err(e) => anyhow::bail!("--access-log {e}"),
    };
    Ok((
        event_loop::EventLoop {
            poll,
            listener,
            pool: w.pool.clone(),
            stop,
            shutdown_grace: w.shutdown_grace,
            log,
        },
        addr,
        waker,
    ))
}
