//! `.hgrm` percentile distributions, in the text of HdrHistogram's Java
//! `outputPercentileDistribution(out, 5, 1000.0)` (values in milliseconds,
//! five ticks per half distance to 100%), the format wrk2 prints and
//! <https://hdrhistogram.github.io/HdrHistogram/plotFiles.html> plots; and
//! `--hgrm-dir`, which holds one such file per series plus the run's
//! interval log.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;

use super::{RunInfo, series_with_data};
use crate::interval_log;
use crate::outcome::Outcome;

/// Histogram values are µs; `.hgrm` files show ms.
const VALUE_SCALE: f64 = 1000.0;
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// File name of the interval log in an `--hgrm-dir`.
const INTERVAL_LOG: &str = "intervals.hlog";

/// One row of a percentile distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct HgrmRow {
    pub value_ms: f64,
    /// 0–1.
    pub percentile: f64,
    /// Values at or below `value_ms`.
    pub total_count: u64,
}

/// A percentile distribution read back from its text.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedHgrm {
    pub rows: Vec<HgrmRow>,
    pub mean_ms: f64,
    pub std_deviation_ms: f64,
    pub max_ms: f64,
    pub total_count: u64,
    pub buckets: u64,
    pub sub_buckets: u64,
}

/// Why a text is not a percentile distribution.
#[derive(Debug, thiserror::Error)]
pub enum HgrmError {
    #[error(".hgrm: no `Value Percentile TotalCount 1/(1-Percentile)` header")]
    NoHeader,
    #[error(".hgrm line {line}: {why}: {text:?}")]
    Line {
        line: usize,
        why: &'static str,
        text: String,
    },
    #[error(".hgrm: the footer has no `{0}`")]
    MissingFooter(&'static str),
}

/// The percentile distribution of `h` (values in µs), as Java's
/// `outputPercentileDistribution(out, 5, 1000.0)` writes it.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / VALUE_SCALE;
            let q = v.quantile_iterated_to();
            let _ = if q < 1.0 {
                writeln!(
                    out,
                    "{value:12.digits$} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )
            } else {
                writeln!(out, "{value:12.digits$} {q:2.12} {total:10}")
            };
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.digits$}, StdDeviation   = {:12.digits$}]",
        h.mean() / VALUE_SCALE,
        h.stdev() / VALUE_SCALE
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.digits$}, Total count    = {:12}]",
        h.max() as f64 / VALUE_SCALE,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// As HdrHistogram computes it: the power of two that holds
/// `2 × 10^sigfig` values at unit resolution.
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2.0 * 10f64.powi(i32::from(sigfig));
    let magnitude = (largest.log2().ceil() as u32).max(1);
    1 << magnitude
}

/// Reads a text written by [`percentile_distribution`] (or by HdrHistogram
/// in Java, or wrk2).
pub fn parse_percentile_distribution(text: &str) -> Result<ParsedHgrm, HgrmError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let header = lines
        .next()
        .map(|(_, l)| l.split_whitespace().collect::<Vec<_>>());
    if header.as_deref() != Some(&["Value", "Percentile", "TotalCount", "1/(1-Percentile)"][..]) {
        return Err(HgrmError::NoHeader);
    }
    let mut rows: Vec<HgrmRow> = Vec::new();
    let mut footer = Footer::default();
    let mut in_footer = false;
    for (line, l) in lines {
        let bad = |why| HgrmError::Line {
            line,
            why,
            text: l.to_string(),
        };
        if let Some(inner) = l.strip_prefix("#[") {
            in_footer = true;
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| bad("no closing `]`"))?;
            for pair in inner.split(',') {
                let (key, value) = pair.split_once('=').ok_or_else(|| bad("no `=`"))?;
                footer
                    .set(key.trim(), value.trim())
                    .ok_or_else(|| bad("bad footer value"))?;
            }
            continue;
        }
        if in_footer {
            return Err(bad("a row after the footer"));
        }
        let fields: Vec<&str> = l.split_whitespace().collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(bad("not 3 or 4 columns"));
        }
        let value_ms: f64 = fields[0].parse().map_err(|_| bad("bad value"))?;
        let percentile: f64 = fields[1].parse().map_err(|_| bad("bad percentile"))?;
        let total_count: u64 = fields[2].parse().map_err(|_| bad("bad total count"))?;
        if let Some(inverse) = fields.get(3) {
            inverse
                .parse::<f64>()
                .map_err(|_| bad("bad 1/(1-percentile)"))?;
        }
        if !(0.0..=1.0).contains(&percentile) {
            return Err(bad("percentile out of 0..1"));
        }
        if let Some(prev) = rows.last()
            && (percentile < prev.percentile
                || total_count < prev.total_count
                || value_ms < prev.value_ms)
        {
            return Err(bad("goes down from the row before"));
        }
        rows.push(HgrmRow {
            value_ms,
            percentile,
            total_count,
        });
    }
    footer.finish(rows)
}

