//! Store engines on the message path's shape: one direct message per
//! transaction, as at 5 000 msg/s on one node, where nearly every message
//! is a commit of its own (docs/benchmarks.md, "Where a message's CPU
//! goes").
//!
//! Each engine stores `MESSAGES` 100-byte direct messages between 1 000
//! users, one transaction each: check that sender and recipient exist, take
//! the next id, write the message and its two index entries (by recipient,
//! by conversation), commit. Measured per message: the process's CPU time
//! (user + system, every thread of the process, so the checkpointer's and
//! the syncing threads' work counts; the kernel's own writeback threads do
//! not, for any engine) and the time each commit took (p50, p99, max).
//!
//! - `sqlite (chat-node)`: the node's own `SqliteStore` (`--sync normal`:
//!   WAL, no fsync at commit, its checkpointer thread fsyncs), `append` then
//!   `commit`, the exact calls the store thread makes for a direct message.
//! - `lmdb`: LMDB through `heed`, the engine issue 13 names, with the same
//!   keys (message by id, recipient+id, conversation+id, a users table, an
//!   id counter); `NO_SYNC` (commit writes its pages to the OS, like
//!   SQLite's `NORMAL`) and a thread syncing the file every 20 ms (like the
//!   checkpointer's fsyncs). Unlike SQLite's WAL, which has checksums, an
//!   LMDB file written with `NO_SYNC` may be corrupt after a power loss if
//!   the file system reorders writes; a process crash loses nothing.
//! - `lmdb, write map`: the same with `WRITE_MAP` (pages written in the
//!   memory map, no `pwrite` per page).
//! - `log`: one `write(2)` of the encoded message per commit to an
//!   append-only file, a thread syncing it every 20 ms: the floor of a
//!   message log of our own, which has no index at all (its indexes would
//!   live in memory and be rebuilt at start).
//!
//! ```sh
//! cargo bench -p chat-node --bench engines              # 20 000 messages each
//! cargo bench -p chat-node --bench engines -- 100000
//! ```

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat_node::model::{NewMessage, Target, UserId};
use chat_node::store::Store;
use chat_node::store::sqlite::{SqliteStore, SyncPolicy};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, EnvFlags, EnvOpenOptions};

const USERS: u64 = 1_000;
const TEXT_LEN: usize = 100;
/// How often the syncing threads of the LMDB and log engines sync.
const SYNC_EVERY: Duration = Duration::from_millis(20);

fn main() {
    let messages: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("MESSAGES is a number"))
        .unwrap_or(20_000);
    println!(
        "{messages} direct messages of {TEXT_LEN} bytes among {USERS} users, one transaction each"
    );
    println!(
        "| engine | CPU µs per message | commit p50 µs | p99 µs | max µs | messages/s |\n|---|---:|---:|---:|---:|---:|"
    );
    for engine in [
        Engine::Sqlite,
        Engine::Lmdb { write_map: false },
        Engine::Lmdb { write_map: true },
        Engine::Log,
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let run = engine.run(dir.path(), messages);
        run.print(engine.name(), messages);
    }
}

#[derive(Clone, Copy)]
enum Engine {
    Sqlite,
    Lmdb { write_map: bool },
    Log,
}

/// What one engine's run measured.
struct Run {
    cpu: Duration,
    wall: Duration,
    /// Each message's transaction, in nanoseconds.
    commits: Vec<u64>,
}

impl Run {
    fn print(mut self, name: &str, messages: usize) {
        self.commits.sort_unstable();
        let at = |q: f64| {
            let i = ((self.commits.len() as f64 * q) as usize).min(self.commits.len() - 1);
            self.commits[i] as f64 / 1e3
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
            self.cpu.as_secs_f64() * 1e6 / messages as f64,
            at(0.5),
            at(0.99),
            *self.commits.last().unwrap_or(&0) as f64 / 1e3,
            messages as f64 / self.wall.as_secs_f64(),
        );
    }
}

/// The process's CPU time so far (user + system, all threads).
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Sender and recipient of message `n`.
fn pair(n: usize) -> (u64, u64) {
    let from = 1 + n as u64 % USERS;
    let to = 1 + (n as u64 * 7 + 1) % USERS;
    (from, if to == from { 1 + to % USERS } else { to })
}

/// Runs `step(n)` for each message, timing each and the whole.
fn measure(messages: usize, mut step: impl FnMut(usize)) -> Run {
    let mut commits = Vec::with_capacity(messages);
    let (cpu, wall) = (process_cpu(), Instant::now());
    for n in 0..messages {
        let t = Instant::now();
        step(n);
        commits.push(t.elapsed().as_nanos() as u64);
    }
    Run {
        cpu: process_cpu() - cpu,
        wall: wall.elapsed(),
        commits,
    }
}

/// A thread calling `sync` every [`SYNC_EVERY`] until dropped.
struct Syncer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start(sync: impl Fn() + Send + 'static) -> Syncer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(SYNC_EVERY);
                sync();
            }
        });
        Syncer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A message as the LMDB and log engines store it: sender, recipient,
