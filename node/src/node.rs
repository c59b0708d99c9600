//! Starting and stopping a whole node: opens the store, recovers from a
//! previous crash, takes its lease, joins the cluster's bus when one is
//! configured, starts the store thread, the metrics endpoint and one executor
//! per shard, and on SIGTERM/SIGINT stops accepting, lets sessions flush and
//! release their users, lets the store thread commit and end the lease, stops
//! the bus, and returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bus::{self, Bus, BusConfig};
use crate::config::{Config, StoreChoice};
use crate::engine::{self, WriterConfig};
use crate::event::RouterEvent;
use crate::load::NodeLoad;
use crate::store::Store;
use crate::store::scylla::{ScyllaOptions, ScyllaStore};
use crate::store::sqlite::SqliteStore;
use crate::{executor, metrics};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the store ({place}): {source}")]
    Store {
        place: String,
        source: crate::store::StoreError,
    },
    #[error("{0}")]
    Bus(#[from] bus::BusError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting executor: {0}")]
    Executor(String),
    #[error("creating {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A running node. `stop` (or a signal handler calling it) ends it.
pub struct Node {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    stop: Vec<flume::Sender<()>>,
    executors: Vec<std::thread::JoinHandle<()>>,
    store: engine::StoreClient,
    /// The store thread; `None` when the writer runs on shard 0's executor.
    writer: Option<std::thread::JoinHandle<()>>,
    /// With the writer on shard 0: told when that shard has closed its
    /// sessions (its executor then still runs the writer).
    shard_0_closed: Option<flume::Receiver<()>>,
    reader: std::thread::JoinHandle<()>,
    gauges: Option<(std::thread::JoinHandle<()>, flume::Sender<()>)>,
    bus: Option<Bus>,
    load: Arc<NodeLoad>,
}

impl Node {
    /// Starts a node with `config`; returns once it accepts connections.
    pub fn start(config: Config) -> Result<Node, StartError> {
        match &config.store {
            StoreChoice::Sqlite => {
                std::fs::create_dir_all(&config.data_dir).map_err(|source| {
                    StartError::DataDir {
                        path: config.data_dir.clone(),
                        source,
                    }
                })?;
                let path = config.data_dir.join("chat.db");
                let place = path.display().to_string();
                let opened = SqliteStore::open(&path, config.sync).and_then(|mut store| {
                    store.set_history_retention(config.history_retention);
                    let reader = SqliteStore::open_reader(&path)?;
                    Ok((store, reader, SqliteStore::open_reader(&path)?))
                });
                let (store, reader, gauges) =
                    opened.map_err(|source| StartError::Store { place, source })?;
                Node::start_with(config, store, reader, Some(gauges))
            }
            StoreChoice::Scylla(options) => {
                let place = format!("ScyllaDB at {}", options.nodes.join(","));
                let opened = ScyllaStore::open(options).and_then(|store| {
                    let reader_options = ScyllaOptions {
                        init_schema: false,
                        ..options.clone()
                    };
                    Ok((store, ScyllaStore::open(&reader_options)?))
                });
                let (store, reader) =
                    opened.map_err(|source| StartError::Store { place, source })?;
                // ScyllaDB can not count pending messages: no gauge thread.
                Node::start_with(config, store, reader, None)
            }
        }
    }

    /// Starts the node on `store` (the writer's handle), `reader` (a second
    /// handle on the same data, for the reader thread) and `gauges` (a third,
    /// for the thread that counts pending messages, if the backend can).
    fn start_with<S: Store>(
        config: Config,
        mut store: S,
        reader: S,
        gauges: Option<S>,
    ) -> Result<Node, StartError> {
        let recovered = store
            .release_node(&config.node_id)
            .and_then(|users| {
                store.renew_lease(&config.node_id, config.lease_ttl)?;
                store.commit().map(|()| users)
            })
            .map_err(|source| StartError::Store {
                place: "recovering this node's sessions".into(),
                source,
            })?;
        if !recovered.is_empty() {
            tracing::info!(
                users = recovered.len(),
                "released sessions left by a previous run"
            );
        }

        let handle = metrics::install();
        let metrics_listener =
            metrics::bind(config.metrics_listen).map_err(|source| StartError::Bind {
                addr: config.metrics_listen,
                source,
            })?;
        let metrics_addr = metrics_listener
            .local_addr()
            .expect("bound socket has an address");
        metrics::serve(metrics_listener, handle);

        chat_ops::listen::check_free(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let shards = config.shards;
        let (store_client, queues) = engine::channel(64 * 1024);
        let (router_tx, router_rx): (Vec<flume::Sender<Vec<RouterEvent>>>, Vec<_>) =
            (0..shards).map(|_| flume::bounded(4096)).unzip();
        let first_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let (publisher, bus) = match &config.nats {
            Some(url) => {
                let (publisher, bus) = bus::start(
                    BusConfig {
                        url: url.clone(),
                        node_id: config.node_id.clone(),
                        incarnation: first_epoch,
                        subscription_capacity: config.nats_subscription_capacity,
                        heartbeat_every: config.lease_every(),
                    },
                    router_tx.clone(),
                )?;
                (Some(publisher), Some(bus))
            }
            None => (None, None),
        };
        let writer_maintenance = Duration::from_secs(10);
        let writer_config = WriterConfig {
            node_id: config.node_id.clone(),
            shards,
            max_batch: config.max_batch,
            commit_window: config.commit_window,
            maintenance_every: writer_maintenance,
            lease_ttl: config.lease_ttl,
            lease_every: config.lease_every(),
            bus: publisher,
            max_pending_per_user: config.max_pending_per_user,
            limits: engine::Limits {
                friends: config.max_friends,
                groups_per_user: config.max_groups_per_user,
                group_members: config.max_group_members,
                login_group_members: config.login_group_members,
            },
        };
        let on_shard = config.store_on_shard && matches!(config.store, StoreChoice::Sqlite);
        let mut inline_writer = None;
        let mut shard_0_closed = None;
        let writer = if on_shard {
            let (closed_tx, closed_rx) = flume::bounded(1);
            inline_writer = Some((store, queues.writes, router_tx, writer_config, closed_tx));
            shard_0_closed = Some(closed_rx);
            None
        } else {
            Some(
                std::thread::Builder::new()
                    .name("store".into())
                    .spawn(move || engine::run(store, queues.writes, router_tx, writer_config))
                    .expect("spawning the store thread"),
            )
        };
        let max_batch = config.max_batch;
        let reader = std::thread::Builder::new()
            .name("store-reader".into())
            .spawn(move || engine::run_reader(reader, queues.reads, max_batch))
            .expect("spawning the store reader thread");
        let (gauges_stop, gauges_stopped) = flume::bounded::<()>(1);
        let gauges = gauges.map(|store| {
            let every = writer_maintenance;
            std::thread::Builder::new()
                .name("store-gauges".into())
                .spawn(move || engine::run_gauges(store, every, gauges_stopped))
                .expect("spawning the store gauges thread")
        });

        let (stop, shutdown): (Vec<_>, Vec<_>) = (0..shards).map(|_| flume::bounded(1)).unzip();
        let config = Arc::new(config);
        let load = Arc::new(NodeLoad::new(
            config.node_id.clone(),
            config.max_connections,
            shards,
        ));
        let wiring = executor::Wiring {
            config: config.clone(),
            store: store_client.clone(),
            forward: Arc::new((0..shards).map(|_| flume::bounded(1024 * shards)).collect()),
            routers: Arc::new(router_rx),
            epochs: Arc::new(AtomicU64::new(first_epoch)),
            load: load.clone(),
            per_address: crate::admission::PerAddress::new(config.max_connections_per_ip),
        };

        let mut addr = config.listen;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut executors = Vec::with_capacity(shards);
        if !config.spin_before_park.is_zero() {
            tracing::warn!(
                "--spin-before-park has no effect: the shards run tokio, which parks at once"
            );
        }
        for (i, shutdown) in shutdown.into_iter().enumerate() {
            let wiring = wiring.clone();
            let inline_writer = inline_writer.take();
            let pin = (shards <= cores).then_some(i);
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let executor = std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    if let Some(core) = pin {
                        executor::pin_to_core(core);
                    }
                    let runtime = match executor::runtime() {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        // Shard 0 may also run the writer; it then outlives the
                        // shard until `Node::wait` sends `Op::Stop`.
                        let writer = inline_writer.map(|(store, ops, routers, config, closed)| {
                            let task = engine::run_on_executor(store, ops, routers, config);
                            (tokio::task::spawn_local(task), closed)
                        });
                        let listener = match chat_ops::listen::reuse_port(addr) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = bound_tx.send(listener.local_addr());
                        executor::run(i, listener, wiring, shutdown).await;
                        if let Some((writer, closed)) = writer {
                            let _ = closed.send(());
                            let _ = writer.await;
                        }
                    });
                })
                .map_err(|e| StartError::Executor(e.to_string()))?;
            executors.push(executor);
            // Shard 0 binds first so that port 0 resolves to one port for all.
            addr = bound_rx
                .recv()
                .map_err(|_| StartError::Executor("shard exited while binding".into()))?
                .map_err(|source| StartError::Bind { addr, source })?;
        }
        let advertised = config.advertise_addr.clone().unwrap_or(addr.to_string());
        let _ = load.address.set(advertised);
        tracing::info!(%addr, %metrics_addr, shards, node = %config.node_id, "chat-node listening");
        Ok(Node {
            addr,
            metrics_addr,
            stop,
            executors,
            store: store_client,
            writer,
            shard_0_closed,
            reader,
            gauges: gauges.map(|thread| (thread, gauges_stop)),
            bus,
            load,
        })
    }

    /// A handle that stops the node from another thread (a signal handler).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: self.stop.clone(),
            load: self.load.clone(),
        }
    }

    /// Waits until the node has stopped: every shard closed its sessions and
    /// the store thread committed their logouts.
    pub fn wait(self) {
        let mut executors = self.executors.into_iter();
        // With the writer on shard 0, that executor ends after the writer:
        // wait for its sessions only, then stop the writer, then join it.
        let shard_0 = self.writer.is_none().then(|| executors.next()).flatten();
        for executor in executors {
            let _ = executor.join();
        }
        if let Some(closed) = &self.shard_0_closed {
            let _ = closed.recv();
        }
        drop(self.stop);
        // Every session has queued its logout by now; commit and end.
        self.store.stop();
        if let Some(executor) = shard_0 {
            let _ = executor.join();
        }
        if let Some(writer) = self.writer {
            let _ = writer.join();
        }
        let _ = self.reader.join();
        if let Some((thread, stop)) = self.gauges {
            drop(stop);
            let _ = thread.join();
        }
        if let Some(bus) = self.bus {
            bus.stop();
        }
        tracing::info!("chat-node stopped");
    }
}

/// Controls a running node from another thread (a signal handler).
#[derive(Clone)]
pub struct Stopper {
    stop: Vec<flume::Sender<()>>,
    load: Arc<NodeLoad>,
}

impl Stopper {
    /// Stops the node: it reports itself draining, every shard stops
    /// accepting and closes its sessions.
    pub fn stop(&self) {
        self.load.set_draining(true);
        for tx in &self.stop {
            let _ = tx.try_send(());
        }
    }

    /// Starts or ends draining: balancers send no new connections to a
    /// draining node; its open connections stay.
    pub fn drain(&self, draining: bool) {
        tracing::info!(draining, "drain");
        self.load.set_draining(draining);
    }
}
