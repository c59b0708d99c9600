//! Why a local process or cluster could not be started: each error names
//! what is missing or what went wrong, and how to fix it when the fix is
//! on the caller's side (build the binaries, install a server).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Why a local node, NATS server, balancer, Prometheus or cluster could not
/// be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "{} not found: binaries are looked for next to the running executable (and one directory up), and none is built from here; build them all first with `cargo build --workspace` (`cargo build --release` for target/release; `scripts/test.sh` does this before running the tests), or set {env} to the binary", path.display()
    )]
    NoBinary {
        /// Where the binary was expected.
        path: PathBuf,
        /// The variable that names it instead.
        env: String,
    },
    #[error(
        "nats-server not found ({0}); install it with `apt-get install -y nats-server` or set CHAT_NATS_SERVER_BIN"
    )]
    NoNatsServer(String),
    #[error(
        "prometheus not found (looked on $PATH and in /usr/bin); install it with `apt-get install -y prometheus` or set CHAT_PROMETHEUS_BIN"
    )]
    NoPrometheus,
    #[error("prometheus did not become ready (exit status: {status:?}); its log:\n{log}")]
    PrometheusNotReady {
        log: String,
        status: Option<ExitStatus>,
    },
    #[error("{0} nodes need NATS to deliver between them; a cluster without NATS has one node")]
    NeedsNats(usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "chat-node did not accept connections on {addr} within {secs} s (exit status: {status:?})"
    )]
    NotReady {
        addr: SocketAddr,
        secs: u64,
        status: Option<ExitStatus>,
    },
    #[error(
        "nats-server did not accept connections on {addr} within {secs} s (exit status: {status:?})"
    )]
    NatsNotReady {
        addr: SocketAddr,
        secs: u64,
        status: Option<ExitStatus>,
    },
    #[error("node {node} did not subscribe to its NATS subject within {secs} s")]
    NotJoined { node: String, secs: u64 },
}

impl LocalError {
    /// A process that exited before it was ready (typically: its port is
    /// still taken by the process it replaces).
    pub fn exited_before_ready(&self) -> bool {
        matches!(
            self,
            LocalError::NotReady {
                status: Some(_),
                ..
            } | LocalError::NatsNotReady {
                status: Some(_),
                ..
            }
        )
    }
}
