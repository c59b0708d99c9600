//! `chat-node`: the chat server.
//!
//! A node is a set of glommio shards (one per core) that accept on the same
//! port, plus one store thread:
//!
//! ```text
//!  client ──TCP──▶ shard (session: decode → service → encode) ──▶ client
//!                    │  requests that touch state            ▲ pushes
//!                    ▼                                        │
//!                 store writer thread ── commit (group) ──▶ router of the
//!                 (sequencer: one order        recipient's home shard ──mesh──▶
//!                  for every message)          shard holding the session
//! ```
//!
//! - `protocol` decodes both wire protocols into `command` and encodes back;
//! - `service` holds the one set of handlers;
//! - `store` is the durable state behind the `Store` trait.

pub mod admission;
pub mod bus;
pub mod command;
pub mod config;
pub mod load;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod password;
pub mod protocol;
pub mod router;
pub mod service;
pub mod session;
pub mod shard;
pub mod store;
