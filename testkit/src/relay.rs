//! A TCP relay in front of a node, to cut client connections for real: both
//! sides see their connection end, as when a network path or a balancer
//! goes away. Threads, blocking sockets: a test tool, not a proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Relay {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    /// Accepted connections are closed at once while this is false.
    accepting: AtomicBool,
    /// While set, bytes from clients are read and thrown away (they are
    /// "in flight" when the cut comes).
    hold_up: AtomicBool,
    /// Both sockets of every relayed connection.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    stopped: AtomicBool,
}

impl Relay {
    /// A relay on a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let state = Arc::new(State {
            upstream,
            accepting: AtomicBool::new(true),
            hold_up: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !s.accepting.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(s.upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c), Ok(sv), Ok(c2), Ok(sv2)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                s.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((c2, sv2));
                let up = s.clone();
                std::thread::spawn(move || pump(c, sv, Some(up)));
                std::thread::spawn(move || pump(server, client, None));
            }
        });
        Relay { addr, state }
    }

    /// Closes every relayed connection (both sides) and refuses new ones
    /// until [`Relay::resume`].
    pub fn cut(&self) {
        self.state.accepting.store(false, Ordering::SeqCst);
        self.drop_connections();
    }

    /// Closes every relayed connection (both sides); new ones are relayed.
    pub fn drop_connections(&self) {
        for (c, s) in self
            .state
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again, and client bytes again.
    pub fn resume(&self) {
        self.state.hold_up.store(false, Ordering::SeqCst);
        self.state.accepting.store(true, Ordering::SeqCst);
    }

    /// From now on, drops what clients send (what the node sends still
    /// arrives): acknowledgements are lost, as with a connection that dies
    /// with bytes in flight.
    pub fn hold_client_bytes(&self) {
        self.state.hold_up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` until either ends; with `hold` (the client to node
/// direction), drops the bytes while the relay holds them.
fn pump(mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<State>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if hold
            .as_ref()
            .is_some_and(|s| s.hold_up.load(Ordering::SeqCst))
        {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
