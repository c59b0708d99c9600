//! `redirect`: the cost of chat-balancer's redirect mode, whose aim is to
//! stay off the data path: an answer under 50 µs at p99.
//!
//! "Which node?" (`WhichNodeRequest` in the node's FlatBuffers framing) at a
//! fixed total `--rate` over `--connections` persistent connections, open
//! loop and coordinated omission corrected like `latency` (see
//! [`crate::open_loop`]): each request's id is its intended send time, which
//! the `WhichNodeReply` carries back, so the round trip runs from that time
//! to the reply's receipt (p50, p90, p99, p99.9, max; the load generator's
//! own lateness included).
//!
//! With `--metrics http://ADMIN/metrics`, the balancer's own answer time too:
//! its histogram [`ANSWER_SECONDS`] (time from a whole request frame to its
//! reply written) is scraped when the window starts and after the last reply,
//! and the difference of the bucket counts gives the share of answers within
//! 50 µs and the bucket bound each of p50, p99 and p99.9 falls under (e.g.
//! "p99 ≤ 25 µs"). The difference also holds the few warmup requests still
//! being answered when the window starts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_client::duration::parse_duration;
use chat_schema::fb;
use chat_schema::frame::{DEFAULT_MAX_FRAME, PREFIX_LEN, encode, frame_len, parse_frame};
use serde_json::{Value, json};

use crate::Common;
use crate::open_loop::{self, Connections, Replies, Reply, Schedule};
use crate::report::{Output, fmt_us, human_us, percentiles_us, thousands};
use crate::scrape::{self, Buckets};

/// The balancer's histogram of answer times, in seconds.
pub const ANSWER_SECONDS: &str = "chat_balancer_redirect_answer_seconds";

/// The aim: an answer within this long, in seconds.
const AIM_S: f64 = 50e-6;

#[derive(Debug, Clone, clap::Args)]
pub struct RedirectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Persistent connections the requests are spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Requests per second, all connections together.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// The balancer's metrics page (its admin port), e.g.
    /// http://127.0.0.1:9101/metrics: read before and after the window for
    /// the server-side answer time.
    #[arg(long)]
    pub metrics: Option<String>,
    /// After the schedule ends, wait this long at most for the last replies
    /// (requests still unanswered then are counted as lost).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,
}

/// Reads the replies on one connection: they come in the order of the
/// requests, each under its request's id (its intended send time).
#[derive(Default)]
struct Answers {
    /// Id of the last reply, to check the order.
    last_id: u64,
    /// Answers by the node address they name.
    nodes: Vec<(String, u64)>,
    /// Error replies by code.
    refusals: BTreeMap<String, u64>,
}

impl Replies for Answers {
    fn next(&mut self, buf: &[u8]) -> Result<Option<(usize, Reply)>, ()> {
        let Some(len) = frame_len(buf, DEFAULT_MAX_FRAME).map_err(|_| ())? else {
            return Ok(None);
        };
        let whole = PREFIX_LEN + len;
        if buf.len() < whole {
            return Ok(None);
        }
        let env = parse_frame(&buf[..whole], DEFAULT_MAX_FRAME).map_err(|_| ())?;
        let id = env.request_id();
        if id <= self.last_id {
            return Ok(Some((whole, Reply::Mismatch)));
        }
        let reply = if let Some(r) = env.body_as_which_node_reply() {
            let address = r.address().unwrap_or_default();
            match self.nodes.iter_mut().find(|(a, _)| a == address) {
                Some((_, n)) => *n += 1,
                None => self.nodes.push((address.to_string(), 1)),
            }
            Reply::Answer(id)
        } else if let Some(e) = env.body_as_error_reply() {
            let code = e.code().variant_name().unwrap_or("unknown");
            *self.refusals.entry(code.to_string()).or_default() += 1;
            Reply::Refused
        } else {
            return Ok(Some((whole, Reply::Mismatch)));
        };
        self.last_id = id;
        Ok(Some((whole, reply)))
    }
}

/// One "which node?" request under `id`.
fn which_node(id: u64) -> Vec<u8> {
    encode(id, |b| {
        let r = fb::WhichNodeRequest::create(b, &fb::WhichNodeRequestArgs {});
        (fb::Body::WhichNodeRequest, r.as_union_value())
    })
}

/// The histogram on `url`'s page; no histogram yet counts as empty.
fn scrape_answers(url: &str) -> Result<Buckets, String> {
    scrape::get(url).map(|page| Buckets::parse(&page, ANSWER_SECONDS).unwrap_or_default())
}

