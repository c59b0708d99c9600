//! The admin endpoint (`--admin-listen`): `/metrics` in Prometheus text,
//! `/status.json` and `/status` (HTML) listing every node, its state, weight,
//! last report and why it is down.
//!
//! Served from a plain thread (the executors run glommio, the exporter's own
//! listener needs tokio). Counters and histograms are recorded where things
//! happen (`pool`, `proxy`, `probe`, `redirect`); per-node gauges derived
//! from health (down, report age, reported load) are set from a pool
//! snapshot just before each render.

use chat_ops::http::Response;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusHandle};
use serde_json::{Value, json};

use crate::pool::{Pool, Snapshot};

/// Buckets for connect latency in seconds: 25 µs to 10 s.
const SECONDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Installs the global recorder and returns its handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = chat_ops::exporter::install(&[(Matcher::Suffix("_seconds".into()), SECONDS)])?;
    describe();
    for name in [
        "chat_balancer_accepted_total",
        "chat_balancer_accept_errors_total",
        "chat_balancer_no_upstream_total",
        "chat_balancer_panic_total",
        "chat_balancer_fallback_picks_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for end in crate::proxy::relay::End::ALL {
        metrics::counter!("chat_balancer_closed_total", "end" => end.name()).increment(0);
    }
    Ok(handle)
}

fn describe() {
    describe_counter!(
        "chat_balancer_accepted_total",
        "Client connections accepted (proxy mode)."
    );
    describe_counter!(
        "chat_balancer_picks_total",
        "Connections (and redirects) sent to each node."
    );
    describe_gauge!(
        "chat_balancer_open_connections",
        "Open relayed connections, by node."
    );
    describe_counter!(
        "chat_balancer_connect_failures_total",
        "Failed connects to each node."
    );
    describe_histogram!(
        "chat_balancer_connect_seconds",
        Unit::Seconds,
        "Time to connect to a node, by node."
    );
    describe_counter!(
        "chat_balancer_closed_total",
        "Relayed connections ended, by how."
    );
    describe_counter!(
        "chat_balancer_no_upstream_total",
        "Client connections closed because no node accepted."
    );
    describe_gauge!(
        "chat_balancer_upstream_down",
        "1 while a node gets no new connections, by reason."
    );
    describe_gauge!(
        "chat_balancer_report_age_seconds",
        "Age of each node's last load report (-1: none yet)."
    );
    describe_gauge!(
        "chat_balancer_reported_connections",
        "Open connections in each node's last report."
    );
    describe_gauge!(
        "chat_balancer_reported_capacity",
        "Capacity in each node's last report."
    );
    describe_gauge!(
        "chat_balancer_reported_busy_ratio",
        "Mean executor busy fraction in each node's last report."
    );
    describe_gauge!(
        "chat_balancer_reported_outbound_bytes",
        "Queued outbound bytes in each node's last report."
    );
    describe_counter!(
        "chat_balancer_probe_failures_total",
        "Failed load probes, by node."
    );
    describe_counter!(
        "chat_balancer_panic_total",
        "Picks made with every node unavailable (panic mode)."
    );
    describe_counter!(
        "chat_balancer_fallback_picks_total",
        "Picks made without fresh load reports (weight and own open connections)."
    );
    describe_counter!(
        "chat_balancer_reloads_total",
        "Configuration reloads, by result."
    );
    describe_counter!(
        "chat_balancer_redirects_total",
        "Redirect-mode answers, by node."
    );
    describe_counter!(
        "chat_balancer_bad_input_total",
        "Garbage from clients, by port."
    );
    describe_counter!(
        "chat_balancer_accept_errors_total",
        "Failed accepts (usually out of file descriptors)."
    );
}

/// Serves the admin endpoint on `listener` from a background thread.
pub fn serve(listener: TcpListener, handle: PrometheusHandle, pool: Arc<Pool>) {
    let served = chat_ops::http::serve(listener, "admin", move |path| match path {
        "/metrics" => {
            update_gauges(&pool);
            chat_ops::exporter::page(&handle)
        }
        "/status.json" => Response::ok(
            "application/json",
            serde_json::to_string_pretty(&status(&pool)).unwrap_or_default(),
        ),
        "/status" | "/" => Response::ok("text/html; charset=utf-8", html(&status(&pool))),
        _ => Response::not_found("see /metrics, /status, /status.json"),
    });
    served.expect("spawning the admin thread");
}

fn snapshots(pool: &Pool) -> Vec<(String, Snapshot)> {
    let max_age = pool.tuning().report_max_age;
    let now = Instant::now();
    pool.upstreams()
        .iter()
        .map(|u| (u.label.clone(), u.snapshot(now, max_age)))
        .collect()
}

