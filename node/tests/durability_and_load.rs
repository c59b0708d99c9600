//! What must survive: messages across a clean restart and across `kill -9`,
//! a SIGTERM that exits 0 and leaves users offline, and many clients at once
//! with every message delivered exactly once and in order per sender.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chat_client::{Client, Event};
use common::{json_login, json_register, node_with};

const WAIT: Duration = Duration::from_secs(20);

/// Logs `user` in, reading every stored message (the first page comes with
/// the reply, later pages as pushes), until `expected` messages arrived.
async fn login_and_read(
    addr: std::net::SocketAddr,
    user: u64,
    expected: usize,
) -> (Client, Vec<chat_client::Message>) {
    let c = Client::connect(addr).await.unwrap();
    let login = c.login(user, "pw").await.unwrap();
    let mut got = login.pending;
    while got.len() < expected {
        got.push(c.next_message_timeout(WAIT).await.unwrap());
    }
    (c, got)
}

#[tokio::test]
async fn acknowledged_sends_survive_kill_9_and_restart() {
    survive_kill_9(&["--pending-page", "100"]).await;
}

/// The same with the writer on shard 0's executor instead of a thread.
#[tokio::test]
async fn acknowledged_sends_survive_kill_9_with_the_writer_on_a_shard() {
    survive_kill_9(&["--pending-page", "100", "--store-on-shard"]).await;
}

async fn survive_kill_9(args: &[&str]) {
    let mut node = node_with(args);
    let alice = Client::connect(node.addr).await.unwrap();
    let a = alice.register("alice", "pw").await.unwrap();
    let b = alice.register("bob", "pw").await.unwrap();
    alice.login(a, "pw").await.unwrap();
    // 250 messages to offline bob, each acknowledged to alice by the node.
    let mut sent = Vec::new();
    for i in 0..250 {
        sent.push(
            alice
                .send_direct(b, &format!("m{i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    node.kill9();
    node.restart().unwrap();

    // Alice's session died with the node; she can log in again at once.
    let alice = Client::connect(node.addr).await.unwrap();
    alice.login(a, "pw").await.unwrap();
    let (bob, got) = login_and_read(node.addr, b, sent.len()).await;
    assert_eq!(
        got.iter().map(|m| m.id).collect::<Vec<_>>(),
        sent,
        "all, once, in order"
    );
    assert_eq!(got[249].text, "m249");
    bob.ack(*sent.last().unwrap()).await.unwrap();

    // A clean restart (SIGTERM) exits 0 and keeps what was stored.
    let more = alice
        .send_direct(b, "after the crash")
        .await
        .unwrap()
        .message_id;
    drop(bob);
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = node.terminate().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    node.restart().unwrap();
    let (_bob, got) = login_and_read(node.addr, b, 0).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), vec![more]);
}

#[tokio::test]
async fn sigterm_marks_online_users_offline() {
    let mut node = node_with(&[]);
    let alice = Client::connect(node.addr).await.unwrap();
    let a = alice.register("alice", "pw").await.unwrap();
    alice.login(a, "pw").await.unwrap();
    let status = node.terminate().unwrap();
    assert!(status.success());
    assert!(
        alice.next_event_timeout(WAIT).await.is_err(),
        "the node closed the connection"
    );
    node.restart().unwrap();
    let again = Client::connect(node.addr).await.unwrap();
    again
        .login(a, "pw")
        .await
        .expect("not still online after a clean stop");
}

#[tokio::test]
async fn json_and_flatbuffers_users_talk_to_each_other() {
    let node = node_with(&[]);
    let j = json_register(node.addr, "jay");
    let (mut jay, _) = json_login(node.addr, j);
    let fb = Client::connect(node.addr).await.unwrap();
    let f = fb.register("fiona", "pw").await.unwrap();
    fb.login(f, "pw").await.unwrap();

    let r = jay.ask(&format!(
        r#"{{"msgid":6,"id":{j},"toid":{f},"msg":"from json"}}"#
    ));
    assert_eq!(r["errno"], 0);
    let m = fb.next_message_timeout(WAIT).await.unwrap();
    assert_eq!(
        (m.sender_id, m.sender_name.as_str(), m.text.as_str()),
        (j, "jay", "from json")
    );
    fb.send_direct(j, "from flatbuffers").await.unwrap();
    let push = jay.recv();
    assert_eq!(
        (
            push["msgid"].as_u64(),
            push["id"].as_u64(),
            push["msg"].as_str()
        ),
        (Some(6), Some(f), Some("from flatbuffers"))
    );
    // A JSON client cannot ack, so a fresh login does not repeat what it was sent.
    drop(jay);
    let (_again, login) = common::json_login_again(node.addr, j);
    assert!(login.get("offlinemsg").is_none(), "{login}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_each_message_exactly_once_in_order() {
    const CLIENTS: usize = 200;
    const PER_PEER: usize = 20;
    const PEERS: [usize; 3] = [1, 7, 50];
    let node = node_with(&[]);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let c = Client::connect(node.addr).await.unwrap();
        let id = c.register(&format!("user{i}"), "pw").await.unwrap();
        c.login(id, "pw").await.unwrap();
        clients.push((c, id));
    }
    let ids: Vec<u64> = clients.iter().map(|(_, id)| *id).collect();
    let expected_each = PER_PEER * PEERS.len();

    let mut tasks = Vec::new();
    for (i, (client, me)) in clients.into_iter().enumerate() {
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let receiver = {
                let client = client.clone();
                tokio::spawn(async move {
                    // sender -> next expected sequence number
                    let mut next: HashMap<u64, usize> = HashMap::new();
                    let mut seen = std::collections::HashSet::new();
                    let mut last_id = 0;
                    let mut received = 0;
                    while received < expected_each {
                        match client.next_event_timeout(WAIT).await.unwrap() {
                            Event::Message(m) => {
                                assert!(seen.insert(m.id), "duplicate message {}", m.id);
                                assert!(m.id > last_id, "ids increase per recipient");
                                last_id = m.id;
                                let seq: usize =
                                    m.text.rsplit(' ').next().unwrap().parse().unwrap();
                                let want = next.entry(m.sender_id).or_insert(0);
                                assert_eq!(seq, *want, "in order from sender {}", m.sender_id);
                                *want += 1;
                                received += 1;
                                if received % 16 == 0 {
                                    client.ack(m.id).await.unwrap();
                                }
                            }
                            Event::Presence { .. }
                            | Event::RemovedFromGroup { .. }
                            | Event::FriendRemoved { .. }
                            | Event::ReadReceipt { .. }
                            | Event::Group(_)
                            | Event::Unsolicited { .. } => {}
                        }
                    }
                    received
                })
            };
            for seq in 0..PER_PEER {
                for offset in PEERS {
                    let to = ids[(i + offset) % ids.len()];
                    client
                        .send_direct(to, &format!("from {me} seq {seq}"))
                        .await
                        .unwrap();
                }
            }
            receiver.await.unwrap()
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, CLIENTS * expected_each);
}
