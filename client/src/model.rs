//! Owned Rust values for what the node sends: users, groups, messages, the
//! decoded [`Reply`] to a request and the [`Event`]s pushed to a session, with
//! their decoding from verified FlatBuffers envelopes.

use std::time::Duration;

use chat_schema::fb;

use crate::error::{ClientError, ErrorCode};

/// A user's id.
pub type UserId = u64;
/// A group's id.
pub type GroupId = u64;
/// A stored message's id (orders messages; what `DeliveryAck` acknowledges).
pub type MessageId = u64;

/// A user as others see them (a friend, a new friend, a user found by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub online: bool,
}

/// What `add_friend` returns: the new friend.
pub type Friend = User;

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Normal,
    Creator,
    /// A role this client does not know.
    Other(u8),
}

impl From<fb::Role> for Role {
    fn from(r: fb::Role) -> Self {
        match r {
            fb::Role::Normal => Role::Normal,
            fb::Role::Creator => Role::Creator,
            fb::Role(n) => Role::Other(n),
        }
    }
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub id: UserId,
    pub name: String,
    pub online: bool,
    pub role: Role,
}

/// A group with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub description: String,
    pub members: Vec<GroupMember>,
}

/// A stored chat message. `group_id` is 0 for a direct message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub sender_id: UserId,
    pub sender_name: String,
    pub recipient_id: UserId,
    pub group_id: GroupId,
    pub time_ms: u64,
    pub text: String,
}

impl Message {
    /// Whether this message was posted to a group.
    pub fn is_group(&self) -> bool {
        self.group_id != 0
    }
}

/// One of a user's conversations: with another user (both directions), or
/// in a group. What [`crate::Client::history`] and
/// [`crate::Client::mark_read`] take; on the wire, `peer_id` or `group_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// The messages between the session's user and this user.
    Direct(UserId),
    /// The messages of this group.
    Group(GroupId),
}

impl Conversation {
    /// The conversation named by a `peer_id` and a `group_id` field (exactly
    /// one non-zero); `None` when both or neither are.
    pub fn from_ids(peer_id: UserId, group_id: GroupId) -> Option<Conversation> {
        match (peer_id, group_id) {
            (0, 0) => None,
            (peer, 0) => Some(Conversation::Direct(peer)),
            (0, group) => Some(Conversation::Group(group)),
            _ => None,
        }
    }

    /// Its `(peer_id, group_id)` fields.
    pub fn ids(self) -> (UserId, GroupId) {
        match self {
            Conversation::Direct(peer) => (peer, 0),
            Conversation::Group(group) => (0, group),
        }
    }

    /// The conversation `m` belongs to, as `me` sees it: its group, or the
    /// other user of a direct message.
    pub fn of(m: &Message, me: UserId) -> Conversation {
        if m.is_group() {
            Conversation::Group(m.group_id)
        } else if m.sender_id == me {
            Conversation::Direct(m.recipient_id)
        } else {
            Conversation::Direct(m.sender_id)
        }
    }
}

/// Unread messages in one conversation, as a login lists them: messages
/// from others above the user's read position. Exactly one of `peer_id` and
/// `group_id` is non-zero. The node stops counting at 999 (show "999+").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread {
    pub peer_id: UserId,
    pub group_id: GroupId,
    pub count: u32,
}

impl Unread {
    /// The conversation, `None` when the node named none (or both).
    pub fn conversation(&self) -> Option<Conversation> {
        Conversation::from_ids(self.peer_id, self.group_id)
    }
}

/// A page of a conversation's history (`HistoryReply`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Older messages exist: ask again with `before` = the id of the last
    /// (oldest) message here.
    pub more: bool,
    /// In a direct conversation, how far the other user has read it (0 when
    /// they have not marked it read); 0 in a group.
    pub read_up_to: MessageId,
}

impl History {
    /// The id to pass as `before` for the next (older) page, when there is
    /// one.
    pub fn next_before(&self) -> Option<MessageId> {
        if self.more {
            self.messages.last().map(|m| m.id)
        } else {
            None
        }
    }
}

/// A successful login: the session's user, friends and groups, the
/// messages stored while the user was away (oldest first), and the
/// conversations with unread messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user_id: UserId,
    pub name: String,
    pub friends: Vec<User>,
    pub groups: Vec<Group>,
    pub pending: Vec<Message>,
    /// Conversations with unread messages (only those); empty from a node
    /// that does not count them.
    pub unread: Vec<Unread>,
    /// How many more groups follow as [`Event::Group`]s: `groups` is the
    /// page that fitted in the reply.
    pub more_groups: u32,
}

