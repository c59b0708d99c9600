//! What a run produced: latency histograms, interval histograms, counters,
//! errors by kind, the generator's own lag and, through a balancer, how the
//! connections were spread over the nodes.
//!
//! A run (or one worker's share of a distributed run) ends with one
//! [`Outcome`]; [`Outcome::merge`] adds another worker's into it without loss
//! (histograms are added bucket by bucket, counters summed), and the
//! `report` module turns the merged one into tables, JSON, `.hgrm` files,
//! interval logs and a plot. Every histogram records microseconds.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use crate::server::Usage;

/// Highest latency a histogram records, in µs (one hour); larger values are
/// clamped to it.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits of every histogram.
pub const SIGFIG: u8 = 3;

/// An empty latency histogram (µs, 1 µs to one hour, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// Records `us` (at least 1, clamped to [`HIGHEST_US`]).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, HIGHEST_US));
}

/// What a latency histogram measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// TCP connect (through the balancer when it is the target).
    Connect,
    /// Register request to its reply.
    Register,
    /// Login request to its reply (offline messages included).
    Login,
    /// A chat send to the node's acknowledgement (`SendDirectReply`, JSON 12/16).
    SendAck,
    /// A chat send to its receipt by each recipient.
    Delivery,
    /// A `HistoryRequest` to its page (a browse's first page from the
    /// browse's scheduled time, each later page from when it was asked).
    History,
    /// A `MarkReadRequest` to its reply.
    MarkRead,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Connect,
        Metric::Register,
        Metric::Login,
        Metric::SendAck,
        Metric::Delivery,
        Metric::History,
        Metric::MarkRead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Connect => "connect",
            Metric::Register => "register",
            Metric::Login => "login",
            Metric::SendAck => "send_ack",
            Metric::Delivery => "delivery",
            Metric::History => "history",
            Metric::MarkRead => "mark_read",
        }
    }

    /// The inverse of [`Metric::name`].
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where latency is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// From the time the schedule said the action should start: includes
    /// the time an action waited behind a stalled server or generator
    /// (coordinated omission corrected).
    Corrected,
    /// From the time the action actually started (what a closed-loop tool
    /// reports).
    Uncorrected,
}

impl Correction {
    pub const BOTH: [Correction; 2] = [Correction::Corrected, Correction::Uncorrected];

    pub fn name(self) -> &'static str {
        match self {
            Correction::Corrected => "corrected",
            Correction::Uncorrected => "uncorrected",
        }
    }
}

/// One histogram of a run: a metric, measured one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Series {
    pub metric: Metric,
    pub correction: Correction,
}

impl Series {
    pub fn new(metric: Metric, correction: Correction) -> Series {
        Series { metric, correction }
    }

    /// Every series, in report order.
    pub fn all() -> impl Iterator<Item = Series> {
        Metric::ALL
            .into_iter()
            .flat_map(|m| Correction::BOTH.into_iter().map(move |c| Series::new(m, c)))
    }

    /// `delivery.corrected`: the tag in interval logs and the file stem of
    /// `.hgrm` files.
    pub fn tag(self) -> String {
        format!("{}.{}", self.metric.name(), self.correction.name())
    }

    /// The inverse of [`Series::tag`].
    pub fn from_tag(tag: &str) -> Option<Series> {
        Series::all().find(|s| s.tag() == tag)
    }
}

/// Which part of the run a second belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Users connect, register, log in, make friends and groups.
    Setup,
    /// Traffic runs but is not measured.
    Warmup,
    /// Traffic runs and is measured.
    Measure,
    /// Sending has stopped; messages in flight are awaited.
    Drain,
}

/// One interval (normally one second) of one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interval {
    pub series: Series,
    /// Start, in µs since the run's start (the common clock of all workers).
    pub start_us: u64,
    pub length_us: u64,
    #[serde(with = "histogram_serde")]
    pub histogram: Histogram<u64>,
}

