//! The coordinator side of a distributed run: finds idle workers, assigns
//! each its share with a common start time, forwards their progress, watches
//! for silent ones, reassembles their chunked results and merges the
//! outcomes. On failure (or when its future is dropped) it cancels the run on
//! every worker.

use std::time::{Duration, Instant, SystemTime};

use async_nats::{Client, RequestErrorKind, Subscriber};
use futures_util::StreamExt;
use tracing::{info, warn};

use super::wire::{
    self, AssignReply, Chunks, DISCOVER, Discover, Hello, PROTOCOL, RunEvent, Topic, from_json,
    to_json,
};
use super::{DISCOVERY_TIMEOUT, DistributedError, Progress, SILENCE_TIMEOUT, Share, connect};
use crate::config::RunConfig;
use crate::outcome::Outcome;

/// How often discovery is asked again (workers may start meanwhile).
const DISCOVERY_EVERY: Duration = Duration::from_millis(500);
/// How long a worker has to accept its assignment.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cancel may take to leave.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Coordinator: finds `workers` idle workers on `nats_url`, gives each its
/// share of `config` with a start time `start_delay` from now (wall clock,
/// unix ms), forwards their progress to `on_progress`, collects and merges
/// their outcomes. Fails clearly when fewer than `workers` answer within
/// 10 s, when a worker reports an error (its message), or when a worker goes
/// silent (no progress for 30 s).
pub async fn coordinate(
    nats_url: &str,
    config: &RunConfig,
    workers: u32,
    start_delay: Duration,
    mut on_progress: impl FnMut(&Progress) + Send,
) -> Result<Outcome, DistributedError> {
    if workers == 0 {
        return Err(DistributedError::NoWorkers);
    }
    let run_id = format!("{:016x}", rand::random::<u64>());
    let client = connect(nats_url, &format!("chat-loadtest coordinator {run_id}")).await?;
    let mut events = client
        .subscribe(Topic::all(&run_id))
        .await
        .map_err(|e| DistributedError::nats("subscribe", e))?;
    let found = discover(&client, nats_url, &run_id, workers).await?;
    let start_at = SystemTime::now() + start_delay;
    info!(
        run = %run_id,
        workers = ?found.iter().map(|h| h.worker.as_str()).collect::<Vec<_>>(),
        "assigning the run"
    );
    let guard = CancelGuard {
        client: client.clone(),
        subject: Topic::Cancel.subject(&run_id),
        armed: true,
    };
    let run = Run {
        client: &client,
        run_id: &run_id,
        workers: &found,
    };
    let result = async {
        run.assign(config, start_at).await?;
        run.collect(&mut events, &mut on_progress).await
    }
    .await;
    match result {
        Ok(outcome) => {
            guard.disarm();
            Ok(outcome)
        }
        Err(e) => {
            guard.cancel(&e.to_string()).await;
            Err(e)
        }
    }
}

/// Asks for idle workers until `wanted` distinct ones answered, or fails
/// after [`DISCOVERY_TIMEOUT`].
async fn discover(
    client: &Client,
    nats_url: &str,
    run_id: &str,
    wanted: u32,
) -> Result<Vec<Hello>, DistributedError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| DistributedError::nats("subscribe", e))?;
    let request = to_json(&Discover {
        run_id: run_id.to_owned(),
        protocol: PROTOCOL,
    });
    let mut ask = tokio::time::interval(DISCOVERY_EVERY);
    let deadline = tokio::time::sleep(DISCOVERY_TIMEOUT);
    tokio::pin!(deadline);
    let mut found: Vec<Hello> = Vec::new();
    let mut incompatible: Vec<String> = Vec::new();
    while found.len() < wanted as usize {
        tokio::select! {
            _ = ask.tick() => {
                client
                    .publish_with_reply(DISCOVER, inbox.clone(), request.clone().into())
                    .await
                    .map_err(|e| DistributedError::nats("publish", e))?;
            }
            m = replies.next() => {
                let m = m.ok_or(DistributedError::Closed)?;
                let hello: Hello = match from_json(&m.subject, &m.payload) {
                    Ok(h) => h,
                    Err(e) => {
                        warn!("ignoring a discovery answer: {e}");
                        continue;
                    }
                };
                if hello.protocol != PROTOCOL {
                    if !incompatible.contains(&hello.worker) {
                        warn!(
                            "ignoring worker {} on {}: chat-loadtest {} speaks protocol {}, this one {} speaks {PROTOCOL}",
                            hello.worker, hello.host, hello.version, hello.protocol,
                            env!("CARGO_PKG_VERSION"),
                        );
                        incompatible.push(hello.worker);
                    }
                } else if !found.iter().any(|h| h.worker == hello.worker) {
                    info!(worker = %hello.worker, host = %hello.host, "found a worker");
                    found.push(hello);
                }
            }
            _ = &mut deadline => {
                return Err(DistributedError::TooFewWorkers {
                    found: found.len() as u32,
                    wanted,
                    url: nats_url.to_owned(),
                });
            }
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(found)
}

/// A run whose workers have been found.
struct Run<'a> {
    client: &'a Client,
    run_id: &'a str,
    /// Worker `i` does share `i`.
    workers: &'a [Hello],
}

