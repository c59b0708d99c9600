//! The FlatBuffers protocol end to end: a real `chat-node` process, real TCP,
//! the client library. Each test reads like a session between users.

mod common;

use std::time::Duration;

use chat_client::{Client, ClientError, ErrorCode, Event, Request, Role};
use chat_schema::{fb, frame};
use common::node_with;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not a server error: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

async fn user(addr: std::net::SocketAddr, name: &str) -> (Client, u64) {
    let c = Client::connect(addr).await.unwrap();
    let id = c.register(name, "pw").await.unwrap();
    c.login(id, "pw").await.unwrap();
    (c, id)
}

#[tokio::test]
async fn friends_presence_and_direct_messages() {
    let node = node_with(&[]);
    let (alice, a) = user(node.addr, "alice").await;
    let bob = Client::connect(node.addr).await.unwrap();
    let b = bob.register("bob", "pw").await.unwrap();
    assert_eq!(code(bob.register("bob", "x").await), ErrorCode::NameTaken);
    assert_eq!(
        code(bob.send_direct(a, "before login").await),
        ErrorCode::NotLoggedIn
    );

    // Alice befriends bob while he is offline, and writes to him.
    let friend = alice.add_friend(b).await.unwrap();
    assert_eq!(
        (friend.id, friend.name.as_str(), friend.online),
        (b, "bob", false)
    );
    assert_eq!(code(alice.add_friend(b).await), ErrorCode::AlreadyFriends);
    assert_eq!(code(alice.add_friend(a).await), ErrorCode::SelfFriend);
    assert_eq!(
        code(alice.add_friend(999_999).await),
        ErrorCode::UnknownUser
    );
    let m1 = alice.send_direct(b, "one").await.unwrap();
    let m2 = alice.send_direct(b, "two").await.unwrap();
    assert!(m2.message_id > m1.message_id);

    // Bob logs in: alice is an online friend, the two messages wait, in order.
    let login = bob.login(b, "pw").await.unwrap();
    assert_eq!(login.friends.len(), 1);
    assert_eq!((login.friends[0].id, login.friends[0].online), (a, true));
    let texts: Vec<_> = login
        .pending
        .iter()
        .map(|m| (m.id, m.sender_id, m.sender_name.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![
            (m1.message_id, a, "alice", "one"),
            (m2.message_id, a, "alice", "two")
        ]
    );
    // ... and alice is told bob came online.
    match alice.next_event_timeout(WAIT).await.unwrap() {
        Event::Presence {
            user_id,
            name,
            online,
        } => assert_eq!((user_id, name.as_str(), online), (b, "bob", true)),
        e => panic!("expected presence, got {e:?}"),
    }
    bob.ack(m2.message_id).await.unwrap();

    // Online: delivered at once; a non-friend can write too.
    let sent = alice.send_direct(b, "live").await.unwrap();
    let got = bob.next_message_timeout(WAIT).await.unwrap();
    assert_eq!(
        (
            got.id,
            got.sender_id,
            got.recipient_id,
            got.group_id,
            got.text.as_str()
        ),
        (sent.message_id, a, b, 0, "live")
    );
    assert_eq!(got.time_ms, sent.time_ms);
    let (carol, _) = user(node.addr, "carol").await;
    carol.send_direct(b, "hi from a stranger").await.unwrap();
    assert_eq!(
        bob.next_message_timeout(WAIT).await.unwrap().text,
        "hi from a stranger"
    );

    // Logout tells friends.
    bob.logout().await.unwrap();
    match alice.next_event_timeout(WAIT).await.unwrap() {
        Event::Presence {
            user_id, online, ..
        } => assert_eq!((user_id, online), (b, false)),
        e => panic!("expected presence, got {e:?}"),
    }
    assert_eq!(
        code(bob.send_direct(a, "after logout").await),
        ErrorCode::NotLoggedIn
    );
}

/// Bob (his client and id) once he has received `n` messages from Alice,
/// not acknowledged; their ids.
async fn bob_received(addr: std::net::SocketAddr, n: usize) -> (Client, u64, Vec<u64>) {
    let (alice, _) = user(addr, "alice").await;
    let (bob, b) = user(addr, "bob").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let sent = alice.send_direct(b, &format!("m{i}")).await.unwrap();
        ids.push(sent.message_id);
    }
    for id in &ids {
        assert_eq!(bob.next_message_timeout(WAIT).await.unwrap().id, *id);
    }
    (bob, b, ids)
}

