//! Every metric name the node exports, declared once (the model is sozu's
//! `metrics/names.rs`): the code that records a metric and `metrics`'s
//! `describe()` and `zero()` use these constants, never a literal, so a name
//! is spelled in one place. A leaf module: it imports nothing from the crate,
//! so any module may use it without an import cycle.
//!
//! Each line says the metric's type and labels; `metrics::describe` holds
//! the help text Prometheus shows. `docs/monitoring.md` documents them.

/// Gauge, by `shard`, `protocol`: open client connections.
pub const CONNECTIONS: &str = "chat_node_connections";
/// Counter, by `protocol`: client connections accepted.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "chat_node_connections_accepted_total";
/// Counter, by `reason`: client connections closed.
pub const CONNECTIONS_CLOSED_TOTAL: &str = "chat_node_connections_closed_total";
/// Counter, by `reason`: connections refused (answered `Overloaded`, then closed).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "chat_node_connections_refused_total";
/// Counter: connections that came with an accepted PROXY header.
pub const PROXIED_CONNECTIONS_TOTAL: &str = "chat_node_proxied_connections_total";
/// Counter: connections refused for a missing or bad PROXY header.
pub const PROXY_HEADER_ERRORS_TOTAL: &str = "chat_node_proxy_header_errors_total";
/// Counter: failed accepts.
pub const ACCEPT_ERRORS_TOTAL: &str = "chat_node_accept_errors_total";
/// Counter: clients disconnected because their outbound queue overflowed.
pub const SLOW_CONSUMER_DISCONNECTS_TOTAL: &str = "chat_node_slow_consumer_disconnects_total";
/// Counter, by `kind`, `outcome`: requests handled.
pub const REQUESTS_TOTAL: &str = "chat_node_requests_total";
/// Histogram, by `kind`: time from decoding a request to queueing its reply.
pub const REQUEST_DURATION_SECONDS: &str = "chat_node_request_duration_seconds";
/// Counter, by `protocol`, `code`: undecodable or invalid input.
pub const BAD_INPUT_TOTAL: &str = "chat_node_bad_input_total";
/// Counter, by `reason`: requests refused before anything was stored.
pub const REFUSED_TOTAL: &str = "chat_node_refused_total";
/// Counter: successful logins.
pub const LOGINS_TOTAL: &str = "chat_node_logins_total";
/// Counter: chat messages stored.
pub const MESSAGES_STORED_TOTAL: &str = "chat_node_messages_stored_total";
/// Counter, by `kind`: chat messages pushed to clients.
pub const MESSAGES_DELIVERED_TOTAL: &str = "chat_node_messages_delivered_total";
/// Histogram, by `kind`: time from a message's commit to its push being queued.
pub const DELIVERY_LATENCY_SECONDS: &str = "chat_node_delivery_latency_seconds";
/// Counter: acknowledged messages deleted by compaction.
pub const MESSAGES_COMPACTED_TOTAL: &str = "chat_node_messages_compacted_total";
/// Gauge: stored deliveries not yet acknowledged by their recipient.
pub const PENDING_MESSAGES: &str = "chat_node_pending_messages";
/// Counter, by `op`: operations run by the store thread.
pub const STORE_OPS_TOTAL: &str = "chat_node_store_ops_total";
/// Counter: failed store commits and maintenance runs.
pub const STORE_ERRORS_TOTAL: &str = "chat_node_store_errors_total";
/// Histogram: operations per group commit.
pub const STORE_BATCH_OPS: &str = "chat_node_store_batch_ops";
/// Histogram: time to run and commit one batch.
pub const STORE_COMMIT_SECONDS: &str = "chat_node_store_commit_seconds";
/// Histogram, by `shard`: how late a 10 ms timer fires on each shard.
pub const EVENT_LOOP_LAG_SECONDS: &str = "chat_node_event_loop_lag_seconds";
/// Counter: times this node found its lease had run out before it renewed it.
pub const LEASE_LAPSES_TOTAL: &str = "chat_node_lease_lapses_total";
/// Counter: expired leases of crashed nodes this node reaped.
pub const EXPIRED_LEASES_TOTAL: &str = "chat_node_expired_leases_total";
/// Gauge: 1 while connected to NATS, 0 while not.
pub const NATS_CONNECTED: &str = "chat_node_nats_connected";
/// Counter: envelopes published to other nodes.
pub const NATS_PUBLISHED_TOTAL: &str = "chat_node_nats_published_total";
/// Counter: envelopes received from other nodes.
pub const NATS_RECEIVED_TOTAL: &str = "chat_node_nats_received_total";
/// Counter: envelopes dropped because NATS did not take them.
pub const NATS_DROPPED_TOTAL: &str = "chat_node_nats_dropped_total";
/// Counter: undecodable envelopes on this node's subject.
pub const NATS_BAD_MESSAGES_TOTAL: &str = "chat_node_nats_bad_messages_total";
/// Counter, by `reason`: gaps in another node's envelope sequence.
pub const NATS_GAPS_TOTAL: &str = "chat_node_nats_gaps_total";
/// Counter: reads of the store to recover from a gap.
pub const RESYNCS_TOTAL: &str = "chat_node_resyncs_total";
/// Histogram: time from publishing an envelope to another node to its receipt there.
pub const NATS_LATENCY_SECONDS: &str = "chat_node_nats_latency_seconds";
/// Gauge, by `shard`: bytes queued for clients and not yet written.
pub const OUTBOUND_BYTES: &str = "chat_node_outbound_bytes";
/// Gauge, by `shard`: share of the last second each shard's executor was busy.
pub const SHARD_BUSY_RATIO: &str = "chat_node_shard_busy_ratio";
/// Gauge: 1 while the node drains, else 0.
pub const DRAINING: &str = "chat_node_draining";
