//! The protocol-neutral model of a conversation with the node.
//!
//! Both wire protocols decode into [`Request`] and encode from [`Reply`] and
//! [`Push`]; the handlers in `service` only ever see these types, so every
//! feature is written once whichever protocol a client speaks.

use crate::model::{
    Contact, Conversation, GroupId, GroupInfo, HistoryPage, MessageId, StoredMessage, Unread,
    UserId,
};

/// A decoded request with the client's request id (FlatBuffers) or 0 (JSON,
/// which has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub command: Command,
}

/// Declares the request kinds once. Each entry is a variant of [`Command`]
/// with its fields and its metrics label; the macro writes [`Command`],
/// [`RequestKind`] (the same variants without fields, plus `Unknown`),
/// [`RequestKind::ALL`], [`RequestKind::name`] and `From<&Command>`. A new
/// request is one entry here; then its decoding in each protocol, its reply
/// encoding and its handler (the compiler points at the exhaustive matches:
/// `service::handle`, `reply_msgid`). `docs/architecture.md`, "Adding a
/// request", lists every step.
macro_rules! request_kinds {
    ($(
        $(#[$attr:meta])*
        $kind:ident $({ $($field:ident: $ty:ty),* $(,)? })? => $name:literal,
    )*) => {
        /// What a client asks for. `actor` is the sender id the client wrote
        /// (`id` in the seed's JSON, `user_id` in FlatBuffers); `None` means
        /// "the session's user". A present actor that is not the session's
        /// user is refused.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Command {
            $(
                $(#[$attr])*
                $kind $({ $($field: $ty),* })?,
            )*
        }

        /// The kind of request a reply answers; lets an encoder pick the
        /// right reply shape for an error (the seed's JSON answers a failed
        /// login with msgid 2).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RequestKind {
            $($kind,)*
            /// A request that could not be decoded far enough to know its
            /// kind.
            Unknown,
        }

        impl RequestKind {
            /// Every kind of [`Command`], in declaration order (`Unknown`
            /// is not one).
            pub const ALL: &[RequestKind] = &[$(RequestKind::$kind),*];

            /// A short stable name, used as a metrics label ("unknown" for
            /// `Unknown`, which is never counted under a name).
            pub fn name(self) -> &'static str {
                match self {
                    $(RequestKind::$kind => $name,)*
                    RequestKind::Unknown => "unknown",
                }
            }
        }

        impl From<&Command> for RequestKind {
            fn from(c: &Command) -> Self {
                match c {
                    $(Command::$kind { .. } => RequestKind::$kind,)*
                }
            }
        }
    };
}

request_kinds! {
    Register {
        name: String,
        password: String,
    } => "register",
    Login {
        user: UserId,
        password: String,
    } => "login",
    Logout {
        actor: Option<UserId>,
    } => "logout",
    AddFriend {
        actor: Option<UserId>,
        friend: UserId,
    } => "add_friend",
    CreateGroup {
        actor: Option<UserId>,
        name: String,
        description: String,
    } => "create_group",
    JoinGroup {
        actor: Option<UserId>,
        group: GroupId,
    } => "join_group",
    DirectMessage {
        actor: Option<UserId>,
        to: UserId,
        text: String,
    } => "direct_message",
    GroupMessage {
        actor: Option<UserId>,
        group: GroupId,
        text: String,
    } => "group_message",
    /// Ends the friendship with `friend`, both ways.
    RemoveFriend {
        actor: Option<UserId>,
        friend: UserId,
    } => "remove_friend",
    /// Leaves `group` (a creator hands the role on; an empty group is deleted).
    LeaveGroup {
        actor: Option<UserId>,
        group: GroupId,
    } => "leave_group",
    /// The creator of `group` removes `member` from it.
    RemoveMember {
        actor: Option<UserId>,
        group: GroupId,
        member: UserId,
    } => "remove_member",
    /// A group's name, description and members; members only.
    GroupInfo {
        actor: Option<UserId>,
        group: GroupId,
    } => "group_info",
    /// The user named exactly `name`.
    FindUser {
        name: String,
    } => "find_user",
    /// A page of `conversation`'s history, ids below `before` (`None`: from
    /// the newest), at most `limit` (`None`: the default).
    History {
        actor: Option<UserId>,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: Option<u32>,
    } => "history",
    /// Marks `conversation` read up to `up_to`.
    MarkRead {
        actor: Option<UserId>,
        conversation: Conversation,
        up_to: MessageId,
    } => "mark_read",
    /// How many members of `group` read it up to `message`.
    Readers {
        actor: Option<UserId>,
        group: GroupId,
        message: MessageId,
    } => "readers",
    /// Acknowledges every message pushed to this session up to `up_to`;
    /// `quiet`: no reply when it succeeds (FlatBuffers'
    /// `DeliveryAckRequest.quiet`).
    DeliveryAck {
        up_to: MessageId,
        quiet: bool,
    } => "delivery_ack",
    Ping => "ping",
    /// The node's load report (a balancer's probe; no login needed).
    Load => "load",
}

