//! Finding a node that accepts: pick, connect within `connect_timeout`, and
//! on failure record it (nginx `max_fails`) and pick again among the nodes
//! not yet tried, up to `next_upstream_tries` (nginx `proxy_next_upstream`).
//! Without `--panic` only available nodes are picked, so with none
//! available no node is tried at all ([`NoNode::NoneAvailable`]).
//!
//! Connects never block the thread: [`Search::next`] starts a non-blocking
//! connect, and the connection's state machine reports its outcome
//! ([`Search::connected`], [`Search::failed`]) when the socket turns
//! writable or the connect timeout passes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use crate::config::Tuning;
use crate::log_limit::{self, More};
use crate::metric_names;
use crate::pool::{Pool, Upstream};

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
    /// The balancer could not open a socket to a node: it is out of file
    /// descriptors (its own limit or the system's). No node is at fault, so
    /// none is marked failed; the client is closed.
    OutOfFds,
}

/// A connect under way to one node.
pub struct Attempt {
    pub stream: TcpStream,
    pub upstream: Arc<Upstream>,
    pub started: Instant,
    /// The PROXY header to send once connected, from the same reading of
    /// the node's spec as the address (a reload in between changes neither).
    proxy: Option<chat_schema::proxy::Version>,
}

/// The nodes tried so far for one client connection.
#[derive(Default)]
pub struct Search {
    tried: Vec<Arc<Upstream>>,
    last_error: Cow<'static, str>,
}

impl Search {
    /// Starts a connect to the next candidate; a connect that fails at once
    /// counts as that candidate's failure and the next one is tried.
    pub fn next(&mut self, pool: &Pool, tuning: &Tuning) -> Result<Attempt, NoNode> {
        loop {
            if tuning.next_upstream_tries > 0 && self.tried.len() >= tuning.next_upstream_tries {
                return Err(self.no_node());
            }
            let Some(pick) = pool.pick(&self.tried) else {
                return Err(self.no_node());
            };
            let upstream = pick.upstream;
            tracing::trace!(upstream = %upstream.label, tier = ?pick.tier, "picked");
            let started = Instant::now();
            let spec = upstream.spec();
            match TcpStream::connect(spec.addr) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Attempt {
                        stream,
                        upstream,
                        started,
                        proxy: spec.proxy_protocol.version(),
                    });
                }
                Err(error) if out_of_fds(&error) => return Err(NoNode::OutOfFds),
                Err(error) => self.fail(upstream, started, &error),
            }
        }
    }

    /// The attempt's node accepted: records it and returns the PROXY header
    /// to send it first (empty if none). `client` is the client's socket,
    /// `peer` its address; its local address is read only for the header.
    pub fn connected(
        &self,
        attempt: &Attempt,
        client: &TcpStream,
        peer: SocketAddr,
    ) -> Result<Vec<u8>, NoNode> {
        record_time(&attempt.upstream, attempt.started);
        attempt.upstream.connect_ok();
        let mut header = Vec::new();
        if let Some(version) = attempt.proxy {
            let Ok(local) = client.local_addr() else {
                return Err(NoNode::ClientGone);
            };
            chat_schema::proxy::encode(version, peer, local, &mut header);
        }
        Ok(header)
    }

    /// The attempt failed with `error` (refused, timed out, ...): records
    /// it against its node, which is not tried again for this client.
    pub fn failed(&mut self, attempt: Attempt, error: &std::io::Error) {
        self.fail(attempt.upstream, attempt.started, error);
    }

    fn fail(&mut self, upstream: Arc<Upstream>, started: Instant, error: &std::io::Error) {
        record_time(&upstream, started);
        self.last_error = kind(error);
        // Once per upstream every few seconds: with a dead node, every
        // client may get here.
        if let Some(held) = log_limit::allow("connect", &upstream.label) {
            tracing::warn!(upstream = %upstream.label, error = %self.last_error, "connect failed{}", More(held));
        }
        upstream.connect_failed(error.to_string());
        self.tried.push(upstream);
    }

    fn no_node(&self) -> NoNode {
        match self.tried.last() {
            None => NoNode::NoneAvailable,
            Some(last) => NoNode::AllFailed {
                tried: self.tried.len(),
                last: last.label.clone(),
                error: self.last_error.clone(),
            },
        }
    }
}

fn record_time(upstream: &Upstream, started: Instant) {
    metrics::histogram!(metric_names::CONNECT_SECONDS, "upstream" => upstream.label.clone())
        .record(started.elapsed().as_secs_f64());
}

/// Whether `socket(2)` failed for want of a file descriptor.
fn out_of_fds(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
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
