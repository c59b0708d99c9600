//! `--reconnect` end to end: the binary against a real node whose client
//! connections are cut for real (through TCP relays that close both sides),
//! or that is killed and restarted; the virtual users come back by
//! themselves, and every message acknowledged arrives once, in order.
//! Without `--reconnect`, a user whose connection dies stays offline.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use chat_testkit::{LocalNode, NodeOptions, Relay};
use serde_json::Value;

fn node() -> LocalNode {
    LocalNode::start(NodeOptions::default()).unwrap()
}

/// A run of the load tester with `args` (split at spaces), its JSON
/// summary in `json`; its stderr is read by a thread that says when the
/// traffic started (the live line of the first traffic second).
struct Run {
    child: Child,
    traffic: mpsc::Receiver<()>,
    stderr: Arc<Mutex<String>>,
}

impl Run {
    fn spawn(args: &str, json: &Path) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
            .args(["--metrics-listen", "off", "--progress", "lines"])
            .args(args.split_whitespace())
            .args(["--json", json.to_str().unwrap()])
            .env("CHAT_LOADTEST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, traffic) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, text) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("traffic") {
                    let _ = tx.send(());
                }
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        Run {
            child,
            traffic,
            stderr,
        }
    }

    /// Waits for the first second of traffic.
    fn wait_for_traffic(&self) {
        self.traffic
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no traffic:\n{}", self.stderr.lock().unwrap()));
    }

    /// Waits for the end; returns the table and the JSON summary.
    fn finish(self, json: &Path) -> (String, Value) {
        let out = self.child.wait_with_output().unwrap();
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(
            out.status.success(),
            "status {:?}\n{table}\n{stderr}",
            out.status
        );
        let summary = std::fs::read_to_string(json)
            .unwrap_or_else(|e| panic!("no JSON summary ({e})\n{table}\n{stderr}"));
        (table, serde_json::from_str(&summary).unwrap())
    }
}

fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing in {summary}"))
}

/// What every `--reconnect` run must show once its users came back.
fn assert_resumed(s: &Value, table: &str) {
    eprintln!("{table}");
    let c = |name| counter(s, name);
    assert!(c("disconnects") > 0, "connections were cut:\n{table}");
    assert!(c("reconnects") > 0, "users came back:\n{table}");
    assert!(
        c("delivered_after_reconnect") > 0,
        "messages stored while users were away came with their re-login:\n{table}"
    );
    for zero in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(c(zero), 0, "{zero}:\n{table}\n{}", s["errors"]);
    }
    assert_eq!(
        c("delivered"),
        c("delivered_live") + c("delivered_at_login") + c("delivered_after_reconnect"),
        "{table}"
    );
    assert_eq!(c("delivered"), c("expected"), "{table}");
    assert!(c("acked") > 0 && c("delivered_live") > 0, "{table}");
    assert!(
        c("acked") <= c("delivered"),
        "every acknowledged message arrived:\n{table}"
    );
    assert!(
        table.contains("delivered_after_reconnect (pending"),
        "the table explains the counters:\n{table}"
    );
}

/// Users spread over two relays to one node: relay A is cut and refuses
/// connections from then on (its users come back through B, the next
/// target), later B is cut (everyone comes back through B again).
fn cut_connections_are_resumed(protocol: &str) {
    let node = node();
    let (a, b) = (Relay::start(node.addr), Relay::start(node.addr));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let run = Run::spawn(
        &format!(
            "--target {},{} --protocol {protocol} --reconnect --users 20 --rate 200 \
             --duration 6s --warmup 0s --drain 15s",
            a.addr, b.addr
        ),
        &json,
    );
    run.wait_for_traffic();
    std::thread::sleep(Duration::from_secs(1));
    a.cut();
    std::thread::sleep(Duration::from_millis(1500));
    b.drop_connections();
    let (table, s) = run.finish(&json);
    assert_resumed(&s, &table);
    assert!(
        counter(&s, "reconnects") >= 20,
        "the ten users of A once, all twenty after B's cut:\n{table}"
    );
}

#[test]
fn cut_connections_are_resumed_over_flatbuffers() {
    cut_connections_are_resumed("fb");
}

#[test]
fn cut_connections_are_resumed_over_json() {
    cut_connections_are_resumed("json");
}

#[test]
fn a_node_killed_and_restarted_is_reconnected_to() {
    let mut node = node();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let run = Run::spawn(
        &format!(
            "--target {} --reconnect --users 20 --rate 200 --duration 6s --warmup 0s --drain 15s",
            node.addr
        ),
        &json,
    );
    run.wait_for_traffic();
    std::thread::sleep(Duration::from_secs(1));
    node.kill9();
    node.restart().unwrap();
    let (table, s) = run.finish(&json);
    assert_resumed(&s, &table);
}

#[test]
fn without_reconnect_a_cut_user_stays_offline() {
    let node = node();
    let relay = Relay::start(node.addr);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let run = Run::spawn(
        &format!(
            "--target {} --users 10 --rate 100 --duration 4s --warmup 0s --drain 2s",
            relay.addr
        ),
        &json,
    );
    run.wait_for_traffic();
    std::thread::sleep(Duration::from_secs(1));
    relay.cut();
    let (table, s) = run.finish(&json);
    let c = |name| counter(&s, name);
    assert_eq!(c("disconnects"), 10, "every user was cut:\n{table}");
    assert_eq!(c("connections_at_end"), 0, "and stayed offline:\n{table}");
    for zero in [
        "reconnects",
        "not_connected",
        "delivered_after_reconnect",
        "unconfirmed",
    ] {
        assert_eq!(c(zero), 0, "{zero}:\n{table}");
    }
    assert_eq!(
        c("delivered"),
        c("delivered_live") + c("delivered_at_login")
    );
    let errors = s["errors"].as_object().unwrap();
    assert!(
        errors.contains_key("send: sender offline"),
        "sends after the cut fail as before: {errors:?}"
    );
    assert!(
        !errors.keys().any(|k| k.starts_with("reconnect")),
        "{errors:?}"
    );
    assert!(
        !table.contains("delivered_after_reconnect (pending"),
        "no reconnection legend:\n{table}"
    );
}