impl Run<'_> {
    fn count(&self) -> u32 {
        self.workers.len() as u32
    }

    /// Sends every worker its assignment at once, and waits for all answers
    /// (so that every worker that accepted will hear a cancel).
    async fn assign(
        &self,
        config: &RunConfig,
        start_at: SystemTime,
    ) -> Result<(), DistributedError> {
        let start_at_ms = wire::unix_ms(start_at);
        let answers = self.workers.iter().enumerate().map(|(index, hello)| {
            let assign = wire::Assign {
                run_id: self.run_id.to_owned(),
                config: config.clone(),
                share: Share {
                    index: index as u32,
                    count: self.count(),
                },
                start_at_ms,
            };
            self.assign_one(hello, assign)
        });
        futures_util::future::join_all(answers)
            .await
            .into_iter()
            .collect()
    }

    async fn assign_one(
        &self,
        hello: &Hello,
        assign: wire::Assign,
    ) -> Result<(), DistributedError> {
        let refused = |reason: String| DistributedError::Refused {
            worker: hello.worker.clone(),
            reason,
        };
        let request = async_nats::Request::new()
            .payload(to_json(&assign).into())
            .timeout(Some(ASSIGN_TIMEOUT));
        let reply = self
            .client
            .send_request(wire::worker_subject(&hello.worker), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::TimedOut => refused(format!(
                    "no answer to its assignment within {} s",
                    ASSIGN_TIMEOUT.as_secs()
                )),
                RequestErrorKind::NoResponders => refused("it has gone away".into()),
                _ => DistributedError::nats("assignment", e),
            })?;
        match from_json(&reply.subject, &reply.payload)? {
            AssignReply::Accepted => Ok(()),
            AssignReply::Refused { reason } => Err(refused(reason)),
        }
    }

    /// Forwards progress and gathers every worker's result until all have
    /// come; fails at the first worker error or silent worker.
    async fn collect(
        &self,
        events: &mut Subscriber,
        on_progress: &mut (impl FnMut(&Progress) + Send),
    ) -> Result<Outcome, DistributedError> {
        let n = self.workers.len();
        let mut heard = vec![Instant::now(); n];
        let mut outcomes: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        let mut chunks = Chunks::default();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        while outcomes.iter().any(Option::is_none) {
            tokio::select! {
                m = events.next() => {
                    let m = m.ok_or(DistributedError::Closed)?;
                    match Topic::of(&m.subject, self.run_id) {
                        Some(Topic::Progress) => {
                            let event: RunEvent = match from_json(&m.subject, &m.payload) {
                                Ok(event) => event,
                                Err(e) => {
                                    warn!("ignoring progress: {e}");
                                    continue;
                                }
                            };
                            let Some(at) = heard.get_mut(event.worker() as usize) else {
                                warn!("ignoring progress of unknown worker {}", event.worker());
                                continue;
                            };
                            *at = Instant::now();
                            if let RunEvent::Progress(p) = event {
                                on_progress(&p);
                            }
                        }
                        Some(Topic::Result) => {
                            let Some((index, body)) = chunks.add(&m.subject, &m.payload)? else {
                                continue;
                            };
                            let Some(hello) = self.workers.get(index as usize) else {
                                warn!("ignoring the result of unknown worker {index}");
                                continue;
                            };
                            match wire::decode_result(&m.subject, &body)? {
                                Ok(mut outcome) => {
                                    info!(worker = %hello.worker, bytes = body.len(), "result received");
                                    outcome.workers = 1;
                                    outcomes[index as usize] = Some(outcome);
                                }
                                Err(message) => {
                                    return Err(DistributedError::Worker {
                                        worker: hello.worker.clone(),
                                        message,
                                    });
                                }
                            }
                        }
                        Some(Topic::Cancel) | None => {}
                    }
                }
                _ = check.tick() => {
                    let silent = (0..n).find(|&i| outcomes[i].is_none() && heard[i].elapsed() >= SILENCE_TIMEOUT);
                    if let Some(i) = silent {
                        return Err(DistributedError::Silent {
                            worker: self.workers[i].worker.clone(),
                            silent: heard[i].elapsed(),
                        });
                    }
                }
            }
        }
        let mut all = outcomes.into_iter().flatten();
        let mut merged = all.next().expect("at least one worker");
        for outcome in all {
            merged.merge(outcome);
        }
        Ok(merged)
    }
}

