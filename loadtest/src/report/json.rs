//! The JSON summary of a run (`--json`), versioned for scripts.
//!
//! # Schema `chat-loadtest/1`
//!
//! One object. Durations and latencies are integers of microseconds (the
//! key ends in `_us`), rates are numbers per second (`_per_s`), counts are
//! integers. Keys are only ever added within a format; a change of meaning
//! or a removal bumps `format`.
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `format` | string | `"chat-loadtest/1"` |
//! | `version` | string | version of chat-loadtest that wrote it |
//! | `started_unix_ms` | integer | run start, ms since the Unix epoch (= `BaseTime` of `intervals.hlog`) |
//! | `scenario` | string | `connect`, `direct`, `group`, `mixed`, `history`, `soak` or `ramp` |
//! | `protocol` | string | `fb` or `json` |
//! | `model` | string | `open` or `closed` |
//! | `target` | string | what was tested, in words |
//! | `config` | object | the run's settings (`RunConfig`; durations as humantime strings like `"10s"`) |
//! | `window_us` | integer | length of the measured window |
//! | `workers` | integer | load generator processes whose results were merged |
//! | `rate` | object | `offered_per_s`, `achieved_per_s` (acknowledged sends, answered history browses and mark-reads of the window) |
//! | `latency` | object | metric → `{"corrected": S, "uncorrected": S}`; only metrics with data |
//! | `counters` | object | every counter, integer (see below) |
//! | `errors` | object | error kind (e.g. `"send: timeout"`) → count |
//! | `errors_total` | integer | sum of `errors` |
//! | `generator` | object | the load generator's own lag (see below) |
//! | `balance` | object or null | connections per node, when the target spreads them |
//! | `ramp` | array | steps of a `ramp` run, in order (empty otherwise) |
//! | `ramp_best_rate_per_s` | number or null | rate of the last step of the first run of held steps |
//! | `slo` | array | one verdict per `--slo` objective |
//! | `slo_held` | bool | every objective held (true when none was set) |
//! | `server` | object or null | the servers' CPU and memory (`--local`, `--server-metrics`; see below) |
//! | `chaos` | object or null | `--chaos`: the faults injected, their recovery and loss (see below) |
//!
//! **`latency`**: metrics are `connect`, `register`, `login`, `send_ack`,
//! `delivery`, `history` (a history page; a browse's first page from its
//! scheduled time, later pages from when they were asked) and `mark_read`.
//! `corrected` measures from the time the schedule said the
//! action should start (coordinated omission corrected), `uncorrected` from
//! the time it did. Each `S` is `{"count", "min_us", "mean_us", "p50_us",
//! "p90_us", "p99_us", "p99_9_us", "p99_99_us", "max_us"}`, all integers
//! (`mean_us` rounded); `S` is `null` if that one of the two has no data
//! while the other has.
//!
//! **`counters`**: `users`, `connections_opened`, `connections_failed`,
//! `disconnects`, `reconnects` (`--reconnect`: a user connected and logged
//! in again after a drop), `connections_at_end`, `logins`, `logouts`,
//! `window_offered`, `window_sent`, `window_acked` (the measured window),
//! `sent`, `acked`, `send_failed`, `not_connected` (`--reconnect`: actions
//! due while their user was between a drop and its re-login, skipped; the
//! sends among them are in `send_failed` too, never in `expected`),
//! `expected`, `delivered` = `delivered_live` (pushed on a connection) +
//! `delivered_at_login` (pending in the reply to a first login or a
//! `relogin`) + `delivered_after_reconnect` (pending in the reply to a
//! reconnection's login: stored while the user was away, or pushed to the
//! broken connection and not acknowledged), `duplicated` (a second receipt
//! of a message under another server id: what an application that drops
//! repeated ids would still see twice), `redelivered` (a server id
//! received again, e.g. after a re-login: at-least-once delivery, dropped
//! by id, not a duplicate), `out_of_order` (reordered), `lost` (`expected -
//! delivered`: receipts due that never came by the end of the drain),
//! `unconfirmed` (`--reconnect`: receipts of sends that got no
//! acknowledgement and reached no recipient, taken out of `expected`: the
//! server did not take them), `late`, `history_requests`,
//! `history_pages`, `history_failed`, `history_messages` (messages in the
//! pages), `mark_read_requests`, `marked_read`, `mark_read_failed` (the
//! whole run).
//!
//! **`generator`**: `lag_p50_us`, `lag_p99_us`, `lag_max_us` (actual start
//! minus scheduled start of each action), `late` (actions later than
//! `late_threshold_us`), `bottleneck` (bool: more than 1% were late or the
//! lag p99 exceeds the threshold, so latencies include the generator's own
//! delay), `message` (the warning, or `null`).
//!
//! **`balance`**: `{"per_node": {node id: connections}, "max": integer,
//! "mean": number, "cv": number}` (cv: standard deviation over mean, 0 =
//! even).
//!
//! **`ramp`** steps: `{"rate_per_s", "achieved_per_s", "p99_us" (corrected
//! delivery), "sent", "lost", "held"}`.
//!
//! **`slo`** verdicts: `{"objective": "p99<=5ms", "actual", "unit", "held"}`;
//! `actual` is in `unit`: `"us"` (integer) for latency, `"count"` (integer)
//! for `loss<=N` and `errors<=N`, `"share"` (0–1) for `loss<=X%`; `null` when
//! there was nothing to measure (which fails the objective).
//!
//! **`server`** (null unless `--local` or `--server-metrics`): `{"source"`
//! (`"local"`: `/proc` of `--local`'s processes; `"metrics"`: the
//! `--server-metrics` endpoints; `null` if no worker sampled), `"sampled"`
//! (pids or URLs, in words), `"node_count"`, `"sampled_us"` (between the
//! window's start and end samples), `"deliveries"` (receipts between them),
//! `"connections"` (open at the end sample), `"error"` (why a sample
//! failed, or `null`), `"nodes"` and `"balancer"` (`null` unless `--local` or `--balancer-pid`):
//! each `null` or `{"cpu_seconds", "cpu_cores", "cpu_us_per_delivered",
//! "rss_before_bytes", "rss_start_bytes", "rss_end_bytes",
//! "rss_bytes_per_connection"}`}. `cpu_seconds` is spent between the start
//! and end samples; `cpu_cores` is that over `sampled_us`;
//! `cpu_us_per_delivered` is `cpu_seconds` in µs over `deliveries` (number;
//! `null` without deliveries); `rss_bytes_per_connection` is `rss_end_bytes
//! − rss_before_bytes` (before the first user connected) over `connections`
//! (number, negative if memory was returned; `null` without connections).
//! With `--server-metrics` the endpoints are summed into `nodes`.
//!
//! **`chaos`** (null unless `--chaos`; see [`crate::chaos`]): `{"every_us",
//! "lease_ttl_us", "faults", "acked_lost"` (receipts of acknowledged sends
//! never received), `"lost_before_faults"` (of those, sends intended before
//! the first fault), `"found_at_final_login"` (of those, the ones a fresh
//! login of the recipient at the end listed as pending: stuck in the store,
//! not pushed), `"delivery_outside_faults"` (`S` of the corrected
//! delivery latency of the window's messages whose time in flight overlaps
//! no fault window, or `null`)`}`. Each fault: `{"kind"` (`kill`, `nats`,
//! `balancer`, `stop`), `"target"` (`node-0`, `nats-server`, `balancer`),
//! `"at_us"` (start, on the run's clock), `"injected_us"` (until the
//! process served again; `stop`: until resumed and its lease lapse
//! counted), `"error"` (why the injection failed, or `null`), `"dropped"`
//! (connections closed from the start to the recovery), `"online_us"`
//! (from the start until every user was logged in again), `"recovery_us"`
//! (until, besides, the receipts due were back under 250 ms of traffic;
//! `null`: not recovered by the end of the drain), `"recovered"` (bool),
//! `"lost"` (receipts of acknowledged sends intended from this fault's
//! start to the next one's that never came)`}`.

