//! `chat-node`: the chat server.
//!
//! A node is a set of shards (one per core, each a thread running a
//! current-thread tokio runtime) that accept on the same port, plus one
//! store thread:
//!
//! ```text
//!  client ──TCP──▶ shard (session: decode → service → encode) ──▶ client
//!                    │  requests that touch state            ▲ pushes
//!                    ▼                                        │
//!                 store writer thread ── commit (group) ──▶ router of the
//!                 (sequencer: one order        recipient's home shard ─inbox─▶
//!                  for every message)          shard holding the session
//! ```
//!
//! Imports flow one way (`scripts/import-cycles.sh` checks it; the map is
//! in `docs/architecture.md`): `node` starts `executor`s, each accepts
//! `connection`s (each on a `socket`), whose requests `service` handles on the `session` and
//! `shard` state; `router` applies the `engine`'s events to the shard; the
//! `engine` (the store thread) runs `Op`s against `store` and publishes on
//! the `bus`; `protocol` decodes both wire protocols into `command` and
//! encodes back. At the bottom, the vocabulary: `event` (what travels
//! between threads), `command`, `model` (the domain records), and `metric_names`
//! (every metric's name), which import nothing above them.

pub mod admission;
pub mod bus;
pub mod command;
pub mod config;
pub mod connection;
pub mod engine;
pub mod event;
pub mod executor;
pub mod load;
pub mod metric_names;
pub mod metrics;
pub mod model;
pub mod node;
pub mod outbound;
pub mod password;
pub mod protocol;
pub mod router;
pub mod service;
pub mod session;
pub mod shard;
pub mod socket;
pub mod store;
