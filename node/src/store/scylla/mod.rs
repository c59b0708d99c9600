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
//!
//! # Files
//!
//! This file holds the options, the constants, the handle ([`ScyllaStore`],
//! its state `Inner`) and the [`Store`] implementation, each call blocking
//! on one `Inner` method. The methods live by concern: `statements.rs` (the
//! CQL, prepared once), `setup.rs` (connecting, the keyspace, TTLs),
//! `ids.rs` (id blocks, message ids), `batch.rs` (reads, lightweight
//! transactions, writes in flight, commit and rollback), `users.rs` (users,
//! names, friends), `leases.rs` (session claims and node leases),
//! `groups.rs` (groups and memberships), `history.rs` (messages, pending,
//! history, read marks, unread counts).

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

mod batch;
mod groups;
mod history;
mod ids;
mod leases;
mod setup;
mod statements;
mod users;

pub use self::ids::{bucket_of, message_id};
pub use self::setup::{parse_consistency, replication_map, serial_consistency};
pub use self::statements::STATEMENTS;
use self::{history::*, ids::*, setup::*, statements::*};

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

fn fail(statement: &PreparedStatement, e: impl Display) -> StoreError {
    StoreError::Backend(format!("scylla: {}: {e}", statement.get_statement()))
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
