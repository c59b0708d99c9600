//! The listening socket node and balancer share a port with
//! ([`reuse_port`]), and refusing a port another process already listens
//! on. Node and balancer bind their client ports with SO_REUSEPORT (one
//! socket per thread);
//! the kernel then also lets a *second process* bind the same port, and
//! that process silently takes part of the first one's connections. So
//! before binding they look for a listening socket on the port in
//! `/proc/net/tcp{,6}`: only a LISTEN socket counts, not connections a
//! previous run left closing (a restarted process must be able to bind).
//! A listener of a process that was just killed can outlive it for a moment
//! (io_uring tears a ring down asynchronously, with its pending accepts), so
//! a listener is only taken for another process's once it stayed for
//! [`LINGER`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

const LISTEN: &str = "0A";

/// Connections the kernel queues per listener before they are accepted.
const BACKLOG: i32 = 1024;

/// A non-blocking listener on `addr` with SO_REUSEPORT, so that every
/// thread (and, when the caller allows it, another process) may bind the
/// same port and the kernel spreads new connections over them. It has
/// TCP_NODELAY, which Linux copies onto every accepted socket: one
/// setsockopt per listener instead of one per client.
pub fn reuse_port(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// How long a listener may linger after its process ended.
pub const LINGER: Duration = Duration::from_secs(2);

/// Fails with `AddrInUse` when a socket listens on `addr`'s port at that
/// address (or at the unspecified address, or `addr` is unspecified) and
/// is still there after [`LINGER`].
pub fn check_free(addr: SocketAddr) -> io::Result<()> {
    let started = Instant::now();
    loop {
        match listener_on(addr) {
            None => return Ok(()),
            Some(listening) if started.elapsed() >= LINGER => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process listens on {listening}"),
                ));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A listening socket that overlaps `addr`, if any.
fn listener_on(addr: SocketAddr) -> Option<SocketAddr> {
    if addr.port() == 0 {
        return None;
    }
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for listening in text.lines().skip(1).filter_map(listening_addr) {
            let same_port = listening.port() == addr.port();
            let overlaps = listening.ip() == addr.ip()
                || listening.ip().is_unspecified()
                || addr.ip().is_unspecified();
            if same_port && overlaps {
                return Some(listening);
            }
        }
    }
    None
}

/// The local address of a `/proc/net/tcp` line in state LISTEN.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != LISTEN {
        return None;
    }
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.swap_bytes(),
        )),
        32 => {
            // Four 32-bit words, each in host (little-endian) order.
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                word.copy_from_slice(&w.swap_bytes().to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines_only() {
        let listen = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1";
        let open = "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1";
        assert_eq!(
            listening_addr(listen),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(listening_addr(open), None);
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0";
        assert_eq!(listening_addr(v6), Some("[::1]:8080".parse().unwrap()));
    }

    #[test]
    fn a_listening_port_is_refused_and_a_closed_one_is_free() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let err = check_free(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(l);
        check_free(addr).unwrap();
    }
}
