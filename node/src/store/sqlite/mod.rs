//! The embedded backend: the whole [`Store`] in one SQLite database file.
//!
//! # Why SQLite in WAL mode
//!
//! Several node processes of one cluster run on the same machine against the
//! same state. SQLite's write-ahead log lets them share one file: any number
//! of readers, one writer at a time, the writer lock taken and released per
//! transaction through the file's locks. Embedded key-value engines such as
//! fjall or redb lock their files to a single process, so they cannot serve a
//! cluster without a server in front of them.
//!
//! # How a batch flows
//!
//! The trait's group commit maps onto one SQLite transaction:
//!
//! 1. the first call after a [`Store::commit`] (a read as much as a write)
//!    opens a transaction with `BEGIN IMMEDIATE`, which takes the database's
//!    write lock at once, waiting up to [`BUSY_TIMEOUT`] for another process
//!    to finish its own batch;
//! 2. every further call of the batch runs inside that transaction, so the
//!    batch sees one consistent state, and checks such as "is this name free"
//!    followed by the insert cannot race with another process: unique names,
//!    id allocation and the one-session claim are atomic across processes;
//! 3. [`Store::commit`] commits: one WAL append (and, with
//!    [`SyncPolicy::Full`], one fsync) for the whole batch;
//!    [`Store::rollback`] discards it.
//!
//! Because a transaction holds the write lock from its first call, the caller
//! must end every batch, reads included, with `commit` or `rollback`; an
//! open transaction blocks every other process sharing the file.
//!
//! Domain errors (`NameTaken`, `UnknownUser`, ...) are detected by reads
//! before anything is written, so they leave the transaction usable with
//! nothing partial in it. Every SQLite error becomes [`StoreError::Backend`].
//!
//! Every statement goes through the connection's prepared-statement cache,
//! and every query is served by an index (see `schema`).
//!
//! # History
//!
//! Messages stay after every recipient acknowledged them, for the history
//! retention ([`SqliteStore::set_history_retention`]); `compact` then deletes
//! them in slices. A page of history is one range of one index
//! (`messages_by_pair` for a direct conversation, `messages_to_group` for a
//! group) read backwards from `before`: its cost is the page, whatever else
//! the store holds.

mod checkpointer;
mod schema;
mod wal_writes;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    Contact, Conversation, GroupId, GroupInfo, HistoryPage, Member, MessageId, NewMessage, Result,
    Role, Store, StoreError, StoredMessage, Target, UNREAD_CAP, Unread, UserId, UserRecord,
    page_of_groups,
};

/// How long a call waits for another process's transaction to release the
/// database before failing with a `Backend` error.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Called by SQLite while another process holds the write lock, with the
/// number of earlier calls for this attempt; returns whether to try again.
///
/// SQLite's own handler sleeps in steps of milliseconds, which serialises
/// nodes sharing the file behind sleeps far longer than a group commit (tens
/// of microseconds to a millisecond). This one polls every 50 µs for the
/// first 50 ms, then every millisecond until [`BUSY_TIMEOUT`].
fn wait_for_lock(calls: i32) -> bool {
    const FAST_CALLS: u64 = 1_000;
    const FAST: Duration = Duration::from_micros(50);
    const SLOW: Duration = Duration::from_millis(1);
    let calls = u64::try_from(calls).unwrap_or(0);
    let waited = if calls < FAST_CALLS {
        FAST * calls as u32
    } else {
        FAST * FAST_CALLS as u32 + SLOW * (calls - FAST_CALLS) as u32
    };
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(if calls < FAST_CALLS { FAST } else { SLOW });
    true
}

/// A connection on `path` in WAL mode with `sync`, waiting for other
/// processes' locks with [`wait_for_lock`].
fn connect(path: &Path, sync: SyncPolicy) -> Result<Connection> {
    let vfs = wal_writes::register().map_err(StoreError::Backend)?;
    let conn =
        Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs).db()?;
    conn.busy_handler(Some(wait_for_lock)).db()?;
    // Only a new file takes it (before WAL mode is set), see [`PAGE_SIZE`].
    conn.pragma_update(None, "page_size", PAGE_SIZE).db()?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .db()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "sqlite: {} cannot use WAL mode (journal mode is {mode})",
            path.display()
        )));
    }
    let synchronous = match sync {
        SyncPolicy::Normal => "NORMAL",
        SyncPolicy::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous).db()?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB).db()?;
    conn.pragma_update(None, "temp_store", "MEMORY").db()?;
    // Plans never depend on bound values. Without this, a statement whose
    // bound parameter meets a partial index's condition or a LIMIT is
    // compiled again every time that value changes (SQLite is built with
    // STAT4): 7 % of the node's CPU at 5 000 messages/s went to re-preparing.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .db()?;
    Ok(conn)
}

/// The page size of a new database file. A commit appends every page it
/// changed, whole, to the WAL; a message changes about three (table, index,
/// cursor), so small pages make the WAL, its checkpoints and their fsyncs
/// smaller: at 5 000 messages/s, 1 KiB pages gave a delivery p99 of 2.0–3.6
/// ms against 3.1–4.5 ms with SQLite's 4 KiB (same run, `scripts/bench.sh`
/// load), at the same CPU per message. Texts longer than a page take
/// overflow pages.
const PAGE_SIZE: i64 = 1024;

/// Each connection's page cache, in KiB (SQLite's default is about 2 MiB).
///
/// A bigger cache costs more than it saves on the write path. When an
/// insert rebalances a B-tree, SQLite parks a page under a page number far
/// beyond the file's end for a moment (the lock-byte page, 1 048 577 with
/// 1 KiB pages); the commit that follows then drops every cached page above
/// the file's end by walking the whole cache's hash table. That walk grows
/// with the cache: `pcache1TruncateUnsafe` was 3 % of the node's CPU at
/// 5 000 messages/s a few seconds after start with 32 MiB, and 6.5 % of
/// `cargo bench -p chat-node --bench engines`. With 100 000 messages in
/// that bench the store's CPU per message was 49.6 and 51.3 µs with a
/// 32 MiB cache, 38.5–42.9 µs with 2 MiB (three rounds) and no better
/// below. A reader connection gains nothing from a big cache either: SQLite
/// discards it whole whenever another connection has written since its
/// last read transaction, which under load is every time.
const CACHE_KIB: i64 = 2_048;

/// SQL for the database's wall clock in Unix milliseconds: the one clock every
/// process sharing the file compares leases with.
macro_rules! now_ms {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}

/// SQL for "the session of user `?1` is held by a node whose lease is live".
macro_rules! live_session {
    ($user:literal) => {
        concat!(
            "EXISTS(SELECT 1 FROM sessions s JOIN nodes n ON n.id = s.node WHERE s.user_id = ",
            $user,
            " AND n.expires_ms > ",
            now_ms!(),
            ")"
        )
    };
}

/// SQL for the highest message id ever allocated (0 before the first
/// message): `compact` never deletes the row with the highest id (see
/// [`newest_id`]), so this never goes down and an id is never given twice.
/// A macro so that statements are `concat!`ed at compile time.
macro_rules! last_message_id {
    () => {
        "COALESCE((SELECT MAX(id) FROM messages), 0)"
    };
}

/// The columns `message_row` reads, in its order.
macro_rules! message_columns {
    () => {
        "id, sender_id, sender_name, recipient_id, group_id, time_ms, text"
    };
}

