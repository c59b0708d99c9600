//! The worker side of a distributed run: answers discovery while idle,
//! takes one assignment at a time, runs it with the caller's `run` function
//! (publishing its progress and a heartbeat), and sends back the result in
//! chunks. A cancel from the coordinator drops the run.

use std::future::Future;
use std::time::{Duration, SystemTime};

use async_nats::{Client, Message, Subscriber};
use futures_util::StreamExt;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tracing::{info, warn};

use super::wire::{
    self, AssignReply, CHUNK_SIZE, DISCOVER, Hello, PROTOCOL, RunEvent, Topic, from_json, to_json,
};
use super::{Assignment, DistributedError, Progress, connect};
use crate::outcome::Outcome;

/// How often a busy worker says it is alive, whatever its run sends.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A start time further in the past than this hints at a clock out of sync.
const LATE_START_WARNING: Duration = Duration::from_secs(1);

/// Worker: waits for assignments on `nats_url`, runs each with `run` (one at
/// a time; while busy it does not answer discovery), publishing the
/// `Progress` values `run` sends on its channel, then sends the result back.
/// Serves `runs` runs then returns (0 = forever).
pub async fn serve<F, Fut>(nats_url: &str, runs: u64, run: F) -> Result<(), DistributedError>
where
    F: Fn(Assignment, UnboundedSender<Progress>) -> Fut,
    Fut: Future<Output = Result<Outcome, String>>,
{
    let host = host_name();
    let id = format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    );
    let client = connect(nats_url, &format!("chat-loadtest worker {id}")).await?;
    let discover = client
        .subscribe(DISCOVER)
        .await
        .map_err(|e| DistributedError::nats("subscribe", e))?;
    let assign = client
        .subscribe(wire::worker_subject(&id))
        .await
        .map_err(|e| DistributedError::nats("subscribe", e))?;
    client
        .flush()
        .await
        .map_err(|e| DistributedError::nats("flush", e))?;
    info!(worker = %id, nats = nats_url, "worker waiting for runs");
    let mut worker = Worker {
        client,
        hello: Hello {
            worker: id,
            host,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL,
        },
        discover,
        assign,
    };
    let mut served = 0;
    while runs == 0 || served < runs {
        tokio::select! {
            m = worker.discover.next() => {
                worker.answer_discovery(m.ok_or(DistributedError::Closed)?).await?;
            }
            m = worker.assign.next() => {
                if let Some((job, assignment)) = worker.accept(m.ok_or(DistributedError::Closed)?).await? {
                    let (tx, rx) = mpsc::unbounded_channel();
                    worker.run_one(job, run(assignment, tx), rx).await?;
                    served += 1;
                }
            }
        }
    }
    worker
        .client
        .flush()
        .await
        .map_err(|e| DistributedError::nats("flush", e))
}

struct Worker {
    client: Client,
    hello: Hello,
    discover: Subscriber,
    assign: Subscriber,
}

/// An accepted assignment, with the subscription that may cancel it.
struct Job {
    run_id: String,
    index: u32,
    start_at: SystemTime,
    cancel: Subscriber,
}

impl Worker {
    async fn answer_discovery(&self, m: Message) -> Result<(), DistributedError> {
        let Some(reply) = m.reply else {
            return Ok(());
        };
        self.client
            .publish(reply, to_json(&self.hello).into())
            .await
            .map_err(|e| DistributedError::nats("publish", e))
    }

    async fn reply(&self, m: &Message, answer: AssignReply) -> Result<(), DistributedError> {
        let Some(reply) = m.reply.clone() else {
            return Ok(());
        };
        self.client
            .publish(reply, to_json(&answer).into())
            .await
            .map_err(|e| DistributedError::nats("publish", e))
    }

