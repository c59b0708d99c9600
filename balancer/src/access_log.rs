//! The access log (`--access-log PATH|stderr`, off by default): one line per
//! client connection in proxy mode, written when it ends.
//!
//! The line reads like nginx's stream log with this `log_format`:
//!
//! ```text
//! log_format chat '$remote_addr [$time_iso8601] $protocol $status $bytes_sent '
//!                 '$bytes_received $session_time "$upstream_addr" '
//!                 '"$upstream_connect_time"';
//! ```
//!
//! followed by how the connection ended (`closed`, `error`, `idle`,
//! `no_upstream`), e.g.
//!
//! ```text
//! 127.0.0.1:50312 [2026-12-02T07:55:01.123Z] TCP 200 5120 1024 12.345 "127.0.0.1:6000" "0.000" closed
//! 127.0.0.1:50313 [2026-12-02T07:55:02.004Z] TCP 502 0 0 1.002 "-" "-" no_upstream
//! ```
//!
//! `$bytes_sent` counts bytes to the client, `$bytes_received` bytes from it;
//! times are seconds with millisecond resolution; the time is when the
//! connection was accepted, in UTC. Status 200: relayed; 502: no node
//! accepted it.
//!
//! Costs and failure semantics: each proxy thread appends its lines to a
//! buffer of its own and writes whole lines with one `write` (the file is
//! opened with `O_APPEND` by each thread, so threads never interleave inside
//! a line) when the buffer passes [`FLUSH_BYTES`] or [`FLUSH_EVERY`] after
//! its first line (the thread's event loop wakes for it), and when the
//! thread stops. A failed write drops those
//! lines, counts them in `chat_balancer_access_log_errors_total` and warns
//! once a minute at most; it never holds a connection. Rotation: the file is
//! opened once; use `copytruncate` (logrotate), which `O_APPEND` writers
//! follow.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::metric_names;

/// Buffered bytes that trigger a write.
pub const FLUSH_BYTES: usize = 16 * 1024;
/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Where the log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Stderr,
}

impl Target {
    /// `off`, `none` or empty: no log; `stderr`; anything else is a path.
    pub fn parse(value: &str) -> Option<Target> {
        match value {
            "off" | "none" | "" => None,
            "stderr" => Some(Target::Stderr),
            path => Some(Target::File(PathBuf::from(path))),
        }
    }

    /// Opens the target for appending (creating the file).
    pub fn open(&self) -> std::io::Result<Output> {
        match self {
            Target::Stderr => Ok(Output::Stderr),
            Target::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Output::File)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stderr => f.write_str("stderr"),
            Target::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An opened target.
#[derive(Debug)]
pub enum Output {
    File(File),
    Stderr,
}

impl Output {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::File(f) => f.write_all(bytes),
            Output::Stderr => std::io::stderr().lock().write_all(bytes),
        }
    }
}

/// One connection's line.
#[derive(Debug, Clone)]
pub struct Entry {
    pub client: SocketAddr,
    pub accepted: SystemTime,
    /// The node's address, as its metrics label.
    pub upstream: Option<String>,
    pub connect_time: Option<Duration>,
    /// Bytes sent to the client.
    pub to_client: u64,
    /// Bytes received from the client.
    pub from_client: u64,
    pub duration: Duration,
    pub end: &'static str,
}

impl Entry {
    /// Appends the line (with its newline) to `out`.
    pub fn format(&self, out: &mut String) {
        let status = if self.upstream.is_some() { 200 } else { 502 };
        let upstream = self.upstream.as_deref().unwrap_or("-");
        let connect = self
            .connect_time
            .map_or_else(|| "-".to_owned(), |d| format!("{:.3}", d.as_secs_f64()));
        let _ = writeln!(
            out,
            "{} [{}] TCP {status} {} {} {:.3} \"{upstream}\" \"{connect}\" {}",
            self.client,
            humantime::format_rfc3339_millis(self.accepted),
            self.to_client,
            self.from_client,
            self.duration.as_secs_f64(),
            self.end,
        );
    }
}

/// One proxy thread's log: lines buffered, written whole. The thread's event
/// loop calls [`Writer::flush`] once [`Writer::due`] has passed.
pub struct Writer {
    out: Output,
    buf: String,
    due: Option<Instant>,
    last_warning: Option<Instant>,
}

impl Writer {
    pub fn new(out: Output) -> Writer {
        Writer {
            out,
            buf: String::new(),
            due: None,
            last_warning: None,
        }
    }

    /// Logs one connection (on the thread that served it); `now` is the
    /// event loop's clock.
    pub fn log(&mut self, entry: &Entry, now: Instant) {
        entry.format(&mut self.buf);
        if self.buf.len() >= FLUSH_BYTES {
            self.flush();
        } else if self.due.is_none() {
            self.due = Some(now + FLUSH_EVERY);
        }
    }

    /// When the buffered lines must be written, if any are buffered.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) {
        self.due = None;
        if self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.out.write_all(self.buf.as_bytes()) {
            let lines = self.buf.lines().count() as u64;
            metrics::counter!(metric_names::ACCESS_LOG_ERRORS_TOTAL).increment(lines);
            let quiet = self
                .last_warning
                .is_some_and(|t| t.elapsed() < Duration::from_secs(60));
            if !quiet {
                self.last_warning = Some(Instant::now());
                tracing::warn!(error = %e, lines, "access log write failed; lines dropped");
            }
        }
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_like_nginx_stream_logs() {
        let mut out = String::new();
        let entry = Entry {
            client: "127.0.0.1:50312".parse().unwrap(),
            accepted: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            upstream: Some("127.0.0.1:6000".into()),
            connect_time: Some(Duration::from_micros(250)),
            to_client: 5120,
            from_client: 1024,
            duration: Duration::from_millis(12_345),
            end: "closed",
        };
        entry.format(&mut out);
        assert_eq!(
            out,
            "127.0.0.1:50312 [2026-11-18T11:06:40.123Z] TCP 200 5120 1024 12.345 \"127.0.0.1:6000\" \"0.000\" closed\n"
        );
        out.clear();
        Entry {
            upstream: None,
            connect_time: None,
            to_client: 0,
            from_client: 0,
            end: "no_upstream",
            ..entry
        }
        .format(&mut out);
        assert!(
            out.contains(" TCP 502 0 0 12.345 \"-\" \"-\" no_upstream\n"),
            "{out}"
        );
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("off"), None);
        assert_eq!(Target::parse("stderr"), Some(Target::Stderr));
        assert_eq!(
            Target::parse("/var/log/a.log"),
            Some(Target::File("/var/log/a.log".into()))
        );
    }
}
