//! The monitoring we ship, checked against the code as it is: a real
//! Prometheus, started from `grafana/prometheus.yml` (ports rewritten to this
//! test's) with `grafana/alerts.yml`, scrapes two nodes (with NATS), a
//! balancer (with a dead upstream beside them) and a running load test;
//! then every panel query of every dashboard in `grafana/dashboards/` is
//! evaluated and must return data, every rule must load, and every metric
//! endpoint must pass `promtool check metrics` with bounded labels.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_testkit::{
    BalancerOptions, ClusterOptions, LocalCluster, LocalPrometheus, free_port, scrape,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The shipped scrape config with this test's ports and a 1 s interval.
fn config(targets: &[(&str, SocketAddr)]) -> String {
    let mut config = read("grafana/prometheus.yml");
    for (shipped, ours) in targets {
        assert!(
            config.contains(shipped),
            "grafana/prometheus.yml scrapes {shipped}"
        );
        config = config.replace(shipped, &ours.to_string());
    }
    for setting in ["scrape_interval", "evaluation_interval"] {
        let shipped = format!("{setting}: 5s");
        assert!(
            config.contains(&shipped),
            "grafana/prometheus.yml sets {shipped}"
        );
        config = config.replace(&shipped, &format!("{setting}: 1s"));
    }
    config
}

/// Each template variable's value as the dashboard opens: its current
/// value, or its "All" value.
fn variables(dashboard: &Value) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let all = v["allValue"].as_str().unwrap_or(".*").to_owned();
        let current = &v["current"]["value"];
        let values: Vec<String> = match current {
            Value::Array(list) => list
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        };
        let value = if values.is_empty() || values.iter().any(|x| x == "$__all" || x == "All") {
            all
        } else {
            values.join("|")
        };
        vars.insert(name, value);
    }
    vars.insert("__rate_interval".into(), "1m".into());
    vars.insert("__interval".into(), "15s".into());
    vars.insert("__range".into(), "5m".into());
    vars
}

fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = expr.to_owned();
    // Longest names first, so that `$job` does not eat `$jobs`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &vars[name]);
        out = out.replace(&format!("${name}"), &vars[name]);
    }
    out
}

/// Every `(panel title, expr)` of a dashboard, rows' panels included.
fn queries(panels: &Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_owned()));
            }
        }
        queries(&panel["panels"], out);
    }
}

fn has_data(data: &Value) -> bool {
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => data["result"].as_array().is_some_and(|r| !r.is_empty()),
        Some("scalar") | Some("string") => true,
        _ => false,
    }
}

/// Waits until Prometheus has scraped every target successfully.
fn wait_all_up(prom: &LocalPrometheus, expected: usize) {
    let started = Instant::now();
    loop {
        let targets = prom.api("targets").unwrap();
        let active = targets["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        if active.len() == expected && up == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "targets not all up: {}",
            serde_json::to_string_pretty(&active).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn promtool_check_metrics(name: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install -y prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {name}:\n{said}"
    );
}

/// No label that could carry a user or group id, and few label sets per
/// metric. A histogram's `le` is left out of the count: its buckets are a
/// fixed multiple of its label sets, not labels that grow (the node's
/// request histogram has one label set per request kind used).
fn check_labels(name: &str, text: &str) {
    const FORBIDDEN: [&str; 9] = [
        "user",
        "user_id",
        "userid",
        "group",
        "group_id",
        "groupid",
        "id",
        "name",
        "message_id",
    ];
    let mut series: BTreeMap<&str, BTreeSet<Vec<&str>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let metric = line.split(['{', ' ']).next().unwrap();
        let mut set = Vec::new();
        if let Some((_, labels)) = line.split_once('{') {
            let labels = labels.rsplit_once('}').map_or("", |(l, _)| l);
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let label = pair.split('=').next().unwrap();
                assert!(
                    !FORBIDDEN.contains(&label),
                    "{name}: label {label} in {line}"
                );
                if label != "le" {
                    set.push(pair);
                }
            }
        }
        series.entry(metric).or_default().insert(set);
    }
    for (metric, sets) in series {
        assert!(
            sets.len() <= 200,
            "{name}: {metric} has {} label sets: labels must stay bounded",
            sets.len()
        );
    }
}

