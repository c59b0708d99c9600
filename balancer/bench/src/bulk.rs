//! `bulk`: throughput through the target. `--connections` connections each
//! write 64 KiB chunks as fast as they can and read the echo; the figure is
//! bytes per second received back (`--mode echo`, each byte crossing a proxy
//! twice), or written (`--mode upload`, against an upstream in
//! `echo --mode discard`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Common;
use crate::report::Output;
use crate::request::CHUNK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BulkMode {
    /// Write and read the echo back; count bytes received.
    Echo,
    /// Write only (upstream in `echo --mode discard`); count bytes written.
    Upload,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BulkArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections streaming at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Count echoed bytes, or written bytes only.
    #[arg(long, value_enum, default_value = "echo")]
    pub mode: BulkMode,
}

pub async fn run(args: BulkArgs) -> anyhow::Result<Output> {
    let received = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(args.common.target),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connect to {} timed out", args.common.target))??;
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let (written, received, errors, stop) = (
            written.clone(),
            received.clone(),
            errors.clone(),
            stop.clone(),
        );
        let errors2 = errors.clone();
        tasks.push(tokio::spawn(async move {
            let chunk = vec![b'x'; CHUNK];
            while !stop.load(Ordering::Relaxed) {
                if wr.write_all(&chunk).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                written.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors2.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    let counter = match args.mode {
        BulkMode::Echo => &received,
        BulkMode::Upload => &written,
    };
    tokio::time::sleep(args.common.warmup).await;
    let (b0, t0) = (counter.load(Ordering::Relaxed), Instant::now());
    let errors0 = errors.load(Ordering::Relaxed);
    tokio::time::sleep(args.common.duration).await;
    let (b1, t1) = (counter.load(Ordering::Relaxed), Instant::now());
    let errors = errors.load(Ordering::Relaxed) - errors0;
    stop.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    let secs = (t1 - t0).as_secs_f64();
    let bytes = b1 - b0;
    let per_s = bytes as f64 / secs;
    let human = format!(
        "bulk {}: {:.1} MB/s {} over {} connections ({:.2} Gbit/s), {} errors",
        args.common.name(),
        per_s / 1e6,
        match args.mode {
            BulkMode::Echo => "echoed",
            BulkMode::Upload => "uploaded",
        },
        args.connections,
        per_s * 8.0 / 1e9,
        errors,
    );
    Ok(Output {
        json: json!({
            "bench": "bulk",
            "label": args.common.label,
            "target": args.common.target.to_string(),
            "connections": args.connections,
            "mode": format!("{:?}", args.mode).to_lowercase(),
            "duration_s": secs,
            "bytes": bytes,
            "bytes_per_s": per_s.round(),
            "mb_per_s": (per_s / 1e5).round() / 10.0,
            "errors": errors,
        }),
        human,
    })
}
