//! The proxy threads' own deadlines, end to end: the idle timeout closes a
//! silent relayed connection and spares one that talks, and the connect
//! timeout gives up a node that never completes the TCP handshake (its
//! listen queue is full, so the kernel drops the SYNs) and moves on to the
//! next node.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// An upstream that echoes every byte back.
fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
            });
        }
    });
    addr
}

/// A listener that never accepts, with a listen queue of one, filled: the
/// kernel drops every further SYN, so a connect to it hangs until its
/// timeout. The returned sockets must live as long as the test.
fn blackhole() -> (SocketAddr, socket2::Socket, TcpStream) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let queued = TcpStream::connect(addr).unwrap();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "the full listen queue makes connects hang"
    );
    (addr, socket, queued)
}

/// Reads until EOF or error; how long that took.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("still open after {limit:?}")
            }
            Err(_) => return started.elapsed(),
        }
    }
}

#[test]
fn a_silent_connection_is_closed_at_idle_timeout_and_a_talking_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let b = balancer(
        &[echo_upstream().to_string()],
        &[
            "--panic",
            "--idle-timeout",
            "600ms",
            "--access-log",
            log.to_str().unwrap(),
        ],
    );
    let mut silent = TcpStream::connect(b.addr).unwrap();
    let mut talking = TcpStream::connect(b.addr).unwrap();
    talking
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    silent.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    silent.read_exact(&mut one).unwrap();

    let talker = std::thread::spawn(move || {
        // A byte every 150 ms for 2 s: never 600 ms without one.
        for i in 0..14u8 {
            talking.write_all(&[i]).unwrap();
            let mut back = [0u8; 1];
            talking
                .read_exact(&mut back)
                .expect("the talking connection stays open");
            assert_eq!(back[0], i);
            std::thread::sleep(Duration::from_millis(150));
        }
        talking
    });
    let waited = closed_within(&mut silent, Duration::from_secs(10));
    assert!(
        waited >= Duration::from_millis(450),
        "closed after {waited:?}, before the idle timeout"
    );
    let mut talking = talker.join().unwrap();
    talking.write_all(b"y").unwrap();
    talking.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"y", "still relayed after 2 s of talk");

    let client = silent.local_addr().unwrap();
    let line = wait_for(
        "the idle connection's log line",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with(&format!("{client} ")))
                .map(str::to_owned)
        },
    );
    assert!(line.ends_with(" idle"), "{line}");
    assert!(
        balancer_metric(&b, "chat_balancer_closed_total{end=\"idle\"}") >= 1.0,
        "{}",
        b.metrics().unwrap_or_default()
    );
}

#[test]
fn a_node_that_never_completes_the_handshake_is_given_up_at_connect_timeout() {
    let (hole, _listener, _queued) = blackhole();
    // Only that node: after the timeout no node is left and the client is
    // closed, with the node's error on record.
    let b = balancer(
        &[hole.to_string()],
        &["--panic", "--connect-timeout", "400ms"],
    );
    let mut client = TcpStream::connect(b.addr).unwrap();
    let waited = closed_within(&mut client, Duration::from_secs(10));
    assert!(
        waited >= Duration::from_millis(300),
        "closed after {waited:?}, before the connect timeout"
    );
    let error = upstream_status(&b, hole)
        .and_then(|u| u["last_connect_error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    assert!(error.contains("timed out"), "last connect error: {error:?}");

    // With a second node the client is served by it once the first times
    // out (or at once, if the second is picked first).
    let echo = echo_upstream();
    let b = balancer(
        &[hole.to_string(), echo.to_string()],
        &["--panic", "--connect-timeout", "400ms"],
    );
    for i in 0..4u8 {
        let mut c = TcpStream::connect(b.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&[i]).unwrap();
        let mut back = [0u8; 1];
        c.read_exact(&mut back).expect("served by the other node");
        assert_eq!(back[0], i);
    }
}
