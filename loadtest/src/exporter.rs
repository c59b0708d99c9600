//! The load tester's own Prometheus endpoint (`--metrics-listen`, default
//! 127.0.0.1:9400), so that a long run can be watched next to the cluster it
//! loads. Each second's [`LiveSecond`] is copied into `metrics` counters,
//! gauges and latency histograms; `/metrics` renders them. With `--local`
//! or `--server-metrics`, the servers' CPU and memory, and their cost per
//! delivered message and per connection, are gauges too.

use std::net::{SocketAddr, TcpListener};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::Matcher;

use crate::outcome::Series;
use crate::run::{LiveSecond, LiveUsage};

/// Latency buckets in seconds: 50 µs to 60 s.
const SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the recorder and serves `/metrics` on `addr` from a thread.
pub fn start(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = chat_ops::exporter::install(&[(Matcher::Suffix("_seconds".into()), SECONDS)])?;
    describe();
    let listener =
        TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    chat_ops::http::serve(listener, "metrics", move |path| match path {
        "/metrics" => chat_ops::exporter::page(&handle),
        _ => chat_ops::http::Response::not_found("try /metrics"),
    })?;
    Ok(bound)
}

fn describe() {
    describe_gauge!(
        "chat_loadtest_connections",
        "Connections of virtual users now open"
    );
    describe_gauge!(
        "chat_loadtest_offered_rate",
        "Actions per second the schedule asks for now"
    );
    describe_gauge!(
        "chat_loadtest_achieved_rate",
        "Sends acknowledged per second in the last second"
    );
    describe_gauge!("chat_loadtest_stage", "0 setup, 1 traffic, 2 drain, 3 done");
    describe_counter!(
        "chat_loadtest_sent_total",
        "Chat messages written to a socket"
    );
    describe_counter!(
        "chat_loadtest_acked_total",
        "Chat messages the server acknowledged"
    );
    describe_counter!(
        "chat_loadtest_send_failed_total",
        "Sends answered with an error or not at all"
    );
    describe_counter!(
        "chat_loadtest_expected_total",
        "Receipts due (one per recipient of each message sent)"
    );
    describe_counter!(
        "chat_loadtest_delivered_total",
        "Receipts that came, each counted once"
    );
    describe_gauge!(
        "chat_loadtest_pending",
        "Receipts due that have not come yet (lost if they never do)"
    );
    describe_counter!(
        "chat_loadtest_duplicated_total",
        "Messages received twice under different server ids"
    );
    describe_counter!(
        "chat_loadtest_out_of_order_total",
        "Messages received after a later one of the same stream"
    );
    describe_counter!(
        "chat_loadtest_redelivered_total",
        "Messages received again under a server id already seen (at-least-once, dropped by id)"
    );
    describe_counter!(
        "chat_loadtest_delivered_live_total",
        "Receipts pushed on a connection"
    );
    describe_counter!(
        "chat_loadtest_delivered_at_login_total",
        "Receipts pending in the reply to a first login or a relogin"
    );
    describe_counter!(
        "chat_loadtest_delivered_after_reconnect_total",
        "Receipts pending in the login reply of a reconnection (--reconnect)"
    );
    describe_counter!(
        "chat_loadtest_disconnects_total",
        "Connections that closed while the run went on"
    );
    describe_counter!(
        "chat_loadtest_reconnects_total",
        "Users connected and logged in again after a drop (--reconnect)"
    );
    describe_counter!(
        "chat_loadtest_not_connected_total",
        "Actions skipped because their user was between a drop and its re-login (--reconnect)"
    );
    describe_counter!(
        "chat_loadtest_late_total",
        "Actions the generator started late (its own bottleneck)"
    );
    describe_counter!("chat_loadtest_errors_total", "Errors of every kind");
    describe_counter!(
        "chat_loadtest_history_requests_total",
        "HistoryRequests sent (one per page asked for)"
    );
    describe_counter!(
        "chat_loadtest_history_pages_total",
        "HistoryRequests answered with a page"
    );
    describe_counter!(
        "chat_loadtest_history_failed_total",
        "HistoryRequests answered with an error or not at all"
    );
    describe_counter!(
        "chat_loadtest_history_messages_total",
        "Messages in the history pages received"
    );
    describe_counter!(
        "chat_loadtest_mark_read_requests_total",
        "MarkReadRequests sent"
    );
    describe_counter!(
        "chat_loadtest_marked_read_total",
        "MarkReadRequests the server accepted"
    );
    describe_counter!(
        "chat_loadtest_mark_read_failed_total",
        "MarkReadRequests answered with an error or not at all"
    );
    describe_gauge!(
        "chat_loadtest_server_cpu_seconds",
        metrics::Unit::Seconds,
        "CPU time of the servers under test (process=nodes: the nodes or --server-metrics endpoints summed; process=balancer: --local's balancer)"
    );
    describe_gauge!(
        "chat_loadtest_server_resident_memory_bytes",
        metrics::Unit::Bytes,
        "Resident memory of the servers under test"
    );
    describe_gauge!(
        "chat_loadtest_server_cpu_seconds_per_delivered",
        metrics::Unit::Seconds,
        "Servers' CPU time in the last second per message delivered in it"
    );
    describe_gauge!(
        "chat_loadtest_server_memory_per_connection_bytes",
        metrics::Unit::Bytes,
        "Servers' resident memory gained since before the users connected, per connection open"
    );
    describe_histogram!(
        "chat_loadtest_latency_seconds",
        metrics::Unit::Seconds,
        "Latency by metric (connect, register, login, send_ack, delivery, history, mark_read) and correction"
    );
}

