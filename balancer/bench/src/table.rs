//! `table FILE...`: reads the JSON lines of several runs (labels such as
//! `direct`, `nginx`, `haproxy`, `chat-balancer`; repeated rounds are
//! reduced to their median) and prints the Markdown tables of
//! `docs/benchmarks.md`, with ratios against `direct`, `nginx` and
//! `haproxy`; and, when there are `redirect` lines, a small table of
//! redirect mode.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::report::thousands;

#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    /// Files of JSON lines written by conn-rate, latency and bulk (other
    /// lines are skipped).
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The number at `path` in `v`.
fn get(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

/// The median over `vs` of the number at `path`.
fn med(vs: &[Value], path: &[&str]) -> Option<f64> {
    median(vs.iter().filter_map(|v| get(v, path)).collect())
}

/// The figures of one target, each the median over its rounds.
#[derive(Default, Debug)]
struct Figures {
    conn_per_s: Option<f64>,
    conn_errors: f64,
    conn_rounds: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
    achieved: Option<f64>,
    lat_errors: f64,
    lat_rounds: usize,
    mb_per_s: Option<f64>,
    bulk_errors: f64,
    bulk_rounds: usize,
}

pub fn print(args: &TableArgs) -> anyhow::Result<()> {
    let mut order: Vec<String> = Vec::new();
    let mut redirect_order: Vec<String> = Vec::new();
    // label -> bench -> runs
    let mut runs: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(bench), Some(label)) = (
                v.get("bench").and_then(Value::as_str),
                v.get("label").and_then(Value::as_str),
            ) else {
                continue;
            };
            let label = if label.is_empty() {
                v.get("target")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            } else {
                label.to_string()
            };
            // Redirect mode has a table of its own.
            let order = if bench == "redirect" {
                &mut redirect_order
            } else {
                &mut order
            };
            if !order.contains(&label) {
                order.push(label.clone());
            }
            runs.entry(label)
                .or_default()
                .entry(bench.to_string())
                .or_default()
                .push(v);
        }
    }
    // Fixed order for the usual labels, others after in order of appearance.
    let known = ["direct", "nginx", "haproxy", "chat-balancer"];
    order.sort_by_key(|l| known.iter().position(|k| k == l).unwrap_or(known.len()));
    redirect_order.sort_by_key(|l| known.iter().position(|k| k == l).unwrap_or(known.len()));

    let sum = |vs: &[Value], path: &[&str]| vs.iter().filter_map(|v| get(v, path)).sum::<f64>();

    let mut figs: BTreeMap<String, Figures> = BTreeMap::new();
    for label in &order {
        let by = &runs[label];
        let empty = Vec::new();
        let c = by.get("conn-rate").unwrap_or(&empty);
        let l = by.get("latency").unwrap_or(&empty);
        let b = by.get("bulk").unwrap_or(&empty);
        figs.insert(
            label.clone(),
            Figures {
                conn_per_s: med(c, &["conn_per_s"]),
                conn_errors: sum(c, &["errors"]),
                conn_rounds: c.len(),
                p50: med(l, &["latency_us", "p50"]),
                p99: med(l, &["latency_us", "p99"]),
                p999: med(l, &["latency_us", "p999"]),
                max: med(l, &["latency_us", "max"]),
                achieved: med(l, &["achieved_per_s"]),
                lat_errors: sum(l, &["errors"]),
                lat_rounds: l.len(),
                mb_per_s: med(b, &["mb_per_s"]),
                bulk_errors: sum(b, &["errors"]),
                bulk_rounds: b.len(),
            },
        );
    }

    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "–".to_string(), f);
    let us = |v: f64| format!("{v:.0} µs");
    let display = |label: &str| match label {
        "direct" => "direct (no proxy)".to_string(),
        "nginx" => "nginx stream".to_string(),
        "haproxy" => "HAProxy".to_string(),
        other => other.to_string(),
    };

    println!(
        "| target | new conn/s | conn errors | latency p50 | p99 | p99.9 | max | achieved req/s | latency errors | bulk MB/s (echoed) | bulk errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for label in &order {
        let f = &figs[label];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            display(label),
            opt(f.conn_per_s, &thousands),
            if f.conn_rounds > 0 {
                thousands(f.conn_errors)
            } else {
                "–".into()
            },
            opt(f.p50, &us),
            opt(f.p99, &us),
            opt(f.p999, &us),
            opt(f.max, &us),
            opt(f.achieved, &thousands),
            if f.lat_rounds > 0 {
                thousands(f.lat_errors)
            } else {
                "–".into()
            },
            opt(f.mb_per_s, &|v| format!("{v:.0}")),
            if f.bulk_rounds > 0 {
                thousands(f.bulk_errors)
            } else {
                "–".into()
            },
        );
    }
    let all_latency: Vec<Value> = runs
        .values()
        .filter_map(|by| by.get("latency"))
        .flatten()
        .cloned()
        .collect();
    if let (Some(p50), Some(p99)) = (
        med(&all_latency, &["send_lag_us", "p50"]),
        med(&all_latency, &["send_lag_us", "p99"]),
    ) {
        println!();
        println!(
            "Latency includes the load generator's own lateness in sending (timer wakeup, \
             being descheduled), the same for every target: p50 {p50:.0} µs, p99 {p99:.0} µs."
        );
    }
    println!();

    // Ratios against the direct connection and the two reference proxies.
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_string(),
    };
    let added = |a: Option<f64>, d: Option<f64>| match (a, d) {
        (Some(a), Some(d)) => Some(a - d),
        _ => None,
    };
    let signed_us = |v: f64| format!("{v:+.0} µs");
    let f_of = |l: &str| figs.get(l);
    let direct = f_of("direct");
    let nginx = f_of("nginx");
    let haproxy = f_of("haproxy");
    let pick = |f: Option<&Figures>, g: fn(&Figures) -> Option<f64>| f.and_then(g);
    println!(
        "| proxy | conn/s ÷ direct | ÷ nginx | ÷ HAProxy | added p50 | added p99 | added p99.9 | added p99 ÷ nginx's | ÷ HAProxy's | bulk ÷ direct | ÷ nginx | ÷ HAProxy |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for label in order.iter().filter(|l| l.as_str() != "direct") {
        let f = &figs[label];
        let add = |g: fn(&Figures) -> Option<f64>| added(g(f), pick(direct, g));
        let add_of = |o: Option<&Figures>, g: fn(&Figures) -> Option<f64>| {
            o.and_then(|o| added(g(o), pick(direct, g)))
        };
        let added_ratio = |mine: Option<f64>, theirs: Option<f64>| match (mine, theirs) {
            (Some(m), Some(t)) if t > 0.0 && m >= 0.0 => format!("{:.2}×", m / t),
            (Some(m), Some(t)) => format!("{m:+.0} vs {t:+.0} µs"),
            _ => "–".to_string(),
        };
        let p99 = |x: &Figures| x.p99;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            display(label),
            ratio(f.conn_per_s, pick(direct, |x| x.conn_per_s)),
            ratio(f.conn_per_s, pick(nginx, |x| x.conn_per_s)),
            ratio(f.conn_per_s, pick(haproxy, |x| x.conn_per_s)),
            opt(add(|x| x.p50), &signed_us),
            opt(add(p99), &signed_us),
            opt(add(|x| x.p999), &signed_us),
            added_ratio(add(p99), add_of(nginx, p99)),
            added_ratio(add(p99), add_of(haproxy, p99)),
            ratio(f.mb_per_s, pick(direct, |x| x.mb_per_s)),
            ratio(f.mb_per_s, pick(nginx, |x| x.mb_per_s)),
            ratio(f.mb_per_s, pick(haproxy, |x| x.mb_per_s)),
        );
    }
    if !redirect_order.is_empty() {
        println!();
        redirect_table(&runs, &redirect_order);
    }
    Ok(())
}