/// group, time, then the sender's name and the text, length-prefixed.
fn encode(out: &mut Vec<u8>, id: u64, from: u64, to: u64, name: &str, text: &str) {
    out.clear();
    for v in [id, from, to, 0, id] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for s in [name, text] {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite (chat-node's store, --sync normal)",
            Engine::Lmdb { write_map: false } => "lmdb (heed), NO_SYNC, synced every 20 ms",
            Engine::Lmdb { write_map: true } => {
                "lmdb (heed), NO_SYNC + WRITE_MAP, synced every 20 ms"
            }
            Engine::Log => "append-only log, one write per message, synced every 20 ms",
        }
    }

    fn run(self, dir: &Path, messages: usize) -> Run {
        let text = "x".repeat(TEXT_LEN);
        match self {
            Engine::Sqlite => {
                let mut s = SqliteStore::open(&dir.join("bench.db"), SyncPolicy::Normal)
                    .expect("opening SQLite");
                for i in 0..USERS {
                    s.create_user(&format!("user{i}"), "hash").expect("a user");
                }
                s.commit().expect("commit");
                measure(messages, |n| {
                    let (from, to) = pair(n);
                    s.append(&NewMessage {
                        sender_id: from as UserId,
                        sender_name: "someone".into(),
                        target: Target::User(to as UserId),
                        time_ms: n as u64,
                        text: text.clone(),
                    })
                    .expect("append");
                    s.commit().expect("commit");
                })
            }
            Engine::Lmdb { write_map } => {
                let mut flags = EnvFlags::NO_SYNC;
                if write_map {
                    flags |= EnvFlags::WRITE_MAP;
                }
                let mut options = EnvOpenOptions::new();
                options.map_size(4 << 30).max_dbs(8);
                // SAFETY: the directory is this run's own; nothing else maps it.
                let env = unsafe {
                    options.flags(flags);
                    options.open(dir).expect("opening LMDB")
                };
                let wtxn = env.write_txn().expect("a write transaction");
                let [users, meta, messages_db, to_user, by_pair]: [Database<Bytes, Bytes>; 5] = env
                    .create_databases_and_commit(wtxn, |dbo, wtxn| {
                        let mut open = |name| dbo.create_database::<Bytes, Bytes>(wtxn, Some(name));
                        Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit([
                            open("users")?,
                            open("meta")?,
                            open("messages")?,
                            open("to_user")?,
                            open("by_pair")?,
                        ]))
                    })
                    .expect("creating the databases")
                    .unwrap_commit();
                let mut wtxn = env.write_txn().expect("a write transaction");
                for i in 1..=USERS {
                    users
                        .put(&mut wtxn, &i.to_be_bytes(), format!("user{i}").as_bytes())
                        .expect("a user");
                }
                wtxn.commit().expect("commit");
                let syncing = env.clone();
                let _syncer = Syncer::start(move || {
                    let _ = syncing.force_sync();
                });
                let mut record = Vec::with_capacity(256);
                measure(messages, |n| {
                    let (from, to) = pair(n);
                    let mut wtxn = env.write_txn().expect("a write transaction");
                    for user in [from, to] {
                        assert!(
                            users
                                .get(&wtxn, &user.to_be_bytes())
                                .expect("a read")
                                .is_some()
                        );
                    }
                    let id = meta
                        .get(&wtxn, b"next_id")
                        .expect("a read")
                        .map_or(1, |v| u64::from_be_bytes(v.try_into().expect("8 bytes")));
                    meta.put(&mut wtxn, b"next_id", &(id + 1).to_be_bytes())
                        .expect("a write");
                    encode(&mut record, id, from, to, "someone", &text);
                    messages_db
                        .put(&mut wtxn, &id.to_be_bytes(), &record)
                        .expect("a write");
                    let mut key = [0u8; 24];
                    key[..8].copy_from_slice(&to.to_be_bytes());
                    key[8..16].copy_from_slice(&id.to_be_bytes());
                    to_user.put(&mut wtxn, &key[..16], &[]).expect("a write");
                    key[..8].copy_from_slice(&from.min(to).to_be_bytes());
                    key[8..16].copy_from_slice(&from.max(to).to_be_bytes());
                    key[16..].copy_from_slice(&id.to_be_bytes());
                    by_pair.put(&mut wtxn, &key, &[]).expect("a write");
                    wtxn.commit().expect("commit");
                })
            }
            Engine::Log => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("messages.log"))
                    .expect("opening the log");
                let syncing = file.try_clone().expect("a second handle");
                let _syncer = Syncer::start(move || {
                    let _ = syncing.sync_data();
                });
                let mut file = file;
                let mut record = Vec::with_capacity(256);
                measure(messages, |n| {
                    let (from, to) = pair(n);
                    encode(&mut record, n as u64 + 1, from, to, "someone", &text);
                    file.write_all(&record).expect("a write");
                })
            }
        }
    }
}
