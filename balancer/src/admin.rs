//! The admin endpoint (`--admin-listen`): `/metrics` in Prometheus text,
//! `/status.json` and `/status` (HTML) listing every node, its state, weight,
//! runtime overrides, last report and why it is down; and the admin API,
//! `POST /upstreams/ADDR/{drain,undrain,down,up,weight?value=N}`, which
//! changes the live pool until the next reload, for clients in
//! `--admin-allow` only (loopback by default). The read-only pages are open
//! to anyone who reaches the port.
//!
//! Served by `chat_ops::http` from a plain thread of its own, apart from the
//! proxy threads. Counters and histograms are recorded where things happen
//! (`pool`, `proxy`, `probe`, `redirect`); per-node gauges derived from
//! health (down, report age, reported load, overrides) are set from a pool
//! snapshot just before each render.

use chat_ops::http::{Limits, Request, Response};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use ipnet::IpNet;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusHandle};
use serde_json::{Value, json};

use crate::metric_names;
use crate::pool::{Override, Pool, Snapshot};

/// Said in every answer that shows or makes an override.
const OVERRIDES_NOTE: &str = "runtime overrides from the admin API are lost at the next reload (SIGHUP) unless written to the config file";

/// The admin API's actions, as the last path segment.
const ACTIONS: &str = "drain, undrain, down, up, weight?value=N";

/// Buckets for connect latency in seconds: 25 µs to 10 s.
const SECONDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Buckets for a redirect answer in seconds: 5 µs to 10 ms.
const ANSWER: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.01,
];

/// Installs the global recorder and returns its handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = chat_ops::exporter::install(&[
        (
            Matcher::Full(metric_names::REDIRECT_ANSWER_SECONDS.into()),
            ANSWER,
        ),
        (Matcher::Suffix("_seconds".into()), SECONDS),
    ])?;
    describe();
    for name in [
        metric_names::ACCEPTED_TOTAL,
        metric_names::ACCEPT_ERRORS_TOTAL,
        metric_names::NO_UPSTREAM_TOTAL,
        metric_names::FAIL_FAST_TOTAL,
        metric_names::PANIC_TOTAL,
        metric_names::FALLBACK_PICKS_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for end in crate::proxy::relay::End::ALL {
        metrics::counter!(metric_names::CLOSED_TOTAL, "end" => end.name()).increment(0);
    }
    Ok(handle)
}

fn describe() {
    describe_counter!(
        metric_names::ACCEPTED_TOTAL,
        "Client connections accepted (proxy mode)."
    );
    describe_counter!(
        metric_names::PICKS_TOTAL,
        "Connections (and redirects) sent to each node."
    );
    describe_gauge!(
        metric_names::OPEN_CONNECTIONS,
        "Open relayed connections, by node."
    );
    describe_counter!(
        metric_names::CONNECT_FAILURES_TOTAL,
        "Failed connects to each node."
    );
    describe_histogram!(
        metric_names::CONNECT_SECONDS,
        Unit::Seconds,
        "Time to connect to a node, by node."
    );
    describe_histogram!(
        metric_names::REDIRECT_ANSWER_SECONDS,
        Unit::Seconds,
        "Redirect mode: time from a whole request frame to its reply written."
    );
    describe_counter!(
        metric_names::CLOSED_TOTAL,
        "Relayed connections ended, by how."
    );
    describe_counter!(
        metric_names::NO_UPSTREAM_TOTAL,
        "Client connections closed because no node accepted."
    );
    describe_counter!(
        metric_names::FAIL_FAST_TOTAL,
        "Client connections closed at once, no node tried, because none was available (with --panic only when every node is set down); also in chat_balancer_no_upstream_total."
    );
    describe_gauge!(
        metric_names::UPSTREAM_DOWN,
        "1 while a node gets no new connections, by reason."
    );
    describe_gauge!(
        metric_names::REPORT_AGE_SECONDS,
        "Age of each node's last load report (-1: none yet)."
    );
    describe_gauge!(
        metric_names::REPORTED_CONNECTIONS,
        "Open connections in each node's last report."
    );
    describe_gauge!(
        metric_names::REPORTED_CAPACITY,
        "Capacity in each node's last report."
    );
    describe_gauge!(
        metric_names::REPORTED_BUSY_RATIO,
        "Mean executor busy fraction in each node's last report."
    );
    describe_gauge!(
        metric_names::REPORTED_OUTBOUND_BYTES,
        "Queued outbound bytes in each node's last report."
    );
    describe_counter!(
        metric_names::PROBE_FAILURES_TOTAL,
        "Failed load probes, by node."
    );
    describe_counter!(
        metric_names::PANIC_TOTAL,
        "Picks made with every node unavailable (panic mode, --panic)."
    );
    describe_counter!(
        metric_names::FALLBACK_PICKS_TOTAL,
        "Picks made without fresh load reports (weight and own open connections)."
    );
    describe_counter!(
        metric_names::RELOADS_TOTAL,
        "Configuration reloads, by result."
    );
    describe_counter!(
        metric_names::REDIRECTS_TOTAL,
        "Redirect-mode answers, by node."
    );
    describe_counter!(
        metric_names::BAD_INPUT_TOTAL,
        "Garbage from clients, by port."
    );
    describe_counter!(
        metric_names::ACCEPT_ERRORS_TOTAL,
        "Failed accepts (usually out of file descriptors)."
    );
    describe_gauge!(
        metric_names::UPSTREAM_OVERRIDE,
        "Runtime overrides from the admin API, by node: drain and down 1 while set, weight the weight in use (0: none); cleared by a reload."
    );
}