/// `group_members.role` of the creator; everyone else has 1.
const ROLE_CREATOR: i64 = 0;

/// How hard a commit pushes its data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `PRAGMA synchronous=NORMAL`: a commit is written to the WAL file but
    /// not fsynced (the WAL is synced only at checkpoints). A committed batch
    /// survives a crash or `kill -9` of the process, because its pages are in
    /// the operating system's page cache; the last batches may be lost if the
    /// machine loses power or the kernel crashes. The database is never
    /// corrupted either way.
    #[default]
    Normal,
    /// `PRAGMA synchronous=FULL`: every commit fsyncs the WAL, so a committed
    /// batch also survives a power loss, at the price of one fsync per batch.
    Full,
}

/// The [`Store`] on one SQLite database file (see the module documentation).
///
/// Several `SqliteStore`s, in one process or many, may open the same file;
/// their transactions are serialised by SQLite's write lock.
pub struct SqliteStore {
    conn: Connection,
    /// Whether this store has opened a transaction that it has neither
    /// committed nor rolled back.
    in_tx: bool,
    /// How a batch starts: `BEGIN IMMEDIATE` (writer), `BEGIN` (reader).
    begin: &'static str,
    /// The writer's checkpointer thread.
    checkpointer: Option<checkpointer::Checkpointer>,
    /// How long acknowledged messages stay for history (`None`: forever).
    retention: Option<Duration>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.conn.path())
            .field("in_tx", &self.in_tx)
            .finish()
    }
}

/// Turns SQLite failures into `StoreError::Backend`.
trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(|e| StoreError::Backend(format!("sqlite: {e}")))
    }
}

/// The SQLite key of a user or group id. SQLite integers are signed and ids
/// are positive, so an id above `i64::MAX` cannot exist: it becomes -1, which
/// matches no row.
fn key(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(-1)
}

/// A message-id bound for a comparison: ids above `i64::MAX` do not exist, so
/// clamping keeps the comparison's meaning.
fn bound(id: MessageId) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Ids read back from SQLite are positive.
fn id_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn message_row(r: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: id_of(r.get(0)?),
        sender_id: id_of(r.get(1)?),
        sender_name: r.get(2)?,
        recipient_id: id_of(r.get(3)?),
        group_id: id_of(r.get(4)?),
        // Stored as the same 64 bits, so every u64 round-trips.
        time_ms: r.get::<_, i64>(5)? as u64,
        text: r.get(6)?,
    })
}

fn user_exists(c: &Connection, id: i64) -> Result<bool> {
    c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .db()?
        .exists([id])
        .db()
}

/// Name and online state of a user, if they exist.
fn name_online(c: &Connection, id: i64) -> Result<Option<(String, bool)>> {
    c.prepare_cached(concat!(
        "SELECT name, ",
        live_session!("?1"),
        " FROM users WHERE id = ?1"
    ))
    .db()?
    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
    .db()
}

fn group_exists(c: &Connection, id: i64) -> Result<bool> {
    c.prepare_cached("SELECT 1 FROM chat_groups WHERE id = ?1")
        .db()?
        .exists([id])
        .db()
}

/// A group with its members, creator first then by join order.
fn group_info(c: &Connection, id: i64) -> Result<Option<GroupInfo>> {
    let head: Option<(String, String)> = c
        .prepare_cached("SELECT name, description FROM chat_groups WHERE id = ?1")
        .db()?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .db()?;
    let Some((name, description)) = head else {
        return Ok(None);
    };
    let mut stmt = c
        .prepare_cached(concat!(
            "SELECT u.id, u.name, ",
            live_session!("u.id"),
            ", gm.role
             FROM group_members gm JOIN users u ON u.id = gm.user_id
             WHERE gm.group_id = ?1
             ORDER BY gm.seq"
        ))
        .db()?;
    let members = stmt
        .query_map([id], |r| {
            Ok(Member {
                id: id_of(r.get(0)?),
                name: r.get(1)?,
                online: r.get(2)?,
                role: if r.get::<_, i64>(3)? == ROLE_CREATOR {
                    Role::Creator
                } else {
                    Role::Normal
                },
            })
        })
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()?;
    Ok(Some(GroupInfo {
        id: id_of(id),
        name,
        description,
        members,
    }))
}

/// The id of the first message sent within `keep` of now (`i64::MAX` when
/// none was): a binary search over ids, since ids follow sending times
/// (across a cluster's nodes, to within their clocks' difference, which is
/// nothing next to a retention). About 20 index seeks however many messages
/// are stored; walking them from the oldest instead would read every
/// message that outlived the retention undelivered, at every compaction
/// slice, on the writer. `newest` is the highest id stored ([`newest_id`]).
fn first_id_since(c: &Connection, keep: Duration, newest: i64) -> Result<i64> {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let cutoff: i64 = c
        .prepare_cached(concat!("SELECT ", now_ms!(), " - ?1"))
        .db()?
        .query_row([keep_ms], |r| r.get(0))
        .db()?;
    // The first message at or after `id`: (its id, its time).
    let mut at = c
        .prepare_cached("SELECT id, time_ms FROM messages WHERE id >= ?1 ORDER BY id LIMIT 1")
        .db()?;
    let mut first_at = |id: i64| -> Result<Option<(i64, i64)>> {
        at.query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db()
    };
    let Some((mut lo, oldest)) = first_at(0)? else {
        return Ok(i64::MAX);
    };
    if oldest >= cutoff {
        return Ok(lo);
    }
    // Invariant: the message at `lo` is older than the cutoff; the answer is
    // above it, at most `hi` (MAX: no message is recent enough).
    let mut hi = i64::MAX;
    let mut top = newest;
    while lo < top {
        let mid = lo + (top - lo) / 2 + 1;
        match first_at(mid)? {
            Some((id, time)) if time >= cutoff => {
                hi = id;
                top = mid - 1;
            }
            Some((id, _)) => lo = id,
            None => top = mid - 1,
        }
    }
    Ok(hi)
}

/// The highest message id stored (0 if none). New messages take the next
/// one, so `compact` deletes only rows below it: the id of a deleted newest
/// row would be given again.
fn newest_id(c: &Connection) -> Result<i64> {
    c.prepare_cached(concat!("SELECT ", last_message_id!()))
        .db()?
        .query_row([], |r| r.get(0))
        .db()
}

/// Deletes up to `limit` messages of deleted groups (all but the row with
/// id `newest`, which goes once a newer message is stored); forgets a
/// deleted group once none of its messages is left.
fn compact_deleted_groups(c: &Connection, limit: i64, newest: i64) -> Result<i64> {
    if limit <= 0 {
        return Ok(0);
    }
    c.prepare_cached(
        "DELETE FROM deleted_groups WHERE NOT EXISTS (
             SELECT 1 FROM messages m WHERE m.group_id = deleted_groups.id AND m.group_id != 0)",
    )
    .db()?
    .execute([])
    .db()?;
    let Some(g) = c
        .prepare_cached(
            "SELECT d.id FROM deleted_groups d WHERE EXISTS (
                 SELECT 1 FROM messages m WHERE m.group_id = d.id AND m.group_id != 0 AND m.id < ?1)
             LIMIT 1",
        )
        .db()?
        .query_row([newest], |r| r.get::<_, i64>(0))
        .optional()
        .db()?
    else {
        return Ok(0);
    };
    let n = c
        .prepare_cached(
            "DELETE FROM messages WHERE id IN (
                 SELECT id FROM messages WHERE group_id = ?1 AND group_id != 0 AND id < ?3 LIMIT ?2)",
        )
        .db()?
        .execute([g, limit, newest])
        .db()? as i64;
    Ok(n)
}

