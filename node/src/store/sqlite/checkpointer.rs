//! Copies the write-ahead log into the database file from a thread of its
//! own, so that the writer seldom waits for a checkpoint's fsyncs.
//!
//! # Why
//!
//! SQLite checkpoints from the connection that commits, once the WAL holds
//! 1 000 pages. A checkpoint fsyncs the WAL, copies its pages into the
//! database file and fsyncs that: a few milliseconds of blocking on this
//! machine kind, many times a second under load (every commit appends each
//! page it changed, whole). With the writer on a shard's executor, every
//! connection of that shard stalled with it: that was most of the delivery
//! p99 at 5 000 messages/s (10 ms; 1.6–2 ms with no fsync at all, measured
//! with `synchronous=OFF`, which is not safe on power loss and so not an
//! option).
//!
//! # How
//!
//! This thread, with a connection of its own, runs `PRAGMA
//! wal_checkpoint(PASSIVE)` every [`PERIOD`]: it copies what it can without
//! taking the write lock (the writer goes on committing) and does the
//! fsyncs. A passive checkpoint can not wrap the WAL while commits keep
//! coming: only a write transaction that starts with every frame copied
//! does. So the writer keeps SQLite's automatic checkpoint, at
//! [`WRAP_FRAMES`] instead of 1 000: when it fires, this thread has copied
//! all but the last few milliseconds of frames, the writer's share is small,
//! and its next transaction starts the WAL again from the beginning. The
//! writer pays one small checkpoint per `WRAP_FRAMES` pages of WAL (64 MiB
//! at the 1 KiB pages of a new file) instead of a full one per 1 000.
//!
//! That small checkpoint still stalls every commit for its fsyncs (commits
//! of 2.5–10 ms), so fewer wraps mean fewer stalls: at 5 000 messages/s,
//! 65 536 frames gave 4–6 commits over 2.5 ms in 8 s against 15–21 with
//! 16 384, and a delivery p99 of 1.6–5.2 ms against 3.9–4.2 ms (three
//! alternated runs each, docs/benchmarks.md). The price is a WAL file of up
//! to 64 MiB and a 512 KiB index (`-shm`), read back at the next open after
//! a crash.
//!
//! # Failure semantics
//!
//! A checkpoint that fails here (the disk is full, say) is logged, counted
//! and retried at the next period; the writer's own checkpoint still bounds
//! the WAL as SQLite's default would, only larger. Durability is SQLite's:
//! a checkpoint's fsyncs follow the connection's `synchronous` setting, the
//! writer's own policy.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::metric_names;

/// How often the thread checkpoints.
pub const PERIOD: Duration = Duration::from_millis(20);
/// WAL size, in frames (pages), at which the writer checkpoints itself.
pub const WRAP_FRAMES: i64 = 65_536;

/// The running thread; stops (after one last checkpoint) when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing with `conn` (opened on `path`, in WAL mode).
    pub fn start(conn: Connection, path: &Path) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = flume::bounded::<()>(1);
        let name = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&conn, &name, &stopped))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, name: &str, stopped: &flume::Receiver<()>) {
    loop {
        let stopping = !matches!(
            stopped.recv_timeout(PERIOD),
            Err(flume::RecvTimeoutError::Timeout)
        );
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = done {
            tracing::warn!(error = %e, db = name, "WAL checkpoint failed; retried");
            metrics::counter!(metric_names::STORE_ERRORS_TOTAL).increment(1);
        }
        if stopping {
            return;
        }
    }
}
