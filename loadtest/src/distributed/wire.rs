//! The messages of distributed runs and their encoding: the subjects, the
//! JSON messages of discovery, assignment, progress and cancellation, and the
//! result, whose body (outcome JSON plus interval log) is cut into numbered
//! chunks that fit NATS's payload limit and put back together by
//! [`Chunks`] on the coordinator.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{DistributedError, Progress, Share};
use crate::config::RunConfig;
use crate::interval_log;
use crate::outcome::Outcome;

/// Idle workers answer requests here.
pub(super) const DISCOVER: &str = "chat.loadtest.discover";
/// Bumped when a message changes incompatibly.
pub(super) const PROTOCOL: u32 = 1;
/// Largest chunk of a result body (NATS's default `max_payload` is 1 MiB).
pub(super) const CHUNK_SIZE: usize = 256 * 1024;
/// A result of more parts than this is refused (1 GiB at 256 KiB each).
const MAX_PARTS: u32 = 4096;

/// Assignments to the worker `id`.
pub(super) fn worker_subject(id: &str) -> String {
    format!("chat.loadtest.worker.{id}")
}

/// The subjects of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Topic {
    Progress,
    Result,
    Cancel,
}

impl Topic {
    fn name(self) -> &'static str {
        match self {
            Topic::Progress => "progress",
            Topic::Result => "result",
            Topic::Cancel => "cancel",
        }
    }

    pub(super) fn subject(self, run_id: &str) -> String {
        format!("chat.loadtest.run.{run_id}.{}", self.name())
    }

    /// Every subject of the run, for one subscription.
    pub(super) fn all(run_id: &str) -> String {
        format!("chat.loadtest.run.{run_id}.>")
    }

    /// Which topic of which run `subject` is.
    pub(super) fn of(subject: &str, run_id: &str) -> Option<Topic> {
        let rest = subject
            .strip_prefix("chat.loadtest.run.")?
            .strip_prefix(run_id)?
            .strip_prefix('.')?;
        [Topic::Progress, Topic::Result, Topic::Cancel]
            .into_iter()
            .find(|t| t.name() == rest)
    }
}

/// Coordinator → `chat.loadtest.discover`, reply to its inbox.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Discover {
    pub run_id: String,
    pub protocol: u32,
}

/// Idle worker → the coordinator's inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Hello {
    pub worker: String,
    pub host: String,
    pub version: String,
    pub protocol: u32,
}

/// Coordinator → `chat.loadtest.worker.<id>` (a request).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Assign {
    pub run_id: String,
    pub config: RunConfig,
    pub share: Share,
    /// Wall-clock start, unix ms.
    pub start_at_ms: u64,
}

/// Worker → the assignment's reply subject.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub(super) enum AssignReply {
    Accepted,
    Refused { reason: String },
}

/// Worker → `chat.loadtest.run.<run_id>.progress`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub(super) enum RunEvent {
    Progress(Progress),
    /// A heartbeat, sent whatever the run does.
    Alive {
        worker: u32,
    },
}

impl RunEvent {
    pub(super) fn worker(&self) -> u32 {
        match self {
            RunEvent::Progress(p) => p.worker,
            RunEvent::Alive { worker } => *worker,
        }
    }
}

/// Coordinator → `chat.loadtest.run.<run_id>.cancel`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Cancel {
    pub reason: String,
}

/// The body of a worker's result, before chunking.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
enum WorkerResult {
    Done {
        /// The outcome without its intervals.
        outcome: Box<Outcome>,
        /// The intervals, as an HdrHistogram interval log based at the
        /// start time.
        interval_log: String,
    },
    Failed {
        message: String,
    },
}

/// First line of every result chunk; the chunk's bytes follow.
#[derive(Debug, Serialize, Deserialize)]
struct ChunkHeader {
    worker: u32,
    part: u32,
    parts: u32,
}

pub(super) fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire messages serialize")
}

pub(super) fn from_json<T: DeserializeOwned>(
    subject: &str,
    payload: &[u8],
) -> Result<T, DistributedError> {
    serde_json::from_slice(payload).map_err(|e| bad(subject, e))
}

