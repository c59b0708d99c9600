//! `tcp-bench`: load generator and echo upstream for comparing TCP proxies
//! (chat-balancer, nginx's stream module, HAProxy) against a direct
//! connection, and for timing chat-balancer's redirect mode.
//! `balancer/bench/run.sh` drives it; it also runs on its own:
//!
//! ```sh
//! cargo build --release -p chat-balancer-bench
//! B=target/release/tcp-bench
//! $B echo --listen 127.0.0.1:9190 &                  # echo upstream (TCP_NODELAY)
//! $B conn-rate --target 127.0.0.1:9190 --duration 5s --concurrency 32
//! $B latency --target 127.0.0.1:9190 --connections 50 --rate 5000 --duration 5s
//! $B latency --target 127.0.0.1:9190 --label direct --target 127.0.0.1:8000 --label nginx
//! $B bulk --target 127.0.0.1:9190 --connections 4 --duration 5s
//! $B redirect --target 127.0.0.1:9100 --metrics http://127.0.0.1:9101/metrics --rate 5000
//! $B table results.jsonl                             # Markdown tables of many runs
//! ```
//!
//! Each measurement prints one JSON line on stdout (machine-readable, with
//! the `--label` given) and one human line on stderr. One module per
//! subcommand: [`echo`], [`conn_rate`], [`latency`], [`bulk`], [`redirect`],
//! [`table`], [`mio_relay`] (a minimal relay, the yardstick for a proxy's
//! per-connection cost); what they share is in [`request`] (the bytes sent),
//! [`open_loop`] (the fixed-rate sender), [`report`] (percentiles and the
//! JSON/human output) and [`scrape`] (a Prometheus histogram off /metrics).

mod bulk;
mod conn_rate;
mod echo;
mod latency;
mod mio_relay;
mod open_loop;
mod redirect;
mod report;
mod request;
mod scrape;
mod table;

use std::net::SocketAddr;
use std::time::Duration;

use chat_client::duration::parse_duration;
use clap::{Parser, Subcommand};

use crate::report::emit;

/// Load generator and echo upstream for TCP proxy benchmarks.
#[derive(Debug, Parser)]
#[command(name = "tcp-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Echo (or discard) upstream server.
    Echo(echo::EchoArgs),
    /// New connections per second: connect, one 16-byte request/response,
    /// close.
    ConnRate(conn_rate::ConnRateArgs),
    /// Latency of 16-byte request/response on established connections at a
    /// fixed total rate, from the intended send time.
    Latency(latency::LatencyArgs),
    /// Bulk throughput through the target.
    Bulk(bulk::BulkArgs),
    /// Redirect mode: "which node?" at a fixed rate on persistent
    /// connections, round trip from the intended send time, and the
    /// balancer's own answer time from its /metrics.
    Redirect(redirect::RedirectArgs),
    /// Markdown tables (with ratios) from JSON lines of earlier runs.
    Table(table::TableArgs),
    /// A minimal relay on one mio event loop per thread: the yardstick for
    /// a proxy's per-connection cost (not a proxy to deploy).
    MioRelay(mio_relay::MioRelayArgs),
}

/// Arguments every measurement of one target takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Address to measure (a proxy, or an upstream directly).
    #[arg(long)]
    pub target: SocketAddr,
    /// Measured time, after the warmup.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Load applied before measuring, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Name of the target in the JSON line (e.g. nginx, haproxy, direct).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Worker threads of the load generator (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
}

impl Common {
    /// `label (address)`, or the address alone without a label.
    pub fn name(&self) -> String {
        if self.label.is_empty() {
            self.target.to_string()
        } else {
            format!("{} ({})", self.label, self.target)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Echo(args) => runtime(args.threads)?.block_on(echo::serve(args)),
        Cmd::ConnRate(args) => {
            let out = runtime(args.common.threads)?.block_on(conn_rate::run(args))?;
            emit(&out);
            Ok(())
        }
        Cmd::Latency(args) => {
            for out in runtime(args.threads)?.block_on(latency::run(args))? {
                emit(&out);
            }
            Ok(())
        }
        Cmd::Bulk(args) => {
            let out = runtime(args.common.threads)?.block_on(bulk::run(args))?;
            emit(&out);
            Ok(())
        }
        Cmd::Redirect(args) => {
            let out = runtime(args.common.threads)?.block_on(redirect::run(args))?;
            emit(&out);
            Ok(())
        }
        Cmd::Table(args) => table::print(&args),
        Cmd::MioRelay(args) => mio_relay::run(args),
    }
}

fn runtime(threads: u32) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads as usize)
            .enable_all()
            .build()
    }
}