/// Cancels the run on the workers unless disarmed: explicitly on failure,
/// from a spawned task when the coordinator's future is dropped.
struct CancelGuard {
    client: Client,
    subject: String,
    armed: bool,
}

impl CancelGuard {
    fn disarm(mut self) {
        self.armed = false;
    }

    async fn cancel(mut self, reason: &str) {
        self.armed = false;
        send_cancel(self.client.clone(), self.subject.clone(), reason.to_owned()).await;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(send_cancel(
                self.client.clone(),
                self.subject.clone(),
                "the coordinator stopped".into(),
            ));
        }
    }
}

async fn send_cancel(client: Client, subject: String, reason: String) {
    let payload = to_json(&wire::Cancel { reason });
    let sent = tokio::time::timeout(CANCEL_TIMEOUT, async {
        client.publish(subject, payload.into()).await?;
        client.flush().await?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        warn!("could not tell the workers to stop their run");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chat_testkit::LocalNats;
    use tokio::sync::mpsc::UnboundedSender;

    use super::*;
    use crate::config::{Args, Target};
    use crate::distributed::{Assignment, serve};
    use crate::outcome::{Correction, Interval, Metric, Series, new_histogram, record};

    const DELIVERY: Series = Series {
        metric: Metric::Delivery,
        correction: Correction::Corrected,
    };
    const ACK: Series = Series {
        metric: Metric::SendAck,
        correction: Correction::Uncorrected,
    };

    fn config(users: u64) -> RunConfig {
        let args = Args {
            users: Some(users),
            ..Args::default()
        };
        args.resolve(Some(Target::Addrs(vec!["127.0.0.1:1".into()])))
            .unwrap()
    }

    fn progress(worker: u32, elapsed_ms: u64) -> Progress {
        Progress {
            worker,
            elapsed_ms,
            phase: "measure".into(),
            connections: 10,
            sent: elapsed_ms,
            acked: elapsed_ms,
            delivered: elapsed_ms,
            errors: 0,
            p99_us: 1000,
        }
    }

    /// A worker's outcome that depends only on its share.
    fn outcome_of(share: Share, users: u64) -> Outcome {
        let k = u64::from(share.index) + 1;
        let mut o = Outcome {
            window_us: 3_000_000,
            offered_rate: 100.0 * k as f64,
            ..Outcome::default()
        };
        o.counters.users = share.of(users).end - share.of(users).start;
        o.counters.sent = 1000 * k;
        o.counters.delivered = 990 * k;
        o.counters.lost = 10 * k;
        o.errors.insert("send: timeout".into(), k);
        o.errors.insert(format!("only-{k}"), 1);
        for series in [DELIVERY, ACK] {
            let mut total = new_histogram();
            for second in 0..3u64 {
                let mut h = new_histogram();
                for v in 0..50 * k {
                    record(&mut h, 100 * k + v * 13 + second * 1000);
                }
                total.add(&h).unwrap();
                o.intervals.push(Interval {
                    series,
                    start_us: second * 1_000_000,
                    length_us: 1_000_000,
                    histogram: h,
                });
            }
            o.totals.insert(series, total);
        }
        o.generator.lag = new_histogram();
        record(&mut o.generator.lag, 5 * k);
        o
    }

    /// Waits for the start, reports twice, returns [`outcome_of`] its share.
    async fn fake_run(a: Assignment, tx: UnboundedSender<Progress>) -> Result<Outcome, String> {
        let wait = a
            .start_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        for elapsed_ms in [10, 20] {
            tx.send(progress(a.share.index, elapsed_ms)).unwrap();
        }
        Ok(outcome_of(a.share, a.config.users))
    }

    fn spawn_worker<F, Fut>(url: &str, runs: u64, run: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Assignment, UnboundedSender<Progress>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Outcome, String>> + Send + 'static,
    {
        let url = url.to_owned();
        tokio::spawn(async move { serve(&url, runs, run).await.unwrap() })
    }

    fn sorted(intervals: &[Interval]) -> Vec<(Series, u64, u64, u64, u64)> {
        let mut v: Vec<_> = intervals
            .iter()
            .map(|i| {
                (
                    i.series,
                    i.start_us,
                    i.length_us,
                    i.histogram.len(),
                    i.histogram.value_at_quantile(0.99),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_workers_outcomes_merge_losslessly() {
        let nats = LocalNats::start().unwrap();
        let workers = [
            spawn_worker(&nats.url(), 1, fake_run),
            spawn_worker(&nats.url(), 1, fake_run),
        ];
        let config = config(11);
        let url = nats.url();
        let mut seen = Vec::new();
        let future = coordinate(
            &url,
            &config,
            2,
            Duration::from_millis(200),
            |p: &Progress| seen.push((p.worker, p.elapsed_ms)),
        );
        fn is_send<T: Send>(t: T) -> T {
            t
        }
        let merged = is_send(future).await.unwrap();
        for w in workers {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap();
        }

        let a = outcome_of(Share { index: 0, count: 2 }, 11);
        let b = outcome_of(Share { index: 1, count: 2 }, 11);
        let mut expected = a.clone();
        expected.merge(b.clone());
        assert_eq!(merged.workers, 2);
        assert_eq!(merged.counters, expected.counters);
        assert_eq!(merged.counters.users, 11);
        assert_eq!(merged.counters.sent, a.counters.sent + b.counters.sent);
        assert_eq!(merged.errors, expected.errors);
        assert_eq!(merged.errors["send: timeout"], 3);
        assert_eq!(merged.offered_rate, 300.0);
        for series in [DELIVERY, ACK] {
            let mut sum = a.totals[&series].clone();
            sum.add(&b.totals[&series]).unwrap();
            assert_eq!(merged.totals[&series], sum);
        }
        assert_eq!(merged.generator.lag, expected.generator.lag);
        assert_eq!(merged.intervals.len(), 6, "same seconds merge into one");
        assert_eq!(sorted(&merged.intervals), sorted(&expected.intervals));
        for (m, e) in merged.intervals.iter().zip(&expected.intervals) {
            assert_eq!(m.histogram, e.histogram);
        }
        seen.sort();
        assert_eq!(seen, vec![(0, 10), (0, 20), (1, 10), (1, 20)]);
    }

    /// Many intervals, each histogram with thousands of distinct values.
    fn big_outcome() -> Outcome {
        let mut o = Outcome::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for second in 0..100u64 {
            let mut h = new_histogram();
            for v in 1..=12_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                h.record_n(v * 7, 1 + x % 5000).unwrap();
            }
            o.intervals.push(Interval {
                series: DELIVERY,
                start_us: second * 1_000_000,
                length_us: 1_000_000,
                histogram: h,
            });
        }
        o
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_result_over_a_mebibyte_arrives_whole() {
        let body = wire::encode_result(Ok(big_outcome()), SystemTime::now());
        assert!(body.len() > 1 << 20, "only {} bytes", body.len());
        let nats = LocalNats::start().unwrap();
        let worker = spawn_worker(&nats.url(), 1, |_, _| async { Ok(big_outcome()) });
        let merged = coordinate(&nats.url(), &config(2), 1, Duration::ZERO, |_| {})
            .await
            .unwrap();
        worker.await.unwrap();
        let expected = big_outcome();
        assert_eq!(merged.workers, 1);
        assert_eq!(merged.intervals.len(), expected.intervals.len());
        for (m, e) in merged.intervals.iter().zip(&expected.intervals) {
            assert_eq!(
                (m.series, m.start_us, m.length_us),
                (e.series, e.start_us, e.length_us)
            );
            assert_eq!(m.histogram, e.histogram);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn too_few_workers_fail_after_ten_seconds() {
        let nats = LocalNats::start().unwrap();
        let _worker = spawn_worker(&nats.url(), 1, fake_run);
        let started = Instant::now();
        let err = coordinate(&nats.url(), &config(4), 2, Duration::ZERO, |_| {})
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("found 1 of 2 workers on {}", nats.url())),
            "{message}"
        );
        assert!(message.contains("chat-loadtest worker --nats"), "{message}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(12),
            "{took:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_worker_error_fails_the_run_and_cancels_the_others() {
        let nats = LocalNats::start().unwrap();
        let started_runs = Arc::new(AtomicUsize::new(0));
        let run = {
            let started_runs = started_runs.clone();
            move |a: Assignment, tx: UnboundedSender<Progress>| {
                started_runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    if a.share.index == 0 {
                        tx.send(progress(0, 1)).unwrap();
                        Err("login: AlreadyOnline for every user".to_string())
                    } else {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                }
            }
        };
        let workers = [
            spawn_worker(&nats.url(), 1, run.clone()),
            spawn_worker(&nats.url(), 1, run),
        ];
        let err = coordinate(&nats.url(), &config(4), 2, Duration::ZERO, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DistributedError::Worker { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("login: AlreadyOnline for every user"),
            "{err}"
        );
        for w in workers {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("the busy worker was cancelled")
                .unwrap();
        }
        assert_eq!(started_runs.load(Ordering::SeqCst), 2);
    }
}
