//! Prometheus metrics: the recorder every module reports to through the
//! `metrics` macros, and a small HTTP endpoint serving `/metrics` from a plain
//! thread (no shard's runtime serves it: a scrape must not wait behind a
//! busy shard, nor a shard behind a scrape).

use chat_ops::http::Response;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use chat_ops::exporter::ExporterError;
use metrics::{
    Counter, Histogram, Label, Unit, describe_counter, describe_gauge, describe_histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::metric_names;

/// Buckets for latencies in seconds: 25 µs to 10 s.
const SECONDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
];
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A metric's name and up to two label pairs, all static: the key of the
/// per-thread handle caches below.
pub type Labels = [(&'static str, &'static str)];

thread_local! {
    static COUNTERS: RefCell<HashMap<[usize; 3], Counter>> = RefCell::new(HashMap::new());
    static HISTOGRAMS: RefCell<HashMap<[usize; 3], Histogram>> = RefCell::new(HashMap::new());
}

/// Where a name and label values live: static strings are told apart by
/// address, so the cache never hashes or compares text.
fn cache_key(name: &'static str, labels: &Labels) -> [usize; 3] {
    debug_assert!(labels.len() <= 2, "at most two labels on a cached metric");
    let value = |i: usize| labels.get(i).map_or(0, |(_, v)| v.as_ptr() as usize);
    [name.as_ptr() as usize, value(0), value(1)]
}

fn owned(labels: &Labels) -> Vec<Label> {
    labels
        .iter()
        .map(|&(k, v)| Label::from_static_parts(k, v))
        .collect()
}

/// The counter `name{labels}`, looked up in the recorder once per thread.
///
/// For the metrics recorded per request, message or store op: a `counter!`
/// macro builds its key and looks it up in the recorder's registry on every
/// call (about 8 % of the node's CPU at 5 000 messages/s, by `perf`); a
/// cached handle is one map lookup by address and an atomic add.
pub fn counter(name: &'static str, labels: &Labels) -> Counter {
    COUNTERS.with(|cache| {
        cache
            .borrow_mut()
            .entry(cache_key(name, labels))
            .or_insert_with(|| metrics::counter!(name, owned(labels)))
            .clone()
    })
}

/// The histogram `name{labels}`, looked up once per thread (see [`counter`]).
pub fn histogram(name: &'static str, labels: &Labels) -> Histogram {
    HISTOGRAMS.with(|cache| {
        cache
            .borrow_mut()
            .entry(cache_key(name, labels))
            .or_insert_with(|| metrics::histogram!(name, owned(labels)))
            .clone()
    })
}

/// Installs the global recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                (Matcher::Suffix("_seconds".into()), SECONDS),
                (Matcher::Full(metric_names::STORE_BATCH_OPS.into()), BATCH),
            ];
            let handle = match chat_ops::exporter::install(&buckets) {
                Ok(handle) => handle,
                Err(ExporterError::AlreadyInstalled) => {
                    tracing::warn!("a metrics recorder was already installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
                Err(e) => panic!("static bucket lists are valid: {e}"),
            };
            describe();
            zero();
            handle
        })
        .clone()
}

