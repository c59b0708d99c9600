//! Out of file descriptors: a flood of clients larger than the balancer's
//! open-files limit gets some clients served and the rest refused (closed,
//! or left in the kernel's backlog while `accept` fails), the balancer keeps
//! running, no node is blamed for the balancer's own shortage, and once the
//! clients are gone new ones are served at once.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Process `pid`'s open-files limit.
fn nofile(pid: u32) -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) reading into a valid rlimit.
    let rc = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut limit,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    limit
}

/// Sets process `pid`'s open-files limit (the soft one: lowering and
/// raising it back up to the hard one needs no privilege).
fn set_nofile(pid: u32, limit: libc::rlimit) {
    // SAFETY: prlimit(2) with a valid rlimit to set and none to read.
    let rc = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn out_of_fds_clients_are_refused_no_node_is_blamed_and_service_resumes() {
    let n = node(&[]);
    let b = balancer(&[n.addr.to_string()], &["--probe-interval", "200ms"]);
    wait_reports(&b, &[n.addr]);
    let pid = b.pid().expect("running");
    let used = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // Room for about five relayed connections (two descriptors each).
    let old = nofile(pid);
    set_nofile(
        pid,
        libc::rlimit {
            rlim_cur: used + 10,
            rlim_max: old.rlim_max,
        },
    );

    let mut clients: Vec<Json> = (0..30)
        .filter_map(|_| TcpStream::connect_timeout(&b.addr, Duration::from_secs(1)).ok())
        .map(Json::from_stream)
        .collect();
    for c in &mut clients {
        c.send(r#"{"msgid":18}"#);
    }
    // Served clients answer; refused ones are closed or wait in the backlog
    // (then the shared deadline runs out once for all of them).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    for c in &mut clients {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if c.try_recv(left.max(Duration::from_millis(1)))
            .is_some_and(|v| v["msgid"] == 19)
        {
            answered += 1;
        }
    }
    assert!(answered >= 1, "some clients were served");
    assert!(answered < 30, "the limit refused some of the 30 clients");
    drop(clients);
    set_nofile(pid, old);

    // Served at once: the node was not marked failed for the balancer's own
    // shortage (that would refuse clients for fail_timeout, 10 s).
    let mut c = wait_for("a client served again", Duration::from_secs(3), || {
        let mut c = Json::connect(b.addr);
        c.ping(Duration::from_millis(500)).then_some(c)
    });
    assert!(c.ping(Duration::from_secs(5)));
    let status = upstream_status(&b, n.addr).expect("the node in /status.json");
    assert_eq!(status["state"], "up", "{status}");
    let refused = balancer_metric(&b, "chat_balancer_no_upstream_total")
        + balancer_metric(&b, "chat_balancer_accept_errors_total");
    assert!(refused >= 1.0, "{}", b.metrics().unwrap_or_default());
}
