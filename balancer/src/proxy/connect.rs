//! Finding a node that accepts: pick, connect within `connect_timeout`, and
//! on failure record it (nginx `max_fails`) and pick again among the nodes
//! not yet tried, up to `next_upstream_tries` (nginx `proxy_next_upstream`).
//! Without `--panic` only available nodes are picked, so with none
//! available no node is tried at all ([`NoNode::NoneAvailable`]).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::Tuning;
use crate::log_limit::{self, More};
use crate::metric_names;
use crate::pool::{Pool, Upstream};

/// A connected node and the PROXY header to send it first (empty if none).
pub struct Connected {
    pub stream: TcpStream,
    pub upstream: Arc<Upstream>,
    pub header: Vec<u8>,
}

/// Why a client connection got no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoNode {
    /// No node was available, so none was tried (fail fast).
    NoneAvailable,
    /// Every node tried failed, or `next_upstream_tries` ran out: how many
    /// were tried, the last one, its error kind.
    AllFailed {
        tried: usize,
        last: String,
        error: Cow<'static, str>,
    },
    /// The client's socket failed (its local address, needed for the PROXY
    /// header, could not be read): nothing to relay, no node at fault.
    ClientGone,
}

/// Tries candidates until one accepts.
/// `client` is the client's connection, `peer` its address; its local
/// address is read only for a PROXY header.
pub async fn connect(
    pool: &Pool,
    tuning: &Tuning,
    client: &TcpStream,
    peer: SocketAddr,
) -> Result<Connected, NoNode> {
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    let mut last_error = Cow::Borrowed("");
    let failed = |tried: &[Arc<Upstream>], error: Cow<'static, str>| match tried.last() {
        None => NoNode::NoneAvailable,
        Some(last) => NoNode::AllFailed {
            tried: tried.len(),
            last: last.label.clone(),
            error,
        },
    };
    loop {
        if tuning.next_upstream_tries > 0 && tried.len() >= tuning.next_upstream_tries {
            return Err(failed(&tried, last_error));
        }
        let Some(pick) = pool.pick(&tried) else {
            return Err(failed(&tried, last_error));
        };
        let upstream = pick.upstream;
        tracing::trace!(upstream = %upstream.label, tier = ?pick.tier, "picked");
        let spec = upstream.spec();
        let started = Instant::now();
        let result =
            match tokio::time::timeout(tuning.connect_timeout, TcpStream::connect(spec.addr)).await
            {
                Ok(connected) => connected,
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            };
        metrics::histogram!(metric_names::CONNECT_SECONDS, "upstream" => upstream.label.clone())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                upstream.connect_ok();
                let mut header = Vec::new();
                if let Some(version) = spec.proxy_protocol.version() {
                    let Ok(local) = client.local_addr() else {
                        return Err(NoNode::ClientGone);
                    };
                    chat_schema::proxy::encode(version, peer, local, &mut header);
                }
                return Ok(Connected {
                    stream,
                    upstream,
                    header,
                });
            }
            Err(error) => {
                last_error = kind(&error);
                // Once per upstream every few seconds: with a dead node,
                // every client may get here.
                if let Some(held) = log_limit::allow("connect", &upstream.label) {
                    tracing::warn!(upstream = %upstream.label, error = %last_error, "connect failed{}", More(held));
                }
                upstream.connect_failed(error.to_string());
                tried.push(upstream);
            }
        }
    }
}

/// A short name for a failed connect's error, for log lines (the whole
/// error is kept for `/status`).
fn kind(error: &std::io::Error) -> Cow<'static, str> {
    use std::io::ErrorKind;
    Cow::Borrowed(match error.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::TimedOut => "timeout",
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => "reset",
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable",
        ErrorKind::AddrNotAvailable => "no local port",
        _ if error.raw_os_error() == Some(libc::EMFILE) => "out of fds",
        _ => return Cow::Owned(error.to_string()),
    })
}