/// Removes `user` from group `g`, with their read position in it; returns
/// whether they were in it.
fn remove_from_group(c: &Connection, g: i64, user: i64) -> Result<bool> {
    let n = c
        .prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")
        .db()?
        .execute([g, user])
        .db()?;
    c.prepare_cached("DELETE FROM read_marks WHERE user_id = ?1 AND peer_id = 0 AND group_id = ?2")
        .db()?
        .execute([user, g])
        .db()?;
    Ok(n > 0)
}

/// `joined_after` of `user` in `group`: `UnknownGroup` if there is no such
/// group, `NotAMember` if they are not in it.
fn membership(c: &Connection, user: UserId, group: GroupId) -> Result<i64> {
    let g = key(group);
    let joined_after: Option<i64> = c
        .prepare_cached(
            "SELECT joined_after FROM group_members WHERE group_id = ?1 AND user_id = ?2",
        )
        .db()?
        .query_row([g, key(user)], |r| r.get(0))
        .optional()
        .db()?;
    match joined_after {
        Some(after) => Ok(after),
        None if group_exists(c, g)? => Err(StoreError::NotAMember { user, group }),
        None => Err(StoreError::UnknownGroup(group)),
    }
}

/// How far `user` has read the conversation with `peer` (or group `group`);
/// 0 if never marked.
fn read_mark(c: &Connection, user: i64, peer: i64, group: i64) -> Result<i64> {
    Ok(c.prepare_cached(
        "SELECT up_to FROM read_marks WHERE user_id = ?1 AND peer_id = ?2 AND group_id = ?3",
    )
    .db()?
    .query_row([user, peer, group], |r| r.get(0))
    .optional()
    .db()?
    .unwrap_or(0))
}

/// Merges `more` (sorted by id) into `acc` (sorted by id), keeping at most
/// `limit` messages.
fn merge_limited(acc: &mut Vec<StoredMessage>, more: Vec<StoredMessage>, limit: usize) {
    if more.is_empty() {
        return;
    }
    acc.extend(more);
    acc.sort_unstable_by_key(|m| m.id);
    acc.truncate(limit);
}

impl SqliteStore {
    /// Runs `sql`, a `SELECT COUNT(*)` with one parameter, in the batch.
    fn count(&mut self, sql: &str, param: i64) -> Result<u64> {
        let c = self.tx()?;
        let n: i64 = c
            .prepare_cached(sql)
            .db()?
            .query_row([param], |r| r.get(0))
            .db()?;
        Ok(id_of(n))
    }

    /// Opens (creating it if missing) the database at `path`, switches it to
    /// WAL mode and creates the schema if it is not there.
    ///
    /// Any number of stores, in any number of processes, may open the same
    /// file. Fails with `Backend` if the file is not a database or holds a
    /// schema version this code does not know.
    pub fn open(path: &Path, sync: SyncPolicy) -> Result<Self> {
        let mut store = Self::open_as(path, sync)?;
        // Checkpoints run on a thread of their own, the writer's only to
        // wrap the WAL (see `checkpointer`).
        store
            .conn
            .pragma_update(None, "wal_autocheckpoint", checkpointer::WRAP_FRAMES)
            .db()?;
        let thread = checkpointer::Checkpointer::start(connect(path, sync)?, path)
            .map_err(|e| StoreError::Backend(format!("sqlite: starting the checkpointer: {e}")))?;
        store.checkpointer = Some(thread);
        Ok(store)
    }

    /// Opens the database for reading only: each batch is a read transaction
    /// (`BEGIN`, no write lock), which sees the last commit of every process
    /// and never blocks a writer. Every write fails with `Backend`.
    pub fn open_reader(path: &Path) -> Result<Self> {
        let mut store = Self::open_as(path, SyncPolicy::Normal)?;
        store.conn.pragma_update(None, "query_only", true).db()?;
        store.begin = "BEGIN";
        Ok(store)
    }

    /// How long `compact` keeps messages every recipient acknowledged, for
    /// history: `None` keeps them forever. A store opens with
    /// `Some(Duration::ZERO)`: acknowledged messages go at the next
    /// compaction.
    pub fn set_history_retention(&mut self, retention: Option<Duration>) {
        self.retention = retention;
    }

    /// Opens the database, creating or migrating the schema (`schema`).
    fn open_as(path: &Path, sync: SyncPolicy) -> Result<Self> {
        let mut conn = connect(path, sync)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn,
            in_tx: false,
            begin: "BEGIN IMMEDIATE",
            checkpointer: None,
            retention: Some(Duration::ZERO),
        })
    }

    /// The connection inside the batch's transaction, opening it if needed.
    fn tx(&mut self) -> Result<&Connection> {
        if self.in_tx {
            if self.conn.is_autocommit() {
                // SQLite rolled the transaction back itself (disk full, I/O
                // error): the batch is lost and must not be continued.
                return Err(StoreError::Backend(
                    "sqlite: the transaction was rolled back by SQLite".into(),
                ));
            }
        } else {
            if !self.conn.is_autocommit() {
                // A transaction left over by a failed rollback.
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.conn
                .prepare_cached(self.begin)
                .db()?
                .execute([])
                .db()?;
            self.in_tx = true;
        }
        Ok(&self.conn)
    }
}

