//! Every metric name the balancer exports, declared once (the model is
//! sozu's `metrics/names.rs`): the code that records a metric and `admin`'s
//! `describe()` use these constants, never a literal. A leaf module: it
//! imports nothing from the crate.
//!
//! Each line says the metric's type and labels; `admin::describe` holds the
//! help text Prometheus shows.

/// Counter: client connections accepted (proxy mode).
pub const ACCEPTED_TOTAL: &str = "chat_balancer_accepted_total";
/// Counter: failed accepts.
pub const ACCEPT_ERRORS_TOTAL: &str = "chat_balancer_accept_errors_total";
/// Counter, by `end`: relayed connections ended.
pub const CLOSED_TOTAL: &str = "chat_balancer_closed_total";
/// Counter: client connections closed because no node accepted.
pub const NO_UPSTREAM_TOTAL: &str = "chat_balancer_no_upstream_total";
/// Counter: client connections closed at once because no node was available.
pub const FAIL_FAST_TOTAL: &str = "chat_balancer_fail_fast_total";
/// Gauge, by `upstream`: open relayed connections.
pub const OPEN_CONNECTIONS: &str = "chat_balancer_open_connections";
/// Histogram, by `upstream`: time to connect to a node.
pub const CONNECT_SECONDS: &str = "chat_balancer_connect_seconds";
/// Counter, by `upstream`: failed connects to a node.
pub const CONNECT_FAILURES_TOTAL: &str = "chat_balancer_connect_failures_total";
/// Counter, by `upstream`: connections (and redirects) sent to a node.
pub const PICKS_TOTAL: &str = "chat_balancer_picks_total";
/// Counter: picks made with every node unavailable (`--panic`).
pub const PANIC_TOTAL: &str = "chat_balancer_panic_total";
/// Counter: picks made without fresh load reports.
pub const FALLBACK_PICKS_TOTAL: &str = "chat_balancer_fallback_picks_total";
/// Counter, by `upstream`: failed load probes.
pub const PROBE_FAILURES_TOTAL: &str = "chat_balancer_probe_failures_total";
/// Gauge, by `upstream`, `reason`: 1 while a node gets no new connections.
pub const UPSTREAM_DOWN: &str = "chat_balancer_upstream_down";
/// Gauge, by `upstream`, `override`: runtime overrides from the admin API.
pub const UPSTREAM_OVERRIDE: &str = "chat_balancer_upstream_override";
/// Gauge, by `upstream`: age of a node's last load report.
pub const REPORT_AGE_SECONDS: &str = "chat_balancer_report_age_seconds";
/// Gauge, by `upstream`: open connections in a node's last report.
pub const REPORTED_CONNECTIONS: &str = "chat_balancer_reported_connections";
/// Gauge, by `upstream`: capacity in a node's last report.
pub const REPORTED_CAPACITY: &str = "chat_balancer_reported_capacity";
/// Gauge, by `upstream`: mean executor busy fraction in a node's last report.
pub const REPORTED_BUSY_RATIO: &str = "chat_balancer_reported_busy_ratio";
/// Gauge, by `upstream`: queued outbound bytes in a node's last report.
pub const REPORTED_OUTBOUND_BYTES: &str = "chat_balancer_reported_outbound_bytes";
/// Histogram: redirect mode: time from a whole request frame to its reply written (buckets from 5 µs).
pub const REDIRECT_ANSWER_SECONDS: &str = "chat_balancer_redirect_answer_seconds";
/// Counter, by `upstream`: redirect-mode answers.
pub const REDIRECTS_TOTAL: &str = "chat_balancer_redirects_total";
/// Counter, by `port`: garbage from clients.
pub const BAD_INPUT_TOTAL: &str = "chat_balancer_bad_input_total";
/// Counter, by `result`: configuration reloads.
pub const RELOADS_TOTAL: &str = "chat_balancer_reloads_total";
/// Counter: access log lines that could not be written.
pub const ACCESS_LOG_ERRORS_TOTAL: &str = "chat_balancer_access_log_errors_total";
