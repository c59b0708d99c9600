//! Logging for every binary: `tracing` to stderr, filtered by the binary's
//! own variable (`CHAT_NODE_LOG=debug`, `CHAT_BALANCER_LOG=warn,chat_balancer=debug`),
//! `info` when it is unset.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; call once, first thing in `main`.
pub fn init(variable: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(variable).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
