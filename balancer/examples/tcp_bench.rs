//! `tcp_bench`: load generator and echo upstream for comparing TCP proxies
//! (chat-balancer, nginx's stream module, HAProxy) against a direct
//! connection. `balancer/bench/run.sh` drives it; it also runs on its own:
//!
//! ```sh
//! cargo build --release -p chat-balancer --example tcp_bench
//! B=target/release/examples/tcp_bench
//! $B echo --listen 127.0.0.1:9190 &                  # echo upstream (TCP_NODELAY)
//! $B conn-rate --target 127.0.0.1:9190 --duration 5s --concurrency 32
//! $B latency --target 127.0.0.1:9190 --connections 50 --rate 5000 --duration 5s
//! $B latency --target 127.0.0.1:9190 --label direct --target 127.0.0.1:8000 --label nginx
//! $B bulk --target 127.0.0.1:9190 --connections 4 --duration 5s
//! $B table results.jsonl                             # Markdown table of many runs
//! ```
//!
//! Each measurement prints one JSON line on stdout (machine-readable, with
//! the `--label` given) and one human line on stderr.
//!
//! - `echo`: the upstream. `--mode echo` (default) writes back every byte it
//!   reads, which serves both the small request/response measurements and
//!   bulk throughput (each byte then crosses the proxy twice); `--mode
//!   discard` reads and counts only (for `bulk --mode upload`).
//! - `conn-rate`: new connections per second. Each of `--concurrency` loops
//!   connects, sends one 16-byte request, reads the 16-byte echo, checks it
//!   and closes; failures are counted by kind (connect refused or timed out,
//!   reset, closed early, timeout, wrong bytes).
//! - `latency`: `--connections` established connections, a fixed total
//!   `--rate` of 16-byte requests spread evenly over them (open loop: a
//!   sender thread follows the schedule whatever the replies do, so requests
//!   may queue behind a slow one). Latency runs from the *intended* send time
//!   to the receipt of the echo, so a stall is counted in full for every
//!   request it delayed (coordinated omission corrected). HdrHistogram in ns;
//!   p50, p90, p99, p99.9, max. `--target` may be repeated: the targets
//!   are then measured in the same run, their requests interleaved on one
//!   schedule (`--rate` per target), so that a noisy moment on a shared
//!   machine hits them all alike; one JSON line per target.
//! - `bulk`: `--connections` connections each writing 64 KiB chunks as fast
//!   as they can and reading the echo; bytes per second received back
//!   (`--mode echo`), or written (`--mode upload`, against a discarding
//!   upstream).
//! - `table FILE...`: reads the JSON lines of several runs (labels such as
//!   `direct`, `nginx`, `haproxy`, `chat-balancer`; repeated rounds are
//!   reduced to their median) and prints the Markdown tables of
//!   `docs/benchmarks.md`, with ratios against `direct`, `nginx` and
//!   `haproxy`.
//!
//! Every request this program sends starts with the 4 bytes `tcpb` (or is
//! bulk filler `xxxx`), so that an upstream can tell them apart from a chat
//! frame (a 4-byte little-endian length of at most 64 KiB): the echo
//! upstream treats a connection that starts with a chat frame as
//! chat-balancer's load probe and, by default (`--probes answer`), answers
//! its `LoadRequest`s like a node (its open connections, capacity 10 000, an
//! idle shard); `--probes silent` never answers (the balancer then marks it
//! down after `--probe-fails` probes and routes in panic mode).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_client::duration::parse_duration;
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// First 4 bytes of every request: no chat frame starts like this (as a
/// little-endian length it is far above the 64 KiB frame limit).
const MAGIC: &[u8; 4] = b"tcpb";
/// Size of every small request and of its echo.
const REQ_LEN: usize = 16;
/// Bulk write size.
const CHUNK: usize = 64 * 1024;

