//! A local cluster: one `nats-server`, one data directory shared by every
//! node (the SQLite file in it is the cluster's store), and N `chat-node`
//! processes `node-0`, `node-1`, ... joined over NATS. For tests, benchmarks
//! and `chat-loadtest --local`. Dropping it kills the nodes, then NATS, then
//! removes the directory.
//!
//! The faults of `chat-loadtest --chaos` are methods here: a node's crash
//! and restart on the same ports, node id and data
//! ([`LocalCluster::kill9_and_restart_node`]), a node paused and resumed
//! ([`LocalCluster::stop_node`], [`LocalCluster::continue_node`]), NATS and
//! the balancer restarted on their ports ([`LocalCluster::restart_nats`],
//! [`LocalCluster::restart_balancer`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chat_schema::nats::node_subject;

use crate::{BalancerOptions, LocalBalancer, LocalError, LocalNats, LocalNode, NodeOptions};

/// How long a new node may take to subscribe on NATS.
const JOIN_WITHIN: Duration = Duration::from_secs(10);

/// How to start a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes started at once.
    pub nodes: usize,
    /// `--shards` of every node.
    pub shards: usize,
    /// `--lease-ttl`: how long a crashed node's users stay claimed.
    pub lease_ttl: Duration,
    /// Extra flags for every node.
    pub args: Vec<String>,
    /// Extra flags for one node: `node_args[i]` goes to node `i` after `args`.
    pub node_args: Vec<Vec<String>>,
    /// Passed as `CHAT_NODE_LOG` (e.g. "warn", "debug").
    pub log: String,
    /// The `chat-node` binary; found next to the running executable when `None`.
    pub binary: Option<PathBuf>,
    /// The `nats-server` binary; see [`crate::nats::find_nats_server`] when `None`.
    pub nats_binary: Option<PathBuf>,
    /// A `chat-balancer` started in front of the nodes (their addresses are
    /// added to its upstreams); none when `None`.
    pub balancer: Option<BalancerOptions>,
    /// One node on its own, with no NATS (`nodes` must be 1, and
    /// [`LocalCluster::add_node`] then fails): what `chat-loadtest --local 1`
    /// runs, needing nothing but the binaries.
    pub without_nats: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            shards: 1,
            lease_ttl: Duration::from_secs(10),
            args: Vec::new(),
            node_args: Vec::new(),
            log: "warn".into(),
            binary: None,
            nats_binary: None,
            balancer: None,
            without_nats: false,
        }
    }
}