#[cfg(test)]
thread_local! {
    /// How many times this thread counted pending messages (tests: the
    /// writer must never, issue 17).
    pub(crate) static PENDING_TOTAL_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Store for SqliteStore {
    fn create_user(&mut self, name: &str, password_hash: &str) -> Result<UserId> {
        let c = self.tx()?;
        if c.prepare_cached("SELECT 1 FROM users WHERE name = ?1")
            .db()?
            .exists([name])
            .db()?
        {
            return Err(StoreError::NameTaken);
        }
        let id = c
            .prepare_cached("INSERT INTO users (name, password_hash) VALUES (?1, ?2)")
            .db()?
            .insert(params![name, password_hash])
            .db()?;
        Ok(id_of(id))
    }

    fn user(&mut self, id: UserId) -> Result<Option<UserRecord>> {
        let c = self.tx()?;
        c.prepare_cached("SELECT name, password_hash FROM users WHERE id = ?1")
            .db()?
            .query_row([key(id)], |r| {
                Ok(UserRecord {
                    id,
                    name: r.get(0)?,
                    password_hash: r.get(1)?,
                })
            })
            .optional()
            .db()
    }

    fn claim_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<()> {
        let c = self.tx()?;
        let u = key(user);
        match name_online(c, u)? {
            None => Err(StoreError::UnknownUser(user)),
            Some((_, true)) => Err(StoreError::AlreadyOnline(user)),
            Some((_, false)) => {
                // A claim left by a node whose lease is over is replaced.
                c.prepare_cached(
                    "INSERT INTO sessions (user_id, node, epoch) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id) DO UPDATE SET node = excluded.node, epoch = excluded.epoch",
                )
                    .db()?
                    // Stored as the same 64 bits, so every u64 round-trips.
                    .execute(params![u, node, epoch as i64])
                    .db()?;
                // Every node holding a claim has a row, so that
                // `expired_nodes` reads `nodes` rather than every session.
                c.prepare_cached("INSERT OR IGNORE INTO nodes (id, expires_ms) VALUES (?1, 0)")
                    .db()?
                    .execute([node])
                    .db()?;
                Ok(())
            }
        }
    }

    fn release_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<bool> {
        let c = self.tx()?;
        let n = c
            .prepare_cached("DELETE FROM sessions WHERE user_id = ?1 AND node = ?2 AND epoch = ?3")
            .db()?
            .execute(params![key(user), node, epoch as i64])
            .db()?;
        Ok(n > 0)
    }

    fn session_node(&mut self, user: UserId) -> Result<Option<String>> {
        let c = self.tx()?;
        c.prepare_cached(concat!(
            "SELECT s.node FROM sessions s JOIN nodes n ON n.id = s.node
             WHERE s.user_id = ?1 AND n.expires_ms > ",
            now_ms!()
        ))
        .db()?
        .query_row([key(user)], |r| r.get(0))
        .optional()
        .db()
    }

    fn renew_lease(&mut self, node: &str, ttl: std::time::Duration) -> Result<()> {
        let c = self.tx()?;
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        c.prepare_cached(concat!(
            "INSERT INTO nodes (id, expires_ms) VALUES (?1, ",
            now_ms!(),
            " + ?2) ON CONFLICT (id) DO UPDATE SET expires_ms = excluded.expires_ms"
        ))
        .db()?
        .execute(params![node, ttl])
        .db()?;
        Ok(())
    }

    fn end_lease(&mut self, node: &str) -> Result<()> {
        let c = self.tx()?;
        c.prepare_cached("UPDATE nodes SET expires_ms = 0 WHERE id = ?1")
            .db()?
            .execute([node])
            .db()?;
        Ok(())
    }

    /// Reads the small `nodes` table (every claim's node has a row, see
    /// `claim_session`) and one index probe per expired node, not the
    /// sessions: it runs every second on every node.
    fn expired_nodes(&mut self) -> Result<Vec<String>> {
        let c = self.tx()?;
        c.prepare_cached(concat!(
            "SELECT n.id FROM nodes n WHERE n.expires_ms <= ",
            now_ms!(),
            " AND EXISTS(SELECT 1 FROM sessions s WHERE s.node = n.id) ORDER BY n.id"
        ))
        .db()?
        .query_map([], |r| r.get(0))
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()
    }

    /// The users come back sorted by id.
    fn release_node(&mut self, node: &str) -> Result<Vec<UserId>> {
        let c = self.tx()?;
        let mut users = c
            .prepare_cached("DELETE FROM sessions WHERE node = ?1 RETURNING user_id")
            .db()?
            .query_map([node], |r| r.get::<_, i64>(0))
            .db()?
            .map(|r| r.map(id_of))
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        users.sort_unstable();
        Ok(users)
    }

    /// `add_friend(u, u)` fails with `AlreadyFriends(u, u)` (after
    /// `UnknownUser` if `u` does not exist): a domain error, so the batch that
    /// contains it stays usable, which a `Backend` error would not allow.
    fn add_friend(&mut self, user: UserId, friend: UserId) -> Result<Contact> {
        let c = self.tx()?;
        let (u, f) = (key(user), key(friend));
        if !user_exists(c, u)? {
            return Err(StoreError::UnknownUser(user));
        }
        let Some((name, online)) = name_online(c, f)? else {
            return Err(StoreError::UnknownUser(friend));
        };
        if u == f
            || c.prepare_cached("SELECT 1 FROM friends WHERE user_id = ?1 AND friend_id = ?2")
                .db()?
                .exists([u, f])
                .db()?
        {
            return Err(StoreError::AlreadyFriends(user, friend));
        }
        c.prepare_cached("INSERT INTO friends (user_id, friend_id) VALUES (?1, ?2), (?2, ?1)")
            .db()?
            .execute([u, f])
            .db()?;
        Ok(Contact {
            id: friend,
            name,
            online,
        })
    }

    fn remove_friend(&mut self, user: UserId, friend: UserId) -> Result<()> {
        let c = self.tx()?;
        let removed = c
            .prepare_cached(
                "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2)
                                        OR (user_id = ?2 AND friend_id = ?1)",
            )
            .db()?
            .execute([key(user), key(friend)])
            .db()?;
        if removed == 0 {
            return Err(StoreError::NotFriends(user, friend));
        }
        Ok(())
    }

    fn find_user(&mut self, name: &str) -> Result<Option<Contact>> {
        let c = self.tx()?;
        c.prepare_cached(concat!(
            "SELECT u.id, u.name, ",
            live_session!("u.id"),
            " FROM users u WHERE u.name = ?1"
        ))
        .db()?
        .query_row([name], |r| {
            Ok(Contact {
                id: id_of(r.get(0)?),
                name: r.get(1)?,
                online: r.get(2)?,
            })
        })
        .optional()
        .db()
    }

    /// `UnknownUser` if `user` does not exist.
    fn friends(&mut self, user: UserId) -> Result<Vec<Contact>> {
        let c = self.tx()?;
        let u = key(user);
        if !user_exists(c, u)? {
            return Err(StoreError::UnknownUser(user));
        }
        c.prepare_cached(concat!(
            "SELECT u.id, u.name, ",
            live_session!("u.id"),
            " FROM friends f JOIN users u ON u.id = f.friend_id
             WHERE f.user_id = ?1
             ORDER BY f.friend_id"
        ))
        .db()?
        .query_map([u], |r| {
            Ok(Contact {
                id: id_of(r.get(0)?),
                name: r.get(1)?,
                online: r.get(2)?,
            })
        })
        .db()?
        .collect::<rusqlite::Result<Vec<_>>>()
        .db()
    }

    fn create_group(&mut self, creator: UserId, name: &str, description: &str) -> Result<GroupId> {
        let c = self.tx()?;
        let u = key(creator);
        if !user_exists(c, u)? {
            return Err(StoreError::UnknownUser(creator));
        }
        let g = c
            .prepare_cached(
                "INSERT INTO chat_groups (name, description, creator) VALUES (?1, ?2, ?3)",
            )
            .db()?
            .insert(params![name, description, u])
            .db()?;
        c.prepare_cached(concat!(
            "INSERT INTO group_members (group_id, user_id, role, joined_after, seq)
             VALUES (?1, ?2, 0, ",
            last_message_id!(),
            ", 0)"
        ))
        .db()?
        .execute([g, u])
        .db()?;
        Ok(id_of(g))
    }

    /// Checks in this order: `UnknownGroup`, `UnknownUser`, `AlreadyMember`.
    fn join_group(&mut self, group: GroupId, user: UserId) -> Result<GroupInfo> {
        let c = self.tx()?;
        let (g, u) = (key(group), key(user));
        if !group_exists(c, g)? {
            return Err(StoreError::UnknownGroup(group));
        }
        if !user_exists(c, u)? {
            return Err(StoreError::UnknownUser(user));
        }
        if c.prepare_cached("SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?2")
            .db()?
            .exists([g, u])
            .db()?
        {
            return Err(StoreError::AlreadyMember { user, group });
        }
        c.prepare_cached(concat!(
            "INSERT INTO group_members (group_id, user_id, role, joined_after, seq)
             SELECT ?1, ?2, 1, ",
            last_message_id!(),
            ", COALESCE(MAX(seq), 0) + 1 FROM group_members WHERE group_id = ?1"
        ))
        .db()?
        .execute([g, u])
        .db()?;
        group_info(c, g)?.ok_or(StoreError::UnknownGroup(group))
    }

    /// Checks in this order: `UnknownGroup`, `NotAMember`.
    fn leave_group(&mut self, group: GroupId, user: UserId) -> Result<()> {
        let c = self.tx()?;
        let (g, u) = (key(group), key(user));
        let role: Option<i64> = c
            .prepare_cached("SELECT role FROM group_members WHERE group_id = ?1 AND user_id = ?2")
            .db()?
            .query_row([g, u], |r| r.get(0))
            .optional()
            .db()?;
        let Some(role) = role else {
            return Err(if group_exists(c, g)? {
                StoreError::NotAMember { user, group }
            } else {
                StoreError::UnknownGroup(group)
            });
        };
        remove_from_group(c, g, u)?;
        if role != ROLE_CREATOR {
            return Ok(());
        }
        // The longest-standing member becomes the creator; nobody left
        // means no group.
        let heir: Option<i64> = c
            .prepare_cached(
                "SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY seq LIMIT 1",
            )
            .db()?
            .query_row([g], |r| r.get(0))
            .optional()
            .db()?;
        match heir {
            Some(heir) => {
                c.prepare_cached(
                    "UPDATE group_members SET role = ?3 WHERE group_id = ?1 AND user_id = ?2",
                )
                .db()?
                .execute([g, heir, ROLE_CREATOR])
                .db()?;
                c.prepare_cached("UPDATE chat_groups SET creator = ?2 WHERE id = ?1")
                    .db()?
                    .execute([g, heir])
                    .db()?;
            }
            None => {
                c.prepare_cached("DELETE FROM chat_groups WHERE id = ?1")
                    .db()?
                    .execute([g])
                    .db()?;
                // Its messages go in `compact`'s slices.
                c.prepare_cached("INSERT OR IGNORE INTO deleted_groups (id) VALUES (?1)")
                    .db()?
                    .execute([g])
                    .db()?;
            }
        }
        Ok(())
    }

    /// Checks in this order: `UnknownGroup`, `NotCreator`, `NotAMember`.
    fn remove_member(&mut self, group: GroupId, by: UserId, member: UserId) -> Result<()> {
        let c = self.tx()?;
        let g = key(group);
        let creator: Option<i64> = c
            .prepare_cached("SELECT creator FROM chat_groups WHERE id = ?1")
            .db()?
            .query_row([g], |r| r.get(0))
            .optional()
            .db()?;
        match creator {
            None => return Err(StoreError::UnknownGroup(group)),
            Some(creator) if creator != key(by) => {
                return Err(StoreError::NotCreator { user: by, group });
            }
            Some(_) => {}
        }
        if key(member) == key(by) || !remove_from_group(c, g, key(member))? {
            return Err(StoreError::NotAMember {
                user: member,
                group,
            });
        }
        Ok(())
    }

    fn group(&mut self, group: GroupId) -> Result<Option<GroupInfo>> {
        let c = self.tx()?;
        group_info(c, key(group))
    }

    /// `UnknownUser` if `user` does not exist.
    fn groups(&mut self, user: UserId) -> Result<Vec<GroupInfo>> {
        let c = self.tx()?;
        let u = key(user);
        if !user_exists(c, u)? {
            return Err(StoreError::UnknownUser(user));
        }
        let ids = c
            .prepare_cached(
                "SELECT group_id FROM group_members WHERE user_id = ?1 ORDER BY group_id",
            )
            .db()?
            .query_map([u], |r| r.get::<_, i64>(0))
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        let mut groups = Vec::with_capacity(ids.len());
        for g in ids {
            if let Some(info) = group_info(c, g)? {
                groups.push(info);
            }
        }
        Ok(groups)
    }

    /// Reads groups one by one from `after` on and stops at the first that
    /// does not fit: the cost is the page (and one group more), plus the
    /// ids of the user's groups (at most `--max-groups-per-user`).
    fn groups_page(
        &mut self,
        user: UserId,
        after: GroupId,
        max_members: usize,
    ) -> Result<Vec<GroupInfo>> {
        let c = self.tx()?;
        let u = key(user);
        if !user_exists(c, u)? {
            return Err(StoreError::UnknownUser(user));
        }
        let ids = c
            .prepare_cached(
                "SELECT group_id FROM group_members WHERE user_id = ?1 AND group_id > ?2
                 ORDER BY group_id",
            )
            .db()?
            .query_map([u, bound(after)], |r| r.get::<_, i64>(0))
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        // Each group is read only when the page may still take it.
        let groups = ids
            .into_iter()
            .map(|g| group_info(c, g))
            .filter_map(Result::transpose);
        page_of_groups(groups, max_members)
    }

    /// In join order, creator first; `UnknownGroup` if there is no such group.
    fn group_members(&mut self, group: GroupId) -> Result<Vec<UserId>> {
        let c = self.tx()?;
        let g = key(group);
        let members = c
            .prepare_cached("SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY seq")
            .db()?
            .query_map([g], |r| r.get::<_, i64>(0))
            .db()?
            .map(|r| r.map(id_of))
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        // A group always has its creator, so no members means no group.
        if members.is_empty() && !group_exists(c, g)? {
            return Err(StoreError::UnknownGroup(group));
        }
        Ok(members)
    }

    /// A direct message also needs an existing sender (`UnknownUser`, checked
    /// after the recipient).
    fn append(&mut self, message: &NewMessage) -> Result<StoredMessage> {
        let c = self.tx()?;
        let s = key(message.sender_id);
        let (recipient, group) = match message.target {
            Target::User(recipient) => {
                let r = key(recipient);
                if !user_exists(c, r)? {
                    return Err(StoreError::UnknownUser(recipient));
                }
                if s != r && !user_exists(c, s)? {
                    return Err(StoreError::UnknownUser(message.sender_id));
                }
                (r, 0)
            }
            Target::Group(group) => {
                let g = key(group);
                let member: Option<bool> = c
                    .prepare_cached(
                        "SELECT EXISTS(SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?2)
                         FROM chat_groups WHERE id = ?1",
                    )
                    .db()?
                    .query_row([g, s], |r| r.get(0))
                    .optional()
                    .db()?;
                match member {
                    None => return Err(StoreError::UnknownGroup(group)),
                    Some(false) => {
                        return Err(StoreError::NotAMember {
                            user: message.sender_id,
                            group,
                        });
                    }
                    Some(true) => (0, g),
                }
            }
        };
        let id = c
            .prepare_cached(
                "INSERT INTO messages (sender_id, sender_name, recipient_id, group_id, time_ms, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .db()?
            .insert(params![
                s,
                message.sender_name,
                recipient,
                group,
                message.time_ms as i64,
                message.text
            ])
            .db()?;
        Ok(StoredMessage {
            id: id_of(id),
            sender_id: message.sender_id,
            sender_name: message.sender_name.clone(),
            recipient_id: id_of(recipient),
            group_id: id_of(group),
            time_ms: message.time_ms,
            text: message.text.clone(),
        })
    }

    fn friend_count(&mut self, user: UserId) -> Result<u64> {
        self.count("SELECT COUNT(*) FROM friends WHERE user_id = ?1", key(user))
    }

    fn group_count(&mut self, user: UserId) -> Result<u64> {
        self.count(
            "SELECT COUNT(*) FROM group_members WHERE user_id = ?1",
            key(user),
        )
    }

    fn member_count(&mut self, group: GroupId) -> Result<u64> {
        self.count(
            "SELECT COUNT(*) FROM group_members WHERE group_id = ?1",
            key(group),
        )
    }

    fn pending_direct(&mut self, user: UserId, limit: u64) -> Result<u64> {
        let c = self.tx()?;
        let counted: i64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM users u
                 CROSS JOIN messages m ON m.recipient_id = u.id AND m.group_id = 0 AND m.id > u.cursor
                 WHERE u.id = ?1 LIMIT ?2)",
            )
            .db()?
            .query_row(
                params![key(user), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .db()?;
        Ok(id_of(counted))
    }

    /// `UnknownUser` if `user` does not exist.
    ///
    /// Reads the direct backlog, then each group's backlog, each bounded by
    /// `limit` and by the newest message already kept, so a call costs
    /// O((groups + 1) × limit) whatever the size of the backlog.
    fn pending(
        &mut self,
        user: UserId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let c = self.tx()?;
        let u = key(user);
        let cursor: i64 = c
            .prepare_cached("SELECT cursor FROM users WHERE id = ?1")
            .db()?
            .query_row([u], |r| r.get(0))
            .optional()
            .db()?
            .ok_or(StoreError::UnknownUser(user))?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = cursor.max(bound(after));
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut out = c
            .prepare_cached(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE recipient_id = ?1 AND group_id = 0 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .db()?
            .query_map(params![u, from, lim], message_row)
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        let groups = c
            .prepare_cached("SELECT group_id, joined_after FROM group_members WHERE user_id = ?1")
            .db()?
            .query_map([u], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        if groups.is_empty() {
            return Ok(out);
        }
        let mut stmt = c
            .prepare_cached(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE group_id = ?1 AND group_id != 0 AND id > ?2 AND id < ?3 AND sender_id != ?4
                  ORDER BY id LIMIT ?5"
            ))
            .db()?;
        for (g, joined_after) in groups {
            // Once `limit` messages are kept, only older ones can still enter.
            let below = match out.last() {
                Some(m) if out.len() >= limit => bound(m.id),
                _ => i64::MAX,
            };
            let more = stmt
                .query_map(
                    params![g, from.max(joined_after), below, u, lim],
                    message_row,
                )
                .db()?
                .collect::<rusqlite::Result<Vec<_>>>()
                .db()?;
            merge_limited(&mut out, more, limit);
        }
        Ok(out)
    }

    fn history(
        &mut self,
        user: UserId,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let c = self.tx()?;
        let below = before.map_or(i64::MAX, bound);
        // One more than asked: whether older ones exist.
        let take = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let (mut messages, read_up_to) = match conversation {
            Conversation::Direct(peer) => {
                let (u, p) = (key(user), key(peer));
                if !user_exists(c, p)? {
                    return Err(StoreError::UnknownUser(peer));
                }
                let messages = c
                    .prepare_cached(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages WHERE group_id = 0
                          AND MIN(sender_id, recipient_id) = ?1 AND MAX(sender_id, recipient_id) = ?2
                          AND id < ?3 ORDER BY id DESC LIMIT ?4"
                    ))
                    .db()?
                    .query_map(params![u.min(p), u.max(p), below, take], message_row)
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                (messages, read_mark(c, p, u, 0)?)
            }
            Conversation::Group(group) => {
                let g = key(group);
                let joined_after = membership(c, user, group)?;
                let messages = c
                    .prepare_cached(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages WHERE group_id = ?1 AND group_id != 0
                          AND id > ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4"
                    ))
                    .db()?
                    .query_map(params![g, joined_after, below, take], message_row)
                    .db()?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .db()?;
                (messages, 0)
            }
        };
        let more = messages.len() > limit;
        messages.truncate(limit);
        Ok(HistoryPage {
            messages,
            more,
            read_up_to: id_of(read_up_to),
        })
    }

    fn mark_read(
        &mut self,
        user: UserId,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<bool> {
        let c = self.tx()?;
        let u = key(user);
        let (peer, group, newest): (i64, i64, Option<i64>) = match conversation {
            Conversation::Direct(peer) => {
                let p = key(peer);
                if !user_exists(c, p)? {
                    return Err(StoreError::UnknownUser(peer));
                }
                let newest = c
                    .prepare_cached(
                        "SELECT MAX(id) FROM messages WHERE group_id = 0
                         AND MIN(sender_id, recipient_id) = ?1 AND MAX(sender_id, recipient_id) = ?2",
                    )
                    .db()?
                    .query_row([u.min(p), u.max(p)], |r| r.get(0))
                    .db()?;
                (p, 0, newest)
            }
            Conversation::Group(group) => {
                let g = key(group);
                membership(c, user, group)?;
                let newest = c
                    .prepare_cached(
                        "SELECT MAX(id) FROM messages WHERE group_id = ?1 AND group_id != 0",
                    )
                    .db()?
                    .query_row([g], |r| r.get(0))
                    .db()?;
                (0, g, newest)
            }
        };
        let newest = newest.unwrap_or(0);
        if bound(up_to) > newest {
            return Err(StoreError::BeyondNewest {
                up_to,
                newest: id_of(newest),
            });
        }
        let moved = c
            .prepare_cached(
                "INSERT INTO read_marks (user_id, peer_id, group_id, up_to) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, peer_id, group_id)
                 DO UPDATE SET up_to = excluded.up_to WHERE excluded.up_to > read_marks.up_to",
            )
            .db()?
            .execute([u, peer, group, bound(up_to)])
            .db()?;
        Ok(moved > 0)
    }

    fn readers(&mut self, user: UserId, group: GroupId, message: MessageId) -> Result<(u64, u64)> {
        let c = self.tx()?;
        membership(c, user, group)?;
        let g = key(group);
        let readers: i64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM read_marks rm
                 JOIN group_members gm ON gm.group_id = rm.group_id AND gm.user_id = rm.user_id
                 WHERE rm.group_id = ?1 AND rm.group_id != 0 AND rm.peer_id = 0 AND rm.up_to >= ?2",
            )
            .db()?
            .query_row([g, bound(message)], |r| r.get(0))
            .db()?;
        Ok((id_of(readers), self.member_count(group)?))
    }

    fn unread(&mut self, user: UserId) -> Result<Vec<Unread>> {
        let c = self.tx()?;
        let u = key(user);
        let marks: std::collections::HashMap<(i64, i64), i64> = c
            .prepare_cached("SELECT peer_id, group_id, up_to FROM read_marks WHERE user_id = ?1")
            .db()?
            .query_map([u], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
            .db()?
            .collect::<rusqlite::Result<_>>()
            .db()?;
        let cap = UNREAD_CAP as i64;
        // Direct: among the newest messages received, per sender.
        let mut direct: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
        let newest = c
            .prepare_cached(
                "SELECT sender_id, id FROM messages WHERE recipient_id = ?1 AND group_id = 0
                 ORDER BY id DESC LIMIT ?2",
            )
            .db()?
            .query_map([u, cap + 1], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        for (sender, id) in newest {
            if sender != u && id > marks.get(&(sender, 0)).copied().unwrap_or(0) {
                let n = direct.entry(sender).or_default();
                *n = (*n + 1).min(UNREAD_CAP);
            }
        }
        let mut out: Vec<Unread> = direct
            .into_iter()
            .map(|(peer, count)| Unread {
                conversation: Conversation::Direct(id_of(peer)),
                count,
            })
            .collect();
        // Groups: each its own bounded range.
        let groups = c
            .prepare_cached(
                "SELECT group_id, joined_after FROM group_members WHERE user_id = ?1 ORDER BY group_id",
            )
            .db()?
            .query_map([u], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        let mut count = c
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE group_id = ?1 AND group_id != 0
                 AND id > ?2 AND sender_id != ?3 LIMIT ?4)",
            )
            .db()?;
        for (g, joined_after) in groups {
            let from = joined_after.max(marks.get(&(0, g)).copied().unwrap_or(0));
            let n: i64 = count.query_row([g, from, u, cap], |r| r.get(0)).db()?;
            if n > 0 {
                out.push(Unread {
                    conversation: Conversation::Group(id_of(g)),
                    count: id_of(n),
                });
            }
        }
        Ok(out)
    }

    /// `UnknownUser` if `user` does not exist.
    fn ack(&mut self, user: UserId, up_to: MessageId) -> Result<()> {
        let c = self.tx()?;
        let u = key(user);
        let n = c
            .prepare_cached("UPDATE users SET cursor = ?2 WHERE id = ?1 AND cursor < ?2")
            .db()?
            .execute([u, bound(up_to)])
            .db()?;
        if n == 0 && !user_exists(c, u)? {
            return Err(StoreError::UnknownUser(user));
        }
        Ok(())
    }

    /// `UnknownUser` if `user` does not exist.
    fn cursor(&mut self, user: UserId) -> Result<MessageId> {
        let c = self.tx()?;
        c.prepare_cached("SELECT cursor FROM users WHERE id = ?1")
            .db()?
            .query_row([key(user)], |r| r.get::<_, i64>(0))
            .optional()
            .db()?
            .map(id_of)
            .ok_or(StoreError::UnknownUser(user))
    }

    /// Exact, counted on the index ranges above each cursor: O(users + group
    /// memberships + pending deliveries). `CROSS JOIN` fixes the loop order
    /// (users outside, messages inside) so the cost does not grow with the
    /// number of stored messages that are already acknowledged.
    fn pending_total(&mut self) -> Result<Option<u64>> {
        #[cfg(test)]
        PENDING_TOTAL_CALLS.with(|n| n.set(n.get() + 1));
        let c = self.tx()?;
        let direct: i64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM users u
                 CROSS JOIN messages m ON m.recipient_id = u.id AND m.group_id = 0 AND m.id > u.cursor",
            )
            .db()?
            .query_row([], |r| r.get(0))
            .db()?;
        let group: i64 = c
            .prepare_cached(
                "SELECT COUNT(*) FROM group_members gm
                 CROSS JOIN users u ON u.id = gm.user_id
                 CROSS JOIN messages m ON m.group_id = gm.group_id AND m.group_id != 0
                      AND m.id > MAX(u.cursor, gm.joined_after)
                 WHERE m.sender_id != gm.user_id",
            )
            .db()?
            .query_row([], |r| r.get(0))
            .db()?;
        Ok(Some(id_of(direct) + id_of(group)))
    }

    /// Deletes direct messages at or below their recipient's cursor, and
    /// group messages at or below every member's `max(cursor, joined_after)`,
    /// once they are older than the history retention (all of a deleted
    /// group's messages go at once). The sender counts as a member here, so
    /// a group message stays until its sender's cursor has passed it too
    /// (conservative: it never deletes an undelivered message, and senders'
    /// cursors move as they receive).
    ///
    /// The retention becomes a message id, the first message younger than
    /// it ([`first_id_since`]).
    fn compact(&mut self, limit: usize) -> Result<u64> {
        let retention = self.retention;
        let c = self.tx()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let newest = newest_id(c)?;
        let mut done = compact_deleted_groups(c, limit, newest)?;
        // Every deletion stays below the newest row (see `newest_id`).
        let below: i64 = match retention {
            None => return Ok(done as u64),
            Some(Duration::ZERO) => newest,
            Some(keep) => first_id_since(c, keep, newest)?.min(newest),
        };
        if done >= limit {
            return Ok(done as u64);
        }
        let direct = c
            .prepare_cached(
                "DELETE FROM messages WHERE id IN (
                     SELECT m.id FROM users u
                     CROSS JOIN messages m ON m.recipient_id = u.id AND m.group_id = 0
                          AND m.id <= MIN(u.cursor, ?2 - 1)
                     LIMIT ?1)",
            )
            .db()?
            .execute([limit - done, below])
            .db()?;
        done += direct as i64;
        let left = limit - done;
        if left <= 0 {
            return Ok(done as u64);
        }
        let group = c
            .prepare_cached(
                "DELETE FROM messages WHERE id IN (
                     SELECT m.id FROM (
                         SELECT gm.group_id AS g, MIN(MAX(u.cursor, gm.joined_after)) AS t
                         FROM group_members gm JOIN users u ON u.id = gm.user_id
                         GROUP BY gm.group_id) AS x
                     JOIN messages m ON m.group_id = x.g AND m.group_id != 0
                          AND m.id <= MIN(x.t, ?2 - 1)
                     LIMIT ?1)",
            )
            .db()?
            .execute([left, below])
            .db()?;
        Ok((done + group as i64) as u64)
    }

    fn commit(&mut self) -> Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        if self.conn.is_autocommit() {
            self.in_tx = false;
            return Err(StoreError::Backend(
                "sqlite: the transaction was rolled back by SQLite before commit".into(),
            ));
        }
        let done = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        if done.is_ok() || self.conn.is_autocommit() {
            self.in_tx = false;
        }
        done.map(drop).db()
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.in_tx = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(c: &Connection, sql: &str) -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        rows.join("; ")
    }

    #[test]
    fn backlog_reads_use_the_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("chat.db"), SyncPolicy::Normal).unwrap();
        let direct = plan(
            &store.conn,
            "SELECT id FROM messages WHERE recipient_id = 1 AND group_id = 0 AND id > 5 ORDER BY id LIMIT 10",
        );
        assert!(direct.contains("messages_to_user"), "{direct}");
        let group = plan(
            &store.conn,
            "SELECT id FROM messages WHERE group_id = 3 AND group_id != 0 AND id > 5 AND id < 9 ORDER BY id LIMIT 10",
        );
        assert!(group.contains("messages_to_group"), "{group}");
    }

    /// A page of history is one range of one index read backwards: never a
    /// scan of the user's other conversations, never a sort.
    #[test]
    fn history_reads_one_index_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("chat.db"), SyncPolicy::Normal).unwrap();
        let direct = plan(
            &store.conn,
            "SELECT id FROM messages WHERE group_id = 0
             AND MIN(sender_id, recipient_id) = 1 AND MAX(sender_id, recipient_id) = 2
             AND id < 100 ORDER BY id DESC LIMIT 51",
        );
        assert!(direct.contains("INDEX messages_by_pair"), "{direct}");
        assert!(!direct.contains("TEMP B-TREE"), "no sort: {direct}");
        let group = plan(
            &store.conn,
            "SELECT id FROM messages WHERE group_id = 4 AND group_id != 0
             AND id > 0 AND id < 100 ORDER BY id DESC LIMIT 51",
        );
        assert!(group.contains("INDEX messages_to_group"), "{group}");
        assert!(!group.contains("TEMP B-TREE"), "no sort: {group}");
    }

    /// The binary search finds what a walk from the oldest message finds,
    /// with gaps in the ids (compacted messages) and any retention.
    #[test]
    fn the_retention_cutoff_is_the_first_message_young_enough() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("chat.db"), SyncPolicy::Normal).unwrap();
        let a = store.create_user("a", "x").unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let hour = 3_600_000;
        // 300 messages, one every 10 minutes up to now.
        for i in (0..300u64).rev() {
            store
                .append(&NewMessage {
                    sender_id: a,
                    sender_name: "a".into(),
                    target: Target::User(a),
                    time_ms: now_ms - i * hour / 6,
                    text: String::new(),
                })
                .unwrap();
        }
        // Gaps: every third message gone.
        store
            .conn
            .execute("DELETE FROM messages WHERE id % 3 = 0", [])
            .unwrap();
        store.commit().unwrap();
        let walk = |c: &Connection, keep_ms: i64| -> i64 {
            c.query_row(
                "SELECT COALESCE(MIN(id), 9223372036854775807) FROM messages WHERE time_ms >= ?1",
                [now_ms as i64 - keep_ms + 1000],
                |r| r.get(0),
            )
            .unwrap()
        };
        for hours in [1u64, 2, 7, 24, 49, 50, 51, 1000] {
            let keep = Duration::from_millis(hours * hour);
            let newest = newest_id(&store.conn).unwrap();
            let found = first_id_since(&store.conn, keep, newest).unwrap();
            assert_eq!(found, walk(&store.conn, (hours * hour) as i64), "{hours} h");
        }
    }

    /// Acknowledged messages stay for the retention, then compaction
    /// deletes them; `None` keeps them forever.
    #[test]
    fn compaction_keeps_acknowledged_messages_for_the_history_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("chat.db"), SyncPolicy::Normal).unwrap();
        let a = store.create_user("a", "x").unwrap();
        let b = store.create_user("b", "x").unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let send = |store: &mut SqliteStore, time_ms: u64, text: &str| {
            store
                .append(&NewMessage {
                    sender_id: a,
                    sender_name: "a".into(),
                    target: Target::User(b),
                    time_ms,
                    text: text.into(),
                })
                .unwrap()
                .id
        };
        send(&mut store, now_ms - 7_200_000, "two hours old");
        let new = send(&mut store, now_ms, "new");
        store.ack(b, new).unwrap();
        store.commit().unwrap();
        let kept = |store: &mut SqliteStore| -> Vec<String> {
            let page = store.history(b, Conversation::Direct(a), None, 10).unwrap();
            page.messages.into_iter().map(|m| m.text).collect()
        };
        store.set_history_retention(None);
        assert_eq!(store.compact(100).unwrap(), 0);
        assert_eq!(kept(&mut store), vec!["new", "two hours old"]);
        store.set_history_retention(Some(Duration::from_secs(3600)));
        assert_eq!(store.compact(100).unwrap(), 1);
        store.commit().unwrap();
        assert_eq!(kept(&mut store), vec!["new"]);
        // The newest message stays (its id is the sequence's high-water
        // mark) until a newer one is stored.
        store.set_history_retention(Some(Duration::ZERO));
        assert_eq!(store.compact(100).unwrap(), 0);
        store.commit().unwrap();
        assert_eq!(kept(&mut store), vec!["new"]);
        let newer = send(&mut store, now_ms, "newer");
        assert_eq!(newer, new + 1);
        assert_eq!(store.compact(100).unwrap(), 1);
        store.commit().unwrap();
        assert_eq!(kept(&mut store), vec!["newer"]);
        store.commit().unwrap();
    }

    /// Ids are never given twice: compaction deletes every acknowledged
    /// message but the newest, so the next id is above every id given.
    #[test]
    fn compaction_never_lets_an_id_be_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("chat.db"), SyncPolicy::Normal).unwrap();
        store.set_history_retention(Some(Duration::ZERO));
        let a = store.create_user("a", "x").unwrap();
        let b = store.create_user("b", "x").unwrap();
        let g = store.create_group(a, "g", "").unwrap();
        store.join_group(g, b).unwrap();
        let mut last = 0;
        for target in [Target::User(b), Target::Group(g), Target::User(b)] {
            last = store
                .append(&NewMessage {
                    sender_id: a,
                    sender_name: "a".into(),
                    target,
                    time_ms: 1,
                    text: "m".into(),
                })
                .unwrap()
                .id;
        }
        store.ack(a, last).unwrap();
        store.ack(b, last).unwrap();
        // The group is deleted too: its messages go with the others.
        store.leave_group(g, b).unwrap();
        store.leave_group(g, a).unwrap();
        store.commit().unwrap();
        assert_eq!(store.compact(100).unwrap(), 2);
        store.commit().unwrap();
        assert_eq!(store.compact(100).unwrap(), 0);
        store.commit().unwrap();
        let next = store
            .append(&NewMessage {
                sender_id: b,
                sender_name: "b".into(),
                target: Target::User(a),
                time_ms: 1,
                text: "next".into(),
            })
            .unwrap();
        assert_eq!(next.id, last + 1);
        store.commit().unwrap();
    }

    #[test]
    fn the_checkpointer_keeps_the_wal_bounded_under_constant_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let mut store = SqliteStore::open(&path, SyncPolicy::Normal).unwrap();
        let autocheckpoint: i64 = store
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, checkpointer::WRAP_FRAMES);
        let page: i64 = store
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, PAGE_SIZE);
        let a = store.create_user("a", "x").unwrap();
        let b = store.create_user("b", "x").unwrap();
        store.commit().unwrap();
        // About 3 pages a commit: as many commits as the wrap size has
        // frames write three times the wrap size to the WAL, which must
        // wrap instead of growing (a passive checkpoint alone never wraps
        // it under constant commits).
        let commits = checkpointer::WRAP_FRAMES as usize;
        let wal = dir.path().join("chat.db-wal");
        let mut largest = 0;
        for i in 0..commits {
            store
                .append(&NewMessage {
                    sender_id: a,
                    sender_name: "a".into(),
                    target: Target::User(b),
                    time_ms: 0,
                    text: format!("message {i}"),
                })
                .unwrap();
            store.commit().unwrap();
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(
            largest <= 2 * checkpointer::WRAP_FRAMES as u64 * (PAGE_SIZE as u64 + 24),
            "WAL grew to {largest} bytes"
        );
        drop(store);
        let mut store = SqliteStore::open(&path, SyncPolicy::Normal).unwrap();
        assert_eq!(store.pending(b, 0, commits + 1).unwrap().len(), commits);
        store.commit().unwrap();
    }
}