/// The server-side figures over the window, for the JSON line.
fn server_figures(
    url: &str,
    before: Result<Buckets, String>,
    after: Result<Buckets, String>,
) -> Value {
    let (before, after) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) => return json!({ "metrics": url, "error": e }),
    };
    if after.le.is_empty() {
        return json!({
            "metrics": url,
            "error": format!("no histogram {ANSWER_SECONDS} on the page"),
        });
    }
    let d = after.since(&before);
    let answers = d.count();
    let us = |s: f64| (s * 1e7).round() / 10.0;
    let bound = |q: f64| d.bound_of(q).filter(|b| b.is_finite()).map(us);
    let p99 = match d.bound_of(0.99) {
        None => Value::Null,
        Some(b) if b.is_finite() => json!(format!("p99 ≤ {}", human_us(us(b)))),
        Some(_) => json!(format!(
            "p99 > {}",
            d.last_finite()
                .map_or("every bucket".into(), |b| human_us(us(b)))
        )),
    };
    let within = d
        .at_or_under(AIM_S)
        .filter(|_| answers > 0)
        .map(|n| n as f64 / answers as f64);
    let buckets: serde_json::Map<String, Value> =
        d.le.iter()
            .map(|&(b, c)| {
                let key = if b.is_finite() {
                    format!("{}", us(b))
                } else {
                    "+Inf".to_string()
                };
                (key, json!(c))
            })
            .collect();
    json!({
        "metrics": url,
        "answers": answers,
        "aim_us": us(AIM_S),
        "within_aim": within.map(|w| (w * 1e6).round() / 1e6),
        "p99": p99,
        "p50_le_us": bound(0.50),
        "p99_le_us": bound(0.99),
        "p999_le_us": bound(0.999),
        "last_finite_le_us": d.last_finite().map(us),
        "mean_us": (answers > 0).then(|| (us(d.sum / answers as f64) * 10.0).round() / 10.0),
        "buckets_le_us": buckets,
    })
}

pub async fn run(args: RedirectArgs) -> anyhow::Result<Output> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    if let Some(url) = &args.metrics {
        // Fail now on a wrong URL rather than after the run.
        let url = url.clone();
        tokio::task::spawn_blocking(move || scrape::get(&url))
            .await?
            .map_err(|e| anyhow::anyhow!("--metrics: {e}"))?;
    }
    let per_target = args.connections as usize;
    let conns = Connections::open(&[args.common.target], per_target).await?;
    let schedule = Schedule::new(
        args.rate,
        1,
        per_target,
        args.common.warmup,
        args.common.duration,
    );
    // The first scrape when the window starts, on a thread of its own.
    let before = args.metrics.clone().map(|url| {
        let at = schedule.window_start();
        std::thread::spawn(move || {
            std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
            scrape_answers(&url)
        })
    });
    let run = open_loop::run(
        conns,
        schedule,
        args.drain,
        |_conn, due| which_node(due),
        |_conn| Answers::default(),
    )
    .await?;
    let server = match (&args.metrics, before) {
        (Some(url), Some(before)) => {
            let before = before
                .join()
                .unwrap_or_else(|_| Err("scrape thread panicked".into()));
            let url2 = url.clone();
            let after = tokio::task::spawn_blocking(move || {
                // Let the balancer record the last answers it wrote.
                std::thread::sleep(Duration::from_millis(100));
                scrape_answers(&url2)
            })
            .await?;
            server_figures(url, before, after)
        }
        _ => Value::Null,
    };

    let shared = &run.shared;
    let total = &run.tallies[0];
    let secs = args.common.duration.as_secs_f64();
    let sent = shared.sent_to(0, per_target);
    let sent_in_window = shared.sent_in_window[0].load(Ordering::Relaxed);
    let write_errors = shared.write_errors[0].load(Ordering::Relaxed);
    let lost = sent.saturating_sub(total.received);
    let errors = lost
        + total.refused
        + total.mismatched
        + total.read_errors
        + total.closed_early
        + write_errors;
    let lat = percentiles_us(&run.hists[0]);
    let send_lag = percentiles_us(&run.send_lag);
    let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    for a in &run.replies {
        for (node, n) in &a.nodes {
            *nodes.entry(node.clone()).or_default() += n;
        }
        for (code, n) in &a.refusals {
            *refusals.entry(code.clone()).or_default() += n;
        }
    }
    let server_human = if server.is_null() {
        String::new()
    } else if let Some(e) = server.get("error").and_then(Value::as_str) {
        format!("; server: {e}")
    } else {
        format!(
            "; server: {} of {} answers within {}, {}, mean {}",
            server
                .get("within_aim")
                .and_then(Value::as_f64)
                .map_or("-".into(), |w| format!("{:.2}%", w * 100.0)),
            thousands(server["answers"].as_f64().unwrap_or(0.0)),
            human_us(AIM_S * 1e6),
            server["p99"].as_str().unwrap_or("p99 -"),
            fmt_us(&server, "mean_us"),
        )
    };
    let human = format!(
        "redirect {}: {} req/s over {per_target} connections, round trip p50 {} p90 {} p99 {} p99.9 {} max {}; {errors} errors ({lost} lost, {} refused); sender lateness p50 {} p99 {}{server_human}",
        args.common.name(),
        thousands(sent_in_window as f64 / secs),
        fmt_us(&lat, "p50"),
        fmt_us(&lat, "p90"),
        fmt_us(&lat, "p99"),
        fmt_us(&lat, "p999"),
        fmt_us(&lat, "max"),
        total.refused,
        fmt_us(&send_lag, "p50"),
        fmt_us(&send_lag, "p99"),
    );
    Ok(Output {
        json: json!({
            "bench": "redirect",
            "label": args.common.label,
            "target": args.common.target.to_string(),
            "connections": per_target,
            "rate": args.rate,
            "duration_s": secs,
            "sent": sent,
            "received": total.received,
            "achieved_per_s": (total.received_in_window as f64 / secs).round(),
            "lost": lost,
            "errors": errors,
            "refused": total.refused,
            "refusals": refusals,
            "mismatched": total.mismatched,
            "read_errors": total.read_errors,
            "closed_early": total.closed_early,
            "write_errors": write_errors,
            "write_stalls": shared.write_stalls.load(Ordering::Relaxed),
            "nodes": nodes,
            "latency_us": lat,
            "send_lag_us": send_lag,
            "server": server,
        }),
        human,
    })
}
