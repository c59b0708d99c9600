//! One run, or one worker's share of a distributed run, from the first
//! connection to the outcome: set the users up, run the traffic segments
//! (one for a fixed rate, one per step for a ramp), wait for messages in
//! flight, see how connections were spread over the nodes, and hand back
//! everything recorded. A ticker reports progress to a [`Sink`] meanwhile.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use crate::chaos::{self, ChaosConfig, ChaosOutcome, Injector};
use crate::config::{Model, RunConfig, ScenarioKind, Target};
use crate::outcome::{Balance, Metric, Outcome, ProcessCost, RampStep, ServerCost};
use crate::population::{self, Arrivals, Population, SetupProgress};
use crate::record::{Clock, Recorder, Second};
use crate::server::{Probe, Sample, Usage};
use crate::slo::{self, Observed, Slo};
use crate::target::{DialError, Dialer};
use crate::traffic::{self, Segment};

/// Which part of a run is going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Setup = 0,
    Traffic = 1,
    Drain = 2,
    Done = 3,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Setup => "setup",
            Stage::Traffic => "traffic",
            Stage::Drain => "drain",
            Stage::Done => "done",
        }
    }

    fn from_u8(v: u8) -> Stage {
        match v {
            0 => Stage::Setup,
            1 => Stage::Traffic,
            2 => Stage::Drain,
            _ => Stage::Done,
        }
    }
}

/// What the ticker reports.
#[derive(Debug, Clone)]
pub enum Tick {
    /// Setup progress (several times a second).
    Setup {
        stage: &'static str,
        done: u64,
        total: u64,
    },
    /// One second of the run.
    Second(Box<LiveSecond>),
}

/// One second, as the live line and `/metrics` show it.
#[derive(Debug, Clone)]
pub struct LiveSecond {
    pub elapsed: Duration,
    pub stage: Stage,
    pub connections: u64,
    /// The schedule's rate in that second (0 outside traffic).
    pub offered_per_s: f64,
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    pub errors: u64,
    /// Counters so far.
    pub counters: crate::outcome::Counters,
    /// Corrected p99 of that second (delivery, else send ack, else login,
    /// else connect), µs.
    pub p99_us: Option<u64>,
    pub second: Second,
    /// The servers' usage now, when they are sampled (see [`Probe`]).
    pub server: Option<LiveServer>,
}

/// The servers' usage at one second of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveServer {
    /// The nodes (or the `--server-metrics` endpoints), summed.
    pub nodes: LiveUsage,
    /// `--local`'s balancer.
    pub balancer: Option<LiveUsage>,
}

/// One group of server processes at one second of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveUsage {
    pub usage: Usage,
    /// CPU seconds spent in the last second per message delivered in it.
    pub cpu_seconds_per_delivered: Option<f64>,
    /// Resident memory gained since before the users connected, per
    /// connection open now.
    pub rss_bytes_per_connection: Option<f64>,
}

/// Where ticks go (the terminal, `/metrics`, a coordinator).
pub type Sink = Arc<dyn Fn(&Tick) + Send + Sync>;

/// This process's part of a run.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// Worker index (0 for a plain run): part of user names.
    pub worker: u32,
    pub users: u64,
    /// Share of the run's rate.
    pub rate_share: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("target: {0}")]
    Target(#[from] DialError),
    #[error("no user could be set up ({0}); is the target up?")]
    NoUsers(String),
    #[error(
        "the {0} scenario needs replies to group requests, which this server does not send (the seed's JSON server never says which id a new group got)"
    )]
    NoGroups(&'static str),
}

