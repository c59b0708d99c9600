//! Tests of the client against a scripted fake node over an in-memory pipe:
//! reply routing, login collection, pushes, errors, the leading-ping rule and
//! connection failures.

use std::time::Duration;

use chat_schema::fb;
use chat_schema::frame::{DEFAULT_MAX_FRAME, PREFIX_LEN, encode, frame_len};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

use crate::connection::parse_frame;
use crate::*;

fn env(frame: &[u8]) -> fb::Envelope<'_> {
    parse_frame(frame, chat_schema::frame::DEFAULT_MAX_FRAME).unwrap()
}

/// The node's side of the pipe.
struct FakeNode {
    r: ReadHalf<DuplexStream>,
    w: WriteHalf<DuplexStream>,
    buf: Vec<u8>,
}

/// One request as the fake node saw it.
#[derive(Debug)]
struct Seen {
    request_id: u64,
    body: fb::Body,
    frame: Vec<u8>,
}

impl Seen {
    fn env(&self) -> fb::Envelope<'_> {
        env(&self.frame)
    }
}

fn pair(config: ClientConfig) -> (Client, FakeNode) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let client = Client::from_io(a, config);
    let (r, w) = tokio::io::split(b);
    (
        client,
        FakeNode {
            r,
            w,
            buf: Vec::new(),
        },
    )
}

type Built = (fb::Body, WIPOffset<UnionWIPOffset>);

impl FakeNode {
    /// The next request frame, `None` at EOF.
    async fn next(&mut self) -> Option<Seen> {
        loop {
            if let Some(len) = frame_len(&self.buf, DEFAULT_MAX_FRAME).unwrap()
                && self.buf.len() >= PREFIX_LEN + len
            {
                let frame: Vec<u8> = self.buf.drain(..PREFIX_LEN + len).collect();
                let e = env(&frame);
                let (request_id, body) = (e.request_id(), e.body_type());
                return Some(Seen {
                    request_id,
                    body,
                    frame,
                });
            }
            if self.r.read_buf(&mut self.buf).await.unwrap() == 0 {
                assert!(self.buf.is_empty(), "EOF inside a frame");
                return None;
            }
        }
    }

    async fn send(&mut self, request_id: u64, build: impl FnOnce(&mut FlatBufferBuilder) -> Built) {
        let frame = encode(request_id, build);
        self.w.write_all(&frame).await.unwrap();
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    async fn register_reply(&mut self, request_id: u64, user_id: u64) {
        self.send(request_id, |b| {
            let r = fb::RegisterReply::create(b, &fb::RegisterReplyArgs { user_id });
            (fb::Body::RegisterReply, r.as_union_value())
        })
        .await;
    }

    async fn error_reply(&mut self, request_id: u64, code: fb::ErrorCode, message: &str) {
        self.error_reply_after(request_id, code, message, 0).await;
    }

    async fn error_reply_after(
        &mut self,
        request_id: u64,
        code: fb::ErrorCode,
        message: &str,
        retry_after_ms: u32,
    ) {
        self.send(request_id, |b| {
            let message = Some(b.create_string(message));
            let r = fb::ErrorReply::create(
                b,
                &fb::ErrorReplyArgs {
                    code,
                    message,
                    retry_after_ms,
                },
            );
            (fb::Body::ErrorReply, r.as_union_value())
        })
        .await;
    }

    async fn message_push(&mut self, id: u64, group_id: u64, text: &str) {
        self.send(0, |b| {
            let sender_name = Some(b.create_string("bob"));
            let text = Some(b.create_string(text));
            let message = Some(fb::Message::create(
                b,
                &fb::MessageArgs {
                    id,
                    sender_id: 2,
                    sender_name,
                    recipient_id: 1,
                    group_id,
                    time_ms: 1_700_000_000_000 + id,
                    text,
                },
            ));
            let p = fb::MessagePush::create(b, &fb::MessagePushArgs { message });
            (fb::Body::MessagePush, p.as_union_value())
        })
        .await;
    }

    async fn presence_push(&mut self, user_id: u64, online: bool) {
        self.send(0, |b| {
            let name = Some(b.create_string("bob"));
            let p = fb::PresencePush::create(
                b,
                &fb::PresencePushArgs {
                    user_id,
                    name,
                    online,
                },
            );
            (fb::Body::PresencePush, p.as_union_value())
        })
        .await;
    }

    async fn login_reply(&mut self, request_id: u64, pending: u32) {
        self.login_reply_unread(request_id, pending, &[]).await;
    }

    /// A login reply listing `unread` as `(peer_id, group_id, count)`; no
    /// `unread` vector at all when it is empty, as the node sends it.
    async fn login_reply_unread(
        &mut self,
        request_id: u64,
        pending: u32,
        unread: &[(u64, u64, u32)],
    ) {
        self.send(request_id, |b| {
            let unread = (!unread.is_empty()).then(|| {
                let items: Vec<_> = unread
                    .iter()
                    .map(|&(peer_id, group_id, count)| {
                        fb::Unread::create(
                            b,
                            &fb::UnreadArgs {
                                peer_id,
                                group_id,
                                count,
                            },
                        )
                    })
                    .collect();
                b.create_vector(&items)
            });
            let fname = b.create_string("bob");
            let friend = fb::User::create(
                b,
                &fb::UserArgs {
                    id: 2,
                    name: Some(fname),
                    online: true,
                },
            );
            let friends = Some(b.create_vector(&[friend]));
            let mname = b.create_string("alice");
            let member = fb::GroupMember::create(
                b,
                &fb::GroupMemberArgs {
                    id: 1,
                    name: Some(mname),
                    online: true,
                    role: fb::Role::Creator,
                },
            );
            let members = Some(b.create_vector(&[member]));
            let gname = Some(b.create_string("rust"));
            let gdesc = Some(b.create_string("crabs"));
            let group = fb::Group::create(
                b,
                &fb::GroupArgs {
                    id: 10,
                    name: gname,
                    description: gdesc,
                    members,
                },
            );
            let groups = Some(b.create_vector(&[group]));
            let name = Some(b.create_string("alice"));
            let r = fb::LoginReply::create(
                b,
                &fb::LoginReplyArgs {
                    user_id: 1,
                    name,
                    friends,
                    groups,
                    pending,
                    unread,
                    more_groups: 0,
                },
            );
            (fb::Body::LoginReply, r.as_union_value())
        })
        .await;
    }

    async fn ping_reply(&mut self, request_id: u64, time_ms: u64) {
        self.send(request_id, |b| {
            let r = fb::PingReply::create(b, &fb::PingReplyArgs { time_ms });
            (fb::Body::PingReply, r.as_union_value())
        })
        .await;
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn replies_are_routed_by_request_id_out_of_order() {
    let (client, mut node) = pair(ClientConfig::default());
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.register(&format!("user{i}"), "pw").await })
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..50 {
        let s = node.next().await.unwrap();
        assert_eq!(s.body, fb::Body::RegisterRequest);
        let name = s.env().body_as_register_request().unwrap().name().unwrap()[4..]
            .parse::<u64>()
            .unwrap();
        seen.push((s.request_id, name));
    }
    // Answer newest first: user i gets id 100 + i.
    for (rid, i) in seen.iter().rev() {
        node.register_reply(*rid, 100 + i).await;
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), 100 + i as u64);
    }
}

