//! The requests a client can send, as plain values with every protocol field
//! settable (tests use this to send, say, a message with someone else's
//! `user_id`), and their encoding into size-prefixed `Envelope` frames.
//!
//! This is the one request encoder: the client library sends with it, and
//! the node's tests and fuzzers build their input with it (the node only
//! decodes requests).

use std::cell::RefCell;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::fb;

type UserId = u64;
type GroupId = u64;
type MessageId = u64;

/// One request with all its fields. `user_id` 0 means "the session's user";
/// any other value must be the logged-in user or the node answers
/// `Forbidden`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Register {
        name: &'a str,
        password: &'a str,
    },
    Login {
        user_id: UserId,
        password: &'a str,
    },
    Logout {
        user_id: UserId,
    },
    AddFriend {
        user_id: UserId,
        friend_id: UserId,
    },
    CreateGroup {
        user_id: UserId,
        name: &'a str,
        description: &'a str,
    },
    JoinGroup {
        user_id: UserId,
        group_id: GroupId,
    },
    DirectMessage {
        user_id: UserId,
        to_id: UserId,
        text: &'a str,
    },
    GroupMessage {
        user_id: UserId,
        group_id: GroupId,
        text: &'a str,
    },
    /// Acknowledges every message pushed to this session up to `message_id`;
    /// `quiet`: no reply on success (errors are still answered).
    DeliveryAck {
        message_id: MessageId,
        quiet: bool,
    },
    Ping,
    /// Ends the friendship with `friend_id`, both ways.
    RemoveFriend {
        user_id: UserId,
        friend_id: UserId,
    },
    /// Leaves a group (a creator hands the role on; a group left empty is
    /// deleted).
    LeaveGroup {
        user_id: UserId,
        group_id: GroupId,
    },
    /// The group's creator removes `member_id` from it.
    RemoveMember {
        user_id: UserId,
        group_id: GroupId,
        member_id: UserId,
    },
    /// A group's name, description and members (members only).
    GroupInfo {
        user_id: UserId,
        group_id: GroupId,
    },
    /// The user named exactly `name`.
    FindUser {
        name: &'a str,
    },
    /// A page of a conversation's history, newest first: with user
    /// `peer_id` (both directions) or in group `group_id` (exactly one
    /// non-zero, else `BadRequest`), ids below `before` (0: from the
    /// newest), at most `limit` messages (0: the node's default, 50; at most
    /// 200).
    History {
        user_id: UserId,
        peer_id: UserId,
        group_id: GroupId,
        before: MessageId,
        limit: u32,
    },
    /// Marks the conversation with `peer_id` or in `group_id` read up to
    /// message `up_to`.
    MarkRead {
        user_id: UserId,
        peer_id: UserId,
        group_id: GroupId,
        up_to: MessageId,
    },
    /// How many members of `group_id` have read it up to `message_id`.
    Readers {
        user_id: UserId,
        group_id: GroupId,
        message_id: MessageId,
    },
    /// A node's load report (no login needed).
    Load,
    /// Which node a balancer in redirect mode chooses.
    WhichNode,
}

