//! The `chat-node` binary: parses settings, runs a node until SIGTERM/SIGINT.

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CHAT_NODE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = chat_node::config::Args::parse().resolve()?;
    let node = chat_node::node::Node::start(config)?;
    let stopper = node.stopper();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "stopping: no new connections, flushing sessions");
            stopper.stop();
        }
    });
    node.wait();
    Ok(())
}
