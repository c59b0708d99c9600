//! `--chaos` end to end, a short soak (about a minute): the binary starts a
//! local cluster (3 nodes, NATS, a balancer, leases of 3 s), runs 200 users
//! at a steady rate through the balancer, and injects one fault of each
//! kind: a node killed with SIGKILL and restarted, nats-server restarted,
//! the balancer restarted, a node paused with SIGSTOP past its lease and
//! resumed. From the JSON report: nothing acknowledged is lost, nothing is
//! delivered twice to the application, the order per sender holds, every
//! fault happened and recovered, and every user is back online at the end
//! (after the killed node, within the lease plus the reconnection backoff's
//! ceiling).
//!
//! Both protocols run, one soak each (`soak` takes the protocol). The JSON
//! users send msgid 50 (explicit acknowledgements) before login, so a clean
//! close of an abandoned login never credits its offlinemsg page: the
//! suspected cause of the one earlier JSON run (of four) that lost 5
//! acknowledged messages around the nats-server restart, not reproduced
//! since; 8 of 8 repeated JSON runs passed on the 2-core machine. The soaks run
//! alone (test group `chaos` in .config/nextest.toml): each starts a cluster
//! on the 2 shared cores.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The users' lease (`--local-lease-ttl`).
const LEASE: Duration = Duration::from_secs(3);
/// The reconnection backoff's ceiling (see `chat_loadtest::population`).
const BACKOFF_CEILING: Duration = Duration::from_secs(5);
/// Room for the recovery checks (every 100 ms, two in a row) and a busy
/// machine: this bounds correctness (users come back once the lease is
/// over), not speed.
const MARGIN: Duration = Duration::from_secs(2);

const USERS: u64 = 200;

fn counter(s: &Value, name: &str) -> u64 {
    s["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name} missing"))
}

#[test]
fn a_chaos_soak_loses_nothing_acknowledged_over_flatbuffers() {
    soak("fb");
}

#[test]
fn a_chaos_soak_loses_nothing_acknowledged_over_json() {
    soak("json");
}

fn soak(protocol: &str) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("chaos.json");
    let out = Command::new(env!("CARGO_BIN_EXE_chat-loadtest"))
        .args(["--metrics-listen", "off", "--progress", "off"])
        .args(["--chaos", "--local", "3", "--local-lease-ttl", "3s"])
        .args([
            "--chaos-every",
            "8s",
            "--chaos-faults",
            "kill,nats,balancer,stop",
        ])
        .args(["--protocol", protocol, "--users", &USERS.to_string()])
        .args(["--rate", "200", "--duration", "38s", "--warmup", "0s"])
        .args(["--drain", "20s"])
        .arg("--json")
        .arg(&json)
        .env("CHAT_LOADTEST_LOG", "warn")
        .env("CHAT_NODE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let chaos_lines: String = stderr
        .lines()
        .filter(|l| l.starts_with("chaos"))
        .map(|l| format!("{l}\n"))
        .collect();
    // The nodes' and the load tester's warnings and errors (they share its
    // stderr), the last ones, to tell a loss's cause when one fails.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let warnings = warnings[warnings.len().saturating_sub(80)..].join("\n");
    assert!(
        out.status.success(),
        "status {:?}\n{table}\n{stderr}",
        out.status
    );
    eprintln!("{table}\n{chaos_lines}");
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let c = |name| counter(&s, name);

    for zero in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(
            c(zero),
            0,
            "{zero}:\n{table}\n{}\nwarnings:\n{warnings}",
            s["errors"]
        );
    }
    let chaos = &s["chaos"];
    assert_eq!(
        chaos["acked_lost"], 0,
        "acknowledged and never received ({} of them pending at a fresh login at the end):\n{table}\nwarnings:\n{warnings}",
        chaos["found_at_final_login"]
    );
    assert!(c("reconnects") > 0, "users came back:\n{table}");
    assert!(c("delivered_live") > 0 && c("acked") > 0, "{table}");
    assert_eq!(
        c("delivered"),
        c("delivered_live") + c("delivered_at_login") + c("delivered_after_reconnect"),
        "{table}"
    );
    assert_eq!(c("users"), USERS, "{table}");
    assert_eq!(
        c("connections_at_end"),
        USERS,
        "every user is back online at the end:\n{table}"
    );

    let faults = chaos["faults"].as_array().unwrap();
    let kinds: Vec<&str> = faults.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    // Faults at 8, 16, 24 and 32 s into the 38 s of traffic.
    assert_eq!(
        kinds,
        ["kill", "nats", "balancer", "stop"],
        "one fault of each kind:\n{table}\n{chaos_lines}"
    );
    for f in faults {
        assert!(f["error"].is_null(), "the fault was injected: {f}\n{table}");
        assert_eq!(f["recovered"], true, "the fault recovered: {f}\n{table}");
        assert_eq!(f["lost"], 0, "{f}\n{table}");
        assert!(f["online_us"].as_u64().unwrap() <= f["recovery_us"].as_u64().unwrap());
    }
    let fault = |kind: &str| faults.iter().find(|f| f["kind"] == kind).unwrap();
    // Node faults hit the busiest node: they cut users off.
    for kind in ["kill", "stop", "balancer"] {
        assert!(
            fault(kind)["dropped"].as_u64().unwrap() > 0,
            "{kind} cut connections:\n{table}"
        );
    }
    // The users of a killed node are back within the lease (then other
    // nodes take them; the restarted node releases them sooner) plus one
    // backoff delay.
    let bound = (LEASE + BACKOFF_CEILING + MARGIN).as_micros() as u64;
    let kill = fault("kill");
    assert!(
        kill["recovery_us"].as_u64().unwrap() <= bound,
        "back within the lease: {kill}\n{table}"
    );
    assert!(
        table.contains("chaos: 4 faults"),
        "the table lists the faults:\n{table}"
    );
}