/// Load generator and echo upstream for TCP proxy benchmarks.
#[derive(Debug, Parser)]
#[command(name = "tcp_bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Echo (or discard) upstream server.
    Echo(EchoArgs),
    /// New connections per second: connect, one 16-byte request/response,
    /// close.
    ConnRate(ConnRateArgs),
    /// Latency of 16-byte request/response on established connections at a
    /// fixed total rate, from the intended send time.
    Latency(LatencyArgs),
    /// Bulk throughput through the target.
    Bulk(BulkArgs),
    /// Markdown tables (with ratios) from JSON lines of earlier runs.
    Table(TableArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EchoMode {
    /// Write back every byte read.
    Echo,
    /// Read and count, write nothing.
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProbeMode {
    /// Answer each `LoadRequest` like a chat node would: its open
    /// connections, capacity 10 000, one idle shard, not draining.
    Answer,
    /// Treat a chat frame like any other bytes: echo it back (a balancer
    /// reading it as a reply sees junk).
    Echo,
    /// Read chat frames and never answer (the probe times out).
    Silent,
    /// Close the connection at once.
    Close,
}

#[derive(Debug, clap::Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Echo every byte back, or discard and count.
    #[arg(long, value_enum, default_value = "echo")]
    mode: EchoMode,
    /// What to do with a connection whose first bytes are a chat frame (a
    /// balancer's load probe) rather than this program's traffic.
    #[arg(long, value_enum, default_value = "answer")]
    probes: ProbeMode,
    /// Worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
}

#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// Address to measure (a proxy, or an upstream directly).
    #[arg(long)]
    target: SocketAddr,
    /// Measured time, after the warmup.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    duration: Duration,
    /// Load applied before measuring, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Name of the target in the JSON line (e.g. nginx, haproxy, direct).
    #[arg(long, default_value = "")]
    label: String,
    /// Worker threads of the load generator (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
}

#[derive(Debug, Clone, clap::Args)]
struct ConnRateArgs {
    #[command(flatten)]
    common: Common,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Give up connecting after this long (counted as connect_timeout).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    connect_timeout: Duration,
    /// Give up waiting for the echo after this long (counted as timeout).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    io_timeout: Duration,
    /// For a 127.x.y.z target: spread connections over this many source
    /// addresses 127.0.0.1, 127.0.0.2, ... A closed connection holds its
    /// (source, destination) pair in TIME_WAIT and Linux reuses it after
    /// about a second (tcp_tw_reuse=2 on loopback), so one source address
    /// caps new connections at ~14 000/s (the even half of
    /// ip_local_port_range). 1: do not bind.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=250))]
    source_ips: u32,
}

#[derive(Debug, Clone, clap::Args)]
struct LatencyArgs {
    /// Address to measure. Repeat it to measure several targets in the same
    /// run, their requests interleaved on one schedule, so that a noisy
    /// moment on a shared machine hits them all alike.
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    /// Name of each target in the JSON lines, in the order of --target.
    #[arg(long)]
    label: Vec<String>,
    /// Measured time, after the warmup.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    duration: Duration,
    /// Requests sent before measuring, not counted.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Worker threads of the readers' runtime (1: a single-threaded
    /// runtime); the schedule has a thread of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Established connections per target the requests are spread over.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Requests per second per target, all its connections together.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// After the schedule ends, wait this long at most for the last echoes
    /// (requests still unanswered then are counted as lost).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    drain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BulkMode {
    /// Write and read the echo back; count bytes received.
    Echo,
    /// Write only (upstream in `echo --mode discard`); count bytes written.
    Upload,
}

#[derive(Debug, Clone, clap::Args)]
struct BulkArgs {
    #[command(flatten)]
    common: Common,
    /// Connections streaming at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Count echoed bytes, or written bytes only.
    #[arg(long, value_enum, default_value = "echo")]
    mode: BulkMode,
}

#[derive(Debug, Clone, clap::Args)]
struct TableArgs {
    /// Files of JSON lines written by conn-rate, latency and bulk (other
    /// lines are skipped).
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Echo(args) => runtime(args.threads)?.block_on(echo_server(args)),
        Cmd::ConnRate(args) => {
            let out = runtime(args.common.threads)?.block_on(conn_rate(args))?;
            emit(&out);
            Ok(())
        }
        Cmd::Latency(args) => {
            for out in runtime(args.threads)?.block_on(latency(args))? {
                emit(&out);
            }
            Ok(())
        }
        Cmd::Bulk(args) => {
            let out = runtime(args.common.threads)?.block_on(bulk(args))?;
            emit(&out);
            Ok(())
        }
        Cmd::Table(args) => table(&args),
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

/// A run's result: the JSON line (stdout) and the human line (stderr).
struct Output {
    json: Value,
    human: String,
}

fn emit(out: &Output) {
    eprintln!("{}", out.human);
    println!("{}", out.json);
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram in ns, as µs with one decimal.
fn percentiles_us(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 100.0).round() / 10.0,
    })
}

