//! The ScyllaDB backend: the [`Store`] in one keyspace of a ScyllaDB cluster,
//! so that nodes on many machines share one state with no single point of
//! failure.
//!
//! # Tables
//!
//! The schema is `schema/cql/*.cql` (embedded as [`chat_schema::cql::FILES`]);
//! with `init_schema` the store creates the keyspace and runs those files.
//!
//! | table | partition | rows | written by |
//! |---|---|---|---|
//! | `users` | user id | name, password hash, `acked_up_to` (the cursor) | plain writes |
//! | `user_names` | name | the id holding the name | LWT only |
//! | `id_blocks` | kind (`user`, `group`, `writer`) | next free id | LWT only |
//! | `friends` | user id | one per friend, with the friend's name | plain writes |
//! | `user_groups` | user id | one per group: `joined_after`, role | plain writes |
//! | `chat_groups` | group id | name, description, creator | plain writes |
//! | `group_members` | group id | one per member, by `joined_after` | plain writes |
//! | `inbox` | user id | direct messages, by id; table TTL | plain writes |
//! | `group_log` | (group id, day) | group messages, by id; table TTL | plain writes |
//! | `direct_history` | (lower user id, higher user id) | direct messages of the pair, both directions, newest first; history TTL | plain writes |
//! | `direct_received` | user id | id and sender of the direct messages to the user, newest first; history TTL | plain writes |
//! | `group_history` | group id | group messages, newest first; history TTL | plain writes |
//! | `read_marks` | user id | one per conversation: (kind, peer or group), `up_to` | plain writes |
//! | `group_reads` | group id | one per member who marked the group: `up_to` | plain writes |
//! | `sessions` | user id | the claim: node, epoch | LWT only |
//! | `sessions_by_node` | node | one per claimed user | plain writes |
//! | `node_leases` | node | lease end, written `USING TTL` | plain writes |
//! | `cluster_nodes` | bucket 0 | nodes that renewed a lease or claimed a session | plain writes |
//!
//! Every statement is prepared once ([`STATEMENTS`]), binds every partition
//! key, and reads either one row or a partition through paging; nothing
//! filters server-side. `tests/cql_schema.rs` checks the list against the
//! schema files. Tables written by lightweight transactions get no plain
//! write, as ScyllaDB requires for their guarantees to hold.
//!
//! Names never change, so a friend's or member's name is stored with the row
//! that lists them, and a user's name, once read, is kept in memory (which
//! also answers "does this user exist" without a read: users are never
//! deleted). `find_user` reads `user_names`, the index registration keeps.
//! Memberships end (leaving, removal, possibly on another node), so they are
//! not remembered across batches: a group's member list is read once per
//! batch, by the first `append` or `group_members` of that group, and reused
//! by the batch's later calls until the batch writes to the group.
//!
//! # Ids
//!
//! - **Users and groups**: each store handle reserves blocks of
//!   [`ID_BLOCK`] ids by compare-and-set on the kind's `id_blocks` row
//!   (`UPDATE id_blocks SET next_id = ? WHERE kind = ? IF next_id = ?`) and
//!   hands them out from memory: unique, never reused (what a handle leaves
//!   of its block is skipped), increasing per handle but not across handles.
//! - **Messages**: `(ms << 22) | (writer << 8) | counter`, where `ms` counts
//!   milliseconds from [`ID_EPOCH_MS`] (2024-01-01, so ids stay positive as
//!   `i64` until 2093), `writer` is a 14-bit tag the handle reserves from the
//!   `writer` id block when it first needs an id (so it is unique among the
//!   last 16,384 handles that wrote a message; a handle that only reads
//!   takes none), and `counter` numbers the ids of one millisecond (256; past
//!   that the handle borrows the next millisecond). Ids are unique and
//!   increase per handle; across handles they follow the writers' clocks. A
//!   group message's `bucket` (its `group_log` partition) is the day of its
//!   id's millisecond.
//!
//! # How a batch flows
//!
//! ScyllaDB has no transaction spanning statements, so the trait's batch
//! (everything since the last [`Store::commit`]) is emulated:
//!
//! 1. **Reads first.** As in SQLite, every domain error (`NameTaken`,
//!    `UnknownUser`, `AlreadyMember`, `NotFriends`, `NotCreator`, ...) is
//!    detected by reads before the call writes anything, so a refused call
//!    leaves nothing behind.
//! 2. **Uniqueness by lightweight transactions, at once.** A name, a session
//!    claim, an id block: each is a compare-and-set whose answer the call
//!    needs, so it runs during the call.
//! 3. **Other writes are sent at once and awaited later.** An append, a
//!    friendship, a membership, a lease... is started on the driver's runtime
//!    when the call makes it, with a client timestamp from a clock that
//!    increases per handle (so writes to one row apply in call order however
//!    they race on the wire), and the call returns without waiting. A later
//!    read of a table waits for the writes in flight to that table first
//!    (read-your-writes inside the batch); [`Store::commit`] waits for all of
//!    them. Sending at once rather than at commit keeps the time between
//!    allocating a message id and the message becoming visible to other
//!    nodes to one write latency (see the ordering caveat below), and a
//!    batch's writes travel together while its calls go on.
//! 4. **Cursors move at commit.** `ack` keeps the new cursor in memory (later
//!    calls of the batch read it from there) and `commit` writes the last
//!    value of each user once.
//! 5. **Rollback compensates.** [`Store::rollback`] (and dropping the handle
//!    with a batch open) drops the cursor moves, waits for the writes in
//!    flight, then undoes what the batch wrote: deletes the rows it
//!    inserted, writes back the rows it deleted or updated as it had read
//!    them (friendships, memberships, a group's head and creator), gives its
//!    names back and releases its claims (conditional deletes, so a name or
//!    claim someone else holds by then is left alone).
//!    Not undone: lease renewals and ends, node registrations, released
//!    claims, reserved ids. After a failed `commit`, the writes that landed
//!    are undone the same way by the caller's `rollback`.
//!
//! What this cannot give is isolation and atomicity. Other handles see a
//! batch's writes as they land, before `commit` (a message may be pushed to
//! its recipient before its sender's batch fails and deletes it); a crash in
//! the middle of a batch leaves what landed (a message stored though its
//! sender was told of a failure, a friendship in one direction only) and
//! undoes nothing; an undo that fails is logged and left. Writes to one row
//! from two handles apply in the order of their client timestamps, that is
//! of the handles' clocks: a friendship or membership ended on one node and
//! made again on another within the clocks' difference stays ended. A name
//! read from a registration that another handle then rolls back stays in
//! this handle's memory, so messages to that id are accepted and expire
//! unread. The one
//! leftover that would hurt for good, a name reserved by a registration that
//! never completed, is taken back by the next registration of that name once
//! the reservation is [`ORPHAN_AFTER`] old and no user has its id.
//!
//! # Leaving and deleting groups
//!
//! A membership is two rows, `group_members` (who receives live messages
//! and may send: the member list) and `user_groups` (the groups `pending`
//! and `groups` read); the creator is marked in both (`role`) and in the
//! group's head (`chat_groups.creator`). `leave_group` and `remove_member`
//! read the head, the member list and the user's `user_groups` row at once,
//! then delete both membership rows; when the creator leaves, the earliest
//! remaining member (by `joined_after`) gets the creator role in both rows
//! and in the head. These writes leave together, so a crash (or a failed
//! undo) may leave any subset of them. Reads are built so that each subset
//! is harmless:
//!
//! - the creator is the earliest member whose `group_members` row says so,
//!   or, if none does, the earliest member; the `user_groups` role and the
//!   head's `creator` are not read. A creator's leave cut short leaves either
//!   the leaver as creator (their row was not deleted) or the heir;
//! - a user is a member, for `leave_group` and `remove_member`, by either
//!   row, and both are deleted: a leave cut short (still listed, or still
//!   receiving the group's backlog) is completed by leaving again;
//! - a role update that lands after its row was deleted (a member leaving
//!   on another node while being made creator) creates a row with only the
//!   key and `role`: a `group_members` row without `user_name` and a
//!   `user_groups` row without `joined_after` are ignored everywhere.
//!
//! The last member leaving deletes the group: their rows first, and only
//! once those deletes have landed (the one call that waits for its writes),
//! the head. A crash in between leaves a head with no member, and a group
//! exists only while it has a head with a name and at least one member, so
//! that leftover reads as deleted (`group` is `None`, `join_group`,
//! `leave_group` and `remove_member` say `UnknownGroup`). Ids come from id
//! blocks, so a deleted group's id is never given again; its messages expire
//! by the table TTL. No isolation here either: a join racing the last leave
//! on another node can leave a member in a group with no head, whom
//! `group` and `groups` do not show and who can leave it.
//!
//! # History and read positions
//!
//! `append` writes a message to its delivery table (`inbox`, `group_log`)
//! and, in the same call and the same way (sent at once, awaited at
//! commit, undone by rollback), to the history of its conversation:
//!
//! - a direct message to `direct_history`, partition `(lo, hi)`, the two
//!   users' ids in increasing order (a message to oneself: `(u, u)`), and,
//!   unless it is to oneself, to the recipient's `direct_received` (id and
//!   sender only); three writes in all;
//! - a group message to `group_history`, partition the group; two writes.
//!
//! Both history tables cluster by id descending, so a page is one range
//! read of one partition, from its start: `history` asks for `limit + 1`
//! rows with `id < before` (group: and `id > joined_after`) and `LIMIT`,
//! and the extra row says whether older ones exist. Nothing else in the
//! keyspace is read for a page but point reads: the users' names (cached),
//! the membership row of a group member (`user_groups`, the row `pending`
//! reads), and the peer's read mark. A conversation of 100,000 messages in
//! a store of millions is still one slice of one partition; `group_log`,
//! one partition per group and day, is not used for history because a page
//! could then cross any number of (possibly empty) days.
//!
//! **Retention.** History rows are written `USING TTL` the retention
//! ([`ScyllaOptions::history_retention`]; no TTL when it is `None`), each
//! node with its own option, so changing it needs no schema change and
//! applies to messages written from then on. The history tables have no
//! table TTL. The delivery tables keep theirs ([`ScyllaOptions::message_ttl`]):
//! they serve `pending` only, so a message stays in history after it has
//! left them, and (with a retention shorter than the message TTL) may still
//! be delivered after it has left history. With no retention, partitions
//! grow with their conversation for good (a busy group's grows largest);
//! ScyllaDB reads a slice of a large partition through its index, but
//! repair and streaming move it whole, and its time-window compaction
//! should then be changed to the default one (see `schema/cql/05_history.cql`).
//!
//! **Read positions.** `read_marks` holds `user`'s position in each of
//! their conversations (`kind` 0: direct, `target` the peer; 1: group,
//! `target` the group); a group's positions are kept again in
//! `group_reads`, by group, for `readers`. `mark_read` reads the
//! conversation's newest id (one row of its history partition), the
//! position, and for a group its copy, at once; it refuses an `up_to` above
//! the newest (`BeyondNewest`), and writes the position only if it moves
//! (client timestamps make a rollback's write-back win; two handles moving
//! one user's position at once may leave the lower, as for cursors, but a
//! user's conversations are marked by the one node serving them). The
//! conversation's newest message is the newest the history holds, so once
//! the retention has removed all of a conversation only `up_to` 0 passes,
//! and a group's is the group's, not only what the user saw since joining.
//! Read positions have no TTL and outlive memberships (a member who leaves
//! and joins again finds theirs); they are one short row per conversation.
//!
//! `readers` reads the group's head, member list and `group_reads`
//! partition at once (at most one row per member, 1,000) and counts the
//! current members at or beyond the message (no row: position 0).
//! `unread` reads, at once, the user's `read_marks` partition (a row per
//! conversation they ever marked), the newest `UNREAD_CAP + 1` rows of
//! their `direct_received`, and their memberships; direct counts come from
//! those rows (per sender, above the position); then every group at once:
//! one slice of `group_history` above the later of the position and the
//! join, with `LIMIT` [`UNREAD_SCAN`], counting others' messages up to the
//! cap. Costs: 2 round trips; rows read at most (cap + 1) + marks +
//! groups + groups × `UNREAD_SCAN`.
//!
//! **What a crash leaves.** The writes of one `append` leave together and
//! land in any subset: a message in history but not delivered (or the
//! reverse), a direct message counted unread (`direct_received`) but not in
//! the pair's history, where marking up to it says `BeyondNewest` until a
//! later message comes. A group's `mark_read` writes `read_marks` and
//! `group_reads`: if only the first lands, `readers` misses that reader
//! until the next `mark_read` of the group, which brings the copy up to the
//! position even when the position itself does not move; if only the copy
//! lands, the position did not move and marking again writes it.
//!
//! # Sessions and leases
//!
//! A lease is a `node_leases` row written `USING TTL` (the lease rounded up
//! to whole seconds) holding its end in Unix milliseconds; a node is live
//! while its row exists and the end is in the future by this process's
//! clock, so nodes' clocks must agree (NTP) to well within a lease. Within a
//! batch the store remembers each lease it has read or written.
//!
//! A claim is an LWT insert (or, for a claim whose node is dead, an LWT
//! update conditional on the old node and epoch) plus a `sessions_by_node`
//! row; releases are LWT deletes conditional on node and epoch
//! (`release_node`: on node), so a claim taken over elsewhere is never
//! released by its old node. `renew_lease` and `claim_session` register the
//! node in `cluster_nodes`, the short list `expired_nodes` walks: for each
//! registered node whose lease is not live, one row of its
//! `sessions_by_node` partition says whether it still holds claims; a dead
//! node holding none is struck off (a live one registers again with its
//! next renewal).
//!
//! # Ordering caveat
//!
//! The cursor (and the node's "last pushed id") is a message id, and ids
//! come from each writer's clock. A message is never delivered if the
//! recipient's cursor or last pushed id passes its id before it is visible:
//! a message with a higher id (from a faster clock, or allocated a little
//! later elsewhere) was read and pushed while this one was still in flight.
//! What this backend does about it:
//!
//! - writes leave at once, not at commit, so the window is one write latency
//!   plus the difference between the writers' clocks, rather than a batch
//!   (one write latency is also the window between two messages of one
//!   batch to one recipient, which travel side by side);
//! - a handle's id clock never falls behind an id it has seen (the cursors
//!   and acks it handles, the messages it reads), so a lagging clock is
//!   pulled forward by the traffic it serves.
//!
//! This narrows the race; it does not close it. Clocks must be NTP-synced,
//! and a write that is slow to land (a retry, a timeout) can still be passed
//! however fast writes usually are; a short write timeout is no guarantee
//! either. Closing it needs the reader to leave alone what is younger than a
//! settling delay (`pending` would return only ids older than, say, one
//! second, and the session would read again once that has passed), which
//! involves the node's sessions and is not done here.
//!
//! # Not tracked here
//!
//! - [`Store::compact`] deletes nothing and returns 0: messages expire by the
//!   tables' TTL (`--scylla-message-ttl`), acknowledged or not, and the
//!   cursor passes acknowledged ones, so there is never a tombstone per
//!   message; history rows expire by their own TTL (the history retention).
//! - [`Store::pending_total`] returns 0: counting every user's backlog needs
//!   a scan of every user, which a gauge does not justify.
//!
//! # Costs
//!
//! Round trips the calling thread waits for (writes in flight are awaited
//! together at commit, or by a later read of their table):
//!
//! | call | round trips |
//! |---|---|
//! | `create_user` | 1 LWT (plus a read and an LWT per block of 100 ids) |
//! | `append`, direct | 0 once sender and recipient are known, else 1 each (3 writes: inbox, pair history, received) |
//! | `append`, group | 0 once the group's member list was read in the batch, else 1 (2 writes: log, history) |
//! | `group_members` | 0 once the group's member list was read in the batch, else 1 |
//! | `ack`, `cursor` | 0 after the first in a batch, else 1 |
//! | `pending` | 3 in sequence: the cursor, the memberships, then the inbox and every group at once (a group costs a read per day of backlog) |
//! | `history`, direct | 1: one slice of the pair's partition and the peer's read mark at once (plus a name read per user this handle does not know) |
//! | `history`, group | 2: the membership row, then one slice of the group's partition |
//! | `mark_read` | 2: the membership (group) or names (direct, 0 once known), then the newest id and the position(s) at once |
//! | `readers` | 1: head, member list and `group_reads` at once |
//! | `unread` | 2: marks, received and memberships at once, then every group at once |
//! | `claim_session` | 1 read, 1 LWT, and the holder's lease once per batch |
//! | `session_node` | 1 read, and the holder's lease once per batch |
//! | `friends`, `groups`, `group`, `join_group` | the lists, then every member's claim at once |
//! | `remove_friend` | 1: both directions at once |
//! | `find_user` | 1 read of `user_names`, the user's row unless this handle knows their name, then their claim and its lease |
//! | `leave_group`, `remove_member` | 1: the head, the member list and the membership at once; the last member leaving waits for their deletes (1 more) |
//! | `release_node` | 1 read, then one LWT per claim, all at once |
//! | `expired_nodes` | 1 read, then every registered node's lease and claims at once |
//! | `commit` | the slowest write still in flight |
//!
//! # Runtime
//!
//! The store owns a tokio runtime with one worker thread, and every trait
//! call blocks on it. One worker rather than a current-thread runtime: the
//! driver keeps its connections (keep-alives, reconnection, topology events)
//! in background tasks, and the writes a call sends must progress after the
//! call returns; both need the runtime to run while the store thread waits
//! for its next request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt, future, stream};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryRowsResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use super::{
    Contact, Conversation, GroupId, GroupInfo, HistoryPage, Member, MessageId, NewMessage, Result,
    Role, Store, StoreError, StoredMessage, Target, UNREAD_CAP, Unread, UserId, UserRecord,
};