#[tokio::test]
async fn login_collects_pending_then_pushes_become_events() {
    let (client, mut node) = pair(ClientConfig::default());
    let login = tokio::spawn({
        let c = client.clone();
        async move { c.login(1, "pw").await }
    });
    let s = node.next().await.unwrap();
    assert_eq!(s.body, fb::Body::LoginRequest);
    let req = s.env().body_as_login_request().unwrap();
    assert_eq!((req.user_id(), req.password()), (1, Some("pw")));
    node.login_reply(s.request_id, 2).await;
    node.message_push(5, 0, "first").await;
    node.presence_push(2, false).await; // not part of the login
    node.message_push(6, 10, "second").await;
    node.message_push(7, 0, "live").await;

    let login = login.await.unwrap().unwrap();
    assert_eq!(login.user_id, 1);
    assert_eq!(login.name, "alice");
    assert!(login.unread.is_empty());
    assert_eq!(
        login.friends,
        vec![User {
            id: 2,
            name: "bob".into(),
            online: true
        }]
    );
    assert_eq!(login.groups.len(), 1);
    assert_eq!(login.groups[0].description, "crabs");
    assert_eq!(login.groups[0].members[0].role, Role::Creator);
    let texts: Vec<_> = login.pending.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["first", "second"]);
    assert!(login.pending[1].is_group());

    assert_eq!(
        client.next_event_timeout(SECOND).await.unwrap(),
        Event::Presence {
            user_id: 2,
            name: "bob".into(),
            online: false
        }
    );
    let live = client.next_message_timeout(SECOND).await.unwrap();
    assert_eq!((live.id, live.text.as_str()), (7, "live"));
    assert!(matches!(
        client.next_event_timeout(Duration::from_millis(20)).await,
        Err(ClientError::Timeout)
    ));
}

#[tokio::test]
async fn login_without_pending_returns_at_once() {
    let (client, mut node) = pair(ClientConfig::default());
    let login = tokio::spawn({
        let c = client.clone();
        async move { c.login(1, "pw").await }
    });
    let s = node.next().await.unwrap();
    node.login_reply(s.request_id, 0).await;
    assert!(login.await.unwrap().unwrap().pending.is_empty());
}

