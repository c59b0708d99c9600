//! `tcp-bench mio-relay`: the least a relaying proxy can do on this
//! machine, as a yardstick for chat-balancer's per-connection cost.
//!
//! One `mio` event loop per thread, each with its own listener on the same
//! port (SO_REUSEPORT, as chat-balancer's proxy threads); each client is
//! connected to the next upstream in turn and
//! relayed both ways with half-close (EOF on one side shuts down the write
//! half of the other), as chat-balancer does by default. What chat-balancer
//! does and this does not: connect and idle timeouts, health and the
//! load-aware choice, metrics, the PROXY header, the access log. It was the
//! yardstick that showed an event loop of our own would take about a tenth
//! off the tokio build's CPU per connection (docs/balancer.md); chat-balancer
//! now runs one, and this stays as the floor to compare it with. It is a
//! measurement tool, not a proxy to deploy.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Bytes read per chunk in each direction (chat-balancer's starting size).
const CHUNK: usize = 16 * 1024;
const LISTENER: Token = Token(usize::MAX);

#[derive(Debug, clap::Args)]
pub struct MioRelayArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Upstreams, used in turn (repeat the flag).
    #[arg(long = "upstream", required = true)]
    pub upstreams: Vec<SocketAddr>,
    /// Event-loop threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Runs until killed.