/// How to reach and shape the ScyllaDB keyspace.
#[derive(Debug, Clone)]
pub struct ScyllaOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// `3` (SimpleStrategy) or `dc1:3,dc2:3` (NetworkTopologyStrategy).
    pub replication: String,
    /// one, quorum, local_quorum, all, ...
    pub consistency: String,
    /// Table TTL of messages.
    pub message_ttl: Duration,
    /// How long the history tables keep a message (and so how far back
    /// `history` and `unread` reach): the TTL each history row is written
    /// with, rounded up to whole seconds (at least one). `None` keeps
    /// history forever. See "History and read positions".
    pub history_retention: Option<Duration>,
    /// Create the keyspace and tables if missing before serving.
    pub init_schema: bool,
}

/// Unix milliseconds of the message-id epoch, 2024-01-01T00:00:00Z.
pub const ID_EPOCH_MS: u64 = 1_704_067_200_000;
/// User and group ids a handle reserves at a time.
pub const ID_BLOCK: i64 = 100;
/// How old a name reservation with no user behind it must be before another
/// registration takes the name (a registration that crashed half-way).
pub const ORPHAN_AFTER: Duration = Duration::from_secs(60);

const MS_SHIFT: u32 = 22;
const TAG_SHIFT: u32 = 8;
const TAGS: u64 = 1 << (MS_SHIFT - TAG_SHIFT);
const COUNTER_LIMIT: u64 = 1 << TAG_SHIFT;
const DAY_MS: u64 = 86_400_000;
/// How far ahead of this handle's clock another writer's ids may be when
/// `pending` picks the group-log days to read.
const CLOCK_SLACK_MS: u64 = 5 * 60_000;
/// Observed ids further ahead of this clock than this are not believed (a
/// client acking `u64::MAX`).
const OBSERVE_LIMIT_MS: u64 = 3_600_000;
/// Compare-and-set attempts before a contended row is reported as a failure.
const CAS_ATTEMPTS: usize = 32;
/// Requests one call keeps in flight at once.
const PARALLEL: usize = 64;
/// Entries in each in-memory cache before it starts over.
const CACHE_LIMIT: usize = 1 << 20;
/// The longest TTL ScyllaDB accepts (20 years), in seconds.
const MAX_TTL_SECS: u64 = 630_720_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The one partition of `cluster_nodes`.
const NODES_BUCKET: i32 = 0;
const ROLE_CREATOR: i32 = 0;
const ROLE_MEMBER: i32 = 1;
/// `read_marks.kind` of a direct conversation (`target`: the peer) and of
/// a group (`target`: the group).
const KIND_DIRECT: i32 = 0;
const KIND_GROUP: i32 = 1;
/// Rows of one group's history `unread` examines at most: the cap, plus
/// room for the user's own messages, which are not counted.
pub const UNREAD_SCAN: i32 = 4 * (UNREAD_CAP as i32 + 1);
/// Rows a history read asks the server for per page.
const HISTORY_PAGE_ROWS: usize = 1000;

/// Tables a write touches, so that a read waits only for the writes it
/// could see.
const USERS: u16 = 1;
const FRIENDS: u16 = 1 << 1;
const GROUPS: u16 = 1 << 2;
/// `inbox`, `group_log` and the history tables (`direct_history`,
/// `direct_received`, `group_history`), written together by `append`.
const MESSAGES: u16 = 1 << 3;
const BY_NODE: u16 = 1 << 4;
const NODES: u16 = 1 << 5;
const LEASES: u16 = 1 << 6;
const CURSORS: u16 = 1 << 7;
/// `read_marks` and `group_reads`.
const READS: u16 = 1 << 8;
const ALL: u16 = u16::MAX;

/// Declares every prepared statement once: the public list and the struct
/// holding them prepared.
macro_rules! statements {
    ($($name:ident = $cql:literal;)*) => {
        /// Every CQL statement the backend prepares.
        pub const STATEMENTS: &[&str] = &[$($cql),*];

        struct Statements {
            $($name: PreparedStatement,)*
        }

        impl Statements {
            async fn prepare(session: &Session, consistency: Consistency) -> Result<Statements> {
                Ok(Statements {
                    $($name: prepare(session, $cql, consistency).await?,)*
                })
            }
        }
    };
}

statements! {
    user_get = "SELECT name, password_hash, acked_up_to FROM users WHERE id = ?";
    user_insert = "INSERT INTO users (id, name, password_hash, acked_up_to) VALUES (?, ?, ?, ?)";
    user_delete = "DELETE FROM users WHERE id = ?";
    cursor_set = "UPDATE users SET acked_up_to = ? WHERE id = ?";
    name_claim = "INSERT INTO user_names (name, id) VALUES (?, ?) IF NOT EXISTS";
    name_get = "SELECT id, WRITETIME(id) FROM user_names WHERE name = ?";
    name_reclaim = "UPDATE user_names SET id = ? WHERE name = ? IF id = ?";
    name_release = "DELETE FROM user_names WHERE name = ? IF id = ?";
    id_block_get = "SELECT next_id FROM id_blocks WHERE kind = ?";
    id_block_init = "INSERT INTO id_blocks (kind, next_id) VALUES (?, ?) IF NOT EXISTS";
    id_block_cas = "UPDATE id_blocks SET next_id = ? WHERE kind = ? IF next_id = ?";
    friend_get = "SELECT friend_id, friend_name FROM friends WHERE user_id = ? AND friend_id = ?";
    friend_list = "SELECT friend_id, friend_name FROM friends WHERE user_id = ?";
    friend_insert = "INSERT INTO friends (user_id, friend_id, friend_name) VALUES (?, ?, ?)";
    friend_delete = "DELETE FROM friends WHERE user_id = ? AND friend_id = ?";
    group_get = "SELECT name, description, creator FROM chat_groups WHERE id = ?";
    group_insert = "INSERT INTO chat_groups (id, name, description, creator) VALUES (?, ?, ?, ?)";
    group_delete = "DELETE FROM chat_groups WHERE id = ?";
    group_creator_set = "UPDATE chat_groups SET creator = ? WHERE id = ?";
    member_list = "SELECT joined_after, user_id, user_name, role FROM group_members WHERE group_id = ?";
    member_insert = "INSERT INTO group_members (group_id, joined_after, user_id, user_name, role) VALUES (?, ?, ?, ?, ?)";
    member_delete = "DELETE FROM group_members WHERE group_id = ? AND joined_after = ? AND user_id = ?";
    member_role_set = "UPDATE group_members SET role = ? WHERE group_id = ? AND joined_after = ? AND user_id = ?";
    membership_get = "SELECT joined_after, role FROM user_groups WHERE user_id = ? AND group_id = ?";
    membership_list = "SELECT group_id, joined_after FROM user_groups WHERE user_id = ?";
    membership_insert = "INSERT INTO user_groups (user_id, group_id, joined_after, role) VALUES (?, ?, ?, ?)";
    membership_delete = "DELETE FROM user_groups WHERE user_id = ? AND group_id = ?";
    membership_role_set = "UPDATE user_groups SET role = ? WHERE user_id = ? AND group_id = ?";
    inbox_insert = "INSERT INTO inbox (user_id, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?)";
    inbox_delete = "DELETE FROM inbox WHERE user_id = ? AND id = ?";
    inbox_read = "SELECT id, sender_id, sender_name, time_ms, body FROM inbox WHERE user_id = ? AND id > ? LIMIT ?";
    log_insert = "INSERT INTO group_log (group_id, bucket, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?)";
    log_delete = "DELETE FROM group_log WHERE group_id = ? AND bucket = ? AND id = ?";
    log_read = "SELECT id, sender_id, sender_name, time_ms, body FROM group_log WHERE group_id = ? AND bucket = ? AND id > ?";
    direct_history_insert = "INSERT INTO direct_history (user_lo, user_hi, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?";
    direct_history_delete = "DELETE FROM direct_history WHERE user_lo = ? AND user_hi = ? AND id = ?";
    direct_history_page = "SELECT id, sender_id, sender_name, time_ms, body FROM direct_history WHERE user_lo = ? AND user_hi = ? AND id < ? LIMIT ?";
    direct_history_newest = "SELECT id FROM direct_history WHERE user_lo = ? AND user_hi = ? LIMIT 1";
    received_insert = "INSERT INTO direct_received (user_id, id, sender_id) VALUES (?, ?, ?) USING TTL ?";
    received_delete = "DELETE FROM direct_received WHERE user_id = ? AND id = ?";
    received_newest = "SELECT id, sender_id FROM direct_received WHERE user_id = ? LIMIT ?";
    group_history_insert = "INSERT INTO group_history (group_id, id, sender_id, sender_name, time_ms, body) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?";
    group_history_delete = "DELETE FROM group_history WHERE group_id = ? AND id = ?";
    group_history_page = "SELECT id, sender_id, sender_name, time_ms, body FROM group_history WHERE group_id = ? AND id > ? AND id < ? LIMIT ?";
    group_history_newest = "SELECT id FROM group_history WHERE group_id = ? LIMIT 1";
    group_history_senders = "SELECT id, sender_id FROM group_history WHERE group_id = ? AND id > ? LIMIT ?";
    read_mark_get = "SELECT up_to FROM read_marks WHERE user_id = ? AND kind = ? AND target = ?";
    read_mark_list = "SELECT kind, target, up_to FROM read_marks WHERE user_id = ?";
    read_mark_set = "UPDATE read_marks SET up_to = ? WHERE user_id = ? AND kind = ? AND target = ?";
    read_mark_delete = "DELETE FROM read_marks WHERE user_id = ? AND kind = ? AND target = ?";
    group_read_get = "SELECT up_to FROM group_reads WHERE group_id = ? AND user_id = ?";
    group_read_list = "SELECT user_id, up_to FROM group_reads WHERE group_id = ?";
    group_read_set = "UPDATE group_reads SET up_to = ? WHERE group_id = ? AND user_id = ?";
    group_read_delete = "DELETE FROM group_reads WHERE group_id = ? AND user_id = ?";
    claim_get = "SELECT node, epoch FROM sessions WHERE user_id = ?";
    claim_insert = "INSERT INTO sessions (user_id, node, epoch) VALUES (?, ?, ?) IF NOT EXISTS";
    claim_takeover = "UPDATE sessions SET node = ?, epoch = ? WHERE user_id = ? IF node = ? AND epoch = ?";
    claim_release = "DELETE FROM sessions WHERE user_id = ? IF node = ? AND epoch = ?";
    claim_release_node = "DELETE FROM sessions WHERE user_id = ? IF node = ?";
    by_node_insert = "INSERT INTO sessions_by_node (node, user_id) VALUES (?, ?)";
    by_node_delete = "DELETE FROM sessions_by_node WHERE node = ? AND user_id = ?";
    by_node_list = "SELECT user_id FROM sessions_by_node WHERE node = ?";
    by_node_any = "SELECT user_id FROM sessions_by_node WHERE node = ? LIMIT 1";
    lease_get = "SELECT expires_ms FROM node_leases WHERE node = ?";
    lease_set = "INSERT INTO node_leases (node, expires_ms) VALUES (?, ?) USING TTL ?";
    lease_end = "DELETE FROM node_leases WHERE node = ?";
    node_register = "INSERT INTO cluster_nodes (bucket, node) VALUES (?, ?)";
    node_forget = "DELETE FROM cluster_nodes WHERE bucket = ? AND node = ?";
    node_list = "SELECT node FROM cluster_nodes WHERE bucket = ?";
}

