//! What a user reads after a run: a plain-text [`table`], a versioned
//! [`json`] summary, `.hgrm` percentile distributions and an interval log
//! ([`write_hgrm_dir`]), and an SVG latency-by-percentile chart
//! ([`write_plot`]).
//!
//! Every function takes the finished (merged) [`Outcome`] and a [`RunInfo`]
//! with what the outcome does not carry: the settings, the start time, the
//! SLO verdicts and a description of the target. [`generator_verdict`] says
//! when the load generator itself, not the system under test, was the
//! bottleneck; the table and the JSON both carry it.

mod hgrm;
mod json;
mod plot;
mod table;

use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

use crate::config::{Model, Protocol, RunConfig, ScenarioKind};
use crate::outcome::{Outcome, RampStep, Series};
use crate::slo::{Slo, Verdict};

pub use hgrm::{
    HgrmError, HgrmRow, ParsedHgrm, parse_percentile_distribution, percentile_distribution,
    write_hgrm_dir,
};
pub use json::{FORMAT, json, write_json};
pub use plot::{PlotError, write_plot};
pub use table::table;

/// Everything a report needs besides the outcome.
pub struct RunInfo<'a> {
    pub config: &'a RunConfig,
    /// Run start (= `BaseTime` of interval logs).
    pub started: SystemTime,
    pub verdicts: &'a [Verdict],
    /// Human description, e.g. `balancer 127.0.0.1:8000 (local, 1 node)`.
    pub target: String,
}

/// A warning when the load generator itself was the bottleneck: more than
/// 1% of the scheduled actions of the window (of all sends when the window
/// offered none) started later than `config.late_threshold`, or the
/// generator's lag p99 exceeds that threshold. `None` otherwise.
pub fn generator_verdict(outcome: &Outcome, config: &RunConfig) -> Option<String> {
    let c = &outcome.counters;
    let scheduled = if c.window_offered > 0 {
        c.window_offered
    } else {
        c.sent
    };
    let threshold_us = config.late_threshold.as_micros() as u64;
    let lag = &outcome.generator.lag;
    let lag_p99 = quantile(lag, 0.99);
    let too_many_late = c.late.saturating_mul(100) > scheduled;
    if !too_many_late && lag_p99 <= threshold_us {
        return None;
    }
    let actions = if config.scenario == ScenarioKind::Connect {
        "connections"
    } else {
        "sends"
    };
    let lag_text = if lag.is_empty() {
        "lag not measured".to_string()
    } else {
        format!("lag p99 {}, max {}", fmt_us(lag_p99), fmt_us(lag.max()))
    };
    Some(format!(
        "the load generator fell behind its schedule: {} of {scheduled} {actions} were late by \
         more than {} ({lag_text}): latency figures include the generator's own delay. It \
         lacked CPU: its own (add --workers or --threads, or lower --rate) or a machine shared \
         with the servers under test (run it elsewhere)",
        c.late,
        humantime::format_duration(config.late_threshold),
    ))
}

/// `412µs`, `3.21ms`, `45.7ms`, `1.204s`: three or four significant digits.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        let ms = us as f64 / 1e3;
        match ms {
            m if m < 10.0 => format!("{m:.2}ms"),
            m if m < 100.0 => format!("{m:.1}ms"),
            m => format!("{m:.0}ms"),
        }
    } else {
        format!("{:.3}s", us as f64 / 1e6)
    }
}

