//! Runs one shard on its executor: joins the channel mesh, starts the
//! shard's router, its event-loop lag probe and load sampler, and accepts
//! connections until shutdown.
//!
//! Every shard binds the client port with SO_REUSEPORT, so the kernel spreads
//! new connections over the shards; a connection then lives on the shard that
//! accepted it (`connection`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;

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

/// Its logs keep the target they had when this code was in `shard` (log
/// filters name it).
const LOG: &str = "chat_node::shard";

/// What every shard shares, handed to each executor when it starts.
#[derive(Clone)]
pub struct Wiring {
    pub config: Arc<Config>,
    pub store: StoreClient,
    pub mesh: MeshBuilder<Forward, glommio::channels::channel_mesh::Full>,
    /// Router inbox of each shard, indexed by mesh peer id.
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
pub async fn run(listener: TcpListener, wiring: Wiring, shutdown: flume::Receiver<()>) {
    let (senders, receivers) = match wiring.mesh.join().await {
        Ok(mesh) => mesh,
        Err(_) => {
            tracing::error!(target: LOG, "joining the shard mesh failed");
            return;
        }
    };
    let id = senders.peer_id();
    let shard = Rc::new(Shard::new(
        id,
        wiring.config.clone(),
        wiring.store.clone(),
        wiring.load.clone(),
        wiring.per_address.clone(),
        wiring.epochs.clone(),
    ));
    router::receive(shard.clone(), receivers);
    let router_task = {
        let shard = shard.clone();
        let events = wiring.routers[id].clone();
        glommio::spawn_local(async move { router::run(&shard, events, &senders).await })
    };
    let lag_probe = glommio::spawn_local(measure_lag(shard.label.clone()));
    let sampler = {
        let s = shard.clone();
        glommio::spawn_local(async move {
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
            Some(Ok(stream)) => {
                if shard.load.connections() >= shard.load.capacity {
                    // Over --max-connections: an `Overloaded` error in the
                    // client's protocol, then closed; counted.
                    metrics::counter!(metric_names::CONNECTIONS_REFUSED_TOTAL, "reason" => "max_connections").increment(1);
                    if shard.refusing.get() < MAX_REFUSING {
                        let capacity = shard.load.capacity;
                        glommio::spawn_local(connection::refuse(
                            shard.clone(),
                            stream,
                            format!("max number of connections reached ({capacity}); try another node or later"),
                        ))
                        .detach();
                    }
                    continue;
                }
                glommio::spawn_local(connection::serve(shard.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                // Typically out of file descriptors: back off instead of spinning.
                metrics::counter!(metric_names::ACCEPT_ERRORS_TOTAL).increment(1);
                tracing::warn!(target: LOG, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
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
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    drop(router_task);
    drop(lag_probe);
    drop(sampler);
}

/// How late a 10 ms timer fires on this executor: near zero while every task
/// yields promptly, large when something blocks the thread.
async fn measure_lag(shard: String) {
    const TICK: Duration = Duration::from_millis(10);
    let lag = metrics::histogram!(metric_names::EVENT_LOOP_LAG_SECONDS, "shard" => shard);
    loop {
        let started = std::time::Instant::now();
        glommio::timer::sleep(TICK).await;
        lag.record(started.elapsed().saturating_sub(TICK).as_secs_f64());
    }
}

/// Binds the client port for one shard (glommio sets SO_REUSEPORT, so every
/// shard can bind the same port).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
}