#[tokio::test]
async fn error_reply_is_a_typed_error() {
    let (client, mut node) = pair(ClientConfig::default());
    let send = tokio::spawn({
        let c = client.clone();
        async move { c.send_direct(9, "hi").await }
    });
    let s = node.next().await.unwrap();
    let req = s.env().body_as_direct_message_request().unwrap();
    assert_eq!((req.user_id(), req.to_id(), req.text()), (0, 9, Some("hi")));
    node.error_reply(s.request_id, fb::ErrorCode::UnknownUser, "no user 9")
        .await;
    let err = send.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownUser));
    assert!(
        matches!(err, ClientError::Server { code: ErrorCode::UnknownUser, ref message, retry_after: None } if message == "no user 9")
    );
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn rate_limited_errors_say_when_to_retry() {
    let (client, mut node) = pair(ClientConfig::default());
    let send = tokio::spawn({
        let c = client.clone();
        async move { c.send_group(3, "spam").await }
    });
    let s = node.next().await.unwrap();
    node.error_reply_after(s.request_id, fb::ErrorCode::RateLimited, "slow down", 180)
        .await;
    let err = send.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
    assert_eq!(err.retry_after(), Some(Duration::from_millis(180)));
    assert_eq!(ClientError::Timeout.retry_after(), None);

    // The raw reply keeps the hint too.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.request(&Request::Ping).await }
    });
    let s = node.next().await.unwrap();
    node.error_reply_after(s.request_id, fb::ErrorCode::RateLimited, "again", 1)
        .await;
    assert_eq!(
        call.await.unwrap().unwrap(),
        Reply::Error {
            code: ErrorCode::RateLimited,
            message: "again".into(),
            retry_after: Some(Duration::from_millis(1)),
        }
    );
}

#[tokio::test]
async fn raw_requests_keep_chosen_fields_and_ids() {
    let (client, mut node) = pair(ClientConfig::default());
    let call = tokio::spawn({
        let c = client.clone();
        async move {
            c.request_with_id(
                77,
                &Request::DirectMessage {
                    user_id: 42,
                    to_id: 9,
                    text: "spoof",
                },
            )
            .await
        }
    });
    let s = node.next().await.unwrap();
    assert_eq!(s.request_id, 77);
    assert_eq!(
        s.env().body_as_direct_message_request().unwrap().user_id(),
        42
    );
    // The id is taken while in flight.
    assert!(matches!(
        client.request_with_id(77, &Request::Ping).await,
        Err(ClientError::RequestIdInUse(77))
    ));
    assert!(matches!(
        client.request_with_id(0, &Request::Ping).await,
        Err(ClientError::RequestIdInUse(0))
    ));
    node.error_reply(77, fb::ErrorCode::Forbidden, "not you")
        .await;
    let reply = call.await.unwrap().unwrap();
    assert_eq!(
        reply,
        Reply::Error {
            code: ErrorCode::Forbidden,
            message: "not you".into(),
            retry_after: None,
        }
    );
    assert!(matches!(
        reply.into_result(),
        Err(ClientError::Server {
            code: ErrorCode::Forbidden,
            ..
        })
    ));
}

#[tokio::test]
async fn unsolicited_replies_become_events() {
    let (client, mut node) = pair(ClientConfig::default());
    client.send_request(0, &Request::Ping).unwrap();
    let s = node.next().await.unwrap();
    assert_eq!((s.request_id, s.body), (0, fb::Body::PingRequest));
    node.ping_reply(0, 123).await;
    node.error_reply(999, fb::ErrorCode::BadRequest, "what")
        .await;
    assert_eq!(
        client.next_event_timeout(SECOND).await.unwrap(),
        Event::Unsolicited {
            request_id: 0,
            reply: Reply::Ping { time_ms: 123 }
        }
    );
    assert!(matches!(
        client.next_event_timeout(SECOND).await.unwrap(),
        Event::Unsolicited {
            request_id: 999,
            reply: Reply::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        }
    ));
}

/// A valid ping envelope whose frame length is 0x7B: a plain (not
/// size-prefixed) buffer padded to 123 bytes, with its length prepended.
fn brace_frame(request_id: u64) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let p = fb::PingRequest::create(&mut b, &fb::PingRequestArgs {});
    let env = fb::Envelope::create(
        &mut b,
        &fb::EnvelopeArgs {
            request_id,
            body_type: fb::Body::PingRequest,
            body: Some(p.as_union_value()),
        },
    );
    b.finish(env, None);
    let mut body = b.finished_data().to_vec();
    body.resize(0x7b, 0);
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend(body);
    frame
}

