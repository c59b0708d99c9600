//! The balancer's admin API end to end: `POST /upstreams/ADDR/ACTION` on a
//! real balancer (in front of real nodes where traffic matters), from
//! loopback sources chosen per request. Every wait has a deadline; no
//! timing is asserted.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use serde_json::Value;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// An HTTP answer.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `method path` to the admin port from source address `from`.
fn http(admin: SocketAddr, from: IpAddr, method: &str, path: &str) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        socket.connect(admin).await.unwrap().into_std().unwrap()
    });
    let mut stream = stream;
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn post(b: &chat_testkit::LocalBalancer, path: &str) -> Answer {
    http(b.admin_addr, LOCAL, "POST", path)
}

fn picks(b: &chat_testkit::LocalBalancer, addr: SocketAddr) -> f64 {
    balancer_metric(
        b,
        &format!("chat_balancer_picks_total{{upstream=\"{addr}\"}}"),
    )
}

/// The `override` names listed for `addr` in /status.json.
fn overrides(b: &chat_testkit::LocalBalancer, addr: SocketAddr) -> Vec<String> {
    upstream_status(b, addr).expect("listed")["overrides"]
        .as_array()
        .expect("an overrides list")
        .iter()
        .map(|o| match &o["value"] {
            Value::Null => o["override"].as_str().unwrap().to_owned(),
            v => format!("{}={v}", o["override"].as_str().unwrap()),
        })
        .collect()
}

/// Drain: new connections go to the other node only, open ones to the
/// drained node keep working; undrain brings it back. Down and up likewise,
/// with the metrics showing the override.
#[test]
fn drain_and_down_steer_new_connections_and_keep_open_ones() {
    let (n0, n1) = (node(&[]), node(&[]));
    let b = balancer(
        &[n0.addr.to_string(), n1.addr.to_string()],
        &["--probe-interval", "200ms"],
    );
    wait_reports(&b, &[n0.addr, n1.addr]);
    let mut open: Vec<Json> = (0..20).map(|_| ping_through(b.addr)).collect();
    let on_n0 = node_connections(&n0);
    assert!(on_n0 >= 1.0, "some connections on node 0 before the drain");

    let drained = post(&b, &format!("/upstreams/{}/drain", n0.addr));
    assert_eq!(drained.status, 200, "{}", drained.body);
    let answer = drained.json();
    assert_eq!(answer["state"], "admin_drain", "{answer}");
    assert_eq!(answer["overrides"][0]["override"], "drain", "{answer}");
    assert!(
        answer["note"].as_str().unwrap().contains("reload"),
        "{answer}"
    );
    assert_eq!(state(&b, n0.addr), "admin_drain");
    let before = picks(&b, n0.addr);
    let more: Vec<Json> = (0..30).map(|_| ping_through(b.addr)).collect();
    assert_eq!(
        picks(&b, n0.addr),
        before,
        "no new pick for the drained node"
    );
    assert_eq!(node_connections(&n0), on_n0, "no new connection on it");
    for c in &mut open {
        assert!(
            c.ping(Duration::from_secs(5)),
            "open connections keep working"
        );
    }
    let metrics = b.metrics().unwrap();
    let series = |o: &str| {
        chat_testkit::metric_value(
            &metrics,
            &format!(
                "chat_balancer_upstream_override{{upstream=\"{}\",override=\"{o}\"}}",
                n0.addr
            ),
        )
    };
    assert_eq!(series("drain"), Some(1.0));
    assert_eq!(series("down"), Some(0.0));
    assert_eq!(
        chat_testkit::metric_value(
            &metrics,
            &format!(
                "chat_balancer_upstream_down{{upstream=\"{}\",reason=\"admin_drain\"}}",
                n0.addr
            )
        ),
        Some(1.0)
    );

    assert_eq!(
        post(&b, &format!("/upstreams/{}/undrain", n0.addr)).status,
        200
    );
    assert_eq!(state(&b, n0.addr), "up");
    assert!(overrides(&b, n0.addr).is_empty());
    let back: Vec<Json> = (0..30).map(|_| ping_through(b.addr)).collect();
    assert!(
        picks(&b, n0.addr) > before,
        "the undrained node is picked again"
    );

    let down = post(&b, &format!("/upstreams/{}/down", n0.addr));
    assert_eq!(down.status, 200, "{}", down.body);
    assert_eq!(state(&b, n0.addr), "admin_down");
    assert_eq!(overrides(&b, n0.addr), ["down"]);
    let before = picks(&b, n0.addr);
    let during: Vec<Json> = (0..30).map(|_| ping_through(b.addr)).collect();
    assert_eq!(picks(&b, n0.addr), before, "no new pick while down");
    for c in &mut open {
        assert!(
            c.ping(Duration::from_secs(5)),
            "open connections keep working"
        );
    }
    assert_eq!(
        balancer_metric(
            &b,
            &format!(
                "chat_balancer_upstream_override{{upstream=\"{}\",override=\"down\"}}",
                n0.addr
            )
        ),
        1.0
    );
    assert_eq!(post(&b, &format!("/upstreams/{}/up", n0.addr)).status, 200);
    assert_eq!(state(&b, n0.addr), "up");
    let after: Vec<Json> = (0..30).map(|_| ping_through(b.addr)).collect();
    assert!(picks(&b, n0.addr) > before, "picked again once up");
    drop((more, back, during, after));
}

