//! What the servers under test cost: their processes' CPU time and resident
//! memory, sampled before the users connect and at the start and the end of
//! the measured window, so that the report can give CPU per delivered
//! message and memory per connection.
//!
//! Two ways to see the servers:
//! - [`Probe::Local`]: `--local`'s own processes, read from
//!   `/proc/PID/stat` (utime + stime) and `/proc/PID/status` (`VmRSS`); the
//!   nodes summed, the balancer apart;
//! - [`Probe::Metrics`]: `--server-metrics` URLs, whose standard
//!   `process_cpu_seconds_total` and `process_resident_memory_bytes` are
//!   summed over the URLs.
//!
//! Sampling blocks (file reads, HTTP); callers run it on a blocking thread.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

/// CPU time and resident memory of a set of processes, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// User + system CPU time since the processes started, summed.
    pub cpu_seconds: f64,
    /// Resident memory, summed.
    pub rss_bytes: u64,
}

impl Usage {
    fn add(&mut self, o: Usage) {
        self.cpu_seconds += o.cpu_seconds;
        self.rss_bytes += o.rss_bytes;
    }
}

/// One sample of the servers: the nodes (or the `--server-metrics`
/// endpoints, summed) and, with `--local`, the balancer apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub nodes: Usage,
    pub balancer: Option<Usage>,
}

/// Why the servers could not be sampled.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("process {pid}: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {text:?}")]
    Parse { what: &'static str, text: String },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} has no {metric}")]
    Missing { url: String, metric: &'static str },
    #[error("bad URL {0:?}: expected http://host:port/path")]
    BadUrl(String),
}

/// A `--server-metrics` URL: plain HTTP, a host and port, a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsUrl {
    pub url: String,
    /// `host:port`.
    pub authority: String,
    pub path: String,
}

impl MetricsUrl {
    /// `http://127.0.0.1:9100/metrics`; the path defaults to `/metrics`.
    pub fn parse(url: &str) -> Result<MetricsUrl, ProbeError> {
        let bad = || ProbeError::BadUrl(url.to_string());
        let rest = url.trim().strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(MetricsUrl {
            url: url.trim().to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    fn addr(&self) -> Result<SocketAddr, ProbeError> {
        self.authority
            .to_socket_addrs()
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| std::io::Error::other("no address for this host"))
            })
            .map_err(|source| ProbeError::Http {
                url: self.url.clone(),
                source,
            })
    }

    /// The process usage this endpoint reports.
    fn sample(&self) -> Result<Usage, ProbeError> {
        let text = chat_testkit::http_get(self.addr()?, &self.path).map_err(|source| {
            ProbeError::Http {
                url: self.url.clone(),
                source,
            }
        })?;
        parse_metrics(&text).map_err(|metric| ProbeError::Missing {
            url: self.url.clone(),
            metric,
        })
    }
}

/// Where the servers' usage comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Processes on this machine (`--local`), by pid.
    Local {
        nodes: Vec<u32>,
        balancer: Option<u32>,
    },
    /// Prometheus endpoints (`--server-metrics`), summed, and the proxy in
    /// front of them by pid (`--balancer-pid`; with its children).
    Metrics {
        urls: Vec<MetricsUrl>,
        balancer: Option<u32>,
    },
}

impl Probe {
    /// A probe of `urls` and the proxy `balancer`; `None` when there are
    /// no URLs.
    pub fn metrics(urls: &[String], balancer: Option<u32>) -> Result<Option<Probe>, ProbeError> {
        if urls.is_empty() {
            return Ok(None);
        }
        let parsed = urls
            .iter()
            .map(|u| MetricsUrl::parse(u))
            .collect::<Result<_, _>>()?;
        Ok(Some(Probe::Metrics {
            urls: parsed,
            balancer,
        }))
    }

