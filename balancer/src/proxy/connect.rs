//! Finding a node that accepts: pick, connect within `connect_timeout`, and
//! on failure record it (nginx `max_fails`) and pick again among the nodes
//! not yet tried, up to `next_upstream_tries` (nginx `proxy_next_upstream`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use glommio::net::TcpStream;

use crate::pool::{Pool, Upstream};

/// A connected node and the PROXY header to send it first (empty if none).
pub struct Connected {
    pub stream: TcpStream,
    pub upstream: Arc<Upstream>,
    pub header: Vec<u8>,
}

/// Tries candidates until one accepts; `None` when every try failed or no
/// node is left to try.
pub async fn connect(pool: &Pool, client: SocketAddr, local: SocketAddr) -> Option<Connected> {
    let tuning = pool.tuning();
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    loop {
        if tuning.next_upstream_tries > 0 && tried.len() >= tuning.next_upstream_tries {
            return None;
        }
        let pick = pool.pick(&tried)?;
        let upstream = pick.upstream;
        tracing::trace!(upstream = %upstream.label, tier = ?pick.tier, "picked");
        let spec = upstream.spec();
        let started = Instant::now();
        let result = TcpStream::connect_timeout(spec.addr, tuning.connect_timeout).await;
        metrics::histogram!("chat_balancer_connect_seconds", "upstream" => upstream.label.clone())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                upstream.connect_ok();
                let mut header = Vec::new();
                if let Some(version) = spec.proxy_protocol.version() {
                    chat_schema::proxy::encode(version, client, local, &mut header);
                }
                return Some(Connected {
                    stream,
                    upstream,
                    header,
                });
            }
            Err(e) => {
                let error = e.to_string();
                tracing::debug!(upstream = %upstream.label, %error, "connect failed; trying the next node");
                upstream.connect_failed(error);
                tried.push(upstream);
            }
        }
    }
}
