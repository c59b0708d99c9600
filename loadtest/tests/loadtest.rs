//! `chat-loadtest` end to end: the binary against real nodes (and a real
//! balancer, a real nats-server), read through its JSON summary, table and
//! `.hgrm` files. Each test is a short run on loopback.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chat_loadtest::interval_log;
use chat_loadtest::report::parse_percentile_distribution;
use chat_testkit::{LocalNats, LocalNode, NodeOptions};
use serde_json::Value;

fn loadtest() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chat-loadtest"));
    c.args(["--metrics-listen", "off", "--progress", "lines"])
        .env("CHAT_LOADTEST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

/// Runs the load tester with `args` (a command line, split at spaces) to
/// the end; returns its output and JSON summary.
fn run(args: &str, json: &Path) -> (Output, Value) {
    let out = loadtest()
        .args(args.split_whitespace())
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(json).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); status {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, serde_json::from_str(&summary).unwrap())
}

/// [`run`], which must succeed; returns the JSON summary.
fn run_ok(args: &str, json: &Path) -> Value {
    let (out, summary) = run(args, json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary
}

/// Starts the load tester with `args` (split at spaces) and its JSON
/// summary in `json`, output captured.
fn spawn(args: &str, json: &Path) -> Child {
    loadtest()
        .args(args.split_whitespace())
        .args(["--json", json.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn node(shards: usize) -> LocalNode {
    LocalNode::start(NodeOptions {
        shards,
        ..NodeOptions::default()
    })
    .unwrap()
}

fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing in {summary}"))
}

fn p99_us(summary: &Value, metric: &str, correction: &str) -> u64 {
    summary["latency"][metric][correction]["p99_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("{metric}.{correction}.p99_us missing"))
}

fn signal(node: &LocalNode, sig: i32) {
    let pid = node.pid().expect("node running") as i32;
    // SAFETY: sending a signal to a child process we own.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn a_local_run_loses_nothing_and_its_reports_agree() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let hgrm = dir.path().join("hgrm");
    let plot = dir.path().join("latency.svg");
    let (out, s) = run(
        &format!(
            "--local 1 --users 40 --rate 400 --duration 3s --warmup 1s --slo loss=0 --hgrm-dir {} --plot {}",
            hgrm.to_str().unwrap(),
            plot.to_str().unwrap()
        ),
        &json,
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}\n{table}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("traffic"),
        "a live line each second:\n{stderr}"
    );

    assert_eq!(s["format"], "chat-loadtest/1");
    let sent = counter(&s, "sent");
    assert!(sent >= 1000, "400/s for 4 s sends about 1600, got {sent}");
    assert_eq!(
        counter(&s, "expected"),
        sent,
        "one recipient per direct message"
    );
    assert_eq!(counter(&s, "delivered"), sent, "every message delivered");
    assert_eq!(counter(&s, "acked"), sent);
    for zero in [
        "lost",
        "duplicated",
        "out_of_order",
        "send_failed",
        "disconnects",
    ] {
        assert_eq!(counter(&s, zero), 0, "{zero}");
    }
    assert_eq!(s["errors_total"], 0, "{}", s["errors"]);
    assert_eq!(counter(&s, "connections_at_end"), 40);
    assert_eq!(s["balance"]["per_node"].as_object().unwrap().len(), 1);

    // The measured window's latency counts are its acknowledged sends.
    let window_acked = counter(&s, "window_acked");
    assert_eq!(s["latency"]["send_ack"]["corrected"]["count"], window_acked);
    assert_eq!(
        s["latency"]["send_ack"]["uncorrected"]["count"],
        window_acked
    );
    assert_eq!(
        s["latency"]["delivery"]["corrected"]["count"],
        s["latency"]["delivery"]["uncorrected"]["count"]
    );

    // Every counter of the JSON appears in the table with the same value.
    let counters = table.split_once("counters:").expect("a counters section").1;
    let words: Vec<&str> = counters.split_whitespace().collect();
    for (name, value) in s["counters"].as_object().unwrap() {
        let at = words
            .iter()
            .position(|w| w == name)
            .unwrap_or_else(|| panic!("counter {name} not in the table:\n{table}"));
        assert_eq!(words[at + 1], value.to_string(), "{name} differs:\n{table}");
    }
    assert!(table.contains("delivery"), "{table}");

    // Each .hgrm parses and agrees with the JSON; the interval log reads back.
    let text = std::fs::read_to_string(hgrm.join("delivery.corrected.hgrm")).unwrap();
    let parsed = parse_percentile_distribution(&text).unwrap();
    assert_eq!(
        parsed.total_count,
        s["latency"]["delivery"]["corrected"]["count"]
            .as_u64()
            .unwrap()
    );
    for entry in std::fs::read_dir(&hgrm).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read(&path).unwrap();
        if path.extension().is_some_and(|e| e == "hgrm") {
            parse_percentile_distribution(std::str::from_utf8(&text).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else {
            let intervals = interval_log::read(&text).unwrap();
            assert!(intervals.len() >= 4, "one interval per second per series");
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg"));

    // The servers' cost: --local knows its processes.
    let server = &s["server"];
    assert_eq!(server["source"], "local", "{server}");
    assert!(server["error"].is_null(), "{server}");
    assert_eq!(server["connections"], 40, "{server}");
    assert!(server["deliveries"].as_u64().unwrap() > 0, "{server}");
    for group in ["nodes", "balancer"] {
        let g = &server[group];
        let cpu = g["cpu_us_per_delivered"].as_f64().unwrap_or(0.0);
        assert!(cpu > 0.0, "{group}: CPU per delivered message: {g}");
        assert!(g["rss_before_bytes"].as_u64().unwrap() > 0, "{group}: {g}");
        assert!(g["rss_bytes_per_connection"].is_number(), "{group}: {g}");
    }
    let per_connection = server["nodes"]["rss_bytes_per_connection"]
        .as_f64()
        .unwrap();
    assert!(
        per_connection > 0.0,
        "the node holds 40 more connections than before: {server}"
    );
    assert!(table.contains("server (local)"), "{table}");
}

/// Every message of `s` was sent, acknowledged and delivered, nothing lost,
/// no error.
fn assert_all_delivered(s: &Value, what: &str) {
    let sent = counter(s, "sent");
    assert!(sent > 0, "{what}: nothing sent");
    for name in ["expected", "acked", "delivered"] {
        assert_eq!(counter(s, name), sent, "{what}: {name} = sent");
    }
    for zero in [
        "lost",
        "send_failed",
        "duplicated",
        "out_of_order",
        "disconnects",
    ] {
        assert_eq!(counter(s, zero), 0, "{what}: {zero}");
    }
    assert_eq!(s["errors_total"], 0, "{what}: {}", s["errors"]);
}

#[test]
fn a_closed_loop_at_saturation_loses_nothing_in_either_protocol() {
    let node = node(2);
    let dir = tempfile::tempdir().unwrap();
    let addr = node.addr.to_string();
    let metrics = format!("http://{}/metrics", node.metrics_addr);
    for protocol in ["fb", "json"] {
        let json = dir.path().join(format!("{protocol}.json"));
        // 100 users are 50 pairs; far more messages offered than a node
        // carries, so every sender always has its next one due.
        let (out, s) = run(
            &format!(
                "--target {addr} --protocol {protocol} --model closed --users 100 --rate 200000 \
                 --duration 3s --warmup 1s --server-metrics {metrics}"
            ),
            &json,
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{protocol}: {table}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(s["model"], "closed");
        let errors = s["errors"].as_object().unwrap();
        assert!(
            !errors.keys().any(|k| k.starts_with("send: closed")),
            "{protocol}: sends after the connections closed: {errors:?}"
        );
        assert_all_delivered(&s, protocol);
        // The window holds what started in it, behind any backlog.
        let window_acked = counter(&s, "window_acked");
        assert!(window_acked > 0, "{protocol}: {table}");
        assert_eq!(
            s["latency"]["send_ack"]["uncorrected"]["count"],
            window_acked
        );
        assert!(counter(&s, "window_offered") > window_acked, "saturated");
        assert!(
            s["latency"]["delivery"]["uncorrected"]["count"]
                .as_u64()
                .unwrap()
                > 0
        );
        // The node's cost, from its /metrics.
        let server = &s["server"];
        assert_eq!(server["source"], "metrics", "{server}");
        assert_eq!(server["connections"], 100, "{server}");
        assert!(
            server["nodes"]["cpu_us_per_delivered"].as_f64().unwrap() > 0.0,
            "{server}"
        );
        assert!(server["balancer"].is_null(), "{server}");
    }
}

#[test]
fn idle_connections_without_login_are_measured() {
    let node = node(1);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("idle.json");
    let (out, s) = run(
        &format!(
            "--target {} --scenario connect --connect-only --users 50 --rate 500 --duration 1s \
             --server-metrics http://{}/metrics --slo p99=10s,errors=0",
            node.addr, node.metrics_addr
        ),
        &json,
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["config"]["connect_only"], true);
    assert_eq!(counter(&s, "users"), 50);
    assert_eq!(counter(&s, "logins"), 0, "nobody logs in");
    assert_eq!(counter(&s, "connections_at_end"), 50);
    assert_eq!(counter(&s, "window_acked"), 50, "every ping answered");
    assert_eq!(s["errors_total"], 0, "{}", s["errors"]);
    assert_eq!(
        s["slo"][0]["objective"], "p99<=10s",
        "the objective is on connecting"
    );
    assert_eq!(s["slo"][0]["held"], true, "{}", s["slo"]);
    let server = &s["server"];
    assert_eq!(server["connections"], 50, "{server}");
    assert!(
        server["nodes"]["rss_bytes_per_connection"].is_number(),
        "{server}"
    );
    assert!(
        server["nodes"]["cpu_us_per_delivered"].is_null(),
        "no messages: {server}"
    );
}

#[test]
fn a_node_killed_mid_run_shows_as_lost_messages_and_errors() {
    let mut node = node(1);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let addr = node.addr.to_string();
    let child = spawn(
        &format!(
            "--target {addr} --users 20 --rate 500 --duration 5s --warmup 0s --drain 2s --slo loss=0"
        ),
        &json,
    );
    // Once messages flow (setting up 20 users can take seconds on a loaded
    // machine): a hung node (messages pile up unprocessed), then killed.
    let flowing = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < flowing
        && chat_testkit::scrape(node.metrics_addr)
            .ok()
            .and_then(|m| {
                chat_testkit::metric_value(
                    &m,
                    r#"chat_node_requests_total{kind="direct_message",outcome="ok"}"#,
                )
            })
            .unwrap_or(0.0)
            < 50.0
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&node, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(500));
    node.kill9();
    let out = child.wait_with_output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the loss=0 objective is missed:\n{table}"
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let lost = counter(&s, "lost");
    assert!(
        lost > 0,
        "messages sent to the hung node never arrived:\n{table}"
    );
    assert_eq!(counter(&s, "expected") - counter(&s, "delivered"), lost);
    assert!(counter(&s, "disconnects") > 0);
    assert!(s["errors_total"].as_u64().unwrap() > 0, "{}", s["errors"]);
    assert!(table.contains("MISSED"), "{table}");
}

/// Runs 10 s at 300 msg/s against a node stopped for 1 s in the middle.
fn stalled_run(model: &str, dir: &Path) -> Value {
    let node = node(1);
    let json = dir.join(format!("{model}.json"));
    let addr = node.addr.to_string();
    let child = spawn(
        &format!(
            "--target {addr} --users 20 --rate 300 --duration 10s --warmup 0s --model {model}"
        ),
        &json,
    );
    stall_after_setup(&node, child, &json)
}

fn stall_after_setup(node: &LocalNode, child: Child, json: &Path) -> Value {
    std::thread::sleep(Duration::from_secs(5));
    signal(node, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    signal(node, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn a_stall_shows_in_corrected_latency_and_closed_loop_hides_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = stalled_run("open", dir.path());
    let closed = stalled_run("closed", dir.path());
    let open_corrected = p99_us(&open, "send_ack", "corrected");
    let closed_corrected = p99_us(&closed, "send_ack", "corrected");
    let closed_uncorrected = p99_us(&closed, "send_ack", "uncorrected");
    eprintln!(
        "send_ack p99: open corrected {open_corrected} µs, closed corrected {closed_corrected} µs, \
         closed uncorrected {closed_uncorrected} µs"
    );
    assert!(
        open_corrected >= 200_000,
        "a 1 s stall in 10 s is ~10% of sends: p99 {open_corrected} µs"
    );
    assert!(p99_us(&open, "delivery", "corrected") >= 200_000);
    assert!(
        closed_corrected >= 200_000,
        "corrected from the schedule, closed loop too"
    );
    assert!(
        closed_uncorrected * 3 < open_corrected,
        "a closed loop sees the stall once per user: uncorrected p99 {closed_uncorrected} µs"
    );
    assert_eq!(
        counter(&open, "lost"),
        0,
        "a stall delays, it loses nothing"
    );
}

#[test]
fn the_json_protocol_drives_our_node() {
    let node = node(2);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let addr = node.addr.to_string();
    let s = run_ok(
        &format!("--target {addr} --protocol json --users 20 --rate 200 --duration 2s --warmup 0s"),
        &json,
    );
    assert_eq!(s["protocol"], "json");
    let sent = counter(&s, "sent");
    assert!(sent >= 300, "{sent}");
    assert_eq!(counter(&s, "delivered"), sent);
    assert_eq!(
        counter(&s, "acked"),
        sent,
        "our node answers JSON chat requests (msgid 12)"
    );
    assert_eq!(s["errors_total"], 0, "{}", s["errors"]);
    assert!(
        delivery_acks(&node) > 0.0,
        "JSON users acknowledge with msgid 50 by default"
    );

    // As the seed's client: no msgid 50, every message still delivered (the
    // node counts a push read at the user's next request).
    let node = self::node(1);
    let addr = node.addr.to_string();
    let s = run_ok(
        &format!(
            "--target {addr} --protocol json --json-acks implicit --users 20 --rate 200 --duration 2s --warmup 0s"
        ),
        &json,
    );
    let sent = counter(&s, "sent");
    assert!(sent >= 300, "{sent}");
    assert_eq!(counter(&s, "delivered"), sent);
    assert_eq!(s["errors_total"], 0, "{}", s["errors"]);
    assert_eq!(delivery_acks(&node), 0.0, "--json-acks implicit sends none");
}

/// The acknowledgement requests `node` handled (msgid 50, FlatBuffers'
/// `DeliveryAck`).
fn delivery_acks(node: &LocalNode) -> f64 {
    let text = chat_testkit::scrape(node.metrics_addr).unwrap();
    chat_testkit::metric_value(&text, r#"chat_node_requests_total{kind="delivery_ack"}"#)
        .unwrap_or(0.0)
}

#[test]
fn group_and_mixed_scenarios_deliver_to_every_member() {
    let node = node(2);
    let dir = tempfile::tempdir().unwrap();
    let addr = node.addr.to_string();
    let json = dir.path().join("group.json");
    let s = run_ok(
        &format!(
            "--target {addr} --scenario group --users 30 --group-size 10 --rate 100 --duration 2s --warmup 0s"
        ),
        &json,
    );
    let sent = counter(&s, "sent");
    assert!(sent > 0);
    assert_eq!(
        counter(&s, "expected"),
        sent * 9,
        "each group message reaches 9 others"
    );
    assert_eq!(counter(&s, "delivered"), counter(&s, "expected"));

    let json = dir.path().join("mixed.json");
    let s = run_ok(
        &format!(
            "--target {addr} --scenario mixed --users 40 --active 0.5 --mix direct=60,group=20,relogin=20 --rate 200 --duration 3s --warmup 0s"
        ),
        &json,
    );
    assert!(counter(&s, "logouts") > 0, "mixed logs users out and in");
    assert_eq!(
        counter(&s, "delivered"),
        counter(&s, "expected"),
        "offline messages arrive at login"
    );
    assert_eq!(counter(&s, "duplicated"), 0);
    assert_eq!(
        counter(&s, "out_of_order"),
        0,
        "a re-login's pending messages come before the pushes that follow it"
    );
}

#[test]
fn history_browses_and_read_marks_are_measured() {
    let node = node(2);
    let dir = tempfile::tempdir().unwrap();
    let addr = node.addr.to_string();
    let json = dir.path().join("history.json");
    let (out, s) = run(
        &format!(
            "--target {addr} --scenario history --users 30 --group-size 10 --rate 200 --duration 3s --warmup 0s"
        ),
        &json,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["scenario"], "history");
    let requests = counter(&s, "history_requests");
    assert!(requests > 0, "half the actions browse");
    assert_eq!(counter(&s, "history_pages"), requests, "{}", s["errors"]);
    assert_eq!(counter(&s, "history_failed"), 0);
    assert!(
        counter(&s, "history_messages") > 0,
        "the chatting fills the histories"
    );
    assert!(p99_us(&s, "history", "corrected") > 0);
    assert!(p99_us(&s, "history", "uncorrected") > 0);
    assert_eq!(counter(&s, "delivered"), counter(&s, "expected"));
    assert_eq!(s["errors_total"], 0, "{}", s["errors"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("history   corrected"), "{table}");

    let json = dir.path().join("read.json");
    let s = run_ok(
        &format!(
            "--target {addr} --scenario mixed --users 40 --active 0.5 --mix direct=60,group=20,relogin=10,read=10 --rate 200 --duration 3s --warmup 0s"
        ),
        &json,
    );
    assert!(counter(&s, "marked_read") > 0, "{}", s["errors"]);
    assert!(p99_us(&s, "mark_read", "corrected") > 0);
    assert_eq!(counter(&s, "history_requests"), 0, "no history in this mix");
    // A mark-read only fails when it races a re-login of its user.
    let errors = s["errors"].as_object().unwrap();
    for (kind, _) in errors.iter().filter(|(k, _)| k.starts_with("mark_read")) {
        assert!(
            kind.ends_with("user offline") || kind.ends_with("NotLoggedIn"),
            "{kind}"
        );
    }
    assert_eq!(counter(&s, "delivered"), counter(&s, "expected"));

    // The same over our node's JSON protocol (msgids 40 and 42).
    let json = dir.path().join("history-json.json");
    let s = run_ok(
        &format!(
            "--target {addr} --protocol json --scenario history --mix direct=40,read=10,history=50 --users 30 --rate 200 --duration 3s --warmup 0s"
        ),
        &json,
    );
    let requests = counter(&s, "history_requests");
    assert!(requests > 0);
    assert_eq!(counter(&s, "history_pages"), requests, "{}", s["errors"]);
    assert_eq!(counter(&s, "history_failed"), 0, "{}", s["errors"]);
    assert!(counter(&s, "history_messages") > 0);
    assert!(counter(&s, "marked_read") > 0, "{}", s["errors"]);
    assert_eq!(counter(&s, "delivered"), counter(&s, "expected"));
}

#[test]
fn two_workers_and_a_coordinator_merge_into_one_report() {
    let nats = LocalNats::start().unwrap();
    let node = node(2);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let workers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
                .args(["worker", "--nats", &nats.url(), "--runs", "1"])
                .env("CHAT_LOADTEST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let addr = node.addr.to_string();
    let s = run_ok(
        &format!(
            "--workers 2 --nats {} --target {} --users 30 --rate 300 --duration 2s --warmup 0s \
             --server-metrics http://{}/metrics",
            nats.url(),
            addr,
            node.metrics_addr
        ),
        &json,
    );
    let mut per_worker_sent = 0;
    for w in workers {
        let out = w.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let sent: u64 = stderr
            .lines()
            .find_map(|l| {
                l.split_once(" sent ")
                    .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or_else(|| panic!("worker reported no total:\n{stderr}"));
        per_worker_sent += sent;
    }
    assert_eq!(s["workers"], 2);
    assert_eq!(counter(&s, "users"), 30, "15 users each");
    assert_eq!(
        counter(&s, "sent"),
        per_worker_sent,
        "the merged count is the sum"
    );
    assert_eq!(counter(&s, "delivered"), counter(&s, "sent"));
    assert_eq!(
        s["latency"]["send_ack"]["corrected"]["count"],
        counter(&s, "window_acked")
    );
    // One worker sampled the node; both counted their receipts and connections.
    let server = &s["server"];
    assert_eq!(server["source"], "metrics", "{server}");
    assert_eq!(server["connections"], 30, "{server}");
    assert!(
        server["nodes"]["cpu_us_per_delivered"].as_f64().unwrap() > 0.0,
        "{server}"
    );
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

#[test]
fn ctrl_c_tears_the_local_cluster_down() {
    use std::io::{BufRead, BufReader};
    let mut child = loadtest()
        .args([
            "--local",
            "1",
            "--users",
            "20",
            "--rate",
            "100",
            "--duration",
            "60s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("traffic"))
        .expect("traffic starts");
    let cluster = children_of(child.id());
    assert_eq!(cluster.len(), 2, "a balancer and a node run: {cluster:?}");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    for pid in cluster {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the local cluster outlived Ctrl-C"
        );
    }
}