/// Counters a dashboard or an alert reads exist from the start, at 0: a
/// series that appears only with its first event breaks `rate()` and looks
/// like a metric the node does not export.
fn zero() {
    for name in [
        metric_names::ACCEPT_ERRORS_TOTAL,
        metric_names::LOGINS_TOTAL,
        metric_names::MESSAGES_STORED_TOTAL,
        metric_names::MESSAGES_COMPACTED_TOTAL,
        metric_names::SLOW_CONSUMER_DISCONNECTS_TOTAL,
        metric_names::STORE_ERRORS_TOTAL,
        metric_names::LEASE_LAPSES_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in ["rate_limited", "mailbox_full", "limit_reached"] {
        metrics::counter!(metric_names::REFUSED_TOTAL, "reason" => reason).increment(0);
    }
    for reason in ["max_connections", "per_ip"] {
        metrics::counter!(metric_names::CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(0);
    }
    for kind in ["direct", "group"] {
        metrics::counter!(metric_names::MESSAGES_DELIVERED_TOTAL, "kind" => kind).increment(0);
    }
    for reason in crate::outbound::CloseReason::ALL {
        metrics::counter!(metric_names::CONNECTIONS_CLOSED_TOTAL, "reason" => reason.name())
            .increment(0);
    }
}

/// Why a gap in another node's envelopes was detected (the `reason` of
/// `chat_node_nats_gaps_total`).
pub const GAP_REASONS: [&str; 5] = [
    "sequence",
    "peer_restarted",
    "reconnect",
    "slow_consumer",
    "peer_silent",
];

/// The NATS counters, at 0 once the node joins a cluster (a node alone has
/// none).
pub fn zero_nats() {
    for name in [
        metric_names::NATS_PUBLISHED_TOTAL,
        metric_names::NATS_RECEIVED_TOTAL,
        metric_names::NATS_DROPPED_TOTAL,
        metric_names::NATS_BAD_MESSAGES_TOTAL,
        metric_names::RESYNCS_TOTAL,
        metric_names::EXPIRED_LEASES_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in GAP_REASONS {
        metrics::counter!(metric_names::NATS_GAPS_TOTAL, "reason" => reason).increment(0);
    }
}

fn describe() {
    describe_gauge!(metric_names::CONNECTIONS, "Open client connections.");
    describe_counter!(
        metric_names::CONNECTIONS_ACCEPTED_TOTAL,
        "Client connections accepted."
    );
    describe_counter!(
        metric_names::CONNECTIONS_CLOSED_TOTAL,
        "Client connections closed, by reason."
    );
    describe_counter!(
        metric_names::REQUESTS_TOTAL,
        "Requests handled, by kind and outcome."
    );
    describe_histogram!(
        metric_names::REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from decoding a request to queueing its reply."
    );
    describe_counter!(
        metric_names::BAD_INPUT_TOTAL,
        "Undecodable or invalid input, by protocol and error code."
    );
    describe_counter!(metric_names::MESSAGES_STORED_TOTAL, "Chat messages stored.");
    describe_counter!(
        metric_names::MESSAGES_DELIVERED_TOTAL,
        "Chat messages pushed to clients, by kind."
    );
    describe_counter!(
        metric_names::MESSAGES_COMPACTED_TOTAL,
        "Acknowledged messages deleted by compaction."
    );
    describe_gauge!(
        metric_names::PENDING_MESSAGES,
        "Stored deliveries not yet acknowledged by their recipient."
    );
    describe_counter!(
        metric_names::SLOW_CONSUMER_DISCONNECTS_TOTAL,
        "Clients disconnected because their outbound queue overflowed."
    );
    describe_counter!(metric_names::LOGINS_TOTAL, "Successful logins.");
    describe_counter!(
        metric_names::ACCEPT_ERRORS_TOTAL,
        "Failed accepts (usually out of file descriptors)."
    );
    describe_counter!(
        metric_names::STORE_OPS_TOTAL,
        "Operations run by the store thread, by op."
    );
    describe_counter!(
        metric_names::STORE_ERRORS_TOTAL,
        "Failed store commits and maintenance runs."
    );
    describe_histogram!(
        metric_names::STORE_BATCH_OPS,
        "Operations per group commit."
    );
    describe_histogram!(
        metric_names::EVENT_LOOP_LAG_SECONDS,
        Unit::Seconds,
        "How late a 10 ms timer fires on each shard: time an executor was kept from its tasks."
    );
    describe_histogram!(
        metric_names::STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Time to run and commit one batch."
    );
    describe_counter!(
        metric_names::LEASE_LAPSES_TOTAL,
        "Times this node found its lease had run out before it renewed it (a stall past --lease-ttl); it closed its sessions then."
    );
    describe_counter!(
        metric_names::REFUSED_TOTAL,
        "Requests refused before anything was stored, by reason: the sender over --send-rate (rate_limited), a direct message's recipient at --max-pending-per-user (mailbox_full), a friend, group or member limit (limit_reached)."
    );
    describe_counter!(
        metric_names::CONNECTIONS_REFUSED_TOTAL,
        "Connections refused (answered Overloaded, then closed), by reason: the node at --max-connections, or the client address at --max-connections-per-ip."
    );
    describe_counter!(
        metric_names::EXPIRED_LEASES_TOTAL,
        "Expired leases of crashed nodes this node reaped (their users set offline)."
    );
    describe_gauge!(
        metric_names::NATS_CONNECTED,
        "1 while connected to NATS, 0 while not (absent on a node without NATS)."
    );
    describe_counter!(
        metric_names::NATS_PUBLISHED_TOTAL,
        "Envelopes published to other nodes."
    );
    describe_counter!(
        metric_names::NATS_RECEIVED_TOTAL,
        "Envelopes received from other nodes."
    );
    describe_counter!(
        metric_names::NATS_DROPPED_TOTAL,
        "Envelopes dropped because NATS did not take them (recovered by gap detection)."
    );
    describe_counter!(
        metric_names::NATS_BAD_MESSAGES_TOTAL,
        "Undecodable envelopes on this node's subject."
    );
    describe_counter!(
        metric_names::NATS_GAPS_TOTAL,
        "Gaps in another node's envelope sequence, by reason (recovered from the store)."
    );
    describe_counter!(
        metric_names::RESYNCS_TOTAL,
        "Reads of the store to recover from a gap."
    );
    describe_gauge!(
        metric_names::OUTBOUND_BYTES,
        "Bytes queued for clients and not yet written, by shard."
    );
    describe_gauge!(
        metric_names::SHARD_BUSY_RATIO,
        "Share of the last second each shard's executor was busy."
    );
    describe_gauge!(
        metric_names::DRAINING,
        "1 while the node drains (refuses new sessions), else 0."
    );
    describe_counter!(
        metric_names::PROXIED_CONNECTIONS_TOTAL,
        "Connections that came with an accepted PROXY header (v1 or v2)."
    );
    describe_counter!(
        metric_names::PROXY_HEADER_ERRORS_TOTAL,
        "Connections refused for a missing or bad PROXY header (v1 or v2)."
    );
    describe_histogram!(
        metric_names::DELIVERY_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from a message's commit to its push being queued on the recipient's connection, by kind."
    );
    describe_histogram!(
        metric_names::NATS_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from publishing an envelope to another node to its receipt there (clocks must agree)."
    );
}

/// Serves `GET /metrics` on `listener` from a background thread.
pub fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let served = chat_ops::http::serve(listener, "metrics", move |path| match path {
        "/metrics" => chat_ops::exporter::page(&handle),
        _ => Response::not_found("see /metrics"),
    });
    served.expect("spawning the metrics thread");
}

/// Binds the metrics address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}
