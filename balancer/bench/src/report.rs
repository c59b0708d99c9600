//! What a measurement prints: one JSON line on stdout, one human line on
//! stderr; the latency histograms (ns) and how their percentiles are shown.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// A run's result: the JSON line (stdout) and the human line (stderr).
pub struct Output {
    pub json: Value,
    pub human: String,
}

pub fn emit(out: &Output) {
    eprintln!("{}", out.human);
    println!("{}", out.json);
}

pub fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram in ns, as µs with one decimal.
pub fn percentiles_us(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 100.0).round() / 10.0,
    })
}

pub fn fmt_us(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_string(), human_us)
}

/// `87 µs`, `1.25 ms`, `2.1 s`.
pub fn human_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// `12 345`: thousands separated by a space, as in docs/benchmarks.md.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
