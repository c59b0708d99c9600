//! The PROXY protocol (HAProxy's specification), versions 1 and 2: the
//! preamble a proxy writes at the start of a relayed connection so that the
//! server learns the real client address. `chat-balancer` encodes it for
//! upstreams configured with `proxy_protocol=v1|v2`; `chat-node` decodes
//! either version on connections from the sources named by
//! `--proxy-protocol-from` (nginx `proxy_protocol on` and HAProxy
//! `send-proxy` send v1, HAProxy `send-proxy-v2` sends v2).
//!
//! - v1 is one text line of at most 107 bytes:
//!   `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`, or `PROXY UNKNOWN\r\n` for
//!   the proxy's own connections (health checks).
//! - v2 is binary: the 12-byte [`V2_SIGNATURE`], a version/command byte
//!   (0x21 PROXY, 0x20 LOCAL), a family/transport byte, a 16-bit length,
//!   the addresses and ports, then optional TLVs (skipped here).
//!
//! Parsing and building are the `ppp` crate's. This module adds what the
//! node and the balancer need around it: telling the versions apart by their
//! first bytes, waiting for a header split across reads, bounding it (107
//! bytes for v1, [`MAX_V2_HEADER`] for v2, so a garbage length is refused
//! instead of buffered), reducing it to [`Header`] (TCP only; a v2 header for
//! UDP or UNIX sockets is refused), and writing mixed IPv4/IPv6 address
//! pairs as IPv6 (IPv4-mapped), which decode back as they were.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What every v1 header starts with.
pub const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 header, `\r\n` included (the specification's bound).
pub const MAX_V1_HEADER: usize = 107;

/// The longest v2 header this decoder accepts (fixed part plus addresses and
/// TLVs); anything longer is refused rather than buffered.
pub const MAX_V2_HEADER: usize = 16 + 536;

/// The longest header of either version: a reader needs no larger buffer.
pub const MAX_HEADER: usize = MAX_V2_HEADER;

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text line (nginx `proxy_protocol on`, HAProxy `send-proxy`).
    V1,
    /// The binary header (HAProxy `send-proxy-v2`).
    V2,
}

impl Version {
    /// "v1" or "v2".
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection: who connected to the proxy, and where.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (a health check: v2 LOCAL, v1 UNKNOWN) or
    /// one it cannot describe: use the socket's addresses.
    Local,
}

/// A decoded header and how many bytes of the buffer it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub version: Version,
    pub header: Header,
    pub used: usize,
}

/// Why a header was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "not a PROXY protocol header: starts with {0:?}, neither \"PROXY \" (v1) nor the v2 signature"
    )]
    NotProxy(String),
    #[error("PROXY protocol v1 header longer than {MAX_V1_HEADER} bytes (no \\r\\n)")]
    V1TooLong,
    #[error("bad PROXY protocol v1 header {line:?}: {error}")]
    V1 {
        line: String,
        #[source]
        error: ppp::v1::BinaryParseError,
    },
    #[error("PROXY protocol v2 header of {0} bytes is over the limit of {MAX_V2_HEADER}")]
    V2TooLong(usize),
    #[error("bad PROXY protocol v2 header: {0}")]
    V2(#[source] ppp::v2::ParseError),
    #[error("PROXY protocol v2 header for a {0} connection; only TCP is relayed")]
    NotTcp(&'static str),
}

/// Decodes a header of either version at the start of `buf`. `Ok(None)`:
/// more bytes are needed (never once `buf` holds [`MAX_HEADER`] bytes);
/// `Ok(Some(decoded))`: the header and its length.
pub fn decode(buf: &[u8]) -> Result<Option<Decoded>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'\r') => decode_v2(buf),
        Some(b'P') => decode_v1(buf),
        Some(_) => Err(not_proxy(buf)),
    }
}

fn not_proxy(buf: &[u8]) -> ProxyError {
    ProxyError::NotProxy(String::from_utf8_lossy(&buf[..buf.len().min(16)]).into_owned())
}

