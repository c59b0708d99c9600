//! Reading what local processes report over HTTP, for tests and tools: a
//! node's Prometheus `/metrics` and the value of a series (or the sum of a
//! family) in it, and plain GETs (NATS's monitoring endpoint).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The body of `GET /metrics` from a node's metrics address.
pub fn scrape(metrics_addr: SocketAddr) -> std::io::Result<String> {
    http_get(metrics_addr, "/metrics")
}

/// The body of a plain HTTP `GET path` to `addr`; an error unless the
/// status is 200.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        // HTTP/1.0: the body comes whole, never chunked.
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete HTTP response to GET {path}")))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!(
            "GET {path} on {addr}: {status}"
        )));
    }
    Ok(body.to_owned())
}

/// The sum of the series in Prometheus text `text` that match `series`: a
/// metric name, optionally with labels (`name{reason="sequence"}`), which
/// matches every series of that name carrying at least those labels. `None`
/// when no series matches.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    let (name, wanted) = parse_series(series)?;
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((line_name, labels, rest)) = split_sample(line) else {
            continue;
        };
        if line_name != name || !wanted.iter().all(|w| labels.contains(w)) {
            continue;
        }
        if let Some(value) = rest.split_whitespace().next().and_then(parse_value) {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

type Labels = Vec<(String, String)>;

fn parse_series(series: &str) -> Option<(&str, Labels)> {
    let (name, labels, rest) = split_sample(series.trim())?;
    rest.trim().is_empty().then_some((name, labels))
}

/// Splits `name{labels} rest` (labels optional) into its parts.
fn split_sample(line: &str) -> Option<(&str, Labels, &str)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let (name, after) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    match after.strip_prefix('{') {
        Some(inside) => {
            let (labels, rest) = parse_labels(inside)?;
            Some((name, labels, rest))
        }
        None => Some((name, Vec::new(), after)),
    }
}

/// Parses `k="v",k2="v2"}` (after the opening brace); returns the labels and
/// what follows the closing brace.
fn parse_labels(s: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let quoted = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in quoted.char_indices() {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        labels.push((key, value));
        rest = &quoted[end?..];
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE chat_node_nats_gaps_total counter
chat_node_nats_gaps_total{reason=\"sequence\"} 2
chat_node_nats_gaps_total{reason=\"slow_consumer\"} 3
chat_node_nats_gaps_total_other 100
chat_node_resyncs_total 5
chat_node_odd{a=\"x,}\\\"y\",b=\"2\"} 1.5
chat_node_nats_connected 1
";

    #[test]
    fn sums_matching_series() {
        assert_eq!(metric_value(TEXT, "chat_node_nats_gaps_total"), Some(5.0));
        assert_eq!(
            metric_value(TEXT, "chat_node_nats_gaps_total{reason=\"slow_consumer\"}"),
            Some(3.0)
        );
        assert_eq!(
            metric_value(TEXT, "chat_node_nats_gaps_total{reason=\"reconnect\"}"),
            None
        );
        assert_eq!(metric_value(TEXT, "chat_node_resyncs_total"), Some(5.0));
        assert_eq!(metric_value(TEXT, "chat_node_nats_connected"), Some(1.0));
        assert_eq!(
            metric_value(TEXT, "chat_node_odd{b=\"2\",a=\"x,}\\\"y\"}"),
            Some(1.5)
        );
        assert_eq!(metric_value(TEXT, "chat_node_missing"), None);
    }
}