#[tokio::test]
async fn first_frame_starting_with_brace_gets_a_ping_first() {
    let (client, mut node) = pair(ClientConfig::default());
    let frame = brace_frame(8);
    assert!(needs_leading_ping(&frame));
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.request_frame(8, &frame).await }
    });
    let first = node.next().await.unwrap();
    assert_eq!(first.body, fb::Body::PingRequest);
    assert_ne!(first.request_id, 8);
    assert_ne!(first.frame[0], b'{');
    let second = node.next().await.unwrap();
    assert_eq!((second.request_id, second.frame[0]), (8, b'{'));
    node.ping_reply(first.request_id, 1).await; // swallowed
    node.ping_reply(8, 2).await;
    assert_eq!(call.await.unwrap().unwrap(), Reply::Ping { time_ms: 2 });
    assert!(client.try_next_event().is_none());
}

#[tokio::test]
async fn brace_frame_later_is_sent_as_is() {
    let (client, mut node) = pair(ClientConfig::default());
    let p = client.start_request(&Request::Ping).unwrap();
    client.send_request(8, &Request::Ping).unwrap();
    let frame = brace_frame(9);
    client.send_raw(&frame).unwrap();
    assert_eq!(node.next().await.unwrap().request_id, p.request_id());
    assert_eq!(node.next().await.unwrap().request_id, 8);
    let third = node.next().await.unwrap();
    assert_eq!((third.request_id, third.frame[0]), (9, b'{'));
}

#[tokio::test]
async fn send_raw_skips_the_ping_rule() {
    let (client, mut node) = pair(ClientConfig::default());
    client.send_raw(b"{\"msgid\":1}\0").unwrap();
    let mut got = [0u8; 12];
    node.r.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"{\"msgid\":1}\0");
}

#[tokio::test]
async fn oversized_frame_closes_with_protocol_error() {
    let config = ClientConfig {
        max_frame: 1000,
        ..ClientConfig::default()
    };
    let (client, mut node) = pair(config);
    let p = client.start_request(&Request::Ping).unwrap();
    node.next().await.unwrap();
    node.send_bytes(&2000u32.to_le_bytes()).await;
    assert!(matches!(p.wait().await, Err(ClientError::Protocol(_))));
    assert!(client.is_closed());
    assert!(matches!(client.ping().await, Err(ClientError::Protocol(_))));
    assert!(client.next_event().await.is_none());
    // The client shut its side down.
    assert!(node.next().await.is_none());
}

#[tokio::test]
async fn unverifiable_frame_closes_with_protocol_error() {
    let (client, mut node) = pair(ClientConfig::default());
    let p = client.start_request(&Request::Ping).unwrap();
    node.next().await.unwrap();
    let mut junk = 32u32.to_le_bytes().to_vec();
    junk.extend([0xff; 32]);
    node.send_bytes(&junk).await;
    assert!(matches!(p.wait().await, Err(ClientError::Protocol(_))));
}

#[tokio::test]
async fn push_missing_its_message_is_a_protocol_error() {
    let (client, mut node) = pair(ClientConfig::default());
    let p = client.start_request(&Request::Ping).unwrap();
    node.send(0, |b| {
        let p = fb::MessagePush::create(b, &fb::MessagePushArgs { message: None });
        (fb::Body::MessagePush, p.as_union_value())
    })
    .await;
    assert!(matches!(p.wait().await, Err(ClientError::Protocol(m)) if m.contains("message")));
}

#[tokio::test]
async fn node_closing_fails_requests_in_flight() {
    let (client, mut node) = pair(ClientConfig::default());
    let p = client.start_request(&Request::Ping).unwrap();
    node.next().await.unwrap();
    node.message_push(1, 0, "last words").await;
    drop(node);
    assert!(matches!(p.wait().await, Err(ClientError::Closed)));
    // Events received before the close are still there.
    assert_eq!(
        client.next_message_timeout(SECOND).await.unwrap().text,
        "last words"
    );
    assert!(matches!(
        client.next_event_timeout(SECOND).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn wrong_reply_type_is_a_protocol_error() {
    let (client, mut node) = pair(ClientConfig::default());
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.ack(5).await }
    });
    let s = node.next().await.unwrap();
    assert_eq!(
        s.env().body_as_delivery_ack_request().unwrap().message_id(),
        5
    );
    node.ping_reply(s.request_id, 1).await;
    assert!(matches!(
        call.await.unwrap(),
        Err(ClientError::Protocol(m)) if m.contains("DeliveryAckReply")
    ));
}

#[tokio::test]
async fn request_timeout_applies() {
    let config = ClientConfig {
        request_timeout: Some(Duration::from_millis(30)),
        ..ClientConfig::default()
    };
    let (client, _node) = pair(config);
    assert!(matches!(client.ping().await, Err(ClientError::Timeout)));
}