use std::path::Path;
use std::time::UNIX_EPOCH;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json as j};

use super::{
    RunInfo, SloUnit, generator_verdict, model_name, protocol_name, quantile, ramp_best_rate,
    series_with_data, slo_unit,
};
use crate::chaos::ChaosOutcome;
use crate::outcome::{Outcome, ProcessCost, ServerCost};

/// The `format` of this schema.
pub const FORMAT: &str = "chat-loadtest/1";

/// The summary of a run, as described in this module's documentation.
pub fn json(outcome: &Outcome, info: &RunInfo) -> serde_json::Value {
    let c = info.config;
    let generator_message = generator_verdict(outcome, c);
    let lag = &outcome.generator.lag;
    let late_threshold_us = match outcome.generator.late_threshold_us {
        0 => c.late_threshold.as_micros() as u64,
        us => us,
    };
    j!({
        "format": FORMAT,
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix_ms": info
            .started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        "scenario": c.scenario.name(),
        "protocol": protocol_name(c.protocol),
        "model": model_name(c.model),
        "target": info.target,
        "config": serde_json::to_value(c).unwrap_or(Value::Null),
        "window_us": outcome.window_us,
        "workers": outcome.workers,
        "rate": {
            "offered_per_s": outcome.offered_rate,
            "achieved_per_s": outcome.achieved_rate(),
        },
        "latency": latency(outcome),
        "counters": outcome.counters.fields()
            .into_iter()
            .map(|(name, value)| (name.to_string(), Value::from(value)))
            .collect::<Map<_, _>>(),
        "errors": outcome.errors,
        "errors_total": outcome.errors.values().sum::<u64>(),
        "generator": {
            "lag_p50_us": quantile(lag, 0.5),
            "lag_p99_us": quantile(lag, 0.99),
            "lag_max_us": lag.max(),
            "late": outcome.counters.late,
            "late_threshold_us": late_threshold_us,
            "bottleneck": generator_message.is_some(),
            "message": generator_message,
        },
        "balance": outcome.balance.as_ref().map(|b| j!({
            "per_node": b.per_node,
            "max": b.max(),
            "mean": b.mean(),
            "cv": b.cv(),
        })),
        "ramp": outcome.ramp.iter().map(|s| j!({
            "rate_per_s": s.rate,
            "achieved_per_s": s.achieved,
            "p99_us": s.p99_us,
            "sent": s.sent,
            "lost": s.lost,
            "held": s.held,
        })).collect::<Vec<_>>(),
        "ramp_best_rate_per_s": ramp_best_rate(&outcome.ramp),
        "slo": info.verdicts.iter().map(|v| {
            let unit = slo_unit(v, c);
            let actual = match (v.actual, unit) {
                (None, _) => Value::Null,
                (Some(a), SloUnit::Share) => Value::from(a),
                (Some(a), SloUnit::Micros | SloUnit::Count) => Value::from(a.round() as u64),
            };
            j!({
                "objective": v.objective,
                "actual": actual,
                "unit": unit.name(),
                "held": v.held,
            })
        }).collect::<Vec<_>>(),
        "slo_held": info.verdicts.iter().all(|v| v.held),
        "server": outcome.server.as_ref().map(server),
        "chaos": outcome.chaos.as_ref().map(chaos),
    })
}