/// A node's answer to a load probe (`LoadReply`).
pub use chat_schema::LoadReport;

/// A message the node accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub message_id: MessageId,
    pub time_ms: u64,
}

/// The node's answer to one request, decoded. `Login` carries the pending
/// messages that followed the `LoginReply`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `ErrorReply`. `retry_after` is its `retry_after_ms`, `None` when 0
    /// (set with [`ErrorCode::RateLimited`]).
    Error {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
    Register {
        user_id: UserId,
    },
    Login(Login),
    Logout,
    AddFriend(User),
    CreateGroup {
        group_id: GroupId,
    },
    JoinGroup(Group),
    DirectMessage(Sent),
    GroupMessage(Sent),
    DeliveryAck,
    Ping {
        time_ms: u64,
    },
    /// `RemoveFriendReply`: the friendship is over, both ways.
    RemoveFriend,
    /// `LeaveGroupReply`.
    LeaveGroup,
    /// `RemoveMemberReply`.
    RemoveMember,
    /// `GroupInfoReply`: the group with its members, their roles and online
    /// state.
    GroupInfo(Group),
    /// `FindUserReply`: the user with the name asked for.
    FindUser(User),
    /// `HistoryReply`: a page of a conversation, newest first.
    History(History),
    /// `MarkReadReply`.
    MarkRead,
    /// `ReadersReply`: how many members of the group read up to the message
    /// asked about, of how many members.
    Readers {
        readers: u32,
        members: u32,
    },
    Load(LoadReport),
    WhichNode {
        address: String,
        node_id: String,
    },
    /// A body that is not a reply (a request or push type where a reply was
    /// due, or a type this client does not know).
    Other(fb::Body),
}

impl Reply {
    /// The reply's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Error { .. } => "ErrorReply",
            Reply::Register { .. } => "RegisterReply",
            Reply::Login(_) => "LoginReply",
            Reply::Logout => "LogoutReply",
            Reply::AddFriend(_) => "AddFriendReply",
            Reply::CreateGroup { .. } => "CreateGroupReply",
            Reply::JoinGroup(_) => "JoinGroupReply",
            Reply::DirectMessage(_) => "DirectMessageReply",
            Reply::GroupMessage(_) => "GroupMessageReply",
            Reply::DeliveryAck => "DeliveryAckReply",
            Reply::Ping { .. } => "PingReply",
            Reply::RemoveFriend => "RemoveFriendReply",
            Reply::LeaveGroup => "LeaveGroupReply",
            Reply::RemoveMember => "RemoveMemberReply",
            Reply::GroupInfo(_) => "GroupInfoReply",
            Reply::FindUser(_) => "FindUserReply",
            Reply::History(_) => "HistoryReply",
            Reply::MarkRead => "MarkReadReply",
            Reply::Readers { .. } => "ReadersReply",
            Reply::Load(_) => "LoadReply",
            Reply::WhichNode { .. } => "WhichNodeReply",
            Reply::Other(b) => b.variant_name().unwrap_or("unknown body"),
        }
    }

    /// Turns an `ErrorReply` into [`ClientError::Server`], keeps any other
    /// reply.
    pub fn into_result(self) -> Result<Reply, ClientError> {
        match self {
            Reply::Error {
                code,
                message,
                retry_after,
            } => Err(ClientError::Server {
                code,
                message,
                retry_after,
            }),
            other => Ok(other),
        }
    }

    /// The error for a reply that is not the one a request expects (an
    /// `ErrorReply` becomes [`ClientError::Server`]).
    pub fn unexpected(self, wanted: &str) -> ClientError {
        match self {
            Reply::Error {
                code,
                message,
                retry_after,
            } => ClientError::Server {
                code,
                message,
                retry_after,
            },
            other => ClientError::Protocol(format!("expected {wanted}, got {}", other.kind())),
        }
    }
}

/// Something the node pushed to this session (request id 0), or a reply no
/// request is waiting for.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message for this user (a direct message or a group post).
    Message(Message),
    /// A friend or fellow group member came online or went offline.
    Presence {
        user_id: UserId,
        name: String,
        online: bool,
    },
    /// The group's creator removed this user from group `group_id`
    /// (`RemovedFromGroupPush`).
    RemovedFromGroup { group_id: GroupId },
    /// User `friend_id` ended their friendship with this user
    /// (`FriendRemovedPush`); they are no longer among the friends.
    FriendRemoved { friend_id: UserId },
    /// One of this user's groups that did not fit in the login reply
    /// (`GroupPush`; [`Login::more_groups`] says how many follow).
    Group(Group),
    /// User `reader_id` read their direct conversation with this user
    /// (`peer_id`, this session's user) up to message `up_to`
    /// (`ReadReceiptPush`).
    ReadReceipt {
        reader_id: UserId,
        peer_id: UserId,
        up_to: MessageId,
    },
    /// A reply whose request id matches no request in flight: the answer to
    /// [`crate::Client::send_request`] or [`crate::Client::send_raw`], or a
    /// reply the node sent with request id 0.
    Unsolicited { request_id: u64, reply: Reply },
}