fn decode_v1(buf: &[u8]) -> Result<Option<Decoded>, ProxyError> {
    let known = buf.len().min(V1_PREFIX.len());
    if buf[..known] != V1_PREFIX[..known] {
        return Err(not_proxy(buf));
    }
    // The line is parsed whole, once its end is here: ppp then reports any
    // error as final (it would take a line cut short for a partial one).
    let window = &buf[..buf.len().min(MAX_V1_HEADER)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1_HEADER {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..cr + 2];
    let header = ppp::v1::Header::try_from(line).map_err(|error| ProxyError::V1 {
        line: String::from_utf8_lossy(line).into_owned(),
        error,
    })?;
    let header = match header.addresses {
        ppp::v1::Addresses::Unknown => Header::Local,
        ppp::v1::Addresses::Tcp4(a) => Header::Proxy {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        ppp::v1::Addresses::Tcp6(a) => Header::Proxy {
            source: SocketAddr::new(unmap(a.source_address), a.source_port),
            destination: SocketAddr::new(unmap(a.destination_address), a.destination_port),
        },
    };
    Ok(Some(Decoded {
        version: Version::V1,
        header,
        used: line.len(),
    }))
}

fn decode_v2(buf: &[u8]) -> Result<Option<Decoded>, ProxyError> {
    let known = buf.len().min(V2_SIGNATURE.len());
    if buf[..known] != V2_SIGNATURE[..known] {
        return Err(not_proxy(buf));
    }
    if buf.len() >= 16 {
        let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > MAX_V2_HEADER {
            return Err(ProxyError::V2TooLong(len));
        }
    }
    use ppp::PartialResult as _;
    let parsed = ppp::v2::Header::try_from(buf);
    if parsed.is_incomplete() {
        return Ok(None);
    }
    let header = parsed.map_err(ProxyError::V2)?;
    use ppp::v2::{Addresses, Command, Protocol};
    let decoded = match (header.command, header.protocol, header.addresses) {
        (Command::Local, _, _) | (Command::Proxy, _, Addresses::Unspecified) => Header::Local,
        (Command::Proxy, Protocol::Datagram, _) => return Err(ProxyError::NotTcp("UDP")),
        (Command::Proxy, _, Addresses::Unix(_)) => return Err(ProxyError::NotTcp("UNIX socket")),
        (Command::Proxy, _, Addresses::IPv4(a)) => Header::Proxy {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        (Command::Proxy, _, Addresses::IPv6(a)) => Header::Proxy {
            source: SocketAddr::new(unmap(a.source_address), a.source_port),
            destination: SocketAddr::new(unmap(a.destination_address), a.destination_port),
        },
    };
    Ok(Some(Decoded {
        version: Version::V2,
        header: decoded,
        used: header.len(),
    }))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn unmap(v6: Ipv6Addr) -> IpAddr {
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends the header of a relayed connection from `source` to
/// `destination`. Mixed families are written as IPv6, the IPv4 address
/// mapped.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    let (source, destination) = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (source, destination)
        }
        _ => (
            SocketAddr::new(v6(source.ip()).into(), source.port()),
            SocketAddr::new(v6(destination.ip()).into(), destination.port()),
        ),
    };
    match version {
        Version::V1 => {
            let addresses = ppp::v1::Addresses::from((source, destination));
            out.extend_from_slice(addresses.to_string().as_bytes());
        }
        Version::V2 => {
            let addresses = ppp::v2::Addresses::from((source, destination));
            let header = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                addresses,
            )
            .build()
            .expect("a v2 header with two addresses fits");
            out.extend_from_slice(&header);
        }
    }
}

/// Appends the header of the proxy's own connection (a health check or
/// probe): v1 `PROXY UNKNOWN\r\n`, v2 the LOCAL command with no addresses.
pub fn encode_local(version: Version, out: &mut Vec<u8>) {
    match version {
        Version::V1 => out.extend_from_slice(ppp::v1::Addresses::Unknown.to_string().as_bytes()),
        Version::V2 => {
            let header = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Local,
                ppp::v2::Protocol::Unspecified,
                ppp::v2::Addresses::Unspecified,
            )
            .build()
            .expect("a LOCAL header fits");
            out.extend_from_slice(&header);
        }
    }
}