/// Defines [`Counters`] and [`Counts`] from one list of counters.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// Counts of a run. "Window" counts cover the measured window only (rates
        /// are computed from them); the others cover the whole run, warmup and
        /// drain included, since a message lost in the warmup is still lost.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Counters {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl Counters {
            /// Every counter by name (its serde key), in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }

            fn add(&mut self, o: &Counters) {
                $(self.$field += o.$field;)*
            }
        }

        /// The live counterpart of [`Counters`], one atomic per counter,
        /// that a running recorder adds to.
        #[derive(Debug, Default)]
        pub struct Counts {
            $(pub $field: std::sync::atomic::AtomicU64,)*
        }

        impl Counts {
            pub fn snapshot(&self) -> Counters {
                Counters {
                    $($field: self.$field.load(std::sync::atomic::Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Virtual users that were set up (connected, registered, logged in).
    users,
    /// Connections opened, and those that failed to open.
    connections_opened,
    connections_failed,
    /// Connections the server closed (or that broke) while the run went on.
    disconnects,
    /// `--reconnect`: users connected and logged in again after their
    /// connection closed (each time).
    reconnects,
    /// Connections open when sending stopped.
    connections_at_end,
    logins,
    logouts,
    /// Actions the schedule asked for in the measured window (sends; for
    /// `connect`, connections).
    window_offered,
    /// Of those, the ones that were made (written to a socket).
    window_sent,
    /// Of those, the ones the server acknowledged.
    window_acked,
    /// Messages written to a socket, whole run.
    sent,
    /// Sends the server acknowledged, whole run.
    acked,
    /// Sends the server answered with an error, or that got no answer.
    send_failed,
    /// `--reconnect`: actions due while their user was disconnected (between
    /// a drop and the re-login), not made; the sends among them count in
    /// `send_failed` too (error `send: not connected`), not in `expected`.
    not_connected,
    /// Receipts due from messages written (one per recipient).
    expected,
    /// Receipts that came, each counted once.
    delivered,
    /// Of those, the ones pushed on a connection (live).
    delivered_live,
    /// Of those, the ones listed in the pending messages of a login reply
    /// other than a reconnection's (the first login, a `relogin` action).
    delivered_at_login,
    /// Of those, the ones listed in the pending messages of the login reply
    /// of a reconnection (`--reconnect`): stored while the user was away,
    /// or pushed to the connection that broke and not acknowledged.
    delivered_after_reconnect,
    /// Receipts of a message already received by that recipient under
    /// another server id (a real duplicate).
    duplicated,
    /// Receipts of a server id the recipient had already seen: the node
    /// sending again what was not acknowledged before a re-login, which the
    /// protocol allows (at-least-once); not a duplicate.
    redelivered,
    /// Receipts that came after a later message of the same sender to the
    /// same recipient (or group).
    out_of_order,
    /// Receipts due that never came (`expected - delivered`).
    lost,
    /// `--reconnect`: receipts of sends whose acknowledgement never came
    /// (the connection closed, a timeout, an error) that no recipient got
    /// by the end: the server did not take the message, so they are taken
    /// out of `expected` and are not lost. (A message of unknown outcome
    /// that some recipient got was taken: its other recipients stay due.)
    unconfirmed,
    /// Scheduled actions the generator made late (more than the lag
    /// threshold after their time) or could not make at all.
    late,
    /// `HistoryRequest`s sent (one per page asked for), whole run.
    history_requests,
    /// Of those, the ones answered with a page.
    history_pages,
    /// Of those, the ones answered with an error or not at all.
    history_failed,
    /// Messages in the pages received.
    history_messages,
    /// `MarkReadRequest`s sent, whole run.
    mark_read_requests,
    /// Of those, the ones the node accepted.
    marked_read,
    /// Of those, the ones answered with an error or not at all.
    mark_read_failed,
}

/// How far behind its schedule the generator itself ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generator {
    /// Lag of each scheduled action: actual start minus intended start.
    #[serde(with = "histogram_serde")]
    pub lag: Histogram<u64>,
    /// An action later than this counts in [`Counters::late`].
    pub late_threshold_us: u64,
}

impl Default for Generator {
    fn default() -> Self {
        Generator {
            lag: new_histogram(),
            late_threshold_us: 0,
        }
    }
}

/// How connections were spread over nodes (when the target routes them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    /// Node id → connections of this run on it at the end.
    pub per_node: BTreeMap<String, u64>,
}

impl Balance {
    pub fn max(&self) -> u64 {
        self.per_node.values().copied().max().unwrap_or(0)
    }

    pub fn mean(&self) -> f64 {
        if self.per_node.is_empty() {
            return 0.0;
        }
        self.per_node.values().sum::<u64>() as f64 / self.per_node.len() as f64
    }

    /// Coefficient of variation: standard deviation over mean (0 = even).
    pub fn cv(&self) -> f64 {
        let mean = self.mean();
        if mean == 0.0 {
            return 0.0;
        }
        let n = self.per_node.len() as f64;
        let var = self
            .per_node
            .values()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        var.sqrt() / mean
    }
}

/// One group of server processes (the nodes, or the balancer) sampled at
/// three moments of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessCost {
    /// Before the first user connected.
    pub before: Usage,
    /// At the start of the measured window.
    pub start: Usage,
    /// At its end (connect: after the users stayed online).
    pub end: Usage,
}

impl ProcessCost {
    /// CPU seconds spent between the start and the end of the window.
    pub fn cpu_seconds(&self) -> f64 {
        (self.end.cpu_seconds - self.start.cpu_seconds).max(0.0)
    }

    /// Resident memory gained since before the users connected (may be
    /// negative: memory returned to the system).
    pub fn rss_growth_bytes(&self) -> i64 {
        self.end.rss_bytes as i64 - self.before.rss_bytes as i64
    }
}

/// What the servers under test cost in the measured window (see
/// [`crate::server`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerCost {
    /// `local` (`/proc` of `--local`'s processes) or `metrics`
    /// (`--server-metrics`); `None` in the outcome of a worker that only
    /// counted (another worker sampled the servers).
    pub source: Option<String>,
    /// Pids or URLs sampled.
    pub sampled: String,
    /// Node processes (or endpoints) summed in `nodes`.
    pub node_count: u32,
    /// The nodes, summed (with `--server-metrics`: every endpoint, summed).
    pub nodes: Option<ProcessCost>,
    /// `--local`'s balancer.
    pub balancer: Option<ProcessCost>,
    /// Time between the window's start and end samples, µs.
    pub sampled_us: u64,
    /// Receipts counted between the window's start and end samples (every
    /// worker's).
    pub deliveries: u64,
    /// Connections of virtual users open at the end sample (every worker's).
    pub connections: u64,
    /// Why a sample failed, if one did (the figures are then missing).
    pub error: Option<String>,
}