    /// `local` or `metrics`: the `source` of the report.
    pub fn source(&self) -> &'static str {
        match self {
            Probe::Local { .. } => "local",
            Probe::Metrics { .. } => "metrics",
        }
    }

    /// How many node processes (or endpoints) are summed.
    pub fn node_count(&self) -> u32 {
        match self {
            Probe::Local { nodes, .. } => nodes.len() as u32,
            Probe::Metrics { urls, .. } => urls.len() as u32,
        }
    }

    /// What is sampled, for the report: pids or URLs.
    pub fn describe(&self) -> String {
        match self {
            Probe::Local { nodes, balancer } => {
                let nodes: Vec<String> = nodes.iter().map(u32::to_string).collect();
                let mut text = format!(
                    "/proc of node{} {}",
                    if nodes.len() == 1 { "" } else { "s" },
                    nodes.join(", ")
                );
                if let Some(b) = balancer {
                    text.push_str(&format!(" and balancer {b}"));
                }
                text
            }
            Probe::Metrics { urls, balancer } => {
                let urls: Vec<&str> = urls.iter().map(|u| u.url.as_str()).collect();
                let mut text = urls.join(", ");
                if let Some(b) = balancer {
                    text.push_str(&format!(" and /proc of balancer {b} (with its children)"));
                }
                text
            }
        }
    }

    /// Samples every process now (blocking).
    pub fn sample(&self) -> Result<Sample, ProbeError> {
        match self {
            Probe::Local { nodes, balancer } => {
                let mut sum = Usage::default();
                for &pid in nodes {
                    sum.add(proc_usage(pid)?);
                }
                Ok(Sample {
                    nodes: sum,
                    balancer: balancer.map(proc_usage).transpose()?,
                })
            }
            Probe::Metrics { urls, balancer } => {
                let mut sum = Usage::default();
                for url in urls {
                    sum.add(url.sample()?);
                }
                Ok(Sample {
                    nodes: sum,
                    balancer: balancer.map(proc_tree_usage).transpose()?,
                })
            }
        }
    }
}

/// The usage of process `pid`, from `/proc`.
pub fn proc_usage(pid: u32) -> Result<Usage, ProbeError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|source| ProbeError::Proc { pid, source })
    };
    let ticks = clock_ticks();
    let (utime, stime) = parse_stat_times(&read("stat")?)?;
    Ok(Usage {
        cpu_seconds: (utime + stime) as f64 / ticks as f64,
        rss_bytes: parse_status_rss(&read("status")?)?,
    })
}

/// The usage of process `pid` and its children (nginx's master and its
/// workers), from `/proc`: their CPU and resident memory summed.
pub fn proc_tree_usage(pid: u32) -> Result<Usage, ProbeError> {
    let mut sum = proc_usage(pid)?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|source| ProbeError::Proc { pid, source })?;
    // Each thread's children (a process forks from any of its threads).
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            // A child that just exited is not counted.
            if let Ok(u) = proc_usage(child) {
                sum.add(u);
            }
        }
    }
    Ok(sum)
}

/// Clock ticks per second (`utime` and `stime` are counted in them).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a system constant and has no memory effects.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

/// `utime` and `stime` (fields 14 and 15 of proc(5), in clock ticks) of a
/// `/proc/PID/stat` line. The command name (field 2) is in parentheses and
/// may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_times(stat: &str) -> Result<(u64, u64), ProbeError> {
    let bad = || ProbeError::Parse {
        what: "/proc/PID/stat",
        text: stat.chars().take(200).collect(),
    };
    let (_, rest) = stat.rsplit_once(')').ok_or_else(bad)?;
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Ok((field(14).ok_or_else(bad)?, field(15).ok_or_else(bad)?))
}

/// `VmRSS` of a `/proc/PID/status` file, in bytes (the file gives kB).
pub fn parse_status_rss(status: &str) -> Result<u64, ProbeError> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| {
            let mut words = v.split_whitespace();
            let n: u64 = words.next()?.parse().ok()?;
            match words.next() {
                Some("kB") | None => Some(n * 1024),
                Some(_) => None,
            }
        })
        .ok_or_else(|| ProbeError::Parse {
            what: "VmRSS in /proc/PID/status",
            text: status.chars().take(200).collect(),
        })
}

