//! The chat's domain records: users, contacts, groups, conversations and
//! messages, as the store keeps them and the protocols encode them. A leaf:
//! it imports nothing from the crate.

use std::time::{SystemTime, UNIX_EPOCH};

pub type UserId = u64;
pub type GroupId = u64;
pub type MessageId = u64;

/// A registered user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub name: String,
    /// PHC string (argon2id), never the password itself.
    pub password_hash: String,
}

/// Another user as seen by a friend: `online` is whether a session holds
/// them on a node whose lease is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub id: UserId,
    pub name: String,
    pub online: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Creator,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: UserId,
    pub name: String,
    pub online: bool,
    pub role: Role,
}

/// A group with its members, creator first, then by joining order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: GroupId,
    pub name: String,
    pub description: String,
    pub members: Vec<Member>,
}

/// One of a user's conversations: with another user (both directions), or
/// in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    Direct(UserId),
    Group(GroupId),
}

/// A page of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<StoredMessage>,
    /// Whether older messages exist (below the last one here).
    pub more: bool,
    /// In a direct conversation, how far the other user has read it (0 when
    /// they have not marked it); 0 in a group.
    pub read_up_to: MessageId,
}

/// Unread messages in one of a user's conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread {
    pub conversation: Conversation,
    pub count: u64,
}

/// Unread counts stop at this (a client shows "999+").
pub const UNREAD_CAP: u64 = 999;

/// Where a new message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// A message before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub sender_id: UserId,
    pub sender_name: String,
    pub target: Target,
    pub time_ms: u64,
    pub text: String,
}

/// A stored message. Exactly one of `recipient_id` (direct) and `group_id`
/// (group) is non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub sender_id: UserId,
    pub sender_name: String,
    pub recipient_id: UserId,
    pub group_id: GroupId,
    pub time_ms: u64,
    pub text: String,
}

/// Milliseconds since the Unix epoch (the clock of message times).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