impl ServerCost {
    /// CPU µs per message delivered in the window; `None` without deliveries.
    pub fn cpu_us_per_delivered(&self, p: &ProcessCost) -> Option<f64> {
        (self.deliveries > 0).then(|| p.cpu_seconds() * 1e6 / self.deliveries as f64)
    }

    /// Resident memory gained per connection open at the end; `None`
    /// without connections.
    pub fn rss_bytes_per_connection(&self, p: &ProcessCost) -> Option<f64> {
        (self.connections > 0).then(|| p.rss_growth_bytes() as f64 / self.connections as f64)
    }

    /// CPU cores busy on average in the window.
    pub fn cores(&self, p: &ProcessCost) -> Option<f64> {
        (self.sampled_us > 0).then(|| p.cpu_seconds() * 1e6 / self.sampled_us as f64)
    }

    /// Adds another worker's counts; the samples come from the one worker
    /// that took them.
    fn merge(&mut self, other: ServerCost) {
        self.deliveries += other.deliveries;
        self.connections += other.connections;
        if self.source.is_none() && other.source.is_some() {
            self.source = other.source;
            self.sampled = other.sampled;
            self.node_count = other.node_count;
            self.nodes = other.nodes;
            self.balancer = other.balancer;
            self.sampled_us = other.sampled_us;
            self.error = other.error;
        }
    }
}

/// One step of a `ramp` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RampStep {
    /// Offered rate of the step, per second.
    pub rate: f64,
    /// Acknowledged sends per second in the step.
    pub achieved: f64,
    /// Corrected delivery p99 of the step, µs.
    pub p99_us: u64,
    pub sent: u64,
    pub lost: u64,
    /// Whether every SLO held in this step.
    pub held: bool,
}