/// Prepares one statement: plain statements are idempotent (every write
/// carries its timestamp, so a retry applies the same cells), lightweight
/// transactions are not; reads use a consistency that reads accept.
async fn prepare(
    session: &Session,
    cql: &'static str,
    consistency: Consistency,
) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(cql)
        .await
        .map_err(|e| StoreError::Backend(format!("scylla: preparing {cql}: {e}")))?;
    statement.set_is_idempotent(!cql.contains(" IF "));
    if cql.starts_with("SELECT") {
        match consistency {
            Consistency::EachQuorum => statement.set_consistency(Consistency::LocalQuorum),
            Consistency::Any => statement.set_consistency(Consistency::One),
            _ => {}
        }
    }
    Ok(statement)
}

/// Bound values kept with a write until it is sent or undone.
type Values = Box<dyn SerializeRow + Send + Sync>;

/// A write sent during the batch and not yet awaited.
struct InFlight {
    tables: u16,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// What rolls one write of the batch back.
struct Undo {
    statement: PreparedStatement,
    values: Values,
    /// A lightweight transaction (no client timestamp).
    conditional: bool,
}

/// An id block of one kind in `id_blocks`: ids `next..end` are this handle's.
struct IdBlock {
    kind: &'static str,
    next: i64,
    end: i64,
}

/// The answer of a lightweight transaction: whether it applied, and the
/// columns the server sent back (ScyllaDB: the row as it was).
struct Cas {
    applied: bool,
    columns: Vec<(String, Option<CqlValue>)>,
}

impl Cas {
    fn get(&self, name: &str) -> Option<&CqlValue> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_ref())
    }

    fn bigint(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(CqlValue::BigInt(v)) => Some(*v),
            _ => None,
        }
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => Some(s.clone()),
            _ => None,
        }
    }
}

/// `id, sender_id, sender_name, time_ms, body` of `inbox` and `group_log`.
type MessageRow = (
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
);
/// `joined_after, user_id, user_name, role` of `group_members`.
type MemberRow = (i64, i64, Option<String>, Option<i32>);
/// `joined_after, role` of `user_groups`.
type MembershipRow = (Option<i64>, Option<i32>);
/// `name, description, creator` of `chat_groups`.
type HeadRow = (Option<String>, Option<String>, Option<i64>);
/// Name, description and members (in order) of a group.
type GroupRow = (String, String, Vec<MemberRow>);

/// What leaving a group and removing a member decide on, read at once.
struct GroupState {
    /// The `chat_groups` row, if it has a name (see "Leaving and deleting
    /// groups").
    head: Option<HeadRow>,
    /// The `group_members` rows, as stored, in joining order.
    rows: Vec<MemberRow>,
    /// The `user_groups` row of the user the call is about.
    membership: Option<MembershipRow>,
}

impl GroupState {
    /// Whether the group exists: a head and at least one member.
    fn exists(&self) -> bool {
        self.head.is_some() && self.rows.iter().any(|row| row.2.is_some())
    }

    /// Whether `user` (the user whose `membership` was read) belongs to the
    /// group by either of its membership rows.
    fn has(&self, user: i64) -> bool {
        self.membership
            .is_some_and(|(joined_after, _)| joined_after.is_some())
            || self.rows.iter().any(|row| row.1 == user && row.2.is_some())
    }
}

/// The [`Store`] on a ScyllaDB keyspace (see the module documentation).
pub struct ScyllaStore {
    inner: Inner,
    /// Declared last: dropped after the session.
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.inner.keyspace)
            .field("writer", &self.inner.tag)
            .field("writes_in_flight", &self.inner.in_flight.len())
            .finish()
    }
}

/// Everything but the runtime, so that a call can block on the runtime
/// while borrowing this mutably.
struct Inner {
    session: Arc<Session>,
    st: Arc<Statements>,
    keyspace: String,
    message_ttl: Duration,
    /// The TTL of history rows, in seconds (0: none).
    history_ttl: i32,
    /// This handle's writer tag in message ids, reserved when it first
    /// allocates one (a handle that only reads never takes a tag).
    tag: Option<u64>,
    /// Millisecond (from the id epoch) of the last message id, and the
    /// counter the next id of that millisecond gets.
    clock_ms: u64,
    counter: u64,
    /// The last client timestamp given to a write, in microseconds.
    last_timestamp: i64,
    user_ids: IdBlock,
    group_ids: IdBlock,
    // The open batch.
    in_flight: Vec<InFlight>,
    undo: Vec<Undo>,
    cursors: HashMap<UserId, i64>,
    /// Lease ends (`None`: no lease) read or written in this batch.
    leases: HashMap<String, Option<i64>>,
    created_users: Vec<UserId>,
    /// Member ids of groups (creator first) read in this batch, until this
    /// handle writes to the group.
    member_lists: HashMap<GroupId, Vec<UserId>>,
    // Facts that never change once true.
    names: HashMap<UserId, String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The key of a user or group id: ids above `i64::MAX` cannot exist.
fn key(id: u64) -> Option<i64> {
    i64::try_from(id).ok()
}

/// A message-id bound: ids above `i64::MAX` do not exist, so clamping keeps
/// a comparison's meaning.
fn bound(id: MessageId) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Ids read back are positive.
fn id_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The millisecond (from the id epoch) of a message id.
fn id_ms(id: u64) -> u64 {
    id >> MS_SHIFT
}

/// The `group_log` day of a millisecond (from the id epoch).
fn day_of_ms(ms: u64) -> i32 {
    i32::try_from(ms / DAY_MS).unwrap_or(i32::MAX)
}

/// The `group_log` day of a message id.
pub fn bucket_of(id: MessageId) -> i32 {
    day_of_ms(id_ms(id))
}

/// The TTL of history rows for a retention, in seconds: rounded up, at
/// least 1, at most ScyllaDB's limit; 0 (no TTL) for `None`.
fn history_ttl(retention: Option<Duration>) -> i32 {
    retention.map_or(0, |d| {
        let seconds = u64::try_from(d.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_SECS);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    })
}

/// The `direct_history` partition of the conversation between two users:
/// the lower id first, so that both directions share it.
fn pair(a: i64, b: i64) -> (i64, i64) {
    (a.min(b), a.max(b))
}

/// How many rows a read of a history page asks for (one more than
/// `limit`, to tell whether older ones exist), as the value bound to
/// `LIMIT ?` and the page size to fetch them in.
fn page_request(limit: usize) -> (usize, i32, i32) {
    let want = limit.saturating_add(1);
    let bound = i32::try_from(want).unwrap_or(i32::MAX);
    let page = i32::try_from(want.min(HISTORY_PAGE_ROWS)).unwrap_or(1);
    (want, bound, page)
}

/// The page of at most `limit` of `messages` (newest first, read with
/// [`page_request`]), and whether older ones exist.
fn page_of(mut messages: Vec<StoredMessage>, limit: usize, read_up_to: MessageId) -> HistoryPage {
    let more = messages.len() > limit;
    messages.truncate(limit);
    HistoryPage {
        messages,
        more,
        read_up_to,
    }
}

/// Unread direct messages per sender among `received` (`id, sender_id` of
/// `direct_received`, the newest `UNREAD_CAP + 1` messages to `user`):
/// those from someone else above `user`'s read position in the
/// conversation with them (`marks`, by `(kind, target)`), at most
/// [`UNREAD_CAP`] each.
fn direct_unread(
    user: i64,
    received: &[(i64, Option<i64>)],
    marks: &HashMap<(i32, i64), i64>,
) -> BTreeMap<i64, u64> {
    let mut counts = BTreeMap::new();
    for &(id, sender) in received {
        let Some(sender) = sender.filter(|&s| s != user) else {
            continue;
        };
        if id > marks.get(&(KIND_DIRECT, sender)).copied().unwrap_or(0) {
            let count = counts.entry(sender).or_insert(0);
            *count = (*count + 1).min(UNREAD_CAP);
        }
    }
    counts
}

/// A message id from its parts.
pub fn message_id(ms: u64, tag: u64, counter: u64) -> MessageId {
    (ms << MS_SHIFT) | ((tag % TAGS) << TAG_SHIFT) | (counter % COUNTER_LIMIT)
}

fn fail(statement: &PreparedStatement, e: impl Display) -> StoreError {
    StoreError::Backend(format!("scylla: {}: {e}", statement.get_statement()))
}

fn message(row: MessageRow, recipient_id: UserId, group_id: GroupId) -> StoredMessage {
    let (id, sender_id, sender_name, time_ms, body) = row;
    StoredMessage {
        id: id_of(id),
        sender_id: sender_id.map_or(0, id_of),
        sender_name: sender_name.unwrap_or_default(),
        recipient_id,
        group_id,
        // Stored as the same 64 bits, so every u64 round-trips.
        time_ms: time_ms.unwrap_or(0) as u64,
        text: body.unwrap_or_default(),
    }
}

/// Parses a consistency name (`local_quorum`, `QUORUM`, `local-one`, ...).
pub fn parse_consistency(name: &str) -> Result<Consistency> {
    Ok(
        match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "one" => Consistency::One,
            "two" => Consistency::Two,
            "three" => Consistency::Three,
            "quorum" => Consistency::Quorum,
            "all" => Consistency::All,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "local_one" => Consistency::LocalOne,
            _ => {
                return Err(StoreError::Backend(format!(
                    "scylla: unknown consistency {name:?}; expected one of one, two, three, \
                     quorum, local_quorum, each_quorum, all, local_one"
                )));
            }
        },
    )
}

/// The serial consistency of lightweight transactions for `consistency`:
/// confined to the local data centre when the data consistency is.
pub fn serial_consistency(consistency: Consistency) -> SerialConsistency {
    match consistency {
        Consistency::LocalOne | Consistency::LocalQuorum => SerialConsistency::LocalSerial,
        _ => SerialConsistency::Serial,
    }
}

/// The CQL replication map for `3` (SimpleStrategy) or `dc1:3,dc2:2`
/// (NetworkTopologyStrategy).
pub fn replication_map(spec: &str) -> Result<String> {
    let bad = |why: &str| {
        StoreError::Backend(format!(
            "scylla: bad replication {spec:?} ({why}); expected a factor such as 3 \
             or data centres such as dc1:3,dc2:2"
        ))
    };
    let factor = |s: &str| match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad("a factor must be a positive integer")),
    };
    let spec_trimmed = spec.trim();
    if !spec_trimmed.contains(':') {
        let rf = factor(spec_trimmed)?;
        return Ok(format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
        ));
    }
    let mut dcs = Vec::new();
    for item in spec_trimmed.split(',') {
        let (dc, rf) = item.split_once(':').ok_or_else(|| bad("dc:factor"))?;
        let dc = dc.trim();
        if dc.is_empty()
            || !dc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(bad("a data centre name is letters, digits, _, - and ."));
        }
        dcs.push(format!("'{dc}': {}", factor(rf)?));
    }
    Ok(format!(
        "{{'class': 'NetworkTopologyStrategy', {}}}",
        dcs.join(", ")
    ))
}

/// Keyspace names are used unquoted in DDL: a letter, then letters, digits
/// and `_`, at most 48 characters.
fn check_keyspace(name: &str) -> Result<()> {
    let ok = name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "scylla: bad keyspace name {name:?}: a letter, then letters, digits and _, \
             at most 48 characters"
        )))
    }
}