#[tokio::test]
async fn close_flushes_and_shuts_down() {
    let (client, mut node) = pair(ClientConfig::default());
    for _ in 0..100 {
        drop(client.start_request(&Request::Ping).unwrap());
    }
    client.close().await;
    for _ in 0..100 {
        assert_eq!(node.next().await.unwrap().body, fb::Body::PingRequest);
    }
    assert!(node.next().await.is_none());
    assert!(client.is_closed());
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn dropping_the_client_closes_the_connection() {
    let (client, mut node) = pair(ClientConfig::default());
    client.send_request(3, &Request::Ping).unwrap();
    drop(client);
    assert_eq!(node.next().await.unwrap().request_id, 3);
    assert!(node.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn keepalive_pings() {
    let config = ClientConfig {
        keepalive: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    let (_client, mut node) = pair(config);
    let s = node.next().await.unwrap();
    assert_eq!(s.body, fb::Body::PingRequest);
    node.ping_reply(s.request_id, 1).await;
    assert_eq!(node.next().await.unwrap().body, fb::Body::PingRequest);
}

#[tokio::test]
async fn many_requests_in_flight_from_one_task() {
    let (client, mut node) = pair(ClientConfig::default());
    let server = tokio::spawn(async move {
        let mut n = 0;
        while let Some(s) = node.next().await {
            node.ping_reply(s.request_id, s.request_id).await;
            n += 1;
        }
        n
    });
    let pending: Vec<_> = (0..5000)
        .map(|_| client.start_request(&Request::Ping).unwrap())
        .collect();
    for p in pending {
        let id = p.request_id();
        assert_eq!(p.wait().await.unwrap(), Reply::Ping { time_ms: id });
    }
    drop(client);
    assert_eq!(server.await.unwrap(), 5000);
}

#[tokio::test]
async fn hand_built_frames_get_their_reply() {
    let (client, mut node) = pair(ClientConfig::default());
    // A register request without a password field.
    let frame = encode(41, |b| {
        let name = Some(b.create_string("x"));
        let r = fb::RegisterRequest::create(
            b,
            &fb::RegisterRequestArgs {
                name,
                password: None,
            },
        );
        (fb::Body::RegisterRequest, r.as_union_value())
    });
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.request_frame(41, &frame).await }
    });
    let s = node.next().await.unwrap();
    assert_eq!(s.request_id, 41);
    assert!(
        s.env()
            .body_as_register_request()
            .unwrap()
            .password()
            .is_none()
    );
    node.error_reply(41, fb::ErrorCode::BadRequest, "password missing")
        .await;
    assert!(matches!(
        call.await.unwrap().unwrap(),
        Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
}

#[tokio::test]
async fn friend_and_group_management_requests_and_replies() {
    let (client, mut node) = pair(ClientConfig::default());

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.remove_friend(9).await }
    });
    let s = node.next().await.unwrap();
    let r = s.env().body_as_remove_friend_request().unwrap();
    assert_eq!((r.user_id(), r.friend_id()), (0, 9));
    node.send(s.request_id, |b| {
        let r = fb::RemoveFriendReply::create(b, &fb::RemoveFriendReplyArgs {});
        (fb::Body::RemoveFriendReply, r.as_union_value())
    })
    .await;
    call.await.unwrap().unwrap();

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.leave_group(3).await }
    });
    let s = node.next().await.unwrap();
    let r = s.env().body_as_leave_group_request().unwrap();
    assert_eq!((r.user_id(), r.group_id()), (0, 3));
    node.send(s.request_id, |b| {
        let r = fb::LeaveGroupReply::create(b, &fb::LeaveGroupReplyArgs {});
        (fb::Body::LeaveGroupReply, r.as_union_value())
    })
    .await;
    call.await.unwrap().unwrap();

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.remove_member(3, 4).await }
    });
    let s = node.next().await.unwrap();
    let r = s.env().body_as_remove_member_request().unwrap();
    assert_eq!((r.user_id(), r.group_id(), r.member_id()), (0, 3, 4));
    node.error_reply(s.request_id, fb::ErrorCode::NotCreator, "not yours")
        .await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotCreator));

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.remove_member(3, 4).await }
    });
    let s = node.next().await.unwrap();
    node.send(s.request_id, |b| {
        let r = fb::RemoveMemberReply::create(b, &fb::RemoveMemberReplyArgs {});
        (fb::Body::RemoveMemberReply, r.as_union_value())
    })
    .await;
    call.await.unwrap().unwrap();

    // A reply of another kind is not taken for the one expected.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.leave_group(3).await }
    });
    let s = node.next().await.unwrap();
    node.send(s.request_id, |b| {
        let r = fb::RemoveMemberReply::create(b, &fb::RemoveMemberReplyArgs {});
        (fb::Body::RemoveMemberReply, r.as_union_value())
    })
    .await;
    assert!(matches!(
        call.await.unwrap(),
        Err(ClientError::Protocol(m)) if m.contains("LeaveGroupReply") && m.contains("RemoveMemberReply")
    ));
}