fn update_gauges(pool: &Pool) {
    for (label, s) in snapshots(pool) {
        // Each node's counters exist from its first scrape on, at 0: a
        // series that appears only with its first event breaks `rate()`.
        for name in [
            "chat_balancer_picks_total",
            "chat_balancer_connect_failures_total",
            "chat_balancer_probe_failures_total",
        ] {
            metrics::counter!(name, "upstream" => label.clone()).increment(0);
        }
        for reason in [
            "configured_down",
            "draining",
            "probe_failed",
            "connect_failed",
            "max_conns",
        ] {
            let on = s.unavailable.as_ref().is_some_and(|u| u.name() == reason);
            metrics::gauge!("chat_balancer_upstream_down", "upstream" => label.clone(), "reason" => reason)
                .set(if on { 1.0 } else { 0.0 });
        }
        let (age, conns, cap, busy, outbound) = match &s.health.report {
            Some((r, at, _)) => (
                at.elapsed().as_secs_f64(),
                r.connections as f64,
                r.capacity as f64,
                mean(&r.shard_busy),
                r.outbound_bytes as f64,
            ),
            None => (-1.0, 0.0, 0.0, 0.0, 0.0),
        };
        metrics::gauge!("chat_balancer_report_age_seconds", "upstream" => label.clone()).set(age);
        metrics::gauge!("chat_balancer_reported_connections", "upstream" => label.clone())
            .set(conns);
        metrics::gauge!("chat_balancer_reported_capacity", "upstream" => label.clone()).set(cap);
        metrics::gauge!("chat_balancer_reported_busy_ratio", "upstream" => label.clone()).set(busy);
        metrics::gauge!("chat_balancer_reported_outbound_bytes", "upstream" => label).set(outbound);
    }
}

fn mean(v: &[f32]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
    }
}

/// Every node as JSON: what `/status.json` returns.
pub fn status(pool: &Pool) -> Value {
    let upstreams: Vec<Value> = snapshots(pool)
        .into_iter()
        .map(|(label, s)| {
            let report = s.health.report.as_ref().map(|(r, at, _)| {
                json!({
                    "age_seconds": at.elapsed().as_secs_f64(),
                    "node_id": r.node_id,
                    "address": r.address,
                    "connections": r.connections,
                    "capacity": r.capacity,
                    "shard_busy": r.shard_busy,
                    "outbound_bytes": r.outbound_bytes,
                    "draining": r.draining,
                })
            });
            json!({
                "address": label,
                "state": match &s.unavailable { None => "up", Some(u) => u.name() },
                "why_down": s.unavailable.as_ref().map(|u| u.to_string()),
                "weight": s.spec.weight,
                "effective_weight": s.effective_weight,
                "backup": s.spec.backup,
                "max_fails": s.spec.max_fails,
                "fail_timeout_seconds": s.spec.fail_timeout.as_secs_f64(),
                "max_conns": s.spec.max_conns,
                "proxy_protocol": s.spec.proxy_protocol,
                "open_connections": s.open,
                "picks": s.picks,
                "report_fresh": s.fresh,
                "report": report,
                "probe_failures": s.health.probe_failures,
                "last_probe_error": s.health.probe_error,
                "connect_failures": s.health.connect_failures,
                "last_connect_error": s.health.connect_error,
            })
        })
        .collect();
    json!({ "upstreams": upstreams })
}

fn html(status: &Value) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    for u in status["upstreams"].as_array().into_iter().flatten() {
        let report = match &u["report"] {
            Value::Null => "none yet".to_owned(),
            r => format!(
                "{} at {}: {}/{} connections, busy {}, {} B queued{} ({:.1}s ago)",
                r["node_id"].as_str().unwrap_or(""),
                r["address"].as_str().unwrap_or(""),
                r["connections"],
                r["capacity"],
                r["shard_busy"],
                r["outbound_bytes"],
                if r["draining"] == true {
                    ", draining"
                } else {
                    ""
                },
                r["age_seconds"].as_f64().unwrap_or(0.0),
            ),
        };
        rows.push_str(&format!(
            "<tr class=\"{state}\"><td>{addr}</td><td>{state}</td><td>{why}</td><td>{weight}{backup}</td><td>{open}</td><td>{picks}</td><td>{report}</td></tr>\n",
            addr = esc(u["address"].as_str().unwrap_or("")),
            state = esc(u["state"].as_str().unwrap_or("")),
            why = esc(u["why_down"].as_str().unwrap_or("")),
            weight = u["weight"],
            backup = if u["backup"] == true { " (backup)" } else { "" },
            open = u["open_connections"],
            picks = u["picks"],
            report = esc(&report),
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>chat-balancer</title>\
<meta http-equiv=\"refresh\" content=\"2\"><style>body{{font-family:sans-serif}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
tr.up td:nth-child(2){{color:green}}tr:not(.up) td:nth-child(2){{color:#b00}}</style></head>\
<body><h1>chat-balancer</h1><table><tr><th>node</th><th>state</th><th>why</th><th>weight</th>\
<th>open</th><th>picks</th><th>last report</th></tr>\n{rows}</table>\
<p><a href=\"/status.json\">/status.json</a> · <a href=\"/metrics\">/metrics</a></p></body></html>\n"
    )
}

/// Binds the admin address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}