/// Runs `config`'s scenario for `part`, with the clock's zero at `base`.
/// With a `probe`, the servers' CPU and memory are sampled (before the users
/// connect, at the start and the end of the window, and once a second).
/// With `chaos` (and `config.chaos`), faults are injected during the
/// traffic (see [`crate::chaos`]).
pub async fn run(
    config: Arc<RunConfig>,
    part: Part,
    base: Instant,
    sink: Sink,
    probe: Option<Probe>,
    chaos: Option<Injector>,
) -> Result<Outcome, RunError> {
    let rec = Arc::new(Recorder::new(
        Clock::starting_at(base),
        config.late_threshold,
    ));
    let chaos = chaos.zip(config.chaos.clone());
    if chaos.is_some() {
        rec.track_faults();
    }
    if config.model == Model::Closed && config.scenario != ScenarioKind::Connect {
        rec.window_by_start();
    }
    let meter = Arc::new(Meter {
        // A worker without the probe still counts its deliveries and
        // connections for the worker that samples the servers.
        on: probe.is_some() || !config.server_metrics.is_empty(),
        probe: probe.map(Arc::new),
        before: Mutex::new(None),
    });
    let dialer = Arc::new(Dialer::new(&config).await?);
    let stage = Arc::new(AtomicU8::new(Stage::Setup as u8));
    let offered_rate = Arc::new(AtomicU64::new(0f64.to_bits()));
    let setup = Arc::new(SetupProgress::default());
    let ticker = tokio::spawn(tick(
        rec.clone(),
        stage.clone(),
        offered_rate.clone(),
        setup.clone(),
        meter.clone(),
        sink,
    ));
    let context = Context {
        config: &config,
        rec: &rec,
        stage: &stage,
        offered_rate: &offered_rate,
        meter: &meter,
        chaos,
    };
    let result = drive(&context, part, &dialer, &setup).await;
    stage.store(Stage::Done as u8, Ordering::Relaxed);
    ticker.abort();
    let ended = result?;
    let mut outcome = rec.finish(part_rate(&config, part));
    outcome.balance = ended.balance;
    outcome.ramp = ended.ramp;
    outcome.server = ended.server;
    outcome.chaos = ended.chaos;
    Ok(outcome)
}

fn part_rate(config: &RunConfig, part: Part) -> f64 {
    match config.scenario {
        ScenarioKind::Ramp => 0.0,
        _ => config.rate * part.rate_share,
    }
}

/// What [`drive`] works with.
struct Context<'a> {
    config: &'a Arc<RunConfig>,
    rec: &'a Arc<Recorder>,
    stage: &'a AtomicU8,
    offered_rate: &'a AtomicU64,
    meter: &'a Arc<Meter>,
    chaos: Option<(Injector, ChaosConfig)>,
}

impl Context<'_> {
    fn stage(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Relaxed);
    }

    fn offer(&self, rate: f64) {
        self.offered_rate.store(rate.to_bits(), Ordering::Relaxed);
    }
}

/// What a run ends with besides the recorder's outcome.
struct Ended {
    balance: Option<Balance>,
    ramp: Vec<RampStep>,
    server: Option<ServerCost>,
    chaos: Option<ChaosOutcome>,
}