#[tokio::test]
async fn group_info_and_find_user_return_their_tables() {
    let (client, mut node) = pair(ClientConfig::default());

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.group_info(10).await }
    });
    let s = node.next().await.unwrap();
    let r = s.env().body_as_group_info_request().unwrap();
    assert_eq!((r.user_id(), r.group_id()), (0, 10));
    node.send(s.request_id, |b| {
        let mut members = Vec::new();
        for (id, name, online, role) in [
            (1, "alice", true, fb::Role::Creator),
            (2, "bob", false, fb::Role::Normal),
        ] {
            let name = Some(b.create_string(name));
            members.push(fb::GroupMember::create(
                b,
                &fb::GroupMemberArgs {
                    id,
                    name,
                    online,
                    role,
                },
            ));
        }
        let members = Some(b.create_vector(&members));
        let name = Some(b.create_string("rust"));
        let description = Some(b.create_string("crabs"));
        let group = Some(fb::Group::create(
            b,
            &fb::GroupArgs {
                id: 10,
                name,
                description,
                members,
            },
        ));
        let r = fb::GroupInfoReply::create(b, &fb::GroupInfoReplyArgs { group });
        (fb::Body::GroupInfoReply, r.as_union_value())
    })
    .await;
    let group = call.await.unwrap().unwrap();
    assert_eq!(
        group,
        Group {
            id: 10,
            name: "rust".into(),
            description: "crabs".into(),
            members: vec![
                GroupMember {
                    id: 1,
                    name: "alice".into(),
                    online: true,
                    role: Role::Creator,
                },
                GroupMember {
                    id: 2,
                    name: "bob".into(),
                    online: false,
                    role: Role::Normal,
                },
            ],
        }
    );

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.find_user("bob").await }
    });
    let s = node.next().await.unwrap();
    assert_eq!(
        s.env().body_as_find_user_request().unwrap().name(),
        Some("bob")
    );
    node.send(s.request_id, |b| {
        let name = Some(b.create_string("bob"));
        let user = Some(fb::User::create(
            b,
            &fb::UserArgs {
                id: 2,
                name,
                online: true,
            },
        ));
        let r = fb::FindUserReply::create(b, &fb::FindUserReplyArgs { user });
        (fb::Body::FindUserReply, r.as_union_value())
    })
    .await;
    assert_eq!(
        call.await.unwrap().unwrap(),
        User {
            id: 2,
            name: "bob".into(),
            online: true,
        }
    );

    // Replies without their table break the protocol.
    let p = client
        .start_request(&Request::FindUser { name: "x" })
        .unwrap();
    let s = node.next().await.unwrap();
    node.send(s.request_id, |b| {
        let r = fb::FindUserReply::create(b, &fb::FindUserReplyArgs { user: None });
        (fb::Body::FindUserReply, r.as_union_value())
    })
    .await;
    assert!(
        matches!(p.wait().await, Err(ClientError::Protocol(m)) if m.contains("FindUserReply.user"))
    );
}

#[tokio::test]
async fn removal_pushes_become_events() {
    let (client, mut node) = pair(ClientConfig::default());
    node.send(0, |b| {
        let p = fb::RemovedFromGroupPush::create(b, &fb::RemovedFromGroupPushArgs { group_id: 5 });
        (fb::Body::RemovedFromGroupPush, p.as_union_value())
    })
    .await;
    node.send(0, |b| {
        let p = fb::FriendRemovedPush::create(b, &fb::FriendRemovedPushArgs { friend_id: 7 });
        (fb::Body::FriendRemovedPush, p.as_union_value())
    })
    .await;
    node.message_push(8, 0, "after").await;
    assert_eq!(
        client.next_event_timeout(SECOND).await.unwrap(),
        Event::RemovedFromGroup { group_id: 5 }
    );
    assert_eq!(
        client.next_event_timeout(SECOND).await.unwrap(),
        Event::FriendRemoved { friend_id: 7 }
    );
    assert_eq!(
        client.next_message_timeout(SECOND).await.unwrap().text,
        "after"
    );
}

#[tokio::test]
async fn removal_pushes_during_a_login_do_not_count_as_pending() {
    let (client, mut node) = pair(ClientConfig::default());
    let login = tokio::spawn({
        let c = client.clone();
        async move { c.login(1, "pw").await }
    });
    let s = node.next().await.unwrap();
    node.login_reply(s.request_id, 1).await;
    node.send(0, |b| {
        let p = fb::FriendRemovedPush::create(b, &fb::FriendRemovedPushArgs { friend_id: 2 });
        (fb::Body::FriendRemovedPush, p.as_union_value())
    })
    .await;
    node.message_push(5, 0, "stored").await;
    let login = login.await.unwrap().unwrap();
    assert_eq!(login.pending.len(), 1);
    assert_eq!(
        client.next_event_timeout(SECOND).await.unwrap(),
        Event::FriendRemoved { friend_id: 2 }
    );
}