/// Redirect mode: round trip at the client, and the balancer's answer time
/// from its histogram (share within the aim, bucket bound of the p99).
fn redirect_table(runs: &BTreeMap<String, BTreeMap<String, Vec<Value>>>, order: &[String]) {
    let all: Vec<&Value> = order
        .iter()
        .filter_map(|l| runs[l].get("redirect"))
        .flatten()
        .collect();
    let shown = |path: &[&str]| {
        let mut v: Vec<f64> = all.iter().filter_map(|v| get(v, path)).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v.iter()
            .map(|x| thousands(*x))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let aim = all
        .iter()
        .find_map(|v| get(v, &["server", "aim_us"]))
        .unwrap_or(50.0);
    println!(
        "Redirect mode, \"which node?\" at {} requests/s over {} persistent connections. The round \
         trip runs from the intended send time (load generator included); the answer time is \
         the balancer's, from a whole request frame to its reply written \
         (`chat_balancer_redirect_answer_seconds`, buckets 5 µs to 10 ms, over the window).",
        shown(&["rate"]),
        shown(&["connections"]),
    );
    println!();
    println!(
        "| target | achieved req/s | round trip p50 | p99 | p99.9 | max | errors | answers ≤ {aim:.0} µs | answer p50 | answer p99 | answer p99.9 | answer mean |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let dash = || "–".to_string();
    let us = |v: f64| format!("{v:.0} µs");
    for label in order {
        let r = &runs[label]["redirect"];
        let sum = r.iter().filter_map(|v| get(v, &["errors"])).sum::<f64>();
        // A bucket bound, the upper median over the rounds (a bound itself);
        // past the last finite bound when a round's quantile was.
        let bound = |key: &str| {
            let mut v: Vec<f64> = r
                .iter()
                .filter(|v| v.get("server").and_then(|s| s.get("answers")).is_some())
                .map(|v| get(v, &["server", key]).unwrap_or(f64::INFINITY))
                .collect();
            if v.is_empty() {
                return dash();
            }
            v.sort_by(f64::total_cmp);
            match v[v.len() / 2] {
                b if b.is_finite() => format!("≤ {}", bucket_us(b)),
                _ => {
                    let last = r
                        .iter()
                        .find_map(|v| get(v, &["server", "last_finite_le_us"]));
                    last.map_or_else(|| "> all buckets".into(), |l| format!("> {}", bucket_us(l)))
                }
            }
        };
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            med(r, &["achieved_per_s"]).map_or_else(dash, thousands),
            med(r, &["latency_us", "p50"]).map_or_else(dash, us),
            med(r, &["latency_us", "p99"]).map_or_else(dash, us),
            med(r, &["latency_us", "p999"]).map_or_else(dash, us),
            med(r, &["latency_us", "max"]).map_or_else(dash, us),
            thousands(sum),
            med(r, &["server", "within_aim"]).map_or_else(dash, |w| format!("{:.2} %", w * 100.0)),
            bound("p50_le_us"),
            bound("p99_le_us"),
            bound("p999_le_us"),
            med(r, &["server", "mean_us"]).map_or_else(dash, |v| format!("{v:.1} µs")),
        );
    }
}

/// A bucket bound in µs: `25 µs`, `1 ms`.
fn bucket_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us} µs")
    } else {
        format!("{} ms", us / 1000.0)
    }
}