impl Request<'_> {
    /// The union tag this request is sent with.
    pub fn body_type(&self) -> fb::Body {
        match self {
            Request::Register { .. } => fb::Body::RegisterRequest,
            Request::Login { .. } => fb::Body::LoginRequest,
            Request::Logout { .. } => fb::Body::LogoutRequest,
            Request::AddFriend { .. } => fb::Body::AddFriendRequest,
            Request::CreateGroup { .. } => fb::Body::CreateGroupRequest,
            Request::JoinGroup { .. } => fb::Body::JoinGroupRequest,
            Request::DirectMessage { .. } => fb::Body::DirectMessageRequest,
            Request::GroupMessage { .. } => fb::Body::GroupMessageRequest,
            Request::DeliveryAck { .. } => fb::Body::DeliveryAckRequest,
            Request::Ping => fb::Body::PingRequest,
            Request::RemoveFriend { .. } => fb::Body::RemoveFriendRequest,
            Request::LeaveGroup { .. } => fb::Body::LeaveGroupRequest,
            Request::RemoveMember { .. } => fb::Body::RemoveMemberRequest,
            Request::GroupInfo { .. } => fb::Body::GroupInfoRequest,
            Request::FindUser { .. } => fb::Body::FindUserRequest,
            Request::History { .. } => fb::Body::HistoryRequest,
            Request::MarkRead { .. } => fb::Body::MarkReadRequest,
            Request::Readers { .. } => fb::Body::ReadersRequest,
            Request::Load => fb::Body::LoadRequest,
            Request::WhichNode => fb::Body::WhichNodeRequest,
        }
    }

    /// Adds the request's body table to `b`.
    pub fn build<'b>(&self, b: &mut FlatBufferBuilder<'b>) -> WIPOffset<UnionWIPOffset> {
        match *self {
            Request::Register { name, password } => {
                let name = Some(b.create_string(name));
                let password = Some(b.create_string(password));
                fb::RegisterRequest::create(b, &fb::RegisterRequestArgs { name, password })
                    .as_union_value()
            }
            Request::Login { user_id, password } => {
                let password = Some(b.create_string(password));
                fb::LoginRequest::create(b, &fb::LoginRequestArgs { user_id, password })
                    .as_union_value()
            }
            Request::Logout { user_id } => {
                fb::LogoutRequest::create(b, &fb::LogoutRequestArgs { user_id }).as_union_value()
            }
            Request::AddFriend { user_id, friend_id } => {
                fb::AddFriendRequest::create(b, &fb::AddFriendRequestArgs { user_id, friend_id })
                    .as_union_value()
            }
            Request::CreateGroup {
                user_id,
                name,
                description,
            } => {
                let name = Some(b.create_string(name));
                let description = Some(b.create_string(description));
                fb::CreateGroupRequest::create(
                    b,
                    &fb::CreateGroupRequestArgs {
                        user_id,
                        name,
                        description,
                    },
                )
                .as_union_value()
            }
            Request::JoinGroup { user_id, group_id } => {
                fb::JoinGroupRequest::create(b, &fb::JoinGroupRequestArgs { user_id, group_id })
                    .as_union_value()
            }
            Request::DirectMessage {
                user_id,
                to_id,
                text,
            } => {
                let text = Some(b.create_string(text));
                fb::DirectMessageRequest::create(
                    b,
                    &fb::DirectMessageRequestArgs {
                        user_id,
                        to_id,
                        text,
                    },
                )
                .as_union_value()
            }
            Request::GroupMessage {
                user_id,
                group_id,
                text,
            } => {
                let text = Some(b.create_string(text));
                fb::GroupMessageRequest::create(
                    b,
                    &fb::GroupMessageRequestArgs {
                        user_id,
                        group_id,
                        text,
                    },
                )
                .as_union_value()
            }
            Request::DeliveryAck { message_id, quiet } => {
                fb::DeliveryAckRequest::create(b, &fb::DeliveryAckRequestArgs { message_id, quiet })
                    .as_union_value()
            }
            Request::Ping => fb::PingRequest::create(b, &fb::PingRequestArgs {}).as_union_value(),
            Request::RemoveFriend { user_id, friend_id } => fb::RemoveFriendRequest::create(
                b,
                &fb::RemoveFriendRequestArgs { user_id, friend_id },
            )
            .as_union_value(),
            Request::LeaveGroup { user_id, group_id } => {
                fb::LeaveGroupRequest::create(b, &fb::LeaveGroupRequestArgs { user_id, group_id })
                    .as_union_value()
            }
            Request::RemoveMember {
                user_id,
                group_id,
                member_id,
            } => fb::RemoveMemberRequest::create(
                b,
                &fb::RemoveMemberRequestArgs {
                    user_id,
                    group_id,
                    member_id,
                },
            )
            .as_union_value(),
            Request::GroupInfo { user_id, group_id } => {
                fb::GroupInfoRequest::create(b, &fb::GroupInfoRequestArgs { user_id, group_id })
                    .as_union_value()
            }
            Request::FindUser { name } => {
                let name = Some(b.create_string(name));
                fb::FindUserRequest::create(b, &fb::FindUserRequestArgs { name }).as_union_value()
            }
            Request::History {
                user_id,
                peer_id,
                group_id,
                before,
                limit,
            } => fb::HistoryRequest::create(
                b,
                &fb::HistoryRequestArgs {
                    user_id,
                    peer_id,
                    group_id,
                    before,
                    limit,
                },
            )
            .as_union_value(),
            Request::MarkRead {
                user_id,
                peer_id,
                group_id,
                up_to,
            } => fb::MarkReadRequest::create(
                b,
                &fb::MarkReadRequestArgs {
                    user_id,
                    peer_id,
                    group_id,
                    up_to,
                },
            )
            .as_union_value(),
            Request::Readers {
                user_id,
                group_id,
                message_id,
            } => fb::ReadersRequest::create(
                b,
                &fb::ReadersRequestArgs {
                    user_id,
                    group_id,
                    message_id,
                },
            )
            .as_union_value(),
            Request::Load => fb::LoadRequest::create(b, &fb::LoadRequestArgs {}).as_union_value(),
            Request::WhichNode => {
                fb::WhichNodeRequest::create(b, &fb::WhichNodeRequestArgs {}).as_union_value()
            }
        }
    }
}