/// Serves the admin endpoint on `listener` from a background thread; the
/// admin API answers clients whose address is in `allow` only.
pub fn serve(listener: TcpListener, handle: PrometheusHandle, pool: Arc<Pool>, allow: Vec<IpNet>) {
    let served = chat_ops::http::serve_requests(listener, "admin", Limits::default(), move |req| {
        answer(req, &handle, &pool, &allow)
    });
    served.expect("spawning the admin thread");
}

fn answer(req: &Request, handle: &PrometheusHandle, pool: &Pool, allow: &[IpNet]) -> Response {
    if let Some(rest) = req.path.strip_prefix("/upstreams/") {
        return upstream_action(req, rest, pool, allow);
    }
    let page = matches!(req.path, "/metrics" | "/status.json" | "/status" | "/");
    if page && !req.is_read() {
        return Response::method_not_allowed("GET, HEAD");
    }
    match req.path {
        "/metrics" => {
            update_gauges(pool);
            chat_ops::exporter::page(handle)
        }
        "/status.json" => json_response(200, &status(pool)),
        "/status" | "/" => Response::ok("text/html; charset=utf-8", html(&status(pool))),
        _ => Response::not_found(&format!(
            "see /metrics, /status, /status.json; POST /upstreams/ADDR/ACTION with ACTION one of {ACTIONS}"
        )),
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut text = serde_json::to_string_pretty(body).unwrap_or_default();
    text.push('\n');
    Response::new(status, "application/json", text)
}

fn json_error(status: u16, error: String, more: Value) -> Response {
    let mut body = json!({ "error": error });
    if let (Some(b), Value::Object(more)) = (body.as_object_mut(), more) {
        b.extend(more);
    }
    json_response(status, &body)
}

/// Whether `peer` may use the admin API.
fn allowed(peer: SocketAddr, allow: &[IpNet]) -> bool {
    let ip = peer.ip().to_canonical();
    allow.iter().any(|net| net.contains(&ip))
}

/// `POST /upstreams/ADDR/ACTION`: `rest` is `ADDR/ACTION`.
fn upstream_action(req: &Request, rest: &str, pool: &Pool, allow: &[IpNet]) -> Response {
    let Some((addr, action)) = rest.rsplit_once('/') else {
        return Response::not_found(&format!(
            "POST /upstreams/ADDR/ACTION with ACTION one of {ACTIONS}"
        ));
    };
    if req.method != "POST" {
        return Response::method_not_allowed("POST");
    }
    if !allowed(req.peer, allow) {
        tracing::warn!(peer = %req.peer, path = req.path, "admin API request refused: source not in --admin-allow");
        return json_error(
            403,
            format!(
                "{} may not change the pool: only addresses in --admin-allow may (default: loopback)",
                req.peer.ip()
            ),
            json!({}),
        );
    }
    let change = match action {
        "drain" => Override::Drain(true),
        "undrain" => Override::Drain(false),
        "down" => Override::Down(true),
        "up" => Override::Down(false),
        "weight" => {
            // The same range as `weight=` on an upstream line.
            let value = req.query_value("value");
            match value.as_deref().map(str::parse::<u32>) {
                Some(Ok(w)) if w >= 1 => Override::Weight(w),
                _ => {
                    return json_error(
                        400,
                        format!(
                            "weight: value={:?} is not a whole number from 1 to {}",
                            value.unwrap_or_default(),
                            u32::MAX
                        ),
                        json!({}),
                    );
                }
            }
        }
        _ => {
            return json_error(
                404,
                format!("unknown action {action:?}: one of {ACTIONS}"),
                json!({}),
            );
        }
    };
    let addr = chat_ops::http::percent_decode(addr);
    let Some(upstream) = pool.find(&addr) else {
        let known: Vec<String> = pool.upstreams().iter().map(|u| u.label.clone()).collect();
        return json_error(
            404,
            format!("no upstream {addr:?}"),
            json!({ "upstreams": known }),
        );
    };
    upstream.set_override(change);
    tracing::info!(upstream = %upstream.label, peer = %req.peer, action, change = ?change, "admin API: upstream override set (until the next reload)");
    let snapshot = upstream.snapshot(Instant::now(), pool.tuning().report_max_age);
    let mut body = upstream_json(&upstream.label, snapshot);
    body["action"] = json!(action);
    body["note"] = json!(OVERRIDES_NOTE);
    json_response(200, &body)
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
            metric_names::PICKS_TOTAL,
            metric_names::CONNECT_FAILURES_TOTAL,
            metric_names::PROBE_FAILURES_TOTAL,
        ] {
            metrics::counter!(name, "upstream" => label.clone()).increment(0);
        }
        for reason in [
            "configured_down",
            "admin_down",
            "admin_drain",
            "draining",
            "probe_failed",
            "connect_failed",
            "max_conns",
        ] {
            let on = s.unavailable.as_ref().is_some_and(|u| u.name() == reason);
            metrics::gauge!(metric_names::UPSTREAM_DOWN, "upstream" => label.clone(), "reason" => reason)
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
        let o = s.overrides;
        for (kind, value) in [
            ("drain", f64::from(u8::from(o.drain))),
            ("down", f64::from(u8::from(o.down))),
            ("weight", f64::from(o.weight.unwrap_or(0))),
        ] {
            metrics::gauge!(metric_names::UPSTREAM_OVERRIDE, "upstream" => label.clone(), "override" => kind)
                .set(value);
        }
        metrics::gauge!(metric_names::REPORT_AGE_SECONDS, "upstream" => label.clone()).set(age);
        metrics::gauge!(metric_names::REPORTED_CONNECTIONS, "upstream" => label.clone()).set(conns);
        metrics::gauge!(metric_names::REPORTED_CAPACITY, "upstream" => label.clone()).set(cap);
        metrics::gauge!(metric_names::REPORTED_BUSY_RATIO, "upstream" => label.clone()).set(busy);
        metrics::gauge!(metric_names::REPORTED_OUTBOUND_BYTES, "upstream" => label).set(outbound);
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
        .map(|(label, s)| upstream_json(&label, s))
        .collect();
    json!({ "upstreams": upstreams, "overrides_note": OVERRIDES_NOTE })
}

/// The runtime overrides as a list: `[{"override": "drain"}, {"override":
/// "weight", "value": 5}]`.
fn overrides_json(s: &Snapshot) -> Value {
    let o = s.overrides;
    let mut list = Vec::new();
    if o.drain {
        list.push(json!({ "override": "drain" }));
    }
    if o.down {
        list.push(json!({ "override": "down" }));
    }
    if let Some(w) = o.weight {
        list.push(json!({ "override": "weight", "value": w }));
    }
    Value::Array(list)
}

/// One node as JSON.
fn upstream_json(label: &str, s: Snapshot) -> Value {
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
        "overrides": overrides_json(&s),
    })
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
        let overrides: Vec<String> = u["overrides"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| match &o["value"] {
                Value::Null => o["override"].as_str().unwrap_or("").to_owned(),
                v => format!("{}={v}", o["override"].as_str().unwrap_or("")),
            })
            .collect();
        let overrides = overrides.join(", ");
        rows.push_str(&format!(
            "<tr class=\"{state}\"><td>{addr}</td><td>{state}</td><td>{why}</td><td>{weight}{backup}</td><td>{overrides}</td><td>{open}</td><td>{picks}</td><td>{report}</td></tr>\n",
            addr = esc(u["address"].as_str().unwrap_or("")),
            state = esc(u["state"].as_str().unwrap_or("")),
            why = esc(u["why_down"].as_str().unwrap_or("")),
            weight = u["weight"],
            backup = if u["backup"] == true { " (backup)" } else { "" },
            overrides = esc(&overrides),
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
<th>overrides</th><th>open</th><th>picks</th><th>last report</th></tr>\n{rows}</table>\
<p>Overrides: {note}.</p>\
<p><a href=\"/status.json\">/status.json</a> · <a href=\"/metrics\">/metrics</a></p></body></html>\n",
        note = esc(OVERRIDES_NOTE),
    )
}

/// Binds the admin address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}
