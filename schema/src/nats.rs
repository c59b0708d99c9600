//! The NATS subjects of a cluster, shared by the node (which subscribes to
//! its own subject and publishes to its peers') and by whatever watches a
//! cluster from outside (the local-cluster harness in `chat-testkit` waits
//! until every node has subscribed).
//!
//! One subject per node, `chat.node.<node-id>`, which only that node
//! subscribes to; `node/src/bus.rs` says why.

/// The prefix of every node's subject.
pub const NODE_SUBJECT_PREFIX: &str = "chat.node.";

/// The subject node `node` listens on: `chat.node.<node>`.
pub fn node_subject(node: &str) -> String {
    format!("{NODE_SUBJECT_PREFIX}{node}")
}

#[cfg(test)]
mod tests {
    use super::node_subject;

    #[test]
    fn one_subject_per_node() {
        assert_eq!(node_subject("n-1_a"), "chat.node.n-1_a");
    }
}
