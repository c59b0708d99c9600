//! Service-level objectives (`--slo p99=5ms,loss=0`): parsed once, checked
//! against the whole run at the end (the exit status) and against each step
//! of a ramp (where the ramp stops).
//!
//! A latency objective applies to the corrected figures of one metric:
//! `p99=5ms` means delivery (login in the `connect` scenario),
//! `send_ack.p99.9=20ms` names the metric. `loss=0` bounds lost messages
//! (`loss=0.1%` as a share of those due), `errors=0` the errors of all kinds.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::outcome::Metric;

/// One objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slo {
    /// The `percentile` (e.g. 99.9) of `metric` (default: the scenario's
    /// main metric) is at most `max_us`.
    Latency {
        metric: Option<Metric>,
        percentile: f64,
        max_us: u64,
    },
    /// Lost messages are at most this many.
    LossCount(u64),
    /// Lost messages are at most this share (0–1) of those due.
    LossShare(f64),
    /// Errors of all kinds are at most this many.
    Errors(u64),
}

#[derive(Debug, thiserror::Error)]
#[error("--slo: {0} (expected e.g. p99=5ms,p99.9=20ms,send_ack.p50=1ms,loss=0,loss=0.1%,errors=0)")]
pub struct SloError(String);

impl Slo {
    /// `p99=5ms,loss=0`.
    pub fn parse_list(text: &str) -> Result<Vec<Slo>, SloError> {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Slo::parse)
            .collect()
    }

    fn parse(part: &str) -> Result<Slo, SloError> {
        let bad = |why: &str| SloError(format!("{why} in {part:?}"));
        let (key, value) = part.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "loss" => match value.strip_suffix('%') {
                Some(pct) => {
                    let share: f64 = pct.trim().parse().map_err(|_| bad("bad percentage"))?;
                    if !(0.0..=100.0).contains(&share) {
                        return Err(bad("percentage out of 0..100"));
                    }
                    Ok(Slo::LossShare(share / 100.0))
                }
                None => Ok(Slo::LossCount(value.parse().map_err(|_| bad("bad count"))?)),
            },
            "errors" => Ok(Slo::Errors(value.parse().map_err(|_| bad("bad count"))?)),
            _ => {
                let (metric, pct) = match key.split_once('.') {
                    Some((m, rest)) if !m.starts_with('p') || Metric::from_name(m).is_some() => {
                        let metric = Metric::from_name(m).ok_or_else(|| bad("unknown metric"))?;
                        (Some(metric), rest)
                    }
                    _ => (None, key),
                };
                let percentile: f64 = pct
                    .strip_prefix('p')
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| bad("unknown objective"))?;
                let max = humantime::parse_duration(value).map_err(|_| bad("bad duration"))?;
                Ok(Slo::Latency {
                    metric,
                    percentile,
                    max_us: max.as_micros() as u64,
                })
            }
        }
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slo::Latency {
                metric,
                percentile,
                max_us,
            } => {
                if let Some(m) = metric {
                    write!(f, "{m}.")?;
                }
                write!(
                    f,
                    "p{percentile}<={}",
                    humantime::format_duration(Duration::from_micros(*max_us))
                )
            }
            Slo::LossCount(n) => write!(f, "loss<={n}"),
            Slo::LossShare(s) => write!(f, "loss<={}%", s * 100.0),
            Slo::Errors(n) => write!(f, "errors<={n}"),
        }
    }
}

/// What an objective is checked against: a whole run or one ramp step.
pub struct Observed<'a> {
    /// The metric latency objectives without a metric apply to.
    pub main_metric: Metric,
    /// The corrected histogram of a metric, if it has data.
    pub corrected: &'a dyn Fn(Metric) -> Option<Histogram<u64>>,
    pub lost: u64,
    pub expected: u64,
    pub errors: u64,
}

/// One objective's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub objective: String,
    /// What was measured, in the objective's unit (µs, count or share);
    /// `None` when there was nothing to measure (which fails).
    pub actual: Option<f64>,
    pub held: bool,
}

/// Checks every objective.
pub fn check(slos: &[Slo], seen: &Observed<'_>) -> Vec<Verdict> {
    slos.iter()
        .map(|slo| {
            let actual = match slo {
                Slo::Latency {
                    metric, percentile, ..
                } => (seen.corrected)(metric.unwrap_or(seen.main_metric))
                    .filter(|h| !h.is_empty())
                    .map(|h| h.value_at_quantile(percentile / 100.0) as f64),
                Slo::LossCount(_) => Some(seen.lost as f64),
                Slo::LossShare(_) => Some(if seen.expected == 0 {
                    0.0
                } else {
                    seen.lost as f64 / seen.expected as f64
                }),
                Slo::Errors(_) => Some(seen.errors as f64),
            };
            let held = match (slo, actual) {
                (_, None) => false,
                (Slo::Latency { max_us, .. }, Some(a)) => a <= *max_us as f64,
                (Slo::LossCount(n), Some(a)) | (Slo::Errors(n), Some(a)) => a <= *n as f64,
                (Slo::LossShare(s), Some(a)) => a <= *s,
            };
            Verdict {
                objective: slo.to_string(),
                actual,
                held,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{new_histogram, record};

    #[test]
    fn parses_every_kind() {
        let slos =
            Slo::parse_list("p99=5ms, send_ack.p99.9=20ms,loss=0,loss=0.5%,errors=3").unwrap();
        assert_eq!(
            slos,
            vec![
                Slo::Latency {
                    metric: None,
                    percentile: 99.0,
                    max_us: 5_000
                },
                Slo::Latency {
                    metric: Some(Metric::SendAck),
                    percentile: 99.9,
                    max_us: 20_000
                },
                Slo::LossCount(0),
                Slo::LossShare(0.005),
                Slo::Errors(3),
            ]
        );
        assert_eq!(
            Slo::parse_list("p99.9=1s").unwrap(),
            vec![Slo::Latency {
                metric: None,
                percentile: 99.9,
                max_us: 1_000_000
            }]
        );
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "p99",
            "p99=fast",
            "q99=5ms",
            "loss=-1",
            "loss=200%",
            "nope.p99=1ms",
            "p101=1ms",
        ] {
            assert!(Slo::parse_list(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn checks_latency_loss_and_errors() {
        let mut h = new_histogram();
        for v in 1..=100 {
            record(&mut h, v * 100); // 100 µs .. 10 ms
        }
        let lookup = move |m: Metric| (m == Metric::Delivery).then(|| h.clone());
        let seen = Observed {
            main_metric: Metric::Delivery,
            corrected: &lookup,
            lost: 2,
            expected: 1000,
            errors: 0,
        };
        let slos = Slo::parse_list("p50=6ms,p99=5ms,loss=0,loss=1%,errors=0,login.p99=1s").unwrap();
        let held: Vec<bool> = check(&slos, &seen).iter().map(|v| v.held).collect();
        assert_eq!(held, vec![true, false, false, true, true, false]);
    }
}