/// `process_cpu_seconds_total` and `process_resident_memory_bytes` of a
/// Prometheus text page (each summed over its series); the name of the
/// first one missing otherwise.
pub fn parse_metrics(text: &str) -> Result<Usage, &'static str> {
    const CPU: &str = "process_cpu_seconds_total";
    const RSS: &str = "process_resident_memory_bytes";
    let cpu = chat_testkit::metric_value(text, CPU).ok_or(CPU)?;
    let rss = chat_testkit::metric_value(text, RSS).ok_or(RSS)?;
    Ok(Usage {
        cpu_seconds: cpu,
        rss_bytes: rss.max(0.0).round() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_fields_14_and_15_after_the_command_name() {
        // A real line, with a command name holding a space and a parenthesis.
        let stat = "4242 (chat node) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    377 52 0 0 20 0 5 0 123456 987654321 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_times(stat).unwrap(), (377, 52));
        assert!(parse_stat_times("4242 (truncated").is_err());
        assert!(parse_stat_times("4242 (short) S 1 2 3").is_err());
    }

    #[test]
    fn status_rss_is_in_bytes() {
        let status = "Name:\tchat-node\nVmPeak:\t  900000 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(parse_status_rss(status).unwrap(), 12345 * 1024);
        assert!(
            parse_status_rss("Name:\tzombie\nThreads:\t1\n").is_err(),
            "a zombie has no VmRSS"
        );
    }

    #[test]
    fn a_process_tree_sums_its_children() {
        let me = std::process::id();
        let alone = proc_tree_usage(me).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let with_child = proc_tree_usage(me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let child_rss = with_child.rss_bytes as i64 - alone.rss_bytes as i64;
        // sleep's resident memory (hundreds of KiB) is added; our own may
        // move a little in between.
        assert!(child_rss > 100 << 10, "{alone:?} then {with_child:?}");
        assert!(proc_tree_usage(u32::MAX).is_err());
    }

    #[test]
    fn this_process_can_be_read() {
        let u = proc_usage(std::process::id()).unwrap();
        assert!(u.rss_bytes > 1_000_000, "{u:?}");
        assert!(u.cpu_seconds >= 0.0);
        assert!(matches!(
            proc_usage(u32::MAX),
            Err(ProbeError::Proc { pid: u32::MAX, .. })
        ));
    }

    #[test]
    fn prometheus_process_metrics_are_read_and_summed() {
        let text = "\
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.048576e7
process_resident_memory_bytes_other 5
chat_node_connections{shard=\"0\",protocol=\"fb\"} 3
";
        assert_eq!(
            parse_metrics(text).unwrap(),
            Usage {
                cpu_seconds: 12.5,
                rss_bytes: 10_485_760
            }
        );
        let labelled = "process_cpu_seconds_total{instance=\"a\"} 1\n\
                        process_cpu_seconds_total{instance=\"b\"} 2\n\
                        process_resident_memory_bytes 7\n";
        assert_eq!(parse_metrics(labelled).unwrap().cpu_seconds, 3.0);
        assert_eq!(
            parse_metrics("process_cpu_seconds_total 1\n"),
            Err("process_resident_memory_bytes")
        );
        assert_eq!(parse_metrics(""), Err("process_cpu_seconds_total"));
    }

    #[test]
    fn metrics_urls_parse() {
        let u = MetricsUrl::parse("http://127.0.0.1:9100/metrics").unwrap();
        assert_eq!(u.authority, "127.0.0.1:9100");
        assert_eq!(u.path, "/metrics");
        let u = MetricsUrl::parse("http://node-1:9100").unwrap();
        assert_eq!(u.path, "/metrics", "the path defaults to /metrics");
        for bad in [
            "127.0.0.1:9100",
            "https://a:1/metrics",
            "http://a/metrics",
            "http://:9/x",
            "http://a:port/x",
        ] {
            assert!(MetricsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_endpoint_is_scraped() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                let body = "process_cpu_seconds_total 2.25\nprocess_resident_memory_bytes 4096\n";
                write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        let url = format!("http://{addr}/metrics");
        let probe = Probe::metrics(&[url.clone(), url], None).unwrap().unwrap();
        assert_eq!(probe.source(), "metrics");
        assert_eq!(probe.node_count(), 2);
        let s = probe.sample().unwrap();
        assert_eq!(
            s.nodes,
            Usage {
                cpu_seconds: 4.5,
                rss_bytes: 8192
            },
            "summed over the URLs"
        );
        assert_eq!(s.balancer, None);
        server.join().unwrap();
    }
}
