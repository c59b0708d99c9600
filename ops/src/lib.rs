//! Plumbing shared by the project's binaries (`chat-node`, `chat-balancer`,
//! and the tools after them), so that each keeps only its own job:
//!
//! - [`settings`]: reading the optional TOML file behind `--config`;
//! - [`logs`]: `tracing` to stderr, filtered by the binary's `*_LOG`
//!   variable;
//! - [`http`]: a small HTTP/1.1 endpoint (hyper, on its own thread) for `/metrics` and status
//!   pages, off the executors that serve clients;
//! - [`listen`]: refusing a port another process listens on;
//! - [`source`]: connecting from a chosen source address;
//! - [`exporter`]: the Prometheus recorder and the `/metrics` page;
//! - [`process`]: the standard `process_*` metrics (CPU, memory, open files).

pub mod exporter;
pub mod http;
pub mod listen;
pub mod logs;
pub mod process;
pub mod settings;
pub mod source;
