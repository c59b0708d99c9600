//! The client library's [`ReconnectingClient`] in a cluster, found through
//! a balancer in redirect mode: the node a user is on is killed (`kill -9`),
//! the client asks the balancer again, lands on the other node, is refused
//! with `AlreadyOnline` while the dead node's lease holds the user, retries,
//! and resumes with every message sent meanwhile handed out once, in order.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chat_client::reconnect::{Backoff, Endpoint, ReconnectingClient, SessionEvent};
use chat_client::{Client, ClientConfig, Event};
use chat_testkit::{BalancerOptions, ClusterOptions, LocalCluster};
use common::cluster::LEASE_TTL;

/// Long enough for the lease to lapse and the balancer to see the death.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_user_whose_node_dies_is_redirected_to_another_and_retries_until_its_lease_lapses() {
    let mut cluster = LocalCluster::start(ClusterOptions {
        nodes: 2,
        shards: 1,
        lease_ttl: LEASE_TTL,
        binary: Some(env!("CARGO_BIN_EXE_chat-node").into()),
        balancer: Some(BalancerOptions {
            args: vec!["--probe-interval".into(), "200ms".into()],
            log: "warn".into(),
            ..BalancerOptions::default()
        }),
        ..ClusterOptions::default()
    })
    .expect("starting a local cluster");
    let redirect = cluster.balancer().unwrap().redirect_addr;
    let nodes = cluster.addrs();

    let setup = Client::connect(nodes[0]).await.unwrap();
    let a = setup.register("alice", "pw").await.unwrap();
    let b = setup.register("bob", "pw").await.unwrap();
    drop(setup);

    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
        ..Backoff::default()
    };
    let (mut bob, _) = ReconnectingClient::connect_and_login(
        vec![Endpoint::Redirect(redirect.to_string())],
        ClientConfig::default(),
        backoff,
        b,
        "pw",
    )
    .await
    .unwrap();
    let bobs: SocketAddr = bob.address().unwrap().parse().unwrap();
    let dying = nodes
        .iter()
        .position(|&n| n == bobs)
        .expect("bob is on a node");
    let other = nodes[1 - dying];
    // Alice stays on the node that lives.
    let alice = Client::connect(other).await.unwrap();
    alice.login(a, "pw").await.unwrap();

    let mut got = Vec::new();
    let mut reasons = Vec::new();
    let mut reconnected_to = None;
    alice.send_direct(b, "m1").await.unwrap();
    while got.is_empty() {
        next(&mut bob, &mut got, &mut reasons, &mut reconnected_to).await;
    }

    cluster.node_mut(dying).kill9();
    for text in ["m2", "m3"] {
        alice.send_direct(b, text).await.unwrap();
    }
    while got.len() < 3 {
        next(&mut bob, &mut got, &mut reasons, &mut reconnected_to).await;
    }
    assert_eq!(got, ["m1", "m2", "m3"], "each message once, in order");
    assert_eq!(
        reconnected_to,
        Some(other.to_string()),
        "the balancer named the live node"
    );
    assert!(
        reasons.iter().any(|r| r.contains("AlreadyOnline")),
        "the live node refused the login while the dead node's lease held bob: {reasons:?}"
    );

    // Live again, and nothing comes twice.
    alice.send_direct(b, "m4").await.unwrap();
    while got.len() < 4 {
        next(&mut bob, &mut got, &mut reasons, &mut reconnected_to).await;
    }
    assert_eq!(got.last().map(String::as_str), Some("m4"));
    if let Ok(ev) = tokio::time::timeout(Duration::from_millis(500), bob.next_event()).await {
        panic!("unexpected {ev:?}");
    }
}

/// Takes the next event: a message's text into `got`, a failed attempt's
/// reason into `reasons`, where it reconnected to into `to`.
async fn next(
    bob: &mut ReconnectingClient,
    got: &mut Vec<String>,
    reasons: &mut Vec<String>,
    to: &mut Option<String>,
) {
    let ev = tokio::time::timeout(WAIT, bob.next_event())
        .await
        .expect("an event within 30 s")
        .expect("the session goes on");
    match ev {
        SessionEvent::Event(Event::Message(m)) => got.push(m.text),
        SessionEvent::Event(_) => {}
        SessionEvent::Reconnecting { reason, .. } => reasons.push(reason),
        SessionEvent::Reconnected { address, login } => {
            assert!(login.is_some(), "logged in again");
            *to = Some(address);
        }
    }
}
