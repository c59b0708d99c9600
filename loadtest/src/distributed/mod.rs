//! Distributed runs: `chat-loadtest worker --nats URL` processes, on any
//! machines, each take a share of the users of a run from a coordinator
//! (`chat-loadtest --workers K --nats URL ...`), start on a common clock and
//! send back what they measured, which the coordinator merges into one
//! [`Outcome`] without loss.
//!
//! # Subjects and message flow
//!
//! Every message is JSON (see `wire.rs`) except result chunks (a JSON header line,
//! then raw bytes).
//!
//! 1. **Discovery.** The coordinator subscribes to a reply inbox and publishes
//!    `Discover` to `chat.loadtest.discover` with that inbox as reply subject,
//!    again every 500 ms, for at most [`DISCOVERY_TIMEOUT`]. Every *idle*
//!    worker answers each one with `Hello` (its id, host, version). Once
//!    `workers` distinct ids have answered the coordinator takes them, in the
//!    order they answered; if fewer answered it fails with a message saying
//!    how to start workers.
//! 2. **Assignment.** The coordinator subscribes to
//!    `chat.loadtest.run.<run_id>.>` (before anything else can be sent
//!    there), then sends each worker a request on `chat.loadtest.worker.<id>`:
//!    `Assign` with the run id, the whole [`RunConfig`], the worker's
//!    [`Share`] and the start time. The worker subscribes to the run's cancel
//!    subject, then answers `Accepted` and becomes busy, or answers `Refused`
//!    (busy with another coordinator's run, or an unreadable assignment). A
//!    refusal or no answer within 5 s fails the run; the coordinator waits
//!    for every answer first, so each worker that accepted hears the cancel.
//! 3. **Run.** The worker calls its `run` function with an [`Assignment`].
//!    Every [`Progress`] that `run` sends on its channel is published on
//!    `chat.loadtest.run.<run_id>.progress` (its `worker` set to the share
//!    index), and the worker publishes an `Alive` heartbeat there every 5 s
//!    whatever `run` does (before the start time, in long setups). The
//!    coordinator hands each `Progress` to its caller; a worker from which
//!    nothing arrives for [`SILENCE_TIMEOUT`] fails the run.
//! 4. **Result.** The worker publishes its result on
//!    `chat.loadtest.run.<run_id>.result`: either the error message `run`
//!    returned, or its [`Outcome`] as JSON with `intervals` emptied plus the
//!    intervals as an HdrHistogram interval log (base time = start time).
//!    The body is cut into numbered chunks of at most 256 KiB (less when the
//!    server's `max_payload` is smaller; NATS's default is 1 MiB), each
//!    carrying the part number and the number of parts; the coordinator
//!    reassembles them per worker, reads the log back and merges the
//!    outcomes (so [`Outcome::workers`] ends up as the number of workers).
//! 5. **Cancel.** When the run fails (a worker's error, a silent worker, a
//!    refusal) or the coordinator's future is dropped, the coordinator
//!    publishes `Cancel` on `chat.loadtest.run.<run_id>.cancel`; the workers
//!    drop their run and become idle again.
//!
//! A worker does one run at a time: while busy it does not answer discovery
//! and refuses assignments. With `runs = N` it returns after N assignments.
//!
//! # Clock
//!
//! The start time is wall-clock time (unix milliseconds, carried as a
//! [`SystemTime`] in the [`Assignment`]), `start_delay` after the
//! assignment, so that workers on different machines begin their schedules
//! together; their clocks must therefore be synchronized (NTP), or their
//! shares start apart by the skew. Skew never enters a latency figure: the
//! sender and every recipient of a message are users of the same worker, and
//! each latency is measured by that one process on its own monotonic clock.
//! Interval timestamps are relative to the start time (kept to the
//! millisecond by the interval log), so the intervals of all workers line up
//! second by second when merged.
//!
//! # Shares
//!
//! A worker's [`Share`] is its index among `count` workers: it simulates
//! users [`Share::of`]`(config.users)` (contiguous, sizes differing by at
//! most one) at [`Share::rate`], so that the per-user rate is the same on
//! every worker and the rates add up to the configured one.