impl ScyllaStore {
    /// Connects to the cluster and prepares every statement; with
    /// `options.init_schema`, first creates the keyspace (replication from
    /// `options.replication`) and the tables of `schema/cql`, and sets the
    /// message tables' TTL to `options.message_ttl` (a no-op when they exist
    /// with that TTL already).
    ///
    /// Any number of stores, in any number of processes, may open the same
    /// keyspace. Fails with `Backend` for a bad option or an unreachable
    /// cluster.
    pub fn open(options: &ScyllaOptions) -> Result<ScyllaStore> {
        let consistency = parse_consistency(&options.consistency)?;
        check_keyspace(&options.keyspace)?;
        let replication = if options.init_schema {
            Some(replication_map(&options.replication)?)
        } else {
            None
        };
        if options.nodes.is_empty() {
            return Err(StoreError::Backend("scylla: no contact point".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chat-scylla")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("scylla: starting a runtime: {e}")))?;
        let inner = runtime.block_on(Inner::connect(options, consistency, replication))?;
        Ok(ScyllaStore { inner, runtime })
    }
}

impl Drop for ScyllaStore {
    /// A batch never committed dies with its handle.
    fn drop(&mut self) {
        if self.inner.batch_open() {
            self.runtime.block_on(self.inner.rollback());
        }
    }
}

impl Inner {
    async fn connect(
        options: &ScyllaOptions,
        consistency: Consistency,
        replication: Option<String>,
    ) -> Result<Inner> {
        let profile = ExecutionProfile::builder()
            .consistency(consistency)
            .serial_consistency(Some(serial_consistency(consistency)))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "scylla: connecting to {}: {e}",
                    options.nodes.join(",")
                ))
            })?;
        let keyspace = options.keyspace.clone();
        if let Some(replication) = replication {
            ddl(
                &session,
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
                ),
            )
            .await?;
        }
        session
            .use_keyspace(keyspace.as_str(), false)
            .await
            .map_err(|e| StoreError::Backend(format!("scylla: keyspace {keyspace}: {e}")))?;
        if options.init_schema {
            for (file, text) in chat_schema::cql::FILES {
                for statement in chat_schema::cql::statements(text) {
                    ddl(&session, statement).await.map_err(|e| match e {
                        StoreError::Backend(m) => StoreError::Backend(format!("{m} (in {file})")),
                        other => other,
                    })?;
                }
            }
            set_message_ttl(&session, &keyspace, options.message_ttl).await?;
        }
        let st = Statements::prepare(&session, consistency).await?;
        Ok(Inner {
            session: Arc::new(session),
            st: Arc::new(st),
            keyspace,
            message_ttl: options.message_ttl,
            history_ttl: history_ttl(options.history_retention),
            tag: None,
            clock_ms: 0,
            counter: 0,
            last_timestamp: 0,
            user_ids: IdBlock {
                kind: "user",
                next: 0,
                end: 0,
            },
            group_ids: IdBlock {
                kind: "group",
                next: 0,
                end: 0,
            },
            in_flight: Vec::new(),
            undo: Vec::new(),
            cursors: HashMap::new(),
            leases: HashMap::new(),
            created_users: Vec::new(),
            member_lists: HashMap::new(),
            names: HashMap::new(),
        })
    }

    fn batch_open(&self) -> bool {
        !self.in_flight.is_empty() || !self.undo.is_empty() || !self.cursors.is_empty()
    }

    // ---- clocks and ids ----

    /// A client timestamp for the next write: microseconds, increasing per
    /// handle.
    fn timestamp(&mut self) -> i64 {
        self.last_timestamp = now_us().max(self.last_timestamp + 1);
        self.last_timestamp
    }

    async fn next_message_id(&mut self) -> Result<MessageId> {
        let tag = match self.tag {
            Some(tag) => tag,
            None => {
                let (writer, _) = self.reserve("writer", 1).await?;
                *self.tag.insert(id_of(writer) % TAGS)
            }
        };
        let now = now_ms().saturating_sub(ID_EPOCH_MS);
        if now > self.clock_ms {
            self.clock_ms = now;
            self.counter = 0;
        }
        if self.counter >= COUNTER_LIMIT {
            self.clock_ms += 1;
            self.counter = 0;
        }
        let id = message_id(self.clock_ms, tag, self.counter);
        self.counter += 1;
        Ok(id)
    }

    /// Keeps this handle's next message ids above `id`, an id seen elsewhere.
    fn observe(&mut self, id: MessageId) {
        let ms = id_ms(id);
        let now = now_ms().saturating_sub(ID_EPOCH_MS);
        if ms >= self.clock_ms && ms <= now + OBSERVE_LIMIT_MS {
            self.clock_ms = ms + 1;
            self.counter = 0;
        }
    }

    /// Reserves `size` ids of `kind`: returns `(first, end)`.
    async fn reserve(&self, kind: &str, size: i64) -> Result<(i64, i64)> {
        let st = &self.st;
        let mut seen: Option<i64> = self
            .read_one::<(Option<i64>,)>(&st.id_block_get, (kind,))
            .await?
            .and_then(|(n,)| n);
        for _ in 0..CAS_ATTEMPTS {
            let cas = match seen {
                None => self.lwt(&st.id_block_init, (kind, 1 + size)).await?,
                Some(n) => self.lwt(&st.id_block_cas, (n + size, kind, n)).await?,
            };
            if cas.applied {
                let first = seen.unwrap_or(1);
                return Ok((first, first + size));
            }
            seen = cas.bigint("next_id");
        }
        Err(StoreError::Backend(format!(
            "scylla: id block of {kind:?} still contended after {CAS_ATTEMPTS} attempts"
        )))
    }

    /// The next user id, without using it up.
    async fn peek_user_id(&mut self) -> Result<i64> {
        if self.user_ids.next >= self.user_ids.end {
            let (next, end) = self.reserve(self.user_ids.kind, ID_BLOCK).await?;
            self.user_ids.next = next;
            self.user_ids.end = end;
        }
        Ok(self.user_ids.next)
    }

    async fn take_group_id(&mut self) -> Result<i64> {
        if self.group_ids.next >= self.group_ids.end {
            let (next, end) = self.reserve(self.group_ids.kind, ID_BLOCK).await?;
            self.group_ids.next = next;
            self.group_ids.end = end;
        }
        let id = self.group_ids.next;
        self.group_ids.next += 1;
        Ok(id)
    }

    // ---- requests ----

    async fn read_one<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.rows(statement, values)
            .await?
            .maybe_first_row::<R>()
            .map_err(|e| fail(statement, e))
    }

    /// Runs `statement` unpaged and returns its rows (single-row reads and
    /// lightweight transactions).
    async fn rows(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryRowsResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| fail(statement, e))?
            .into_rows_result()
            .map_err(|e| fail(statement, e))
    }

    /// Reads rows page by page, keeping those `keep` accepts, until `max`
    /// are kept or the rows run out.
    async fn read_rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        page_size: Option<i32>,
        max: usize,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let mut paged = statement.clone();
        if let Some(size) = page_size {
            paged.set_page_size(size.max(1));
        }
        let mut rows = self
            .session
            .execute_iter(paged, values)
            .await
            .map_err(|e| fail(statement, e))?
            .rows_stream::<R>()
            .map_err(|e| fail(statement, e))?;
        let mut out = Vec::new();
        while out.len() < max {
            match rows.try_next().await.map_err(|e| fail(statement, e))? {
                Some(row) if keep(&row) => out.push(row),
                Some(_) => {}
                None => break,
            }
        }
        Ok(out)
    }

    async fn read_all<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.read_rows(statement, values, None, usize::MAX, |_| true)
            .await
    }

    /// Runs a lightweight transaction.
    async fn lwt(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<Cas> {
        let rows = self.rows(statement, values).await?;
        let names: Vec<String> = rows
            .column_specs()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        let row = rows
            .maybe_first_row::<Row>()
            .map_err(|e| fail(statement, e))?;
        let values = row.map(|r| r.columns).unwrap_or_default();
        let columns: Vec<(String, Option<CqlValue>)> = names
            .into_iter()
            .zip(values.into_iter().chain(std::iter::repeat(None)))
            .collect();
        let applied = match columns.iter().find(|(n, _)| n == "[applied]") {
            Some((_, Some(CqlValue::Boolean(applied)))) => *applied,
            _ => return Err(fail(statement, "no [applied] column in the answer")),
        };
        Ok(Cas { applied, columns })
    }

    /// Sends a write now (see "How a batch flows"); `undo` rolls it back.
    fn write(
        &mut self,
        tables: u16,
        statement: &PreparedStatement,
        values: Values,
        undo: Option<(&PreparedStatement, Values)>,
    ) {
        let mut statement = statement.clone();
        statement.set_timestamp(Some(self.timestamp()));
        let session = Arc::clone(&self.session);
        let task = tokio::spawn(async move {
            session
                .execute_unpaged(&statement, &values)
                .await
                .map(drop)
                .map_err(|e| fail(&statement, e))
        });
        self.in_flight.push(InFlight { tables, task });
        if let Some((statement, values)) = undo {
            self.undo.push(Undo {
                statement: statement.clone(),
                values,
                conditional: false,
            });
        }
    }

    /// Waits for the writes in flight that touch `tables`.
    async fn settle(&mut self, tables: u16) -> Result<()> {
        if !self.in_flight.iter().any(|w| w.tables & tables != 0) {
            return Ok(());
        }
        let (now, later): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|w| w.tables & tables != 0);
        self.in_flight = later;
        let mut first_error = None;
        for done in future::join_all(now.into_iter().map(|w| w.task)).await {
            let outcome = done.unwrap_or_else(|e| {
                Err(StoreError::Backend(format!(
                    "scylla: a write task failed: {e}"
                )))
            });
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn end_batch(&mut self) {
        self.undo.clear();
        self.cursors.clear();
        self.leases.clear();
        self.created_users.clear();
        self.member_lists.clear();
    }

    async fn commit(&mut self) -> Result<()> {
        let st = Arc::clone(&self.st);
        for (user, cursor) in std::mem::take(&mut self.cursors) {
            if let Some(k) = key(user) {
                self.write(CURSORS, &st.cursor_set, Box::new((cursor, k)), None);
            }
        }
        // On failure the compensations stay for the caller's rollback.
        self.settle(ALL).await?;
        self.end_batch();
        Ok(())
    }

    async fn rollback(&mut self) {
        self.cursors.clear();
        if let Err(e) = self.settle(ALL).await {
            tracing::debug!(error = %e, "a write of a rolled-back batch failed");
        }
        for id in std::mem::take(&mut self.created_users) {
            self.names.remove(&id);
        }
        let undo = std::mem::take(&mut self.undo);
        let mut undoing = Vec::with_capacity(undo.len());
        for Undo {
            mut statement,
            values,
            conditional,
        } in undo.into_iter().rev()
        {
            if !conditional {
                statement.set_timestamp(Some(self.timestamp()));
            }
            let session = Arc::clone(&self.session);
            undoing.push(async move {
                session
                    .execute_unpaged(&statement, &values)
                    .await
                    .map_err(|e| fail(&statement, e))
            });
        }
        for failed in future::join_all(undoing)
            .await
            .into_iter()
            .filter_map(|r| r.err())
        {
            tracing::warn!(error = %failed, "rolling back a batch left a write in place");
        }
        self.end_batch();
    }

    // ---- users ----

    fn remember_name(&mut self, id: UserId, name: String) {
        if self.names.len() >= CACHE_LIMIT {
            self.names.clear();
        }
        self.names.insert(id, name);
    }

    /// The profile row of a user: name, password hash, cursor.
    async fn profile(&mut self, id: UserId) -> Result<Option<(String, String, i64)>> {
        let Some(k) = key(id) else {
            return Ok(None);
        };
        self.settle(USERS).await?;
        let row = self
            .read_one::<(Option<String>, Option<String>, Option<i64>)>(&self.st.user_get, (k,))
            .await?;
        Ok(match row {
            Some((Some(name), hash, cursor)) => {
                self.remember_name(id, name.clone());
                Some((name, hash.unwrap_or_default(), cursor.unwrap_or(0)))
            }
            _ => None,
        })
    }

    /// The name of a user, `None` if there is no such user.
    async fn user_name(&mut self, id: UserId) -> Result<Option<String>> {
        if let Some(name) = self.names.get(&id) {
            return Ok(Some(name.clone()));
        }
        Ok(self.profile(id).await?.map(|(name, _, _)| name))
    }

    async fn cursor_of(&mut self, user: UserId) -> Result<i64> {
        if let Some(&cursor) = self.cursors.get(&user) {
            return Ok(cursor);
        }
        let (_, _, cursor) = self
            .profile(user)
            .await?
            .ok_or(StoreError::UnknownUser(user))?;
        self.observe(id_of(cursor));
        Ok(cursor)
    }

    /// Whether a name reservation is a leftover: no user has its id, and it
    /// is older than [`ORPHAN_AFTER`].
    async fn name_is_orphaned(&mut self, name: &str, holder: i64) -> Result<bool> {
        if self.user_name(id_of(holder)).await?.is_some() {
            return Ok(false);
        }
        let row = self
            .read_one::<(Option<i64>, Option<i64>)>(&self.st.name_get, (name,))
            .await?;
        let old = now_us() - i64::try_from(ORPHAN_AFTER.as_micros()).unwrap_or(i64::MAX);
        Ok(matches!(row, Some((Some(id), Some(written))) if id == holder && written < old))
    }

    /// Takes `name` for `id`: whether it did.
    async fn claim_name(&mut self, name: &str, id: i64) -> Result<bool> {
        let st = Arc::clone(&self.st);
        let cas = self.lwt(&st.name_claim, (name, id)).await?;
        if cas.applied {
            return Ok(true);
        }
        let Some(holder) = cas.bigint("id") else {
            return Ok(false);
        };
        Ok(self.name_is_orphaned(name, holder).await?
            && self
                .lwt(&st.name_reclaim, (id, name, holder))
                .await?
                .applied)
    }

    async fn create_user(&mut self, name: &str, password_hash: &str) -> Result<UserId> {
        let st = Arc::clone(&self.st);
        let id = self.peek_user_id().await?;
        // Registered before the transaction: one that fails without an
        // answer (a timeout) may have taken the name, and the rollback that
        // follows the error must give it back.
        self.undo.push(Undo {
            statement: st.name_release.clone(),
            values: Box::new((name.to_owned(), id)),
            conditional: true,
        });
        let claimed = self.claim_name(name, id).await;
        if !matches!(claimed, Ok(false)) {
            self.user_ids.next += 1;
        }
        if !claimed? {
            self.undo.pop();
            return Err(StoreError::NameTaken);
        }
        self.write(
            USERS,
            &st.user_insert,
            Box::new((id, name.to_owned(), password_hash.to_owned(), 0_i64)),
            Some((&st.user_delete, Box::new((id,)))),
        );
        let id = id_of(id);
        self.remember_name(id, name.to_owned());
        self.created_users.push(id);
        Ok(id)
    }

    async fn user(&mut self, id: UserId) -> Result<Option<UserRecord>> {
        Ok(self
            .profile(id)
            .await?
            .map(|(name, password_hash, _)| UserRecord {
                id,
                name,
                password_hash,
            }))
    }

    /// The user registered under exactly `name`: the `user_names` row, then
    /// the user it names (a reservation whose registration never completed,
    /// or is still under way elsewhere, names nobody).
    async fn find_user(&mut self, name: &str) -> Result<Option<Contact>> {
        // No user has it (a name is a partition key, which may not be
        // empty), and ScyllaDB would refuse the read.
        if name.is_empty() {
            return Ok(None);
        }
        let row = self
            .read_one::<(Option<i64>, Option<i64>)>(&self.st.name_get, (name,))
            .await?;
        let Some((Some(holder), _)) = row else {
            return Ok(None);
        };
        let id = id_of(holder);
        match self.user_name(id).await? {
            Some(stored) if stored == name => {
                let online = self.online(&[id]).await?.pop().unwrap_or(false);
                Ok(Some(Contact {
                    id,
                    name: stored,
                    online,
                }))
            }
            _ => Ok(None),
        }
    }

    // ---- leases and sessions ----

    /// Which of `nodes` hold a live lease now.
    async fn live_nodes<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a String>,
    ) -> Result<HashSet<String>> {
        let mut unknown: Vec<&String> = nodes
            .into_iter()
            .filter(|n| !self.leases.contains_key(*n))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            self.settle(LEASES).await?;
            let this = &*self;
            let ends: Vec<(String, Option<i64>)> = stream::iter(unknown)
                .map(|node| async move {
                    let end = this
                        .read_one::<(Option<i64>,)>(&this.st.lease_get, (node.as_str(),))
                        .await?
                        .and_then(|(end,)| end);
                    Ok::<_, StoreError>((node.clone(), end))
                })
                .buffered(PARALLEL)
                .try_collect()
                .await?;
            self.leases.extend(ends);
        }
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        Ok(self
            .leases
            .iter()
            .filter(|(_, end)| end.is_some_and(|end| end > now))
            .map(|(node, _)| node.clone())
            .collect())
    }

    async fn is_live(&mut self, node: &String) -> Result<bool> {
        Ok(self.live_nodes([node]).await?.contains(node))
    }

    /// The claim of each user: `(node, epoch)`, if any.
    async fn claims(&self, users: &[UserId]) -> Result<Vec<Option<(String, i64)>>> {
        stream::iter(users)
            .map(|&user| async move {
                let Some(k) = key(user) else {
                    return Ok(None);
                };
                let row = self
                    .read_one::<(Option<String>, Option<i64>)>(&self.st.claim_get, (k,))
                    .await?;
                Ok(match row {
                    Some((Some(node), Some(epoch))) => Some((node, epoch)),
                    _ => None,
                })
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// The node serving each user: the holder of their claim, while its lease
    /// is live.
    async fn serving_nodes(&mut self, users: &[UserId]) -> Result<Vec<Option<String>>> {
        let claims = self.claims(users).await?;
        let live = self
            .live_nodes(claims.iter().flatten().map(|(node, _)| node))
            .await?;
        Ok(claims
            .into_iter()
            .map(|c| c.map(|(node, _)| node).filter(|node| live.contains(node)))
            .collect())
    }

    async fn online(&mut self, users: &[UserId]) -> Result<Vec<bool>> {
        Ok(self
            .serving_nodes(users)
            .await?
            .iter()
            .map(Option::is_some)
            .collect())
    }

    async fn claim_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<()> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let st = Arc::clone(&self.st);
        let k = key(user).ok_or(StoreError::UnknownUser(user))?;
        // Stored as the same 64 bits, so every u64 round-trips.
        let epoch = epoch as i64;
        let mut current = self.claims(&[user]).await?.pop().flatten();
        // Registered before the transactions, for one that fails without an
        // answer; taken back when the claim is refused.
        self.undo.push(Undo {
            statement: st.claim_release.clone(),
            values: Box::new((k, node.to_owned(), epoch)),
            conditional: true,
        });
        for _ in 0..CAS_ATTEMPTS {
            let cas = match &current {
                Some((holder, held)) => {
                    if self.is_live(holder).await? {
                        self.undo.pop();
                        return Err(StoreError::AlreadyOnline(user));
                    }
                    self.lwt(&st.claim_takeover, (node, epoch, k, holder.as_str(), *held))
                        .await?
                }
                None => self.lwt(&st.claim_insert, (k, node, epoch)).await?,
            };
            if cas.applied {
                if let Some((holder, _)) = current
                    && holder != node
                {
                    self.write(BY_NODE, &st.by_node_delete, Box::new((holder, k)), None);
                }
                self.write(
                    BY_NODE,
                    &st.by_node_insert,
                    Box::new((node.to_owned(), k)),
                    Some((&st.by_node_delete, Box::new((node.to_owned(), k)))),
                );
                self.write(
                    NODES,
                    &st.node_register,
                    Box::new((NODES_BUCKET, node.to_owned())),
                    None,
                );
                return Ok(());
            }
            current = cas.text("node").zip(cas.bigint("epoch"));
        }
        Err(StoreError::Backend(format!(
            "scylla: the session of user {user} is still contended after {CAS_ATTEMPTS} attempts"
        )))
    }

    async fn session_node(&mut self, user: UserId) -> Result<Option<String>> {
        Ok(self.serving_nodes(&[user]).await?.pop().flatten())
    }

    fn renew_lease(&mut self, node: &str, ttl: Duration) {
        let st = Arc::clone(&self.st);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let end = i64::try_from(now_ms().saturating_add(ttl_ms)).unwrap_or(i64::MAX);
        let seconds = ttl_ms.div_ceil(1000).clamp(1, MAX_TTL_SECS);
        let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
        self.leases.insert(node.to_owned(), Some(end));
        self.write(
            LEASES,
            &st.lease_set,
            Box::new((node.to_owned(), end, seconds)),
            None,
        );
        self.write(
            NODES,
            &st.node_register,
            Box::new((NODES_BUCKET, node.to_owned())),
            None,
        );
    }

    fn end_lease(&mut self, node: &str) {
        let st = Arc::clone(&self.st);
        self.leases.insert(node.to_owned(), None);
        self.write(LEASES, &st.lease_end, Box::new((node.to_owned(),)), None);
    }

    /// Dead nodes that hold no claim are also struck off `cluster_nodes`
    /// (a node registers again with its next renewal).
    async fn expired_nodes(&mut self) -> Result<Vec<String>> {
        let st = Arc::clone(&self.st);
        self.settle(NODES | BY_NODE).await?;
        let nodes: Vec<String> = self
            .read_all::<(String,)>(&st.node_list, (NODES_BUCKET,))
            .await?
            .into_iter()
            .map(|(node,)| node)
            .collect();
        let live = self.live_nodes(&nodes).await?;
        let this = &*self;
        let dead: Vec<(String, bool)> =
            stream::iter(nodes.into_iter().filter(|n| !live.contains(n)))
                .map(|node| async move {
                    let claims = this
                        .read_one::<(i64,)>(&this.st.by_node_any, (node.as_str(),))
                        .await?;
                    Ok::<_, StoreError>((node, claims.is_some()))
                })
                .buffered(PARALLEL)
                .try_collect()
                .await?;
        let mut expired = Vec::new();
        for (node, holds_claims) in dead {
            if holds_claims {
                expired.push(node);
            } else {
                self.write(NODES, &st.node_forget, Box::new((NODES_BUCKET, node)), None);
            }
        }
        expired.sort_unstable();
        Ok(expired)
    }

    async fn release_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<bool> {
        let Some(k) = key(user) else {
            return Ok(false);
        };
        let st = Arc::clone(&self.st);
        let released = self
            .lwt(&st.claim_release, (k, node, epoch as i64))
            .await?
            .applied;
        if released {
            self.write(
                BY_NODE,
                &st.by_node_delete,
                Box::new((node.to_owned(), k)),
                None,
            );
        }
        Ok(released)
    }

    async fn release_node(&mut self, node: &str) -> Result<Vec<UserId>> {
        let st = Arc::clone(&self.st);
        self.settle(BY_NODE).await?;
        let listed: Vec<(i64,)> = self.read_all(&st.by_node_list, (node,)).await?;
        let this = &*self;
        let outcomes: Vec<(i64, bool)> = stream::iter(listed)
            .map(|(k,)| async move {
                let cas = this.lwt(&this.st.claim_release_node, (k, node)).await?;
                Ok::<_, StoreError>((k, cas.applied))
            })
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut released = Vec::new();
        for (k, applied) in outcomes {
            self.write(
                BY_NODE,
                &st.by_node_delete,
                Box::new((node.to_owned(), k)),
                None,
            );
            if applied {
                released.push(id_of(k));
            }
        }
        if !self.is_live(&node.to_owned()).await? {
            self.write(
                NODES,
                &st.node_forget,
                Box::new((NODES_BUCKET, node.to_owned())),
                None,
            );
        }
        released.sort_unstable();
        Ok(released)
    }

    // ---- friends ----

    async fn add_friend(&mut self, user: UserId, friend: UserId) -> Result<Contact> {
        let Some(user_name) = self.user_name(user).await? else {
            return Err(StoreError::UnknownUser(user));
        };
        let Some(friend_name) = self.user_name(friend).await? else {
            return Err(StoreError::UnknownUser(friend));
        };
        let (Some(u), Some(f)) = (key(user), key(friend)) else {
            return Err(StoreError::UnknownUser(user));
        };
        if u == f {
            return Err(StoreError::AlreadyFriends(user, friend));
        }
        let st = Arc::clone(&self.st);
        self.settle(FRIENDS).await?;
        if self
            .read_one::<(i64, Option<String>)>(&st.friend_get, (u, f))
            .await?
            .is_some()
        {
            return Err(StoreError::AlreadyFriends(user, friend));
        }
        let online = self.online(&[friend]).await?.pop().unwrap_or(false);
        self.write(
            FRIENDS,
            &st.friend_insert,
            Box::new((u, f, friend_name.clone())),
            Some((&st.friend_delete, Box::new((u, f)))),
        );
        self.write(
            FRIENDS,
            &st.friend_insert,
            Box::new((f, u, user_name)),
            Some((&st.friend_delete, Box::new((f, u)))),
        );
        Ok(Contact {
            id: friend,
            name: friend_name,
            online,
        })
    }

    /// Reads both directions at once and deletes those that exist, so that
    /// a friendship a crash left in one direction can be ended too.
    async fn remove_friend(&mut self, user: UserId, friend: UserId) -> Result<()> {
        let not_friends = StoreError::NotFriends(user, friend);
        let (Some(u), Some(f)) = (key(user), key(friend)) else {
            return Err(not_friends);
        };
        if u == f {
            return Err(not_friends);
        }
        let st = Arc::clone(&self.st);
        self.settle(FRIENDS).await?;
        let (mine, theirs) = future::try_join(
            self.read_one::<(i64, Option<String>)>(&st.friend_get, (u, f)),
            self.read_one::<(i64, Option<String>)>(&st.friend_get, (f, u)),
        )
        .await?;
        if mine.is_none() && theirs.is_none() {
            return Err(not_friends);
        }
        for (owner, other, row) in [(u, f, mine), (f, u, theirs)] {
            if let Some((_, name)) = row {
                let undo: Values = Box::new((owner, other, name.unwrap_or_default()));
                self.write(
                    FRIENDS,
                    &st.friend_delete,
                    Box::new((owner, other)),
                    Some((&st.friend_insert, undo)),
                );
            }
        }
        Ok(())
    }

    async fn friends(&mut self, user: UserId) -> Result<Vec<Contact>> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        self.settle(FRIENDS).await?;
        let rows: Vec<(i64, Option<String>)> = self.read_all(&self.st.friend_list, (u,)).await?;
        let ids: Vec<UserId> = rows.iter().map(|(f, _)| id_of(*f)).collect();
        let online = self.online(&ids).await?;
        Ok(rows
            .into_iter()
            .zip(online)
            .map(|((f, name), online)| Contact {
                id: id_of(f),
                name: name.unwrap_or_default(),
                online,
            })
            .collect())
    }

    // ---- groups ----

    /// Whether `user` has a `user_groups` row for `group` (a row without
    /// `joined_after` is the leftover of a role update, not a membership).
    async fn is_member(&mut self, group: GroupId, user: UserId) -> Result<bool> {
        let (Some(g), Some(u)) = (key(group), key(user)) else {
            return Ok(false);
        };
        self.settle(GROUPS).await?;
        Ok(self
            .read_one::<MembershipRow>(&self.st.membership_get, (u, g))
            .await?
            .is_some_and(|(joined_after, _)| joined_after.is_some()))
    }

    /// Whether `group` exists: a head with a name and at least one member
    /// (a head left with no member is a deleted group, see "Leaving and
    /// deleting groups").
    async fn group_exists(&mut self, group: GroupId) -> Result<bool> {
        let Some(g) = key(group) else {
            return Ok(false);
        };
        self.settle(GROUPS).await?;
        let st = &self.st;
        let (head, member) = future::try_join(
            self.read_one::<HeadRow>(&st.group_get, (g,)),
            self.read_rows::<MemberRow>(&st.member_list, (g,), Some(16), 1, |row| row.2.is_some()),
        )
        .await?;
        Ok(head.is_some_and(|(name, _, _)| name.is_some()) && !member.is_empty())
    }

    /// Members of a group from its `group_members` rows (joining order): each
    /// once (their earliest row), rows without a name dropped (a role update
    /// that landed after its member left), the creator first as
    /// `ROLE_CREATOR` and everyone else as `ROLE_MEMBER`. The creator is the
    /// earliest member whose row says so or, if none does (a handover that a
    /// crash cut short), the earliest member.
    fn member_order(mut rows: Vec<MemberRow>) -> Vec<MemberRow> {
        let mut seen = HashSet::new();
        rows.retain(|(_, user, name, _)| name.is_some() && seen.insert(*user));
        let creator = rows
            .iter()
            .position(|(_, _, _, role)| *role == Some(ROLE_CREATOR))
            .unwrap_or(0);
        if let Some(first) = rows.get_mut(..=creator) {
            first.rotate_right(1);
        }
        for (i, row) in rows.iter_mut().enumerate() {
            row.3 = Some(if i == 0 { ROLE_CREATOR } else { ROLE_MEMBER });
        }
        rows
    }

    /// Ids of the members of `group`, creator first then by joining order;
    /// read once per batch and reused until this handle writes to the
    /// group. Empty for no such group.
    async fn member_ids(&mut self, group: GroupId) -> Result<&[UserId]> {
        if !self.member_lists.contains_key(&group) {
            let mut ids = Vec::new();
            if let Some(g) = key(group) {
                self.settle(GROUPS).await?;
                let rows = self
                    .read_all::<MemberRow>(&self.st.member_list, (g,))
                    .await?;
                ids = Self::member_order(rows)
                    .into_iter()
                    .map(|(_, user, _, _)| id_of(user))
                    .collect();
            }
            self.member_lists.insert(group, ids);
        }
        Ok(self.member_lists.get(&group).map_or(&[], Vec::as_slice))
    }

    /// Name, description and members of each group (`None`: no such group).
    async fn group_rows(&self, groups: &[i64]) -> Result<Vec<Option<GroupRow>>> {
        stream::iter(groups)
            .map(|&g| async move {
                let head = self.read_one::<HeadRow>(&self.st.group_get, (g,)).await?;
                let Some((Some(name), description, _)) = head else {
                    return Ok(None);
                };
                let members = Self::member_order(
                    self.read_all::<MemberRow>(&self.st.member_list, (g,))
                        .await?,
                );
                if members.is_empty() {
                    // A deleted group whose head a crash left behind.
                    return Ok(None);
                }
                Ok(Some((name, description.unwrap_or_default(), members)))
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// Full descriptions of groups, with every member's online state.
    async fn group_infos(&mut self, groups: &[i64]) -> Result<Vec<Option<GroupInfo>>> {
        self.settle(GROUPS).await?;
        let rows = self.group_rows(groups).await?;
        let users: Vec<UserId> = rows
            .iter()
            .flatten()
            .flat_map(|(_, _, members)| members.iter().map(|m| id_of(m.1)))
            .collect();
        let mut online = self.online(&users).await?.into_iter();
        Ok(groups
            .iter()
            .zip(rows)
            .map(|(&g, row)| {
                row.map(|(name, description, members)| GroupInfo {
                    id: id_of(g),
                    name,
                    description,
                    members: members
                        .into_iter()
                        .map(|(_, user, name, role)| Member {
                            id: id_of(user),
                            name: name.unwrap_or_default(),
                            online: online.next().unwrap_or(false),
                            role: if role == Some(ROLE_CREATOR) {
                                Role::Creator
                            } else {
                                Role::Normal
                            },
                        })
                        .collect(),
                })
            })
            .collect())
    }

    /// Writes the rows of a membership.
    async fn add_member(&mut self, g: i64, u: i64, name: String, role: i32) -> Result<()> {
        let st = Arc::clone(&self.st);
        let joined_after = bound(self.next_message_id().await?);
        self.write(
            GROUPS,
            &st.member_insert,
            Box::new((g, joined_after, u, name, role)),
            Some((&st.member_delete, Box::new((g, joined_after, u)))),
        );
        self.write(
            GROUPS,
            &st.membership_insert,
            Box::new((u, g, joined_after, role)),
            Some((&st.membership_delete, Box::new((u, g)))),
        );
        self.member_lists.remove(&id_of(g));
        Ok(())
    }

    async fn create_group(
        &mut self,
        creator: UserId,
        name: &str,
        description: &str,
    ) -> Result<GroupId> {
        let Some(creator_name) = self.user_name(creator).await? else {
            return Err(StoreError::UnknownUser(creator));
        };
        let c = key(creator).ok_or(StoreError::UnknownUser(creator))?;
        let st = Arc::clone(&self.st);
        let g = self.take_group_id().await?;
        self.write(
            GROUPS,
            &st.group_insert,
            Box::new((g, name.to_owned(), description.to_owned(), c)),
            Some((&st.group_delete, Box::new((g,)))),
        );
        self.add_member(g, c, creator_name, ROLE_CREATOR).await?;
        Ok(id_of(g))
    }

    async fn join_group(&mut self, group: GroupId, user: UserId) -> Result<GroupInfo> {
        if !self.group_exists(group).await? {
            return Err(StoreError::UnknownGroup(group));
        }
        let Some(name) = self.user_name(user).await? else {
            return Err(StoreError::UnknownUser(user));
        };
        if self.is_member(group, user).await? {
            return Err(StoreError::AlreadyMember { user, group });
        }
        let (Some(g), Some(u)) = (key(group), key(user)) else {
            return Err(StoreError::UnknownGroup(group));
        };
        self.add_member(g, u, name, ROLE_MEMBER).await?;
        self.group_infos(&[g])
            .await?
            .pop()
            .flatten()
            .ok_or(StoreError::UnknownGroup(group))
    }

    async fn groups(&mut self, user: UserId) -> Result<Vec<GroupInfo>> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        self.settle(GROUPS).await?;
        let ids: Vec<i64> = self
            .read_all::<(i64, Option<i64>)>(&self.st.membership_list, (u,))
            .await?
            .into_iter()
            .filter(|(_, joined_after)| joined_after.is_some())
            .map(|(g, _)| g)
            .collect();
        Ok(self
            .group_infos(&ids)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    async fn group_members(&mut self, group: GroupId) -> Result<Vec<UserId>> {
        let ids = self.member_ids(group).await?;
        // A group has members as long as it exists: none means no group
        // (never created, or deleted by its last member leaving).
        if ids.is_empty() {
            return Err(StoreError::UnknownGroup(group));
        }
        Ok(ids.to_vec())
    }

    async fn group(&mut self, group: GroupId) -> Result<Option<GroupInfo>> {
        let Some(g) = key(group) else {
            return Ok(None);
        };
        Ok(self.group_infos(&[g]).await?.pop().flatten())
    }

    /// The head and member rows of group `g` and the `user_groups` row of
    /// `user`, read at once.
    async fn group_state(&mut self, g: i64, user: Option<i64>) -> Result<GroupState> {
        self.settle(GROUPS).await?;
        let st = &self.st;
        let membership = async {
            match user {
                Some(u) => {
                    self.read_one::<MembershipRow>(&st.membership_get, (u, g))
                        .await
                }
                None => Ok(None),
            }
        };
        let (head, rows, membership) = future::try_join3(
            self.read_one::<HeadRow>(&st.group_get, (g,)),
            self.read_all::<MemberRow>(&st.member_list, (g,)),
            membership,
        )
        .await?;
        Ok(GroupState {
            head: head.filter(|(name, _, _)| name.is_some()),
            rows,
            membership,
        })
    }

    /// Deletes every row that makes `u` a member of `g` (their
    /// `group_members` rows among `rows`, and `membership`, their
    /// `user_groups` row); undone by writing them back as read.
    fn drop_member(
        &mut self,
        g: i64,
        u: i64,
        rows: &[MemberRow],
        membership: Option<MembershipRow>,
    ) {
        let st = Arc::clone(&self.st);
        for (joined_after, _, name, role) in rows.iter().filter(|row| row.1 == u) {
            let undo = name.clone().map(|name| {
                let values: Values =
                    Box::new((g, *joined_after, u, name, role.unwrap_or(ROLE_MEMBER)));
                (&st.member_insert, values)
            });
            self.write(
                GROUPS,
                &st.member_delete,
                Box::new((g, *joined_after, u)),
                undo,
            );
        }
        if let Some((joined_after, role)) = membership {
            let undo = joined_after.map(|joined_after| {
                let values: Values = Box::new((u, g, joined_after, role.unwrap_or(ROLE_MEMBER)));
                (&st.membership_insert, values)
            });
            self.write(GROUPS, &st.membership_delete, Box::new((u, g)), undo);
        }
        self.member_lists.remove(&id_of(g));
    }

    /// Makes `heir` (their earliest `group_members` row) the creator of `g`:
    /// the role in both membership tables, and the head's `creator`.
    fn hand_over(&mut self, g: i64, heir: (i64, i64), state: &GroupState) {
        let st = Arc::clone(&self.st);
        let (joined_after, h) = heir;
        let was = state
            .rows
            .iter()
            .find(|row| row.0 == joined_after && row.1 == h)
            .and_then(|row| row.3)
            .unwrap_or(ROLE_MEMBER);
        self.write(
            GROUPS,
            &st.member_role_set,
            Box::new((ROLE_CREATOR, g, joined_after, h)),
            Some((&st.member_role_set, Box::new((was, g, joined_after, h)))),
        );
        self.write(
            GROUPS,
            &st.membership_role_set,
            Box::new((ROLE_CREATOR, h, g)),
            Some((&st.membership_role_set, Box::new((ROLE_MEMBER, h, g)))),
        );
        // Never written on a missing head: that would make one up.
        if let Some((_, _, creator)) = state.head {
            self.write(
                GROUPS,
                &st.group_creator_set,
                Box::new((h, g)),
                Some((&st.group_creator_set, Box::new((creator, g)))),
            );
        }
        self.member_lists.remove(&id_of(g));
    }

    /// Deletes the head of `g`, which nobody belongs to any more, once the
    /// deletes of the last member's rows have landed: a crash in between
    /// leaves a head with no member, which reads as a deleted group.
    async fn delete_group(&mut self, g: i64, head: Option<HeadRow>) -> Result<()> {
        let Some((name, description, creator)) = head else {
            return Ok(());
        };
        self.settle(GROUPS).await?;
        let st = Arc::clone(&self.st);
        let undo: Values = Box::new((
            g,
            name.unwrap_or_default(),
            description.unwrap_or_default(),
            creator,
        ));
        self.write(
            GROUPS,
            &st.group_delete,
            Box::new((g,)),
            Some((&st.group_insert, undo)),
        );
        self.member_lists.remove(&id_of(g));
        Ok(())
    }

    async fn leave_group(&mut self, group: GroupId, user: UserId) -> Result<()> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        let state = self.group_state(g, key(user)).await?;
        let Some(u) = key(user).filter(|&u| state.has(u)) else {
            return Err(if state.exists() {
                StoreError::NotAMember { user, group }
            } else {
                StoreError::UnknownGroup(group)
            });
        };
        let order = Self::member_order(state.rows.clone());
        let was_creator = order.first().is_some_and(|row| row.1 == u);
        let heir = order
            .iter()
            .find(|row| row.1 != u)
            .map(|(joined_after, h, _, _)| (*joined_after, *h));
        self.drop_member(g, u, &state.rows, state.membership);
        match heir {
            Some(heir) if was_creator => self.hand_over(g, heir, &state),
            Some(_) => {}
            None => self.delete_group(g, state.head).await?,
        }
        Ok(())
    }

    async fn remove_member(&mut self, group: GroupId, by: UserId, member: UserId) -> Result<()> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        let state = self.group_state(g, key(member)).await?;
        if !state.exists() {
            return Err(StoreError::UnknownGroup(group));
        }
        let creator = Self::member_order(state.rows.clone())
            .first()
            .map(|row| row.1);
        if creator.is_none() || creator != key(by) {
            return Err(StoreError::NotCreator { user: by, group });
        }
        let Some(m) = key(member).filter(|&m| Some(m) != creator && state.has(m)) else {
            return Err(StoreError::NotAMember {
                user: member,
                group,
            });
        };
        self.drop_member(g, m, &state.rows, state.membership);
        Ok(())
    }

    // ---- messages ----

    async fn append(&mut self, m: &NewMessage) -> Result<StoredMessage> {
        let st = Arc::clone(&self.st);
        let (recipient_id, group_id) = match m.target {
            Target::User(recipient) => {
                if self.user_name(recipient).await?.is_none() {
                    return Err(StoreError::UnknownUser(recipient));
                }
                if m.sender_id != recipient && self.user_name(m.sender_id).await?.is_none() {
                    return Err(StoreError::UnknownUser(m.sender_id));
                }
                (recipient, 0)
            }
            Target::Group(group) => {
                if !self.member_ids(group).await?.contains(&m.sender_id) {
                    return Err(if self.group_exists(group).await? {
                        StoreError::NotAMember {
                            user: m.sender_id,
                            group,
                        }
                    } else {
                        StoreError::UnknownGroup(group)
                    });
                }
                (0, group)
            }
        };
        let s = key(m.sender_id).ok_or(StoreError::UnknownUser(m.sender_id))?;
        let id = self.next_message_id().await?;
        let i = bound(id);
        // Stored as the same 64 bits, so every u64 round-trips.
        let time_ms = m.time_ms as i64;
        let ttl = self.history_ttl;
        if let Some(r) = key(recipient_id).filter(|_| group_id == 0) {
            self.write(
                MESSAGES,
                &st.inbox_insert,
                Box::new((r, i, s, m.sender_name.clone(), time_ms, m.text.clone())),
                Some((&st.inbox_delete, Box::new((r, i)))),
            );
            let (lo, hi) = pair(s, r);
            self.write(
                MESSAGES,
                &st.direct_history_insert,
                Box::new((
                    lo,
                    hi,
                    i,
                    s,
                    m.sender_name.clone(),
                    time_ms,
                    m.text.clone(),
                    ttl,
                )),
                Some((&st.direct_history_delete, Box::new((lo, hi, i)))),
            );
            // A message to oneself is never unread.
            if r != s {
                self.write(
                    MESSAGES,
                    &st.received_insert,
                    Box::new((r, i, s, ttl)),
                    Some((&st.received_delete, Box::new((r, i)))),
                );
            }
        } else {
            let g = key(group_id).ok_or(StoreError::UnknownGroup(group_id))?;
            let day = bucket_of(id);
            self.write(
                MESSAGES,
                &st.log_insert,
                Box::new((g, day, i, s, m.sender_name.clone(), time_ms, m.text.clone())),
                Some((&st.log_delete, Box::new((g, day, i)))),
            );
            self.write(
                MESSAGES,
                &st.group_history_insert,
                Box::new((g, i, s, m.sender_name.clone(), time_ms, m.text.clone(), ttl)),
                Some((&st.group_history_delete, Box::new((g, i)))),
            );
        }
        Ok(StoredMessage {
            id,
            sender_id: m.sender_id,
            sender_name: m.sender_name.clone(),
            recipient_id,
            group_id,
            time_ms: m.time_ms,
            text: m.text.clone(),
        })
    }

    /// Messages of one group above `after`, not sent by `reader`, oldest
    /// first, at most `limit`: day by day from `after`'s day (or the oldest
    /// day the TTL keeps) to today, with slack for writers ahead of this
    /// clock.
    async fn group_backlog(
        &self,
        g: i64,
        after: i64,
        reader: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let now = now_ms().saturating_sub(ID_EPOCH_MS);
        let mut first = day_of_ms(id_ms(id_of(after)));
        if !self.message_ttl.is_zero() {
            let ttl = u64::try_from(self.message_ttl.as_millis()).unwrap_or(u64::MAX);
            first = first.max(day_of_ms(now.saturating_sub(ttl)).saturating_sub(1));
        }
        let last = day_of_ms(now.max(self.clock_ms) + CLOCK_SLACK_MS);
        let page = i32::try_from(limit.saturating_add(32).clamp(64, 5000)).unwrap_or(5000);
        let mut out = Vec::new();
        for day in first..=last {
            let rows = self
                .read_rows::<MessageRow>(
                    &self.st.log_read,
                    (g, day, after),
                    Some(page),
                    limit - out.len(),
                    |row| row.1 != Some(reader),
                )
                .await?;
            out.extend(rows.into_iter().map(|row| message(row, 0, id_of(g))));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn pending(
        &mut self,
        user: UserId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        let cursor = self.cursor_of(user).await?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        let from = cursor.max(bound(after));
        self.settle(MESSAGES | GROUPS).await?;
        let lim = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut out: Vec<StoredMessage> = self
            .read_rows::<MessageRow>(&self.st.inbox_read, (u, from, lim), None, limit, |_| true)
            .await?
            .into_iter()
            .map(|row| message(row, user, 0))
            .collect();
        let groups: Vec<(i64, Option<i64>)> = self.read_all(&self.st.membership_list, (u,)).await?;
        let this = &*self;
        // A row without `joined_after` is no membership (see "Leaving and
        // deleting groups").
        let backlogs: Vec<Vec<StoredMessage>> = stream::iter(groups)
            .filter_map(|(g, joined_after)| future::ready(joined_after.map(|j| (g, j))))
            .map(|(g, joined_after)| this.group_backlog(g, from.max(joined_after), u, limit))
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        out.extend(backlogs.into_iter().flatten());
        out.sort_unstable_by_key(|m| m.id);
        out.truncate(limit);
        if let Some(newest) = out.last() {
            self.observe(newest.id);
        }
        Ok(out)
    }

    async fn ack(&mut self, user: UserId, up_to: MessageId) -> Result<()> {
        let cursor = self.cursor_of(user).await?;
        let up_to = bound(up_to);
        if up_to > cursor {
            self.cursors.insert(user, up_to);
            self.observe(id_of(up_to));
        }
        Ok(())
    }

    // ---- history and read positions ----

    /// Keys of `user` and `peer` for their direct conversation: `UnknownUser`
    /// if either does not exist (`user` checked first).
    async fn direct_keys(&mut self, user: UserId, peer: UserId) -> Result<(i64, i64)> {
        for id in [user, peer] {
            if self.user_name(id).await?.is_none() {
                return Err(StoreError::UnknownUser(id));
            }
        }
        match (key(user), key(peer)) {
            (Some(u), Some(p)) => Ok((u, p)),
            _ => Err(StoreError::UnknownUser(peer)),
        }
    }

    /// Keys of `group` and `user` and the id `user` joined after, from their
    /// `user_groups` row (the one `pending` reads too). Without one:
    /// `UnknownGroup` if the group does not exist, else `NotAMember`.
    async fn membership_keys(&mut self, group: GroupId, user: UserId) -> Result<(i64, i64, i64)> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        if let Some(u) = key(user) {
            self.settle(GROUPS).await?;
            let row = self
                .read_one::<MembershipRow>(&self.st.membership_get, (u, g))
                .await?;
            if let Some((Some(joined_after), _)) = row {
                return Ok((g, u, joined_after));
            }
        }
        Err(if self.group_exists(group).await? {
            StoreError::NotAMember { user, group }
        } else {
            StoreError::UnknownGroup(group)
        })
    }

    /// One range read of the conversation's history partition (direct: the
    /// pair's `direct_history`, with the peer's read mark read alongside;
    /// group: `group_history` above the user's `joined_after`).
    async fn history(
        &mut self,
        user: UserId,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let before = before.map_or(i64::MAX, bound);
        let (want, lim, page) = page_request(limit);
        let out = match conversation {
            Conversation::Direct(peer) => {
                let (u, p) = self.direct_keys(user, peer).await?;
                let (lo, hi) = pair(u, p);
                self.settle(MESSAGES | READS).await?;
                let st = &self.st;
                let (rows, mark) = future::try_join(
                    self.read_rows::<MessageRow>(
                        &st.direct_history_page,
                        (lo, hi, before, lim),
                        Some(page),
                        want,
                        |_| true,
                    ),
                    self.read_one::<(Option<i64>,)>(&st.read_mark_get, (p, KIND_DIRECT, u)),
                )
                .await?;
                let messages = rows
                    .into_iter()
                    .map(|row| {
                        let recipient = if row.1 == Some(u) { peer } else { user };
                        message(row, recipient, 0)
                    })
                    .collect();
                let read_up_to = mark.and_then(|(up_to,)| up_to).map_or(0, id_of);
                page_of(messages, limit, read_up_to)
            }
            Conversation::Group(group) => {
                let (g, _, joined_after) = self.membership_keys(group, user).await?;
                let mut messages = Vec::new();
                if before > joined_after.saturating_add(1) {
                    self.settle(MESSAGES).await?;
                    messages = self
                        .read_rows::<MessageRow>(
                            &self.st.group_history_page,
                            (g, joined_after, before, lim),
                            Some(page),
                            want,
                            |_| true,
                        )
                        .await?
                        .into_iter()
                        .map(|row| message(row, 0, group))
                        .collect();
                }
                page_of(messages, limit, 0)
            }
        };
        if let Some(newest) = out.messages.first() {
            self.observe(newest.id);
        }
        Ok(out)
    }

    /// Reads the conversation's newest id and `user`'s read position at
    /// once (for a group also the copy in `group_reads`), then writes the
    /// position (both copies for a group) if it moves. A group's
    /// `group_reads` copy found behind `read_marks` (a crash between the
    /// two writes) is brought up to the position even when the position
    /// does not move.
    async fn mark_read(
        &mut self,
        user: UserId,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<bool> {
        let st = Arc::clone(&self.st);
        let (kind, u, target, group_copy) = match conversation {
            Conversation::Direct(peer) => {
                let (u, p) = self.direct_keys(user, peer).await?;
                (KIND_DIRECT, u, p, None)
            }
            Conversation::Group(group) => {
                let (g, u, _) = self.membership_keys(group, user).await?;
                (KIND_GROUP, u, g, Some(g))
            }
        };
        self.settle(MESSAGES | READS).await?;
        let newest = async {
            match group_copy {
                Some(g) => {
                    self.read_one::<(i64,)>(&st.group_history_newest, (g,))
                        .await
                }
                None => {
                    let (lo, hi) = pair(u, target);
                    self.read_one::<(i64,)>(&st.direct_history_newest, (lo, hi))
                        .await
                }
            }
        };
        let copy = async {
            match group_copy {
                Some(g) => {
                    self.read_one::<(Option<i64>,)>(&st.group_read_get, (g, u))
                        .await
                }
                None => Ok(None),
            }
        };
        let (newest, mark, copy) = future::try_join3(
            newest,
            self.read_one::<(Option<i64>,)>(&st.read_mark_get, (u, kind, target)),
            copy,
        )
        .await?;
        let newest = newest.map_or(0, |(id,)| id_of(id));
        if up_to > newest {
            return Err(StoreError::BeyondNewest { up_to, newest });
        }
        let to = bound(up_to);
        let was = mark.and_then(|(v,)| v);
        let position = to.max(was.unwrap_or(0));
        if let Some(g) = group_copy {
            let copied = copy.and_then(|(v,)| v);
            if position > copied.unwrap_or(0) {
                let (undo_statement, undo): (&PreparedStatement, Values) = match copied {
                    Some(copied) => (&st.group_read_set, Box::new((copied, g, u))),
                    None => (&st.group_read_delete, Box::new((g, u))),
                };
                self.write(
                    READS,
                    &st.group_read_set,
                    Box::new((position, g, u)),
                    Some((undo_statement, undo)),
                );
            }
        }
        if to <= was.unwrap_or(0) {
            return Ok(false);
        }
        let (undo_statement, undo): (&PreparedStatement, Values) = match was {
            Some(was) => (&st.read_mark_set, Box::new((was, u, kind, target))),
            None => (&st.read_mark_delete, Box::new((u, kind, target))),
        };
        self.write(
            READS,
            &st.read_mark_set,
            Box::new((to, u, kind, target)),
            Some((undo_statement, undo)),
        );
        Ok(true)
    }

    /// The head, the member list and the `group_reads` partition of the
    /// group, read at once.
    async fn readers(
        &mut self,
        user: UserId,
        group: GroupId,
        message: MessageId,
    ) -> Result<(u64, u64)> {
        let g = key(group).ok_or(StoreError::UnknownGroup(group))?;
        self.settle(GROUPS | READS).await?;
        let st = &self.st;
        let (head, rows, reads) = future::try_join3(
            self.read_one::<HeadRow>(&st.group_get, (g,)),
            self.read_all::<MemberRow>(&st.member_list, (g,)),
            self.read_all::<(i64, Option<i64>)>(&st.group_read_list, (g,)),
        )
        .await?;
        let state = GroupState {
            head: head.filter(|(name, _, _)| name.is_some()),
            rows,
            membership: None,
        };
        if !state.exists() {
            return Err(StoreError::UnknownGroup(group));
        }
        let members = Self::member_order(state.rows);
        if !key(user).is_some_and(|u| members.iter().any(|row| row.1 == u)) {
            return Err(StoreError::NotAMember { user, group });
        }
        let positions: HashMap<i64, i64> = reads
            .into_iter()
            .filter_map(|(member, up_to)| up_to.map(|up_to| (member, up_to)))
            .collect();
        let message = bound(message);
        let readers = members
            .iter()
            .filter(|row| positions.get(&row.1).copied().unwrap_or(0) >= message)
            .count();
        Ok((readers as u64, members.len() as u64))
    }

    /// `user`'s read marks, the newest `UNREAD_CAP + 1` rows of their
    /// `direct_received` and their memberships at once; then, for every
    /// group at once, the group's history above the read position (or the
    /// join), at most [`UNREAD_SCAN`] rows.
    async fn unread(&mut self, user: UserId) -> Result<Vec<Unread>> {
        if self.user_name(user).await?.is_none() {
            return Err(StoreError::UnknownUser(user));
        }
        let u = key(user).ok_or(StoreError::UnknownUser(user))?;
        self.settle(MESSAGES | READS | GROUPS).await?;
        let st = &self.st;
        let cap = usize::try_from(UNREAD_CAP).unwrap_or(usize::MAX);
        let newest = i32::try_from(cap + 1).unwrap_or(i32::MAX);
        let (marks, received, memberships) = future::try_join3(
            self.read_all::<(i32, i64, Option<i64>)>(&st.read_mark_list, (u,)),
            self.read_rows::<(i64, Option<i64>)>(
                &st.received_newest,
                (u, newest),
                Some(newest),
                cap + 1,
                |_| true,
            ),
            self.read_all::<(i64, Option<i64>)>(&st.membership_list, (u,)),
        )
        .await?;
        let marks: HashMap<(i32, i64), i64> = marks
            .into_iter()
            .filter_map(|(kind, target, up_to)| up_to.map(|up_to| ((kind, target), up_to)))
            .collect();
        let mut out: Vec<Unread> = direct_unread(u, &received, &marks)
            .into_iter()
            .map(|(peer, count)| Unread {
                conversation: Conversation::Direct(id_of(peer)),
                count,
            })
            .collect();
        // A row without `joined_after` is no membership (see "Leaving and
        // deleting groups").
        let groups: Vec<(i64, i64)> = memberships
            .into_iter()
            .filter_map(|(g, joined_after)| {
                let mark = marks.get(&(KIND_GROUP, g)).copied().unwrap_or(0);
                joined_after.map(|joined_after| (g, joined_after.max(mark)))
            })
            .collect();
        let page = i32::try_from(cap + 1).unwrap_or(i32::MAX);
        let this = &*self;
        let counts: Vec<(i64, usize)> = stream::iter(groups)
            .map(|(g, from)| async move {
                let unread = this
                    .read_rows::<(i64, Option<i64>)>(
                        &this.st.group_history_senders,
                        (g, from, UNREAD_SCAN),
                        Some(page),
                        cap,
                        |row| row.1 != Some(u),
                    )
                    .await?;
                Ok::<_, StoreError>((g, unread.len()))
            })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        out.extend(
            counts
                .into_iter()
                .filter(|&(_, count)| count > 0)
                .map(|(g, count)| Unread {
                    conversation: Conversation::Group(id_of(g)),
                    count: (count as u64).min(UNREAD_CAP),
                }),
        );
        out.sort_unstable_by_key(|unread| unread.conversation);
        Ok(out)
    }
}

/// Runs one schema statement (not prepared: it runs once).
async fn ddl(session: &Session, statement: String) -> Result<()> {
    session
        .query_unpaged(statement.as_str(), ())
        .await
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("scylla: {statement}: {e}")))
}

/// Sets `default_time_to_live` of the message tables to `ttl` (rounded up
/// to whole seconds; zero keeps messages forever) where it differs, so that
/// an unchanged TTL is not a schema change. Applies to messages written from
/// then on.
async fn set_message_ttl(session: &Session, keyspace: &str, ttl: Duration) -> Result<()> {
    let seconds = if ttl.is_zero() {
        0
    } else {
        u64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TTL_SECS)
    };
    for table in ["inbox", "group_log"] {
        let failed = |e: &dyn Display| {
            StoreError::Backend(format!("scylla: reading the TTL of {table}: {e}"))
        };
        let current = session
            .query_unpaged(
                "SELECT default_time_to_live FROM system_schema.tables \
                 WHERE keyspace_name = ? AND table_name = ?",
                (keyspace.to_ascii_lowercase(), table),
            )
            .await
            .map_err(|e| failed(&e))?
            .into_rows_result()
            .map_err(|e| failed(&e))?
            .maybe_first_row::<(Option<i32>,)>()
            .map_err(|e| failed(&e))?
            .and_then(|(t,)| t);
        if current.and_then(|t| u64::try_from(t).ok()) != Some(seconds) {
            ddl(
                session,
                format!("ALTER TABLE {table} WITH default_time_to_live = {seconds}"),
            )
            .await?;
        }
    }
    Ok(())
}

impl Store for ScyllaStore {
    /// One lightweight transaction on the name; `NameTaken` if another user
    /// holds it.
    fn create_user(&mut self, name: &str, password_hash: &str) -> Result<UserId> {
        self.runtime
            .block_on(self.inner.create_user(name, password_hash))
    }

    fn user(&mut self, id: UserId) -> Result<Option<UserRecord>> {
        self.runtime.block_on(self.inner.user(id))
    }

    fn claim_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<()> {
        self.runtime
            .block_on(self.inner.claim_session(user, node, epoch))
    }

    fn session_node(&mut self, user: UserId) -> Result<Option<String>> {
        self.runtime.block_on(self.inner.session_node(user))
    }

    /// The lease row lives `ttl` rounded up to whole seconds; liveness is
    /// decided by the end it records, to the millisecond.
    fn renew_lease(&mut self, node: &str, ttl: Duration) -> Result<()> {
        let _guard = self.runtime.enter();
        self.inner.renew_lease(node, ttl);
        Ok(())
    }

    fn end_lease(&mut self, node: &str) -> Result<()> {
        let _guard = self.runtime.enter();
        self.inner.end_lease(node);
        Ok(())
    }

    fn expired_nodes(&mut self) -> Result<Vec<String>> {
        self.runtime.block_on(self.inner.expired_nodes())
    }

    fn release_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<bool> {
        self.runtime
            .block_on(self.inner.release_session(user, node, epoch))
    }

    /// The users come back sorted by id.
    fn release_node(&mut self, node: &str) -> Result<Vec<UserId>> {
        self.runtime.block_on(self.inner.release_node(node))
    }

    /// `add_friend(u, u)` fails with `AlreadyFriends(u, u)` (after
    /// `UnknownUser` if `u` does not exist), as on SQLite.
    fn add_friend(&mut self, user: UserId, friend: UserId) -> Result<Contact> {
        self.runtime.block_on(self.inner.add_friend(user, friend))
    }

    /// `NotFriends` only if neither direction exists; a friendship a crash
    /// left in one direction is ended too.
    fn remove_friend(&mut self, user: UserId, friend: UserId) -> Result<()> {
        self.runtime
            .block_on(self.inner.remove_friend(user, friend))
    }

    /// A point read on `user_names`; a name reserved by a registration that
    /// has not completed (or never will) finds nobody.
    fn find_user(&mut self, name: &str) -> Result<Option<Contact>> {
        self.runtime.block_on(self.inner.find_user(name))
    }

    /// `UnknownUser` if `user` does not exist.
    fn friends(&mut self, user: UserId) -> Result<Vec<Contact>> {
        self.runtime.block_on(self.inner.friends(user))
    }

    fn create_group(&mut self, creator: UserId, name: &str, description: &str) -> Result<GroupId> {
        self.runtime
            .block_on(self.inner.create_group(creator, name, description))
    }

    /// Checks in this order: `UnknownGroup`, `UnknownUser`, `AlreadyMember`.
    /// Joining order is the order of the joiners' message-id clocks.
    fn join_group(&mut self, group: GroupId, user: UserId) -> Result<GroupInfo> {
        self.runtime.block_on(self.inner.join_group(group, user))
    }

    /// Checks in this order: `UnknownGroup`, `NotAMember`. A user is a
    /// member by either of their membership rows, and leaving deletes both,
    /// so a leave that a crash cut short can be done again. The last member
    /// leaving deletes the group's head once their rows are gone (see
    /// "Leaving and deleting groups").
    fn leave_group(&mut self, group: GroupId, user: UserId) -> Result<()> {
        self.runtime.block_on(self.inner.leave_group(group, user))
    }

    /// Checks in this order: `UnknownGroup`, `NotCreator`, `NotAMember`
    /// (also for `member == by`).
    fn remove_member(&mut self, group: GroupId, by: UserId, member: UserId) -> Result<()> {
        self.runtime
            .block_on(self.inner.remove_member(group, by, member))
    }

    fn group(&mut self, group: GroupId) -> Result<Option<GroupInfo>> {
        self.runtime.block_on(self.inner.group(group))
    }

    /// `UnknownUser` if `user` does not exist.
    fn groups(&mut self, user: UserId) -> Result<Vec<GroupInfo>> {
        self.runtime.block_on(self.inner.groups(user))
    }

    /// In join order, creator first; `UnknownGroup` if there is no such group.
    /// The list read by an `append` to the group earlier in the batch is
    /// reused.
    fn group_members(&mut self, group: GroupId) -> Result<Vec<UserId>> {
        self.runtime.block_on(self.inner.group_members(group))
    }

    /// A direct message also needs an existing sender (`UnknownUser`, checked
    /// after the recipient).
    fn append(&mut self, message: &NewMessage) -> Result<StoredMessage> {
        self.runtime.block_on(self.inner.append(message))
    }

    /// `UnknownUser` if `user` does not exist.
    fn pending(
        &mut self,
        user: UserId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<StoredMessage>> {
        self.runtime
            .block_on(self.inner.pending(user, after, limit))
    }

    /// One range read on the conversation's partition: direct, the pair's
    /// `direct_history` (with the peer's read mark, read alongside); group,
    /// `group_history` above the user's `joined_after`, after a point read
    /// of their membership. `UnknownUser` for `user`, then the peer.
    fn history(
        &mut self,
        user: UserId,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage> {
        self.runtime
            .block_on(self.inner.history(user, conversation, before, limit))
    }

    /// The newest message is the newest the history tables hold (so after
    /// the history retention a conversation whose messages all expired has
    /// none, and only `up_to` 0 is accepted). A group's newest is the
    /// group's, not only what `user` has seen since joining.
    fn mark_read(
        &mut self,
        user: UserId,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<bool> {
        self.runtime
            .block_on(self.inner.mark_read(user, conversation, up_to))
    }

    /// Members are those of the group's member list (as for
    /// `group_members`); a member who never marked the group has read
    /// position 0.
    fn readers(&mut self, user: UserId, group: GroupId, message: MessageId) -> Result<(u64, u64)> {
        self.runtime
            .block_on(self.inner.readers(user, group, message))
    }

    /// Sorted by conversation (direct ones first, by peer, then groups).
    /// `UnknownUser` if `user` does not exist. A group's count is taken
    /// among its newest messages above the read position, at most
    /// [`UNREAD_SCAN`] of them: one who sent thousands of messages to a
    /// group after their read position may see a smaller count there.
    fn unread(&mut self, user: UserId) -> Result<Vec<Unread>> {
        self.runtime.block_on(self.inner.unread(user))
    }

    /// `UnknownUser` if `user` does not exist. The new cursor is written at
    /// commit.
    fn ack(&mut self, user: UserId, up_to: MessageId) -> Result<()> {
        self.runtime.block_on(self.inner.ack(user, up_to))
    }

    /// `UnknownUser` if `user` does not exist.
    fn cursor(&mut self, user: UserId) -> Result<MessageId> {
        self.runtime.block_on(self.inner.cursor_of(user)).map(id_of)
    }

    /// Not tracked on ScyllaDB: counting needs a scan of every user.
    fn pending_total(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// A no-op returning 0: messages expire by the tables' TTL.
    fn compact(&mut self, _limit: usize) -> Result<u64> {
        Ok(0)
    }

    /// Waits for every write of the batch and writes the moved cursors. On
    /// failure, what landed stays until the caller's `rollback` undoes it.
    fn commit(&mut self) -> Result<()> {
        self.runtime.block_on(self.inner.commit())
    }

    /// Drops the batch's cursor moves and undoes its writes (see the module
    /// documentation for what cannot be undone).
    fn rollback(&mut self) {
        self.runtime.block_on(self.inner.rollback());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_order_by_time_then_writer_then_counter() {
        let a = message_id(1_000, 5, COUNTER_LIMIT - 1);
        let b = message_id(1_001, 0, 0);
        assert!(a < b);
        assert!(message_id(1_000, 4, 9) < message_id(1_000, 5, 0));
        assert_eq!(id_ms(a), 1_000);
        // Good until 2093: 2^41 ms after the epoch is still a positive i64.
        let far = message_id((1 << 41) - 1, TAGS - 1, COUNTER_LIMIT - 1);
        assert!(i64::try_from(far).is_ok());
    }

    #[test]
    fn buckets_are_days_of_the_id_clock() {
        assert_eq!(bucket_of(message_id(0, 1, 1)), 0);
        assert_eq!(bucket_of(message_id(DAY_MS - 1, 1, 1)), 0);
        assert_eq!(bucket_of(message_id(DAY_MS, 0, 0)), 1);
        assert_eq!(bucket_of(message_id(10 * DAY_MS + 5, 3, 3)), 10);
    }

    #[test]
    fn consistency_names_parse_and_pick_their_serial_level() {
        assert_eq!(parse_consistency("one").unwrap(), Consistency::One);
        assert_eq!(
            parse_consistency(" LOCAL_QUORUM ").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(
            parse_consistency("local-one").unwrap(),
            Consistency::LocalOne
        );
        assert_eq!(
            parse_consistency("each_quorum").unwrap(),
            Consistency::EachQuorum
        );
        let e = parse_consistency("serial").unwrap_err();
        assert!(matches!(&e, StoreError::Backend(m) if m.contains("unknown consistency")));
        assert_eq!(
            serial_consistency(Consistency::LocalQuorum),
            SerialConsistency::LocalSerial
        );
        assert_eq!(
            serial_consistency(Consistency::Quorum),
            SerialConsistency::Serial
        );
    }

    #[test]
    fn replication_specs_become_strategies() {
        assert_eq!(
            replication_map("3").unwrap(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        assert_eq!(
            replication_map("dc1:3, dc-2:2").unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc-2': 2}"
        );
        for bad in ["0", "x", "", "dc1:0", "dc1", "dc'1:3", "dc1:3,"] {
            assert!(replication_map(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        assert!(check_keyspace("chat").is_ok());
        assert!(check_keyspace("chat_test_0a1b").is_ok());
        for bad in ["", "1chat", "chat-x", "chat;DROP", &"k".repeat(49)] {
            assert!(check_keyspace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_order_puts_one_creator_first_and_drops_leftovers() {
        let row = |joined_after: i64, user: i64, name: Option<&str>, role: i32| {
            (joined_after, user, name.map(str::to_owned), Some(role))
        };
        let ids = |rows: Vec<MemberRow>| -> Vec<(i64, Option<i32>)> {
            rows.into_iter().map(|r| (r.1, r.3)).collect()
        };
        // The creator joined after a member with a lagging clock: creator
        // first, then joining order; a row without a name (a role update
        // that landed after its member left) and a second row of one member
        // are dropped.
        let rows = vec![
            row(5, 7, Some("g"), ROLE_MEMBER),
            row(6, 9, None, ROLE_CREATOR),
            row(10, 3, Some("c"), ROLE_CREATOR),
            row(12, 7, Some("g"), ROLE_MEMBER),
            row(20, 4, Some("m"), ROLE_MEMBER),
        ];
        assert_eq!(
            ids(Inner::member_order(rows)),
            [
                (3, Some(ROLE_CREATOR)),
                (7, Some(ROLE_MEMBER)),
                (4, Some(ROLE_MEMBER))
            ]
        );
        // No row says creator (a handover cut short): the earliest member.
        let rows = vec![
            row(5, 7, Some("g"), ROLE_MEMBER),
            row(20, 4, Some("m"), ROLE_MEMBER),
        ];
        assert_eq!(
            ids(Inner::member_order(rows)),
            [(7, Some(ROLE_CREATOR)), (4, Some(ROLE_MEMBER))]
        );
        // Two rows say creator (the heir's role landed, the leaver's delete
        // did not): only the earliest is.
        let rows = vec![
            row(5, 7, Some("g"), ROLE_CREATOR),
            row(10, 3, Some("c"), ROLE_CREATOR),
        ];
        assert_eq!(
            ids(Inner::member_order(rows)),
            [(7, Some(ROLE_CREATOR)), (3, Some(ROLE_MEMBER))]
        );
        assert!(Inner::member_order(vec![row(1, 2, None, ROLE_MEMBER)]).is_empty());
    }

    #[test]
    fn history_rows_live_the_retention_in_whole_seconds() {
        assert_eq!(history_ttl(None), 0);
        assert_eq!(history_ttl(Some(Duration::from_millis(1500))), 2);
        assert_eq!(history_ttl(Some(Duration::ZERO)), 1);
        assert_eq!(
            history_ttl(Some(Duration::from_secs(30 * 86_400))),
            2_592_000
        );
        assert_eq!(
            history_ttl(Some(Duration::from_secs(u64::MAX))),
            MAX_TTL_SECS as i32
        );
    }

    #[test]
    fn both_directions_of_a_pair_share_a_partition() {
        assert_eq!(pair(7, 3), (3, 7));
        assert_eq!(pair(3, 7), (3, 7));
        assert_eq!(pair(5, 5), (5, 5));
    }

    #[test]
    fn a_page_reads_one_more_row_to_tell_whether_older_ones_exist() {
        assert_eq!(page_request(0), (1, 1, 1));
        assert_eq!(page_request(50), (51, 51, 51));
        assert_eq!(
            page_request(usize::MAX),
            (usize::MAX, i32::MAX, HISTORY_PAGE_ROWS as i32)
        );
        let stored = |id| StoredMessage {
            id,
            sender_id: 1,
            sender_name: "a".into(),
            recipient_id: 2,
            group_id: 0,
            time_ms: 0,
            text: String::new(),
        };
        let page = page_of(vec![stored(9), stored(8), stored(7)], 2, 4);
        assert_eq!(page.messages, [stored(9), stored(8)]);
        assert!(page.more);
        assert_eq!(page.read_up_to, 4);
        let page = page_of(vec![stored(9), stored(8)], 2, 0);
        assert_eq!(page.messages.len(), 2);
        assert!(!page.more);
        assert!(!page_of(Vec::new(), 0, 0).more);
        assert!(page_of(vec![stored(1)], 0, 0).more);
    }

    #[test]
    fn direct_unread_counts_others_above_the_read_mark_up_to_the_cap() {
        let me = 1;
        // Newest first: from 2 (read up to 20), from 3 (never read), from
        // me (to myself: never counted).
        let received = [
            (40, Some(2)),
            (35, Some(me)),
            (30, Some(3)),
            (25, Some(2)),
            (20, Some(2)),
            (10, Some(3)),
            (5, None),
        ];
        let marks = HashMap::from([((KIND_DIRECT, 2), 20), ((KIND_GROUP, 3), 1000)]);
        let counts = direct_unread(me, &received, &marks);
        assert_eq!(counts, BTreeMap::from([(2, 2), (3, 2)]));
        let flood: Vec<(i64, Option<i64>)> = (1..=1000).rev().map(|id| (id, Some(4))).collect();
        let counts = direct_unread(me, &flood, &HashMap::new());
        assert_eq!(counts, BTreeMap::from([(4, UNREAD_CAP)]));
        assert!(
            direct_unread(
                me,
                &received,
                &HashMap::from([((KIND_DIRECT, 2), 40), ((KIND_DIRECT, 3), 30)])
            )
            .is_empty()
        );
    }

    #[test]
    fn every_statement_binds_its_values() {
        for cql in STATEMENTS {
            assert!(!cql.contains('\''), "literal in {cql}");
            assert!(!cql.to_ascii_uppercase().contains("ALLOW FILTERING"));
        }
    }
}