/// Bytes as `512 B`, `26.7 KiB`, `506.0 MiB`, `1.25 GiB` (negative too).
pub fn fmt_bytes(bytes: f64) -> String {
    let sign = if bytes < 0.0 { "-" } else { "" };
    let b = bytes.abs();
    if b < 1024.0 {
        format!("{sign}{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{sign}{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{sign}{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{sign}{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

/// A share (0–1) as a percentage: `0.025%`, `12.5%`.
fn fmt_share(share: f64) -> String {
    let text = format!("{:.4}", share * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// A window length or similar, to the millisecond: `10s`, `1m 30s 250ms`.
fn fmt_duration_us(us: u64) -> String {
    humantime::format_duration(Duration::from_millis(us / 1_000)).to_string()
}

/// The series of `outcome.totals` that have data, in [`Series::all`] order.
fn series_with_data(outcome: &Outcome) -> impl Iterator<Item = (Series, &Histogram<u64>)> {
    Series::all().filter_map(|s| {
        outcome
            .totals
            .get(&s)
            .filter(|h| !h.is_empty())
            .map(|h| (s, h))
    })
}

/// The value at `q`, 0 for an empty histogram.
fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

/// The rate of the last step of the initial run of held steps.
fn ramp_best_rate(steps: &[RampStep]) -> Option<f64> {
    steps.iter().take_while(|s| s.held).last().map(|s| s.rate)
}

/// The unit of a verdict's `actual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SloUnit {
    Micros,
    Count,
    Share,
}

impl SloUnit {
    fn name(self) -> &'static str {
        match self {
            SloUnit::Micros => "us",
            SloUnit::Count => "count",
            SloUnit::Share => "share",
        }
    }
}

/// The unit of `verdict`, from the objective of `config` it was checked
/// against (by its text, which [`crate::slo::check`] copies).
fn slo_unit(verdict: &Verdict, config: &RunConfig) -> SloUnit {
    let slo = config
        .slo
        .iter()
        .find(|s| s.to_string() == verdict.objective);
    match slo {
        Some(Slo::Latency { .. }) => SloUnit::Micros,
        Some(Slo::LossShare(_)) => SloUnit::Share,
        Some(Slo::LossCount(_) | Slo::Errors(_)) => SloUnit::Count,
        None if verdict.objective.starts_with("loss") && verdict.objective.ends_with('%') => {
            SloUnit::Share
        }
        None if verdict.objective.starts_with("loss")
            || verdict.objective.starts_with("errors") =>
        {
            SloUnit::Count
        }
        None => SloUnit::Micros,
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Fb => "fb",
        Protocol::Json => "json",
    }
}

fn model_name(m: Model) -> &'static str {
    match m {
        Model::Open => "open",
        Model::Closed => "closed",
    }
}

#[cfg(test)]
mod fixture {
    //! A hand-built run for the tests of every report.

    use std::time::{Duration, SystemTime};

    use clap::Parser;

    use crate::config::{Cli, RunConfig};
    use crate::outcome::{
        Balance, Correction, Counters, Interval, Metric, Outcome, ProcessCost, RampStep, Series,
        ServerCost, Usage, new_histogram, record,
    };
    use crate::slo::{self, Verdict};

    /// Two faults: a kill that recovered and lost 3 receipts, a stop whose
    /// injection failed and that never recovered.
    pub fn chaos() -> crate::chaos::ChaosOutcome {
        use crate::chaos::{ChaosOutcome, Fault, FaultKind};
        let mut quiet = new_histogram();
        for us in [1_000, 2_000, 40_000] {
            record(&mut quiet, us);
        }
        ChaosOutcome {
            every_us: 30_000_000,
            lease_ttl_us: 10_000_000,
            faults: vec![
                Fault {
                    kind: FaultKind::Kill,
                    target: "node-1".into(),
                    at_us: 32_500_000,
                    injected_us: 450_000,
                    error: None,
                    dropped: 70,
                    online_us: Some(1_200_000),
                    recovery_us: Some(1_500_000),
                    lost: 3,
                },
                Fault {
                    kind: FaultKind::Stop,
                    target: "node-0".into(),
                    at_us: 62_500_000,
                    injected_us: 11_000_000,
                    error: Some("boom".into()),
                    dropped: 0,
                    online_us: None,
                    recovery_us: None,
                    lost: 0,
                },
            ],
            acked_lost: 3,
            lost_before_faults: 0,
            found_at_final_login: 1,
            delivery_outside_faults: quiet,
        }
    }

    pub fn config() -> RunConfig {
        Cli::try_parse_from([
            "chat-loadtest",
            "--target",
            "127.0.0.1:8000",
            "--users",
            "200",
            "--rate",
            "1000",
            "--slo",
            "p99=50ms,loss=0,loss=0.5%",
            "--prefix",
            "report-test",
        ])
        .unwrap()
        .run
        .resolve(None)
        .unwrap()
    }

    /// The verdicts of [`config`]'s objectives on [`outcome`]: the p99
    /// and the 0.5% loss held, `loss<=0` did not.
    pub fn verdicts() -> Vec<Verdict> {
        let o = outcome();
        let corrected = |m: Metric| {
            o.totals
                .get(&Series::new(m, Correction::Corrected))
                .cloned()
        };
        slo::check(
            &config().slo,
            &slo::Observed {
                main_metric: Metric::Delivery,
                corrected: &corrected,
                lost: o.counters.lost,
                expected: o.counters.expected,
                errors: o.errors.values().sum(),
            },
        )
    }

    pub fn started() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    }

    /// What the reports are told about a run of `config` with `verdicts`.
    pub fn info<'a>(config: &'a RunConfig, verdicts: &'a [Verdict]) -> super::RunInfo<'a> {
        super::RunInfo {
            config,
            started: started(),
            verdicts,
            target: "balancer 127.0.0.1:8000 (local, 1 node)".into(),
        }
    }

    /// Delivery and send_ack, both corrected and uncorrected, one interval
    /// per second, distinct non-zero counters, two error kinds, balance, a
    /// ramp whose first two steps held, and the servers' cost: the node
    /// 2.5 s of CPU and 10 MiB more for 10 000 deliveries and 200
    /// connections, the balancer 0.5 s and 1 MiB less.
    pub fn outcome() -> Outcome {
        let mut o = Outcome {
            window_us: 10_000_000,
            offered_rate: 1000.0,
            workers: 2,
            ..Outcome::default()
        };
        for (k, metric) in [Metric::SendAck, Metric::Delivery].into_iter().enumerate() {
            for correction in Correction::BOTH {
                let series = Series::new(metric, correction);
                let slow = if correction == Correction::Corrected {
                    3
                } else {
                    1
                };
                let mut total = new_histogram();
                for second in 0..3u64 {
                    let mut h = new_histogram();
                    for i in 0..(1_000 + 100 * k as u64) {
                        let us = 200 + (i * i) % 9_000 + if i % 997 == 0 { 250_000 } else { 0 };
                        record(&mut h, us * slow);
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
        }
        o.counters = Counters {
            users: 200,
            connections_opened: 201,
            connections_failed: 1,
            disconnects: 2,
            reconnects: 1,
            connections_at_end: 198,
            logins: 203,
            logouts: 4,
            window_offered: 10_000,
            window_sent: 9_990,
            window_acked: 9_980,
            sent: 12_005,
            acked: 11_993,
            send_failed: 7,
            not_connected: 0,
            expected: 12_006,
            delivered: 12_003,
            delivered_live: 11_990,
            delivered_at_login: 9,
            delivered_after_reconnect: 4,
            duplicated: 5,
            redelivered: 11,
            out_of_order: 6,
            lost: 3,
            unconfirmed: 0,
            late: 8,
            history_requests: 40,
            history_pages: 38,
            history_failed: 2,
            history_messages: 1_234,
            mark_read_requests: 30,
            marked_read: 29,
            mark_read_failed: 1,
        };
        o.errors.insert("send: timeout".into(), 7);
        o.errors.insert("login: AlreadyOnline".into(), 9);
        for lag in [50, 60, 70, 80, 900] {
            record(&mut o.generator.lag, lag);
        }
        o.generator.late_threshold_us = 10_000;
        o.balance = Some(Balance {
            per_node: [("node-a".to_string(), 120), ("node-b".to_string(), 78)].into(),
        });
        o.ramp = vec![
            RampStep {
                rate: 500.0,
                achieved: 499.5,
                p99_us: 2_100,
                sent: 2_500,
                lost: 0,
                held: true,
            },
            RampStep {
                rate: 1_000.0,
                achieved: 998.0,
                p99_us: 4_300,
                sent: 5_000,
                lost: 0,
                held: true,
            },
            RampStep {
                rate: 1_500.0,
                achieved: 1_200.0,
                p99_us: 65_000,
                sent: 7_500,
                lost: 3,
                held: false,
            },
        ];
        let usage = |cpu_seconds: f64, mib: u64| Usage {
            cpu_seconds,
            rss_bytes: mib << 20,
        };
        o.server = Some(ServerCost {
            source: Some("local".into()),
            sampled: "/proc of node 100 and balancer 101".into(),
            node_count: 1,
            nodes: Some(ProcessCost {
                before: usage(0.5, 10),
                start: usage(1.0, 18),
                end: usage(3.5, 20),
            }),
            balancer: Some(ProcessCost {
                before: usage(0.125, 5),
                start: usage(0.25, 5),
                end: usage(0.75, 4),
            }),
            sampled_us: 10_000_000,
            deliveries: 10_000,
            connections: 200,
            error: None,
        });
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::record;

    #[test]
    fn durations_read_like_a_human_wrote_them() {
        assert_eq!(fmt_us(0), "0µs");
        assert_eq!(fmt_us(412), "412µs");
        assert_eq!(fmt_us(3_210), "3.21ms");
        assert_eq!(fmt_us(45_670), "45.7ms");
        assert_eq!(fmt_us(456_700), "457ms");
        assert_eq!(fmt_us(1_204_000), "1.204s");
        assert_eq!(fmt_share(0.000_249_875), "0.025%");
        assert_eq!(fmt_share(0.125), "12.5%");
        assert_eq!(fmt_share(0.0), "0%");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(27_340.8), "26.7 KiB");
        assert_eq!(fmt_bytes(-1_048_576.0), "-1.0 MiB");
        assert_eq!(fmt_bytes(1.25 * (1u64 << 30) as f64), "1.25 GiB");
    }

    #[test]
    fn counter_fields_are_exactly_the_serialized_counters() {
        let c = fixture::outcome().counters;
        let serialized = serde_json::to_value(&c).unwrap();
        let serialized = serialized.as_object().unwrap();
        let fields = c.fields();
        assert_eq!(fields.len(), serialized.len());
        for (name, value) in fields {
            assert_eq!(serialized[name], value, "{name}");
        }
    }

    #[test]
    fn generator_verdict_fires_when_more_than_one_percent_were_late() {
        let config = fixture::config();
        let mut o = fixture::outcome();
        o.counters.window_offered = 10_000;
        o.counters.late = 100;
        assert_eq!(generator_verdict(&o, &config), None, "exactly 1% is fine");
        o.counters.late = 101;
        let warning = generator_verdict(&o, &config).expect("101 of 10000 late");
        assert!(warning.contains("101 of 10000 sends"), "{warning}");
        assert!(warning.contains("more than 10ms"), "{warning}");
        assert!(warning.contains("--workers"), "{warning}");
    }

    #[test]
    fn generator_verdict_counts_against_sends_when_the_window_offered_none() {
        let config = fixture::config();
        let mut o = fixture::outcome();
        o.counters.window_offered = 0;
        o.counters.sent = 1_000;
        o.counters.late = 10;
        assert_eq!(generator_verdict(&o, &config), None);
        o.counters.late = 11;
        assert!(generator_verdict(&o, &config).is_some());
    }

    #[test]
    fn generator_verdict_fires_on_a_lag_p99_over_the_threshold() {
        let config = fixture::config();
        let mut o = fixture::outcome();
        o.counters.late = 0;
        assert_eq!(generator_verdict(&o, &config), None);
        for _ in 0..10 {
            record(&mut o.generator.lag, 50_000);
        }
        let warning = generator_verdict(&o, &config).expect("lag p99 50ms > 10ms");
        assert!(warning.contains("lag p99 50.0ms"), "{warning}");
    }

    #[test]
    fn ramp_best_rate_is_the_last_of_the_first_held_steps() {
        let mut steps = fixture::outcome().ramp;
        assert_eq!(ramp_best_rate(&steps), Some(1_000.0));
        steps[2].held = true;
        steps[1].held = false;
        assert_eq!(
            ramp_best_rate(&steps),
            Some(500.0),
            "a later held step does not count"
        );
        steps[0].held = false;
        assert_eq!(ramp_best_rate(&steps), None);
        assert_eq!(ramp_best_rate(&[]), None);
    }

    #[test]
    fn slo_units_follow_the_objective() {
        let config = fixture::config();
        let units: Vec<SloUnit> = fixture::verdicts()
            .iter()
            .map(|v| slo_unit(v, &config))
            .collect();
        assert_eq!(units, [SloUnit::Micros, SloUnit::Count, SloUnit::Share]);
    }
}
