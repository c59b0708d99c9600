//! What a node reports of its load: the content of a `LoadReply` (and of
//! JSON msgid 21), which the node builds from its shards' counters and
//! clients and the balancer's probe read back.

/// A node's answer to a load probe.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub node_id: String,
    /// Where clients reach the node.
    pub address: String,
    pub connections: u32,
    pub capacity: u32,
    /// Per shard, the fraction of the last second spent running tasks.
    pub shard_busy: Vec<f32>,
    pub outbound_bytes: u64,
    pub draining: bool,
}