pub fn run(args: MioRelayArgs) -> anyhow::Result<()> {
    let mut addr = args.listen;
    let mut threads = Vec::new();
    for i in 0..args.threads {
        // A listener per thread on the same port (SO_REUSEPORT), as
        // chat-balancer's proxy threads have.
        let listener = reuseport_listener(addr)?;
        addr = listener.local_addr()?;
        let upstreams = args.upstreams.clone();
        threads.push(std::thread::spawn(move || {
            if let Err(e) = event_loop(TcpListener::from_std(listener), &upstreams, i) {
                eprintln!("mio-relay thread {i}: {e}");
            }
        }));
    }
    eprintln!("mio-relay listening on {addr}");
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A non-blocking listener on `addr` with SO_REUSEADDR and SO_REUSEPORT.
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One direction's bytes read and not yet written (`buf[start..end]`),
/// and whether its source has ended. The buffer is allocated at the first
/// read and never zeroed again.
struct Pipe {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Writes what is buffered: `Ok(true)` once all of it is written,
    /// `Ok(false)` if `to` would block first.
    fn flush(&mut self, to: &mut TcpStream) -> io::Result<bool> {
        while self.start < self.end {
            match to.write(&self.buf[self.start..self.end]) {
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Moves bytes from `from` to `to` until one would block; shuts down
    /// `to`'s write half at `from`'s EOF. `Ok(true)` once the direction is
    /// done.
    ///
    /// Reads only while `from.readable` (see [`Side`]), so that no read is
    /// made just to hear WouldBlock.
    fn pump(&mut self, from: &mut Side, to: &mut TcpStream) -> io::Result<bool> {
        loop {
            if !self.flush(to)? {
                return Ok(false);
            }
            if self.eof {
                return Ok(true);
            }
            if !from.readable {
                return Ok(false);
            }
            if self.buf.is_empty() {
                self.buf = vec![0; CHUNK];
            }
            self.start = 0;
            self.end = 0;
            match from.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    let _ = to.shutdown(Shutdown::Write);
                    return Ok(true);
                }
                Ok(n) => {
                    self.end = n;
                    if n < self.buf.len() && !from.closed {
                        from.readable = false;
                        // A short read drained the socket: write it out and
                        // wait for the next edge instead of reading again
                        // for a WouldBlock (tokio does the same).
                        self.flush(to)?;
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    from.readable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// One socket of a connection and what its events have said.
struct Side {
    stream: TcpStream,
    /// It may have bytes to read: set by a readable event, cleared once a
    /// read drains it.
    readable: bool,
    /// Its peer has closed its sending half. The EOF may have come in the
    /// same edge as the last bytes, so a short read does not end the
    /// reading then (tokio keeps this state the same way).
    closed: bool,
}

impl Side {
    fn new(stream: TcpStream) -> Side {
        Side {
            stream,
            readable: false,
            closed: false,
        }
    }

    fn note(&mut self, event: &mio::event::Event) {
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.readable = true;
            self.closed |= event.is_read_closed() || event.is_error();
        }
    }
}

struct Conn {
    client: Side,
    upstream: Side,
    connected: bool,
    up: Pipe,
    down: Pipe,
}

fn event_loop(mut listener: TcpListener, upstreams: &[SocketAddr], seed: usize) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_id = 0usize;
    let mut next_upstream = seed;
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            if event.token() == LISTENER {
                loop {
                    let (mut client, _) = match listener.accept() {
                        Ok(accepted) => accepted,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    };
                    let upstream = upstreams[next_upstream % upstreams.len()];
                    next_upstream += 1;
                    let Ok(mut up) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let id = next_id;
                    next_id = next_id.wrapping_add(1) & (usize::MAX >> 2);
                    let both = Interest::READABLE | Interest::WRITABLE;
                    poll.registry()
                        .register(&mut client, Token(id << 1), both)?;
                    poll.registry()
                        .register(&mut up, Token(id << 1 | 1), both)?;
                    conns.insert(
                        id,
                        Conn {
                            client: Side::new(client),
                            upstream: Side::new(up),
                            connected: false,
                            up: Pipe::new(),
                            down: Pipe::new(),
                        },
                    );
                }
                continue;
            }
            let id = event.token().0 >> 1;
            let Some(conn) = conns.get_mut(&id) else {
                continue;
            };
            let from_client = event.token().0 & 1 == 0;
            if from_client {
                conn.client.note(event);
            } else {
                conn.upstream.note(event);
            }
            if !conn.connected {
                if from_client || !event.is_writable() {
                    continue;
                }
                match conn.upstream.stream.take_error() {
                    Ok(None) => conn.connected = true,
                    _ => {
                        conns.remove(&id);
                        continue;
                    }
                }
            }
            let up = conn.up.pump(&mut conn.client, &mut conn.upstream.stream);
            let down = conn.down.pump(&mut conn.upstream, &mut conn.client.stream);
            match (up, down) {
                (Ok(true), Ok(true)) | (Err(_), _) | (_, Err(_)) => {
                    // Dropping closes both sockets, which also takes them
                    // out of the epoll set.
                    conns.remove(&id);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// The yardstick must relay like a proxy for its figures to mean
    /// anything: a bulk transfer and small messages after it come back
    /// whole and in order, and a client's EOF reaches the upstream, whose
    /// answer after it still reaches the client (half-close).
    #[test]
    fn it_relays_both_ways_with_half_close() {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in upstream.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    // Echo until EOF, then say how many bytes came.
                    let mut buf = [0u8; 4096];
                    let mut total = 0usize;
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                total += n;
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = stream.write_all(format!("bye {total}").as_bytes());
                });
            }
        });
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        std::thread::spawn(move || {
            run(MioRelayArgs {
                listen,
                upstreams: vec![upstream_addr],
                threads: 1,
            })
        });
        let mut client = (0..100)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                std::net::TcpStream::connect(listen).ok()
            })
            .expect("mio-relay listens");
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let bulk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut writer = client.try_clone().unwrap();
        let sent = bulk.clone();
        let sending = std::thread::spawn(move || writer.write_all(&sent));
        let mut back = vec![0u8; bulk.len()];
        client.read_exact(&mut back).unwrap();
        sending.join().unwrap().unwrap();
        assert!(back == bulk, "the echoed bytes differ from those sent");
        client.write_all(b"small").unwrap();
        let mut small = [0u8; 5];
        client.read_exact(&mut small).unwrap();
        assert_eq!(&small, b"small");
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        client.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, format!("bye {}", bulk.len() + 5));
    }
}
