//! The SQLite schema and its migrations, applied in order by
//! `rusqlite_migration` when a store opens the file; `PRAGMA user_version`
//! records how many have run.
//!
//! Rules for a new migration: append it, never edit one that shipped; make
//! it idempotent (`IF NOT EXISTS`), because two processes opening one fresh
//! file may both run it (each migration runs in a `BEGIN IMMEDIATE`
//! transaction, but the version is read before it); keep the docs below in
//! step. A file whose `user_version` is above this list's length was made by
//! a newer build and is refused.
//!
//! Databases from before the migration list have `user_version` 0 and a
//! `schema_version` table: migration 1 is written so that it changes nothing
//! on them but the first schema's two old indexes.

use rusqlite::{Connection, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

use crate::store::{Result, StoreError};

/// Migration 1: the schema as it was before the migration list (its
/// `schema_version` table said 2; that table is no longer read).
///
/// - `users.cursor` is the delivery cursor;
/// - `friends` holds both directions of a friendship;
/// - `group_members.joined_after` is the highest message id allocated when
///   the member joined (they receive only later messages), `seq` their join
///   order (the creator has 0);
/// - `messages` has `recipient_id` 0 for group messages and `group_id` 0 for
///   direct ones; `(recipient_id, id)` serves a user's direct backlog,
///   `(group_id, id)` a group's; each is a partial index over its own kind
///   of message (every query on them repeats the index's `WHERE` term), so
///   a message writes one index entry, not two;
/// - `sessions` holds the one claim a user may have, `nodes` each node's lease
///   (its end, in Unix milliseconds; 0 once ended, and for a node that
///   claimed before any lease); a claim counts only while the lease of its
///   node is live.
///
/// `AUTOINCREMENT` kept ids from ever being reused, even after `compact`
/// (migration 3 drops it and keeps that guarantee another way).
const V2: &str = "
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    cursor        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS friends (
    user_id   INTEGER NOT NULL,
    friend_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chat_groups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL,
    creator     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
    group_id     INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    role         INTEGER NOT NULL,
    joined_after INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_user
    ON group_members (user_id, group_id, joined_after);
CREATE INDEX IF NOT EXISTS group_members_by_seq
    ON group_members (group_id, seq, user_id);
CREATE TABLE IF NOT EXISTS messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id    INTEGER NOT NULL,
    sender_name  TEXT    NOT NULL,
    recipient_id INTEGER NOT NULL,
    group_id     INTEGER NOT NULL,
    time_ms      INTEGER NOT NULL,
    text         TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_to_user ON messages (recipient_id, id) WHERE group_id = 0;
CREATE INDEX IF NOT EXISTS messages_to_group ON messages (group_id, id) WHERE group_id != 0;
CREATE TABLE IF NOT EXISTS sessions (
    user_id INTEGER PRIMARY KEY,
    node    TEXT    NOT NULL,
    epoch   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_node ON sessions (node);
CREATE TABLE IF NOT EXISTS nodes (
    id         TEXT    PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);
-- A database of the first schema indexed every message twice.
DROP INDEX IF EXISTS messages_by_recipient;
DROP INDEX IF EXISTS messages_by_group;
";

/// Migration 2: history, read positions, deleted groups.
///
/// - `messages_by_pair` serves a direct conversation's history: both
///   directions of one pair of users are one index range, newest first;
/// - `read_marks` holds each user's read position per conversation
///   (`peer_id` for a direct one, `group_id` for a group; the other 0);
///   `read_marks_by_group` counts a group's readers;
/// - `deleted_groups` lists groups whose last member left, until `compact`
///   has deleted their messages.
const V3_HISTORY: &str = "
CREATE INDEX IF NOT EXISTS messages_by_pair
    ON messages (MIN(sender_id, recipient_id), MAX(sender_id, recipient_id), id)
    WHERE group_id = 0;
CREATE TABLE IF NOT EXISTS read_marks (
    user_id  INTEGER NOT NULL,
    peer_id  INTEGER NOT NULL,
    group_id INTEGER NOT NULL,
    up_to    INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id, group_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS read_marks_by_group
    ON read_marks (group_id, up_to) WHERE group_id != 0;
CREATE TABLE IF NOT EXISTS deleted_groups (
    id INTEGER PRIMARY KEY
);
";

/// Migration 3: `messages` without `AUTOINCREMENT`.
///
/// `AUTOINCREMENT` writes the table's row of `sqlite_sequence` at every
/// insert: one more page, and so one more WAL frame, in every commit that
/// stores a message (5 frames instead of 4 for a direct message). Without
/// it the store's CPU per message was 30.3–33.5 µs against 38.0–39.1 µs
/// (`cargo bench -p chat-node --bench engines -- 100000`, three rounds
/// each). Ids stay never reused: a new row takes the highest id plus one,
/// and `compact` never deletes the row with the highest id. Where
/// `sqlite_sequence` was above every row left (the newest messages were
/// compacted), a placeholder row keeps that id: sender, recipient and group
/// 0, empty text, seen by no query of a user or group.
///
/// The table is copied whole, once, when a file of an earlier build is
/// opened (seconds for millions of messages). Run twice (two processes
/// opening one file of an earlier build), it copies the table again, to
/// the same result.
const V4_NO_AUTOINCREMENT: &str = "
DROP TABLE IF EXISTS messages_v4;
CREATE TABLE messages_v4 (
    id           INTEGER PRIMARY KEY,
    sender_id    INTEGER NOT NULL,
    sender_name  TEXT    NOT NULL,
    recipient_id INTEGER NOT NULL,
    group_id     INTEGER NOT NULL,
    time_ms      INTEGER NOT NULL,
    text         TEXT    NOT NULL
);
INSERT INTO messages_v4 (id, sender_id, sender_name, recipient_id, group_id, time_ms, text)
    SELECT id, sender_id, sender_name, recipient_id, group_id, time_ms, text FROM messages;
INSERT INTO messages_v4 (id, sender_id, sender_name, recipient_id, group_id, time_ms, text)
    SELECT seq, 0, '', 0, 0, CAST(unixepoch('subsec') * 1000 AS INTEGER), ''
    FROM sqlite_sequence
    WHERE name = 'messages' AND seq > (SELECT COALESCE(MAX(id), 0) FROM messages);
DROP TABLE messages;
ALTER TABLE messages_v4 RENAME TO messages;
CREATE INDEX messages_to_user ON messages (recipient_id, id) WHERE group_id = 0;
CREATE INDEX messages_to_group ON messages (group_id, id) WHERE group_id != 0;
CREATE INDEX messages_by_pair
    ON messages (MIN(sender_id, recipient_id), MAX(sender_id, recipient_id), id)
    WHERE group_id = 0;
";

/// Every migration, in order.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V2),
        M::up(V3_HISTORY),
        M::up(V4_NO_AUTOINCREMENT),
    ])
}

/// Brings the file on `conn` to the latest schema.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    let done = migrations().to_latest(conn);
    conn.set_transaction_behavior(TransactionBehavior::Deferred);
    done.map_err(|e| StoreError::Backend(format!("sqlite: migrating the schema: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{SqliteStore, SyncPolicy};
    use crate::store::{Conversation, Store};

    #[test]
    fn the_migrations_are_valid() {
        migrations().validate().unwrap();
    }

    fn user_version(path: &std::path::Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// The texts of `user`'s waiting messages (the first ten).
    fn pending_texts(store: &mut SqliteStore, user: u64) -> Vec<String> {
        let page = store.pending(user, 0, 10).unwrap();
        page.into_iter().map(|m| m.text).collect()
    }

    fn texts(page: &crate::store::HistoryPage) -> Vec<&str> {
        page.messages.iter().map(|m| m.text.as_str()).collect()
    }

    /// A data directory made by the build before the migration list (the
    /// `V2` schema, `schema_version` 2, `user_version` 0) opens, is upgraded
    /// in place, and its messages are history at once.
    #[test]
    fn a_database_of_the_previous_schema_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(V2).unwrap();
            c.execute_batch(
                "INSERT INTO schema_version (version) VALUES (2);
                 INSERT INTO users (name, password_hash, cursor) VALUES ('a', 'x', 0), ('b', 'x', 2);
                 INSERT INTO chat_groups (name, description, creator) VALUES ('g', 'd', 1);
                 INSERT INTO group_members (group_id, user_id, role, joined_after, seq)
                     VALUES (1, 1, 0, 0, 0), (1, 2, 1, 0, 1);
                 INSERT INTO messages (sender_id, sender_name, recipient_id, group_id, time_ms, text)
                     VALUES (1, 'a', 2, 0, 0, 'a to b'), (2, 'b', 1, 0, 0, 'b to a'),
                            (1, 'a', 0, 1, 0, 'to g');",
            )
            .unwrap();
        }
        assert_eq!(user_version(&path), 0);
        let mut store = SqliteStore::open(&path, SyncPolicy::Normal).unwrap();
        let page = store.history(1, Conversation::Direct(2), None, 10).unwrap();
        assert_eq!(texts(&page), vec!["b to a", "a to b"]);
        let page = store.history(2, Conversation::Group(1), None, 10).unwrap();
        assert_eq!(texts(&page), vec!["to g"]);
        assert!(store.mark_read(2, Conversation::Direct(1), 1).unwrap());
        // What was there before is unchanged: b's cursor, a's waiting message.
        assert_eq!(store.cursor(2).unwrap(), 2);
        assert_eq!(pending_texts(&mut store, 1), vec!["b to a".to_owned()]);
        store.commit().unwrap();
        drop(store);
        let latest = migrations_count();
        assert_eq!(user_version(&path), latest);
        // Opening again runs nothing more.
        let store = SqliteStore::open(&path, SyncPolicy::Normal).unwrap();
        drop(store);
        assert_eq!(user_version(&path), latest);
    }

    /// How many migrations there are (`user_version` of an up-to-date file).
    fn migrations_count() -> i64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        drop(SqliteStore::open(&path, SyncPolicy::Normal).unwrap());
        user_version(&path)
    }

    /// A file of the schema with `AUTOINCREMENT` whose newest messages were
    /// compacted: after migration 3 new messages still take ids above every
    /// id the sequence gave, and the placeholder that keeps its high-water
    /// mark is seen by no one.
    #[test]
    fn dropping_autoincrement_keeps_ids_from_being_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        {
            let mut c = Connection::open(&path).unwrap();
            Migrations::new(vec![M::up(V2), M::up(V3_HISTORY)])
                .to_latest(&mut c)
                .unwrap();
            c.execute_batch(
                "INSERT INTO users (name, password_hash, cursor) VALUES ('a', 'x', 0), ('b', 'x', 0);
                 INSERT INTO messages (sender_id, sender_name, recipient_id, group_id, time_ms, text)
                     VALUES (1, 'a', 2, 0, 0, 'kept'), (1, 'a', 2, 0, 0, 'compacted'),
                            (1, 'a', 2, 0, 0, 'compacted too');
                 DELETE FROM messages WHERE id > 1;",
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path, SyncPolicy::Normal).unwrap();
        assert_eq!(pending_texts(&mut store, 2), vec!["kept".to_owned()]);
        let page = store.history(2, Conversation::Direct(1), None, 10).unwrap();
        assert_eq!(texts(&page), vec!["kept"]);
        let next = store
            .append(&crate::model::NewMessage {
                sender_id: 2,
                sender_name: "b".into(),
                target: crate::model::Target::User(1),
                time_ms: 0,
                text: "after".into(),
            })
            .unwrap();
        assert_eq!(next.id, 4, "the sequence had given 3");
        store.commit().unwrap();
    }

    /// The first schema (messages indexed twice) loses its two old indexes.
    #[test]
    fn a_first_schema_database_is_migrated_and_keeps_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        {
            let c = Connection::open(&path).unwrap();
            let v1 = V2
                .replace(
                    "messages_to_user ON messages (recipient_id, id) WHERE group_id = 0",
                    "messages_by_recipient ON messages (recipient_id, id)",
                )
                .replace(
                    "messages_to_group ON messages (group_id, id) WHERE group_id != 0",
                    "messages_by_group ON messages (group_id, id)",
                );
            let v1 = &v1[..v1.find("-- A database of the first schema").unwrap()];
            c.execute_batch(v1).unwrap();
            c.execute_batch(
                "INSERT INTO schema_version (version) VALUES (1);
                 INSERT INTO users (name, password_hash) VALUES ('a', 'x'), ('b', 'x');
                 INSERT INTO messages (sender_id, sender_name, recipient_id, group_id, time_ms, text)
                     VALUES (1, 'a', 2, 0, 0, 'hi');",
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path, SyncPolicy::Normal).unwrap();
        let indexes: Vec<String> = Connection::open(&path)
            .unwrap()
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut indexes = indexes;
        indexes.sort();
        assert_eq!(
            indexes,
            vec!["messages_by_pair", "messages_to_group", "messages_to_user"]
        );
        let pending = store.pending(2, 0, 10).unwrap();
        store.commit().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].text, "hi");
    }

    #[test]
    fn a_database_of_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        drop(SqliteStore::open(&path, SyncPolicy::Normal).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = SqliteStore::open(&path, SyncPolicy::Normal).unwrap_err();
        assert!(e.to_string().contains("migrating the schema"), "{e}");
    }
}