fn chaos(c: &ChaosOutcome) -> Value {
    let h = &c.delivery_outside_faults;
    j!({
        "every_us": c.every_us,
        "lease_ttl_us": c.lease_ttl_us,
        "faults": c.faults.iter().map(|f| j!({
            "kind": f.kind.name(),
            "target": f.target,
            "at_us": f.at_us,
            "injected_us": f.injected_us,
            "error": f.error,
            "dropped": f.dropped,
            "online_us": f.online_us,
            "recovery_us": f.recovery_us,
            "recovered": f.recovery_us.is_some(),
            "lost": f.lost,
        })).collect::<Vec<_>>(),
        "acked_lost": c.acked_lost,
        "lost_before_faults": c.lost_before_faults,
        "found_at_final_login": c.found_at_final_login,
        "delivery_outside_faults": if h.is_empty() { Value::Null } else { summary(h) },
    })
}

fn server(s: &ServerCost) -> Value {
    let group = |p: &Option<ProcessCost>| {
        p.as_ref().map(|p| {
            j!({
                "cpu_seconds": p.cpu_seconds(),
                "cpu_cores": s.cores(p),
                "cpu_us_per_delivered": s.cpu_us_per_delivered(p),
                "rss_before_bytes": p.before.rss_bytes,
                "rss_start_bytes": p.start.rss_bytes,
                "rss_end_bytes": p.end.rss_bytes,
                "rss_bytes_per_connection": s.rss_bytes_per_connection(p),
            })
        })
    };
    j!({
        "source": s.source,
        "sampled": s.sampled,
        "node_count": s.node_count,
        "sampled_us": s.sampled_us,
        "deliveries": s.deliveries,
        "connections": s.connections,
        "error": s.error,
        "nodes": group(&s.nodes),
        "balancer": group(&s.balancer),
    })
}

