//! With every node down, a client is closed at once (fail fast) unless
//! `--panic` says to try the down nodes anyway; repeated failures log a few
//! lines, not one per client. Real `chat-node` processes and a real
//! balancer on loopback; every wait has a deadline.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chat_testkit::{LocalBalancer, LocalNode, free_port};
use common::*;

fn signal(pid: Option<u32>, sig: i32) {
    // SAFETY: kill(2) on a child's pid has no memory effects.
    unsafe {
        libc::kill(pid.expect("running") as i32, sig);
    }
}

/// A loopback address nothing listens on.
fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("a free port")))
}

fn picks(b: &LocalBalancer, addr: SocketAddr) -> u64 {
    upstream_status(b, addr).expect("known upstream")["picks"]
        .as_u64()
        .expect("picks")
}

/// Connects through the balancer and waits (up to `within`) for it to
/// close the connection; whether it did.
fn closed_within(addr: SocketAddr, within: Duration) -> bool {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("{n} unexpected bytes from the balancer"),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A live node (to be paused) and a dead port, probed every 100 ms and
/// marked down after two failed probes; the balancer waits until the node
/// has reported and the dead port is down.
fn live_and_dead(extra: &[&str]) -> (LocalNode, SocketAddr, LocalBalancer) {
    let n = node(&[]);
    let dead = dead_addr();
    let mut args = vec!["--probe-interval", "100ms", "--probe-fails", "2"];
    args.extend_from_slice(extra);
    let b = balancer(&[n.addr.to_string(), dead.to_string()], &args);
    wait_reports(&b, &[n.addr]);
    wait_for("the dead port marked down", Duration::from_secs(10), || {
        (state(&b, dead) == "probe_failed").then_some(())
    });
    (n, dead, b)
}

fn pause_until_down(b: &LocalBalancer, n: &LocalNode) {
    signal(n.pid(), libc::SIGSTOP);
    wait_for(
        "the paused node marked down by its probes",
        Duration::from_secs(10),
        || (state(b, n.addr) == "probe_failed").then_some(()),
    );
}

/// Every node down by its probes, no `--panic`: a client is closed at once
/// without a node being tried, counted in no_upstream and fail_fast (not
/// panic), with a 502 access-log line; once the node is back, clients are
/// relayed again.
#[test]
fn with_every_node_down_a_client_is_closed_at_once_and_served_once_one_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let (n, dead, b) = live_and_dead(&["--access-log", access.to_str().unwrap()]);
    ping_through(b.addr);
    pause_until_down(&b, &n);
    let metric = |name: &str| balancer_metric(&b, name);
    let (no_upstream, fail_fast, panic) = (
        metric("chat_balancer_no_upstream_total"),
        metric("chat_balancer_fail_fast_total"),
        metric("chat_balancer_panic_total"),
    );
    let picked = (picks(&b, n.addr), picks(&b, dead));

    for i in 0..3 {
        assert!(
            closed_within(b.addr, Duration::from_secs(2)),
            "client {i} closed at once: {}",
            b.log()
        );
    }
    wait_for("the counters", Duration::from_secs(5), || {
        (metric("chat_balancer_fail_fast_total") >= fail_fast + 3.0).then_some(())
    });
    assert!(metric("chat_balancer_no_upstream_total") >= no_upstream + 3.0);
    assert_eq!(metric("chat_balancer_panic_total"), panic, "no panic pick");
    assert_eq!(
        (picks(&b, n.addr), picks(&b, dead)),
        picked,
        "no node tried"
    );
    let line = wait_for("a 502 access-log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(" TCP 502 "))
            .map(str::to_owned)
    });
    assert!(line.ends_with("\"-\" \"-\" no_upstream"), "{line}");
    assert!(
        b.log()
            .contains("no node available: closing the connection at once"),
        "{}",
        b.log()
    );

    signal(n.pid(), libc::SIGCONT);
    wait_for("the resumed node up again", Duration::from_secs(10), || {
        (state(&b, n.addr) == "up").then_some(())
    });
    let mut c = ping_through(b.addr);
    assert_eq!(c.ask(r#"{"msgid":18}"#, 19)["msgid"], 19);
    assert_eq!(state(&b, dead), "probe_failed");
}

/// The same with `--panic`: the paused node is tried anyway, its kernel
/// accepts the connection, and the ping sent meanwhile is answered once it
/// resumes; counted in panic, not in fail_fast.
#[test]
fn with_panic_a_down_node_is_tried_anyway() {
    let (n, _dead, b) = live_and_dead(&["--panic"]);
    pause_until_down(&b, &n);
    let metric = |name: &str| balancer_metric(&b, name);
    let (fail_fast, panic) = (
        metric("chat_balancer_fail_fast_total"),
        metric("chat_balancer_panic_total"),
    );
    let picked = picks(&b, n.addr);

    let mut c = Json::connect(b.addr);
    c.send(r#"{"msgid":18}"#);
    wait_for("the paused node picked", Duration::from_secs(5), || {
        (picks(&b, n.addr) > picked).then_some(())
    });
    assert!(metric("chat_balancer_panic_total") > panic);
    assert_eq!(metric("chat_balancer_fail_fast_total"), fail_fast);
    assert!(
        b.log().contains("--panic, trying one anyway"),
        "{}",
        b.log()
    );

    signal(n.pid(), libc::SIGCONT);
    assert_eq!(c.recv_msgid(19)["msgid"], 19, "relayed to the resumed node");
    assert_eq!(metric("chat_balancer_fail_fast_total"), fail_fast);
}

/// 200 clients against a dead upstream (max_fails=0 and slow probes, so
/// that every client tries it): a few short WARN lines name it, not 200,
/// and a line after the quiet period says how many were held back.
#[test]
fn repeated_connect_failures_log_a_few_short_lines_with_the_count_held_back() {
    let dead = dead_addr();
    let b = balancer(
        &[format!("{dead} max_fails=0")],
        &["--probe-interval", "1h", "--report-max-age", "1h"],
    );
    let started = Instant::now();
    for i in 0..200 {
        assert!(
            closed_within(b.addr, Duration::from_secs(5)),
            "client {i} closed"
        );
    }
    let took = started.elapsed();
    wait_for("the no_upstream counter", Duration::from_secs(5), || {
        (balancer_metric(&b, "chat_balancer_no_upstream_total") >= 200.0).then_some(())
    });
    let failures = balancer_metric(
        &b,
        &format!("chat_balancer_connect_failures_total{{upstream=\"{dead}\"}}"),
    );
    assert!(failures >= 200.0, "every client tried the node: {failures}");
    assert_eq!(
        balancer_metric(&b, "chat_balancer_fail_fast_total"),
        0.0,
        "the node was available, so tried"
    );
    let warnings = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.contains(&dead.to_string()))
            .map(str::to_owned)
            .collect()
    };
    // Two executors, two kinds of line (connect failed, no node accepted),
    // one line each per 5 s.
    let allowed = 2 * 2 * (1 + took.as_secs() as usize / 5);
    let first = warnings(&b.log());
    eprintln!(
        "200 failing clients in {took:?}: {} WARN lines\n{}",
        first.len(),
        first.join("\n")
    );
    assert!(
        !first.is_empty() && first.len() <= allowed,
        "{} lines (at most {allowed}):\n{}",
        first.len(),
        b.log()
    );

    std::thread::sleep(Duration::from_millis(5_200));
    for _ in 0..20 {
        assert!(closed_within(b.addr, Duration::from_secs(5)));
    }
    let all = wait_for("a line with the count", Duration::from_secs(5), || {
        let all = warnings(&b.log());
        all.iter()
            .any(|l| l.contains("connect failed (") && l.contains(" more since the last line)"))
            .then_some(all)
    });
    eprintln!("after the quiet period:\n{}", all[first.len()..].join("\n"));
    let held: u64 = all
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once("connect failed (")?;
            rest.split_once(' ')?.0.parse::<u64>().ok()
        })
        .sum();
    assert!(
        (1..=220).contains(&held),
        "held back {held}:\n{}",
        all.join("\n")
    );
    assert!(
        all.len() <= first.len() + 4,
        "{} lines:\n{}",
        all.len(),
        all.join("\n")
    );
    for line in &all {
        assert!(line.len() < 250, "a short line: {line}");
        assert!(line.contains("error=refused"), "the error kind: {line}");
    }
}