impl Command {
    /// A short stable name, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        RequestKind::from(self).name()
    }
}

pub use chat_schema::ErrorCode;

/// A failed request: a typed code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    /// When to try again (`RateLimited`), in milliseconds.
    pub retry_after_ms: Option<u32>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The same failure with a hint of when to try again.
    pub fn retry_after(mut self, ms: u32) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

/// What a successful login returns. The `pending` messages are sent right
/// after the reply, oldest first (FlatBuffers: as pushes; JSON: inside the
/// reply's `offlinemsg`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoginInfo {
    pub user: UserId,
    pub name: String,
    pub friends: Vec<Contact>,
    pub groups: Vec<GroupInfo>,
    pub pending: Vec<StoredMessage>,
    /// Unread messages per conversation, only those with some.
    pub unread: Vec<Unread>,
    /// How many more groups follow as [`Push::Group`]s (`groups` is a page).
    pub more_groups: u64,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Registered {
        user: UserId,
    },
    LoggedIn(Box<LoginInfo>),
    LoggedOut,
    FriendAdded(Contact),
    GroupCreated {
        group: GroupId,
    },
    GroupJoined(GroupInfo),
    MessageSent {
        id: MessageId,
        time_ms: u64,
    },
    FriendRemoved,
    GroupLeft,
    MemberRemoved,
    /// A group's details (`GroupInfo`), members with role and online state.
    Group(GroupInfo),
    /// The user a `FindUser` named, with their online state.
    UserFound(Contact),
    History(HistoryPage),
    MarkedRead,
    Readers {
        readers: u64,
        members: u64,
    },
    Acked,
    Pong {
        time_ms: u64,
    },
    Load(LoadReport),
    Error(Failure),
}

/// A node's answer to a load probe (`LoadReply`).
pub use chat_schema::LoadReport;

/// Something the node sends without being asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    Message(std::sync::Arc<StoredMessage>),
    Presence {
        user: UserId,
        name: String,
        online: bool,
    },
    /// The creator of `group` removed this session's user from it.
    RemovedFromGroup {
        group: GroupId,
    },
    /// `friend` ended their friendship with this session's user.
    FriendRemoved {
        friend: UserId,
    },
    /// One of this session's user's groups that did not fit in the login
    /// reply.
    Group(GroupInfo),
    /// `reader` read their direct conversation with `peer` (this session's
    /// user) up to `up_to`.
    ReadReceipt {
        reader: UserId,
        peer: UserId,
        up_to: MessageId,
    },
}

impl Push {
    /// The stored message's id, 0 for pushes that are not stored messages.
    pub fn message_id(&self) -> MessageId {
        match self {
            Push::Message(m) => m.id,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_distinct_snake_case_labels() {
        let mut names: Vec<&str> = RequestKind::ALL.iter().map(|k| k.name()).collect();
        assert!(!RequestKind::ALL.contains(&RequestKind::Unknown));
        assert!(
            names
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
            "{names:?}"
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RequestKind::ALL.len());
    }

    #[test]
    fn a_command_is_counted_under_its_kinds_name() {
        let command = Command::DirectMessage {
            actor: None,
            to: 2,
            text: "hi".into(),
        };
        assert_eq!(RequestKind::from(&command), RequestKind::DirectMessage);
        assert_eq!(command.kind(), "direct_message");
        assert_eq!(Command::Ping.kind(), "ping");
    }
}
