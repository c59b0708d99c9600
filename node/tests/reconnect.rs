//! The client library's [`ReconnectingClient`] against a real node: a
//! connection that is cut (through a relay that closes both sides) or a
//! node that restarts, with messages sent meanwhile, and the client coming
//! back by itself with every message handed out exactly once, in order.

mod common;

use std::time::Duration;

use chat_client::reconnect::{Backoff, Endpoint, ReconnectingClient, SessionEvent};
use chat_client::{Client, ClientConfig, Event, Message};
use chat_testkit::Relay;

const WAIT: Duration = Duration::from_secs(20);

fn quick_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        ..Backoff::default()
    }
}

/// What the application saw, besides messages.
#[derive(Default)]
struct Notices {
    reconnecting: Vec<u32>,
    reconnected: usize,
}

/// The next message handed to the application, noting the connection news
/// on the way.
async fn next_message(rc: &mut ReconnectingClient, notices: &mut Notices) -> Message {
    loop {
        let ev = tokio::time::timeout(WAIT, rc.next_event())
            .await
            .expect("an event within 20 s")
            .expect("the session goes on");
        match ev {
            SessionEvent::Event(Event::Message(m)) => return m,
            SessionEvent::Event(_) => {}
            SessionEvent::Reconnecting { attempt, .. } => notices.reconnecting.push(attempt),
            SessionEvent::Reconnected { login, .. } => {
                let login = login.expect("logged in again");
                assert!(login.pending.is_empty(), "pending come as events");
                notices.reconnected += 1;
            }
        }
    }
}

/// Nothing more for `wait`: no message is handed out twice.
async fn assert_quiet(rc: &mut ReconnectingClient, wait: Duration) {
    if let Ok(ev) = tokio::time::timeout(wait, rc.next_event()).await {
        panic!("unexpected {ev:?}");
    }
}

async fn setup(addr: std::net::SocketAddr) -> (Client, u64, u64) {
    let alice = Client::connect(addr).await.unwrap();
    let a = alice.register("alice", "pw").await.unwrap();
    let b = alice.register("bob", "pw").await.unwrap();
    alice.login(a, "pw").await.unwrap();
    (alice, a, b)
}

#[tokio::test]
async fn a_cut_connection_is_resumed_with_each_message_once_and_in_order() {
    let node = common::node();
    let relay = Relay::start(node.addr);
    let (alice, _a, b) = setup(node.addr).await;
    // Bob goes through the relay; the second address has nothing behind it,
    // so attempts alternate between a refused connection and the relay.
    let dead = format!("127.0.0.1:{}", chat_testkit::free_port().unwrap());
    let endpoints = vec![Endpoint::Node(relay.addr.to_string()), Endpoint::Node(dead)];
    let (mut bob, login) = ReconnectingClient::connect_and_login(
        endpoints,
        ClientConfig::default(),
        quick_backoff(),
        b,
        "pw",
    )
    .await
    .unwrap();
    assert!(login.pending.is_empty());
    let mut notices = Notices::default();
    let mut got = Vec::new();

    // m1 arrives and its acknowledgement reaches the node (requests are
    // handled in order: the ping's reply comes after the ack's).
    alice.send_direct(b, "m1").await.unwrap();
    got.push(next_message(&mut bob, &mut notices).await);
    bob.client().unwrap().ping().await.unwrap();

    // m2 and m3 arrive, but bob's acknowledgements are lost with the
    // connection: the node delivers them again at the next login.
    relay.hold_client_bytes();
    alice.send_direct(b, "m2").await.unwrap();
    alice.send_direct(b, "m3").await.unwrap();
    got.push(next_message(&mut bob, &mut notices).await);
    got.push(next_message(&mut bob, &mut notices).await);
    relay.cut();

    // Bob notices, and fails to get back while the relay refuses.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
    while let Ok(ev) = tokio::time::timeout_at(deadline, bob.next_event()).await {
        match ev.unwrap() {
            SessionEvent::Reconnecting { attempt, after, .. } => {
                assert!(after <= Duration::from_millis(200));
                notices.reconnecting.push(attempt);
            }
            other => panic!("disconnected, yet {other:?}"),
        }
    }
    assert!(!bob.is_connected());
    assert!(
        notices.reconnecting.len() >= 2,
        "{:?}",
        notices.reconnecting
    );
    assert_eq!(
        notices.reconnecting,
        (1..=notices.reconnecting.len() as u32).collect::<Vec<_>>()
    );
    let e = bob.send_direct(1, "while away").await.unwrap_err();
    assert!(e.to_string().contains("not sent"), "{e}");

    // Alice writes while bob is away; they are stored.
    for text in ["m4", "m5"] {
        alice.send_direct(b, text).await.unwrap();
    }
    relay.resume();
    got.push(next_message(&mut bob, &mut notices).await);
    got.push(next_message(&mut bob, &mut notices).await);
    assert_eq!(notices.reconnected, 1);
    assert!(bob.is_connected());

    // Live messages flow again on the new connection.
    alice.send_direct(b, "m6").await.unwrap();
    got.push(next_message(&mut bob, &mut notices).await);
    let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["m1", "m2", "m3", "m4", "m5", "m6"]);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert_quiet(&mut bob, Duration::from_millis(300)).await;

    // Everything was acknowledged (the ping's reply comes after the acks'):
    // a fresh login gets nothing again.
    bob.client().unwrap().ping().await.unwrap();
    bob.close().await;
    let again = Client::connect(node.addr).await.unwrap();
    let login = loop {
        match again.login(b, "pw").await {
            Ok(login) => break login,
            // The node may not have released bob's session yet.
            Err(e) if e.code() == Some(chat_client::ErrorCode::AlreadyOnline) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(login.pending.is_empty(), "{:?}", login.pending);
}

#[tokio::test]
async fn a_restarted_node_is_reconnected_to() {
    let mut node = common::node();
    let (alice, _a, b) = setup(node.addr).await;
    let (mut bob, _) = ReconnectingClient::connect_and_login(
        vec![Endpoint::Node(node.addr.to_string())],
        ClientConfig::default(),
        quick_backoff(),
        b,
        "pw",
    )
    .await
    .unwrap();
    let mut notices = Notices::default();
    alice.send_direct(b, "before").await.unwrap();
    let mut got = vec![next_message(&mut bob, &mut notices).await];
    drop(alice);

    node.restart().unwrap();
    let alice = Client::connect(node.addr).await.unwrap();
    alice.login(1, "pw").await.unwrap();
    for text in ["after 1", "after 2"] {
        alice.send_direct(b, text).await.unwrap();
    }
    got.push(next_message(&mut bob, &mut notices).await);
    got.push(next_message(&mut bob, &mut notices).await);
    let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["before", "after 1", "after 2"]);
    assert!(!notices.reconnecting.is_empty());
    assert_eq!(notices.reconnected, 1);
    assert_quiet(&mut bob, Duration::from_millis(300)).await;
}
