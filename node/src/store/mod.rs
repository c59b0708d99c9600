//! Durable state of the chat: users, friendships, groups, the message logs and
//! each user's delivery cursor, behind one [`Store`] trait that every backend
//! implements and one contract suite (`tests/store_contract.rs`) checks.
//!
//! Data model:
//! - a direct message is appended to the log of its recipient; a group message
//!   is appended once, to the group's log;
//! - message ids come from one increasing sequence, so they order every
//!   message a user can receive;
//! - each user has a delivery cursor: the highest message id they have
//!   acknowledged. What they have not received yet is every direct message to
//!   them and every group message (of a group they belong to, sent after they
//!   joined, by someone else) with an id above the cursor.
//!
//! Sessions and leases: a user has at most one session in the whole cluster,
//! a claim recording the node that serves it and a session epoch. Each node
//! holds a lease it renews every second; a claim counts (the user is online,
//! a second login is refused) only while its node's lease is live, and a
//! claim whose node's lease is over may be taken over by a login elsewhere.
//! Lease times are the backend's wall clock.
//!
//! Writes are grouped: calls after the last [`Store::commit`] form one
//! transaction, so the writer thread commits a whole batch of requests at once
//! (group commit). Nothing is acknowledged to a client before `commit` returns.

pub mod scylla;
pub mod sqlite;

pub use crate::model::{
    Contact, Conversation, GroupId, GroupInfo, HistoryPage, Member, MessageId, NewMessage, Role,
    StoredMessage, Target, UNREAD_CAP, Unread, UserId, UserRecord,
};

/// The first groups of `groups` (in their order) whose members add up to
/// at most `max_members`, and always the first one. `groups` is read only
/// as far as the page goes; its first error is returned.
pub fn page_of_groups(
    groups: impl IntoIterator<Item = Result<GroupInfo>>,
    max_members: usize,
) -> Result<Vec<GroupInfo>> {
    let mut page = Vec::new();
    let mut members = 0;
    for g in groups {
        let g = g?;
        members += g.members.len();
        if !page.is_empty() && members > max_members {
            break;
        }
        page.push(g);
    }
    Ok(page)
}