async fn drive(
    cx: &Context<'_>,
    part: Part,
    dialer: &Arc<Dialer>,
    setup: &Arc<SetupProgress>,
) -> Result<Ended, RunError> {
    let (config, rec, meter) = (cx.config, cx.rec, cx.meter);
    let start = rec.clock.now_us() + 10_000;
    let connect = config.scenario == ScenarioKind::Connect;
    let rate = config.rate * part.rate_share;
    let setup_rate = if connect {
        rate
    } else {
        config.connect_rate * users_share(config, part)
    };
    if connect {
        let end = start + (part.users as f64 * 1e6 / rate) as u64;
        rec.set_window(start, end + 1);
        cx.offer(rate);
        crate::record::add(&rec.counts.window_offered, part.users);
    }
    let arrivals = Arrivals {
        worker: part.worker,
        count: part.users,
        start_us: start,
        rate: setup_rate,
    };
    // The servers before any user connects: the base of memory per connection.
    let before = meter.mark(rec, 0).await;
    meter.remember_before(&before);
    let pop = Arc::new(population::set_up(config, arrivals, dialer, rec, setup).await);
    if connect {
        crate::record::add(
            &rec.counts.window_sent,
            rec.counts.connections_opened.load(Ordering::Relaxed),
        );
    }
    if pop.users.is_empty() {
        return Err(RunError::NoUsers(first_error(rec)));
    }
    if matches!(
        config.scenario,
        ScenarioKind::Group | ScenarioKind::Mixed | ScenarioKind::History
    ) && pop.groups.is_empty()
        && rec
            .errors()
            .keys()
            .any(|k| k.contains("no_group_id_from_server"))
    {
        return Err(RunError::NoGroups(config.scenario.name()));
    }
    let mut steps = Vec::new();
    let server;
    let mut faults = None;
    if connect {
        // Hold the connections (idle, logged in) for the duration: what a
        // node's memory per connection is measured on.
        cx.stage(Stage::Traffic);
        cx.offer(0.0);
        tokio::time::sleep(config.duration).await;
        let end = meter.mark(rec, open_connections(&pop)).await;
        server = meter.cost(&before, &before, &end);
    } else {
        cx.stage(Stage::Traffic);
        let t0 = rec.clock.now_us() + 100_000;
        let drain_until;
        if config.scenario == ScenarioKind::Ramp {
            let first = meter.mark_at(rec, &pop, t0);
            steps = ramp(cx, part, t0, &pop).await;
            let end = meter.mark(rec, open_connections(&pop)).await;
            server = meter.cost(&before, &joined(first).await, &end);
            drain_until = tokio::time::Instant::now() + config.drain;
        } else {
            let measure = t0 + config.warmup.as_micros() as u64;
            let end = measure + config.duration.as_micros() as u64;
            rec.set_window(measure, end);
            cx.offer(rate);
            let segment = Segment {
                start_us: t0,
                end_us: end,
                rate,
            };
            let first = meter.mark_at(rec, &pop, measure);
            let last = meter.mark_at(rec, &pop, end);
            drain_until = rec.clock.at(end) + config.drain;
            faults = cx.chaos.clone().map(|(injector, chaos)| {
                let schedule = chaos::Schedule {
                    t0,
                    end_us: end,
                    deadline: drain_until,
                    offered_rate: rate,
                };
                tokio::spawn(chaos::run(
                    injector,
                    chaos,
                    schedule,
                    pop.clone(),
                    rec.clone(),
                ))
            });
            traffic::run_segment(segment, &pop, rec, config).await;
            tokio::time::sleep_until(rec.clock.at(end)).await;
            server = meter.cost(&before, &joined(first).await, &joined(last).await);
        }
        cx.offer(0.0);
        cx.stage(Stage::Drain);
        drain(rec, &pop, drain_until).await;
    }
    let chaos = match (faults, &cx.chaos) {
        (Some(task), Some((_, chaos))) => {
            let mut faults = task.await.unwrap_or_default();
            let (acked_lost, lost_before_faults) = pop
                .acked
                .as_ref()
                .map_or((0, 0), |log| log.attribute(&pop, &mut faults));
            let found_at_final_login = match (&pop.acked, acked_lost) {
                (Some(log), 1..) => log.found_at_login(&pop, &config.password).await,
                _ => 0,
            };
            Some(ChaosOutcome {
                every_us: chaos.every.as_micros() as u64,
                lease_ttl_us: chaos.lease_ttl.as_micros() as u64,
                faults,
                acked_lost,
                lost_before_faults,
                found_at_final_login,
                delivery_outside_faults: rec
                    .outside_faults()
                    .unwrap_or_else(crate::outcome::new_histogram),
            })
        }
        _ => None,
    };
    for u in &pop.users {
        u.ack_all();
    }
    let balance = balance(config, &pop).await;
    finish_population(&pop, rec).await;
    Ok(Ended {
        balance,
        ramp: steps,
        server,
        chaos,
    })
}

/// Connections of the population still open.
fn open_connections(pop: &Population) -> u64 {
    pop.users
        .iter()
        .filter(|u| !u.session().is_closed())
        .count() as u64
}