/// Largest builder kept for reuse between frames; a bigger one (after a huge
/// message) is dropped rather than kept around.
const KEEP_BUILDER_CAPACITY: usize = 256 * 1024;

thread_local! {
    static BUILDER: RefCell<FlatBufferBuilder<'static>> =
        RefCell::new(FlatBufferBuilder::with_capacity(1024));
}

/// Encodes `request` as one frame (length prefix included) and hands the
/// bytes to `f`, reusing a per-thread builder so that no allocation is made
/// per frame.
pub fn with_encoded<R>(request_id: u64, request: &Request<'_>, f: impl FnOnce(&[u8]) -> R) -> R {
    BUILDER.with(|cell| {
        let Ok(mut b) = cell.try_borrow_mut() else {
            // Re-entered from `f` (the leading ping is encoded while the
            // first frame is queued): use a fresh builder.
            return f(&encode_request(request_id, request));
        };
        b.reset();
        let body = request.build(&mut b);
        let env = fb::Envelope::create(
            &mut b,
            &fb::EnvelopeArgs {
                request_id,
                body_type: request.body_type(),
                body: Some(body),
            },
        );
        let out = f(crate::frame::finish(&mut b, env));
        if b.mut_finished_buffer().0.len() > KEEP_BUILDER_CAPACITY {
            *b = FlatBufferBuilder::with_capacity(1024);
        }
        out
    })
}

/// Encodes `request` as one frame (length prefix included).
pub fn encode_request(request_id: u64, request: &Request<'_>) -> Vec<u8> {
    crate::frame::encode(request_id, |b| (request.body_type(), request.build(b)))
}

