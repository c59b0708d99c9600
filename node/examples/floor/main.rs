//! A yardstick for the node's message path: the same exchange with a client
//! (FlatBuffers frames decoded and encoded by `chat_node::protocol`; a
//! direct message answered to its sender and pushed to its recipient, a
//! group message to every other member; quiet acknowledgements read and
//! dropped) on one thread, with the least machinery around it. With
//! `--store DIR` each message is also appended to the node's SQLite store,
//! one commit per round before anything is written (the node's group
//! commit, and its promise: committed before the sender hears of it);
//! without it nothing is stored. Two drivers run the same exchange
//! (`exchange.rs`):
//! - `--runtime epoll` (`epoll.rs`): one `mio` poll; each wake-up reads every
//!   ready socket, commits once, writes every connection once;
//! - `--runtime tokio` (`tokio.rs`): a current-thread tokio runtime, one task
//!   per connection owning its socket and a flush task that commits and
//!   wakes the connections with bytes to write, as the node's connections
//!   and its writer on the shard do (on tokio too since 2026-12-03).
//!
//! It is not a chat server: any password logs in, users live in memory,
//! every request but register, login, logout, add friend (not remembered),
//! create and join group, direct and group message, delivery
//! acknowledgement and ping is refused, a client that stops reading makes it
//! buffer without limit. It only answers "what does this machine charge for
//! the exchange itself, and what does a runtime add?", beside the node,
//! under the same load generator (`scripts/bench-floor.sh`,
//! `docs/benchmarks.md`, "The floor"):
//!
//! ```text
//! cargo build --release -p chat-node --example floor
//! target/release/examples/floor --listen 127.0.0.1:7000 --metrics-listen 127.0.0.1:7001 [--store /tmp/floor] [--runtime tokio]
//! chat-loadtest --target 127.0.0.1:7000 --server-metrics http://127.0.0.1:7001/metrics \
//!     --protocol fb --users 100 --rate 5000 --duration 8s --warmup 2s
//! ```

mod epoll;
mod exchange;
mod tokio;

use std::net::SocketAddr;
use std::path::PathBuf;

use chat_node::store::sqlite::{SqliteStore, SyncPolicy};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "The node's message exchange on one thread, with or without its store")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7001")]
    metrics_listen: SocketAddr,
    /// Append every message to a SQLite store in this directory (the node's
    /// own, `--sync normal`), one commit per round.
    #[arg(long)]
    store: Option<PathBuf>,
    /// What drives the sockets.
    #[arg(long, value_enum, default_value = "epoll")]
    runtime: Runtime,
}

#[derive(Clone, Copy, ValueEnum)]
enum Runtime {
    Epoll,
    Tokio,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    chat_node::metrics::serve(
        chat_node::metrics::bind(args.metrics_listen)?,
        chat_node::metrics::install(),
    );
    let store = match &args.store {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(SqliteStore::open(&dir.join("chat.db"), SyncPolicy::Normal)?)
        }
        None => None,
    };
    let floor = exchange::Floor::new(store);
    match args.runtime {
        Runtime::Epoll => epoll::run(args.listen, floor),
        Runtime::Tokio => tokio::run(args.listen, floor),
    }
}