/// [`encode_local`] into a new buffer.
pub fn local(version: Version) -> Vec<u8> {
    let mut out = Vec::new();
    encode_local(version, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [Version; 2] = [Version::V1, Version::V2];

    fn encoded(version: Version, source: &str, destination: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(
            version,
            source.parse().unwrap(),
            destination.parse().unwrap(),
            &mut buf,
        );
        buf
    }

    fn round_trip(version: Version, source: &str, destination: &str) -> Header {
        let mut buf = encoded(version, source, destination);
        buf.extend_from_slice(b"after");
        let decoded = decode(&buf).unwrap().unwrap();
        assert_eq!(decoded.version, version);
        assert_eq!(&buf[decoded.used..], b"after");
        decoded.header
    }

    #[test]
    fn ipv4_and_ipv6_round_trip_in_both_versions() {
        for version in BOTH {
            for (source, destination) in [
                ("10.1.2.3:40000", "127.0.0.1:6000"),
                ("[2001:db8::1]:5", "[::1]:6000"),
                // Mixed families travel as IPv6 and come back as they were.
                ("10.0.0.1:1", "[::1]:2"),
            ] {
                assert_eq!(
                    round_trip(version, source, destination),
                    Header::Proxy {
                        source: source.parse().unwrap(),
                        destination: destination.parse().unwrap(),
                    },
                    "{version} {source} {destination}"
                );
            }
        }
    }

    #[test]
    fn the_wire_formats_are_the_specifications() {
        assert_eq!(
            encoded(Version::V1, "127.0.0.2:5555", "127.0.0.1:6000"),
            b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 6000\r\n"
        );
        assert_eq!(
            encoded(Version::V1, "10.0.0.1:1", "[::1]:2"),
            b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n"
        );
        let v2 = encoded(Version::V2, "1.2.3.4:5", "5.6.7.8:9");
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend([0x21, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 5, 0, 9]);
        assert_eq!(v2, expected);
    }

    #[test]
    fn partial_headers_wait_and_garbage_is_refused() {
        for version in BOTH {
            let buf = encoded(version, "[2001:db8::1]:40000", "[2001:db8::2]:6000");
            for cut in 0..buf.len() {
                assert_eq!(decode(&buf[..cut]), Ok(None), "{version} cut at {cut}");
            }
        }
        for garbage in [
            &b"{\"msgid\":1}"[..],
            b"\x10\0\0\0",
            b"GET / HTTP/1.1\r\n",
            b"PROXX TCP4",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert!(
                matches!(decode(garbage), Err(ProxyError::NotProxy(_))),
                "{garbage:?}: {:?}",
                decode(garbage)
            );
        }
    }

    #[test]
    fn bad_v1_lines_are_refused_with_the_reason() {
        for line in [
            &b"PROXY TCP4 1.2.3.4\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY \r\n",
        ] {
            let error = decode(line).unwrap_err();
            assert!(matches!(error, ProxyError::V1 { .. }), "{line:?}: {error}");
            assert!(error.to_string().contains("v1"), "{error}");
        }
        // No line end within 107 bytes: refused, not buffered further.
        let mut long = b"PROXY TCP6 ".to_vec();
        long.resize(MAX_V1_HEADER - 1, b'1');
        assert_eq!(decode(&long), Ok(None));
        long.push(b'1');
        assert_eq!(decode(&long), Err(ProxyError::V1TooLong));
        // The longest valid line fits.
        let max = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(max.len(), MAX_V1_HEADER - 3);
        assert_eq!(decode(max).unwrap().unwrap().used, max.len());
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        let buf = encoded(Version::V2, "1.2.3.4:5", "5.6.7.8:9");
        let mut bad = buf.clone();
        bad[12] = 0x11;
        assert!(matches!(decode(&bad), Err(ProxyError::V2(_))));
        let mut bad = buf.clone();
        bad[12] = 0x29;
        assert!(matches!(decode(&bad), Err(ProxyError::V2(_))));
        let mut bad = buf.clone();
        bad[13] = 0x41;
        assert!(matches!(decode(&bad), Err(ProxyError::V2(_))));
        let mut bad = buf.clone();
        bad[13] = 0x12;
        assert_eq!(decode(&bad), Err(ProxyError::NotTcp("UDP")));
        let mut bad = buf.clone();
        bad[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert!(matches!(decode(&bad), Err(ProxyError::V2(_))));
        let mut bad = buf.clone();
        bad[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&bad), Err(ProxyError::V2TooLong(16 + 65535)));
        // TLVs after the addresses are skipped.
        let mut tlv = buf.clone();
        tlv[14..16].copy_from_slice(&(12u16 + 4).to_be_bytes());
        tlv.extend([0x04, 0, 1, 42]);
        tlv.extend_from_slice(b"after");
        let decoded = decode(&tlv).unwrap().unwrap();
        assert_eq!(&tlv[decoded.used..], b"after");
    }

    #[test]
    fn local_connections_carry_no_address() {
        assert_eq!(local(Version::V1), b"PROXY UNKNOWN\r\n");
        let v2 = local(Version::V2);
        assert_eq!(v2[..12], V2_SIGNATURE);
        assert_eq!(v2[12..], [0x20, 0x00, 0, 0]);
        for version in BOTH {
            let header = local(version);
            assert_eq!(
                decode(&header),
                Ok(Some(Decoded {
                    version,
                    header: Header::Local,
                    used: header.len(),
                }))
            );
        }
        // A v1 UNKNOWN line may carry addresses; they are ignored.
        let line = b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n";
        assert_eq!(decode(line).unwrap().unwrap().header, Header::Local);
    }
}