/// Whether `frame`, sent as the first bytes of a connection, would make the
/// node take the connection for JSON: its first byte (the low byte of the
/// length prefix) is `{`. Such a frame must be preceded by a ping.
pub fn needs_leading_ping(frame: &[u8]) -> bool {
    frame.first() == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{DEFAULT_MAX_FRAME, PREFIX_LEN, frame_len};

    /// Verifies a frame the standard way (aligned with its size prefix).
    fn envelope(frame: &[u8]) -> fb::Envelope<'_> {
        flatbuffers::size_prefixed_root::<fb::Envelope>(frame).unwrap()
    }

    fn all_requests() -> Vec<Request<'static>> {
        vec![
            Request::Register {
                name: "alice",
                password: "pw",
            },
            Request::Login {
                user_id: 7,
                password: "secret",
            },
            Request::Logout { user_id: 7 },
            Request::AddFriend {
                user_id: 0,
                friend_id: 9,
            },
            Request::CreateGroup {
                user_id: 7,
                name: "g",
                description: "d",
            },
            Request::JoinGroup {
                user_id: 7,
                group_id: 3,
            },
            Request::DirectMessage {
                user_id: 8,
                to_id: 9,
                text: "héllo: \"quoted\"",
            },
            Request::GroupMessage {
                user_id: 0,
                group_id: 3,
                text: "hi all",
            },
            Request::DeliveryAck {
                message_id: 42,
                quiet: false,
            },
            Request::DeliveryAck {
                message_id: 43,
                quiet: true,
            },
            Request::Ping,
            Request::RemoveFriend {
                user_id: 0,
                friend_id: 9,
            },
            Request::LeaveGroup {
                user_id: 7,
                group_id: 3,
            },
            Request::RemoveMember {
                user_id: 0,
                group_id: 3,
                member_id: 9,
            },
            Request::GroupInfo {
                user_id: 7,
                group_id: 3,
            },
            Request::FindUser { name: "bób 🦀" },
            Request::FindUser { name: "" },
            Request::History {
                user_id: 0,
                peer_id: 9,
                group_id: 0,
                before: 0,
                limit: 0,
            },
            Request::History {
                user_id: 7,
                peer_id: 0,
                group_id: 3,
                before: u64::MAX,
                limit: 200,
            },
            // Both ids: the node refuses it, the client sends it as asked.
            Request::History {
                user_id: 7,
                peer_id: 9,
                group_id: 3,
                before: 1,
                limit: u32::MAX,
            },
            Request::MarkRead {
                user_id: 0,
                peer_id: 9,
                group_id: 0,
                up_to: 42,
            },
            Request::MarkRead {
                user_id: 7,
                peer_id: 0,
                group_id: 3,
                up_to: 0,
            },
            Request::Readers {
                user_id: 0,
                group_id: 3,
                message_id: 42,
            },
        ]
    }

    /// Decodes a frame back into a `Request` (the node's side of the wire).
    fn decode(frame: &[u8]) -> (u64, Request<'_>) {
        let len = frame_len(frame, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(len + PREFIX_LEN, frame.len());
        let env = envelope(frame);
        fn s(o: Option<&str>) -> &str {
            o.expect("string field present")
        }
        let req = match env.body_type() {
            fb::Body::RegisterRequest => {
                let r = env.body_as_register_request().unwrap();
                Request::Register {
                    name: s(r.name()),
                    password: s(r.password()),
                }
            }
            fb::Body::LoginRequest => {
                let r = env.body_as_login_request().unwrap();
                Request::Login {
                    user_id: r.user_id(),
                    password: s(r.password()),
                }
            }
            fb::Body::LogoutRequest => Request::Logout {
                user_id: env.body_as_logout_request().unwrap().user_id(),
            },
            fb::Body::AddFriendRequest => {
                let r = env.body_as_add_friend_request().unwrap();
                Request::AddFriend {
                    user_id: r.user_id(),
                    friend_id: r.friend_id(),
                }
            }
            fb::Body::CreateGroupRequest => {
                let r = env.body_as_create_group_request().unwrap();
                Request::CreateGroup {
                    user_id: r.user_id(),
                    name: s(r.name()),
                    description: s(r.description()),
                }
            }
            fb::Body::JoinGroupRequest => {
                let r = env.body_as_join_group_request().unwrap();
                Request::JoinGroup {
                    user_id: r.user_id(),
                    group_id: r.group_id(),
                }
            }
            fb::Body::DirectMessageRequest => {
                let r = env.body_as_direct_message_request().unwrap();
                Request::DirectMessage {
                    user_id: r.user_id(),
                    to_id: r.to_id(),
                    text: s(r.text()),
                }
            }
            fb::Body::GroupMessageRequest => {
                let r = env.body_as_group_message_request().unwrap();
                Request::GroupMessage {
                    user_id: r.user_id(),
                    group_id: r.group_id(),
                    text: s(r.text()),
                }
            }
            fb::Body::DeliveryAckRequest => {
                let r = env.body_as_delivery_ack_request().unwrap();
                Request::DeliveryAck {
                    message_id: r.message_id(),
                    quiet: r.quiet(),
                }
            }
            fb::Body::PingRequest => {
                env.body_as_ping_request().unwrap();
                Request::Ping
            }
            fb::Body::RemoveFriendRequest => {
                let r = env.body_as_remove_friend_request().unwrap();
                Request::RemoveFriend {
                    user_id: r.user_id(),
                    friend_id: r.friend_id(),
                }
            }
            fb::Body::LeaveGroupRequest => {
                let r = env.body_as_leave_group_request().unwrap();
                Request::LeaveGroup {
                    user_id: r.user_id(),
                    group_id: r.group_id(),
                }
            }
            fb::Body::RemoveMemberRequest => {
                let r = env.body_as_remove_member_request().unwrap();
                Request::RemoveMember {
                    user_id: r.user_id(),
                    group_id: r.group_id(),
                    member_id: r.member_id(),
                }
            }
            fb::Body::GroupInfoRequest => {
                let r = env.body_as_group_info_request().unwrap();
                Request::GroupInfo {
                    user_id: r.user_id(),
                    group_id: r.group_id(),
                }
            }
            fb::Body::FindUserRequest => Request::FindUser {
                name: s(env.body_as_find_user_request().unwrap().name()),
            },
            fb::Body::HistoryRequest => {
                let r = env.body_as_history_request().unwrap();
                Request::History {
                    user_id: r.user_id(),
                    peer_id: r.peer_id(),
                    group_id: r.group_id(),
                    before: r.before(),
                    limit: r.limit(),
                }
            }
            fb::Body::MarkReadRequest => {
                let r = env.body_as_mark_read_request().unwrap();
                Request::MarkRead {
                    user_id: r.user_id(),
                    peer_id: r.peer_id(),
                    group_id: r.group_id(),
                    up_to: r.up_to(),
                }
            }
            fb::Body::ReadersRequest => {
                let r = env.body_as_readers_request().unwrap();
                Request::Readers {
                    user_id: r.user_id(),
                    group_id: r.group_id(),
                    message_id: r.message_id(),
                }
            }
            other => panic!("not a request: {other:?}"),
        };
        (env.request_id(), req)
    }

    #[test]
    fn every_request_round_trips() {
        for (i, req) in all_requests().into_iter().enumerate() {
            let id = 1000 + i as u64;
            let frame = encode_request(id, &req);
            assert_eq!(decode(&frame), (id, req));
            // The reusing encoder produces the same bytes.
            with_encoded(id, &req, |bytes| assert_eq!(bytes, &frame[..]));
            with_encoded(id, &req, |bytes| assert_eq!(bytes, &frame[..]));
        }
    }

    #[test]
    fn large_text_round_trips_and_builder_is_replaced() {
        let text = "x".repeat(1 << 20);
        let req = Request::DirectMessage {
            user_id: 0,
            to_id: 2,
            text: &text,
        };
        let frame = with_encoded(5, &req, |b| b.to_vec());
        let len = frame_len(&frame, 2 << 20).unwrap().unwrap();
        assert_eq!(len + PREFIX_LEN, frame.len());
        let env = envelope(&frame);
        assert_eq!(
            env.body_as_direct_message_request()
                .unwrap()
                .text()
                .unwrap()
                .len(),
            1 << 20
        );
        // Small frames still encode correctly afterwards.
        with_encoded(6, &Request::Ping, |b| {
            assert_eq!(decode(b), (6, Request::Ping));
        });
    }

    #[test]
    fn ping_never_needs_a_leading_ping() {
        for id in [1, 2, 255, 256, u32::MAX as u64, u64::MAX] {
            assert!(!needs_leading_ping(&encode_request(id, &Request::Ping)));
        }
    }

    #[test]
    fn encoded_frames_never_start_with_a_brace() {
        // Finished FlatBuffers are padded to a multiple of 4 bytes and 0x7B
        // is odd, so the rule only matters for hand-built frames.
        for n in 0..600 {
            let name = "n".repeat(n);
            let frame = encode_request(
                1,
                &Request::Register {
                    name: &name,
                    password: "p",
                },
            );
            assert_eq!((frame.len() - PREFIX_LEN) % 4, 0);
            assert!(!needs_leading_ping(&frame));
        }
    }

    #[test]
    fn leading_ping_rule_looks_at_the_first_byte() {
        assert!(needs_leading_ping(&[0x7b, 0, 0, 0, 1]));
        assert!(needs_leading_ping(&[0x7b, 1, 0, 0]));
        assert!(!needs_leading_ping(b""));
        assert!(!needs_leading_ping(&[0x7c, 0, 0, 0]));
        assert!(!needs_leading_ping(&[0, 0x7b, 0, 0]));
    }
}