#[derive(Default)]
struct Footer {
    mean_ms: Option<f64>,
    std_deviation_ms: Option<f64>,
    max_ms: Option<f64>,
    total_count: Option<u64>,
    buckets: Option<u64>,
    sub_buckets: Option<u64>,
}

impl Footer {
    /// `None` when `value` does not parse; unknown keys are ignored.
    fn set(&mut self, key: &str, value: &str) -> Option<()> {
        match key {
            "Mean" => self.mean_ms = Some(value.parse().ok()?),
            "StdDeviation" => self.std_deviation_ms = Some(value.parse().ok()?),
            "Max" => self.max_ms = Some(value.parse().ok()?),
            "Total count" => self.total_count = Some(value.parse().ok()?),
            "Buckets" => self.buckets = Some(value.parse().ok()?),
            "SubBuckets" => self.sub_buckets = Some(value.parse().ok()?),
            _ => {}
        }
        Some(())
    }

    fn finish(self, rows: Vec<HgrmRow>) -> Result<ParsedHgrm, HgrmError> {
        Ok(ParsedHgrm {
            rows,
            mean_ms: self.mean_ms.ok_or(HgrmError::MissingFooter("Mean"))?,
            std_deviation_ms: self
                .std_deviation_ms
                .ok_or(HgrmError::MissingFooter("StdDeviation"))?,
            max_ms: self.max_ms.ok_or(HgrmError::MissingFooter("Max"))?,
            total_count: self
                .total_count
                .ok_or(HgrmError::MissingFooter("Total count"))?,
            buckets: self.buckets.ok_or(HgrmError::MissingFooter("Buckets"))?,
            sub_buckets: self
                .sub_buckets
                .ok_or(HgrmError::MissingFooter("SubBuckets"))?,
        })
    }
}