/// Everything one run, or one worker's share of it, produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Length of the measured window, µs.
    pub window_us: u64,
    /// Offered rate of the measured window, per second (sum over workers).
    pub offered_rate: f64,
    /// Totals of the measured window, one per series with data.
    #[serde(with = "series_map_serde")]
    pub totals: BTreeMap<Series, Histogram<u64>>,
    /// Every interval of every series, in time order per series.
    pub intervals: Vec<Interval>,
    pub counters: Counters,
    /// Error kind (e.g. `send: timeout`, `login: AlreadyOnline`) → count.
    pub errors: BTreeMap<String, u64>,
    pub generator: Generator,
    pub balance: Option<Balance>,
    /// The steps of a `ramp` run, in order.
    pub ramp: Vec<RampStep>,
    /// Workers whose outcomes were merged into this one (1 for a plain run).
    pub workers: u32,
    /// The servers' CPU and memory, when they were sampled (`--local`,
    /// `--server-metrics`).
    #[serde(default)]
    pub server: Option<ServerCost>,
    /// `--chaos`: the faults injected, their recovery and loss.
    #[serde(default)]
    pub chaos: Option<crate::chaos::ChaosOutcome>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            window_us: 0,
            offered_rate: 0.0,
            totals: BTreeMap::new(),
            intervals: Vec::new(),
            counters: Counters::default(),
            errors: BTreeMap::new(),
            generator: Generator::default(),
            balance: None,
            ramp: Vec::new(),
            workers: 1,
            server: None,
            chaos: None,
        }
    }
}

impl Outcome {
    /// The total of `series`, or an empty histogram.
    pub fn total(&self, series: Series) -> Histogram<u64> {
        self.totals
            .get(&series)
            .cloned()
            .unwrap_or_else(new_histogram)
    }

    /// Acknowledged sends per second in the measured window.
    pub fn achieved_rate(&self) -> f64 {
        if self.window_us == 0 {
            return 0.0;
        }
        self.counters.window_acked as f64 * 1e6 / self.window_us as f64
    }

    /// Adds `other` (another worker's share of the same run): histograms
    /// and intervals bucket by bucket, counters and errors by sum; the
    /// window is the longest, the offered rates add up.
    pub fn merge(&mut self, other: Outcome) {
        self.window_us = self.window_us.max(other.window_us);
        self.offered_rate += other.offered_rate;
        for (series, h) in other.totals {
            match self.totals.get_mut(&series) {
                Some(mine) => mine.add(&h).expect("histograms share their bounds"),
                None => {
                    self.totals.insert(series, h);
                }
            }
        }
        for interval in other.intervals {
            let same = self.intervals.iter_mut().find(|i| {
                i.series == interval.series
                    && i.start_us == interval.start_us
                    && i.length_us == interval.length_us
            });
            match same {
                Some(mine) => mine
                    .histogram
                    .add(&interval.histogram)
                    .expect("histograms share their bounds"),
                None => self.intervals.push(interval),
            }
        }
        self.intervals
            .sort_by_key(|i| (i.series, i.start_us, i.length_us));
        self.counters.add(&other.counters);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.generator
            .lag
            .add(&other.generator.lag)
            .expect("histograms share their bounds");
        self.generator.late_threshold_us = self
            .generator
            .late_threshold_us
            .max(other.generator.late_threshold_us);
        match (&mut self.balance, other.balance) {
            (Some(mine), Some(theirs)) => {
                for (node, n) in theirs.per_node {
                    *mine.per_node.entry(node).or_default() += n;
                }
            }
            (None, Some(theirs)) => self.balance = Some(theirs),
            _ => {}
        }
        for (i, step) in other.ramp.into_iter().enumerate() {
            match self.ramp.get_mut(i) {
                Some(mine) => {
                    mine.rate += step.rate;
                    mine.achieved += step.achieved;
                    mine.p99_us = mine.p99_us.max(step.p99_us);
                    mine.sent += step.sent;
                    mine.lost += step.lost;
                    mine.held &= step.held;
                }
                None => self.ramp.push(step),
            }
        }
        self.workers += other.workers;
        match (&mut self.server, other.server) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, Some(theirs)) => self.server = Some(theirs),
            _ => {}
        }
        // Chaos runs are never distributed: the one outcome that has it.
        if self.chaos.is_none() {
            self.chaos = other.chaos;
        }
    }
}

/// Histograms travel (between workers and coordinator) as base64 of
/// HdrHistogram's V2 + DEFLATE encoding, the encoding of interval logs.
pub mod histogram_serde {
    use base64::Engine;
    use hdrhistogram::Histogram;
    use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
    use serde::Deserialize;
    use serde::de::Error;

    pub fn encode(h: &Histogram<u64>) -> String {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(h, &mut bytes)
            .expect("serializing into memory cannot fail");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| e.to_string())?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| format!("{e:?}"))?;
        // Deserialized histograms keep the sender's bounds; widen to ours so
        // that adding never fails.
        let mut out = super::new_histogram();
        out.add(&h).map_err(|e| format!("{e:?}"))?;
        Ok(out)
    }

    pub fn serialize<S: serde::Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(h))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(D::Error::custom)
    }
}

