//! `--local N`: a balancer and N nodes on free loopback ports, started with
//! the same code the tests use (`chat-testkit`). One node runs on the
//! embedded store alone; more share a data directory and need a
//! `nats-server` (the error says how to install it). Everything is killed
//! when the [`Local`] is dropped, Ctrl-C included (main drops it).

use std::time::Duration;

use chat_testkit::{BalancerOptions, ClusterOptions, LocalCluster, LocalError};

use crate::config::Target;
use crate::server::Probe;

/// A running local cluster.
pub struct Local {
    cluster: LocalCluster,
}

impl Local {
    /// Starts N release-or-debug nodes (next to this binary) behind a balancer.
    pub fn start(nodes: usize, shards: usize) -> Result<Local, LocalError> {
        let cluster = LocalCluster::start(ClusterOptions {
            nodes,
            shards,
            lease_ttl: Duration::from_secs(10),
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
        Ok(Local { cluster })
    }

    /// The balancer's proxy address, as a target.
    pub fn target(&self) -> Target {
        let balancer = self.cluster.balancer().expect("started with a balancer");
        Target::Addrs(vec![balancer.addr.to_string()])
    }

    /// One line for the report: what runs where.
    pub fn describe(&self) -> String {
        let balancer = self.cluster.balancer().expect("started with a balancer");
        let nodes: Vec<String> = self.cluster.addrs().iter().map(|a| a.to_string()).collect();
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
    }

    /// The nodes' and the balancer's processes, for the server's cost.
    pub fn probe(&self) -> Probe {
        Probe::Local {
            nodes: self
                .cluster
                .nodes()
                .iter()
                .filter_map(|n| n.pid())
                .collect(),
            balancer: self.cluster.balancer().and_then(|b| b.pid()),
        }
    }

    /// The nodes' `/metrics` URLs (for workers, which do not know the pids).
    pub fn metrics_urls(&self) -> Vec<String> {
        self.cluster
            .metrics_addrs()
            .iter()
            .map(|a| format!("http://{a}/metrics"))
            .collect()
    }

    pub fn cluster(&self) -> &LocalCluster {
        &self.cluster
    }
}