/// Creates `dir` and writes into it `<series tag>.hgrm` (e.g.
/// `delivery.corrected.hgrm`) for every series with data, and
/// `intervals.hlog`, the interval log of every series with `BaseTime` the
/// run's start. Returns the paths written, the log last.
pub fn write_hgrm_dir(
    dir: &Path,
    outcome: &Outcome,
    info: &RunInfo,
) -> std::io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (series, h) in series_with_data(outcome) {
        let path = dir.join(format!("{}.hgrm", series.tag()));
        fs::write(&path, percentile_distribution(h))?;
        written.push(path);
    }
    let mut log = Vec::new();
    interval_log::write(&outcome.intervals, info.started, &mut log)?;
    let path = dir.join(INTERVAL_LOG);
    fs::write(&path, log)?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;
    use crate::outcome::{Series, new_histogram, record};

    /// The first row at or past `q`.
    fn row_at(parsed: &ParsedHgrm, q: f64) -> &HgrmRow {
        parsed
            .rows
            .iter()
            .find(|r| r.percentile >= q - 1e-12)
            .unwrap()
    }

    #[test]
    fn text_is_the_java_format_to_the_character() {
        let mut h = new_histogram();
        record(&mut h, 1_000);
        let expected = "       Value     Percentile TotalCount 1/(1-Percentile)\n\
                        \n       1.000 0.000000000000          1           1.00\
                        \n       1.000 1.000000000000          1\
                        \n#[Mean    =        1.000, StdDeviation   =        0.000]\
                        \n#[Max     =        1.000, Total count    =            1]\
                        \n#[Buckets =           22, SubBuckets     =         2048]\n";
        assert_eq!(percentile_distribution(&h), expected);
    }

    #[test]
    fn rows_tick_five_times_per_half_distance() {
        let mut h = new_histogram();
        for v in 1..=100_000 {
            record(&mut h, v);
        }
        let parsed = parse_percentile_distribution(&percentile_distribution(&h)).unwrap();
        let first: Vec<f64> = parsed.rows.iter().take(8).map(|r| r.percentile).collect();
        let expected = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6];
        for (a, b) in first.iter().zip(expected) {
            assert!((a - b).abs() < 1e-9, "{first:?}");
        }
        let text = percentile_distribution(&h);
        let row_lines: Vec<&str> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        let (last, others) = row_lines.split_last().unwrap();
        assert!(others.iter().all(|l| l.split_whitespace().count() == 4));
        assert_eq!(last.split_whitespace().count(), 3, "no 1/(1-p) at 100%");
    }

    #[test]
    fn round_trip_keeps_percentiles_max_and_count() {
        let o = fixture::outcome();
        for (series, h) in &o.totals {
            let parsed = parse_percentile_distribution(&percentile_distribution(h)).unwrap();
            assert_eq!(parsed.total_count, h.len(), "{}", series.tag());
            assert_eq!(parsed.rows.last().unwrap().total_count, h.len());
            for q in [0.5, 0.99, 1.0] {
                let row = row_at(&parsed, q);
                let want = h.value_at_quantile(row.percentile) as f64 / 1000.0;
                assert!(
                    (row.value_ms - want).abs() <= 0.0005,
                    "{} at {q}: {} vs {want}",
                    series.tag(),
                    row.value_ms
                );
            }
            let median = row_at(&parsed, 0.5);
            assert!((median.percentile - 0.5).abs() < 1e-12);
            assert!((median.value_ms - h.value_at_quantile(0.5) as f64 / 1000.0).abs() <= 0.0005);
            assert_eq!(parsed.rows.last().unwrap().percentile, 1.0);
            assert!((parsed.max_ms - h.max() as f64 / 1000.0).abs() <= 0.0005);
            assert!((parsed.mean_ms - h.mean() / 1000.0).abs() <= 0.0005);
            assert_eq!(parsed.buckets, u64::from(h.buckets()));
            assert_eq!(parsed.sub_buckets, 2048);
        }
    }

    #[test]
    fn an_empty_histogram_has_a_header_and_footer_only() {
        let parsed =
            parse_percentile_distribution(&percentile_distribution(&new_histogram())).unwrap();
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.total_count, 0);
        assert_eq!(parsed.max_ms, 0.0);
    }

    #[test]
    fn malformed_text_is_refused() {
        let mut h = new_histogram();
        for v in [100, 200, 300] {
            record(&mut h, v);
        }
        let good = percentile_distribution(&h);
        assert!(parse_percentile_distribution(&good).is_ok());

        assert!(matches!(
            parse_percentile_distribution(""),
            Err(HgrmError::NoHeader)
        ));
        assert!(matches!(
            parse_percentile_distribution(&good.replacen("Value", "Valeur", 1)),
            Err(HgrmError::NoHeader)
        ));
        let no_max: String = good
            .lines()
            .filter(|l| !l.starts_with("#[Max"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            parse_percentile_distribution(&no_max),
            Err(HgrmError::MissingFooter("Max"))
        ));
        let garbled = good.replacen("0.100", "x.100", 1);
        assert!(matches!(
            parse_percentile_distribution(&garbled),
            Err(HgrmError::Line { line: 3, .. })
        ));
        let mut reversed: Vec<&str> = good.lines().collect();
        reversed.swap(2, 3);
        assert!(matches!(
            parse_percentile_distribution(&reversed.join("\n")),
            Err(HgrmError::Line { .. })
        ));
        let truncated_footer = good.replace("2048]", "2048");
        assert!(parse_percentile_distribution(&truncated_footer).is_err());
    }

    #[test]
    fn hgrm_dir_holds_a_distribution_per_series_and_the_interval_log() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hgrm");
        let o = fixture::outcome();
        let config = fixture::config();
        let info = fixture::info(&config, &[]);
        let paths = write_hgrm_dir(&out, &o, &info).unwrap();
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "send_ack.corrected.hgrm",
                "send_ack.uncorrected.hgrm",
                "delivery.corrected.hgrm",
                "delivery.uncorrected.hgrm",
                "intervals.hlog",
            ]
        );
        for path in &paths[..4] {
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let series = Series::from_tag(stem).unwrap();
            let parsed = parse_percentile_distribution(&fs::read_to_string(path).unwrap()).unwrap();
            assert_eq!(parsed.total_count, o.totals[&series].len());
        }
        let log = fs::read(&paths[4]).unwrap();
        let text = String::from_utf8_lossy(&log);
        assert!(text.contains("#[BaseTime: 1700000000.123"), "{text}");
        let back = interval_log::read(&log).unwrap();
        assert_eq!(back.len(), o.intervals.len());
        for (a, b) in o.intervals.iter().zip(&back) {
            assert_eq!((a.series, a.start_us), (b.series, b.start_us));
            assert_eq!(a.histogram, b.histogram);
        }
    }
}
