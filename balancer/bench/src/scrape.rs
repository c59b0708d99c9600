//! Reading a Prometheus histogram off a `/metrics` page, so that a
//! measurement can report the server's own view next to the client's: fetch
//! the page before and after the window ([`get`]), take the histogram's
//! buckets from each ([`Buckets::parse`]) and their difference
//! ([`Buckets::since`]), which holds the observations made in between.
//!
//! A plain HTTP/1.1 GET on a blocking socket, on whatever thread calls it
//! (the load generator calls it off its readers' runtime, so that parsing a
//! page does not delay reading replies).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Gives up on a page after this long.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `url` (`http://host:port/path`; the path defaults to
/// `/metrics`), or why not.
pub fn get(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{url}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("{url}: {e}"))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tcp-bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP response"))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{url}: {status}"));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
        })
    });
    if chunked {
        dechunk(body).ok_or_else(|| format!("{url}: bad chunked body"))
    } else {
        Ok(body.to_string())
    }
}

/// The payload of a chunked HTTP body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// A histogram's cumulative buckets, all label sets added up.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    /// (upper bound, observations at or under it), by bound; the last is
    /// `+Inf`.
    pub le: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
}

impl Buckets {
    /// The histogram `name` on a Prometheus text page, `None` if the page
    /// has none (a histogram appears with its first observation).
    pub fn parse(page: &str, name: &str) -> Option<Buckets> {
        let bucket = format!("{name}_bucket{{");
        let sum = format!("{name}_sum");
        let mut out = Buckets::default();
        let mut found = false;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let Some((labels, value)) = rest.split_once('}') else {
                    continue;
                };
                let Some(le) = labels
                    .split(',')
                    .find_map(|l| l.trim().strip_prefix("le=\""))
                    .and_then(|l| l.strip_suffix('"'))
                else {
                    continue;
                };
                let le = match le {
                    "+Inf" => f64::INFINITY,
                    le => match le.parse::<f64>() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                };
                let Some(count) = first_number(value) else {
                    continue;
                };
                found = true;
                match out.le.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += count as u64,
                    None => out.le.push((le, count as u64)),
                }
            } else if let Some(rest) = line.strip_prefix(&sum)
                && (rest.starts_with(' ') || rest.starts_with('{'))
            {
                let value = rest.rsplit_once('}').map_or(rest, |(_, v)| v);
                out.sum += first_number(value).unwrap_or(0.0);
            }
        }
        out.le.sort_by(|a, b| a.0.total_cmp(&b.0));
        found.then_some(out)
    }

    /// The observations since `before` (an earlier scrape of the same
    /// histogram): bucket by bucket, the difference.
    pub fn since(&self, before: &Buckets) -> Buckets {
        let le = self
            .le
            .iter()
            .map(|&(b, c)| {
                let was = before
                    .le
                    .iter()
                    .find(|(bb, _)| *bb == b)
                    .map_or(0, |(_, c)| *c);
                (b, c.saturating_sub(was))
            })
            .collect();
        Buckets {
            le,
            sum: (self.sum - before.sum).max(0.0),
        }
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.le.last().map_or(0, |(_, c)| *c)
    }

    /// Observations at or under `bound`, if it is one of the buckets.
    pub fn at_or_under(&self, bound: f64) -> Option<u64> {
        self.le
            .iter()
            .find(|(b, _)| (b - bound).abs() <= bound * 1e-9)
            .map(|(_, c)| *c)
    }

    /// The bucket bound quantile `q` falls under (`+Inf` past the last
    /// finite one), `None` without observations.
    pub fn bound_of(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        self.le.iter().find(|(_, c)| *c >= rank).map(|(b, _)| *b)
    }

    /// The largest finite bound.
    pub fn last_finite(&self) -> Option<f64> {
        self.le
            .iter()
            .rev()
            .map(|(b, _)| *b)
            .find(|b| b.is_finite())
    }
}

fn first_number(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE h histogram
h_bucket{le=\"0.000005\"} 2
h_bucket{le=\"0.00001\"} 5
h_bucket{le=\"0.000025\"} 9
h_bucket{le=\"+Inf\"} 10
h_sum 0.0001
h_count 10
hx_bucket{le=\"+Inf\"} 99
";

    #[test]
    fn parses_and_subtracts() {
        let after = Buckets::parse(PAGE, "h").expect("found");
        assert_eq!(after.count(), 10);
        assert_eq!(after.at_or_under(0.00001), Some(5));
        let before = Buckets::parse(
            "h_bucket{le=\"0.000005\"} 1\nh_bucket{le=\"0.00001\"} 1\n\
             h_bucket{le=\"0.000025\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.00002\n",
            "h",
        )
        .expect("found");
        let d = after.since(&before);
        // Observations since: 1 ≤ 5 µs, 4 ≤ 10 µs, 8 ≤ 25 µs, 9 in all.
        assert_eq!(d.count(), 9);
        assert_eq!(d.at_or_under(0.000005), Some(1));
        assert_eq!(d.bound_of(0.4), Some(0.00001));
        assert_eq!(d.bound_of(0.5), Some(0.000025));
        assert!((d.sum - 0.00008).abs() < 1e-12);
        assert_eq!(d.bound_of(0.99), Some(f64::INFINITY));
        assert_eq!(d.last_finite(), Some(0.000025));
        assert!(Buckets::parse(PAGE, "nope").is_none());
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n").as_deref(),
            Some("abcdef")
        );
    }
}
