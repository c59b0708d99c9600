//! Runs one shard on its executor (a current-thread tokio runtime on a
//! thread of its own): starts the shard's router and the receiver of
//! pushes other shards forward, its event-loop lag probe and load sampler,
//! and accepts connections until shutdown.
//!
//! Every shard binds the client port with SO_REUSEPORT, so the kernel spreads
//! new connections over the shards; a connection then lives on the shard that
//! accepted it (`connection`).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admission::PerAddress;
use crate::config::Config;
use crate::connection;
use crate::engine::StoreClient;
use crate::event::RouterEvent;
use crate::load::{self, NodeLoad};
use crate::metric_names;
use crate::outbound::CloseReason;
use crate::router;
use crate::shard::{Forward, Shard};
use crate::socket::Socket;

/// Its logs keep the target they had when this code was in `shard` (log
/// filters name it).
const LOG: &str = "chat_node::shard";

/// What every shard shares, handed to each executor when it starts.
#[derive(Clone)]
pub struct Wiring {
    pub config: Arc<Config>,
    pub store: StoreClient,
    /// Every shard's inbox of pushes forwarded by the others, by shard id.
    pub forward: Arc<Vec<(flume::Sender<Forward>, flume::Receiver<Forward>)>>,
    /// Router inbox of each shard, indexed by shard id.
    pub routers: Arc<Vec<flume::Receiver<Vec<RouterEvent>>>>,
    pub epochs: Arc<AtomicU64>,
    pub load: Arc<NodeLoad>,
    /// Open connections per client address (`--max-connections-per-ip`).
    pub per_address: Arc<PerAddress>,
}

/// Connections being refused (answered `Overloaded`, then closed) at once
/// per shard; over it a refused connection is closed with no answer.
const MAX_REFUSING: usize = 256;

/// Runs one shard: accepts on `listener` until `shutdown` fires, then closes its
/// sessions (they release their users) and returns.
pub async fn run(
    id: usize,
    listener: std::net::TcpListener,
    wiring: Wiring,
    shutdown: flume::Receiver<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(target: LOG, error = %e, "registering the listener failed");
            return;
        }
    };
    let shard = Rc::new(Shard::new(
        id,
        wiring.config.clone(),
        wiring.store.clone(),
        wiring.load.clone(),
        wiring.per_address.clone(),
        wiring.epochs.clone(),
    ));
    let senders: Vec<_> = wiring.forward.iter().map(|(tx, _)| tx.clone()).collect();
    let receiver = router::receive(shard.clone(), wiring.forward[id].1.clone());
    let router_task = {
        let shard = shard.clone();
        let events = wiring.routers[id].clone();
        tokio::task::spawn_local(async move { router::run(&shard, events, &senders).await })
    };
    let lag_probe = tokio::task::spawn_local(measure_lag(shard.label.clone()));
    let sampler = {
        let s = shard.clone();
        tokio::task::spawn_local(async move {
            let queued = || -> u64 { s.queued() };
            load::sample(&s.load, s.id, s.label.clone(), queued).await
        })
    };
    tracing::debug!(target: LOG, shard = id, "shard ready");

    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = shutdown.recv_async().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok((stream, _))) => {
                let stream = Socket::new(stream);
                if shard.load.connections() >= shard.load.capacity {
                    // Over --max-connections: an `Overloaded` error in the
                    // client's protocol, then closed; counted.
                    metrics::counter!(metric_names::CONNECTIONS_REFUSED_TOTAL, "reason" => "max_connections").increment(1);
                    if shard.refusing.get() < MAX_REFUSING {
                        let capacity = shard.load.capacity;
                        tokio::task::spawn_local(connection::refuse(
                            shard.clone(),
                            stream,
                            format!(
                                "max number of connections reached ({capacity}); try another node or later"
                            ),
                        ));
                    }
                    continue;
                }
                tokio::task::spawn_local(connection::serve(shard.clone(), stream));
            }
            Some(Err(e)) => {
                // Typically out of file descriptors: back off instead of spinning.
                metrics::counter!(metric_names::ACCEPT_ERRORS_TOTAL).increment(1);
                tracing::warn!(target: LOG, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);

    shard.close_all(CloseReason::Shutdown);
    // Sessions flush their queues and release their users; give them a moment.
    for _ in 0..500 {
        if shard.has_no_sessions() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Dropping a tokio task's handle would leave it running.
    for task in [router_task, lag_probe, sampler, receiver] {
        task.abort();
    }
}

/// How late a 10 ms timer fires on this executor: near zero while every task
/// yields promptly, large when something blocks the thread.
async fn measure_lag(shard: String) {
    const TICK: Duration = Duration::from_millis(10);
    let lag = metrics::histogram!(metric_names::EVENT_LOOP_LAG_SECONDS, "shard" => shard);
    loop {
        let started = std::time::Instant::now();
        tokio::time::sleep(TICK).await;
        lag.record(started.elapsed().saturating_sub(TICK).as_secs_f64());
    }
}

/// The shard's runtime: tokio's current-thread scheduler (epoll and its
/// timer wheel), with the hooks that count the thread's busy time for the
/// load report (`load::sample`), and one blocking thread for Argon2: a
/// login storm queues its hashes there (memory-hard: each holds
/// `--argon2-memory-kib` while it runs) instead of starting a thread, and
/// an allocator arena, per concurrent login.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(1)
        .on_thread_park(load::parked)
        .on_thread_unpark(load::unparked)
        .build()
}

/// Pins the calling thread to `core`, as one shard per core wants; a
/// failure is logged and the shard runs unpinned.
pub fn pin_to_core(core: usize) {
    // SAFETY: `set` is a plain bit set, zeroed and then filled by CPU_SET
    // within its size; sched_setaffinity only reads it.
    let failed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
    };
    if failed {
        let error = std::io::Error::last_os_error();
        tracing::warn!(target: LOG, core, %error, "pinning the shard to its core failed");
    }
}