    /// Takes the assignment in `m` unless it cannot be read. Subscribes to
    /// its cancel subject before accepting, so that a cancel sent after the
    /// coordinator saw the acceptance always arrives.
    async fn accept(&self, m: Message) -> Result<Option<(Job, Assignment)>, DistributedError> {
        let assign: wire::Assign = match from_json(&m.subject, &m.payload) {
            Ok(a) => a,
            Err(e) => {
                warn!("refusing an assignment: {e}");
                let reason = format!("cannot read the assignment: {e}");
                self.reply(&m, AssignReply::Refused { reason }).await?;
                return Ok(None);
            }
        };
        let cancel = self
            .client
            .subscribe(Topic::Cancel.subject(&assign.run_id))
            .await
            .map_err(|e| DistributedError::nats("subscribe", e))?;
        self.reply(&m, AssignReply::Accepted).await?;
        let start_at = wire::from_unix_ms(assign.start_at_ms);
        info!(
            run = %assign.run_id,
            share = format!("{} of {}", assign.share.index + 1, assign.share.count),
            "accepted a run"
        );
        if let Ok(late) = SystemTime::now().duration_since(start_at)
            && late > LATE_START_WARNING
        {
            warn!(
                run = %assign.run_id,
                "the run's start time passed {} ms ago: is this machine's clock synchronized (NTP)?",
                late.as_millis()
            );
        }
        let job = Job {
            run_id: assign.run_id.clone(),
            index: assign.share.index,
            start_at,
            cancel,
        };
        let assignment = Assignment {
            run_id: assign.run_id,
            config: assign.config,
            share: assign.share,
            start_at,
        };
        Ok(Some((job, assignment)))
    }

    /// Drives `running` to its end (or until cancelled), publishing what
    /// comes on `rx`, then publishes the result.
    async fn run_one(
        &mut self,
        job: Job,
        running: impl Future<Output = Result<Outcome, String>>,
        mut rx: UnboundedReceiver<Progress>,
    ) -> Result<(), DistributedError> {
        let Job {
            run_id,
            index,
            start_at,
            mut cancel,
        } = job;
        let progress_subject = Topic::Progress.subject(&run_id);
        let mut running = Box::pin(running);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let busy = format!("busy with run {run_id}");
        let result = loop {
            tokio::select! {
                result = &mut running => break Some(result),
                Some(mut p) = rx.recv() => {
                    p.worker = index;
                    self.publish_event(&progress_subject, RunEvent::Progress(p)).await;
                }
                _ = heartbeat.tick() => {
                    self.publish_event(&progress_subject, RunEvent::Alive { worker: index }).await;
                }
                Some(_) = self.discover.next() => {}
                Some(m) = self.assign.next() => {
                    self.reply(&m, AssignReply::Refused { reason: busy.clone() }).await?;
                }
                Some(m) = cancel.next() => {
                    let reason = from_json::<wire::Cancel>(&m.subject, &m.payload)
                        .map(|c| c.reason)
                        .unwrap_or_else(|e| e.to_string());
                    info!(run = %run_id, "run cancelled by the coordinator: {reason}");
                    break None;
                }
            }
        };
        drop(running);
        let _ = cancel.unsubscribe().await;
        let Some(result) = result else {
            return Ok(());
        };
        while let Ok(mut p) = rx.try_recv() {
            p.worker = index;
            self.publish_event(&progress_subject, RunEvent::Progress(p))
                .await;
        }
        if let Err(message) = &result {
            warn!(run = %run_id, "run failed: {message}");
        }
        let body = wire::encode_result(result, start_at);
        let result_subject = Topic::Result.subject(&run_id);
        for payload in wire::chunk(index, &body, self.chunk_size()) {
            self.client
                .publish(result_subject.clone(), payload.into())
                .await
                .map_err(|e| DistributedError::nats("publishing the result", e))?;
        }
        self.client
            .flush()
            .await
            .map_err(|e| DistributedError::nats("flush", e))?;
        info!(run = %run_id, bytes = body.len(), "result sent");
        Ok(())
    }

    /// Progress is best effort: a lost message only delays the display.
    async fn publish_event(&self, subject: &str, event: RunEvent) {
        if let Err(e) = self
            .client
            .publish(subject.to_owned(), to_json(&event).into())
            .await
        {
            warn!("cannot publish progress: {e}");
        }
    }

    /// [`CHUNK_SIZE`], or less when the server allows less, leaving room for
    /// the chunk's header line.
    fn chunk_size(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => CHUNK_SIZE,
            limit => CHUNK_SIZE.min(limit.saturating_sub(1024).max(1024)),
        }
    }
}

/// This machine's name, reduced to what a NATS subject token may hold.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "worker".into()
    } else {
        name
    }
}