fn bad(subject: &str, reason: impl std::fmt::Display) -> DistributedError {
    DistributedError::Message {
        subject: subject.to_owned(),
        reason: reason.to_string(),
    }
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub(super) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The result body of `result`, intervals relative to `start_at`. An outcome
/// that cannot be encoded becomes a failure saying why.
pub(super) fn encode_result(result: Result<Outcome, String>, start_at: SystemTime) -> Vec<u8> {
    let body = match result {
        Ok(mut outcome) => {
            let intervals = std::mem::take(&mut outcome.intervals);
            let mut log = Vec::new();
            match interval_log::write(&intervals, start_at, &mut log) {
                Ok(()) => WorkerResult::Done {
                    outcome: Box::new(outcome),
                    interval_log: String::from_utf8(log).expect("interval logs are ASCII"),
                },
                Err(e) => WorkerResult::Failed {
                    message: format!("cannot write the interval log: {e}"),
                },
            }
        }
        Err(message) => WorkerResult::Failed { message },
    };
    to_json(&body)
}

/// The inverse of [`encode_result`]: `Ok(Err(message))` when the worker's run
/// failed.
pub(super) fn decode_result(
    subject: &str,
    body: &[u8],
) -> Result<Result<Outcome, String>, DistributedError> {
    match from_json(subject, body)? {
        WorkerResult::Done {
            mut outcome,
            interval_log,
        } => {
            outcome.intervals =
                interval_log::read(interval_log.as_bytes()).map_err(|e| bad(subject, e))?;
            Ok(Ok(*outcome))
        }
        WorkerResult::Failed { message } => Ok(Err(message)),
    }
}

/// `body` as the payloads of one worker's result messages, each at most
/// `size` bytes of body plus a short header line.
pub(super) fn chunk(worker: u32, body: &[u8], size: usize) -> Vec<Vec<u8>> {
    let pieces: Vec<&[u8]> = if body.is_empty() {
        vec![body]
    } else {
        body.chunks(size.max(1)).collect()
    };
    let parts = pieces.len() as u32;
    pieces
        .into_iter()
        .enumerate()
        .map(|(part, piece)| {
            let mut payload = to_json(&ChunkHeader {
                worker,
                part: part as u32,
                parts,
            });
            payload.push(b'\n');
            payload.extend_from_slice(piece);
            payload
        })
        .collect()
}

/// Result chunks received so far, per worker.
#[derive(Default)]
pub(super) struct Chunks {
    pending: HashMap<u32, Vec<Option<Vec<u8>>>>,
}

impl Chunks {
    /// Adds one chunk; returns the worker and its whole body once every part
    /// of it has come.
    pub(super) fn add(
        &mut self,
        subject: &str,
        payload: &[u8],
    ) -> Result<Option<(u32, Vec<u8>)>, DistributedError> {
        let newline = payload
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad(subject, "result chunk without a header line"))?;
        let header: ChunkHeader = from_json(subject, &payload[..newline])?;
        if header.parts == 0 || header.parts > MAX_PARTS || header.part >= header.parts {
            return Err(bad(
                subject,
                format!("result chunk {} of {}", header.part, header.parts),
            ));
        }
        let parts = self
            .pending
            .entry(header.worker)
            .or_insert_with(|| vec![None; header.parts as usize]);
        if parts.len() != header.parts as usize {
            return Err(bad(
                subject,
                format!(
                    "worker {} sent a result of {} parts, then of {}",
                    header.worker,
                    parts.len(),
                    header.parts
                ),
            ));
        }
        parts[header.part as usize] = Some(payload[newline + 1..].to_vec());
        if parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let parts = self.pending.remove(&header.worker).unwrap_or_default();
        let body = parts.into_iter().flatten().collect::<Vec<_>>().concat();
        Ok(Some((header.worker, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Correction, Interval, Metric, Series, new_histogram, record};

    #[test]
    fn chunks_reassemble_in_any_order_and_per_worker() {
        let a: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"short".to_vec();
        let mut chunks_a = chunk(0, &a, 3000);
        assert_eq!(chunks_a.len(), 4);
        chunks_a.reverse();
        let chunks_b = chunk(1, &b, 3000);
        let mut got = Chunks::default();
        let mut done = Vec::new();
        for payload in chunks_a
            .iter()
            .take(2)
            .chain(&chunks_b)
            .chain(&chunks_a[2..])
        {
            if let Some(whole) = got.add("s", payload).unwrap() {
                done.push(whole);
            }
        }
        assert_eq!(done, vec![(1, b), (0, a)]);
        assert_eq!(
            got.add("s", &chunk(2, b"", 10)[0]).unwrap(),
            Some((2, Vec::new()))
        );
        assert!(got.add("s", b"no header").is_err());
        assert!(
            got.add("s", b"{\"worker\":0,\"part\":3,\"parts\":3}\nx")
                .is_err()
        );
    }

    #[test]
    fn results_keep_their_intervals_and_errors() {
        let series = Series::new(Metric::SendAck, Correction::Uncorrected);
        let mut h = new_histogram();
        record(&mut h, 1234);
        let mut outcome = Outcome::default();
        outcome.counters.sent = 7;
        outcome.totals.insert(series, h.clone());
        outcome.intervals.push(Interval {
            series,
            start_us: 3_000_000,
            length_us: 1_000_000,
            histogram: h.clone(),
        });
        let body = encode_result(Ok(outcome), SystemTime::now());
        let back = decode_result("s", &body).unwrap().unwrap();
        assert_eq!(back.counters.sent, 7);
        assert_eq!(back.totals[&series], h);
        assert_eq!(back.intervals.len(), 1);
        assert_eq!(back.intervals[0].start_us, 3_000_000);
        assert_eq!(back.intervals[0].histogram, h);

        let body = encode_result(Err("boom".into()), SystemTime::now());
        assert_eq!(decode_result("s", &body).unwrap().unwrap_err(), "boom");
    }

    #[test]
    fn topics_parse_back() {
        for t in [Topic::Progress, Topic::Result, Topic::Cancel] {
            assert_eq!(Topic::of(&t.subject("r1"), "r1"), Some(t));
            assert_eq!(Topic::of(&t.subject("r1"), "r2"), None);
        }
    }
}