/// The totals map travels as a list of `(series, histogram)` pairs.
mod series_map_serde {
    use std::collections::BTreeMap;

    use hdrhistogram::Histogram;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Series, histogram_serde};

    #[derive(Serialize, Deserialize)]
    struct Entry {
        series: Series,
        histogram: String,
    }

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<Series, Histogram<u64>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter()
            .map(|(series, h)| Entry {
                series: *series,
                histogram: histogram_serde::encode(h),
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Series, Histogram<u64>>, D::Error> {
        Vec::<Entry>::deserialize(d)?
            .into_iter()
            .map(|e| {
                Ok((
                    e.series,
                    histogram_serde::decode(&e.histogram).map_err(D::Error::custom)?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_with(values: &[u64], delivered: u64) -> Outcome {
        let mut h = new_histogram();
        for &v in values {
            record(&mut h, v);
        }
        let series = Series::new(Metric::Delivery, Correction::Corrected);
        let mut o = Outcome::default();
        o.totals.insert(series, h.clone());
        o.intervals.push(Interval {
            series,
            start_us: 1_000_000,
            length_us: 1_000_000,
            histogram: h,
        });
        o.counters.delivered = delivered;
        o.errors.insert("send: timeout".into(), 1);
        o
    }

    #[test]
    fn merge_adds_histograms_intervals_counters_and_errors() {
        let mut a = outcome_with(&[100, 200, 300], 3);
        let b = outcome_with(&[400, 500], 2);
        a.merge(b);
        let series = Series::new(Metric::Delivery, Correction::Corrected);
        assert_eq!(a.totals[&series].len(), 5);
        assert_eq!(
            a.intervals.len(),
            1,
            "same second of the same series merges"
        );
        assert_eq!(a.intervals[0].histogram.len(), 5);
        assert_eq!(a.counters.delivered, 5);
        assert_eq!(a.errors["send: timeout"], 2);
        assert_eq!(a.workers, 2);
    }

    #[test]
    fn outcome_survives_json_round_trip() {
        let o = outcome_with(&[1, 1_000, 1_000_000], 3);
        let text = serde_json::to_string(&o).unwrap();
        let back: Outcome = serde_json::from_str(&text).unwrap();
        let series = Series::new(Metric::Delivery, Correction::Corrected);
        assert_eq!(back.totals[&series], o.totals[&series]);
        assert_eq!(back.intervals[0].histogram, o.intervals[0].histogram);
        assert_eq!(back.counters, o.counters);
    }

    #[test]
    fn merge_sums_server_counts_and_keeps_the_one_sample() {
        let sampled = ServerCost {
            source: Some("metrics".into()),
            sampled: "http://127.0.0.1:9100/metrics".into(),
            node_count: 1,
            nodes: Some(ProcessCost::default()),
            sampled_us: 5_000_000,
            deliveries: 100,
            connections: 10,
            ..ServerCost::default()
        };
        let counted = ServerCost {
            deliveries: 50,
            connections: 5,
            ..ServerCost::default()
        };
        for (first, second) in [
            (counted.clone(), sampled.clone()),
            (sampled.clone(), counted.clone()),
        ] {
            let mut a = Outcome {
                server: Some(first),
                ..Outcome::default()
            };
            a.merge(Outcome {
                server: Some(second),
                ..Outcome::default()
            });
            let s = a.server.unwrap();
            assert_eq!((s.deliveries, s.connections), (150, 15));
            assert_eq!(s.source.as_deref(), Some("metrics"));
            assert_eq!(s.sampled_us, 5_000_000);
            assert!(s.nodes.is_some());
        }
        let mut a = Outcome::default();
        a.merge(Outcome::default());
        assert!(a.server.is_none());
    }

    #[test]
    fn balance_statistics() {
        let b = Balance {
            per_node: [("a".to_string(), 10), ("b".to_string(), 30)].into(),
        };
        assert_eq!(b.max(), 30);
        assert_eq!(b.mean(), 20.0);
        assert!((b.cv() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn series_tags_round_trip() {
        for s in Series::all() {
            assert_eq!(Series::from_tag(&s.tag()), Some(s));
        }
        assert_eq!(Series::from_tag("nope"), None);
    }
}