/// Running nodes on one NATS server and one store.
pub struct LocalCluster {
    options: ClusterOptions,
    nodes: Vec<LocalNode>,
    nats: Option<LocalNats>,
    balancer: Option<LocalBalancer>,
    data: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts NATS, then the nodes one after the other, each ready (answering
    /// a ping and subscribed on NATS) before the next starts.
    pub fn start(options: ClusterOptions) -> Result<LocalCluster, LocalError> {
        let nats = match (&options.nats_binary, options.without_nats) {
            (_, true) if options.nodes == 1 => None,
            (_, true) => return Err(LocalError::NeedsNats(options.nodes)),
            (Some(binary), false) => Some(LocalNats::start_with(binary.clone())?),
            (None, false) => Some(LocalNats::start()?),
        };
        let data = tempfile::Builder::new().prefix("chat-cluster-").tempdir()?;
        let mut cluster = LocalCluster {
            options,
            nodes: Vec::new(),
            nats,
            balancer: None,
            data,
        };
        for _ in 0..cluster.options.nodes {
            cluster.add_node()?;
        }
        if let Some(mut options) = cluster.options.balancer.clone() {
            options
                .upstreams
                .extend(cluster.addrs().iter().map(|a| a.to_string()));
            cluster.balancer = Some(LocalBalancer::start(options)?);
        }
        Ok(cluster)
    }

    /// What node `i` is (or would be) started with.
    pub fn node_options(&self, i: usize) -> NodeOptions {
        let mut args = vec![
            "--lease-ttl".to_owned(),
            format!("{}ms", self.options.lease_ttl.as_millis()),
        ];
        args.extend(self.options.args.iter().cloned());
        if let Some(extra) = self.options.node_args.get(i) {
            args.extend(extra.iter().cloned());
        }
        NodeOptions {
            binary: self.options.binary.clone(),
            shards: self.options.shards,
            args,
            log: self.options.log.clone(),
            data_dir: Some(self.data.path().to_owned()),
            node_id: Some(format!("node-{i}")),
            nats: self.nats.as_ref().map(LocalNats::url),
        }
    }

    /// Starts one more node, `node-{len}`, and waits until it has joined;
    /// returns its index.
    pub fn add_node(&mut self) -> Result<usize, LocalError> {
        let i = self.nodes.len();
        if self.nats.is_none() && i > 0 {
            return Err(LocalError::NeedsNats(i + 1));
        }
        let node = LocalNode::start(self.node_options(i))?;
        self.nodes.push(node);
        self.wait_joined(JOIN_WITHIN)?;
        Ok(i)
    }

    /// Waits until every running node has subscribed to its subject on NATS.
    /// A node answers clients before its NATS connection is up, and what is
    /// published to it before it subscribed never reaches it: so a cluster
    /// is ready once every node is subscribed, and after NATS restarts the
    /// nodes are back once this returns.
    pub fn wait_joined(&self, within: Duration) -> Result<(), LocalError> {
        let Some(nats) = &self.nats else {
            return Ok(());
        };
        let started = Instant::now();
        loop {
            let subscribed = nats.subscriptions().unwrap_or_default();
            let missing = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .find(|n| !subscribed.contains(&node_subject(n.node_id())));
            let Some(node) = missing else {
                return Ok(());
            };
            if started.elapsed() > within {
                return Err(LocalError::NotJoined {
                    node: node.node_id().to_owned(),
                    secs: within.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The NATS server; panics for a cluster started `without_nats`.
    pub fn nats(&self) -> &LocalNats {
        self.nats.as_ref().expect("cluster started without NATS")
    }

    pub fn nats_mut(&mut self) -> &mut LocalNats {
        self.nats.as_mut().expect("cluster started without NATS")
    }

    /// Node `i`; panics when there is no such node.
    pub fn node(&self, i: usize) -> &LocalNode {
        &self.nodes[i]
    }

    /// Node `i`, to kill or restart it; panics when there is no such node.
    pub fn node_mut(&mut self, i: usize) -> &mut LocalNode {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client address, by index.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Every node's metrics address, by index.
    pub fn metrics_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.metrics_addr).collect()
    }

    /// The balancer in front of the nodes, when `ClusterOptions::balancer`
    /// asked for one.
    pub fn balancer(&self) -> Option<&LocalBalancer> {
        self.balancer.as_ref()
    }

    pub fn balancer_mut(&mut self) -> Option<&mut LocalBalancer> {
        self.balancer.as_mut()
    }

    /// The data directory every node shares.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// A crash of node `i` and its restart: SIGKILL, then the same binary
    /// on the same ports with the same node id and the shared data
    /// directory; returns once it serves and has joined NATS again. (At
    /// start a node releases the claims it held, so its users can log in
    /// again at once.) Panics when there is no such node.
    pub fn kill9_and_restart_node(&mut self, i: usize) -> Result<(), LocalError> {
        self.nodes[i].kill9_and_restart()?;
        self.wait_joined(JOIN_WITHIN)
    }

    /// Pauses node `i` with SIGSTOP (see [`LocalNode::stop`]); panics when
    /// there is no such node.
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Resumes node `i` after [`LocalCluster::stop_node`] (SIGCONT).
    pub fn continue_node(&mut self, i: usize) {
        self.nodes[i].cont();
    }

    /// Restarts `nats-server` on the same port (SIGKILL, then a new process)
    /// and waits until every running node has subscribed again. Panics for
    /// a cluster started `without_nats`.
    pub fn restart_nats(&mut self) -> Result<(), LocalError> {
        self.nats_mut().restart()?;
        self.wait_joined(JOIN_WITHIN)
    }

    /// Restarts the balancer on the same ports (SIGKILL, then a new process
    /// with the same upstreams: every connection through it breaks) and
    /// waits until it serves. Does nothing without a balancer.
    pub fn restart_balancer(&mut self) -> Result<(), LocalError> {
        match &mut self.balancer {
            Some(b) => b.restart(),
            None => Ok(()),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(b) = &mut self.balancer {
            b.kill9();
        }
        for node in &mut self.nodes {
            node.kill9();
        }
        if let Some(nats) = &mut self.nats {
            nats.kill9();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The faults of `chat-loadtest --chaos`, on real processes (the
    //! binaries must be built: `cargo build --workspace`).

    use super::*;
    use crate::node::answers_ping;

    #[test]
    fn every_fault_leaves_the_cluster_serving_on_the_same_addresses() {
        let mut c = LocalCluster::start(ClusterOptions {
            nodes: 2,
            lease_ttl: Duration::from_secs(3),
            balancer: Some(BalancerOptions {
                log: "warn".into(),
                threads: 1,
                ..BalancerOptions::default()
            }),
            ..ClusterOptions::default()
        })
        .unwrap();
        let addrs = c.addrs();
        let balancer = c.balancer().unwrap().addr;

        let pid = c.node(0).pid();
        c.kill9_and_restart_node(0).unwrap();
        assert_ne!(c.node(0).pid(), pid, "a new process");
        assert_eq!(c.addrs(), addrs, "on the same ports");
        assert!(answers_ping(addrs[0], false));

        c.stop_node(1);
        assert!(
            !answers_ping(addrs[1], false),
            "a stopped node answers nothing"
        );
        c.continue_node(1);
        assert!(answers_ping(addrs[1], false));

        let nats = c.nats().addr();
        c.restart_nats().unwrap();
        assert_eq!(c.nats().addr(), nats);

        let pid = c.balancer().unwrap().pid();
        c.restart_balancer().unwrap();
        let b = c.balancer().unwrap();
        assert_ne!(b.pid(), pid);
        assert_eq!(b.addr, balancer);
        assert!(b.is_running());
    }
}