/// Copies one second into the metrics.
pub fn publish(s: &LiveSecond) {
    let c = &s.counters;
    gauge!("chat_loadtest_connections").set(s.connections as f64);
    gauge!("chat_loadtest_offered_rate").set(s.offered_per_s);
    gauge!("chat_loadtest_achieved_rate").set(s.acked_per_s);
    gauge!("chat_loadtest_stage").set(s.stage as u8 as f64);
    counter!("chat_loadtest_sent_total").absolute(c.sent);
    counter!("chat_loadtest_acked_total").absolute(c.acked);
    counter!("chat_loadtest_send_failed_total").absolute(c.send_failed);
    counter!("chat_loadtest_expected_total").absolute(c.expected);
    counter!("chat_loadtest_delivered_total").absolute(c.delivered);
    gauge!("chat_loadtest_pending").set(c.expected.saturating_sub(c.delivered) as f64);
    counter!("chat_loadtest_duplicated_total").absolute(c.duplicated);
    counter!("chat_loadtest_out_of_order_total").absolute(c.out_of_order);
    counter!("chat_loadtest_redelivered_total").absolute(c.redelivered);
    counter!("chat_loadtest_delivered_live_total").absolute(c.delivered_live);
    counter!("chat_loadtest_delivered_at_login_total").absolute(c.delivered_at_login);
    counter!("chat_loadtest_delivered_after_reconnect_total").absolute(c.delivered_after_reconnect);
    counter!("chat_loadtest_disconnects_total").absolute(c.disconnects);
    counter!("chat_loadtest_reconnects_total").absolute(c.reconnects);
    counter!("chat_loadtest_not_connected_total").absolute(c.not_connected);
    counter!("chat_loadtest_late_total").absolute(c.late);
    counter!("chat_loadtest_errors_total").increment(s.errors);
    counter!("chat_loadtest_history_requests_total").absolute(c.history_requests);
    counter!("chat_loadtest_history_pages_total").absolute(c.history_pages);
    counter!("chat_loadtest_history_failed_total").absolute(c.history_failed);
    counter!("chat_loadtest_history_messages_total").absolute(c.history_messages);
    counter!("chat_loadtest_mark_read_requests_total").absolute(c.mark_read_requests);
    counter!("chat_loadtest_marked_read_total").absolute(c.marked_read);
    counter!("chat_loadtest_mark_read_failed_total").absolute(c.mark_read_failed);
    for (series, h) in &s.second.histograms {
        record_histogram(*series, h);
    }
    if let Some(server) = &s.server {
        publish_server("nodes", &server.nodes);
        if let Some(b) = &server.balancer {
            publish_server("balancer", b);
        }
    }
}

/// One group of server processes, labelled `process`.
fn publish_server(process: &'static str, u: &LiveUsage) {
    gauge!("chat_loadtest_server_cpu_seconds", "process" => process).set(u.usage.cpu_seconds);
    gauge!("chat_loadtest_server_resident_memory_bytes", "process" => process)
        .set(u.usage.rss_bytes as f64);
    if let Some(v) = u.cpu_seconds_per_delivered {
        gauge!("chat_loadtest_server_cpu_seconds_per_delivered", "process" => process).set(v);
    }
    if let Some(v) = u.rss_bytes_per_connection {
        gauge!("chat_loadtest_server_memory_per_connection_bytes", "process" => process).set(v);
    }
}

fn record_histogram(series: Series, h: &hdrhistogram::Histogram<u64>) {
    let out = histogram!(
        "chat_loadtest_latency_seconds",
        "metric" => series.metric.name(),
        "correction" => series.correction.name()
    );
    for v in h.iter_recorded() {
        out.record_many(
            v.value_iterated_to() as f64 / 1e6,
            v.count_at_value() as usize,
        );
    }
}
