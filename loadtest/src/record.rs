//! The recorder: where every measurement of a run goes while it runs.
//!
//! Latencies are recorded twice, corrected (from the intended start) and
//! uncorrected (from the actual start), into the current one-second
//! interval and, when the action's intended time falls in the measured
//! window, into the window's totals. [`Recorder::roll`] closes the current
//! interval once a second (the live line, the interval log, `/metrics`);
//! counters are atomics; [`Recorder::finish`] turns it all into an
//! [`Outcome`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::outcome::{
    Correction, Counts, Generator, Interval, Metric, Outcome, Series, new_histogram, record,
};

/// The run's clock: µs since the common start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn starting_at(base: Instant) -> Clock {
        Clock { base }
    }

    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// The instant `us` after the start (in the past if `us` is negative
    /// relative to now, which `sleep_until` treats as "at once").
    pub fn at(&self, us: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.instant(us))
    }

    /// The same, as a standard instant.
    pub fn instant(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    add(c, 1);
}

struct Histograms {
    current: BTreeMap<Series, Histogram<u64>>,
    current_start_us: u64,
    totals: BTreeMap<Series, Histogram<u64>>,
    intervals: Vec<Interval>,
    lag: Histogram<u64>,
    /// `--chaos`: fault windows `[start, end)` µs (end `u64::MAX` while a
    /// fault recovers).
    faults: Vec<(u64, u64)>,
    /// `--chaos`: corrected delivery latency of the window's messages whose
    /// time in flight overlaps no fault window.
    outside_faults: Option<Histogram<u64>>,
}

/// One closed second, for the live line.
#[derive(Debug, Clone)]
pub struct Second {
    pub start_us: u64,
    pub length_us: u64,
    /// Each series' histogram of that second.
    pub histograms: BTreeMap<Series, Histogram<u64>>,
}

impl Second {
    /// The corrected p99 of the first metric in `metrics` with data, µs.
    pub fn p99_us(&self, metrics: &[Metric]) -> Option<u64> {
        metrics.iter().find_map(|&m| {
            self.histograms
                .get(&Series::new(m, Correction::Corrected))
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(0.99))
        })
    }
}

/// The generator's lag of many actions, recorded apart and added to the
/// recorder in one go ([`Recorder::add_lags`]).
pub struct Lags {
    histogram: Histogram<u64>,
    late: u64,
    threshold_us: u64,
}

impl Lags {
    /// Records how late an action intended at `intended_us` started at
    /// `started_us`.
    pub fn record(&mut self, intended_us: u64, started_us: u64) {
        let lag = started_us.saturating_sub(intended_us);
        if lag > self.threshold_us {
            self.late += 1;
        }
        record(&mut self.histogram, lag);
    }

    /// Late actions recorded and not yet added.
    pub fn late(&self) -> u64 {
        self.late
    }
}