#[tokio::test]
async fn unacknowledged_messages_come_again_and_acked_ones_do_not() {
    let node = node_with(&[]);
    let (bob, b, ids) = bob_received(node.addr, 3).await;
    // Acking a message never pushed here is refused and moves nothing.
    assert_eq!(code(bob.ack(ids[2] + 1000).await), ErrorCode::BadRequest);
    bob.ack(ids[0]).await.unwrap();
    drop(bob);
    let (bob, login) = common::login_again(node.addr, b, "pw").await;
    let again: Vec<u64> = login.pending.iter().map(|m| m.id).collect();
    assert_eq!(
        again,
        ids[1..].to_vec(),
        "only the unacknowledged ones, in order"
    );
    bob.ack(ids[2]).await.unwrap();
    bob.logout().await.unwrap();
    assert!(bob.login(b, "pw").await.unwrap().pending.is_empty());
}

/// `DeliveryAckRequest.quiet`: no reply when the acknowledgement succeeds
/// (the cursor moves all the same), an `ErrorReply` when it fails.
#[tokio::test]
async fn a_quiet_acknowledgement_is_answered_only_when_it_fails() {
    let node = node_with(&[]);
    let (bob, b, ids) = bob_received(node.addr, 2).await;
    bob.ack_quietly(ids[0]).unwrap();
    // Requests are answered in order: once the ping's reply is here, a
    // reply to the acknowledgement would have come before it.
    bob.ping().await.unwrap();
    assert!(
        bob.try_next_event().is_none(),
        "no reply to a quiet acknowledgement that succeeded"
    );
    bob.ack_quietly(ids[1] + 1000).unwrap();
    bob.ping().await.unwrap();
    match bob.try_next_event() {
        Some(Event::Unsolicited {
            reply: chat_client::Reply::Error { code, .. },
            ..
        }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("a failed quiet acknowledgement is answered: {other:?}"),
    }
    drop(bob);
    let (_bob, login) = common::login_again(node.addr, b, "pw").await;
    let again: Vec<u64> = login.pending.iter().map(|m| m.id).collect();
    assert_eq!(
        again,
        vec![ids[1]],
        "the quiet acknowledgement moved the cursor"
    );
}

/// A quiet acknowledgement is stored within the shard's acknowledgement
/// delay while the connection stays open (not only when it closes): the
/// store file, read beside the node, shows the cursor move.
#[tokio::test]
async fn a_quiet_acknowledgement_reaches_the_store_while_the_connection_stays() {
    let node = node_with(&[]);
    let (bob, b, ids) = bob_received(node.addr, 2).await;
    bob.ack_quietly(ids[0]).unwrap();
    let db = node.data_dir().join("chat.db");
    let cursor = move || -> u64 {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        c.query_row("SELECT cursor FROM users WHERE id = ?1", [b as i64], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as u64
    };
    let mut stored = 0;
    for _ in 0..100 {
        stored = tokio::task::spawn_blocking(cursor.clone()).await.unwrap();
        if stored == ids[0] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored, ids[0], "the cursor is stored, the connection open");
    bob.ping().await.unwrap();
}

#[tokio::test]
async fn one_session_per_user_and_credentials() {
    let node = node_with(&[]);
    let (first, a) = user(node.addr, "alice").await;
    let second = Client::connect(node.addr).await.unwrap();
    assert_eq!(code(second.login(a, "pw").await), ErrorCode::AlreadyOnline);
    assert_eq!(
        code(second.login(a, "wrong").await),
        ErrorCode::InvalidCredentials
    );
    assert_eq!(
        code(second.login(424_242, "pw").await),
        ErrorCode::InvalidCredentials
    );
    assert_eq!(code(first.login(a, "pw").await), ErrorCode::AlreadyLoggedIn);
    // Once the first connection is gone, the user can log in again.
    first.close().await;
    drop(first);
    let mut ok = false;
    for _ in 0..50 {
        if second.login(a, "pw").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the claim is released when the connection closes");
}

#[tokio::test]
async fn groups_store_once_and_reach_every_other_member() {
    let node = node_with(&[]);
    let (alice, a) = user(node.addr, "alice").await;
    let (bob, b) = user(node.addr, "bob").await;
    let (carol, c) = user(node.addr, "carol").await;
    let g = alice.create_group("rust", "crabs").await.unwrap();
    let group = bob.join_group(g).await.unwrap();
    assert_eq!(
        (group.id, group.name.as_str(), group.description.as_str()),
        (g, "rust", "crabs")
    );
    let roles: Vec<_> = group.members.iter().map(|m| (m.id, m.role)).collect();
    assert_eq!(roles, vec![(a, Role::Creator), (b, Role::Normal)]);
    assert_eq!(code(bob.join_group(g).await), ErrorCode::AlreadyMember);
    assert_eq!(code(bob.join_group(777_777).await), ErrorCode::UnknownGroup);
    assert_eq!(
        code(carol.send_group(g, "not a member").await),
        ErrorCode::NotAMember
    );
    carol.join_group(g).await.unwrap();
    carol.logout().await.unwrap();

    let sent = alice.send_group(g, "hello every one").await.unwrap();
    let got = bob.next_message_timeout(WAIT).await.unwrap();
    assert_eq!(
        (got.id, got.group_id, got.sender_id, got.text.as_str()),
        (sent.message_id, g, a, "hello every one")
    );
    assert!(
        alice.next_event_timeout(QUIET).await.is_err(),
        "no echo to the sender"
    );

    let login = carol.login(c, "pw").await.unwrap();
    assert_eq!(
        login.pending.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![sent.message_id]
    );
    assert_eq!(login.groups.len(), 1);
    assert_eq!(login.groups[0].members.len(), 3);
    assert!(login.groups[0].members.iter().all(|m| m.online));
}

#[tokio::test]
async fn impersonation_is_refused() {
    let node = node_with(&[]);
    let (alice, a) = user(node.addr, "alice").await;
    let (bob, b) = user(node.addr, "bob").await;
    let forged = Request::DirectMessage {
        user_id: b,
        to_id: a,
        text: "I am bob",
    };
    let reply = alice.request(&forged).await.unwrap();
    assert!(
        matches!(
            reply,
            chat_client::Reply::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{reply:?}"
    );
    assert!(bob.next_event_timeout(QUIET).await.is_err());
    assert!(
        alice.next_event_timeout(QUIET).await.is_err(),
        "nothing was sent as bob"
    );
    let logout_bob = alice
        .request(&Request::Logout { user_id: b })
        .await
        .unwrap();
    assert!(matches!(
        logout_bob,
        chat_client::Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    // Naming oneself is fine.
    let own = alice
        .request(&Request::DirectMessage {
            user_id: a,
            to_id: b,
            text: "me",
        })
        .await
        .unwrap();
    assert!(matches!(own, chat_client::Reply::DirectMessage(_)));
    assert_eq!(bob.next_message_timeout(WAIT).await.unwrap().text, "me");
}

#[tokio::test]
async fn bad_frames_get_errors_and_others_are_unaffected() {
    let node = node_with(&["--max-text", "64", "--max-frame", "4096"]);
    let (alice, a) = user(node.addr, "alice").await;
    let (bob, b) = user(node.addr, "bob").await;

    // Text over the limit: refused, not truncated, nothing delivered.
    let long = "x".repeat(65);
    assert_eq!(
        code(alice.send_direct(b, &long).await),
        ErrorCode::TextTooLong
    );
    assert!(bob.next_event_timeout(QUIET).await.is_err());

    // A frame that fails the verifier: error reply, the session goes on.
    let mut junk = 40u32.to_le_bytes().to_vec();
    junk.extend_from_slice(&[0xAB; 40]);
    alice.send_raw(&junk).unwrap();
    match alice.next_event_timeout(WAIT).await.unwrap() {
        Event::Unsolicited {
            reply: chat_client::Reply::Error { code, .. },
            ..
        } => assert_eq!(code, ErrorCode::BadRequest),
        e => panic!("expected an error reply, got {e:?}"),
    }
    // A valid envelope whose body is a reply, not a request.
    let wrong = frame::encode(77, |b| {
        let r = fb::PingReply::create(b, &fb::PingReplyArgs { time_ms: 1 });
        (fb::Body::PingReply, r.as_union_value())
    });
    let reply = alice.request_frame(77, &wrong).await.unwrap();
    assert!(
        matches!(
            reply,
            chat_client::Reply::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{reply:?}"
    );
    // A request missing a field.
    let no_text = frame::encode(78, |fbb| {
        let r = fb::DirectMessageRequest::create(
            fbb,
            &fb::DirectMessageRequestArgs {
                user_id: 0,
                to_id: b,
                text: None,
            },
        );
        (fb::Body::DirectMessageRequest, r.as_union_value())
    });
    let reply = alice.request_frame(78, &no_text).await.unwrap();
    assert!(
        matches!(
            reply,
            chat_client::Reply::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{reply:?}"
    );
    alice.send_direct(b, "still fine").await.unwrap();
    assert_eq!(
        bob.next_message_timeout(WAIT).await.unwrap().text,
        "still fine"
    );

    // A length over the limit: an error, then the node closes the connection.
    let mallory = Client::connect(node.addr).await.unwrap();
    mallory.ping().await.unwrap();
    mallory.send_raw(&1_000_000u32.to_le_bytes()).unwrap();
    match mallory.next_event_timeout(WAIT).await {
        Ok(Event::Unsolicited {
            reply: chat_client::Reply::Error { code, .. },
            ..
        }) => assert_eq!(code, ErrorCode::FrameTooLarge),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(matches!(
        mallory.next_event_timeout(WAIT).await,
        Err(ClientError::Closed | ClientError::Io(_))
    ));

    // A truncated frame and then a vanished client: nothing breaks.
    let mut raw = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[100, 0, 0, 0, 1, 2, 3])
        .await
        .unwrap();
    drop(raw);
    // Pure garbage.
    let mut raw = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"\xff\xfe\xfd\xfc garbage garbage")
        .await
        .unwrap();
    drop(raw);

    bob.send_direct(a, "after the storm").await.unwrap();
    assert_eq!(
        alice.next_message_timeout(WAIT).await.unwrap().text,
        "after the storm"
    );
}

#[tokio::test]
async fn slow_consumers_are_disconnected() {
    let node = node_with(&["--max-outbound", "65536", "--send-rate", "0"]);
    let (alice, _) = user(node.addr, "alice").await;
    // Bob logs in over a raw socket and then never reads.
    let (raw, b) = common::fb_login_never_reading(node.addr, "bob").await;
    let text = "y".repeat(4000);
    const SENT: usize = 4000;
    for _ in 0..SENT {
        alice.send_direct(b, &text).await.unwrap();
    }
    // 16 MB pushed to a client that reads nothing (more than the kernel's
    // socket buffers hold): it is cut off, so bob can log in again elsewhere,
    // and gets what he missed from the store.
    let again = Client::connect(node.addr).await.unwrap();
    let mut login = None;
    for _ in 0..100 {
        match again.login(b, "pw").await {
            Ok(l) => {
                login = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let login = login.unwrap_or_else(|| {
        panic!(
            "the slow consumer was disconnected: {}",
            reqwest_metrics(node.metrics_addr)
        )
    });
    let mut received = login.pending.len();
    while received < SENT {
        again.next_message_timeout(WAIT).await.unwrap();
        received += 1;
    }
    let metrics = reqwest_metrics(node.metrics_addr);
    assert!(
        metrics.contains("chat_node_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    drop(raw);
}

#[tokio::test]
async fn idle_connections_are_closed_unless_they_ping() {
    let node = node_with(&["--idle-timeout", "2s"]);
    let silent = Client::connect(node.addr).await.unwrap();
    silent.ping().await.unwrap();
    let pinging = Client::connect(node.addr).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        pinging.ping().await.unwrap();
    }
    assert!(silent.ping().await.is_err(), "idle connection closed");
}

/// A FlatBuffers frame of exactly 123 bytes starts with `{` (its length
/// prefix, little-endian) and is still served as FlatBuffers; a JSON client
/// that starts with whitespace is served as JSON.
#[test]
fn the_protocol_is_told_apart_by_more_than_the_first_byte() {
    use std::io::{Read, Write};
    let node = node_with(&[]);
    let frame = chat_client::encode_request(7, &Request::Ping);
    let mut body = frame[frame::PREFIX_LEN..].to_vec();
    assert!(body.len() < 123);
    body.resize(123, 0);
    let mut padded = 123u32.to_le_bytes().to_vec();
    padded.extend_from_slice(&body);
    assert_eq!(padded[0], b'{');
    let mut s = std::net::TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&padded).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .expect("a reply to the 123-byte frame");
    let mut reply = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    let mut whole = len.to_vec();
    whole.extend_from_slice(&reply);
    let envelope = frame::parse_frame(&whole, 1 << 16).expect("a FlatBuffers reply");
    assert_eq!(envelope.request_id(), 7);
    assert_eq!(envelope.body_type(), fb::Body::PingReply);

    let mut j = std::net::TcpStream::connect(node.addr).unwrap();
    j.set_read_timeout(Some(WAIT)).unwrap();
    j.write_all(b"\r\n  {\"msgid\":18}\0").unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while j.read(&mut byte).unwrap() == 1 && byte[0] != 0 {
        got.push(byte[0]);
    }
    let pong: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(pong["msgid"], 19, "{pong}");
}

fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn metrics_endpoint_reports_the_node() {
    let node = node_with(&[]);
    let (alice, a) = user(node.addr, "alice").await;
    alice.send_direct(a, "note").await.unwrap();
    alice.next_message_timeout(WAIT).await.unwrap();
    let text = reqwest_metrics(node.metrics_addr);
    for name in [
        "chat_node_connections{",
        "chat_node_requests_total{kind=\"direct_message\",outcome=\"ok\"} 1",
        "chat_node_request_duration_seconds_bucket{kind=\"login\"",
        "chat_node_messages_delivered_total{kind=\"direct\"} 1",
        "chat_node_messages_stored_total 1",
        "chat_node_event_loop_lag_seconds_bucket{shard=\"0\"",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

/// Removing friends and members, leaving groups, group info and finding
/// users, in FlatBuffers: the same rules as the JSON test, and the two
/// pushes as events.
#[tokio::test]
async fn friends_and_groups_are_managed() {
    let node = node_with(&[]);
    let (alice, a) = user(node.addr, "alice").await;
    let (bob, b) = user(node.addr, "bob").await;
    let (carol, c) = user(node.addr, "carol").await;
    alice.add_friend(b).await.unwrap();
    // Added while online: bob hears that alice is online.
    assert!(matches!(
        bob.next_event_timeout(WAIT).await,
        Ok(Event::Presence { user_id, .. }) if user_id == a
    ));
    let found = bob.find_user("alice").await.unwrap();
    assert_eq!(
        (found.id, found.name.as_str(), found.online),
        (a, "alice", true)
    );
    assert_eq!(code(bob.find_user("nobody").await), ErrorCode::UnknownUser);
    assert_eq!(code(bob.find_user("").await), ErrorCode::InvalidName);

    alice.remove_friend(b).await.unwrap();
    assert!(matches!(
        bob.next_event_timeout(WAIT).await,
        Ok(Event::FriendRemoved { friend_id }) if friend_id == a
    ));
    assert_eq!(code(bob.remove_friend(a).await), ErrorCode::NotFriends);
    // No presence push once they are not friends.
    alice.logout().await.unwrap();
    assert!(
        bob.next_event_timeout(QUIET).await.is_err(),
        "no presence after removal"
    );
    alice.login(a, "pw").await.unwrap();

    let g = alice.create_group("g", "about").await.unwrap();
    bob.join_group(g).await.unwrap();
    carol.join_group(g).await.unwrap();
    let info = carol.group_info(g).await.unwrap();
    assert_eq!(
        (info.name.as_str(), info.description.as_str()),
        ("g", "about")
    );
    let members: Vec<(u64, Role, bool)> = info
        .members
        .iter()
        .map(|m| (m.id, m.role, m.online))
        .collect();
    assert_eq!(
        members,
        vec![
            (a, Role::Creator, true),
            (b, Role::Normal, true),
            (c, Role::Normal, true)
        ]
    );
    assert_eq!(code(bob.remove_member(g, c).await), ErrorCode::NotCreator);
    assert_eq!(code(alice.remove_member(g, a).await), ErrorCode::BadRequest);
    alice.remove_member(g, c).await.unwrap();
    assert!(matches!(
        carol.next_event_timeout(WAIT).await,
        Ok(Event::RemovedFromGroup { group_id }) if group_id == g
    ));
    assert_eq!(code(carol.send_group(g, "hi").await), ErrorCode::NotAMember);
    assert_eq!(code(carol.group_info(g).await), ErrorCode::NotAMember);
    alice.leave_group(g).await.unwrap();
    assert_eq!(code(alice.leave_group(g).await), ErrorCode::NotAMember);
    let info = bob.group_info(g).await.unwrap();
    assert_eq!(
        info.members
            .iter()
            .map(|m| (m.id, m.role))
            .collect::<Vec<_>>(),
        vec![(b, Role::Creator)]
    );
    bob.leave_group(g).await.unwrap();
    assert_eq!(code(carol.join_group(g).await), ErrorCode::UnknownGroup);
    // The raw request with another user's id is refused.
    let r = alice
        .request(&Request::LeaveGroup {
            user_id: b,
            group_id: g,
        })
        .await;
    assert_eq!(code(r.and_then(|r| r.into_result())), ErrorCode::Forbidden);
}

/// FlatBuffers: `LoginReply.more_groups` and the `GroupPush`es that follow.
#[tokio::test]
async fn a_login_pages_its_groups() {
    let node = node_with(&["--login-group-members", "2"]);
    let (alice, a) = user(node.addr, "alice").await;
    let (bob, _) = user(node.addr, "bob").await;
    let mut groups = Vec::new();
    for i in 0..3 {
        let g = alice.create_group(&format!("g{i}"), "").await.unwrap();
        bob.join_group(g).await.unwrap();
        groups.push(g);
    }
    alice.logout().await.unwrap();
    let login = alice.login(a, "pw").await.unwrap();
    assert_eq!(
        login.groups.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![groups[0]]
    );
    assert_eq!(login.more_groups, 2);
    let mut rest = Vec::new();
    while rest.len() < 2 {
        match alice.next_event_timeout(WAIT).await.unwrap() {
            Event::Group(g) => {
                assert_eq!(g.members.len(), 2);
                rest.push(g.id);
            }
            Event::Presence { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rest, groups[1..].to_vec());
}
