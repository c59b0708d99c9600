//! Where each virtual user connects: the target's addresses round-robin, or
//! the node a balancer in redirect mode names; from one of several source
//! addresses in 127.0.0.0/8 when the target is on loopback, since one source
//! address has only ~28 000 ephemeral ports towards one destination.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use chat_client::{Client, ClientConfig};
use tokio::net::{TcpSocket, TcpStream, lookup_host};

use crate::config::{RunConfig, Target};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("resolving {0}: {1}")]
    Resolve(String, io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("asking the balancer which node: {0}")]
    Redirect(chat_client::ClientError),
    #[error("timed out")]
    Timeout,
}

impl DialError {
    /// A short, bounded kind for error counts (`refused`, `timeout`, ...).
    pub fn kind(&self) -> String {
        match self {
            DialError::Resolve(..) => "resolve".into(),
            DialError::Io(e) => io_kind(e),
            DialError::Redirect(_) => "redirect".into(),
            DialError::Timeout => "timeout".into(),
        }
    }
}

/// `ConnectionRefused` → `refused`, and so on, for error counts.
pub fn io_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::ConnectionAborted => "aborted".into(),
        io::ErrorKind::TimedOut => "timeout".into(),
        io::ErrorKind::AddrNotAvailable => "no_local_port".into(),
        io::ErrorKind::BrokenPipe => "broken_pipe".into(),
        _ if e.raw_os_error() == Some(libc::EMFILE) => "too_many_open_files".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Opens the connections of one run.
#[derive(Debug)]
pub struct Dialer {
    addrs: Vec<SocketAddr>,
    redirect: Option<SocketAddr>,
    sources: Vec<IpAddr>,
    timeout: Duration,
}

impl Dialer {
    /// Resolves the target's addresses once.
    pub async fn new(config: &RunConfig) -> Result<Dialer, DialError> {
        let (addrs, redirect) = match &config.target {
            Target::Addrs(list) => {
                let mut addrs = Vec::new();
                for a in list {
                    addrs.push(resolve(a).await?);
                }
                (addrs, None)
            }
            Target::Redirect(a) => (Vec::new(), Some(resolve(a).await?)),
        };
        let loopback = addrs.iter().chain(&redirect).all(|a| a.ip().is_loopback());
        let sources = if loopback && config.source_addrs > 1 {
            (1..=config.source_addrs)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, (i >> 8) as u8, i as u8)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Dialer {
            addrs,
            redirect,
            sources,
            timeout: config.request_timeout,
        })
    }

    /// Connects user `n`: target address `n mod len`, source address
    /// `n mod sources`. Returns the stream and, in redirect mode, the node's
    /// address.
    pub async fn dial(&self, n: u64) -> Result<TcpStream, DialError> {
        self.dial_target(n, n).await
    }

    /// Connects user `n` to target address `target mod len` (a reconnection
    /// moving on to the next target), from user `n`'s source address.
    pub async fn dial_target(&self, n: u64, target: u64) -> Result<TcpStream, DialError> {
        let source = (!self.sources.is_empty())
            .then(|| self.sources[(n % self.sources.len() as u64) as usize]);
        let addr = match self.redirect {
            Some(balancer) => self.ask(balancer, source).await?,
            None => self.addrs[(target % self.addrs.len() as u64) as usize],
        };
        self.open(addr, source).await
    }

    async fn ask(
        &self,
        balancer: SocketAddr,
        source: Option<IpAddr>,
    ) -> Result<SocketAddr, DialError> {
        let stream = self.open(balancer, source).await?;
        let config = ClientConfig {
            request_timeout: Some(self.timeout),
            ..ClientConfig::default()
        };
        let asking = Client::from_stream(stream, config).map_err(DialError::Redirect)?;
        let (address, _node) = asking.which_node().await.map_err(DialError::Redirect)?;
        asking.close().await;
        resolve(&address).await
    }

    async fn open(&self, addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, DialError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            chat_ops::source::bind_no_port(&socket)?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = tokio::time::timeout(self.timeout, socket.connect(addr))
            .await
            .map_err(|_| DialError::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, DialError> {
    lookup_host(addr)
        .await
        .map_err(|e| DialError::Resolve(addr.into(), e))?
        .next()
        .ok_or_else(|| DialError::Resolve(addr.into(), io::Error::other("no address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn spreads_users_over_targets_and_source_addresses() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut args = crate::config::Args {
            target: vec![
                a.local_addr().unwrap().to_string(),
                b.local_addr().unwrap().to_string(),
            ],
            source_addrs: Some(3),
            ..Default::default()
        };
        args.users = Some(10);
        let dialer = Dialer::new(&args.resolve(None).unwrap()).await.unwrap();
        let mut seen = Vec::new();
        for n in 0..4 {
            let s = dialer.dial(n).await.unwrap();
            let (listener, peer) = if n % 2 == 0 {
                (&a, s.local_addr())
            } else {
                (&b, s.local_addr())
            };
            let (_, remote) = listener.accept().await.unwrap();
            assert_eq!(remote, peer.unwrap(), "user {n} went to the wrong target");
            seen.push(remote.ip());
        }
        assert_eq!(seen[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(seen[1], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(seen[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(seen[3], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let args = crate::config::Args {
            target: vec![port.to_string()],
            ..Default::default()
        };
        let dialer = Dialer::new(&args.resolve(None).unwrap()).await.unwrap();
        let err = dialer.dial(0).await.unwrap_err();
        assert_eq!(err.kind(), "refused");
    }
}