fn fmt_us(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_string(), human_us)
}

/// `87 µs`, `1.25 ms`, `2.1 s`.
fn human_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// `12 345`: thousands separated by a space, as in docs/benchmarks.md.
fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn label_or_target(c: &Common) -> String {
    if c.label.is_empty() {
        c.target.to_string()
    } else {
        format!("{} ({})", c.label, c.target)
    }
}

// ---- echo upstream ---------------------------------------------------------

async fn echo_server(args: EchoArgs) -> anyhow::Result<()> {
    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener: TcpListener = socket.listen(4096)?;
    eprintln!(
        "tcp_bench echo: listening on {} ({:?}, probes {:?})",
        args.listen, args.mode, args.probes
    );
    let discarded = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    if args.mode == EchoMode::Discard {
        let discarded = discarded.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = discarded.load(Ordering::Relaxed);
                if now != last {
                    eprintln!("tcp_bench echo: {now} bytes discarded so far");
                    last = now;
                }
            }
        });
    }
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let discarded = discarded.clone();
                let open = open.clone();
                open.fetch_add(1, Ordering::Relaxed);
                let node = Node {
                    address: args.listen,
                    open: open.clone(),
                };
                tokio::spawn(async move {
                    let _ = echo_conn(stream, args.mode, args.probes, &discarded, &node).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("tcp_bench echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// True when `first` (at least 4 bytes) starts like a chat frame: a
/// little-endian length from 1 to 64 KiB.
fn looks_like_frame(first: &[u8]) -> bool {
    let len = u32::from_le_bytes(first[..4].try_into().expect("4 bytes"));
    (1..=64 * 1024).contains(&len)
}

/// What the echo upstream tells a load probe.
struct Node {
    address: SocketAddr,
    open: Arc<AtomicU64>,
}

/// Answers the `LoadRequest` frames of a balancer's probe connection (other
/// frames are ignored) until it closes. `buf[..len]` holds what was read.
async fn answer_probes(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    mut len: usize,
    node: &Node,
) -> std::io::Result<()> {
    use chat_schema::fb;
    use chat_schema::frame::{DEFAULT_MAX_FRAME, PREFIX_LEN, encode, frame_len, parse_frame};
    let junk = |e: String| std::io::Error::new(ErrorKind::InvalidData, e);
    loop {
        while let Some(body) =
            frame_len(&buf[..len], DEFAULT_MAX_FRAME).map_err(|e| junk(e.to_string()))?
        {
            let whole = PREFIX_LEN + body;
            if len < whole {
                break;
            }
            let env =
                parse_frame(&buf[..whole], DEFAULT_MAX_FRAME).map_err(|e| junk(e.to_string()))?;
            if env.body_type() == fb::Body::LoadRequest {
                let reply = encode(env.request_id(), |b| {
                    let node_id = b.create_string(&format!("echo-{}", node.address.port()));
                    let address = b.create_string(&node.address.to_string());
                    let shard_busy = b.create_vector(&[0.0f32]);
                    let r = fb::LoadReply::create(
                        b,
                        &fb::LoadReplyArgs {
                            node_id: Some(node_id),
                            address: Some(address),
                            // Less the probe connection itself.
                            connections: node.open.load(Ordering::Relaxed).saturating_sub(1) as u32,
                            capacity: 10_000,
                            shard_busy: Some(shard_busy),
                            outbound_bytes: 0,
                            draining: false,
                        },
                    );
                    (fb::Body::LoadReply, r.as_union_value())
                });
                stream.write_all(&reply).await?;
            }
            buf.copy_within(whole..len, 0);
            len -= whole;
        }
        if len == buf.len() {
            return Err(junk("frame larger than the buffer".into()));
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

async fn echo_conn(
    mut stream: TcpStream,
    mode: EchoMode,
    probes: ProbeMode,
    discarded: &AtomicU64,
    node: &Node,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut first = true;
    let mut held = 0usize;
    loop {
        let n = stream.read(&mut buf[held..]).await?;
        if n == 0 {
            return Ok(());
        }
        let mut len = held + n;
        if first {
            if len < 4 {
                // Wait for the 4 bytes that tell a probe from a request.
                held = len;
                continue;
            }
            first = false;
            held = 0;
            if probes != ProbeMode::Echo && looks_like_frame(&buf[..4]) {
                match probes {
                    ProbeMode::Close => return Ok(()),
                    ProbeMode::Answer => return answer_probes(&mut stream, buf, len, node).await,
                    ProbeMode::Silent | ProbeMode::Echo => {}
                }
                // Silent: swallow everything, answer nothing.
                loop {
                    if stream.read(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
            }
        } else {
            len = n;
        }
        match mode {
            EchoMode::Echo => stream.write_all(&buf[..len]).await?,
            EchoMode::Discard => {
                discarded.fetch_add(len as u64, Ordering::Relaxed);
            }
        }
    }
}

// ---- conn-rate -------------------------------------------------------------

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

async fn conn_rate(args: ConnRateArgs) -> anyhow::Result<Output> {
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
        label_or_target(&args.common),
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

// ---- latency ---------------------------------------------------------------

/// What the sender thread and the readers share.
struct LatencyShared {
    /// Requests written, per connection (all targets).
    sent: Vec<AtomicU64>,
    /// Requests written with an intended time inside the window, per target.
    sent_in_window: Vec<AtomicU64>,
    /// Connections the sender gave up on (write error), per target.
    write_errors: Vec<AtomicU64>,
    /// Times a write found the socket buffer full.
    write_stalls: AtomicU64,
}

#[derive(Default)]
struct ReaderTally {
    received: u64,
    received_in_window: u64,
    mismatched: u64,
    read_errors: u64,
    closed_early: u64,
}

impl ReaderTally {
    fn add(&mut self, o: &ReaderTally) {
        self.received += o.received;
        self.received_in_window += o.received_in_window;
        self.mismatched += o.mismatched;
        self.read_errors += o.read_errors;
        self.closed_early += o.closed_early;
    }
}

fn wait_writable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 }
}

/// Writes all of `buf` on a non-blocking socket, waiting when it is full.
fn write_all_nonblocking(
    stream: &std::net::TcpStream,
    buf: &[u8],
    stalls: &AtomicU64,
) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match (&*stream).write(&buf[off..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                stalls.fetch_add(1, Ordering::Relaxed);
                wait_writable(stream.as_raw_fd(), 100);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The open-loop timeline, in ns since `base`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    base: Instant,
    /// First request.
    first_ns: u64,
    /// Measurement starts (end of warmup).
    window_start_ns: u64,
    /// Measurement and sending end.
    end_ns: u64,
    /// Requests per second per target.
    rate: f64,
    /// Targets, each with `per_target` connections.
    targets: usize,
    per_target: usize,
}

impl Schedule {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// The open-loop schedule: request `i` is due at `first_ns + i / (rate ×
/// targets)`, whatever the echoes do; consecutive requests go to the next
/// target in turn, and each target's requests to its connections in turn.
/// Runs on its own OS thread so that its timing does not depend on the
/// readers' runtime (tokio's timer has millisecond granularity; this thread
/// sleeps with 1 ns timer slack). Returns how late writes started.
fn send_schedule(
    writers: Vec<std::net::TcpStream>,
    shared: Arc<LatencyShared>,
    s: Schedule,
) -> Histogram<u64> {
    // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer
    // slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let mut dead = vec![false; writers.len()];
    // How late each write starts against its schedule (timer wakeup, this
    // thread being descheduled): part of every latency, for every target.
    let mut lag = new_histogram();
    let interval_ns = 1e9 / (s.rate * s.targets as f64);
    let mut i: u64 = 0;
    loop {
        let due = s.first_ns + (i as f64 * interval_ns) as u64;
        if due >= s.end_ns {
            break;
        }
        let target = (i % s.targets as u64) as usize;
        let conn = target * s.per_target + ((i / s.targets as u64) % s.per_target as u64) as usize;
        i += 1;
        if dead[conn] {
            continue;
        }
        let now = s.now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        if due >= s.window_start_ns {
            let late = s.now_ns().saturating_sub(due);
            let _ = lag.record(late.max(1));
        }
        let mut req = [0u8; REQ_LEN];
        req[..4].copy_from_slice(MAGIC);
        req[4..8].copy_from_slice(&(conn as u32).to_le_bytes());
        req[8..16].copy_from_slice(&due.to_le_bytes());
        match write_all_nonblocking(&writers[conn], &req, &shared.write_stalls) {
            Ok(()) => {
                shared.sent[conn].fetch_add(1, Ordering::Release);
                if due >= s.window_start_ns {
                    shared.sent_in_window[target].fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                dead[conn] = true;
                shared.write_errors[target].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    lag
}

async fn read_echoes(
    mut stream: TcpStream,
    conn: usize,
    shared: Arc<LatencyShared>,
    mut done: watch::Receiver<bool>,
    s: Schedule,
    hard_deadline: tokio::time::Instant,
    hist: &mut Histogram<u64>,
) -> ReaderTally {
    let mut tally = ReaderTally::default();
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        if *done.borrow() && tally.received >= shared.sent[conn].load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            r = stream.read(&mut buf[filled..]) => match r {
                Ok(0) => {
                    tally.closed_early += 1;
                    break;
                }
                Ok(n) => {
                    let now = s.now_ns();
                    filled += n;
                    let whole = filled / REQ_LEN * REQ_LEN;
                    for frame in buf[..whole].chunks_exact(REQ_LEN) {
                        let id = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
                        if &frame[..4] != MAGIC || id as usize != conn {
                            tally.mismatched += 1;
                            continue;
                        }
                        let due = u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes"));
                        tally.received += 1;
                        if due >= s.window_start_ns {
                            tally.received_in_window += 1;
                            let _ = hist.record(now.saturating_sub(due).max(1));
                        }
                    }
                    buf.copy_within(whole..filled, 0);
                    filled -= whole;
                }
                Err(_) => {
                    tally.read_errors += 1;
                    break;
                }
            },
            changed = done.changed(), if !*done.borrow() => {
                if changed.is_err() {
                    // The sender is gone without saying so: stop at the deadline.
                    tokio::time::sleep_until(hard_deadline).await;
                    break;
                }
            }
            _ = tokio::time::sleep_until(hard_deadline) => break,
        }
    }
    tally
}

async fn latency(args: LatencyArgs) -> anyhow::Result<Vec<Output>> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let targets = args.target.len();
    anyhow::ensure!(
        args.label.is_empty() || args.label.len() == targets,
        "give one --label per --target, or none"
    );
    let label = |t: usize| args.label.get(t).cloned().unwrap_or_default();
    let per_target = args.connections as usize;
    let mut readers = Vec::with_capacity(targets * per_target);
    let mut writers = Vec::with_capacity(targets * per_target);
    for target in &args.target {
        for _ in 0..per_target {
            let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target))
                .await
                .map_err(|_| anyhow::anyhow!("connect to {target} timed out"))??;
            stream.set_nodelay(true)?;
            // One socket, two handles: a blocking-style writer on the sender
            // thread (the socket stays non-blocking) and a tokio reader.
            let std_stream = stream.into_std()?;
            writers.push(std_stream.try_clone()?);
            readers.push(TcpStream::from_std(std_stream)?);
        }
    }
    let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
    let shared = Arc::new(LatencyShared {
        sent: counters(targets * per_target),
        sent_in_window: counters(targets),
        write_errors: counters(targets),
        write_stalls: AtomicU64::new(0),
    });
    let first_ns = 10_000_000; // 10 ms from now
    let window_start_ns = first_ns + args.warmup.as_nanos() as u64;
    let schedule = Schedule {
        base: Instant::now(),
        first_ns,
        window_start_ns,
        end_ns: window_start_ns + args.duration.as_nanos() as u64,
        rate: args.rate,
        targets,
        per_target,
    };
    let hard_deadline = tokio::time::Instant::from_std(
        schedule.base + Duration::from_nanos(schedule.end_ns) + args.drain,
    );
    let (done_tx, done_rx) = watch::channel(false);
    let sender = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("tcp_bench-sender".into())
            .spawn(move || {
                let lag = send_schedule(writers, shared, schedule);
                let _ = done_tx.send(true);
                lag
            })?
    };
    let mut tasks = Vec::with_capacity(readers.len());
    for (conn, stream) in readers.into_iter().enumerate() {
        let shared = shared.clone();
        let done = done_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let tally = read_echoes(
                stream,
                conn,
                shared,
                done,
                schedule,
                hard_deadline,
                &mut hist,
            )
            .await;
            (tally, hist)
        }));
    }
    let mut hists: Vec<Histogram<u64>> = (0..targets).map(|_| new_histogram()).collect();
    let mut tallies: Vec<ReaderTally> = (0..targets).map(|_| ReaderTally::default()).collect();
    for (conn, task) in tasks.into_iter().enumerate() {
        let (t, h) = task.await?;
        hists[conn / per_target].add(&h)?;
        tallies[conn / per_target].add(&t);
    }
    let send_lag = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    let send_lag = percentiles_us(&send_lag);
    let secs = args.duration.as_secs_f64();
    let mut outputs = Vec::with_capacity(targets);
    for (t, target) in args.target.iter().enumerate() {
        let total = &tallies[t];
        let sent: u64 = shared.sent[t * per_target..(t + 1) * per_target]
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .sum();
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

// ---- bulk ------------------------------------------------------------------

async fn bulk(args: BulkArgs) -> anyhow::Result<Output> {
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
        label_or_target(&args.common),
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

// ---- table -----------------------------------------------------------------

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The figures of one target, each the median over its rounds.
#[derive(Default, Debug)]
struct Figures {
    conn_per_s: Option<f64>,
    conn_errors: f64,
    conn_rounds: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    max: Option<f64>,
    achieved: Option<f64>,
    lat_errors: f64,
    lat_rounds: usize,
    mb_per_s: Option<f64>,
    bulk_errors: f64,
    bulk_rounds: usize,
}

fn table(args: &TableArgs) -> anyhow::Result<()> {
    let mut order: Vec<String> = Vec::new();
    // label -> bench -> runs
    let mut runs: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file)?;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(bench), Some(label)) = (
                v.get("bench").and_then(Value::as_str),
                v.get("label").and_then(Value::as_str),
            ) else {
                continue;
            };
            let label = if label.is_empty() {
                v.get("target")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            } else {
                label.to_string()
            };
            if !order.contains(&label) {
                order.push(label.clone());
            }
            runs.entry(label)
                .or_default()
                .entry(bench.to_string())
                .or_default()
                .push(v);
        }
    }
    // Fixed order for the usual labels, others after in order of appearance.
    let known = ["direct", "nginx", "haproxy", "chat-balancer"];
    order.sort_by_key(|l| known.iter().position(|k| k == l).unwrap_or(known.len()));

    let get = |v: &Value, path: &[&str]| -> Option<f64> {
        let mut cur = v;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_f64()
    };
    let med =
        |vs: &[Value], path: &[&str]| median(vs.iter().filter_map(|v| get(v, path)).collect());
    let sum = |vs: &[Value], path: &[&str]| vs.iter().filter_map(|v| get(v, path)).sum::<f64>();

    let mut figs: BTreeMap<String, Figures> = BTreeMap::new();
    for label in &order {
        let by = &runs[label];
        let empty = Vec::new();
        let c = by.get("conn-rate").unwrap_or(&empty);
        let l = by.get("latency").unwrap_or(&empty);
        let b = by.get("bulk").unwrap_or(&empty);
        figs.insert(
            label.clone(),
            Figures {
                conn_per_s: med(c, &["conn_per_s"]),
                conn_errors: sum(c, &["errors"]),
                conn_rounds: c.len(),
                p50: med(l, &["latency_us", "p50"]),
                p99: med(l, &["latency_us", "p99"]),
                p999: med(l, &["latency_us", "p999"]),
                max: med(l, &["latency_us", "max"]),
                achieved: med(l, &["achieved_per_s"]),
                lat_errors: sum(l, &["errors"]),
                lat_rounds: l.len(),
                mb_per_s: med(b, &["mb_per_s"]),
                bulk_errors: sum(b, &["errors"]),
                bulk_rounds: b.len(),
            },
        );
    }

    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "–".to_string(), f);
    let us = |v: f64| format!("{v:.0} µs");
    let display = |label: &str| match label {
        "direct" => "direct (no proxy)".to_string(),
        "nginx" => "nginx stream".to_string(),
        "haproxy" => "HAProxy".to_string(),
        other => other.to_string(),
    };

    println!(
        "| target | new conn/s | conn errors | latency p50 | p99 | p99.9 | max | achieved req/s | latency errors | bulk MB/s (echoed) | bulk errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for label in &order {
        let f = &figs[label];
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            display(label),
            opt(f.conn_per_s, &thousands),
            if f.conn_rounds > 0 {
                thousands(f.conn_errors)
            } else {
                "–".into()
            },
            opt(f.p50, &us),
            opt(f.p99, &us),
            opt(f.p999, &us),
            opt(f.max, &us),
            opt(f.achieved, &thousands),
            if f.lat_rounds > 0 {
                thousands(f.lat_errors)
            } else {
                "–".into()
            },
            opt(f.mb_per_s, &|v| format!("{v:.0}")),
            if f.bulk_rounds > 0 {
                thousands(f.bulk_errors)
            } else {
                "–".into()
            },
        );
    }
    let all_latency: Vec<Value> = runs
        .values()
        .filter_map(|by| by.get("latency"))
        .flatten()
        .cloned()
        .collect();
    if let (Some(p50), Some(p99)) = (
        med(&all_latency, &["send_lag_us", "p50"]),
        med(&all_latency, &["send_lag_us", "p99"]),
    ) {
        println!();
        println!(
            "Latency includes the load generator's own lateness in sending (timer wakeup, \
             being descheduled), the same for every target: p50 {p50:.0} µs, p99 {p99:.0} µs."
        );
    }
    println!();

    // Ratios against the direct connection and the two reference proxies.
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_string(),
    };
    let added = |a: Option<f64>, d: Option<f64>| match (a, d) {
        (Some(a), Some(d)) => Some(a - d),
        _ => None,
    };
    let signed_us = |v: f64| format!("{v:+.0} µs");
    let f_of = |l: &str| figs.get(l);
    let direct = f_of("direct");
    let nginx = f_of("nginx");
    let haproxy = f_of("haproxy");
    let pick = |f: Option<&Figures>, g: fn(&Figures) -> Option<f64>| f.and_then(g);
    println!(
        "| proxy | conn/s ÷ direct | ÷ nginx | ÷ HAProxy | added p50 | added p99 | added p99.9 | added p99 ÷ nginx's | ÷ HAProxy's | bulk ÷ direct | ÷ nginx | ÷ HAProxy |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for label in order.iter().filter(|l| l.as_str() != "direct") {
        let f = &figs[label];
        let add = |g: fn(&Figures) -> Option<f64>| added(g(f), pick(direct, g));
        let add_of = |o: Option<&Figures>, g: fn(&Figures) -> Option<f64>| {
            o.and_then(|o| added(g(o), pick(direct, g)))
        };
        let added_ratio = |mine: Option<f64>, theirs: Option<f64>| match (mine, theirs) {
            (Some(m), Some(t)) if t > 0.0 && m >= 0.0 => format!("{:.2}×", m / t),
            (Some(m), Some(t)) => format!("{m:+.0} vs {t:+.0} µs"),
            _ => "–".to_string(),
        };
        let p99 = |x: &Figures| x.p99;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            display(label),
            ratio(f.conn_per_s, pick(direct, |x| x.conn_per_s)),
            ratio(f.conn_per_s, pick(nginx, |x| x.conn_per_s)),
            ratio(f.conn_per_s, pick(haproxy, |x| x.conn_per_s)),
            opt(add(|x| x.p50), &signed_us),
            opt(add(p99), &signed_us),
            opt(add(|x| x.p999), &signed_us),
            added_ratio(add(p99), add_of(nginx, p99)),
            added_ratio(add(p99), add_of(haproxy, p99)),
            ratio(f.mb_per_s, pick(direct, |x| x.mb_per_s)),
            ratio(f.mb_per_s, pick(nginx, |x| x.mb_per_s)),
            ratio(f.mb_per_s, pick(haproxy, |x| x.mb_per_s)),
        );
    }
    Ok(())
}
