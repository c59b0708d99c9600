//! Logging for every binary: `tracing` to stderr, filtered by the binary's
//! own variable (`CHAT_NODE_LOG=debug`, `CHAT_BALANCER_LOG=warn,chat_balancer=debug`),
//! `info` when it is unset (the load tester: `warn`, its output is the report).

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; call once, first thing in `main`.
pub fn init(variable: &str) {
    init_or(variable, "info");
}

/// [`init`], with `default` as the filter when `variable` is unset.
pub fn init_or(variable: &str, default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(variable).unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}