/// A message table as the node writes it, for history pages.
fn fb_message<'a>(
    b: &mut FlatBufferBuilder<'a>,
    id: u64,
    sender_id: u64,
    recipient_id: u64,
    group_id: u64,
) -> WIPOffset<fb::Message<'a>> {
    let sender_name = Some(b.create_string(if sender_id == 1 { "alice" } else { "bob" }));
    let text = Some(b.create_string(&format!("m{id}")));
    fb::Message::create(
        b,
        &fb::MessageArgs {
            id,
            sender_id,
            sender_name,
            recipient_id,
            group_id,
            time_ms: 1_700_000_000_000 + id,
            text,
        },
    )
}

#[tokio::test]
async fn login_lists_unread_conversations() {
    let (client, mut node) = pair(ClientConfig::default());
    let login = tokio::spawn({
        let c = client.clone();
        async move { c.login(1, "pw").await }
    });
    let s = node.next().await.unwrap();
    node.login_reply_unread(s.request_id, 1, &[(2, 0, 3), (0, 10, 999)])
        .await;
    node.message_push(5, 0, "while you were out").await;
    let login = login.await.unwrap().unwrap();
    assert_eq!(login.pending.len(), 1);
    assert_eq!(
        login.unread,
        [
            Unread {
                peer_id: 2,
                group_id: 0,
                count: 3
            },
            Unread {
                peer_id: 0,
                group_id: 10,
                count: 999
            },
        ]
    );
    assert_eq!(
        login.unread[0].conversation(),
        Some(Conversation::Direct(2))
    );
    assert_eq!(
        login.unread[1].conversation(),
        Some(Conversation::Group(10))
    );
}

#[tokio::test]
async fn history_pages_back_through_a_conversation() {
    let (client, mut node) = pair(ClientConfig::default());

    // The newest page of a direct conversation: both directions, newest first.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.history(Conversation::Direct(2), None, None).await }
    });
    let s = node.next().await.unwrap();
    assert_eq!(s.body, fb::Body::HistoryRequest);
    let r = s.env().body_as_history_request().unwrap();
    assert_eq!(
        (
            r.user_id(),
            r.peer_id(),
            r.group_id(),
            r.before(),
            r.limit()
        ),
        (0, 2, 0, 0, 0),
        "None is sent as 0: from the newest, the node's default page"
    );
    node.send(s.request_id, |b| {
        let messages = [fb_message(b, 12, 1, 2, 0), fb_message(b, 9, 2, 1, 0)];
        let messages = Some(b.create_vector(&messages));
        let r = fb::HistoryReply::create(
            b,
            &fb::HistoryReplyArgs {
                messages,
                more: true,
                read_up_to: 12,
            },
        );
        (fb::Body::HistoryReply, r.as_union_value())
    })
    .await;
    let page = call.await.unwrap().unwrap();
    let ids: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.id, m.sender_id, m.text.as_str()))
        .collect();
    assert_eq!(ids, [(12, 1, "m12"), (9, 2, "m9")]);
    assert_eq!((page.more, page.read_up_to), (true, 12));
    assert_eq!(page.next_before(), Some(9));
    assert_eq!(
        Conversation::of(&page.messages[0], 1),
        Conversation::Direct(2)
    );
    assert_eq!(
        Conversation::of(&page.messages[1], 1),
        Conversation::Direct(2)
    );

    // The next, older page of a group, with a limit: the last one.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.history(Conversation::Group(10), Some(9), Some(2)).await }
    });
    let s = node.next().await.unwrap();
    let r = s.env().body_as_history_request().unwrap();
    assert_eq!(
        (
            r.user_id(),
            r.peer_id(),
            r.group_id(),
            r.before(),
            r.limit()
        ),
        (0, 0, 10, 9, 2)
    );
    node.send(s.request_id, |b| {
        let messages = [fb_message(b, 4, 2, 0, 10)];
        let messages = Some(b.create_vector(&messages));
        let r = fb::HistoryReply::create(
            b,
            &fb::HistoryReplyArgs {
                messages,
                more: false,
                read_up_to: 0,
            },
        );
        (fb::Body::HistoryReply, r.as_union_value())
    })
    .await;
    let page = call.await.unwrap().unwrap();
    assert_eq!(page.messages.len(), 1);
    assert!(page.messages[0].is_group());
    assert_eq!(page.next_before(), None, "no more pages");
    assert_eq!(
        Conversation::of(&page.messages[0], 1),
        Conversation::Group(10)
    );

    // An empty page (no vector at all) is an empty history.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.history(Conversation::Direct(3), None, None).await }
    });
    let s = node.next().await.unwrap();
    node.send(s.request_id, |b| {
        let r = fb::HistoryReply::create(b, &fb::HistoryReplyArgs::default());
        (fb::Body::HistoryReply, r.as_union_value())
    })
    .await;
    assert_eq!(call.await.unwrap().unwrap(), History::default());

    // Errors are typed.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.history(Conversation::Group(11), None, None).await }
    });
    let s = node.next().await.unwrap();
    node.error_reply(s.request_id, fb::ErrorCode::NotAMember, "not yours")
        .await;
    assert_eq!(
        call.await.unwrap().unwrap_err().code(),
        Some(ErrorCode::NotAMember)
    );
}

