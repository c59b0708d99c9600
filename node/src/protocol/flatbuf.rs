//! The FlatBuffers protocol: every frame is a 4-byte little-endian length
//! followed by one `Envelope` (`schema/chat.fbs`).
//!
//! [`FrameDecoder`] never buffers more than one frame of at most `max_frame`
//! bytes: the length prefix is checked before the body is waited for, and the
//! body is run through the FlatBuffers verifier with limits tightened for
//! network input before any field is read. A frame that fails verification or
//! is not a well-formed request is consumed whole and reported as
//! [`Decoded::Invalid`], so the stream stays in sync.
//!
//! [`FrameEncoder`] writes replies and pushes as size-prefixed envelopes with
//! one reused builder.

use chat_schema::fb;
use chat_schema::frame::{self, FrameError, PREFIX_LEN};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use std::cell::RefCell;

use super::decoded::{Decoded, Refusal, refuse};
use crate::command::{Command, ErrorCode, Failure, Push, Reply, Request, RequestKind};
use crate::model::{Contact, Conversation, GroupInfo, Role, StoredMessage, Unread, UserId};

/// Splits a byte stream into FlatBuffers envelopes and decodes the requests.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    /// Set once the stream can not be followed; every later call repeats it.
    fatal: Option<Failure>,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose body exceeds `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            fatal: None,
        }
    }

    /// See [`super::Decoder::decode`]: `(0, None)` while the frame is not
    /// complete, `(frame length, Some(..))` for a complete frame, `(0,
    /// Some(Fatal))` for a length over the limit or zero.
    pub fn decode(&mut self, buf: &[u8]) -> (usize, Option<Decoded>) {
        if let Some(failure) = &self.fatal {
            return (0, Some(Decoded::Fatal(failure.clone())));
        }
        let len = match frame::frame_len(buf, self.max_frame) {
            Ok(Some(len)) => len,
            Ok(None) => return (0, None),
            Err(e) => {
                let code = match e {
                    FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    FrameError::Empty | FrameError::Invalid(_) => ErrorCode::BadRequest,
                };
                let failure = Failure::new(code, e.to_string());
                self.fatal = Some(failure.clone());
                return (0, Some(Decoded::Fatal(failure)));
            }
        };
        let total = PREFIX_LEN + len;
        let Some(frame) = buf.get(..total) else {
            return (0, None);
        };
        let decoded = match frame::parse_frame(frame, self.max_frame) {
            Ok(envelope) => decode_envelope(&envelope),
            Err(e) => Decoded::Invalid {
                request_id: 0,
                kind: RequestKind::Unknown,
                failure: Failure::new(ErrorCode::BadRequest, e.to_string()),
            },
        };
        (total, Some(decoded))
    }
}

fn decode_envelope(envelope: &fb::Envelope<'_>) -> Decoded {
    let request_id = envelope.request_id();
    let result = command(envelope).and_then(|command| {
        if request_id == 0 {
            Err(refuse(
                RequestKind::from(&command),
                "request_id must be non-zero (0 is reserved for pushes)",
            ))
        } else {
            Ok(command)
        }
    });
    match result {
        Ok(command) => Decoded::Request(Request {
            id: request_id,
            command,
        }),
        Err(refusal) => Decoded::Invalid {
            request_id,
            kind: refusal.kind,
            failure: Failure::new(ErrorCode::BadRequest, refusal.message),
        },
    }
}

/// `user_id` 0 means "the session's user".
fn actor(user_id: u64) -> Option<UserId> {
    (user_id != 0).then_some(user_id)
}

fn required<'a>(
    kind: RequestKind,
    field: &str,
    value: Option<&'a str>,
) -> Result<&'a str, Refusal> {
    value.ok_or_else(|| refuse(kind, format!("missing field `{field}`")))
}

fn missing_body(kind: RequestKind) -> Refusal {
    refuse(kind, "envelope has a body type but no body")
}

/// The conversation a request names: user `peer_id` or group `group_id`,
/// exactly one of them non-zero.
fn conversation(kind: RequestKind, peer_id: u64, group_id: u64) -> Result<Conversation, Refusal> {
    match (peer_id, group_id) {
        (peer, 0) if peer != 0 => Ok(Conversation::Direct(peer)),
        (0, group) if group != 0 => Ok(Conversation::Group(group)),
        _ => Err(refuse(
            kind,
            "exactly one of `peer_id` and `group_id` must be non-zero",
        )),
    }
}

/// The `(peer_id, group_id)` fields naming `conversation`.
fn conversation_ids(conversation: Conversation) -> (u64, u64) {
    match conversation {
        Conversation::Direct(peer) => (peer, 0),
        Conversation::Group(group) => (0, group),
    }
}

fn command(envelope: &fb::Envelope<'_>) -> Result<Command, Refusal> {
    let body_type = envelope.body_type();
    match body_type {
        fb::Body::RegisterRequest => {
            let k = RequestKind::Register;
            let r = envelope
                .body_as_register_request()
                .ok_or_else(|| missing_body(k))?;
            Ok(Command::Register {
                name: required(k, "name", r.name())?.to_owned(),
                password: required(k, "password", r.password())?.to_owned(),
            })
        }
        fb::Body::LoginRequest => {
            let k = RequestKind::Login;
            let r = envelope
                .body_as_login_request()
                .ok_or_else(|| missing_body(k))?;
            if r.user_id() == 0 {
                return Err(refuse(k, "field `user_id` must be a non-zero user id"));
            }
            Ok(Command::Login {
                user: r.user_id(),
                password: required(k, "password", r.password())?.to_owned(),
            })
        }
        fb::Body::LogoutRequest => {
            let r = envelope
                .body_as_logout_request()
                .ok_or_else(|| missing_body(RequestKind::Logout))?;
            Ok(Command::Logout {
                actor: actor(r.user_id()),
            })
        }
        fb::Body::AddFriendRequest => {
            let r = envelope
                .body_as_add_friend_request()
                .ok_or_else(|| missing_body(RequestKind::AddFriend))?;
            Ok(Command::AddFriend {
                actor: actor(r.user_id()),
                friend: r.friend_id(),
            })
        }
        fb::Body::CreateGroupRequest => {
            let k = RequestKind::CreateGroup;
            let r = envelope
                .body_as_create_group_request()
                .ok_or_else(|| missing_body(k))?;
            Ok(Command::CreateGroup {
                actor: actor(r.user_id()),
                name: required(k, "name", r.name())?.to_owned(),
                description: r.description().unwrap_or_default().to_owned(),
            })
        }
        fb::Body::JoinGroupRequest => {
            let r = envelope
                .body_as_join_group_request()
                .ok_or_else(|| missing_body(RequestKind::JoinGroup))?;
            Ok(Command::JoinGroup {
                actor: actor(r.user_id()),
                group: r.group_id(),
            })
        }
        fb::Body::DirectMessageRequest => {
            let k = RequestKind::DirectMessage;
            let r = envelope
                .body_as_direct_message_request()
                .ok_or_else(|| missing_body(k))?;
            Ok(Command::DirectMessage {
                actor: actor(r.user_id()),
                to: r.to_id(),
                text: required(k, "text", r.text())?.to_owned(),
            })
        }
        fb::Body::GroupMessageRequest => {
            let k = RequestKind::GroupMessage;
            let r = envelope
                .body_as_group_message_request()
                .ok_or_else(|| missing_body(k))?;
            Ok(Command::GroupMessage {
                actor: actor(r.user_id()),
                group: r.group_id(),
                text: required(k, "text", r.text())?.to_owned(),
            })
        }
        fb::Body::RemoveFriendRequest => {
            let r = envelope
                .body_as_remove_friend_request()
                .ok_or_else(|| missing_body(RequestKind::RemoveFriend))?;
            Ok(Command::RemoveFriend {
                actor: actor(r.user_id()),
                friend: r.friend_id(),
            })
        }
        fb::Body::LeaveGroupRequest => {
            let r = envelope
                .body_as_leave_group_request()
                .ok_or_else(|| missing_body(RequestKind::LeaveGroup))?;
            Ok(Command::LeaveGroup {
                actor: actor(r.user_id()),
                group: r.group_id(),
            })
        }
        fb::Body::RemoveMemberRequest => {
            let r = envelope
                .body_as_remove_member_request()
                .ok_or_else(|| missing_body(RequestKind::RemoveMember))?;
            Ok(Command::RemoveMember {
                actor: actor(r.user_id()),
                group: r.group_id(),
                member: r.member_id(),
            })
        }
        fb::Body::GroupInfoRequest => {
            let r = envelope
                .body_as_group_info_request()
                .ok_or_else(|| missing_body(RequestKind::GroupInfo))?;
            Ok(Command::GroupInfo {
                actor: actor(r.user_id()),
                group: r.group_id(),
            })
        }
        fb::Body::FindUserRequest => {
            let k = RequestKind::FindUser;
            let r = envelope
                .body_as_find_user_request()
                .ok_or_else(|| missing_body(k))?;
            Ok(Command::FindUser {
                name: required(k, "name", r.name())?.to_owned(),
            })
        }
        fb::Body::HistoryRequest => {
            let k = RequestKind::History;
            let r = envelope
                .body_as_history_request()
                .ok_or_else(|| missing_body(k))?;
            Ok(Command::History {
                actor: actor(r.user_id()),
                conversation: conversation(k, r.peer_id(), r.group_id())?,
                before: (r.before() != 0).then_some(r.before()),
                limit: (r.limit() != 0).then_some(r.limit()),
            })
        }
        fb::Body::MarkReadRequest => {
            let k = RequestKind::MarkRead;
            let r = envelope
                .body_as_mark_read_request()
                .ok_or_else(|| missing_body(k))?;
            Ok(Command::MarkRead {
                actor: actor(r.user_id()),
                conversation: conversation(k, r.peer_id(), r.group_id())?,
                up_to: r.up_to(),
            })
        }
        fb::Body::ReadersRequest => {
            let r = envelope
                .body_as_readers_request()
                .ok_or_else(|| missing_body(RequestKind::Readers))?;
            Ok(Command::Readers {
                actor: actor(r.user_id()),
                group: r.group_id(),
                message: r.message_id(),
            })
        }
        fb::Body::DeliveryAckRequest => {
            let r = envelope
                .body_as_delivery_ack_request()
                .ok_or_else(|| missing_body(RequestKind::DeliveryAck))?;
            Ok(Command::DeliveryAck {
                up_to: r.message_id(),
                quiet: r.quiet(),
            })
        }
        fb::Body::PingRequest => {
            envelope
                .body_as_ping_request()
                .ok_or_else(|| missing_body(RequestKind::Ping))?;
            Ok(Command::Ping)
        }
        fb::Body::LoadRequest => {
            envelope
                .body_as_load_request()
                .ok_or_else(|| missing_body(RequestKind::Load))?;
            Ok(Command::Load)
        }
        fb::Body::WhichNodeRequest => Err(refuse(
            RequestKind::Unknown,
            "WhichNodeRequest is answered by a balancer's redirect port, not by a node",
        )),
        fb::Body::NONE => Err(refuse(RequestKind::Unknown, "envelope has no body")),
        other => Err(refuse(
            RequestKind::Unknown,
            match other.variant_name() {
                Some(name) => format!("{name} is not a request"),
                None => format!("unknown body type {}", other.0),
            },
        )),
    }
}

