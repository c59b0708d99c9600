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

/// What a client asks for. `actor` is the sender id the client wrote
/// (`id` in the seed's JSON, `user_id` in FlatBuffers); `None` means "the
/// session's user". A present actor that is not the session's user is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Register {
        name: String,
        password: String,
    },
    Login {
        user: UserId,
        password: String,
    },
    Logout {
        actor: Option<UserId>,
    },
    AddFriend {
        actor: Option<UserId>,
        friend: UserId,
    },
    CreateGroup {
        actor: Option<UserId>,
        name: String,
        description: String,
    },
    JoinGroup {
        actor: Option<UserId>,
        group: GroupId,
    },
    DirectMessage {
        actor: Option<UserId>,
        to: UserId,
        text: String,
    },
    GroupMessage {
        actor: Option<UserId>,
        group: GroupId,
        text: String,
    },
    /// Ends the friendship with `friend`, both ways.
    RemoveFriend {
        actor: Option<UserId>,
        friend: UserId,
    },
    /// Leaves `group` (a creator hands the role on; an empty group is deleted).
    LeaveGroup {
        actor: Option<UserId>,
        group: GroupId,
    },
    /// The creator of `group` removes `member` from it.
    RemoveMember {
        actor: Option<UserId>,
        group: GroupId,
        member: UserId,
    },
    /// A group's name, description and members; members only.
    GroupInfo {
        actor: Option<UserId>,
        group: GroupId,
    },
    /// The user named exactly `name`.
    FindUser {
        name: String,
    },
    /// A page of `conversation`'s history, ids below `before` (`None`: from
    /// the newest), at most `limit` (`None`: the default).
    History {
        actor: Option<UserId>,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: Option<u32>,
    },
    /// Marks `conversation` read up to `up_to`.
    MarkRead {
        actor: Option<UserId>,
        conversation: Conversation,
        up_to: MessageId,
    },
    /// How many members of `group` read it up to `message`.
    Readers {
        actor: Option<UserId>,
        group: GroupId,
        message: MessageId,
    },
    /// Acknowledges every message pushed to this session up to `up_to`.
    DeliveryAck {
        up_to: MessageId,
    },
    Ping,
    /// The node's load report (a balancer's probe; no login needed).
    Load,
}

impl Command {
    /// A short stable name, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Register { .. } => "register",
            Command::Login { .. } => "login",
            Command::Logout { .. } => "logout",
            Command::AddFriend { .. } => "add_friend",
            Command::CreateGroup { .. } => "create_group",
            Command::JoinGroup { .. } => "join_group",
            Command::DirectMessage { .. } => "direct_message",
            Command::GroupMessage { .. } => "group_message",
            Command::RemoveFriend { .. } => "remove_friend",
            Command::LeaveGroup { .. } => "leave_group",
            Command::RemoveMember { .. } => "remove_member",
            Command::GroupInfo { .. } => "group_info",
            Command::FindUser { .. } => "find_user",
            Command::History { .. } => "history",
            Command::MarkRead { .. } => "mark_read",
            Command::Readers { .. } => "readers",
            Command::DeliveryAck { .. } => "delivery_ack",
            Command::Ping => "ping",
            Command::Load => "load",
        }
    }
}

/// The kind of request a reply answers; lets an encoder pick the right reply
/// shape for an error (the seed's JSON answers a failed login with msgid 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Register,
    Login,
    Logout,
    AddFriend,
    CreateGroup,
    JoinGroup,
    DirectMessage,
    GroupMessage,
    RemoveFriend,
    LeaveGroup,
    RemoveMember,
    GroupInfo,
    FindUser,
    History,
    MarkRead,
    Readers,
    DeliveryAck,
    Ping,
    Load,
    /// A request that could not be decoded far enough to know its kind.
    Unknown,
}

impl From<&Command> for RequestKind {
    fn from(c: &Command) -> Self {
        match c {
            Command::Register { .. } => RequestKind::Register,
            Command::Login { .. } => RequestKind::Login,
            Command::Logout { .. } => RequestKind::Logout,
            Command::AddFriend { .. } => RequestKind::AddFriend,
            Command::CreateGroup { .. } => RequestKind::CreateGroup,
            Command::JoinGroup { .. } => RequestKind::JoinGroup,
            Command::DirectMessage { .. } => RequestKind::DirectMessage,
            Command::GroupMessage { .. } => RequestKind::GroupMessage,
            Command::RemoveFriend { .. } => RequestKind::RemoveFriend,
            Command::LeaveGroup { .. } => RequestKind::LeaveGroup,
            Command::RemoveMember { .. } => RequestKind::RemoveMember,
            Command::GroupInfo { .. } => RequestKind::GroupInfo,
            Command::FindUser { .. } => RequestKind::FindUser,
            Command::History { .. } => RequestKind::History,
            Command::MarkRead { .. } => RequestKind::MarkRead,
            Command::Readers { .. } => RequestKind::Readers,
            Command::DeliveryAck { .. } => RequestKind::DeliveryAck,
            Command::Ping => RequestKind::Ping,
            Command::Load => RequestKind::Load,
        }
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
