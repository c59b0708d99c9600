//! The ScyllaDB backend (to be written).

use std::time::Duration;

/// How to reach and shape the ScyllaDB keyspace.
#[derive(Debug, Clone)]
pub struct ScyllaOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// `3` (SimpleStrategy) or `dc1:3,dc2:3` (NetworkTopologyStrategy).
    pub replication: String,
    /// one, quorum, local_quorum, all, ...
    pub consistency: String,
    /// Table TTL of messages.
    pub message_ttl: Duration,
    /// Create the keyspace and tables if missing before serving.
    pub init_schema: bool,
}
