//! `--local N`: a balancer and N nodes on free loopback ports, started with
//! the same code the tests use (`chat-testkit`). One node runs on the
//! embedded store alone; more share a data directory and need a
//! `nats-server` (the error says how to install it). Everything is killed
//! when the [`Local`] is dropped, Ctrl-C included (main drops it). With
//! `--chaos`, [`Local::injector`] hands the cluster to the faults.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chat_testkit::{BalancerOptions, ClusterOptions, LocalCluster, LocalError};

use crate::chaos::Injector;
use crate::config::Target;
use crate::server::Probe;

/// A running local cluster.
pub struct Local {
    /// Taken out (torn down) when the `Local` is dropped, even while a
    /// fault injector still holds the `Arc`.
    cluster: Arc<Mutex<Option<LocalCluster>>>,
}

impl Local {
    /// Starts N release-or-debug nodes (next to this binary) behind a
    /// balancer, with `lease_ttl` as their `--lease-ttl`.
    pub fn start(nodes: usize, shards: usize, lease_ttl: Duration) -> Result<Local, LocalError> {
        let cluster = LocalCluster::start(ClusterOptions {
            nodes,
            shards,
            lease_ttl,
            args: vec!["--max-connections".into(), "100000".into()],
            log: "warn".into(),
            balancer: Some(BalancerOptions {
                log: "warn".into(),
                threads: 1,
                ..BalancerOptions::default()
            }),
            without_nats: nodes == 1,
            ..ClusterOptions::default()
        })?;
        Ok(Local {
            cluster: Arc::new(Mutex::new(Some(cluster))),
        })
    }

    fn cluster(&self) -> MutexGuard<'_, Option<LocalCluster>> {
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the running cluster.
    fn with<T>(&self, f: impl FnOnce(&LocalCluster) -> T) -> T {
        f(self
            .cluster()
            .as_ref()
            .expect("the cluster runs until dropped"))
    }

    /// The balancer's proxy address, as a target (the same across balancer
    /// restarts).
    pub fn target(&self) -> Target {
        self.with(|c| {
            let balancer = c.balancer().expect("started with a balancer");
            Target::Addrs(vec![balancer.addr.to_string()])
        })
    }

    /// One line for the report: what runs where.
    pub fn describe(&self) -> String {
        self.with(|c| {
            let balancer = c.balancer().expect("started with a balancer");
            let nodes: Vec<String> = c.addrs().iter().map(|a| a.to_string()).collect();
            format!(
                "local: balancer {} → {} node{} ({}){}",
                balancer.addr,
                nodes.len(),
                if nodes.len() == 1 { "" } else { "s" },
                nodes.join(", "),
                if nodes.len() > 1 {
                    ", NATS"
                } else {
                    ", embedded store"
                }
            )
        })
    }

    /// The nodes' and the balancer's processes, for the server's cost.
    pub fn probe(&self) -> Probe {
        self.with(|c| Probe::Local {
            nodes: c.nodes().iter().filter_map(|n| n.pid()).collect(),
            balancer: c.balancer().and_then(|b| b.pid()),
        })
    }

    /// The nodes' `/metrics` URLs (for workers, which do not know the pids).
    pub fn metrics_urls(&self) -> Vec<String> {
        self.with(|c| {
            c.metrics_addrs()
                .iter()
                .map(|a| format!("http://{a}/metrics"))
                .collect()
        })
    }

    /// What `--chaos` injects faults through.
    pub fn injector(&self) -> Injector {
        Injector::new(self.cluster.clone())
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Waits for a fault being injected, then kills everything.
        let cluster = self.cluster().take();
        drop(cluster);
    }
}
