//! A real Prometheus for tests: started from a config text (and rule files
//! beside it) on a free loopback port, with its data in a temporary
//! directory, queried through its HTTP API. Killed on drop. It is Debian's
//! `prometheus` package (`apt-get install -y prometheus`), found on `$PATH`,
//! in `/usr/bin`, or at `$CHAT_PROMETHEUS_BIN`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, wait_until};
use crate::{LocalError, http_get};

/// A `prometheus` process on loopback.
pub struct LocalPrometheus {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Finds `prometheus`, or says how to install it.
pub fn find_prometheus() -> Result<PathBuf, LocalError> {
    if let Some(path) = std::env::var_os("CHAT_PROMETHEUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .ok_or(LocalError::NoPrometheus)
}

impl LocalPrometheus {
    /// Writes `config` as `prometheus.yml` and each `(name, text)` of
    /// `files` beside it (rule files), starts Prometheus on it and waits
    /// until it is ready.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Result<LocalPrometheus, LocalError> {
        let binary = find_prometheus()?;
        let mut dir = tempfile::Builder::new()
            .prefix("chat-prometheus-")
            .tempdir()?;
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text)?;
        }
        let mut attempts = 0;
        loop {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let mut p = LocalPrometheus {
                addr,
                child: None,
                dir,
            };
            let log = std::fs::File::create(p.dir.path().join("prometheus.log"))?;
            p.child = Some(
                Command::new(&binary)
                    .arg(format!(
                        "--config.file={}",
                        p.dir.path().join("prometheus.yml").display()
                    ))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        p.dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()?,
            );
            let ready = wait_until(&mut p.child, Duration::from_secs(30), || {
                http_get(addr, "/-/ready").is_ok()
            });
            match ready {
                Ok(()) => return Ok(p),
                Err(Some(_)) if attempts < 3 => {
                    attempts += 1;
                    dir = p.take_dir();
                }
                Err(status) => {
                    return Err(LocalError::PrometheusNotReady {
                        log: p.log(),
                        status,
                    });
                }
            }
        }
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.kill9();
        let placeholder = tempfile::Builder::new()
            .prefix("chat-prometheus-")
            .tempdir()
            .expect("a temporary directory");
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// The directory holding the config, rule files and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`, decoded; an error unless the API says success.
    pub fn api(&self, path: &str) -> std::io::Result<serde_json::Value> {
        let body = http_get(self.addr, &format!("/api/v1/{path}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(std::io::Error::other)?;
        if v["status"] != "success" {
            return Err(std::io::Error::other(format!("{path}: {body}")));
        }
        Ok(v["data"].clone())
    }

    /// Evaluates `expr` now: the `data` of `/api/v1/query`.
    pub fn query(&self, expr: &str) -> std::io::Result<serde_json::Value> {
        self.api(&format!("query?query={}", percent_encode(expr)))
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalPrometheus {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Encodes a query parameter (RFC 3986 unreserved characters stay).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            percent_encode(r#"rate(x{job=~"a.*"}[1m])"#),
            "rate%28x%7Bjob%3D~%22a.%2A%22%7D%5B1m%5D%29"
        );
    }
}
