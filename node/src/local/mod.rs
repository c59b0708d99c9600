//! Local clusters for tests, benchmarks and `chat-loadtest --local`: real
//! `chat-node` processes on free loopback ports with a temporary data
//! directory, stopped and cleaned up when dropped.
//!
//! This is the one piece of code that starts local nodes; everything that
//! needs a running system goes through it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to start a local node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The `chat-node` binary; found next to the running executable when `None`.
    pub binary: Option<PathBuf>,
    pub shards: usize,
    /// Extra flags, e.g. `["--max-text", "100"]`.
    pub args: Vec<String>,
    /// Passed as `CHAT_NODE_LOG` (e.g. "warn", "debug").
    pub log: String,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            binary: None,
            shards: 2,
            args: Vec::new(),
            log: "warn".into(),
        }
    }
}

/// A `chat-node` process on loopback. Dropping it kills the process and
/// removes its data directory.
pub struct LocalNode {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    options: NodeOptions,
    data: tempfile::TempDir,
    child: Option<Child>,
}

/// Why a local node could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "chat-node binary not found (looked for {0}); build it with `cargo build -p chat-node` or set CHAT_NODE_BIN"
    )]
    NoBinary(PathBuf),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "chat-node did not accept connections on {addr} within {secs} s (exit status: {status:?})"
    )]
    NotReady {
        addr: SocketAddr,
        secs: u64,
        status: Option<ExitStatus>,
    },
}

/// A free TCP port on 127.0.0.1 (free when asked: the caller binds it soon).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds a sibling binary of the running executable (`target/debug/` for
/// both binaries and, one level up, for test executables in `deps/`).
pub fn find_binary(name: &str, env: &str) -> Result<PathBuf, LocalError> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(LocalError::NoBinary(dir.join(name)))
}

impl LocalNode {
    /// Starts a node on free ports with a fresh data directory and waits until
    /// it accepts connections.
    pub fn start(options: NodeOptions) -> Result<LocalNode, LocalError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut node = LocalNode {
            addr,
            metrics_addr,
            options,
            data: tempfile::Builder::new().prefix("chat-node-").tempdir()?,
            child: None,
        };
        node.spawn()?;
        Ok(node)
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn spawn(&mut self) -> Result<(), LocalError> {
        let binary = match &self.options.binary {
            Some(b) => b.clone(),
            None => find_binary("chat-node", "CHAT_NODE_BIN")?,
        };
        let child = Command::new(binary)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--metrics-listen")
            .arg(self.metrics_addr.to_string())
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--shards")
            .arg(self.options.shards.to_string())
            .arg("--node-id")
            .arg(format!("local-{}", self.addr.port()))
            .args(["--argon2-memory-kib", "1024", "--argon2-iterations", "1"])
            .args(&self.options.args)
            .env("CHAT_NODE_LOG", &self.options.log)
            .stdin(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), LocalError> {
        let started = Instant::now();
        loop {
            if answers_ping(self.addr) {
                return Ok(());
            }
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if status.is_some() || started.elapsed() > limit {
                return Err(LocalError::NotReady {
                    addr: self.addr,
                    secs: limit.as_secs(),
                    status,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        match self.child.take() {
            Some(mut child) => child.wait(),
            None => Err(std::io::Error::other("node is not running")),
        }
    }

    /// Starts the process again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<(), LocalError> {
        if self.child.is_some() {
            self.terminate()?;
        }
        self.spawn()
    }
}

/// Whether a node at `addr` answers a seed-JSON ping: the end-to-end sign
/// that it accepts and serves connections, not only that a socket is bound.
fn answers_ping(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"{\"msgid\":18}\0").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    matches!(s.read(&mut reply), Ok(n) if n > 0 && reply[..n].starts_with(b"{\"msgid\":19"))
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill9();
    }
}