pub struct Recorder {
    pub clock: Clock,
    pub counts: Counts,
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    /// Whether an action belongs to the window by its actual start (closed
    /// model) rather than its intended time.
    window_by_start: AtomicBool,
    late_threshold_us: u64,
    histograms: Mutex<Histograms>,
    errors: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recorder {
    pub fn new(clock: Clock, late_threshold: Duration) -> Recorder {
        Recorder {
            clock,
            counts: Counts::default(),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            window_by_start: AtomicBool::new(false),
            late_threshold_us: late_threshold.as_micros() as u64,
            histograms: Mutex::new(Histograms {
                current: BTreeMap::new(),
                current_start_us: clock.now_us(),
                totals: BTreeMap::new(),
                intervals: Vec::new(),
                lag: new_histogram(),
                faults: Vec::new(),
                outside_faults: None,
            }),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sets the measured window: actions intended in `[start, end)` µs.
    pub fn set_window(&self, start_us: u64, end_us: u64) {
        self.window_start_us.store(start_us, Ordering::Relaxed);
        self.window_end_us.store(end_us, Ordering::Relaxed);
    }

    pub fn window(&self) -> (u64, u64) {
        (
            self.window_start_us.load(Ordering::Relaxed),
            self.window_end_us.load(Ordering::Relaxed),
        )
    }

    pub fn in_window(&self, intended_us: u64) -> bool {
        let (start, end) = self.window();
        (start..end).contains(&intended_us)
    }

    /// From now on an action is in the window when it *started* in it, not
    /// when it was intended to (closed model: a closed loop decides when it
    /// sends; behind a backlog, the actions intended in the window would
    /// start after it).
    pub fn window_by_start(&self) {
        self.window_by_start.store(true, Ordering::Relaxed);
    }

    /// Whether an action intended at `intended_us` and started at
    /// `started_us` belongs to the measured window.
    pub fn action_in_window(&self, intended_us: u64, started_us: u64) -> bool {
        if self.window_by_start.load(Ordering::Relaxed) {
            self.in_window(started_us)
        } else {
            self.in_window(intended_us)
        }
    }

    /// Records one action of `metric` intended at `intended_us`, started at
    /// `started_us` and done now.
    pub fn latency(&self, metric: Metric, intended_us: u64, started_us: u64) {
        let done = self.clock.now_us();
        let in_window = self.action_in_window(intended_us, started_us);
        let corrected = done.saturating_sub(intended_us);
        let uncorrected = done.saturating_sub(started_us.max(intended_us));
        let mut h = lock(&self.histograms);
        for (correction, us) in [
            (Correction::Corrected, corrected),
            (Correction::Uncorrected, uncorrected),
        ] {
            let series = Series::new(metric, correction);
            record(h.current.entry(series).or_insert_with(new_histogram), us);
            if in_window {
                record(h.totals.entry(series).or_insert_with(new_histogram), us);
            }
        }
        if metric == Metric::Delivery && in_window {
            let Histograms {
                faults,
                outside_faults,
                ..
            } = &mut *h;
            if let Some(quiet) = outside_faults
                && !faults.iter().any(|&(s, e)| intended_us < e && done > s)
            {
                record(quiet, corrected);
            }
        }
    }

    /// `--chaos`: from now on, delivery latencies of messages in flight
    /// outside every fault window are kept apart too.
    pub fn track_faults(&self) {
        lock(&self.histograms).outside_faults = Some(new_histogram());
    }

    /// A fault started at `at_us`: its window is open until
    /// [`Recorder::fault_ended`]. Returns the window's index.
    pub fn fault_started(&self, at_us: u64) -> usize {
        let mut h = lock(&self.histograms);
        h.faults.push((at_us, u64::MAX));
        h.faults.len() - 1
    }

    /// Window `i` closes at `at_us` (the fault recovered).
    pub fn fault_ended(&self, i: usize, at_us: u64) {
        if let Some(w) = lock(&self.histograms).faults.get_mut(i) {
            w.1 = at_us;
        }
    }

    /// The delivery latencies outside fault windows (`--chaos`).
    pub fn outside_faults(&self) -> Option<Histogram<u64>> {
        lock(&self.histograms).outside_faults.clone()
    }

    /// Records how late the generator started an action; counts it as late
    /// past the threshold.
    pub fn lag(&self, intended_us: u64, started_us: u64) {
        let lag = started_us.saturating_sub(intended_us);
        if lag > self.late_threshold_us {
            inc(&self.counts.late);
        }
        record(&mut lock(&self.histograms).lag, lag);
    }

    /// A lag histogram of one's own, to record many actions without taking
    /// the recorder's lock for each (the pacer); see [`Recorder::add_lags`].
    pub fn lags(&self) -> Lags {
        Lags {
            histogram: new_histogram(),
            late: 0,
            threshold_us: self.late_threshold_us,
        }
    }

    /// Adds what `lags` recorded, and empties it.
    pub fn add_lags(&self, lags: &mut Lags) {
        add(&self.counts.late, std::mem::take(&mut lags.late));
        if !lags.histogram.is_empty() {
            lock(&self.histograms)
                .lag
                .add(&lags.histogram)
                .expect("same bounds");
            lags.histogram.reset();
        }
    }

    /// Counts one error of `kind` (`send: timeout`).
    pub fn error(&self, kind: impl Into<String>) {
        *lock(&self.errors).entry(kind.into()).or_default() += 1;
    }

    pub fn errors_total(&self) -> u64 {
        lock(&self.errors).values().sum()
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    /// Closes the current interval and starts the next.
    pub fn roll(&self) -> Second {
        let now = self.clock.now_us();
        let mut h = lock(&self.histograms);
        let start_us = std::mem::replace(&mut h.current_start_us, now);
        let length_us = now.saturating_sub(start_us).max(1);
        let histograms = std::mem::take(&mut h.current);
        for (series, histogram) in &histograms {
            h.intervals.push(Interval {
                series: *series,
                start_us,
                length_us,
                histogram: histogram.clone(),
            });
        }
        Second {
            start_us,
            length_us,
            histograms,
        }
    }

    /// The corrected histogram of `metric` over the intervals that started
    /// in `[from_us, to_us)`.
    pub fn corrected_between(
        &self,
        metric: Metric,
        from_us: u64,
        to_us: u64,
    ) -> Option<Histogram<u64>> {
        let series = Series::new(metric, Correction::Corrected);
        let h = lock(&self.histograms);
        let mut sum: Option<Histogram<u64>> = None;
        for i in h
            .intervals
            .iter()
            .filter(|i| i.series == series && (from_us..to_us).contains(&i.start_us))
        {
            match &mut sum {
                Some(s) => s.add(&i.histogram).expect("same bounds"),
                None => sum = Some(i.histogram.clone()),
            }
        }
        sum
    }

    /// Everything recorded, as an outcome (the caller adds balance and
    /// ramp steps).
    pub fn finish(&self, offered_rate: f64) -> Outcome {
        self.roll();
        let h = lock(&self.histograms);
        let (start, end) = self.window();
        let mut counters = self.counts.snapshot();
        counters.lost = counters.expected.saturating_sub(counters.delivered);
        Outcome {
            window_us: if end == u64::MAX {
                0
            } else {
                end.saturating_sub(start)
            },
            offered_rate,
            totals: h.totals.clone(),
            intervals: h.intervals.clone(),
            counters,
            errors: self.errors(),
            generator: Generator {
                lag: h.lag.clone(),
                late_threshold_us: self.late_threshold_us,
            },
            balance: None,
            ramp: Vec::new(),
            workers: 1,
            server: None,
            chaos: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrected_counts_from_the_intended_time_and_only_the_window_is_totalled() {
        let rec = Recorder::new(
            Clock::starting_at(Instant::now()),
            Duration::from_millis(10),
        );
        rec.set_window(0, u64::MAX - 1);
        // Intended 2 s ago, started just now: corrected ≈ 2 s, uncorrected ≈ 0.
        std::thread::sleep(Duration::from_millis(5));
        let now = rec.clock.now_us();
        rec.latency(Metric::SendAck, 0, now);
        let o = rec.finish(1.0);
        let c = &o.totals[&Series::new(Metric::SendAck, Correction::Corrected)];
        let u = &o.totals[&Series::new(Metric::SendAck, Correction::Uncorrected)];
        assert!(c.max() >= 5_000, "corrected {} µs", c.max());
        assert!(u.max() < 5_000, "uncorrected {} µs", u.max());
        assert_eq!(o.intervals.len(), 2, "one interval per series");

        let rec = Recorder::new(
            Clock::starting_at(Instant::now()),
            Duration::from_millis(10),
        );
        rec.set_window(1_000_000_000, 2_000_000_000);
        rec.latency(Metric::SendAck, 0, 0);
        let o = rec.finish(1.0);
        assert!(o.totals.is_empty(), "outside the window: intervals only");
        assert_eq!(o.intervals.len(), 2);
    }

    #[test]
    fn the_closed_model_counts_the_window_by_start() {
        let rec = Recorder::new(
            Clock::starting_at(Instant::now()),
            Duration::from_millis(10),
        );
        rec.set_window(1_000, 2_000);
        assert!(rec.action_in_window(1_500, 5_000), "by intended time");
        assert!(!rec.action_in_window(500, 1_500));
        rec.window_by_start();
        assert!(!rec.action_in_window(1_500, 5_000));
        assert!(rec.action_in_window(500, 1_500), "by start");
        rec.latency(Metric::SendAck, 500, 1_500);
        let o = rec.finish(1.0);
        let c = &o.totals[&Series::new(Metric::SendAck, Correction::Corrected)];
        assert_eq!(c.len(), 1, "started in the window, intended before it");
    }

    #[test]
    fn late_actions_are_counted() {
        let rec = Recorder::new(
            Clock::starting_at(Instant::now()),
            Duration::from_millis(10),
        );
        rec.lag(0, 5_000);
        rec.lag(0, 50_000);
        let o = rec.finish(1.0);
        assert_eq!(o.counters.late, 1);
        assert_eq!(o.generator.lag.len(), 2);
    }

    #[test]
    fn lags_recorded_apart_add_up() {
        let rec = Recorder::new(
            Clock::starting_at(Instant::now()),
            Duration::from_millis(10),
        );
        let mut lags = rec.lags();
        lags.record(0, 5_000);
        lags.record(0, 50_000);
        assert_eq!(lags.late(), 1);
        rec.add_lags(&mut lags);
        rec.add_lags(&mut lags);
        rec.lag(0, 20_000);
        let o = rec.finish(1.0);
        assert_eq!(o.counters.late, 2, "added once");
        assert_eq!(o.generator.lag.len(), 3);
    }

    #[test]
    fn deliveries_in_flight_during_a_fault_are_kept_out_of_the_quiet_histogram() {
        let rec = Recorder::new(
            Clock::starting_at(Instant::now() - Duration::from_secs(10)),
            Duration::from_millis(10),
        );
        rec.set_window(0, u64::MAX - 1);
        rec.latency(Metric::Delivery, 1_000, 1_000);
        assert!(rec.outside_faults().is_none(), "kept only with --chaos");
        rec.track_faults();
        let now = rec.clock.now_us();
        // Before any fault: kept.
        rec.latency(Metric::Delivery, now - 5_000, now - 5_000);
        let fault = rec.fault_started(now - 1_000_000);
        // In flight while the fault recovers: not kept.
        rec.latency(Metric::Delivery, now - 2_000_000, now - 2_000_000);
        rec.fault_ended(fault, now - 500_000);
        // Sent before the fault, received after it: not kept.
        rec.latency(Metric::Delivery, now - 2_000_000, now - 2_000_000);
        // Sent after the recovery: kept.
        rec.latency(Metric::Delivery, now - 100_000, now - 100_000);
        // Other metrics never are.
        rec.latency(Metric::SendAck, now - 100_000, now - 100_000);
        assert_eq!(rec.outside_faults().unwrap().len(), 2);
    }

    #[test]
    fn lost_is_expected_minus_delivered() {
        let rec = Recorder::new(
            Clock::starting_at(Instant::now()),
            Duration::from_millis(10),
        );
        add(&rec.counts.expected, 10);
        add(&rec.counts.delivered, 7);
        rec.error("send: timeout");
        let o = rec.finish(1.0);
        assert_eq!(o.counters.lost, 3);
        assert_eq!(o.errors["send: timeout"], 1);
    }
}
