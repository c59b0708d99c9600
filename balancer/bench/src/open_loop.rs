//! Open-loop load at a fixed rate on established connections, the engine of
//! `latency` and `redirect`.
//!
//! A sender thread follows the schedule whatever the replies do, so requests
//! may queue behind a slow one; each request carries its *intended* send
//! time, which its reply brings back, and latency runs from that time to the
//! receipt of the reply, so a stall is counted in full for every request it
//! delayed (coordinated omission corrected). HdrHistogram in ns. The
//! requests of several targets can share one schedule, interleaved, so that
//! a noisy moment on a shared machine hits them all alike.
//!
//! What a request and a reply look like is the caller's: a function builds
//! the bytes of request (connection, intended time), and a [`Replies`] per
//! connection splits what comes back into replies.

use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::report::new_histogram;

/// What the sender thread and the readers share.
pub struct Shared {
    /// Requests written, per connection (all targets).
    pub sent: Vec<AtomicU64>,
    /// Requests written with an intended time inside the window, per target.
    pub sent_in_window: Vec<AtomicU64>,
    /// Connections the sender gave up on (write error), per target.
    pub write_errors: Vec<AtomicU64>,
    /// Times a write found the socket buffer full.
    pub write_stalls: AtomicU64,
}

impl Shared {
    fn new(targets: usize, per_target: usize) -> Self {
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Shared {
            sent: counters(targets * per_target),
            sent_in_window: counters(targets),
            write_errors: counters(targets),
            write_stalls: AtomicU64::new(0),
        }
    }

    /// Requests written on the connections of target `t`.
    pub fn sent_to(&self, t: usize, per_target: usize) -> u64 {
        self.sent[t * per_target..(t + 1) * per_target]
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .sum()
    }
}

/// What the readers of one connection (or, added up, one target) saw.
#[derive(Default)]
pub struct ReaderTally {
    /// Replies to a request, answers and refusals.
    pub received: u64,
    /// Answers to requests intended inside the window.
    pub received_in_window: u64,
    /// Replies that are not to a request of this connection.
    pub mismatched: u64,
    /// Replies that say no ([`Reply::Refused`]).
    pub refused: u64,
    pub read_errors: u64,
    pub closed_early: u64,
}

impl ReaderTally {
    pub fn add(&mut self, o: &ReaderTally) {
        self.received += o.received;
        self.received_in_window += o.received_in_window;
        self.mismatched += o.mismatched;
        self.refused += o.refused;
        self.read_errors += o.read_errors;
        self.closed_early += o.closed_early;
    }
}

/// One reply, as a [`Replies`] reads it.
pub enum Reply {
    /// The answer to the request intended at this time (ns on the
    /// schedule): its latency is counted.
    Answer(u64),
    /// A reply to a request that refuses it (an error reply): counted as
    /// received and refused, no latency.
    Refused,
    /// Not a reply to a request of this connection.
    Mismatch,
}

/// Splits the bytes a connection receives into replies.
pub trait Replies: Send + 'static {
    /// The first whole reply at the start of `buf` and its length in bytes,
    /// `Ok(None)` while it is not whole yet; `Err` when the stream cannot be
    /// read on (counted as mismatched, and the connection's reader stops).
    fn next(&mut self, buf: &[u8]) -> Result<Option<(usize, Reply)>, ()>;
}

/// The open-loop timeline, in ns since `base`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub base: Instant,
    /// First request.
    pub first_ns: u64,
    /// Measurement starts (end of warmup).
    pub window_start_ns: u64,
    /// Measurement and sending end.
    pub end_ns: u64,
    /// Requests per second per target.
    pub rate: f64,
    /// Targets, each with `per_target` connections.
    pub targets: usize,
    pub per_target: usize,
}

impl Schedule {
    /// A schedule starting 10 ms from now: `warmup`, then the window of
    /// `duration`.
    pub fn new(
        rate: f64,
        targets: usize,
        per_target: usize,
        warmup: Duration,
        duration: Duration,
    ) -> Self {
        let first_ns = 10_000_000; // 10 ms from now
        let window_start_ns = first_ns + warmup.as_nanos() as u64;
        Schedule {
            base: Instant::now(),
            first_ns,
            window_start_ns,
            end_ns: window_start_ns + duration.as_nanos() as u64,
            rate,
            targets,
            per_target,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// When the measurement window starts.
    pub fn window_start(&self) -> Instant {
        self.base + Duration::from_nanos(self.window_start_ns)
    }
}

/// `per_target` established connections to each target, in the order of
/// `targets`: one socket, two handles each, a blocking-style writer for the
/// sender thread (the socket stays non-blocking) and a tokio reader.
pub struct Connections {
    writers: Vec<std::net::TcpStream>,
    readers: Vec<TcpStream>,
}

impl Connections {
    pub async fn open(targets: &[SocketAddr], per_target: usize) -> anyhow::Result<Self> {
        let mut readers = Vec::with_capacity(targets.len() * per_target);
        let mut writers = Vec::with_capacity(targets.len() * per_target);
        for target in targets {
            for _ in 0..per_target {
                let stream =
                    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target))
                        .await
                        .map_err(|_| anyhow::anyhow!("connect to {target} timed out"))??;
                stream.set_nodelay(true)?;
                let std_stream = stream.into_std()?;
                writers.push(std_stream.try_clone()?);
                readers.push(TcpStream::from_std(std_stream)?);
            }
        }
        Ok(Connections { writers, readers })
    }
}

