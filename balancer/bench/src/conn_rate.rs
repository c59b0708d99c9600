//! `conn-rate`: new connections per second through the target.
//!
//! Each of `--concurrency` loops connects, sends one 16-byte request, reads
//! the 16-byte echo, checks it and closes; failures are counted by kind
//! (connect refused or timed out, reset, closed early, timeout, wrong
//! bytes). Connections that end within the window (after `--warmup`) are
//! counted; the time each took, connect to close, is a histogram too.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_client::duration::parse_duration;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::Common;
use crate::report::{Output, fmt_us, new_histogram, percentiles_us, thousands};
use crate::request::{MAGIC, REQ_LEN};

#[derive(Debug, Clone, clap::Args)]
pub struct ConnRateArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Give up connecting after this long (counted as connect_timeout).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub connect_timeout: Duration,
    /// Give up waiting for the echo after this long (counted as timeout).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub io_timeout: Duration,
    /// For a 127.x.y.z target: spread connections over this many source
    /// addresses 127.0.0.1, 127.0.0.2, ... A closed connection holds its
    /// (source, destination) pair in TIME_WAIT and Linux reuses it after
    /// about a second (tcp_tw_reuse=2 on loopback), so one source address
    /// caps new connections at ~14 000/s (the even half of
    /// ip_local_port_range). 1: do not bind.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=250))]
    pub source_ips: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ConnError {
    Connect,
    ConnectTimeout,
    Reset,
    ClosedEarly,
    Timeout,
    Mismatch,
}

impl ConnError {
    fn name(self) -> &'static str {
        match self {
            ConnError::Connect => "connect",
            ConnError::ConnectTimeout => "connect_timeout",
            ConnError::Reset => "reset",
            ConnError::ClosedEarly => "closed_early",
            ConnError::Timeout => "timeout",
            ConnError::Mismatch => "mismatch",
        }
    }
}

fn io_error(e: &std::io::Error) -> ConnError {
    match e.kind() {
        ErrorKind::UnexpectedEof => ConnError::ClosedEarly,
        _ => ConnError::Reset,
    }
}

/// Connects from `127.0.0.<source>` (port chosen at connect time), or from
/// wherever the kernel likes when `source` is `None`.
async fn connect_from(target: SocketAddr, source: Option<u8>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target).await;
    };
    let socket = TcpSocket::new_v4()?;
    chat_ops::source::bind_no_port(&socket)?;
    socket.bind(SocketAddr::from(([127, 0, 0, source], 0)))?;
    socket.connect(target).await
}

async fn one_connection(args: &ConnRateArgs, id: u64, source: Option<u8>) -> Result<(), ConnError> {
    let mut stream = tokio::time::timeout(
        args.connect_timeout,
        connect_from(args.common.target, source),
    )
    .await
    .map_err(|_| ConnError::ConnectTimeout)?
    .map_err(|_| ConnError::Connect)?;
    let _ = stream.set_nodelay(true);
    let mut req = [0u8; REQ_LEN];
    req[..4].copy_from_slice(MAGIC);
    req[4..12].copy_from_slice(&id.to_le_bytes());
    let mut resp = [0u8; REQ_LEN];
    tokio::time::timeout(args.io_timeout, async {
        stream.write_all(&req).await.map_err(|e| io_error(&e))?;
        stream
            .read_exact(&mut resp)
            .await
            .map_err(|e| io_error(&e))?;
        Ok::<_, ConnError>(())
    })
    .await
    .map_err(|_| ConnError::Timeout)??;
    if resp != req {
        return Err(ConnError::Mismatch);
    }
    // Dropping closes (FIN), as a short-lived client does.
    Ok(())
}

#[derive(Default)]
struct ConnTally {
    ok: u64,
    errors: BTreeMap<ConnError, u64>,
    hist: Option<Histogram<u64>>,
}

pub async fn run(args: ConnRateArgs) -> anyhow::Result<Output> {
    let args = Arc::new(args);
    let start = Instant::now();
    let window_start = start + args.common.warmup;
    let window_end = window_start + args.common.duration;
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = ConnTally {
                hist: Some(new_histogram()),
                ..ConnTally::default()
            };
            let hist = tally.hist.as_mut().expect("set above");
            let mut id = u64::from(worker) << 40;
            let spread = match args.common.target.ip() {
                std::net::IpAddr::V4(ip) if ip.is_loopback() && args.source_ips > 1 => {
                    args.source_ips as u64
                }
                _ => 0,
            };
            loop {
                let t0 = Instant::now();
                if t0 >= window_end {
                    break;
                }
                id += 1;
                let source = (spread > 0).then(|| (1 + (id + u64::from(worker)) % spread) as u8);
                let result = one_connection(&args, id, source).await;
                let t1 = Instant::now();
                let counted = t1 >= window_start && t1 < window_end;
                match result {
                    Ok(()) if counted => {
                        tally.ok += 1;
                        let _ = hist.record((t1 - t0).as_nanos().max(1) as u64);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if counted {
                            *tally.errors.entry(e).or_default() += 1;
                        }
                        // Do not spin on a target that refuses.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        }));
    }
    let mut total = ConnTally {
        hist: Some(new_histogram()),
        ..ConnTally::default()
    };
    for task in tasks {
        let t = task.await?;
        total.ok += t.ok;
        for (k, v) in t.errors {
            *total.errors.entry(k).or_default() += v;
        }
        if let (Some(all), Some(h)) = (total.hist.as_mut(), t.hist.as_ref()) {
            all.add(h)?;
        }
    }
    let secs = args.common.duration.as_secs_f64();
    let errors: u64 = total.errors.values().sum();
    let kinds: serde_json::Map<String, Value> = total
        .errors
        .iter()
        .map(|(k, v)| (k.name().to_string(), json!(v)))
        .collect();
    let rate = total.ok as f64 / secs;
    let conn_time = percentiles_us(total.hist.as_ref().expect("set above"));
    let human = format!(
        "conn-rate {}: {} conn/s, {} errors{} (concurrency {}, {:?}); connection time p50 {} p99 {}",
        args.common.name(),
        thousands(rate),
        errors,
        if errors > 0 {
            format!(" {kinds:?}")
        } else {
            String::new()
        },
        args.concurrency,
        args.common.duration,
        fmt_us(&conn_time, "p50"),
        fmt_us(&conn_time, "p99"),
    );
    Ok(Output {
        json: json!({
            "bench": "conn-rate",
            "label": args.common.label,
            "target": args.common.target.to_string(),
            "concurrency": args.concurrency,
            "source_ips": args.source_ips,
            "duration_s": secs,
            "ok": total.ok,
            "errors": errors,
            "error_kinds": kinds,
            "conn_per_s": rate.round(),
            "conn_time_us": conn_time,
        }),
        human,
    })
}
