//! A local `chat-node` process: started on free loopback ports with a
//! temporary data directory (or one shared with the other nodes of a
//! cluster), ready once it answers a seed-JSON ping, killed and its own data
//! directory removed when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::LocalError;
use crate::process::{REBIND_WITHIN, find_binary, free_port, start_retrying, wait_until};

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
    /// A data directory shared with other nodes, which the node neither owns
    /// nor deletes; `None` gives the node a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// `--node-id`; `local-<client port>` when `None`.
    pub node_id: Option<String>,
    /// `--nats` URL joining the node to a cluster; alone when `None`.
    pub nats: Option<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            binary: None,
            shards: 2,
            args: Vec::new(),
            log: "warn".into(),
            data_dir: None,
            node_id: None,
            nats: None,
        }
    }
}

/// A `chat-node` process on loopback. Dropping it kills the process and
/// removes its data directory unless that is shared.
pub struct LocalNode {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    options: NodeOptions,
    node_id: String,
    data: DataDir,
    child: Option<Child>,
}

enum DataDir {
    Owned(tempfile::TempDir),
    Shared(PathBuf),
}

impl LocalNode {
    /// Starts a node on free ports, with a fresh data directory unless
    /// `options.data_dir` names a shared one, and waits until it accepts
    /// connections.
    pub fn start(options: NodeOptions) -> Result<LocalNode, LocalError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let data = match &options.data_dir {
            Some(dir) => DataDir::Shared(dir.clone()),
            None => DataDir::Owned(tempfile::Builder::new().prefix("chat-node-").tempdir()?),
        };
        let node_id = options
            .node_id
            .clone()
            .unwrap_or_else(|| format!("local-{}", addr.port()));
        let mut node = LocalNode {
            addr,
            metrics_addr,
            options,
            node_id,
            data,
            child: None,
        };
        // Another process may take a free port before the node binds it
        // (the node then exits: it refuses a port in use): try other ports.
        let mut attempts = 0;
        loop {
            match node.spawn() {
                Err(LocalError::NotReady {
                    status: Some(_), ..
                }) if attempts < 3 => {
                    attempts += 1;
                    node.addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                    node.metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
                    if node.options.node_id.is_none() {
                        node.node_id = format!("local-{}", node.addr.port());
                    }
                }
                result => return result.map(|()| node),
            }
        }
    }

    pub fn data_dir(&self) -> &Path {
        match &self.data {
            DataDir::Owned(dir) => dir.path(),
            DataDir::Shared(dir) => dir,
        }
    }

    /// The node's `--node-id`.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The options the node was started with.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// Whether the process has been started and not yet killed or stopped
    /// through this handle (a process that died by itself still counts).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> Result<(), LocalError> {
        let binary = match &self.options.binary {
            Some(b) => b.clone(),
            None => find_binary("chat-node", "CHAT_NODE_BIN")?,
        };
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--metrics-listen")
            .arg(self.metrics_addr.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--shards")
            .arg(self.options.shards.to_string())
            .arg("--node-id")
            .arg(&self.node_id)
            .args(["--argon2-memory-kib", "1024", "--argon2-iterations", "1"]);
        if let Some(url) = &self.options.nats {
            command.arg("--nats").arg(url);
        }
        let child = command
            .args(&self.options.args)
            .env("CHAT_NODE_LOG", &self.options.log)
            .stdin(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20))
    }

    /// Whether the node expects a PROXY protocol header from loopback (it
    /// trusts 127.0.0.1 with `--proxy-protocol-from`).
    fn wants_proxy_header(&self) -> bool {
        let args = &self.options.args;
        args.iter()
            .position(|a| a == "--proxy-protocol-from")
            .and_then(|i| args.get(i + 1))
            .is_some_and(|list| list.split(',').any(|ip| ip.trim() == "127.0.0.1"))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), LocalError> {
        let addr = self.addr;
        let header = self.wants_proxy_header();
        wait_until(&mut self.child, limit, || answers_ping(addr, header)).map_err(|status| {
            LocalError::NotReady {
                addr,
                secs: limit.as_secs(),
                status,
            }
        })
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

    /// A crash and a restart: kills the process with SIGKILL (a stopped one
    /// too), then starts it again on the same ports, node id and data
    /// directory and waits until it serves. While a port of the killed
    /// process is not yet free the start is tried again, for up to
    /// [`REBIND_WITHIN`].
    pub fn kill9_and_restart(&mut self) -> Result<(), LocalError> {
        self.kill9();
        start_retrying(REBIND_WITHIN, || {
            self.child = None;
            self.spawn()
        })
    }

    /// Pauses the process with SIGSTOP, as a stalled machine would: it keeps
    /// its sockets (the kernel still accepts connections) but answers
    /// nothing and renews no lease until [`LocalNode::cont`]. Returns once
    /// every thread of it is stopped (kill(2) returns before that; a busy
    /// machine can leave a thread running long enough to answer a request
    /// sent right after), or after [`STOP_WITHIN`].
    pub fn stop(&mut self) {
        self.signal(libc::SIGSTOP);
        let Some(pid) = self.pid() else { return };
        let _ = wait_until(&mut self.child, STOP_WITHIN, || all_threads_stopped(pid));
    }

    /// Resumes a process paused by [`LocalNode::stop`] (SIGCONT).
    pub fn cont(&mut self) {
        self.signal(libc::SIGCONT);
    }
}

/// How long [`LocalNode::stop`] waits for every thread to be stopped.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Whether every thread of process `pid` is stopped (state `T` in
/// `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

/// Whether a node at `addr` answers a seed-JSON ping: the end-to-end sign
/// that it accepts and serves connections, not only that a socket is bound.
/// With `proxy_header`, the ping follows a PROXY v2 LOCAL header, as a
/// balancer's own connections do.
pub(crate) fn answers_ping(addr: SocketAddr, proxy_header: bool) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = Vec::new();
    if proxy_header {
        chat_schema::proxy::encode_local(chat_schema::proxy::Version::V2, &mut request);
    }
    request.extend_from_slice(b"{\"msgid\":18}\0");
    if s.write_all(&request).is_err() {
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
