//! The `chat-node` binary: parses settings, runs a node until SIGTERM/SIGINT.
//! SIGUSR1 makes it drain (balancers send it no new connections), SIGUSR2
//! ends draining.

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

fn main() -> anyhow::Result<()> {
    chat_ops::logs::init("CHAT_NODE_LOG");
    let config = chat_node::config::Args::parse().resolve()?;
    let node = chat_node::node::Node::start(config)?;
    let stopper = node.stopper();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGUSR2])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            match signal {
                SIGUSR1 => stopper.drain(true),
                SIGUSR2 => stopper.drain(false),
                _ => {
                    tracing::info!(signal, "stopping: no new connections, flushing sessions");
                    stopper.stop();
                    break;
                }
            }
        }
    });
    node.wait();
    Ok(())
}
