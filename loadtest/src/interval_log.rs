//! HdrHistogram interval logs: one histogram per series per second, in the
//! format of Java's `HistogramLogWriter` (read by `HistogramLogProcessor`
//! and HdrHistogram's plotters). Written to `--hgrm-dir`, and the form in
//! which workers send their intervals back to the coordinator.
//!
//! Each line's tag is the series (`delivery.corrected`); timestamps are
//! seconds since `BaseTime`, the run's start; values are µs (the max column
//! in ms).

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use base64::Engine;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

use crate::outcome::{Interval, Series, new_histogram};

/// Why an interval log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IntervalLogError {
    #[error("interval log: unparsable at byte {0}")]
    Parse(usize),
    #[error("interval log: unknown tag {0:?}")]
    Tag(String),
    #[error("interval log: bad histogram: {0}")]
    Histogram(String),
}

/// Writes `intervals` as one log, timestamps relative to `start`.
pub fn write(intervals: &[Interval], start: SystemTime, out: &mut impl Write) -> io::Result<()> {
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("chat-loadtest interval log: values in microseconds")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(out, &mut serializer)?;
    log.write_comment(
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"",
    )?;
    for i in intervals {
        let tag = i.series.tag();
        log.write_histogram(
            &i.histogram,
            Duration::from_micros(i.start_us),
            Duration::from_micros(i.length_us),
            Tag::new(&tag),
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// Reads a log written by [`write`]; timestamps stay relative to its base time.
pub fn read(text: &[u8]) -> Result<Vec<Interval>, IntervalLogError> {
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(text) {
        let entry = entry.map_err(|e| match e {
            hdrhistogram::serialization::interval_log::LogIteratorError::ParseError { offset } => {
                IntervalLogError::Parse(offset)
            }
        })?;
        let LogEntry::Interval(h) = entry else {
            continue;
        };
        let tag = h.tag().map(|t| t.as_str()).unwrap_or("");
        let series = Series::from_tag(tag).ok_or_else(|| IntervalLogError::Tag(tag.into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(h.encoded_histogram())
            .map_err(|e| IntervalLogError::Histogram(e.to_string()))?;
        let decoded: hdrhistogram::Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| IntervalLogError::Histogram(format!("{e:?}")))?;
        let mut histogram = new_histogram();
        histogram
            .add(&decoded)
            .map_err(|e| IntervalLogError::Histogram(format!("{e:?}")))?;
        out.push(Interval {
            series,
            start_us: h.start_timestamp().as_micros() as u64,
            length_us: h.duration().as_micros() as u64,
            histogram,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Correction, Metric, record};

    #[test]
    fn round_trips_every_interval() {
        let mut intervals = Vec::new();
        for (k, series) in Series::all().enumerate() {
            for second in 0..3u64 {
                let mut h = new_histogram();
                for v in 0..(10 * (k as u64 + 1)) {
                    record(&mut h, 100 + v * 37 + second);
                }
                intervals.push(Interval {
                    series,
                    start_us: second * 1_000_000,
                    length_us: 1_000_000,
                    histogram: h,
                });
            }
        }
        let mut text = Vec::new();
        write(&intervals, SystemTime::now(), &mut text).unwrap();
        let back = read(&text).unwrap();
        assert_eq!(back.len(), intervals.len());
        for (a, b) in intervals.iter().zip(&back) {
            assert_eq!(a.series, b.series);
            assert_eq!(a.start_us, b.start_us);
            assert_eq!(a.length_us, b.length_us);
            assert_eq!(a.histogram, b.histogram);
        }
    }

    #[test]
    fn unknown_tags_and_garbage_are_errors() {
        let mut h = new_histogram();
        record(&mut h, 5);
        let i = Interval {
            series: Series::new(Metric::Login, Correction::Corrected),
            start_us: 0,
            length_us: 1_000_000,
            histogram: h,
        };
        let mut text = Vec::new();
        write(&[i], SystemTime::now(), &mut text).unwrap();
        let renamed = String::from_utf8(text)
            .unwrap()
            .replace("login.corrected", "nope.x");
        assert!(matches!(
            read(renamed.as_bytes()),
            Err(IntervalLogError::Tag(_))
        ));
        assert!(read(b"this is not a log\n").is_err());
    }
}