/// Writes replies and pushes as size-prefixed envelopes. One builder per
/// thread is reused for every frame of every connection (encoding never
/// waits, so connections of one shard take turns), so encoding allocates only
/// while a frame is larger than every frame before it, and a connection
/// holds no encoder state of its own.
#[derive(Default)]
pub struct FrameEncoder;

thread_local! {
    /// The builder and the vector scratch of [`FrameEncoder::frame`].
    static BUILDER: RefCell<(FlatBufferBuilder<'static>, Vec<u32>)> =
        RefCell::new((FlatBufferBuilder::with_capacity(1024), Vec::new()));
}

type Body = (fb::Body, WIPOffset<UnionWIPOffset>);

impl FrameEncoder {
    pub fn new() -> Self {
        FrameEncoder
    }

    /// Appends the frame of `body` (built into the reset builder) to `out`.
    fn frame(
        &mut self,
        request_id: u64,
        out: &mut Vec<u8>,
        build: impl FnOnce(&mut FlatBufferBuilder<'static>, &mut Vec<u32>) -> Body,
    ) {
        BUILDER.with(|cell| {
            let (b, scratch) = &mut *cell.borrow_mut();
            b.reset();
            scratch.clear();
            let (body_type, body) = build(b, scratch);
            let envelope = fb::Envelope::create(
                b,
                &fb::EnvelopeArgs {
                    request_id,
                    body_type,
                    body: Some(body),
                },
            );
            out.extend_from_slice(frame::finish(b, envelope));
        })
    }

    /// Appends the reply to request `request_id`, whose kind is `kind` (it
    /// tells a direct message's reply from a group message's). A successful
    /// login is followed by one `MessagePush` frame per pending message.
    pub fn reply(&mut self, request_id: u64, kind: RequestKind, reply: &Reply, out: &mut Vec<u8>) {
        self.frame(request_id, out, |b, scratch| match reply {
            Reply::Error(failure) => {
                let message = b.create_string(&failure.message);
                let r = fb::ErrorReply::create(
                    b,
                    &fb::ErrorReplyArgs {
                        code: failure.code.into(),
                        message: Some(message),
                        retry_after_ms: failure.retry_after_ms.unwrap_or(0),
                    },
                );
                (fb::Body::ErrorReply, r.as_union_value())
            }
            Reply::Registered { user } => {
                let r = fb::RegisterReply::create(b, &fb::RegisterReplyArgs { user_id: *user });
                (fb::Body::RegisterReply, r.as_union_value())
            }
            Reply::LoggedIn(info) => {
                let name = b.create_string(&info.name);
                scratch.clear();
                for f in &info.friends {
                    scratch.push(user(b, f).value());
                }
                let friends = b.create_vector_from_iter(
                    scratch.drain(..).map(WIPOffset::<fb::User<'static>>::new),
                );
                for g in &info.groups {
                    let g = group(b, g, scratch);
                    scratch.push(g.value());
                }
                let groups = b.create_vector_from_iter(
                    scratch.drain(..).map(WIPOffset::<fb::Group<'static>>::new),
                );
                // Left out when there is nothing unread (most logins).
                let unread = (!info.unread.is_empty()).then(|| {
                    for u in &info.unread {
                        scratch.push(unread(b, u).value());
                    }
                    b.create_vector_from_iter(
                        scratch.drain(..).map(WIPOffset::<fb::Unread<'static>>::new),
                    )
                });
                let r = fb::LoginReply::create(
                    b,
                    &fb::LoginReplyArgs {
                        user_id: info.user,
                        name: Some(name),
                        friends: Some(friends),
                        groups: Some(groups),
                        pending: u32::try_from(info.pending.len()).unwrap_or(u32::MAX),
                        unread,
                        more_groups: u32::try_from(info.more_groups).unwrap_or(u32::MAX),
                    },
                );
                (fb::Body::LoginReply, r.as_union_value())
            }
            Reply::LoggedOut => {
                let r = fb::LogoutReply::create(b, &fb::LogoutReplyArgs {});
                (fb::Body::LogoutReply, r.as_union_value())
            }
            Reply::FriendAdded(contact) => {
                let friend = user(b, contact);
                let r = fb::AddFriendReply::create(
                    b,
                    &fb::AddFriendReplyArgs {
                        friend: Some(friend),
                    },
                );
                (fb::Body::AddFriendReply, r.as_union_value())
            }
            Reply::GroupCreated { group } => {
                let r =
                    fb::CreateGroupReply::create(b, &fb::CreateGroupReplyArgs { group_id: *group });
                (fb::Body::CreateGroupReply, r.as_union_value())
            }
            Reply::GroupJoined(info) => {
                let g = group(b, info, scratch);
                let r = fb::JoinGroupReply::create(b, &fb::JoinGroupReplyArgs { group: Some(g) });
                (fb::Body::JoinGroupReply, r.as_union_value())
            }
            Reply::MessageSent { id, time_ms } if kind == RequestKind::GroupMessage => {
                let r = fb::GroupMessageReply::create(
                    b,
                    &fb::GroupMessageReplyArgs {
                        message_id: *id,
                        time_ms: *time_ms,
                    },
                );
                (fb::Body::GroupMessageReply, r.as_union_value())
            }
            Reply::MessageSent { id, time_ms } => {
                let r = fb::DirectMessageReply::create(
                    b,
                    &fb::DirectMessageReplyArgs {
                        message_id: *id,
                        time_ms: *time_ms,
                    },
                );
                (fb::Body::DirectMessageReply, r.as_union_value())
            }
            Reply::FriendRemoved => {
                let r = fb::RemoveFriendReply::create(b, &fb::RemoveFriendReplyArgs {});
                (fb::Body::RemoveFriendReply, r.as_union_value())
            }
            Reply::GroupLeft => {
                let r = fb::LeaveGroupReply::create(b, &fb::LeaveGroupReplyArgs {});
                (fb::Body::LeaveGroupReply, r.as_union_value())
            }
            Reply::MemberRemoved => {
                let r = fb::RemoveMemberReply::create(b, &fb::RemoveMemberReplyArgs {});
                (fb::Body::RemoveMemberReply, r.as_union_value())
            }
            Reply::Group(info) => {
                let g = group(b, info, scratch);
                let r = fb::GroupInfoReply::create(b, &fb::GroupInfoReplyArgs { group: Some(g) });
                (fb::Body::GroupInfoReply, r.as_union_value())
            }
            Reply::UserFound(contact) => {
                let u = user(b, contact);
                let r = fb::FindUserReply::create(b, &fb::FindUserReplyArgs { user: Some(u) });
                (fb::Body::FindUserReply, r.as_union_value())
            }
            Reply::History(page) => {
                scratch.clear();
                for m in &page.messages {
                    scratch.push(message(b, m).value());
                }
                let messages = b.create_vector_from_iter(
                    scratch
                        .drain(..)
                        .map(WIPOffset::<fb::Message<'static>>::new),
                );
                let r = fb::HistoryReply::create(
                    b,
                    &fb::HistoryReplyArgs {
                        messages: Some(messages),
                        more: page.more,
                        read_up_to: page.read_up_to,
                    },
                );
                (fb::Body::HistoryReply, r.as_union_value())
            }
            Reply::MarkedRead => {
                let r = fb::MarkReadReply::create(b, &fb::MarkReadReplyArgs {});
                (fb::Body::MarkReadReply, r.as_union_value())
            }
            Reply::Readers { readers, members } => {
                let r = fb::ReadersReply::create(
                    b,
                    &fb::ReadersReplyArgs {
                        readers: u32::try_from(*readers).unwrap_or(u32::MAX),
                        members: u32::try_from(*members).unwrap_or(u32::MAX),
                    },
                );
                (fb::Body::ReadersReply, r.as_union_value())
            }
            Reply::Acked => {
                let r = fb::DeliveryAckReply::create(b, &fb::DeliveryAckReplyArgs {});
                (fb::Body::DeliveryAckReply, r.as_union_value())
            }
            Reply::Load(report) => {
                let node_id = b.create_string(&report.node_id);
                let address = b.create_string(&report.address);
                let shard_busy = b.create_vector(&report.shard_busy);
                let r = fb::LoadReply::create(
                    b,
                    &fb::LoadReplyArgs {
                        node_id: Some(node_id),
                        address: Some(address),
                        connections: report.connections,
                        capacity: report.capacity,
                        shard_busy: Some(shard_busy),
                        outbound_bytes: report.outbound_bytes,
                        draining: report.draining,
                    },
                );
                (fb::Body::LoadReply, r.as_union_value())
            }
            Reply::Pong { time_ms } => {
                let r = fb::PingReply::create(b, &fb::PingReplyArgs { time_ms: *time_ms });
                (fb::Body::PingReply, r.as_union_value())
            }
        });
        if let Reply::LoggedIn(info) = reply {
            for m in &info.pending {
                self.message_push(m, out);
            }
        }
    }

    /// Appends a push (request id 0). Every push has a FlatBuffers form, so
    /// this always returns true.
    pub fn push(&mut self, push: &Push, out: &mut Vec<u8>) -> bool {
        match push {
            Push::Message(m) => self.message_push(m, out),
            Push::Presence { user, name, online } => self.frame(0, out, |b, _| {
                let name = b.create_string(name);
                let p = fb::PresencePush::create(
                    b,
                    &fb::PresencePushArgs {
                        user_id: *user,
                        name: Some(name),
                        online: *online,
                    },
                );
                (fb::Body::PresencePush, p.as_union_value())
            }),
            Push::RemovedFromGroup { group } => self.frame(0, out, |b, _| {
                let p = fb::RemovedFromGroupPush::create(
                    b,
                    &fb::RemovedFromGroupPushArgs { group_id: *group },
                );
                (fb::Body::RemovedFromGroupPush, p.as_union_value())
            }),
            Push::FriendRemoved { friend } => self.frame(0, out, |b, _| {
                let p = fb::FriendRemovedPush::create(
                    b,
                    &fb::FriendRemovedPushArgs { friend_id: *friend },
                );
                (fb::Body::FriendRemovedPush, p.as_union_value())
            }),
            Push::ReadReceipt {
                reader,
                peer,
                up_to,
            } => self.frame(0, out, |b, _| {
                let p = fb::ReadReceiptPush::create(
                    b,
                    &fb::ReadReceiptPushArgs {
                        reader_id: *reader,
                        peer_id: *peer,
                        up_to: *up_to,
                    },
                );
                (fb::Body::ReadReceiptPush, p.as_union_value())
            }),
            Push::Group(info) => self.frame(0, out, |b, scratch| {
                let g = group(b, info, scratch);
                let p = fb::GroupPush::create(b, &fb::GroupPushArgs { group: Some(g) });
                (fb::Body::GroupPush, p.as_union_value())
            }),
        }
        true
    }

    fn message_push(&mut self, m: &StoredMessage, out: &mut Vec<u8>) {
        self.frame(0, out, |b, _| {
            let message = message(b, m);
            let p = fb::MessagePush::create(
                b,
                &fb::MessagePushArgs {
                    message: Some(message),
                },
            );
            (fb::Body::MessagePush, p.as_union_value())
        });
    }
}

fn message(
    b: &mut FlatBufferBuilder<'static>,
    m: &StoredMessage,
) -> WIPOffset<fb::Message<'static>> {
    let sender_name = b.create_string(&m.sender_name);
    let text = b.create_string(&m.text);
    fb::Message::create(
        b,
        &fb::MessageArgs {
            id: m.id,
            sender_id: m.sender_id,
            sender_name: Some(sender_name),
            recipient_id: m.recipient_id,
            group_id: m.group_id,
            time_ms: m.time_ms,
            text: Some(text),
        },
    )
}

fn unread(b: &mut FlatBufferBuilder<'static>, u: &Unread) -> WIPOffset<fb::Unread<'static>> {
    let (peer_id, group_id) = conversation_ids(u.conversation);
    fb::Unread::create(
        b,
        &fb::UnreadArgs {
            peer_id,
            group_id,
            count: u32::try_from(u.count).unwrap_or(u32::MAX),
        },
    )
}

fn user(b: &mut FlatBufferBuilder<'static>, c: &Contact) -> WIPOffset<fb::User<'static>> {
    let name = b.create_string(&c.name);
    fb::User::create(
        b,
        &fb::UserArgs {
            id: c.id,
            name: Some(name),
            online: c.online,
        },
    )
}

/// Builds a group table; uses the tail of `scratch` for member offsets and
/// leaves `scratch` as it found it.
fn group(
    b: &mut FlatBufferBuilder<'static>,
    g: &GroupInfo,
    scratch: &mut Vec<u32>,
) -> WIPOffset<fb::Group<'static>> {
    let name = b.create_string(&g.name);
    let description = b.create_string(&g.description);
    let mark = scratch.len();
    for m in &g.members {
        let member_name = b.create_string(&m.name);
        let member = fb::GroupMember::create(
            b,
            &fb::GroupMemberArgs {
                id: m.id,
                name: Some(member_name),
                online: m.online,
                role: match m.role {
                    Role::Creator => fb::Role::Creator,
                    Role::Normal => fb::Role::Normal,
                },
            },
        );
        scratch.push(member.value());
    }
    let members = b.create_vector_from_iter(
        scratch
            .drain(mark..)
            .map(WIPOffset::<fb::GroupMember<'static>>::new),
    );
    fb::Group::create(
        b,
        &fb::GroupArgs {
            id: g.id,
            name: Some(name),
            description: Some(description),
            members: Some(members),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chat_schema::frame::DEFAULT_MAX_FRAME;
    use chat_schema::request::{Request as WireRequest, encode_request};

    use super::*;
    use crate::command::LoginInfo;
    use crate::model::{HistoryPage, Member};

    const MAX: usize = DEFAULT_MAX_FRAME;

    fn req(id: u64, command: Command) -> Request {
        Request { id, command }
    }

    /// The bytes a client sends for `request`, from the shared encoder.
    fn wire(request: &Request) -> Vec<u8> {
        encode_request(request.id, &wire_request(&request.command))
    }

    /// `command` as a client writes it: an actor of `None` is `user_id` 0,
    /// a conversation is a peer id or a group id, an absent option is 0.
    fn wire_request(command: &Command) -> WireRequest<'_> {
        let a = |actor: &Option<UserId>| actor.unwrap_or(0);
        match command {
            Command::Register { name, password } => WireRequest::Register { name, password },
            Command::Login { user, password } => WireRequest::Login {
                user_id: *user,
                password,
            },
            Command::Logout { actor } => WireRequest::Logout { user_id: a(actor) },
            Command::AddFriend { actor, friend } => WireRequest::AddFriend {
                user_id: a(actor),
                friend_id: *friend,
            },
            Command::CreateGroup {
                actor,
                name,
                description,
            } => WireRequest::CreateGroup {
                user_id: a(actor),
                name,
                description,
            },
            Command::JoinGroup { actor, group } => WireRequest::JoinGroup {
                user_id: a(actor),
                group_id: *group,
            },
            Command::DirectMessage { actor, to, text } => WireRequest::DirectMessage {
                user_id: a(actor),
                to_id: *to,
                text,
            },
            Command::GroupMessage { actor, group, text } => WireRequest::GroupMessage {
                user_id: a(actor),
                group_id: *group,
                text,
            },
            Command::RemoveFriend { actor, friend } => WireRequest::RemoveFriend {
                user_id: a(actor),
                friend_id: *friend,
            },
            Command::LeaveGroup { actor, group } => WireRequest::LeaveGroup {
                user_id: a(actor),
                group_id: *group,
            },
            Command::RemoveMember {
                actor,
                group,
                member,
            } => WireRequest::RemoveMember {
                user_id: a(actor),
                group_id: *group,
                member_id: *member,
            },
            Command::GroupInfo { actor, group } => WireRequest::GroupInfo {
                user_id: a(actor),
                group_id: *group,
            },
            Command::FindUser { name } => WireRequest::FindUser { name },
            Command::History {
                actor,
                conversation,
                before,
                limit,
            } => {
                let (peer_id, group_id) = conversation_ids(*conversation);
                WireRequest::History {
                    user_id: a(actor),
                    peer_id,
                    group_id,
                    before: before.unwrap_or(0),
                    limit: limit.unwrap_or(0),
                }
            }
            Command::MarkRead {
                actor,
                conversation,
                up_to,
            } => {
                let (peer_id, group_id) = conversation_ids(*conversation);
                WireRequest::MarkRead {
                    user_id: a(actor),
                    peer_id,
                    group_id,
                    up_to: *up_to,
                }
            }
            Command::Readers {
                actor,
                group,
                message,
            } => WireRequest::Readers {
                user_id: a(actor),
                group_id: *group,
                message_id: *message,
            },
            Command::DeliveryAck { up_to, quiet } => WireRequest::DeliveryAck {
                message_id: *up_to,
                quiet: *quiet,
            },
            Command::Ping => WireRequest::Ping,
            Command::Load => WireRequest::Load,
        }
    }

    /// A frame holding whatever `build` puts in the envelope's body.
    fn raw_frame(
        request_id: u64,
        build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> Option<Body>,
    ) -> Vec<u8> {
        let mut b = FlatBufferBuilder::new();
        let body = build(&mut b);
        let env = fb::Envelope::create(
            &mut b,
            &fb::EnvelopeArgs {
                request_id,
                body_type: body.map_or(fb::Body::NONE, |(t, _)| t),
                body: body.map(|(_, o)| o),
            },
        );
        frame::finish(&mut b, env).to_vec()
    }

    /// Decodes everything in `stream`, fed to the decoder in pieces of
    /// `chunk` bytes the way a socket might deliver it.
    fn decode_all(stream: &[u8], chunk: usize) -> Vec<Decoded> {
        crate::protocol::decode_in_chunks(
            crate::protocol::Decoder::FlatBuffers(FrameDecoder::new(MAX)),
            stream,
            chunk,
        )
    }

    fn decode_one(frame: &[u8]) -> Decoded {
        let (n, unit) = FrameDecoder::new(MAX).decode(frame);
        assert_eq!(n, frame.len(), "the whole frame is consumed");
        unit.expect("a complete frame decodes")
    }

    fn invalid(request_id: u64, kind: RequestKind, message: &str) -> Decoded {
        Decoded::Invalid {
            request_id,
            kind,
            failure: Failure::new(ErrorCode::BadRequest, message),
        }
    }

    /// Splits what an encoder wrote into frames and verifies each envelope.
    fn envelopes(out: &[u8]) -> Vec<fb::Envelope<'_>> {
        let mut rest = out;
        let mut envs = Vec::new();
        while !rest.is_empty() {
            let len = frame::frame_len(rest, MAX).unwrap().unwrap();
            let (f, tail) = rest.split_at(PREFIX_LEN + len);
            envs.push(frame::parse_frame(f, MAX).unwrap());
            rest = tail;
        }
        envs
    }

    fn every_request() -> Vec<Request> {
        vec![
            req(
                1,
                Command::Register {
                    name: "alice".into(),
                    password: "123456".into(),
                },
            ),
            req(
                2,
                Command::Login {
                    user: 1,
                    password: "123456".into(),
                },
            ),
            req(3, Command::Logout { actor: None }),
            req(4, Command::Logout { actor: Some(1) }),
            req(
                5,
                Command::AddFriend {
                    actor: Some(1),
                    friend: 2,
                },
            ),
            req(
                6,
                Command::CreateGroup {
                    actor: None,
                    name: "rustaceans".into(),
                    description: "crabs only".into(),
                },
            ),
            req(
                7,
                Command::JoinGroup {
                    actor: Some(1),
                    group: 9,
                },
            ),
            req(
                8,
                Command::DirectMessage {
                    actor: None,
                    to: 2,
                    text: "he said \"hi\" — 你好 🦀".into(),
                },
            ),
            req(
                9,
                Command::GroupMessage {
                    actor: Some(1),
                    group: 9,
                    text: String::new(),
                },
            ),
            req(
                u64::MAX,
                Command::DeliveryAck {
                    up_to: 41,
                    quiet: false,
                },
            ),
            req(
                7,
                Command::DeliveryAck {
                    up_to: 42,
                    quiet: true,
                },
            ),
            req(11, Command::Ping),
            req(
                12,
                Command::RemoveFriend {
                    actor: None,
                    friend: 2,
                },
            ),
            req(
                13,
                Command::RemoveFriend {
                    actor: Some(1),
                    friend: 2,
                },
            ),
            req(
                14,
                Command::LeaveGroup {
                    actor: Some(1),
                    group: 9,
                },
            ),
            req(
                15,
                Command::RemoveMember {
                    actor: None,
                    group: 9,
                    member: 3,
                },
            ),
            req(
                16,
                Command::GroupInfo {
                    actor: Some(1),
                    group: 9,
                },
            ),
            req(
                17,
                Command::FindUser {
                    name: "bob 🦀".into(),
                },
            ),
            req(
                18,
                Command::FindUser {
                    name: String::new(),
                },
            ),
            req(
                19,
                Command::History {
                    actor: None,
                    conversation: Conversation::Direct(2),
                    before: None,
                    limit: None,
                },
            ),
            req(
                20,
                Command::History {
                    actor: Some(1),
                    conversation: Conversation::Group(9),
                    before: Some(u64::MAX),
                    limit: Some(200),
                },
            ),
            req(
                21,
                Command::MarkRead {
                    actor: None,
                    conversation: Conversation::Direct(2),
                    up_to: 41,
                },
            ),
            req(
                22,
                Command::MarkRead {
                    actor: Some(1),
                    conversation: Conversation::Group(9),
                    up_to: 0,
                },
            ),
            req(
                23,
                Command::Readers {
                    actor: Some(1),
                    group: 9,
                    message: 41,
                },
            ),
        ]
    }

    #[test]
    fn every_request_kind_round_trips() {
        for request in every_request() {
            assert_eq!(decode_one(&wire(&request)), Decoded::Request(request));
        }
    }

    #[test]
    fn a_session_arriving_byte_by_byte_decodes_in_order() {
        let requests = every_request();
        let stream: Vec<u8> = requests.iter().flat_map(wire).collect();
        for chunk in [1, 3, 7, 64, stream.len()] {
            let units = decode_all(&stream, chunk);
            let expected: Vec<Decoded> = requests.iter().cloned().map(Decoded::Request).collect();
            assert_eq!(units, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn a_plain_buffer_with_its_length_prepended_is_accepted_too() {
        let mut b = FlatBufferBuilder::new();
        let p = fb::PingRequest::create(&mut b, &fb::PingRequestArgs {});
        let env = fb::Envelope::create(
            &mut b,
            &fb::EnvelopeArgs {
                request_id: u64::MAX,
                body_type: fb::Body::PingRequest,
                body: Some(p.as_union_value()),
            },
        );
        b.finish(env, None);
        let body = b.finished_data();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        assert_eq!(
            decode_one(&frame),
            Decoded::Request(req(u64::MAX, Command::Ping))
        );
    }

    #[test]
    fn a_truncated_frame_waits_for_more() {
        let frame = wire(&req(1, Command::Ping));
        let mut d = FrameDecoder::new(MAX);
        for cut in 0..frame.len() {
            assert_eq!(d.decode(&frame[..cut]), (0, None), "cut at {cut}");
        }
        assert!(matches!(
            d.decode(&frame),
            (n, Some(Decoded::Request(_))) if n == frame.len()
        ));
    }

    #[test]
    fn a_length_over_the_limit_is_fatal_before_the_body_arrives() {
        let mut d = FrameDecoder::new(1024);
        let (n, unit) = d.decode(&1025u32.to_le_bytes());
        assert_eq!(n, 0);
        let Some(Decoded::Fatal(f)) = unit else {
            panic!("expected Fatal, got {unit:?}");
        };
        assert_eq!(f.code, ErrorCode::FrameTooLarge);
        assert!(f.message.contains("1025"), "{}", f.message);
        // Fatal is final: the decoder never reads on.
        let frame = wire(&req(1, Command::Ping));
        assert_eq!(d.decode(&frame), (0, Some(Decoded::Fatal(f))));
    }

    #[test]
    fn an_empty_frame_is_fatal() {
        let (n, unit) = FrameDecoder::new(MAX).decode(&[0, 0, 0, 0, 1, 2]);
        assert_eq!(n, 0);
        assert!(matches!(
            unit,
            Some(Decoded::Fatal(Failure {
                code: ErrorCode::BadRequest,
                ..
            }))
        ));
    }

    #[test]
    fn garbage_in_a_frame_is_refused_and_the_stream_stays_in_sync() {
        let mut stream = 32u32.to_le_bytes().to_vec();
        stream.extend_from_slice(&[0xff; 32]);
        let ping = req(5, Command::Ping);
        stream.extend_from_slice(&wire(&ping));
        let units = decode_all(&stream, 1);
        assert_eq!(units.len(), 2);
        let Decoded::Invalid {
            request_id: 0,
            kind: RequestKind::Unknown,
            failure,
        } = &units[0]
        else {
            panic!("expected Invalid, got {:?}", units[0]);
        };
        assert_eq!(failure.code, ErrorCode::BadRequest);
        assert!(
            failure
                .message
                .starts_with("invalid FlatBuffers envelope: "),
            "{}",
            failure.message
        );
        assert!(!failure.message.contains('\n'));
        assert_eq!(units[1], Decoded::Request(ping));
    }

    #[test]
    fn text_that_is_not_utf8_fails_the_verifier() {
        let frame = raw_frame(3, |b| {
            let bytes = b.create_byte_string(&[b'h', 0xff, 0xfe]);
            let text = WIPOffset::<&str>::new(bytes.value());
            let r = fb::DirectMessageRequest::create(
                b,
                &fb::DirectMessageRequestArgs {
                    user_id: 0,
                    to_id: 2,
                    text: Some(text),
                },
            );
            Some((fb::Body::DirectMessageRequest, r.as_union_value()))
        });
        let Decoded::Invalid {
            request_id: 0,
            failure,
            ..
        } = decode_one(&frame)
        else {
            panic!("expected Invalid");
        };
        assert!(failure.message.contains("Utf8"), "{}", failure.message);
    }

    #[test]
    fn a_frame_cut_short_inside_fails_the_verifier() {
        let mut frame = wire(&req(
            3,
            Command::DirectMessage {
                actor: None,
                to: 2,
                text: "a long enough message to be cut".into(),
            },
        ));
        // Claim a shorter frame: the string now runs past the buffer's end.
        let short = frame.len() - PREFIX_LEN - 16;
        frame.truncate(PREFIX_LEN + short);
        frame[..PREFIX_LEN].copy_from_slice(&(short as u32).to_le_bytes());
        assert!(matches!(
            decode_one(&frame),
            Decoded::Invalid {
                request_id: 0,
                kind: RequestKind::Unknown,
                ..
            }
        ));
    }

    #[test]
    fn a_reply_or_push_sent_to_the_node_is_not_a_request() {
        let mut out = Vec::new();
        FrameEncoder::new().reply(7, RequestKind::Ping, &Reply::Pong { time_ms: 1 }, &mut out);
        assert_eq!(
            decode_one(&out),
            invalid(7, RequestKind::Unknown, "PingReply is not a request")
        );
        let push = raw_frame(6, |b| {
            let p = fb::FriendRemovedPush::create(b, &fb::FriendRemovedPushArgs { friend_id: 2 });
            Some((fb::Body::FriendRemovedPush, p.as_union_value()))
        });
        assert_eq!(
            decode_one(&push),
            invalid(
                6,
                RequestKind::Unknown,
                "FriendRemovedPush is not a request"
            )
        );
        let empty = raw_frame(8, |_| None);
        assert_eq!(
            decode_one(&empty),
            invalid(8, RequestKind::Unknown, "envelope has no body")
        );
        let unknown = raw_frame(9, |b| {
            let p = fb::PingRequest::create(b, &fb::PingRequestArgs {});
            Some((fb::Body(200), p.as_union_value()))
        });
        assert_eq!(
            decode_one(&unknown),
            invalid(9, RequestKind::Unknown, "unknown body type 200")
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let login = raw_frame(1, |b| {
            let r = fb::LoginRequest::create(
                b,
                &fb::LoginRequestArgs {
                    user_id: 3,
                    password: None,
                },
            );
            Some((fb::Body::LoginRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&login),
            invalid(1, RequestKind::Login, "missing field `password`")
        );

        let register = raw_frame(2, |b| {
            let password = b.create_string("pw");
            let r = fb::RegisterRequest::create(
                b,
                &fb::RegisterRequestArgs {
                    name: None,
                    password: Some(password),
                },
            );
            Some((fb::Body::RegisterRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&register),
            invalid(2, RequestKind::Register, "missing field `name`")
        );

        let register = raw_frame(2, |b| {
            let name = b.create_string("bob");
            let r = fb::RegisterRequest::create(
                b,
                &fb::RegisterRequestArgs {
                    name: Some(name),
                    password: None,
                },
            );
            Some((fb::Body::RegisterRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&register),
            invalid(2, RequestKind::Register, "missing field `password`")
        );

        let direct = raw_frame(3, |b| {
            let r = fb::DirectMessageRequest::create(
                b,
                &fb::DirectMessageRequestArgs {
                    user_id: 0,
                    to_id: 2,
                    text: None,
                },
            );
            Some((fb::Body::DirectMessageRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&direct),
            invalid(3, RequestKind::DirectMessage, "missing field `text`")
        );

        let group = raw_frame(4, |b| {
            let r = fb::GroupMessageRequest::create(
                b,
                &fb::GroupMessageRequestArgs {
                    user_id: 0,
                    group_id: 2,
                    text: None,
                },
            );
            Some((fb::Body::GroupMessageRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&group),
            invalid(4, RequestKind::GroupMessage, "missing field `text`")
        );

        let create = raw_frame(5, |b| {
            let r = fb::CreateGroupRequest::create(
                b,
                &fb::CreateGroupRequestArgs {
                    user_id: 1,
                    name: None,
                    description: None,
                },
            );
            Some((fb::Body::CreateGroupRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&create),
            invalid(5, RequestKind::CreateGroup, "missing field `name`")
        );

        let find = raw_frame(6, |b| {
            let r = fb::FindUserRequest::create(b, &fb::FindUserRequestArgs { name: None });
            Some((fb::Body::FindUserRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&find),
            invalid(6, RequestKind::FindUser, "missing field `name`")
        );
    }

    #[test]
    fn new_requests_take_their_fields_and_default_the_actor() {
        // Fields left out read as 0: `user_id` 0 is the session's user, the
        // other ids go to the handlers as they are (which refuse id 0).
        let remove = raw_frame(7, |b| {
            let r = fb::RemoveMemberRequest::create(
                b,
                &fb::RemoveMemberRequestArgs {
                    user_id: 0,
                    group_id: 4,
                    member_id: 0,
                },
            );
            Some((fb::Body::RemoveMemberRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&remove),
            Decoded::Request(req(
                7,
                Command::RemoveMember {
                    actor: None,
                    group: 4,
                    member: 0,
                }
            ))
        );
        let leave = raw_frame(8, |b| {
            let r = fb::LeaveGroupRequest::create(b, &fb::LeaveGroupRequestArgs::default());
            Some((fb::Body::LeaveGroupRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&leave),
            Decoded::Request(req(
                8,
                Command::LeaveGroup {
                    actor: None,
                    group: 0,
                }
            ))
        );
        assert_eq!(
            decode_one(&wire(&req(
                0,
                Command::GroupInfo {
                    actor: None,
                    group: 1
                }
            ))),
            invalid(
                0,
                RequestKind::GroupInfo,
                "request_id must be non-zero (0 is reserved for pushes)"
            )
        );
    }

    #[test]
    fn a_group_without_description_gets_an_empty_one() {
        let create = raw_frame(5, |b| {
            let name = b.create_string("g");
            let r = fb::CreateGroupRequest::create(
                b,
                &fb::CreateGroupRequestArgs {
                    user_id: 0,
                    name: Some(name),
                    description: None,
                },
            );
            Some((fb::Body::CreateGroupRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&create),
            Decoded::Request(req(
                5,
                Command::CreateGroup {
                    actor: None,
                    name: "g".into(),
                    description: String::new(),
                }
            ))
        );
    }

    #[test]
    fn login_needs_a_user_id_and_requests_need_an_id() {
        let login = wire(&req(
            1,
            Command::Login {
                user: 0,
                password: "pw".into(),
            },
        ));
        assert_eq!(
            decode_one(&login),
            invalid(
                1,
                RequestKind::Login,
                "field `user_id` must be a non-zero user id"
            )
        );
        assert_eq!(
            decode_one(&wire(&req(0, Command::Ping))),
            invalid(
                0,
                RequestKind::Ping,
                "request_id must be non-zero (0 is reserved for pushes)"
            )
        );
    }

    #[test]
    fn error_codes_have_the_schema_numbers() {
        let all = [
            (
                ErrorCode::InvalidCredentials,
                fb::ErrorCode::InvalidCredentials,
            ),
            (ErrorCode::AlreadyOnline, fb::ErrorCode::AlreadyOnline),
            (ErrorCode::NameTaken, fb::ErrorCode::NameTaken),
            (ErrorCode::NotLoggedIn, fb::ErrorCode::NotLoggedIn),
            (ErrorCode::Forbidden, fb::ErrorCode::Forbidden),
            (ErrorCode::UnknownUser, fb::ErrorCode::UnknownUser),
            (ErrorCode::UnknownGroup, fb::ErrorCode::UnknownGroup),
            (ErrorCode::NotAMember, fb::ErrorCode::NotAMember),
            (ErrorCode::AlreadyMember, fb::ErrorCode::AlreadyMember),
            (ErrorCode::AlreadyFriends, fb::ErrorCode::AlreadyFriends),
            (ErrorCode::SelfFriend, fb::ErrorCode::SelfFriend),
            (ErrorCode::TextTooLong, fb::ErrorCode::TextTooLong),
            (ErrorCode::BadRequest, fb::ErrorCode::BadRequest),
            (ErrorCode::FrameTooLarge, fb::ErrorCode::FrameTooLarge),
            (ErrorCode::AlreadyLoggedIn, fb::ErrorCode::AlreadyLoggedIn),
            (ErrorCode::InvalidName, fb::ErrorCode::InvalidName),
            (ErrorCode::Internal, fb::ErrorCode::Internal),
            (ErrorCode::Overloaded, fb::ErrorCode::Overloaded),
            (ErrorCode::RateLimited, fb::ErrorCode::RateLimited),
            (ErrorCode::MailboxFull, fb::ErrorCode::MailboxFull),
            (ErrorCode::LimitReached, fb::ErrorCode::LimitReached),
            (ErrorCode::NotFriends, fb::ErrorCode::NotFriends),
            (ErrorCode::NotCreator, fb::ErrorCode::NotCreator),
        ];
        assert_eq!(all.len() + 1, fb::ErrorCode::ENUM_VALUES.len());
        let mut e = FrameEncoder::new();
        for (code, expected) in all {
            let mut out = Vec::new();
            let failure = Failure::new(code, code.name());
            e.reply(3, RequestKind::Login, &Reply::Error(failure), &mut out);
            let envs = envelopes(&out);
            let r = envs[0].body_as_error_reply().unwrap();
            assert_eq!(envs[0].request_id(), 3);
            assert_eq!(r.code(), expected);
            assert_eq!(r.message(), Some(code.name()));
        }
    }

    fn message(id: u64, group_id: u64, text: &str) -> StoredMessage {
        StoredMessage {
            id,
            sender_id: 2,
            sender_name: "bob".into(),
            recipient_id: if group_id == 0 { 1 } else { 0 },
            group_id,
            time_ms: 1_700_000_000_000 + id,
            text: text.into(),
        }
    }

    #[test]
    fn login_reply_is_followed_by_the_pending_messages_oldest_first() {
        let info = LoginInfo {
            user: 1,
            name: "alice".into(),
            more_groups: 0,
            friends: vec![
                Contact {
                    id: 2,
                    name: "bob".into(),
                    online: true,
                },
                Contact {
                    id: 3,
                    name: "carol".into(),
                    online: false,
                },
            ],
            groups: vec![GroupInfo {
                id: 9,
                name: "rustaceans".into(),
                description: "crabs".into(),
                members: vec![
                    Member {
                        id: 1,
                        name: "alice".into(),
                        online: true,
                        role: Role::Creator,
                    },
                    Member {
                        id: 2,
                        name: "bob".into(),
                        online: true,
                        role: Role::Normal,
                    },
                ],
            }],
            pending: vec![
                message(10, 0, "while you were out"),
                message(11, 9, "group hi"),
            ],
            unread: vec![],
        };
        let mut out = Vec::new();
        FrameEncoder::new().reply(
            4,
            RequestKind::Login,
            &Reply::LoggedIn(Box::new(info)),
            &mut out,
        );
        let envs = envelopes(&out);
        assert_eq!(envs.len(), 3);

        assert_eq!(envs[0].request_id(), 4);
        let r = envs[0].body_as_login_reply().unwrap();
        assert_eq!((r.user_id(), r.name(), r.pending()), (1, Some("alice"), 2));
        assert!(
            r.unread().is_none(),
            "no unread vector when nothing is unread"
        );
        let friends: Vec<_> = r
            .friends()
            .unwrap()
            .iter()
            .map(|u| (u.id(), u.name().unwrap(), u.online()))
            .collect();
        assert_eq!(friends, [(2, "bob", true), (3, "carol", false)]);
        let groups = r.groups().unwrap();
        assert_eq!(groups.len(), 1);
        let g = groups.get(0);
        assert_eq!(
            (g.id(), g.name(), g.description()),
            (9, Some("rustaceans"), Some("crabs"))
        );
        let members: Vec<_> = g
            .members()
            .unwrap()
            .iter()
            .map(|m| (m.id(), m.name().unwrap(), m.online(), m.role()))
            .collect();
        assert_eq!(
            members,
            [
                (1, "alice", true, fb::Role::Creator),
                (2, "bob", true, fb::Role::Normal)
            ]
        );

        for (env, (id, group, text)) in envs[1..]
            .iter()
            .zip([(10, 0, "while you were out"), (11, 9, "group hi")])
        {
            assert_eq!(env.request_id(), 0, "pushes carry request id 0");
            let m = env.body_as_message_push().unwrap().message().unwrap();
            assert_eq!((m.id(), m.group_id(), m.text()), (id, group, Some(text)));
            assert_eq!((m.sender_id(), m.sender_name()), (2, Some("bob")));
            assert_eq!(m.time_ms(), 1_700_000_000_000 + id);
        }
    }

    #[test]
    fn every_reply_has_its_own_body() {
        let group = GroupInfo {
            id: 9,
            name: "g".into(),
            description: String::new(),
            members: vec![],
        };
        let cases = [
            (
                RequestKind::Register,
                Reply::Registered { user: 5 },
                fb::Body::RegisterReply,
            ),
            (RequestKind::Logout, Reply::LoggedOut, fb::Body::LogoutReply),
            (
                RequestKind::AddFriend,
                Reply::FriendAdded(Contact {
                    id: 2,
                    name: "bob".into(),
                    online: true,
                }),
                fb::Body::AddFriendReply,
            ),
            (
                RequestKind::CreateGroup,
                Reply::GroupCreated { group: 9 },
                fb::Body::CreateGroupReply,
            ),
            (
                RequestKind::JoinGroup,
                Reply::GroupJoined(group),
                fb::Body::JoinGroupReply,
            ),
            (
                RequestKind::DirectMessage,
                Reply::MessageSent {
                    id: 12,
                    time_ms: 99,
                },
                fb::Body::DirectMessageReply,
            ),
            (
                RequestKind::GroupMessage,
                Reply::MessageSent {
                    id: 13,
                    time_ms: 99,
                },
                fb::Body::GroupMessageReply,
            ),
            (
                RequestKind::DeliveryAck,
                Reply::Acked,
                fb::Body::DeliveryAckReply,
            ),
            (
                RequestKind::Ping,
                Reply::Pong { time_ms: 77 },
                fb::Body::PingReply,
            ),
            (
                RequestKind::RemoveFriend,
                Reply::FriendRemoved,
                fb::Body::RemoveFriendReply,
            ),
            (
                RequestKind::LeaveGroup,
                Reply::GroupLeft,
                fb::Body::LeaveGroupReply,
            ),
            (
                RequestKind::RemoveMember,
                Reply::MemberRemoved,
                fb::Body::RemoveMemberReply,
            ),
            (
                RequestKind::GroupInfo,
                Reply::Group(GroupInfo {
                    id: 9,
                    name: "g".into(),
                    description: String::new(),
                    members: vec![],
                }),
                fb::Body::GroupInfoReply,
            ),
            (
                RequestKind::FindUser,
                Reply::UserFound(Contact {
                    id: 2,
                    name: "bob".into(),
                    online: false,
                }),
                fb::Body::FindUserReply,
            ),
            (
                RequestKind::History,
                Reply::History(HistoryPage::default()),
                fb::Body::HistoryReply,
            ),
            (
                RequestKind::MarkRead,
                Reply::MarkedRead,
                fb::Body::MarkReadReply,
            ),
            (
                RequestKind::Readers,
                Reply::Readers {
                    readers: 2,
                    members: 5,
                },
                fb::Body::ReadersReply,
            ),
        ];
        let mut e = FrameEncoder::new();
        for (i, (kind, reply, body)) in cases.into_iter().enumerate() {
            let mut out = Vec::new();
            e.reply(100 + i as u64, kind, &reply, &mut out);
            let envs = envelopes(&out);
            assert_eq!(envs.len(), 1);
            assert_eq!(envs[0].request_id(), 100 + i as u64);
            assert_eq!(envs[0].body_type(), body, "{reply:?}");
        }

        let mut out = Vec::new();
        e.reply(1, RequestKind::AddFriend, &cases_friend(), &mut out);
        let f = envelopes(&out)[0]
            .body_as_add_friend_reply()
            .unwrap()
            .friend()
            .unwrap();
        assert_eq!((f.id(), f.name(), f.online()), (2, Some("bob"), false));

        out.clear();
        let sent = Reply::MessageSent {
            id: 13,
            time_ms: 99,
        };
        e.reply(1, RequestKind::GroupMessage, &sent, &mut out);
        let r = envelopes(&out)[0].body_as_group_message_reply().unwrap();
        assert_eq!((r.message_id(), r.time_ms()), (13, 99));
    }

    #[test]
    fn group_info_and_find_user_replies_carry_their_tables() {
        let info = GroupInfo {
            id: 9,
            name: "rustaceans".into(),
            description: "crabs".into(),
            members: vec![
                Member {
                    id: 1,
                    name: "alice".into(),
                    online: true,
                    role: Role::Creator,
                },
                Member {
                    id: 3,
                    name: "carol".into(),
                    online: false,
                    role: Role::Normal,
                },
            ],
        };
        let mut e = FrameEncoder::new();
        let mut out = Vec::new();
        e.reply(21, RequestKind::GroupInfo, &Reply::Group(info), &mut out);
        let envs = envelopes(&out);
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].request_id(), 21);
        let g = envs[0].body_as_group_info_reply().unwrap().group().unwrap();
        assert_eq!(
            (g.id(), g.name(), g.description()),
            (9, Some("rustaceans"), Some("crabs"))
        );
        let members: Vec<_> = g
            .members()
            .unwrap()
            .iter()
            .map(|m| (m.id(), m.name().unwrap(), m.online(), m.role()))
            .collect();
        assert_eq!(
            members,
            [
                (1, "alice", true, fb::Role::Creator),
                (3, "carol", false, fb::Role::Normal)
            ]
        );

        out.clear();
        let found = Reply::UserFound(Contact {
            id: 7,
            name: "dave".into(),
            online: true,
        });
        e.reply(22, RequestKind::FindUser, &found, &mut out);
        let envs = envelopes(&out);
        assert_eq!(envs[0].request_id(), 22);
        let u = envs[0].body_as_find_user_reply().unwrap().user().unwrap();
        assert_eq!((u.id(), u.name(), u.online()), (7, Some("dave"), true));
    }

    #[test]
    fn conversation_requests_name_exactly_one_conversation() {
        let history = |peer_id, group_id| {
            raw_frame(30, move |b| {
                let r = fb::HistoryRequest::create(
                    b,
                    &fb::HistoryRequestArgs {
                        user_id: 0,
                        peer_id,
                        group_id,
                        before: 0,
                        limit: 0,
                    },
                );
                Some((fb::Body::HistoryRequest, r.as_union_value()))
            })
        };
        let mark_read = |peer_id, group_id| {
            raw_frame(31, move |b| {
                let r = fb::MarkReadRequest::create(
                    b,
                    &fb::MarkReadRequestArgs {
                        user_id: 0,
                        peer_id,
                        group_id,
                        up_to: 7,
                    },
                );
                Some((fb::Body::MarkReadRequest, r.as_union_value()))
            })
        };
        let message = "exactly one of `peer_id` and `group_id` must be non-zero";
        for (peer, group) in [(0, 0), (2, 9)] {
            assert_eq!(
                decode_one(&history(peer, group)),
                invalid(30, RequestKind::History, message)
            );
            assert_eq!(
                decode_one(&mark_read(peer, group)),
                invalid(31, RequestKind::MarkRead, message)
            );
        }
        // `before` 0 is "from the newest", `limit` 0 "the default": the
        // handler applies the default and the bounds.
        assert_eq!(
            decode_one(&history(0, 9)),
            Decoded::Request(req(
                30,
                Command::History {
                    actor: None,
                    conversation: Conversation::Group(9),
                    before: None,
                    limit: None,
                }
            ))
        );
        assert_eq!(
            decode_one(&mark_read(2, 0)),
            Decoded::Request(req(
                31,
                Command::MarkRead {
                    actor: None,
                    conversation: Conversation::Direct(2),
                    up_to: 7,
                }
            ))
        );
        // A limit over the maximum goes to the handler as it is.
        let big = raw_frame(32, |b| {
            let r = fb::HistoryRequest::create(
                b,
                &fb::HistoryRequestArgs {
                    user_id: 1,
                    peer_id: 2,
                    group_id: 0,
                    before: 100,
                    limit: 10_000,
                },
            );
            Some((fb::Body::HistoryRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&big),
            Decoded::Request(req(
                32,
                Command::History {
                    actor: Some(1),
                    conversation: Conversation::Direct(2),
                    before: Some(100),
                    limit: Some(10_000),
                }
            ))
        );
        let readers = raw_frame(33, |b| {
            let r = fb::ReadersRequest::create(b, &fb::ReadersRequestArgs::default());
            Some((fb::Body::ReadersRequest, r.as_union_value()))
        });
        assert_eq!(
            decode_one(&readers),
            Decoded::Request(req(
                33,
                Command::Readers {
                    actor: None,
                    group: 0,
                    message: 0,
                }
            ))
        );
    }

    #[test]
    fn history_and_readers_replies_carry_their_fields() {
        let page = HistoryPage {
            messages: vec![message(12, 0, "newest"), message(10, 0, "older")],
            more: true,
            read_up_to: 10,
        };
        let mut e = FrameEncoder::new();
        let mut out = Vec::new();
        e.reply(40, RequestKind::History, &Reply::History(page), &mut out);
        let envs = envelopes(&out);
        assert_eq!(envs.len(), 1, "a history page is one frame, no pushes");
        assert_eq!(envs[0].request_id(), 40);
        let r = envs[0].body_as_history_reply().unwrap();
        assert_eq!((r.more(), r.read_up_to()), (true, 10));
        let got: Vec<_> = r
            .messages()
            .unwrap()
            .iter()
            .map(|m| (m.id(), m.sender_id(), m.recipient_id(), m.text().unwrap()))
            .collect();
        assert_eq!(got, [(12, 2, 1, "newest"), (10, 2, 1, "older")]);
        let m = r.messages().unwrap().get(0);
        assert_eq!(
            (m.sender_name(), m.group_id(), m.time_ms()),
            (Some("bob"), 0, 1_700_000_000_012)
        );

        out.clear();
        e.reply(
            41,
            RequestKind::History,
            &Reply::History(HistoryPage::default()),
            &mut out,
        );
        let r = envelopes(&out)[0].body_as_history_reply().unwrap();
        assert_eq!(r.messages().map(|v| v.len()), Some(0));
        assert_eq!((r.more(), r.read_up_to()), (false, 0));

        out.clear();
        let readers = Reply::Readers {
            readers: 3,
            members: u64::MAX,
        };
        e.reply(42, RequestKind::Readers, &readers, &mut out);
        let r = envelopes(&out)[0].body_as_readers_reply().unwrap();
        assert_eq!((r.readers(), r.members()), (3, u32::MAX));
    }

    #[test]
    fn login_reply_lists_unread_conversations() {
        let info = LoginInfo {
            user: 1,
            name: "alice".into(),
            more_groups: 0,
            friends: vec![],
            groups: vec![],
            pending: vec![message(10, 0, "hi")],
            unread: vec![
                Unread {
                    conversation: Conversation::Direct(2),
                    count: 3,
                },
                Unread {
                    conversation: Conversation::Group(9),
                    count: crate::model::UNREAD_CAP,
                },
            ],
        };
        let mut out = Vec::new();
        FrameEncoder::new().reply(
            4,
            RequestKind::Login,
            &Reply::LoggedIn(Box::new(info)),
            &mut out,
        );
        let envs = envelopes(&out);
        assert_eq!(envs.len(), 2, "the reply, then its pending message");
        let r = envs[0].body_as_login_reply().unwrap();
        let unread: Vec<_> = r
            .unread()
            .unwrap()
            .iter()
            .map(|u| (u.peer_id(), u.group_id(), u.count()))
            .collect();
        assert_eq!(unread, [(2, 0, 3), (0, 9, 999)]);
        assert_eq!(r.pending(), 1);
        assert_eq!(r.friends().map(|v| v.len()), Some(0));
    }

    fn cases_friend() -> Reply {
        Reply::FriendAdded(Contact {
            id: 2,
            name: "bob".into(),
            online: false,
        })
    }

    #[test]
    fn pushes_carry_request_id_zero() {
        let mut e = FrameEncoder::new();
        let mut out = Vec::new();
        assert!(e.push(
            &Push::Presence {
                user: 2,
                name: "bob".into(),
                online: true
            },
            &mut out
        ));
        assert!(e.push(&Push::Message(Arc::new(message(5, 0, "hi"))), &mut out));
        let envs = envelopes(&out);
        assert_eq!(envs.len(), 2);
        let p = envs[0].body_as_presence_push().unwrap();
        assert_eq!(
            (envs[0].request_id(), p.user_id(), p.name(), p.online()),
            (0, 2, Some("bob"), true)
        );
        let m = envs[1].body_as_message_push().unwrap().message().unwrap();
        assert_eq!((envs[1].request_id(), m.id(), m.recipient_id()), (0, 5, 1));

        out.clear();
        assert!(e.push(&Push::RemovedFromGroup { group: 9 }, &mut out));
        assert!(e.push(&Push::FriendRemoved { friend: 4 }, &mut out));
        let envs = envelopes(&out);
        assert_eq!(envs.len(), 2);
        let p = envs[0].body_as_removed_from_group_push().unwrap();
        assert_eq!((envs[0].request_id(), p.group_id()), (0, 9));
        let p = envs[1].body_as_friend_removed_push().unwrap();
        assert_eq!((envs[1].request_id(), p.friend_id()), (0, 4));

        out.clear();
        let receipt = Push::ReadReceipt {
            reader: 7,
            peer: 1,
            up_to: 42,
        };
        assert!(e.push(&receipt, &mut out));
        let envs = envelopes(&out);
        assert_eq!(envs.len(), 1);
        let p = envs[0].body_as_read_receipt_push().unwrap();
        assert_eq!(
            (envs[0].request_id(), p.reader_id(), p.peer_id(), p.up_to()),
            (0, 7, 1, 42)
        );
    }

    #[test]
    fn the_reused_builder_leaves_nothing_behind() {
        let mut e = FrameEncoder::new();
        let big = Push::Message(Arc::new(message(1, 0, &"x".repeat(10_000))));
        let small = Push::Message(Arc::new(message(2, 0, "y")));
        let mut first = Vec::new();
        e.push(&small, &mut first);
        let mut out = Vec::new();
        e.push(&big, &mut out);
        out.clear();
        e.push(&small, &mut out);
        assert_eq!(out, first);
    }
}
