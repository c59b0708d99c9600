//! `chat-bench`: end-to-end load generator for a chat node (or the seed's C++
//! server in JSON mode).
//!
//! It registers and logs in 2N users, pairs them (user 2i sends to 2i+1) and
//! sends direct messages whose text carries a sequence number and a send
//! timestamp, so the receiving side measures end-to-end latency (send →
//! receipt by the peer) into an HDR histogram and counts lost, duplicated and
//! out-of-order messages. Closed loop (default): one message in flight per
//! pair. Open loop (`--rate`): a fixed schedule, latency measured from the
//! intended send time (coordinated omission corrected).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chat_client::duration::parse_duration;
use chat_client::seed_json::{self, JsonConnection, JsonReader, JsonWriter, msgid};
use chat_client::{
    Client, ClientConfig, ClientError, ErrorCode, Event, PendingReply, Reply, Request,
};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

const EXAMPLES: &str = "\
Examples:
  chat-bench --pairs 100                         closed loop, FlatBuffers, 10 s after 2 s warmup
  chat-bench --pairs 100 --rate 20000 --json     open loop at 20k msg/s, one JSON summary line
  chat-bench --protocol json --addr 127.0.0.1:6000 --pairs 50
                                                 the seed's JSON protocol (works against the
                                                 seed's C++ server too)
  chat-bench --addr 127.0.0.1:6000 --receiver-addr 127.0.0.1:6001
                                                 senders on one cluster node, receivers on another";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// The node's FlatBuffers protocol, through the client library.
    Fb,
    /// The seed's NUL-delimited JSON protocol over raw sockets.
    Json,
}

/// End-to-end message latency and throughput benchmark for the chat node (or
/// the seed's server in JSON mode). Registers 2N users, user 2i sends to user
/// 2i+1 for WARMUP + DURATION; reports throughput and latency of the DURATION
/// part and lost, duplicated and out-of-order messages.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-bench", version, after_help = EXAMPLES)]
struct Args {
    /// Address of the node (or the seed's server).
    #[arg(long, default_value = "127.0.0.1:6000")]
    addr: String,
    /// Connect the receivers here instead of --addr (e.g. another node of
    /// a cluster, to measure cross-node delivery).
    #[arg(long)]
    receiver_addr: Option<String>,
    /// Sender/receiver pairs (2N users and connections).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pairs: u32,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "fb")]
    protocol: Protocol,
    /// Measured time, after the warmup.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Time sent but not measured, before the measured time.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Open loop: total messages per second over all pairs. Without it, each
    /// pair keeps one message in flight (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads of the bench's tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// Print one JSON summary line on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Message text length in bytes (at least what the sequence number and
    /// timestamp need).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Closed loop: give up waiting for a message after this long (it counts
    /// as lost unless it arrives later).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// After sending stops, wait this long at most for messages in flight.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    drain: Duration,
    /// FlatBuffers receivers acknowledge the highest message id every this
    /// many messages (and when idle, and at the end).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    ack_every: u64,
    /// Users registered and logged in at once during setup.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    setup_concurrency: u32,
    /// Prefix of the user names (default: random per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Password of the benchmark users.
    #[arg(long, default_value = "bench-pw")]
    password: String,
}

// ---- the message text ------------------------------------------------------

