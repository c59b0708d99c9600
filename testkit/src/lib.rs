//! The local-cluster harness: the one piece of code that starts a local
//! cluster. Tests (`node/tests`, `balancer/tests`, `loadtest/tests`),
//! benchmarks and `chat-loadtest --local` all go through it, so a cluster
//! is started, waited for and torn down the same way everywhere.
//!
//! It starts real processes on free loopback ports — `chat-node`,
//! `nats-server`, `chat-balancer`, Prometheus — with temporary data
//! directories, waits until each really serves, and kills and cleans up
//! everything when its handle is dropped. It links none of the programs it
//! starts: the chat binaries are found next to the running executable (or
//! through `CHAT_NODE_BIN`, `CHAT_BALANCER_BIN`, `CHAT_BIN`), so they must
//! be built before it runs (`cargo build --workspace`; `scripts/test.sh`
//! builds everything before the tests), and what it shares with the node
//! (the PROXY header of its readiness ping, the NATS subjects) comes from
//! `chat-schema`.
//!
//! - [`node`]: [`LocalNode`], one node process, alone or in a cluster;
//! - [`nats`]: [`LocalNats`], a `nats-server` process the nodes meet on;
//! - [`cluster`]: [`LocalCluster`], N nodes on one NATS server and one shared
//!   data directory, optionally behind a balancer;
//! - [`balancer`]: [`LocalBalancer`], a `chat-balancer` in front of nodes;
//! - [`prometheus`]: [`LocalPrometheus`], a real Prometheus to query;
//! - [`scrape`](mod@scrape): reading a process's `/metrics` (and other plain HTTP GETs);
//! - [`process`]: free ports, finding binaries, waiting for readiness;
//! - [`relay`]: [`Relay`], a TCP relay whose connections a test cuts;
//! - [`error`]: [`LocalError`], why something could not be started.

pub mod balancer;
pub mod cluster;
pub mod error;
pub mod nats;
pub mod node;
pub mod process;
pub mod prometheus;
pub mod relay;
pub mod scrape;

pub use balancer::{BalancerOptions, LocalBalancer};
pub use cluster::{ClusterOptions, LocalCluster};
pub use error::LocalError;
pub use nats::LocalNats;
pub use node::{LocalNode, NodeOptions};
pub use process::{find_binary, free_port};
pub use prometheus::LocalPrometheus;
pub use relay::Relay;
pub use scrape::{http_get, metric_value, scrape};