/// The results of [`run`].
pub struct Finished<P> {
    pub shared: Arc<Shared>,
    /// Latency in ns of the answers in the window, per target.
    pub hists: Vec<Histogram<u64>>,
    /// Per target.
    pub tallies: Vec<ReaderTally>,
    /// Each connection's [`Replies`], as the reader left it.
    pub replies: Vec<P>,
    /// How late the sender started the writes of the window.
    pub send_lag: Histogram<u64>,
}

/// Sends on `conns` by schedule `s`, `request(connection, intended ns)`
/// being the bytes of each request, and reads the replies, each connection
/// with `replies(connection)`, until every request is answered or `drain`
/// after the schedule ends (requests unanswered then are lost).
pub async fn run<P, B>(
    conns: Connections,
    s: Schedule,
    drain: Duration,
    request: impl FnMut(usize, u64) -> B + Send + 'static,
    replies: impl Fn(usize) -> P,
) -> anyhow::Result<Finished<P>>
where
    P: Replies,
    B: AsRef<[u8]>,
{
    let Connections { writers, readers } = conns;
    let shared = Arc::new(Shared::new(s.targets, s.per_target));
    let hard_deadline =
        tokio::time::Instant::from_std(s.base + Duration::from_nanos(s.end_ns) + drain);
    let (done_tx, done_rx) = watch::channel(false);
    let sender = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("tcp-bench-sender".into())
            .spawn(move || {
                let lag = send_schedule(writers, &shared, s, request);
                let _ = done_tx.send(true);
                lag
            })?
    };
    let mut tasks = Vec::with_capacity(readers.len());
    for (conn, stream) in readers.into_iter().enumerate() {
        let shared = shared.clone();
        let done = done_rx.clone();
        let mut parser = replies(conn);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let tally = read_replies(
                stream,
                conn,
                &mut parser,
                shared,
                done,
                s,
                hard_deadline,
                &mut hist,
            )
            .await;
            (tally, hist, parser)
        }));
    }
    let mut hists: Vec<Histogram<u64>> = (0..s.targets).map(|_| new_histogram()).collect();
    let mut tallies: Vec<ReaderTally> = (0..s.targets).map(|_| ReaderTally::default()).collect();
    let mut all_replies = Vec::with_capacity(tasks.len());
    for (conn, task) in tasks.into_iter().enumerate() {
        let (t, h, p) = task.await?;
        hists[conn / s.per_target].add(&h)?;
        tallies[conn / s.per_target].add(&t);
        all_replies.push(p);
    }
    let send_lag = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    Ok(Finished {
        shared,
        hists,
        tallies,
        replies: all_replies,
        send_lag,
    })
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

/// The open-loop schedule: request `i` is due at `first_ns + i / (rate ×
/// targets)`, whatever the replies do; consecutive requests go to the next
/// target in turn, and each target's requests to its connections in turn.
/// Runs on its own OS thread so that its timing does not depend on the
/// readers' runtime (tokio's timer has millisecond granularity; this thread
/// sleeps with 1 ns timer slack). Returns how late writes started.
fn send_schedule<B: AsRef<[u8]>>(
    writers: Vec<std::net::TcpStream>,
    shared: &Shared,
    s: Schedule,
    mut request: impl FnMut(usize, u64) -> B,
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
        let req = request(conn, due);
        match write_all_nonblocking(&writers[conn], req.as_ref(), &shared.write_stalls) {
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

#[allow(clippy::too_many_arguments)]
async fn read_replies(
    mut stream: TcpStream,
    conn: usize,
    parser: &mut impl Replies,
    shared: Arc<Shared>,
    mut done: watch::Receiver<bool>,
    s: Schedule,
    hard_deadline: tokio::time::Instant,
    hist: &mut Histogram<u64>,
) -> ReaderTally {
    let mut tally = ReaderTally::default();
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    'read: loop {
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
                    let mut taken = 0;
                    loop {
                        match parser.next(&buf[taken..filled]) {
                            Ok(Some((len, reply))) => {
                                taken += len;
                                match reply {
                                    Reply::Answer(due) => {
                                        tally.received += 1;
                                        if due >= s.window_start_ns {
                                            tally.received_in_window += 1;
                                            let _ = hist.record(now.saturating_sub(due).max(1));
                                        }
                                    }
                                    Reply::Refused => {
                                        tally.received += 1;
                                        tally.refused += 1;
                                    }
                                    Reply::Mismatch => tally.mismatched += 1,
                                }
                            }
                            Ok(None) => break,
                            Err(()) => {
                                tally.mismatched += 1;
                                break 'read;
                            }
                        }
                    }
                    buf.copy_within(taken..filled, 0);
                    filled -= taken;
                    if filled == buf.len() {
                        // A reply larger than the buffer: make room.
                        buf.resize(buf.len() * 2, 0);
                    }
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
