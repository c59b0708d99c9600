//! The HTTP endpoint over real TCP on free ports: concurrent service while
//! clients stall, the head deadline, bad input, the connection cap. Timing
//! is only asserted as generous upper bounds on hangs.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use chat_ops::http::{Limits, Request, Response, serve, serve_requests};

fn metrics_endpoint() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, "test-http", |path| match path {
        "/metrics" => Response::metrics("up 1\n".into()),
        _ => Response::not_found("see /metrics"),
    })
    .unwrap();
    addr
}

/// Sends `raw`, then reads until the server closes (or 10 s pass); a reset
/// after the answer counts as the end.
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    read_all(&mut s)
}

fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn a_scrape_is_answered_while_silent_connections_are_open() {
    let addr = metrics_endpoint();
    let silent: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let ok = get(addr, "/metrics");
    let took = started.elapsed();
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.ends_with("up 1\n"), "{ok}");
    assert_eq!(header(&ok, "content-length"), Some("5"), "{ok}");
    assert!(
        took < Duration::from_secs(2),
        "scrape took {took:?} behind 5 silent connections"
    );
    drop(silent);
}

#[test]
fn a_trickling_client_is_cut_off_at_the_head_deadline_and_others_are_served() {
    let addr = metrics_endpoint();
    let mut slow = TcpStream::connect(addr).unwrap();
    let mut writer = slow.try_clone().unwrap();
    let started = Instant::now();
    // One header byte every 500 ms: 40 bytes would take 20 s.
    let trickle = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    // Meanwhile others are served.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let ok = get(addr, "/metrics");
        assert!(ok.ends_with("up 1\n"), "{ok}");
    }
    slow.set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    let answer = read_all(&mut slow);
    let took = started.elapsed();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
        "{answer}"
    );
    assert!(took < Duration::from_secs(8), "cut off after {took:?}");
    trickle.join().unwrap();
    assert!(get(addr, "/metrics").ends_with("up 1\n"));
}

#[test]
fn bad_input_gets_its_status_and_the_endpoint_goes_on() {
    let addr = metrics_endpoint();

    let junk = exchange(addr, b"\x01\x02\xff garbage\r\n\r\n");
    assert!(junk.starts_with("HTTP/1.1 400 "), "{junk}");

    let missing = get(addr, "/nope");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    assert!(missing.ends_with("see /metrics\n"), "{missing}");

    let post = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert_eq!(header(&post, "allow"), Some("GET, HEAD"), "{post}");

    let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");

    // A 1 MiB header: 431 (or 413), or the connection closed.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let big = exchange(addr, &huge);
    assert!(
        big.is_empty() || big.starts_with("HTTP/1.1 431 ") || big.starts_with("HTTP/1.1 413 "),
        "{}",
        &big[..big.len().min(200)]
    );

    let http10 = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert!(http10.ends_with("up 1\n"), "{http10}");
    assert!(get(addr, "/metrics").starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn routes_see_the_method_query_and_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    serve_requests(listener, "test-routes", Limits::default(), |r: &Request| {
        Response::ok(
            "text/plain",
            format!(
                "{} {} {:?} {}",
                r.method,
                r.path,
                r.query_value("value"),
                r.peer.ip()
            ),
        )
        .with_header("x-test", "yes".into())
    })
    .unwrap();
    let answer = exchange(
        addr,
        b"POST /upstreams/127.0.0.1%3A1/weight?value=7 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        answer.ends_with("POST /upstreams/127.0.0.1%3A1/weight Some(\"7\") 127.0.0.1"),
        "{answer}"
    );
    assert_eq!(header(&answer, "x-test"), Some("yes"), "{answer}");
}

#[test]
fn over_the_connection_cap_new_connections_are_closed_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        max_connections: 3,
        head_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    serve_requests(listener, "test-cap", limits, |_| {
        Response::metrics("up 1\n".into())
    })
    .unwrap();
    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // The fourth is closed without an answer (long before the head deadline).
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(read_all(&mut extra), "");
    // The silent ones get 408 at their deadline, and the slots are free again.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let answer = read_all(&mut s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }
    assert!(get(addr, "/metrics").ends_with("up 1\n"));
}