async fn joined(mark: tokio::task::JoinHandle<Mark>) -> Mark {
    mark.await.unwrap_or_default()
}

/// The run's counts and the servers' usage at one moment.
#[derive(Debug, Clone, Default)]
struct Mark {
    at_us: u64,
    delivered: u64,
    connections: u64,
    /// The servers' usage, when there is a probe.
    sample: Option<Result<Sample, String>>,
}

/// Takes [`Mark`]s for the server's cost.
struct Meter {
    probe: Option<Arc<Probe>>,
    /// Whether this part counts for a server cost (a probe here, or
    /// `--server-metrics` sampled by another worker).
    on: bool,
    /// The servers before the users connected (for the live figures).
    before: Mutex<Option<Sample>>,
}

impl Meter {
    /// The servers' usage now (on a blocking thread), `None` without a probe.
    async fn sample(&self) -> Option<Result<Sample, String>> {
        let probe = self.probe.clone()?;
        Some(
            match tokio::task::spawn_blocking(move || probe.sample()).await {
                Ok(sampled) => sampled.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// A mark now, with `connections` open.
    async fn mark(&self, rec: &Recorder, connections: u64) -> Mark {
        if !self.on {
            return Mark::default();
        }
        let at_us = rec.clock.now_us();
        let delivered = rec.counts.delivered.load(Ordering::Relaxed);
        let sample = self.sample().await;
        Mark {
            at_us,
            delivered,
            connections,
            sample,
        }
    }

    /// Keeps the servers' usage before the users connected, the base of the
    /// live memory per connection.
    fn remember_before(&self, before: &Mark) {
        if let Some(Ok(s)) = &before.sample {
            *self.before.lock().unwrap_or_else(PoisonError::into_inner) = Some(*s);
        }
    }

    /// A mark at `at_us` on the run's clock, taken by a task.
    fn mark_at(
        self: &Arc<Self>,
        rec: &Arc<Recorder>,
        pop: &Arc<Population>,
        at_us: u64,
    ) -> tokio::task::JoinHandle<Mark> {
        let (meter, rec, pop) = (self.clone(), rec.clone(), pop.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(rec.clock.at(at_us)).await;
            meter.mark(&rec, open_connections(&pop)).await
        })
    }

    /// The servers' cost between `start` and `end`, memory from `before`.
    fn cost(&self, before: &Mark, start: &Mark, end: &Mark) -> Option<ServerCost> {
        if !self.on {
            return None;
        }
        let mut cost = ServerCost {
            deliveries: end.delivered.saturating_sub(start.delivered),
            connections: end.connections,
            ..ServerCost::default()
        };
        let Some(probe) = &self.probe else {
            return Some(cost);
        };
        cost.source = Some(probe.source().to_string());
        cost.sampled = probe.describe();
        cost.node_count = probe.node_count();
        cost.sampled_us = end.at_us.saturating_sub(start.at_us);
        let samples = [&before.sample, &start.sample, &end.sample];
        match samples.map(|s| s.clone().unwrap_or_else(|| Err("not sampled".into()))) {
            [Ok(b), Ok(s), Ok(e)] => {
                cost.nodes = Some(ProcessCost {
                    before: b.nodes,
                    start: s.nodes,
                    end: e.nodes,
                });
                if let (Some(before), Some(start), Some(end)) = (b.balancer, s.balancer, e.balancer)
                {
                    cost.balancer = Some(ProcessCost { before, start, end });
                }
            }
            failed => {
                let error = failed.into_iter().find_map(Result::err);
                cost.error = error;
            }
        }
        if let Some(e) = &cost.error {
            tracing::warn!(error = %e, "the servers could not be sampled");
        }
        Some(cost)
    }

    /// The servers now, for the live figures: CPU per message delivered
    /// since `last`, memory per connection open now.
    async fn live(
        &self,
        last: &mut Option<(Sample, u64)>,
        delivered: u64,
        connections: u64,
    ) -> Option<LiveServer> {
        self.probe.as_ref()?;
        let now = tokio::time::timeout(Duration::from_millis(500), self.sample())
            .await
            .ok()??
            .ok()?;
        let before = *self.before.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = last.replace((now, delivered));
        let figure = |usage: Usage, pick: fn(&Sample) -> Option<Usage>| LiveUsage {
            usage,
            cpu_seconds_per_delivered: previous.and_then(|(p, d)| {
                let spent = usage.cpu_seconds - pick(&p)?.cpu_seconds;
                (delivered > d).then(|| spent.max(0.0) / (delivered - d) as f64)
            }),
            rss_bytes_per_connection: before.and_then(|b| {
                let base = pick(&b)?.rss_bytes;
                (connections > 0)
                    .then(|| (usage.rss_bytes as f64 - base as f64) / connections as f64)
            }),
        };
        Some(LiveServer {
            nodes: figure(now.nodes, |s| Some(s.nodes)),
            balancer: now.balancer.map(|b| figure(b, |s| s.balancer)),
        })
    }
}

/// The share of all users this part has (the rate share for a fixed-rate
/// scenario is the same number).
fn users_share(config: &RunConfig, part: Part) -> f64 {
    part.users as f64 / config.users.max(1) as f64
}

/// Runs ramp steps until one misses an objective; returns every step run.
async fn ramp(cx: &Context<'_>, part: Part, t0: u64, pop: &Arc<Population>) -> Vec<RampStep> {
    let (config, rec) = (cx.config, cx.rec);
    let step_us = config.ramp.step_duration.as_micros() as u64;
    let rates = config.ramp_rates();
    rec.set_window(t0, t0 + step_us * rates.len() as u64);
    let mut steps = Vec::new();
    let mut start = t0;
    for total_rate in rates {
        let rate = total_rate * part.rate_share;
        cx.offer(rate);
        let before = rec.counts.snapshot();
        let errors_before = rec.errors_total();
        let segment = Segment {
            start_us: start,
            end_us: start + step_us,
            rate,
        };
        traffic::run_segment(segment, pop, rec, config).await;
        tokio::time::sleep_until(rec.clock.at(segment.end_us)).await;
        // Let the last second of the step close.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let after = rec.counts.snapshot();
        let from = segment.start_us;
        let to = segment.end_us;
        let lookup = |m: Metric| rec.corrected_between(m, from, to);
        let expected = after.expected - before.expected;
        let backlog =
            (after.expected - after.delivered).saturating_sub(before.expected - before.delivered);
        let seen = Observed {
            main_metric: Metric::Delivery,
            corrected: &lookup,
            lost: backlog,
            expected,
            errors: rec.errors_total() - errors_before,
        };
        let step_slos: Vec<Slo> = config
            .slo
            .iter()
            .filter(|s| !matches!(s, Slo::LossCount(_) | Slo::LossShare(_)))
            .cloned()
            .collect();
        let held = slo::check(&step_slos, &seen).iter().all(|v| v.held);
        let secs = step_us as f64 / 1e6;
        steps.push(RampStep {
            rate,
            achieved: (after.acked - before.acked) as f64 / secs,
            p99_us: lookup(Metric::Delivery).map_or(0, |h| h.value_at_quantile(0.99)),
            sent: after.sent - before.sent,
            lost: backlog,
            held,
        });
        start = rec.clock.now_us();
        if !held {
            break;
        }
    }
    rec.set_window(t0, start);
    steps
}

/// Waits until every receipt due has come and every send, history request
/// and mark-read was answered, or `until`. (Receipts of sends of unknown
/// outcome that reached nobody so far are not waited for.)
async fn drain(rec: &Recorder, pop: &Population, until: tokio::time::Instant) {
    loop {
        let c = rec.counts.snapshot();
        let settled = c.delivered + pop.unconfirmed_missing() >= c.expected
            && c.acked + c.send_failed >= c.sent
            && c.history_pages + c.history_failed >= c.history_requests
            && c.marked_read + c.mark_read_failed >= c.mark_read_requests;
        if settled || tokio::time::Instant::now() >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks each connection which node serves it (through a balancer this is
/// how the balancer spread them).
async fn balance(config: &RunConfig, pop: &Population) -> Option<Balance> {
    let through_balancer = match &config.target {
        Target::Addrs(a) => a.len() == 1,
        Target::Redirect(_) => true,
    };
    if !through_balancer {
        return None;
    }
    let limit = Arc::new(Semaphore::new(256));
    let mut asks = FuturesUnordered::new();
    for u in &pop.users {
        let (u, limit) = (u.clone(), limit.clone());
        asks.push(async move {
            let _permit = limit.acquire().await;
            let session = u.session();
            if session.is_closed() {
                return None;
            }
            session.node_id().await.ok()
        });
    }
    let mut b = Balance::default();
    let mut open = 0;
    while let Some(node) = asks.next().await {
        if let Some(node) = node {
            open += 1;
            *b.per_node.entry(node).or_default() += 1;
        }
    }
    (open > 0).then_some(b)
}

async fn finish_population(pop: &Population, rec: &Recorder) {
    pop.stopping.store(true, Ordering::Relaxed);
    let sessions: Vec<_> = pop.users.iter().map(|u| u.session()).collect();
    let open = sessions.iter().filter(|s| !s.is_closed()).count();
    crate::record::add(&rec.counts.connections_at_end, open as u64);
    let mut closing = FuturesUnordered::new();
    for s in &sessions {
        closing.push(s.close());
    }
    while closing.next().await.is_some() {}
    // Sends of unknown outcome that reached nobody were not taken by the
    // server: not due, so not lost.
    let missing = pop.unconfirmed_missing();
    crate::record::add(&rec.counts.unconfirmed, missing);
    rec.counts
        .expected
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
            Some(e.saturating_sub(missing))
        })
        .ok();
}

fn first_error(rec: &Recorder) -> String {
    rec.errors()
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or_else(|| "no error recorded".into(), |(k, n)| format!("{k} ×{n}"))
}

/// Reports setup progress five times a second and closes one interval a second.
async fn tick(
    rec: Arc<Recorder>,
    stage: Arc<AtomicU8>,
    offered_rate: Arc<AtomicU64>,
    setup: Arc<SetupProgress>,
    meter: Arc<Meter>,
    sink: Sink,
) {
    let mut last_server = None;
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut last_roll = Instant::now();
    let mut last = rec.counts.snapshot();
    let mut last_errors = 0;
    loop {
        every.tick().await;
        let now_stage = Stage::from_u8(stage.load(Ordering::Relaxed));
        if now_stage == Stage::Setup {
            sink(&Tick::Setup {
                stage: *setup.stage.lock().unwrap_or_else(PoisonError::into_inner),
                done: setup.done.load(Ordering::Relaxed),
                total: setup.total.load(Ordering::Relaxed),
            });
        }
        if last_roll.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_roll = Instant::now();
        let second = rec.roll();
        let secs = second.length_us as f64 / 1e6;
        let counters = rec.counts.snapshot();
        let errors = rec.errors_total();
        let connections = counters
            .connections_opened
            .saturating_sub(counters.disconnects);
        let server = meter
            .live(&mut last_server, counters.delivered, connections)
            .await;
        let live = LiveSecond {
            elapsed: started.elapsed(),
            stage: now_stage,
            connections,
            offered_per_s: f64::from_bits(offered_rate.load(Ordering::Relaxed)),
            acked_per_s: (counters.acked - last.acked) as f64 / secs,
            delivered_per_s: (counters.delivered - last.delivered) as f64 / secs,
            errors: errors - last_errors,
            p99_us: second.p99_us(&[
                Metric::Delivery,
                Metric::SendAck,
                Metric::Login,
                Metric::Connect,
            ]),
            counters: counters.clone(),
            second,
            server,
        };
        last = counters;
        last_errors = errors;
        sink(&Tick::Second(Box::new(live)));
    }
}