/// Failures of store operations: domain refusals the client is told about,
/// and `Backend` for everything that went wrong underneath.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("user name is already taken")]
    NameTaken,
    #[error("no user with id {0}")]
    UnknownUser(UserId),
    #[error("no group with id {0}")]
    UnknownGroup(GroupId),
    #[error("user {user} is not a member of group {group}")]
    NotAMember { user: UserId, group: GroupId },
    #[error("user {user} is already a member of group {group}")]
    AlreadyMember { user: UserId, group: GroupId },
    #[error("users {0} and {1} are already friends")]
    AlreadyFriends(UserId, UserId),
    #[error("users {0} and {1} are not friends")]
    NotFriends(UserId, UserId),
    #[error("only the creator of group {group} may do that, user {user} is not")]
    NotCreator { user: UserId, group: GroupId },
    #[error("user {0} is already online")]
    AlreadyOnline(UserId),
    #[error(
        "user {user} has {cap} undelivered messages, the most one user may have waiting; try again once they have read some"
    )]
    MailboxFull { user: UserId, cap: u64 },
    #[error("{what}: the limit is {limit}")]
    LimitReached { what: String, limit: u64 },
    #[error("message {up_to} is above the newest message of this conversation ({newest})")]
    BeyondNewest { up_to: MessageId, newest: MessageId },
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One backend of the chat's durable state. Calls are blocking: the node runs
/// them on its store thread, never on an executor.
///
/// Writes made since the last `commit` form one transaction. A domain error
/// (`NameTaken`, `UnknownUser`, ...) leaves the transaction usable and has
/// written nothing; after a `Backend` error the caller calls `rollback`.
pub trait Store: Send + 'static {
    /// Creates a user with a fresh id (never reused). Names are unique.
    fn create_user(&mut self, name: &str, password_hash: &str) -> Result<UserId>;

    /// The user with this id, if any.
    fn user(&mut self, id: UserId) -> Result<Option<UserRecord>>;

    /// Claims the one session `user` may have, for `node` and `epoch`.
    /// `AlreadyOnline` while another claim holds on a node whose lease is
    /// live; a claim whose node's lease is over is taken over. `UnknownUser`
    /// for a bad id.
    fn claim_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<()>;

    /// The node that serves `user`: the holder of their claim, while its lease
    /// is live.
    fn session_node(&mut self, user: UserId) -> Result<Option<String>>;

    /// Starts or extends the lease of `node` to `ttl` from now.
    fn renew_lease(&mut self, node: &str, ttl: std::time::Duration) -> Result<()>;

    /// Ends the lease of `node` now (a clean stop).
    fn end_lease(&mut self, node: &str) -> Result<()>;

    /// Nodes that still hold claims although their lease is over (crashed or
    /// cut off), sorted; [`Store::release_node`] frees what they hold.
    fn expired_nodes(&mut self) -> Result<Vec<String>>;

    /// Releases the claim of `user` if `node` and `epoch` still hold it;
    /// returns whether it did.
    fn release_session(&mut self, user: UserId, node: &str, epoch: u64) -> Result<bool>;

    /// Releases every claim held by `node` (start-up after a crash, a node
    /// whose lease expired) and returns the users it held, sorted by id.
    /// Claims taken over by other nodes are not touched.
    fn release_node(&mut self, node: &str) -> Result<Vec<UserId>>;

    /// Makes `user` and `friend` friends of each other and returns `friend`.
    /// `UnknownUser` if either does not exist, `AlreadyFriends` if they are.
    fn add_friend(&mut self, user: UserId, friend: UserId) -> Result<Contact>;

    /// Ends the friendship of `user` and `friend`, both ways. `NotFriends`
    /// if they are not friends (whether or not the users exist).
    fn remove_friend(&mut self, user: UserId, friend: UserId) -> Result<()>;

    /// The user whose stored name is exactly `name`, with their online
    /// state, if any. A point read on the name's unique index.
    fn find_user(&mut self, name: &str) -> Result<Option<Contact>>;

    /// The friends of `user`, by id, with their online state.
    fn friends(&mut self, user: UserId) -> Result<Vec<Contact>>;

    /// Creates a group whose creator is its first member (`Role::Creator`).
    fn create_group(&mut self, creator: UserId, name: &str, description: &str) -> Result<GroupId>;

    /// Adds `user` to `group` as `Role::Normal` and returns the group. The new
    /// member receives only messages sent after joining.
    fn join_group(&mut self, group: GroupId, user: UserId) -> Result<GroupInfo>;

    /// `user` leaves `group`. When the creator leaves, the longest-standing
    /// remaining member becomes the creator; a group left with no members is
    /// deleted (its id is never reused). `UnknownGroup` if there is no such
    /// group, `NotAMember` if `user` is not in it.
    fn leave_group(&mut self, group: GroupId, user: UserId) -> Result<()>;

    /// `by` removes `member` from `group`. `UnknownGroup` if there is no
    /// such group, `NotCreator` if `by` is not its creator, `NotAMember` if
    /// `member` is not in it. The creator can not be removed this way (the
    /// caller refuses `member == by`).
    fn remove_member(&mut self, group: GroupId, by: UserId, member: UserId) -> Result<()>;

    /// `group` with its members (creator first, then by joining order) and
    /// their online state; `None` if there is no such group.
    fn group(&mut self, group: GroupId) -> Result<Option<GroupInfo>>;

    /// The groups `user` belongs to, by id, with their members.
    fn groups(&mut self, user: UserId) -> Result<Vec<GroupInfo>>;

    /// A page of the groups `user` belongs to: those with ids above
    /// `after`, by id, each with its members, as many as fit in
    /// `max_members` members in all (at least one group, whatever its
    /// size). The default lists every group (`groups`) and keeps the page; a
    /// backend that can read groups by id range overrides it.
    fn groups_page(
        &mut self,
        user: UserId,
        after: GroupId,
        max_members: usize,
    ) -> Result<Vec<GroupInfo>> {
        let groups = self.groups(user)?;
        page_of_groups(
            groups.into_iter().filter(|g| g.id > after).map(Ok),
            max_members,
        )
    }

    /// Ids of every member of `group`.
    fn group_members(&mut self, group: GroupId) -> Result<Vec<UserId>>;

    /// Stores a message under the next message id. A direct message needs an
    /// existing recipient; a group message a sender who is a member.
    fn append(&mut self, message: &NewMessage) -> Result<StoredMessage>;

    /// How many friends `user` has. The default lists them.
    fn friend_count(&mut self, user: UserId) -> Result<u64> {
        Ok(self.friends(user)?.len() as u64)
    }

    /// How many groups `user` belongs to (created ones included). The
    /// default lists them.
    fn group_count(&mut self, user: UserId) -> Result<u64> {
        Ok(self.groups(user)?.len() as u64)
    }

    /// How many members `group` has. The default lists them.
    fn member_count(&mut self, group: GroupId) -> Result<u64> {
        Ok(self.group_members(group)?.len() as u64)
    }

    /// How many direct messages to `user` are stored and not acknowledged,
    /// counting at most `limit`. The default reads them (`pending`); a
    /// backend with an index to count on overrides it.
    fn pending_direct(&mut self, user: UserId, limit: u64) -> Result<u64> {
        let page = self.pending(user, 0, usize::try_from(limit).unwrap_or(usize::MAX))?;
        Ok(page.iter().filter(|m| m.group_id == 0).count() as u64)
    }

    /// Messages `user` has not acknowledged, with ids above `after` too,
    /// oldest first, at most `limit`.
    fn pending(
        &mut self,
        user: UserId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<StoredMessage>>;

    /// At most `limit` messages of `conversation` as `user` sees it, newest
    /// first, with ids below `before` (`None`: from the newest), and whether
    /// older ones exist. Direct: the messages between `user` and the peer,
    /// both directions, with the peer's read position. Group: the group's
    /// messages sent after `user` joined. `UnknownUser` (peer),
    /// `UnknownGroup`, `NotAMember`. A range read on one partition or index:
    /// it never scans `user`'s other conversations. Messages stay readable
    /// until compaction or TTL removes them (the history retention).
    fn history(
        &mut self,
        user: UserId,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage>;

    /// Moves `user`'s read position in `conversation` up to `up_to`;
    /// returns whether it moved (false when it was there or beyond already:
    /// read positions never go back). `BeyondNewest` if `up_to` is above the
    /// conversation's newest message; `UnknownUser`, `UnknownGroup`,
    /// `NotAMember` as for `history`.
    fn mark_read(
        &mut self,
        user: UserId,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<bool>;

    /// How many members of `group` have read it up to `message` or beyond,
    /// and how many members it has; `user` must be a member (`UnknownGroup`,
    /// `NotAMember`).
    fn readers(&mut self, user: UserId, group: GroupId, message: MessageId) -> Result<(u64, u64)>;

    /// `user`'s unread messages per conversation, only those with some:
    /// messages from others above `user`'s read position, each count at
    /// most [`UNREAD_CAP`]. Direct conversations are counted among the
    /// newest [`UNREAD_CAP`] + 1 direct messages `user` received, groups
    /// each on their own index range: the cost is bounded by the number of
    /// groups times the cap.
    fn unread(&mut self, user: UserId) -> Result<Vec<Unread>>;

    /// Moves the delivery cursor of `user` up to `up_to` (never down).
    fn ack(&mut self, user: UserId, up_to: MessageId) -> Result<()>;

    /// The delivery cursor of `user`.
    fn cursor(&mut self, user: UserId) -> Result<MessageId>;

    /// How many (message, recipient) deliveries are stored and not yet
    /// acknowledged, across all users; `None` if the backend cannot count
    /// them without scanning every user (ScyllaDB).
    fn pending_total(&mut self) -> Result<Option<u64>>;

    /// Deletes at most `limit` messages every recipient has acknowledged;
    /// returns how many. Small slices keep each transaction short. SQLite
    /// keeps the newest message until a newer one is stored (its id is the
    /// next id's base). Backends whose messages expire by table TTL delete
    /// nothing here (ScyllaDB).
    fn compact(&mut self, limit: usize) -> Result<u64>;

    /// Makes every write since the last commit durable.
    fn commit(&mut self) -> Result<()>;

    /// Discards every write since the last commit.
    fn rollback(&mut self);
}
