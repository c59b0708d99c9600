//! What starting any local process needs: a free loopback port, the binary
//! to run (a sibling of the running executable, or named by a variable),
//! and a wait until the process serves that gives up early when it exits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::LocalError;

/// A free TCP port on 127.0.0.1 (free when asked: the caller binds it soon).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds binary `name`: the path in the variable `env` when set, else a
/// sibling of the running executable (`target/debug/` for both binaries
/// and, one level up, for test executables in `deps/`). Nothing is built
/// here: the error says how to build it.
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
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    Err(LocalError::NoBinary {
        path: dir.join(name),
        env: env.to_owned(),
    })
}

/// Polls `ready` every 20 ms until it holds; fails with the child's exit
/// status if the child exits first, or with `None` once `limit` has passed.
pub(crate) fn wait_until(
    child: &mut Option<Child>,
    limit: Duration,
    ready: impl Fn() -> bool,
) -> Result<(), Option<ExitStatus>> {
    let started = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        let status = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() || started.elapsed() > limit {
            return Err(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a restart keeps trying while a port of the killed process is
/// not yet free.
pub const REBIND_WITHIN: Duration = Duration::from_secs(10);

/// Calls `start` until it succeeds, fails otherwise than by the process
/// exiting before it was ready (a port of the process it replaces still
/// taken), or `within` has passed; `start` clears what the failed attempt
/// left.
pub fn start_retrying(
    within: Duration,
    mut start: impl FnMut() -> Result<(), LocalError>,
) -> Result<(), LocalError> {
    let started = Instant::now();
    loop {
        match start() {
            Err(e) if e.exited_before_ready() && started.elapsed() < within => {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}