/// A weight override shifts the split of new connections.
#[test]
fn a_weight_override_changes_the_split() {
    let (n0, n1) = (node(&[]), node(&[]));
    let b = balancer(
        &[n0.addr.to_string(), n1.addr.to_string()],
        &["--probe-interval", "200ms"],
    );
    wait_reports(&b, &[n0.addr, n1.addr]);
    let set = post(&b, &format!("/upstreams/{}/weight?value=10", n1.addr));
    assert_eq!(set.status, 200, "{}", set.body);
    let n1_status = upstream_status(&b, n1.addr).unwrap();
    assert_eq!(n1_status["weight"], 1, "the configured weight is kept");
    assert_eq!(n1_status["effective_weight"], 10.0);
    assert_eq!(overrides(&b, n1.addr), ["weight=10"]);
    let (p0, p1) = (picks(&b, n0.addr), picks(&b, n1.addr));
    let open: Vec<Json> = (0..200).map(|_| ping_through(b.addr)).collect();
    let (d0, d1) = (picks(&b, n0.addr) - p0, picks(&b, n1.addr) - p1);
    // (A readiness probe's connection from the harness may be picked late.)
    assert!(d0 + d1 >= 200.0, "{d0} + {d1}");
    assert!(
        d1 > 2.0 * d0,
        "weight 10 against 1: {d1} picks against {d0}"
    );
    assert_eq!(
        balancer_metric(
            &b,
            &format!(
                "chat_balancer_upstream_override{{upstream=\"{}\",override=\"weight\"}}",
                n1.addr
            )
        ),
        10.0
    );
    drop(open);
}

/// With `--admin-allow 127.0.0.1/32`, a request from 127.0.0.2 gets 403 and
/// changes nothing (the read-only pages still answer it); one from 127.0.0.1
/// gets 200.
#[test]
fn only_allowed_sources_may_change_the_pool() {
    let up = "127.0.0.1:1".parse::<SocketAddr>().unwrap();
    let b = balancer(&[up.to_string()], &["--admin-allow", "127.0.0.1/32"]);
    let refused = http(b.admin_addr, OTHER, "POST", "/upstreams/127.0.0.1:1/drain");
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("--admin-allow")
    );
    assert!(overrides(&b, up).is_empty(), "the pool is unchanged");
    let page = http(b.admin_addr, OTHER, "GET", "/status.json");
    assert_eq!(page.status, 200, "read-only pages stay open");
    assert_eq!(http(b.admin_addr, OTHER, "GET", "/metrics").status, 200);
    let allowed = http(b.admin_addr, LOCAL, "POST", "/upstreams/127.0.0.1:1/drain");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(overrides(&b, up), ["drain"]);
}

/// Unknown upstream 404 (listing the known ones), bad weights 400, GET on an
/// action 405 with `Allow: POST`, unknown action 404; the default allow list
/// (loopback) lets 127.0.0.2 in; nothing changed by the bad requests.
#[test]
fn bad_admin_requests_get_their_status() {
    let ups: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let b = balancer(&ups.iter().map(|a| a.to_string()).collect::<Vec<_>>(), &[]);

    let unknown = post(&b, "/upstreams/127.0.0.1:3/drain");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(
        unknown.json()["upstreams"],
        serde_json::json!(["127.0.0.1:1", "127.0.0.1:2"])
    );
    for bad in [
        "weight?value=abc",
        "weight?value=0",
        "weight?value=-1",
        "weight",
    ] {
        let answer = post(&b, &format!("/upstreams/127.0.0.1:1/{bad}"));
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
    }
    let get = http(b.admin_addr, LOCAL, "GET", "/upstreams/127.0.0.1:1/drain");
    assert_eq!(get.status, 405, "{}", get.body);
    assert_eq!(get.header("allow"), Some("POST"), "{}", get.head);
    let action = post(&b, "/upstreams/127.0.0.1:1/explode");
    assert_eq!(action.status, 404, "{}", action.body);
    let page = post(&b, "/status.json");
    assert_eq!(page.status, 405);
    assert_eq!(page.header("allow"), Some("GET, HEAD"));
    let nowhere = http(b.admin_addr, LOCAL, "GET", "/nowhere");
    assert_eq!(nowhere.status, 404);
    assert!(
        nowhere.body.contains("/upstreams/ADDR/"),
        "{}",
        nowhere.body
    );
    for u in &ups {
        assert!(overrides(&b, *u).is_empty(), "bad requests change nothing");
    }

    // Loopback is allowed by default, 127.0.0.2 included; the address may
    // be percent-encoded.
    let other = http(b.admin_addr, OTHER, "POST", "/upstreams/127.0.0.1%3A2/down");
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(overrides(&b, ups[1]), ["down"]);
}

/// Overrides show in /status.json until a reload (SIGHUP) clears them.
#[test]
fn overrides_are_listed_and_lost_at_reload() {
    let ups: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let b = balancer(&ups.iter().map(|a| a.to_string()).collect::<Vec<_>>(), &[]);
    assert_eq!(post(&b, "/upstreams/127.0.0.1:1/drain").status, 200);
    assert_eq!(
        post(&b, "/upstreams/127.0.0.1:1/weight?value=7").status,
        200
    );
    assert_eq!(post(&b, "/upstreams/127.0.0.1:2/down").status, 200);
    assert_eq!(overrides(&b, ups[0]), ["drain", "weight=7"]);
    assert_eq!(overrides(&b, ups[1]), ["down"]);
    let status = b.status_json().unwrap();
    assert!(
        status["overrides_note"]
            .as_str()
            .is_some_and(|n| n.contains("reload")),
        "{status}"
    );
    b.signal(libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        (balancer_metric(&b, "chat_balancer_reloads_total{result=\"ok\"}") == 1.0).then_some(())
    });
    for u in &ups {
        assert!(overrides(&b, *u).is_empty(), "cleared by the reload");
        assert!(!state(&b, *u).starts_with("admin_"));
    }
    assert_eq!(
        upstream_status(&b, ups[0]).unwrap()["effective_weight"],
        1.0
    );
}