mod coordinator;
mod wire;
mod worker;

use std::ops::Range;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use coordinator::coordinate;
pub use worker::serve;

use crate::config::RunConfig;
#[cfg(doc)]
use crate::outcome::Outcome;

/// How long the coordinator looks for idle workers.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker may send nothing before the coordinator gives up on it.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which part of a run a worker does: worker `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub index: u32,
    pub count: u32,
}

impl Share {
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    /// This share of `total` items (users): contiguous, sizes differ by at
    /// most one, sum = total.
    pub fn of(&self, total: u64) -> Range<u64> {
        let count = u64::from(self.count.max(1));
        let index = u64::from(self.index).min(count - 1);
        let base = total / count;
        let extra = total % count;
        let start = index * base + index.min(extra);
        let len = base + u64::from(index < extra);
        start..start + len
    }

    /// This share of a rate: rate * (users in share / total users) (so the
    /// per-user rate is the same everywhere).
    pub fn rate(&self, rate: f64, total_users: u64) -> f64 {
        if total_users == 0 {
            return rate / f64::from(self.count.max(1));
        }
        let users = self.of(total_users);
        rate * (users.end - users.start) as f64 / total_users as f64
    }
}

/// What the coordinator sees while a run goes on: one per worker per second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub worker: u32,
    pub elapsed_ms: u64,
    pub phase: String,
    pub connections: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub errors: u64,
    pub p99_us: u64,
}

/// What a worker runs for one assignment (the runner provides it).
pub struct Assignment {
    pub run_id: String,
    pub config: RunConfig,
    pub share: Share,
    pub start_at: SystemTime,
}

/// Why a distributed run, or a worker, failed.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("a distributed run needs at least one worker")]
    NoWorkers,
    #[error("NATS: {0}")]
    Nats(String),
    #[error("the connection to NATS closed")]
    Closed,
    #[error(
        "found {found} of {wanted} workers on {url}: start them with `chat-loadtest worker --nats {url}`"
    )]
    TooFewWorkers {
        found: u32,
        wanted: u32,
        url: String,
    },
    #[error("worker {worker} did not take the run: {reason}")]
    Refused { worker: String, reason: String },
    #[error("worker {worker} failed: {message}")]
    Worker { worker: String, message: String },
    #[error("worker {worker} went silent: nothing from it for {} s", .silent.as_secs())]
    Silent { worker: String, silent: Duration },
    #[error("bad message on {subject}: {reason}")]
    Message { subject: String, reason: String },
}

impl DistributedError {
    fn nats(what: &str, e: impl std::fmt::Display) -> DistributedError {
        DistributedError::Nats(format!("{what}: {e}"))
    }
}

/// Connects to `url` with a name that shows in the server's `/connz`.
async fn connect(url: &str, name: &str) -> Result<async_nats::Client, DistributedError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await
        .map_err(|e| DistributedError::Connect {
            url: url.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_users_evenly_and_rates_add_up() {
        for count in 1..=9u32 {
            for total in [0u64, 1, 2, 7, 8, 9, 100, 1001, 123_457] {
                let shares: Vec<Share> = (0..count).map(|index| Share { index, count }).collect();
                let ranges: Vec<Range<u64>> = shares.iter().map(|s| s.of(total)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges.last().unwrap().end, total);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start, "contiguous");
                }
                let sizes: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
                assert_eq!(sizes.iter().sum::<u64>(), total);
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "{total} over {count}: {sizes:?}");
                let rate: f64 = shares.iter().map(|s| s.rate(1234.5, total)).sum();
                assert!((rate - 1234.5).abs() < 1e-6, "{total} over {count}: {rate}");
            }
        }
        assert_eq!(Share::WHOLE.of(10), 0..10);
        assert_eq!(Share::WHOLE.rate(50.0, 10), 50.0);
        let per_user = |s: Share| s.rate(300.0, 10) / (s.of(10).end - s.of(10).start) as f64;
        assert!((per_user(Share { index: 0, count: 3 }) - 30.0).abs() < 1e-9);
        assert!((per_user(Share { index: 2, count: 3 }) - 30.0).abs() < 1e-9);
    }
}
