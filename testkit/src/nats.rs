//! A local `nats-server` for clusters of local nodes: started on free
//! loopback ports (clients and HTTP monitoring), killed with SIGKILL and
//! restarted on the same port to see what the nodes do when NATS goes away,
//! killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{REBIND_WITHIN, free_port, start_retrying, wait_until};
use crate::{LocalError, http_get};

/// Where `nats-server` is looked for after `$CHAT_NATS_SERVER_BIN` and `$PATH`.
const FIXED_PATHS: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];

/// How long a start waits for the server's `INFO` line.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A `nats-server` process on loopback.
pub struct LocalNats {
    binary: PathBuf,
    addr: SocketAddr,
    monitor_addr: SocketAddr,
    child: Option<Child>,
}

/// Finds `nats-server`: `$CHAT_NATS_SERVER_BIN`, else `$PATH`, else the
/// places Debian and Ubuntu install it.
pub fn find_nats_server() -> Result<PathBuf, LocalError> {
    if let Some(path) = std::env::var_os("CHAT_NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .chain(FIXED_PATHS.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            LocalError::NoNatsServer(format!("looked on $PATH and at {}", FIXED_PATHS.join(", ")))
        })
}

impl LocalNats {
    /// Starts the `nats-server` that [`find_nats_server`] finds.
    pub fn start() -> Result<LocalNats, LocalError> {
        LocalNats::start_with(find_nats_server()?)
    }

    /// Starts `binary` on free loopback ports and waits until it accepts a
    /// connection and greets it with its `INFO` line.
    pub fn start_with(binary: PathBuf) -> Result<LocalNats, LocalError> {
        if !binary.is_file() {
            return Err(LocalError::NoNatsServer(format!(
                "{} is not a file",
                binary.display()
            )));
        }
        // Another process may take a free port before the server binds it:
        // then try other ports.
        let mut attempts = 0;
        loop {
            let mut nats = LocalNats {
                binary: binary.clone(),
                addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                monitor_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                child: None,
            };
            match nats.spawn(Duration::ZERO) {
                Err(LocalError::NatsNotReady {
                    status: Some(_), ..
                }) if attempts < 3 => attempts += 1,
                result => return result.map(|()| nats),
            }
        }
    }

    /// `nats://127.0.0.1:PORT`, for `--nats`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The client port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP monitoring endpoint (`/varz`, `/connz`, ...).
    pub fn monitor_addr(&self) -> SocketAddr {
        self.monitor_addr
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Whether the server has been started and not killed through this handle.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The subjects clients are subscribed to right now, from the
    /// monitoring endpoint's `/connz?subs=1`.
    pub fn subscriptions(&self) -> std::io::Result<Vec<String>> {
        let body = http_get(self.monitor_addr, "/connz?subs=1")?;
        let connz: serde_json::Value =
            serde_json::from_str(&body).map_err(std::io::Error::other)?;
        Ok(connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect())
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports (killing it first if it
    /// runs), retrying for a few seconds while the port is not yet free.
    pub fn restart(&mut self) -> Result<(), LocalError> {
        self.kill9();
        self.spawn(REBIND_WITHIN)
    }

    /// Starts the process; when it exits before it is ready (a port still
    /// taken) starts it again until `retry_for` has passed.
    fn spawn(&mut self, retry_for: Duration) -> Result<(), LocalError> {
        let result = start_retrying(retry_for, || {
            let child = Command::new(&self.binary)
                .args(["-a", "127.0.0.1", "-p"])
                .arg(self.addr.port().to_string())
                .arg("-m")
                .arg(self.monitor_addr.port().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?;
            self.child = Some(child);
            self.wait_ready()
        });
        if result.is_err() {
            self.kill9();
        }
        result
    }

    fn wait_ready(&mut self) -> Result<(), LocalError> {
        let addr = self.addr;
        wait_until(&mut self.child, READY_WITHIN, || greets(addr)).map_err(|status| {
            LocalError::NatsNotReady {
                addr,
                secs: READY_WITHIN.as_secs(),
                status,
            }
        })
    }
}

/// Whether a NATS server at `addr` accepts a connection and sends its `INFO`
/// line, as it does to every client before anything else.
fn greets(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    matches!(BufReader::new(stream).read_line(&mut line), Ok(n) if n > 0 && line.starts_with("INFO "))
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.kill9();
    }
}