/// `"<seq> <send time in µs since start> xxxx…"`, padded to `size`.
fn message_text(seq: u64, sent_us: u64, size: usize) -> String {
    let mut s = format!("{seq} {sent_us} ");
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

fn parse_text(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split(' ');
    let seq = it.next()?.parse().ok()?;
    let sent_us = it.next()?.parse().ok()?;
    Some((seq, sent_us))
}

// ---- per-pair accounting ---------------------------------------------------

/// The run's timeline, in µs since `base`.
#[derive(Debug, Clone, Copy)]
struct Clock {
    base: Instant,
    /// Measurement starts (end of warmup).
    window_start_us: u64,
    /// Measurement and sending end.
    window_end_us: u64,
}

impl Clock {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    fn send_end(&self) -> Instant {
        self.at(self.window_end_us)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one pair saw.
struct Tally {
    received: Vec<u64>,
    max_seq: Option<u64>,
    unique: u64,
    duplicated: u64,
    out_of_order: u64,
    in_window: u64,
    foreign: u64,
    timeouts: u64,
    hist: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            received: Vec::new(),
            max_seq: None,
            unique: 0,
            duplicated: 0,
            out_of_order: 0,
            in_window: 0,
            foreign: 0,
            timeouts: 0,
            hist: new_histogram(),
        }
    }

    /// Records a message text received at `now_us`; returns its sequence
    /// number.
    fn record(&mut self, text: &str, now_us: u64, clock: &Clock) -> Option<u64> {
        let Some((seq, sent_us)) = parse_text(text) else {
            self.foreign += 1;
            return None;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.received.len() {
            self.received.resize(word + 1, 0);
        }
        if self.received[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return Some(seq);
        }
        self.received[word] |= 1 << bit;
        self.unique += 1;
        match self.max_seq {
            Some(max) if seq < max => self.out_of_order += 1,
            _ => self.max_seq = Some(seq),
        }
        if (clock.window_start_us..clock.window_end_us).contains(&now_us) {
            self.in_window += 1;
        }
        if (clock.window_start_us..clock.window_end_us).contains(&sent_us) {
            self.hist
                .saturating_record(now_us.saturating_sub(sent_us).max(1));
        }
        Some(seq)
    }
}

/// What one pair's run produced.
struct PairResult {
    sent: u64,
    send_errors: u64,
    tally: Tally,
}

// ---- transports ------------------------------------------------------------

/// A logged-in benchmark user.
enum BenchUser {
    Fb {
        client: Client,
        id: u64,
    },
    Json {
        conn: JsonConnection,
        id: u64,
        name: String,
    },
}

impl BenchUser {
    fn id(&self) -> u64 {
        match self {
            BenchUser::Fb { id, .. } | BenchUser::Json { id, .. } => *id,
        }
    }
}

async fn setup_user(args: &Args, addr: &str, name: String) -> anyhow::Result<BenchUser> {
    match args.protocol {
        Protocol::Fb => {
            let config = ClientConfig {
                request_timeout: Some(Duration::from_secs(60).max(args.timeout)),
                ..ClientConfig::default()
            };
            let client = Client::connect_with(addr, config).await?;
            let id = client.register(&name, &args.password).await?;
            client.login(id, &args.password).await?;
            Ok(BenchUser::Fb { client, id })
        }
        Protocol::Json => {
            let mut conn = JsonConnection::connect(addr).await?;
            let reg = conn.register(&name, &args.password).await?;
            let id = match (
                seed_json::errno(&reg),
                reg.get("id").and_then(Value::as_u64),
            ) {
                (0, Some(id)) => id,
                _ => anyhow::bail!("register {name} failed: {reg}"),
            };
            let login = conn.login(id, &args.password).await?;
            if seed_json::errno(&login) != 0 {
                anyhow::bail!("login {id} failed: {login}");
            }
            Ok(BenchUser::Json { conn, id, name })
        }
    }
}

/// The sending side of a pair.
enum Sender {
    Fb {
        client: Client,
        to: u64,
    },
    Json {
        writer: JsonWriter<OwnedWriteHalf>,
        id: u64,
        name: String,
        to: u64,
    },
}

impl Sender {
    /// Sends one message; FlatBuffers returns the pending reply.
    async fn send(&mut self, text: &str) -> Result<Option<PendingReply>, String> {
        match self {
            Sender::Fb { client, to } => client
                .start_request(&Request::DirectMessage {
                    user_id: 0,
                    to_id: *to,
                    text,
                })
                .map(Some)
                .map_err(|e| e.to_string()),
            Sender::Json {
                writer,
                id,
                name,
                to,
            } => {
                let v = json!({
                    "msgid": msgid::ONE_CHAT, "id": *id, "name": name.as_str(), "toid": *to,
                    "msg": text, "time": "1970-01-01 00:00:00",
                });
                writer
                    .send(&v)
                    .await
                    .map(|()| None)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Checks the replies to FlatBuffers sends off the sending path (a sender
/// never waits for them); the task returns how many were not
/// `DirectMessageReply`.
fn reply_checker() -> (
    mpsc::UnboundedSender<PendingReply>,
    tokio::task::JoinHandle<u64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PendingReply>();
    let task = tokio::spawn(async move {
        let mut errors = 0u64;
        while let Some(p) = rx.recv().await {
            if !matches!(p.wait().await, Ok(Reply::DirectMessage(_))) {
                errors += 1;
            }
        }
        errors
    });
    (tx, task)
}

/// The receiving side of a pair.
enum Receiver {
    Fb {
        client: Client,
        /// Highest message id seen and not yet acknowledged.
        unacked: Option<u64>,
        since_ack: u64,
        ack_every: u64,
    },
    Json {
        reader: JsonReader<OwnedReadHalf>,
        /// Kept open: dropping it would shut the connection down.
        _writer: JsonWriter<OwnedWriteHalf>,
    },
}

impl Receiver {
    /// The next chat message's text; `Ok(None)` for anything else, `Err` when
    /// the connection is gone.
    async fn next_text(&mut self) -> Result<Option<String>, String> {
        match self {
            Receiver::Fb {
                client,
                unacked,
                since_ack,
                ack_every,
            } => match client.next_event().await {
                Some(Event::Message(m)) => {
                    *unacked = Some(unacked.map_or(m.id, |u| u.max(m.id)));
                    *since_ack += 1;
                    if *since_ack >= *ack_every {
                        Self::ack(client, unacked, since_ack);
                    }
                    Ok(Some(m.text))
                }
                Some(_) => Ok(None),
                None => Err("connection closed".to_owned()),
            },
            Receiver::Json { reader, .. } => match reader.recv().await {
                Ok(Some(mut v)) => {
                    if v.get("msgid").and_then(Value::as_i64) != Some(msgid::ONE_CHAT) {
                        return Ok(None);
                    }
                    match v.get_mut("msg").map(Value::take) {
                        Some(Value::String(s)) => Ok(Some(s)),
                        _ => Ok(None),
                    }
                }
                Ok(None) => Err("connection closed".to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    fn ack(client: &Client, unacked: &mut Option<u64>, since_ack: &mut u64) {
        if let Some(id) = unacked.take() {
            // Fire and forget: the reply is discarded.
            let _ = client.start_request(&Request::DeliveryAck { message_id: id });
        }
        *since_ack = 0;
    }

    /// Acknowledges what has been received (FlatBuffers).
    fn flush_acks(&mut self) {
        if let Receiver::Fb {
            client,
            unacked,
            since_ack,
            ..
        } = self
        {
            Self::ack(client, unacked, since_ack);
        }
    }
}

/// Reads and discards what the node sends to a JSON sender (acks), counting
/// refusals (`errno` ≠ 0).
struct SenderDrain {
    task: tokio::task::JoinHandle<()>,
    refused: Arc<AtomicU64>,
}

impl SenderDrain {
    fn spawn(mut reader: JsonReader<OwnedReadHalf>) -> SenderDrain {
        let refused = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&refused);
        let task = tokio::spawn(async move {
            loop {
                match reader.recv().await {
                    Ok(Some(v)) if seed_json::errno(&v) != 0 => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {}
                    Ok(None) | Err(_) => return,
                }
            }
        });
        SenderDrain { task, refused }
    }

    /// Stops reading; returns the refusals seen.
    fn finish(self) -> u64 {
        self.task.abort();
        self.refused.load(Ordering::Relaxed)
    }
}

/// A pair ready to run, with what it needs afterwards.
struct Pair {
    sender: Sender,
    receiver: Receiver,
    /// JSON: the task reading the sender's connection.
    sender_drain: Option<SenderDrain>,
}

fn make_pair(a: BenchUser, b: BenchUser, ack_every: u64) -> Pair {
    let to = b.id();
    let receiver = match b {
        BenchUser::Fb { client, .. } => Receiver::Fb {
            client,
            unacked: None,
            since_ack: 0,
            ack_every,
        },
        BenchUser::Json { conn, .. } => {
            let (reader, writer) = conn.into_split();
            Receiver::Json {
                reader,
                _writer: writer,
            }
        }
    };
    match a {
        BenchUser::Fb { client, .. } => {
            // Nobody reads the sender's events but presence pushes: drain them.
            let drain = client.clone();
            tokio::spawn(async move { while drain.next_event().await.is_some() {} });
            Pair {
                sender: Sender::Fb { client, to },
                receiver,
                sender_drain: None,
            }
        }
        BenchUser::Json { conn, id, name } => {
            let (reader, writer) = conn.into_split();
            Pair {
                sender: Sender::Json {
                    writer,
                    id,
                    name,
                    to,
                },
                receiver,
                sender_drain: Some(SenderDrain::spawn(reader)),
            }
        }
    }
}

// ---- the two loops -----------------------------------------------------------

/// Waits for messages until `done()` or `deadline`, acknowledging when idle.
async fn drain(
    receiver: &mut Receiver,
    tally: &mut Tally,
    clock: &Clock,
    deadline: Instant,
    done: impl Fn(&Tally) -> bool,
) {
    const IDLE: Duration = Duration::from_millis(50);
    while !done(tally) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match tokio::time::timeout_at((now + IDLE).min(deadline), receiver.next_text()).await {
            Ok(Ok(Some(text))) => {
                tally.record(&text, clock.now_us(), clock);
            }
            Ok(Ok(None)) => {}
            Ok(Err(_)) => break,
            Err(_) => receiver.flush_acks(),
        }
    }
    receiver.flush_acks();
}

async fn closed_loop(mut pair: Pair, args: Arc<Args>, clock: Clock) -> PairResult {
    let mut tally = Tally::new();
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let end = clock.send_end();
    let (replies, checker) = reply_checker();
    'run: while Instant::now() < end {
        let seq = sent;
        let text = message_text(seq, clock.now_us(), args.size);
        let pending = match pair.sender.send(&text).await {
            Ok(p) => p,
            Err(_) => {
                send_errors += 1;
                break;
            }
        };
        sent += 1;
        let deadline = Instant::now() + args.timeout;
        loop {
            match tokio::time::timeout_at(deadline, pair.receiver.next_text()).await {
                Ok(Ok(Some(text))) => {
                    if tally.record(&text, clock.now_us(), &clock) == Some(seq) {
                        break;
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(_)) => break 'run,
                Err(_) => {
                    tally.timeouts += 1;
                    break;
                }
            }
        }
        if let Some(p) = pending {
            let _ = replies.send(p);
        }
    }
    let deadline = Instant::now() + args.drain;
    drain(&mut pair.receiver, &mut tally, &clock, deadline, |t| {
        t.unique >= sent
    })
    .await;
    drop(replies);
    send_errors += checker.await.unwrap_or(0);
    if let Some(d) = pair.sender_drain.take() {
        send_errors += d.finish();
    }
    PairResult {
        sent,
        send_errors,
        tally,
    }
}

/// A message an open-loop sender must send: its sequence number in the pair
/// and its intended send time (µs since the start).
type Due = (u64, u64);

/// Open loop's schedule, kept on a dedicated thread: tokio's timer rounds
/// sleeps up to the next millisecond, which would add up to 1 ms to every
/// measured latency; a thread sleep is precise to tens of microseconds.
/// Message k overall is due at k / rate and goes to pair k mod N. When the
/// thread falls behind it releases everything due at once; latency is
/// measured from the due time either way.
fn spawn_pacer(rate: f64, clock: Clock, pairs: Vec<mpsc::UnboundedSender<Due>>) {
    std::thread::spawn(move || {
        let n = pairs.len() as u64;
        let mut k = 0u64;
        loop {
            let due = (k as f64 * 1e6 / rate) as u64;
            if due >= clock.window_end_us {
                break;
            }
            let now = clock.now_us();
            if due > now {
                std::thread::sleep(Duration::from_micros(due - now));
            }
            // A pair whose sender gave up has dropped its receiver: skip it.
            let _ = pairs[(k % n) as usize].send((k / n, due));
            k += 1;
        }
    });
}

async fn open_loop(
    pair: Pair,
    mut schedule: mpsc::UnboundedReceiver<Due>,
    args: Arc<Args>,
    clock: Clock,
) -> PairResult {
    let Pair {
        mut sender,
        mut receiver,
        sender_drain,
    } = pair;
    let sent_total = Arc::new(AtomicU64::new(u64::MAX));
    let (replies_tx, checker) = reply_checker();
    let size = args.size;
    let sending = {
        let sent_total = Arc::clone(&sent_total);
        tokio::spawn(async move {
            let (mut sent, mut errors) = (0u64, 0u64);
            while let Some((seq, due)) = schedule.recv().await {
                match sender.send(&message_text(seq, due, size)).await {
                    Ok(Some(p)) => drop(replies_tx.send(p)),
                    Ok(None) => {}
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
                sent += 1;
            }
            sent_total.store(sent, Ordering::Release);
            (sent, errors)
        })
    };

    let mut tally = Tally::new();
    let deadline = clock.send_end() + args.drain;
    drain(&mut receiver, &mut tally, &clock, deadline, |t| {
        t.unique >= sent_total.load(Ordering::Acquire)
    })
    .await;
    let (sent, mut send_errors) = sending.await.expect("the sending task does not panic");
    send_errors += checker.await.unwrap_or(0);
    if let Some(d) = sender_drain {
        send_errors += d.finish();
    }
    PairResult {
        sent,
        send_errors,
        tally,
    }
}

// ---- setup, run, report ----------------------------------------------------------

fn run_prefix(args: &Args) -> String {
    if let Some(p) = &args.prefix {
        return p.clone();
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("b{:08x}", h.finish() as u32)
}

async fn setup(args: &Arc<Args>) -> anyhow::Result<Vec<BenchUser>> {
    let prefix = run_prefix(args);
    let users = 2 * args.pairs;
    let limit = Arc::new(Semaphore::new(args.setup_concurrency as usize));
    let tasks: Vec<_> = (0..users)
        .map(|i| {
            let (args, limit) = (Arc::clone(args), Arc::clone(&limit));
            let name = format!("{prefix}_{i}");
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await?;
                // Odd users receive.
                let addr = match (&args.receiver_addr, i % 2) {
                    (Some(addr), 1) => addr.as_str(),
                    _ => args.addr.as_str(),
                };
                setup_user(&args, addr, name).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Makes each sender a friend of its receiver (FlatBuffers), in case the node
/// only delivers between friends.
async fn befriend(users: &[BenchUser]) {
    let mut warned = false;
    for chunk in users.chunks(2) {
        if let [BenchUser::Fb { client, .. }, b] = chunk {
            match client.add_friend(b.id()).await {
                Ok(_) => {}
                Err(ClientError::Server {
                    code: ErrorCode::AlreadyFriends,
                    ..
                }) => {}
                Err(e) if !warned => {
                    eprintln!("chat-bench: add friend failed (going on): {e}");
                    warned = true;
                }
                Err(_) => {}
            }
        }
    }
}

struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    send_errors: u64,
    timeouts: u64,
    foreign: u64,
    in_window: u64,
    hist: Histogram<u64>,
}

fn summarize(results: Vec<PairResult>) -> Summary {
    let mut s = Summary {
        sent: 0,
        received: 0,
        lost: 0,
        duplicated: 0,
        out_of_order: 0,
        send_errors: 0,
        timeouts: 0,
        foreign: 0,
        in_window: 0,
        hist: new_histogram(),
    };
    for r in results {
        s.sent += r.sent;
        s.received += r.tally.unique;
        s.lost += r.sent.saturating_sub(r.tally.unique);
        s.duplicated += r.tally.duplicated;
        s.out_of_order += r.tally.out_of_order;
        s.send_errors += r.send_errors;
        s.timeouts += r.tally.timeouts;
        s.foreign += r.tally.foreign;
        s.in_window += r.tally.in_window;
        let _ = s.hist.add(&r.tally.hist);
    }
    s
}

fn report(args: &Args, s: &Summary) {
    let secs = args.duration.as_secs_f64();
    let throughput = if secs > 0.0 {
        s.in_window as f64 / secs
    } else {
        0.0
    };
    let q = |p: f64| s.hist.value_at_quantile(p);
    let protocol = match args.protocol {
        Protocol::Fb => "fb",
        Protocol::Json => "json",
    };
    if args.json {
        let line = json!({
            "protocol": protocol,
            "addr": args.addr,
            "receiver_addr": args.receiver_addr,
            "pairs": args.pairs,
            "mode": if args.rate.is_some() { "open" } else { "closed" },
            "rate": args.rate,
            "threads": args.threads,
            "duration_s": secs,
            "warmup_s": args.warmup.as_secs_f64(),
            "size": args.size,
            "sent": s.sent,
            "received": s.received,
            "lost": s.lost,
            "duplicated": s.duplicated,
            "out_of_order": s.out_of_order,
            "send_errors": s.send_errors,
            "timeouts": s.timeouts,
            "foreign": s.foreign,
            "msgs_per_sec": (throughput * 10.0).round() / 10.0,
            "latency_us": {
                "count": s.hist.len(),
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": s.hist.max(), "mean": (s.hist.mean() * 10.0).round() / 10.0,
            },
        });
        println!("{line}");
        return;
    }
    let mode = match args.rate {
        Some(r) => format!("open loop at {r} msg/s"),
        None => "closed loop".to_owned(),
    };
    println!(
        "chat-bench: {protocol} to {}, {} pairs, {mode}, {} thread(s), warmup {:?}, measured {:?}, {}-byte messages",
        args.addr, args.pairs, args.threads, args.warmup, args.duration, args.size
    );
    println!(
        "sent {}  received {}  lost {}  duplicated {}  out-of-order {}  send errors {}  timeouts {}",
        s.sent, s.received, s.lost, s.duplicated, s.out_of_order, s.send_errors, s.timeouts
    );
    println!("throughput {throughput:.1} msg/s");
    println!(
        "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}  (n={})",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        s.hist.max(),
        s.hist.mean(),
        s.hist.len()
    );
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        anyhow::bail!("--rate must be a positive number of messages per second");
    }
    let args = Arc::new(args);
    let started = std::time::Instant::now();
    eprintln!(
        "chat-bench: setting up {} users on {} ({:?})",
        2 * args.pairs,
        args.addr,
        args.protocol
    );
    let users = setup(&args).await?;
    if args.protocol == Protocol::Fb {
        befriend(&users).await;
    }
    eprintln!(
        "chat-bench: setup took {:.1?}; running {:?} + {:?}",
        started.elapsed(),
        args.warmup,
        args.duration
    );

    let warmup_us = args.warmup.as_micros() as u64;
    let clock = Clock {
        base: Instant::now(),
        window_start_us: warmup_us,
        window_end_us: warmup_us + args.duration.as_micros() as u64,
    };
    let mut users = users.into_iter();
    let mut tasks = Vec::new();
    let mut schedules = Vec::new();
    while let (Some(a), Some(b)) = (users.next(), users.next()) {
        let pair = make_pair(a, b, args.ack_every);
        let args = Arc::clone(&args);
        tasks.push(match args.rate {
            None => tokio::spawn(closed_loop(pair, args, clock)),
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                schedules.push(tx);
                tokio::spawn(open_loop(pair, rx, args, clock))
            }
        });
    }
    if let Some(rate) = args.rate {
        spawn_pacer(rate, clock, schedules);
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await?);
    }
    report(&args, &summarize(results));
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock {
            base: Instant::now(),
            window_start_us: 100,
            window_end_us: 1000,
        }
    }

    #[test]
    fn text_round_trips_and_pads() {
        let t = message_text(42, 123_456, 32);
        assert_eq!(t.len(), 32);
        assert_eq!(parse_text(&t), Some((42, 123_456)));
        let t = message_text(7, 9, 0);
        assert_eq!(t, "7 9 ");
        assert_eq!(parse_text(&t), Some((7, 9)));
        assert_eq!(parse_text("hello"), None);
    }

    #[test]
    fn tally_counts_duplicates_order_and_window() {
        let c = clock();
        let mut t = Tally::new();
        assert_eq!(t.record(&message_text(0, 50, 0), 60, &c), Some(0)); // warmup
        assert_eq!(t.record(&message_text(2, 200, 0), 300, &c), Some(2));
        assert_eq!(t.record(&message_text(1, 150, 0), 400, &c), Some(1)); // late
        assert_eq!(t.record(&message_text(2, 200, 0), 500, &c), Some(2)); // again
        assert_eq!(t.record(&message_text(200, 990, 0), 1500, &c), Some(200));
        assert_eq!(t.record("not ours", 500, &c), None);
        assert_eq!(t.unique, 4);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.foreign, 1);
        assert_eq!(t.in_window, 2); // received at 300 and 400
        assert_eq!(t.hist.len(), 3); // sent at 200, 150 and 990
        assert_eq!(t.hist.max(), 510);
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a = Args::parse_from([
            "chat-bench",
            "--pairs",
            "3",
            "--protocol",
            "json",
            "--duration",
            "500ms",
            "--rate",
            "100",
        ]);
        assert_eq!(a.protocol, Protocol::Json);
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.rate, Some(100.0));
        assert!(Args::try_parse_from(["chat-bench", "--pairs", "0"]).is_err());
    }
}