#[tokio::test]
async fn mark_read_and_readers_requests_and_replies() {
    let (client, mut node) = pair(ClientConfig::default());

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.mark_read(Conversation::Direct(2), 42).await }
    });
    let s = node.next().await.unwrap();
    assert_eq!(s.body, fb::Body::MarkReadRequest);
    let r = s.env().body_as_mark_read_request().unwrap();
    assert_eq!(
        (r.user_id(), r.peer_id(), r.group_id(), r.up_to()),
        (0, 2, 0, 42)
    );
    node.send(s.request_id, |b| {
        let r = fb::MarkReadReply::create(b, &fb::MarkReadReplyArgs {});
        (fb::Body::MarkReadReply, r.as_union_value())
    })
    .await;
    call.await.unwrap().unwrap();

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.mark_read(Conversation::Group(10), 50).await }
    });
    let s = node.next().await.unwrap();
    let r = s.env().body_as_mark_read_request().unwrap();
    assert_eq!((r.peer_id(), r.group_id(), r.up_to()), (0, 10, 50));
    node.error_reply(s.request_id, fb::ErrorCode::BadRequest, "beyond the newest")
        .await;
    assert_eq!(
        call.await.unwrap().unwrap_err().code(),
        Some(ErrorCode::BadRequest)
    );

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.readers(10, 42).await }
    });
    let s = node.next().await.unwrap();
    assert_eq!(s.body, fb::Body::ReadersRequest);
    let r = s.env().body_as_readers_request().unwrap();
    assert_eq!((r.user_id(), r.group_id(), r.message_id()), (0, 10, 42));
    node.send(s.request_id, |b| {
        let r = fb::ReadersReply::create(
            b,
            &fb::ReadersReplyArgs {
                readers: 3,
                members: 7,
            },
        );
        (fb::Body::ReadersReply, r.as_union_value())
    })
    .await;
    assert_eq!(call.await.unwrap().unwrap(), (3, 7));

    // A reply of another kind is not taken for the one expected.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.readers(10, 42).await }
    });
    let s = node.next().await.unwrap();
    node.send(s.request_id, |b| {
        let r = fb::MarkReadReply::create(b, &fb::MarkReadReplyArgs {});
        (fb::Body::MarkReadReply, r.as_union_value())
    })
    .await;
    assert!(matches!(
        call.await.unwrap(),
        Err(ClientError::Protocol(m)) if m.contains("ReadersReply") && m.contains("MarkReadReply")
    ));

    // Raw requests keep every field, both conversation ids included.
    let p = client
        .start_request(&Request::History {
            user_id: 5,
            peer_id: 2,
            group_id: 10,
            before: 7,
            limit: 1000,
        })
        .unwrap();
    let s = node.next().await.unwrap();
    let r = s.env().body_as_history_request().unwrap();
    assert_eq!(
        (
            r.user_id(),
            r.peer_id(),
            r.group_id(),
            r.before(),
            r.limit()
        ),
        (5, 2, 10, 7, 1000)
    );
    node.error_reply(s.request_id, fb::ErrorCode::BadRequest, "exactly one")
        .await;
    assert!(matches!(
        p.wait().await.unwrap(),
        Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
}

#[tokio::test]
async fn read_receipts_become_events() {
    let (client, mut node) = pair(ClientConfig::default());
    node.send(0, |b| {
        let p = fb::ReadReceiptPush::create(
            b,
            &fb::ReadReceiptPushArgs {
                reader_id: 7,
                peer_id: 1,
                up_to: 42,
            },
        );
        (fb::Body::ReadReceiptPush, p.as_union_value())
    })
    .await;
    node.message_push(43, 0, "after").await;
    assert_eq!(
        client.next_event_timeout(SECOND).await.unwrap(),
        Event::ReadReceipt {
            reader_id: 7,
            peer_id: 1,
            up_to: 42
        }
    );
    assert_eq!(
        client.next_message_timeout(SECOND).await.unwrap().text,
        "after"
    );
}

#[test]
fn conversations_have_exactly_one_id() {
    assert_eq!(Conversation::from_ids(2, 0), Some(Conversation::Direct(2)));
    assert_eq!(Conversation::from_ids(0, 9), Some(Conversation::Group(9)));
    assert_eq!(Conversation::from_ids(0, 0), None);
    assert_eq!(Conversation::from_ids(2, 9), None);
    for c in [Conversation::Direct(2), Conversation::Group(9)] {
        let (peer, group) = c.ids();
        assert_eq!(Conversation::from_ids(peer, group), Some(c));
    }
}
