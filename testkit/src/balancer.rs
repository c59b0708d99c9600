//! A local `chat-balancer` process in front of local nodes, for tests and
//! benchmarks: started on free loopback ports (proxy, redirect, admin), its
//! stderr kept in a file that [`LocalBalancer::log`] returns, killed when
//! dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::process::{REBIND_WITHIN, find_binary, free_port, start_retrying, wait_until};
use crate::{LocalError, http_get};

/// How to start a local balancer.
#[derive(Debug, Clone)]
pub struct BalancerOptions {
    /// The `chat-balancer` binary; found next to the running executable (or
    /// in `$CHAT_BALANCER_BIN`) when `None`.
    pub binary: Option<PathBuf>,
    /// `--upstream` lines, e.g. `"127.0.0.1:6000 weight=2"`.
    pub upstreams: Vec<String>,
    /// Extra flags, e.g. `["--probe-interval", "200ms"]`.
    pub args: Vec<String>,
    /// Passed as `CHAT_BALANCER_LOG`.
    pub log: String,
    /// `--threads`.
    pub threads: usize,
}

impl Default for BalancerOptions {
    fn default() -> Self {
        BalancerOptions {
            binary: None,
            upstreams: Vec::new(),
            args: Vec::new(),
            log: "info".into(),
            threads: 2,
        }
    }
}

/// A `chat-balancer` process on loopback.
pub struct LocalBalancer {
    /// Proxy mode.
    pub addr: SocketAddr,
    pub redirect_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    binary: PathBuf,
    options: BalancerOptions,
    log: tempfile::NamedTempFile,
    child: Option<Child>,
}

impl LocalBalancer {
    /// Starts a balancer on free ports and waits until its admin endpoint
    /// answers and its proxy port accepts.
    pub fn start(options: BalancerOptions) -> Result<LocalBalancer, LocalError> {
        let binary = match &options.binary {
            Some(b) => b.clone(),
            None => find_binary("chat-balancer", "CHAT_BALANCER_BIN")?,
        };
        let port = || -> Result<SocketAddr, LocalError> {
            Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
        };
        let (addr, redirect_addr, admin_addr) = (port()?, port()?, port()?);
        let log = tempfile::Builder::new()
            .prefix("chat-balancer-")
            .suffix(".log")
            .tempfile()?;
        let mut balancer = LocalBalancer {
            addr,
            redirect_addr,
            admin_addr,
            binary,
            options,
            log,
            child: None,
        };
        balancer.spawn()?;
        Ok(balancer)
    }

    /// Starts the process (its stderr appended to the log) and waits until
    /// it serves.
    fn spawn(&mut self) -> Result<(), LocalError> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--redirect-listen")
            .arg(self.redirect_addr.to_string())
            .arg("--admin-listen")
            .arg(self.admin_addr.to_string())
            .arg("--threads")
            .arg(self.options.threads.to_string());
        for u in &self.options.upstreams {
            command.arg("--upstream").arg(u);
        }
        let stderr = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log.path())?;
        let child = command
            .args(&self.options.args)
            .env("CHAT_BALANCER_LOG", &self.options.log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        self.child = Some(child);
        let limit = Duration::from_secs(20);
        let (addr, admin_addr) = (self.addr, self.admin_addr);
        wait_until(&mut self.child, limit, || {
            http_get(admin_addr, "/status.json").is_ok()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .map_err(|status| LocalError::NotReady {
            addr,
            secs: limit.as_secs(),
            status,
        })
    }

    /// Kills the process with SIGKILL (every client connection through it
    /// breaks), starts it again on the same ports with the same upstreams
    /// and flags, and waits until it serves; while a port is not yet free
    /// the start is tried again, for up to 10 s.
    pub fn restart(&mut self) -> Result<(), LocalError> {
        self.kill9();
        let result = start_retrying(REBIND_WITHIN, || {
            self.child = None;
            self.spawn()
        });
        if result.is_err() {
            self.kill9();
        }
        result
    }

    /// Whether the process has been started and not killed through this
    /// handle.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// What the process has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `GET /metrics` from the admin endpoint.
    pub fn metrics(&self) -> std::io::Result<String> {
        http_get(self.admin_addr, "/metrics")
    }

    /// `GET /status.json` from the admin endpoint.
    pub fn status_json(&self) -> std::io::Result<serde_json::Value> {
        let body = http_get(self.admin_addr, "/status.json")?;
        serde_json::from_str(&body).map_err(std::io::Error::other)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Whether the process has exited; its status if so.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for LocalBalancer {
    fn drop(&mut self) {
        self.kill9();
    }
}
