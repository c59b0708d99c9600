//! `latency`: 16-byte request/response on `--connections` established
//! connections at a fixed total `--rate`, open loop and coordinated omission
//! corrected (see [`crate::open_loop`]): latency runs from the *intended*
//! send time to the receipt of the echo. p50, p90, p99, p99.9, max.
//!
//! `--target` may be repeated: the targets are then measured in the same
//! run, their requests interleaved on one schedule (`--rate` per target), so
//! that a noisy moment on a shared machine hits them all alike; one JSON line
//! per target.
//!
//! A request is [`MAGIC`], the connection's index (u32) and the intended
//! time in ns (u64), little-endian; the echo brings both back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_client::duration::parse_duration;
use serde_json::json;

use crate::open_loop::{self, Connections, Replies, Reply, Schedule};
use crate::report::{Output, fmt_us, percentiles_us, thousands};
use crate::request::{MAGIC, REQ_LEN};

#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Address to measure. Repeat it to measure several targets in the same
    /// run, their requests interleaved on one schedule, so that a noisy
    /// moment on a shared machine hits them all alike.
    #[arg(long, required = true)]
    pub target: Vec<SocketAddr>,
    /// Name of each target in the JSON lines, in the order of --target.
    #[arg(long)]
    pub label: Vec<String>,
    /// Measured time, after the warmup.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Requests sent before measuring, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Worker threads of the readers' runtime (1: a single-threaded
    /// runtime); the schedule has a thread of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,
    /// Established connections per target the requests are spread over.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Requests per second per target, all its connections together.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// After the schedule ends, wait this long at most for the last echoes
    /// (requests still unanswered then are counted as lost).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,
}

/// Reads the echoes of one connection's requests.
struct Echoes {
    conn: usize,
}

impl Replies for Echoes {
    fn next(&mut self, buf: &[u8]) -> Result<Option<(usize, Reply)>, ()> {
        let Some(frame) = buf.get(..REQ_LEN) else {
            return Ok(None);
        };
        let id = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        if &frame[..4] != MAGIC || id as usize != self.conn {
            return Ok(Some((REQ_LEN, Reply::Mismatch)));
        }
        let due = u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes"));
        Ok(Some((REQ_LEN, Reply::Answer(due))))
    }
}

pub async fn run(args: LatencyArgs) -> anyhow::Result<Vec<Output>> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let targets = args.target.len();
    anyhow::ensure!(
        args.label.is_empty() || args.label.len() == targets,
        "give one --label per --target, or none"
    );
    let label = |t: usize| args.label.get(t).cloned().unwrap_or_default();
    let per_target = args.connections as usize;
    let conns = Connections::open(&args.target, per_target).await?;
    let schedule = Schedule::new(args.rate, targets, per_target, args.warmup, args.duration);
    let request = |conn: usize, due: u64| {
        let mut req = [0u8; REQ_LEN];
        req[..4].copy_from_slice(MAGIC);
        req[4..8].copy_from_slice(&(conn as u32).to_le_bytes());
        req[8..16].copy_from_slice(&due.to_le_bytes());
        req
    };
    let run = open_loop::run(conns, schedule, args.drain, request, |conn| Echoes { conn }).await?;
    let (shared, hists, tallies) = (&run.shared, &run.hists, &run.tallies);
    let send_lag = percentiles_us(&run.send_lag);
    let secs = args.duration.as_secs_f64();
    let mut outputs = Vec::with_capacity(targets);
    for (t, target) in args.target.iter().enumerate() {
        let total = &tallies[t];
        let sent = shared.sent_to(t, per_target);
        let sent_in_window = shared.sent_in_window[t].load(Ordering::Relaxed);
        let write_errors = shared.write_errors[t].load(Ordering::Relaxed);
        let lost = sent.saturating_sub(total.received);
        let errors =
            lost + total.mismatched + total.read_errors + total.closed_early + write_errors;
        let lat = percentiles_us(&hists[t]);
        let name = if label(t).is_empty() {
            target.to_string()
        } else {
            format!("{} ({target})", label(t))
        };
        let human = format!(
            "latency {name}: {} req/s over {per_target} connections{}, p50 {} p90 {} p99 {} p99.9 {} max {}; {errors} errors ({lost} lost); sender lateness p50 {} p99 {}",
            thousands(sent_in_window as f64 / secs),
            if targets > 1 {
                format!(", interleaved with {} other targets", targets - 1)
            } else {
                String::new()
            },
            fmt_us(&lat, "p50"),
            fmt_us(&lat, "p90"),
            fmt_us(&lat, "p99"),
            fmt_us(&lat, "p999"),
            fmt_us(&lat, "max"),
            fmt_us(&send_lag, "p50"),
            fmt_us(&send_lag, "p99"),
        );
        outputs.push(Output {
            json: json!({
                "bench": "latency",
                "label": label(t),
                "target": target.to_string(),
                "interleaved_targets": targets,
                "connections": per_target,
                "rate": args.rate,
                "duration_s": secs,
                "sent": sent,
                "received": total.received,
                "achieved_per_s": (total.received_in_window as f64 / secs).round(),
                "lost": lost,
                "errors": errors,
                "mismatched": total.mismatched,
                "read_errors": total.read_errors,
                "closed_early": total.closed_early,
                "write_errors": write_errors,
                "write_stalls": shared.write_stalls.load(Ordering::Relaxed),
                "latency_us": lat,
                "send_lag_us": send_lag,
            }),
            human,
        });
    }
    Ok(outputs)
}