/// Writes [`json`] to `path`, pretty-printed, with a final newline.
pub fn write_json(path: &Path, outcome: &Outcome, info: &RunInfo) -> std::io::Result<()> {
    let mut text =
        serde_json::to_string_pretty(&json(outcome, info)).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

fn latency(outcome: &Outcome) -> Map<String, Value> {
    let mut out = Map::new();
    for (series, h) in series_with_data(outcome) {
        let entry = out
            .entry(series.metric.name())
            .or_insert_with(|| j!({"corrected": null, "uncorrected": null}));
        entry[series.correction.name()] = summary(h);
    }
    out
}

fn summary(h: &Histogram<u64>) -> Value {
    j!({
        "count": h.len(),
        "min_us": h.min(),
        "mean_us": h.mean().round() as u64,
        "p50_us": quantile(h, 0.5),
        "p90_us": quantile(h, 0.9),
        "p99_us": quantile(h, 0.99),
        "p99_9_us": quantile(h, 0.999),
        "p99_99_us": quantile(h, 0.9999),
        "max_us": h.max(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;
    use crate::config::RunConfig;
    use crate::outcome::{Correction, Metric, Series};

    fn summarize(outcome: &Outcome) -> Value {
        let config = fixture::config();
        let verdicts = fixture::verdicts();
        let info = fixture::info(&config, &verdicts);
        json(outcome, &info)
    }

    fn is_integer(v: &Value) -> bool {
        v.is_u64()
    }

    #[test]
    fn top_level_keys_are_all_there() {
        let v = summarize(&fixture::outcome());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "format",
            "version",
            "started_unix_ms",
            "scenario",
            "protocol",
            "model",
            "target",
            "config",
            "window_us",
            "workers",
            "rate",
            "latency",
            "counters",
            "errors",
            "errors_total",
            "generator",
            "balance",
            "ramp",
            "ramp_best_rate_per_s",
            "slo",
            "slo_held",
            "server",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(v["format"], "chat-loadtest/1");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["started_unix_ms"], 1_700_000_000_123u64);
        assert_eq!(v["scenario"], "direct");
        assert_eq!(v["protocol"], "fb");
        assert_eq!(v["model"], "open");
        assert_eq!(v["target"], "balancer 127.0.0.1:8000 (local, 1 node)");
        assert_eq!(v["window_us"], 10_000_000);
        assert_eq!(v["workers"], 2);
        assert_eq!(v["rate"]["offered_per_s"], 1000.0);
        assert_eq!(v["rate"]["achieved_per_s"], 998.0);
    }

    #[test]
    fn config_is_the_run_config_itself() {
        let v = summarize(&fixture::outcome());
        let back: RunConfig = serde_json::from_value(v["config"].clone()).unwrap();
        assert_eq!(back, fixture::config());
    }

    #[test]
    fn latency_has_both_corrections_in_integer_microseconds() {
        let o = fixture::outcome();
        let v = summarize(&o);
        let latency = v["latency"].as_object().unwrap();
        let mut metrics: Vec<&str> = latency.keys().map(String::as_str).collect();
        metrics.sort();
        assert_eq!(metrics, ["delivery", "send_ack"], "only metrics with data");
        for metric in [Metric::SendAck, Metric::Delivery] {
            for correction in Correction::BOTH {
                let h = &o.totals[&Series::new(metric, correction)];
                let s = &latency[metric.name()][correction.name()];
                for key in [
                    "count",
                    "min_us",
                    "mean_us",
                    "p50_us",
                    "p90_us",
                    "p99_us",
                    "p99_9_us",
                    "p99_99_us",
                    "max_us",
                ] {
                    assert!(
                        is_integer(&s[key]),
                        "{metric}.{correction:?}.{key} = {}",
                        s[key]
                    );
                }
                assert_eq!(s["count"], h.len());
                assert_eq!(s["p99_us"], h.value_at_quantile(0.99));
                assert_eq!(s["p99_99_us"], h.value_at_quantile(0.9999));
                assert_eq!(s["max_us"], h.max());
                assert_eq!(s["mean_us"], h.mean().round() as u64);
            }
        }
    }

    #[test]
    fn a_metric_with_one_correction_only_has_null_for_the_other() {
        let mut o = fixture::outcome();
        o.totals
            .remove(&Series::new(Metric::Delivery, Correction::Uncorrected));
        let v = summarize(&o);
        assert!(v["latency"]["delivery"]["uncorrected"].is_null());
        assert!(v["latency"]["delivery"]["corrected"]["count"].is_u64());
    }

    #[test]
    fn counters_errors_and_generator_are_integers() {
        let o = fixture::outcome();
        let v = summarize(&o);
        let counters = v["counters"].as_object().unwrap();
        assert_eq!(counters.len(), o.counters.fields().len());
        for (name, value) in o.counters.fields() {
            assert_eq!(counters[name], value, "{name}");
        }
        assert_eq!(v["errors"]["send: timeout"], 7);
        assert_eq!(v["errors"]["login: AlreadyOnline"], 9);
        assert_eq!(v["errors_total"], 16);
        let g = &v["generator"];
        assert_eq!(g["lag_p50_us"], 70);
        assert_eq!(g["lag_p99_us"], 900);
        assert_eq!(g["lag_max_us"], 900);
        assert_eq!(g["late"], 8);
        assert_eq!(g["late_threshold_us"], 10_000);
        assert_eq!(g["bottleneck"], false);
        assert!(g["message"].is_null());
    }

    #[test]
    fn a_late_generator_is_a_bottleneck_with_a_message() {
        let mut o = fixture::outcome();
        o.counters.late = 1_000;
        let g = &summarize(&o)["generator"];
        assert_eq!(g["bottleneck"], true);
        assert!(
            g["message"]
                .as_str()
                .unwrap()
                .starts_with("the load generator fell behind")
        );
    }

    #[test]
    fn balance_ramp_and_slo() {
        let v = summarize(&fixture::outcome());
        assert_eq!(v["balance"]["per_node"]["node-a"], 120);
        assert_eq!(v["balance"]["max"], 120);
        assert_eq!(v["balance"]["mean"], 99.0);
        assert!((v["balance"]["cv"].as_f64().unwrap() - 0.2121).abs() < 1e-3);

        let ramp = v["ramp"].as_array().unwrap();
        assert_eq!(ramp.len(), 3);
        assert_eq!(
            ramp[2],
            j!({"rate_per_s": 1500.0, "achieved_per_s": 1200.0, "p99_us": 65_000,
                "sent": 7_500, "lost": 3, "held": false})
        );
        assert_eq!(v["ramp_best_rate_per_s"], 1000.0);

        let slo = v["slo"].as_array().unwrap();
        assert_eq!(slo.len(), 3);
        assert_eq!(slo[0]["objective"], "p99<=50ms");
        assert_eq!(slo[0]["unit"], "us");
        assert!(slo[0]["actual"].is_u64());
        assert_eq!(slo[0]["held"], true);
        assert_eq!(
            slo[1],
            j!({"objective": "loss<=0", "actual": 3, "unit": "count", "held": false})
        );
        assert_eq!(slo[2]["unit"], "share");
        assert!(slo[2]["actual"].as_f64().unwrap() < 0.005);
        assert_eq!(v["slo_held"], false);
    }

    #[test]
    fn server_cost_per_message_and_per_connection() {
        let v = summarize(&fixture::outcome());
        let s = &v["server"];
        assert_eq!(s["source"], "local");
        assert_eq!(s["node_count"], 1);
        assert_eq!(s["sampled_us"], 10_000_000);
        assert_eq!(s["deliveries"], 10_000);
        assert_eq!(s["connections"], 200);
        assert!(s["error"].is_null());
        let n = &s["nodes"];
        assert_eq!(n["cpu_seconds"], 2.5);
        assert_eq!(n["cpu_cores"], 0.25);
        assert_eq!(n["cpu_us_per_delivered"], 250.0);
        assert_eq!(n["rss_before_bytes"], 10 << 20);
        assert_eq!(n["rss_end_bytes"], 20 << 20);
        assert_eq!(
            n["rss_bytes_per_connection"],
            (10 << 20) as f64 / 200.0,
            "from before the users connected"
        );
        let b = &s["balancer"];
        assert_eq!(b["cpu_us_per_delivered"], 50.0);
        assert_eq!(b["rss_bytes_per_connection"], -(1 << 20) as f64 / 200.0);

        let mut o = fixture::outcome();
        let cost = o.server.as_mut().unwrap();
        cost.deliveries = 0;
        cost.connections = 0;
        cost.balancer = None;
        let v = summarize(&o);
        assert!(v["server"]["nodes"]["cpu_us_per_delivered"].is_null());
        assert!(v["server"]["nodes"]["rss_bytes_per_connection"].is_null());
        assert!(v["server"]["balancer"].is_null());
    }

    #[test]
    fn chaos_lists_every_fault() {
        assert!(summarize(&fixture::outcome())["chaos"].is_null());
        let mut o = fixture::outcome();
        o.chaos = Some(fixture::chaos());
        let v = summarize(&o);
        let c = &v["chaos"];
        assert_eq!(c["every_us"], 30_000_000);
        assert_eq!(c["lease_ttl_us"], 10_000_000);
        assert_eq!(c["acked_lost"], 3);
        assert_eq!(c["lost_before_faults"], 0);
        assert_eq!(c["delivery_outside_faults"]["count"], 3);
        assert_eq!(
            c["faults"][0],
            j!({"kind": "kill", "target": "node-1", "at_us": 32_500_000,
                "injected_us": 450_000, "error": null, "dropped": 70,
                "online_us": 1_200_000, "recovery_us": 1_500_000, "recovered": true,
                "lost": 3})
        );
        let stop = &c["faults"][1];
        assert_eq!(stop["kind"], "stop");
        assert_eq!(stop["error"], "boom");
        assert!(stop["online_us"].is_null() && stop["recovery_us"].is_null());
        assert_eq!(stop["recovered"], false);
    }

    #[test]
    fn an_empty_outcome_has_nulls_and_empty_collections() {
        let config = fixture::config();
        let info = fixture::info(&config, &[]);
        let v = json(&Outcome::default(), &info);
        assert_eq!(v["latency"], j!({}));
        assert_eq!(v["errors"], j!({}));
        assert_eq!(v["errors_total"], 0);
        assert!(v["balance"].is_null());
        assert_eq!(v["ramp"], j!([]));
        assert!(v["ramp_best_rate_per_s"].is_null());
        assert_eq!(v["slo"], j!([]));
        assert_eq!(v["slo_held"], true);
        assert_eq!(v["generator"]["lag_max_us"], 0);
        assert!(v["server"].is_null());
    }

    #[test]
    fn write_json_writes_what_json_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let config = fixture::config();
        let verdicts = fixture::verdicts();
        let info = fixture::info(&config, &verdicts);
        let o = fixture::outcome();
        write_json(&path, &o, &info).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, json(&o, &info));
    }
}
