//! The PROXY protocol version 2 header (HAProxy's specification): the binary
//! preamble a balancer writes at the start of a relayed connection so that
//! the node learns the real client address. `chat-balancer` encodes it for
//! upstreams configured with `proxy_protocol=on`; `chat-node` decodes it on
//! connections from the sources named by `--proxy-protocol-from`.
//!
//! Layout: 12-byte signature, version/command byte (0x21 PROXY, 0x20 LOCAL),
//! family/transport byte (0x11 TCP over IPv4, 0x21 TCP over IPv6), 16-bit
//! big-endian length of what follows, then source address, destination
//! address, source port, destination port, then optional TLVs (skipped).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header of a connection the proxy makes for itself (a health check or
/// probe): the LOCAL command, no addresses.
pub const LOCAL: [u8; 16] = [
    b'\r', b'\n', b'\r', b'\n', 0, b'\r', b'\n', b'Q', b'U', b'I', b'T', b'\n', 0x20, 0x00, 0x00,
    0x00,
];

/// The longest header this decoder accepts (fixed part plus addresses and
/// TLVs); anything longer is refused rather than buffered.
pub const MAX_HEADER: usize = 16 + 536;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection: who connected to the proxy, and where.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (a health check): use the socket's
    /// addresses.
    Local,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol v2 header")]
    BadSignature,
    #[error("unsupported PROXY protocol version or command byte {0:#04x}")]
    BadVersion(u8),
    #[error("unsupported PROXY address family/transport {0:#04x}")]
    BadFamily(u8),
    #[error("PROXY header of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("PROXY header too short for its address family")]
    Truncated,
}

/// Encodes a PROXY (relayed) header. Mixed families are written as IPv6,
/// with an IPv4 address mapped.
pub fn encode(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Decodes a header at the start of `buf`. `Ok(None)`: more bytes are
/// needed; `Ok(Some((header, used)))`: the header and its length.
pub fn decode(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let known = buf.len().min(SIGNATURE.len());
    if buf[..known] != SIGNATURE[..known] {
        return Err(ProxyError::BadSignature);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let command = buf[12];
    if command >> 4 != 2 || command & 0x0f > 1 {
        return Err(ProxyError::BadVersion(command));
    }
    let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > MAX_HEADER {
        return Err(ProxyError::TooLong(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    if command & 0x0f == 0 {
        return Ok(Some((Header::Local, len)));
    }
    let body = &buf[16..len];
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let header = match buf[13] {
        0x11 => {
            if body.len() < 12 {
                return Err(ProxyError::Truncated);
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            Header::Proxy {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 => {
            if body.len() < 36 {
                return Err(ProxyError::Truncated);
            }
            let ip = |at: usize| {
                let octets: [u8; 16] = body[at..at + 16].try_into().expect("16 bytes");
                let v6 = Ipv6Addr::from(octets);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            };
            Header::Proxy {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        family => return Err(ProxyError::BadFamily(family)),
    };
    Ok(Some((header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(source: &str, destination: &str) -> Header {
        let mut buf = Vec::new();
        encode(
            source.parse().unwrap(),
            destination.parse().unwrap(),
            &mut buf,
        );
        buf.extend_from_slice(b"after");
        let (header, used) = decode(&buf).unwrap().unwrap();
        assert_eq!(&buf[used..], b"after");
        header
    }

    #[test]
    fn ipv4_and_ipv6_round_trip() {
        assert_eq!(
            round_trip("10.1.2.3:40000", "127.0.0.1:6000"),
            Header::Proxy {
                source: "10.1.2.3:40000".parse().unwrap(),
                destination: "127.0.0.1:6000".parse().unwrap(),
            }
        );
        assert_eq!(
            round_trip("[2001:db8::1]:5", "[::1]:6000"),
            Header::Proxy {
                source: "[2001:db8::1]:5".parse().unwrap(),
                destination: "[::1]:6000".parse().unwrap(),
            }
        );
        // Mixed families travel as IPv6 and come back as they were.
        assert_eq!(
            round_trip("10.0.0.1:1", "[::1]:2"),
            Header::Proxy {
                source: "10.0.0.1:1".parse().unwrap(),
                destination: "[::1]:2".parse().unwrap(),
            }
        );
    }

    #[test]
    fn partial_headers_wait_and_garbage_is_refused() {
        let mut buf = Vec::new();
        encode(
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
            &mut buf,
        );
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(decode(b"{\"msgid\":1}"), Err(ProxyError::BadSignature));
        let mut bad = buf.clone();
        bad[12] = 0x11;
        assert_eq!(decode(&bad), Err(ProxyError::BadVersion(0x11)));
        let mut bad = buf.clone();
        bad[13] = 0x31;
        assert_eq!(decode(&bad), Err(ProxyError::BadFamily(0x31)));
        let mut bad = buf.clone();
        bad[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(decode(&bad), Err(ProxyError::Truncated));
        let mut bad = buf;
        bad[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&bad), Err(ProxyError::TooLong(16 + 65535)));
    }

    #[test]
    fn local_command_carries_no_address() {
        assert_eq!(LOCAL[..12], SIGNATURE);
        assert_eq!(decode(&LOCAL), Ok(Some((Header::Local, 16))));
    }
}