/// One frame from the node, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    /// A reply. For a `LoginReply`, `login_pending` is the number of
    /// `MessagePush` frames that follow and belong to it.
    Reply {
        request_id: u64,
        reply: Reply,
        login_pending: u32,
    },
    /// A push.
    Push(Event),
}

fn text(s: Option<&str>) -> String {
    s.unwrap_or_default().to_owned()
}

fn user(u: fb::User<'_>) -> User {
    User {
        id: u.id(),
        name: text(u.name()),
        online: u.online(),
    }
}

fn group(g: fb::Group<'_>) -> Group {
    Group {
        id: g.id(),
        name: text(g.name()),
        description: text(g.description()),
        members: g
            .members()
            .map(|ms| {
                ms.iter()
                    .map(|m| GroupMember {
                        id: m.id(),
                        name: text(m.name()),
                        online: m.online(),
                        role: m.role().into(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn message(m: fb::Message<'_>) -> Message {
    Message {
        id: m.id(),
        sender_id: m.sender_id(),
        sender_name: text(m.sender_name()),
        recipient_id: m.recipient_id(),
        group_id: m.group_id(),
        time_ms: m.time_ms(),
        text: text(m.text()),
    }
}

fn missing(what: &str) -> ClientError {
    ClientError::Protocol(format!("{what} is missing"))
}

fn body<T>(t: Option<T>, what: &str) -> Result<T, ClientError> {
    t.ok_or_else(|| missing(what))
}

/// Decodes a verified envelope into an owned value. Fails when a table the
/// protocol requires is absent.
pub(crate) fn decode(env: fb::Envelope<'_>) -> Result<Incoming, ClientError> {
    let request_id = env.request_id();
    let mut login_pending = 0;
    let reply = match env.body_type() {
        fb::Body::MessagePush => {
            let p = body(env.body_as_message_push(), "MessagePush body")?;
            let m = p.message().ok_or_else(|| missing("MessagePush.message"))?;
            return Ok(Incoming::Push(Event::Message(message(m))));
        }
        fb::Body::PresencePush => {
            let p = body(env.body_as_presence_push(), "PresencePush body")?;
            return Ok(Incoming::Push(Event::Presence {
                user_id: p.user_id(),
                name: text(p.name()),
                online: p.online(),
            }));
        }
        fb::Body::RemovedFromGroupPush => {
            let p = body(
                env.body_as_removed_from_group_push(),
                "RemovedFromGroupPush body",
            )?;
            return Ok(Incoming::Push(Event::RemovedFromGroup {
                group_id: p.group_id(),
            }));
        }
        fb::Body::FriendRemovedPush => {
            let p = body(env.body_as_friend_removed_push(), "FriendRemovedPush body")?;
            return Ok(Incoming::Push(Event::FriendRemoved {
                friend_id: p.friend_id(),
            }));
        }
        fb::Body::GroupPush => {
            let p = body(env.body_as_group_push(), "GroupPush body")?;
            let g = body(p.group(), "GroupPush group")?;
            return Ok(Incoming::Push(Event::Group(group(g))));
        }
        fb::Body::ReadReceiptPush => {
            let p = body(env.body_as_read_receipt_push(), "ReadReceiptPush body")?;
            return Ok(Incoming::Push(Event::ReadReceipt {
                reader_id: p.reader_id(),
                peer_id: p.peer_id(),
                up_to: p.up_to(),
            }));
        }
        fb::Body::ErrorReply => {
            let r = body(env.body_as_error_reply(), "ErrorReply body")?;
            Reply::Error {
                code: r.code().into(),
                message: text(r.message()),
                retry_after: match r.retry_after_ms() {
                    0 => None,
                    ms => Some(Duration::from_millis(ms.into())),
                },
            }
        }
        fb::Body::RegisterReply => Reply::Register {
            user_id: body(env.body_as_register_reply(), "RegisterReply body")?.user_id(),
        },
        fb::Body::LoginReply => {
            let r = body(env.body_as_login_reply(), "LoginReply body")?;
            login_pending = r.pending();
            Reply::Login(Login {
                user_id: r.user_id(),
                name: text(r.name()),
                friends: r
                    .friends()
                    .map(|v| v.iter().map(user).collect())
                    .unwrap_or_default(),
                groups: r
                    .groups()
                    .map(|v| v.iter().map(group).collect())
                    .unwrap_or_default(),
                pending: Vec::with_capacity(login_pending.min(1024) as usize),
                unread: r
                    .unread()
                    .map(|v| {
                        v.iter()
                            .map(|u| Unread {
                                peer_id: u.peer_id(),
                                group_id: u.group_id(),
                                count: u.count(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                more_groups: r.more_groups(),
            })
        }
        fb::Body::LogoutReply => Reply::Logout,
        fb::Body::AddFriendReply => {
            let r = body(env.body_as_add_friend_reply(), "AddFriendReply body")?;
            Reply::AddFriend(user(
                r.friend().ok_or_else(|| missing("AddFriendReply.friend"))?,
            ))
        }
        fb::Body::CreateGroupReply => Reply::CreateGroup {
            group_id: body(env.body_as_create_group_reply(), "CreateGroupReply body")?.group_id(),
        },
        fb::Body::JoinGroupReply => {
            let r = body(env.body_as_join_group_reply(), "JoinGroupReply body")?;
            Reply::JoinGroup(group(
                r.group().ok_or_else(|| missing("JoinGroupReply.group"))?,
            ))
        }
        fb::Body::DirectMessageReply => {
            let r = body(
                env.body_as_direct_message_reply(),
                "DirectMessageReply body",
            )?;
            Reply::DirectMessage(Sent {
                message_id: r.message_id(),
                time_ms: r.time_ms(),
            })
        }
        fb::Body::GroupMessageReply => {
            let r = body(env.body_as_group_message_reply(), "GroupMessageReply body")?;
            Reply::GroupMessage(Sent {
                message_id: r.message_id(),
                time_ms: r.time_ms(),
            })
        }
        fb::Body::DeliveryAckReply => Reply::DeliveryAck,
        fb::Body::RemoveFriendReply => Reply::RemoveFriend,
        fb::Body::LeaveGroupReply => Reply::LeaveGroup,
        fb::Body::RemoveMemberReply => Reply::RemoveMember,
        fb::Body::GroupInfoReply => {
            let r = body(env.body_as_group_info_reply(), "GroupInfoReply body")?;
            Reply::GroupInfo(group(
                r.group().ok_or_else(|| missing("GroupInfoReply.group"))?,
            ))
        }
        fb::Body::FindUserReply => {
            let r = body(env.body_as_find_user_reply(), "FindUserReply body")?;
            Reply::FindUser(user(r.user().ok_or_else(|| missing("FindUserReply.user"))?))
        }
        fb::Body::HistoryReply => {
            let r = body(env.body_as_history_reply(), "HistoryReply body")?;
            Reply::History(History {
                messages: r
                    .messages()
                    .map(|v| v.iter().map(message).collect())
                    .unwrap_or_default(),
                more: r.more(),
                read_up_to: r.read_up_to(),
            })
        }
        fb::Body::MarkReadReply => Reply::MarkRead,
        fb::Body::ReadersReply => {
            let r = body(env.body_as_readers_reply(), "ReadersReply body")?;
            Reply::Readers {
                readers: r.readers(),
                members: r.members(),
            }
        }
        fb::Body::PingReply => Reply::Ping {
            time_ms: body(env.body_as_ping_reply(), "PingReply body")?.time_ms(),
        },
        fb::Body::LoadReply => {
            let r = body(env.body_as_load_reply(), "LoadReply body")?;
            Reply::Load(LoadReport {
                node_id: r.node_id().unwrap_or_default().to_owned(),
                address: r.address().unwrap_or_default().to_owned(),
                connections: r.connections(),
                capacity: r.capacity(),
                shard_busy: r
                    .shard_busy()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                outbound_bytes: r.outbound_bytes(),
                draining: r.draining(),
            })
        }
        fb::Body::WhichNodeReply => {
            let r = body(env.body_as_which_node_reply(), "WhichNodeReply body")?;
            Reply::WhichNode {
                address: r.address().unwrap_or_default().to_owned(),
                node_id: r.node_id().unwrap_or_default().to_owned(),
            }
        }
        other => Reply::Other(other),
    };
    Ok(Incoming::Reply {
        request_id,
        reply,
        login_pending,
    })
}