#[test]
fn every_dashboard_query_returns_data_and_every_metric_passes_promtool() {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let cluster = LocalCluster::start(ClusterOptions {
        nodes: 2,
        shards: 2,
        balancer: Some(BalancerOptions {
            upstreams: vec![dead.to_string()],
            ..BalancerOptions::default()
        }),
        ..ClusterOptions::default()
    })
    .unwrap();
    let balancer = cluster.balancer().unwrap();
    let loadtest_metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let nodes = cluster.metrics_addrs();
    // The nodes' cost too (chat_loadtest_server_*), so that promtool reads it.
    let server_metrics: Vec<String> = nodes
        .iter()
        .map(|a| format!("--server-metrics=http://{a}/metrics"))
        .collect();
    let mut loadtest = Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
        .args(["--target", &balancer.addr.to_string()])
        .args(&server_metrics)
        .args(["--scenario", "mixed", "--users", "40", "--active", "0.5"])
        // Every kind, so that the history and read panels have data too.
        .args(["--mix", "direct=60,group=20,relogin=10,read=5,history=5"])
        .args([
            "--rate",
            "100",
            "--duration",
            "60s",
            "--warmup",
            "0s",
            "--drain",
            "1s",
        ])
        .args([
            "--metrics-listen",
            &loadtest_metrics.to_string(),
            "--progress",
            "off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let prom = LocalPrometheus::start(
        &config(&[
            ("127.0.0.1:9100", nodes[0]),
            ("127.0.0.1:9101", nodes[1]),
            ("127.0.0.1:9300", balancer.admin_addr),
            ("127.0.0.1:9400", loadtest_metrics),
        ]),
        &[("alerts.yml", &read("grafana/alerts.yml"))],
    )
    .unwrap();
    wait_all_up(&prom, 4);
    // Enough scrapes for rates and quantiles over the substituted 1m.
    std::thread::sleep(Duration::from_secs(12));

    let mut evaluated = 0;
    let mut failures = Vec::new();
    let dir = repo().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "four dashboards in {}", dir.display());
    for file in &files {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let vars = variables(&dashboard);
        let mut all = Vec::new();
        queries(&dashboard["panels"], &mut all);
        assert!(!all.is_empty(), "{} has panel queries", file.display());
        for (title, expr) in all {
            let expr = substitute(&expr, &vars);
            evaluated += 1;
            match prom.query(&expr) {
                Ok(data) if has_data(&data) => {}
                Ok(_) => failures.push(format!(
                    "{}: {title}: no series from {expr}",
                    file.display()
                )),
                Err(e) => failures.push(format!("{}: {title}: {expr}: {e}", file.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {evaluated} panel queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let groups = prom.api("rules").unwrap()["groups"].clone();
    let rules: Vec<&Value> = groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(
        rules.len() >= 9,
        "every alert of grafana/alerts.yml is loaded: {groups}"
    );
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "rule {} evaluates: {rule}",
            rule["name"]
        );
    }

    let endpoints = [
        ("node 0", nodes[0]),
        ("node 1", nodes[1]),
        ("balancer", balancer.admin_addr),
        ("load tester", loadtest_metrics),
    ];
    for (name, addr) in endpoints {
        let text = scrape(addr).unwrap();
        promtool_check_metrics(name, &text);
        check_labels(name, &text);
    }
    let _ = loadtest.kill();
    let _ = loadtest.wait();
}

#[test]
fn variables_and_substitution_follow_grafana() {
    let dashboard: Value = serde_json::json!({"templating": {"list": [
        {"name": "job", "current": {"value": "chat-node"}},
        {"name": "instance", "allValue": ".*", "current": {"value": ["$__all"]}},
        {"name": "shard", "current": {"value": ["0", "1"]}},
    ]}});
    let vars = variables(&dashboard);
    assert_eq!(
        substitute(
            r#"rate(x{job=~"$job",instance=~"${instance}",shard=~"$shard"}[$__rate_interval])"#,
            &vars
        ),
        r#"rate(x{job=~"chat-node",instance=~".*",shard=~"0|1"}[1m])"#
    );
}
