//! The cluster end to end: `chat-node` processes on one NATS server and one
//! shared store, with users of both protocols spread over them. Sessions
//! across nodes, one session and one name per cluster, and what must
//! survive: a node killed with SIGKILL, NATS killed and restarted, a node too
//! slow for its NATS subscription. Each test reads like a session between
//! users; every wait has a deadline.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::{
    Client, ClientError, Dedup, ErrorCode, Event, Login, Message, Reply, Request, Role,
};
use chat_testkit::http_get;
use common::cluster::{
    LEASE_TTL, cluster, expect_presence, fb_user, login_once_released, wait_for_metric,
};
use common::{Json, json_login, json_register, strings};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);
/// How long after its node died a user must be able to log in elsewhere,
/// beyond the lease.
const MARGIN: Duration = Duration::from_secs(5);

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not a server error: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Asserts that the next event of `client` is this message.
async fn expect_message(client: &Client, want: (u64, u64, &str, u64, u64, &str)) {
    match client.next_event_timeout(WAIT).await {
        Ok(Event::Message(m)) => assert_eq!(
            (
                m.id,
                m.sender_id,
                m.sender_name.as_str(),
                m.recipient_id,
                m.group_id,
                m.text.as_str()
            ),
            want,
            "(id, sender, sender name, recipient, group, text)"
        ),
        other => panic!("expected message {want:?}, got {other:?}"),
    }
}

/// A seed-JSON session that keeps the pushes arriving while it waits for a
/// reply.
struct JsonUser {
    conn: Json,
    pushes: VecDeque<Value>,
}

impl JsonUser {
    /// Sends `request` and returns the reply with msgid `reply`.
    fn ask(&mut self, request: &str, reply: u64) -> Value {
        self.conn.send(request);
        loop {
            let v = self.conn.recv();
            if v["msgid"] == reply {
                return v;
            }
            self.pushes.push_back(v);
        }
    }

    fn push(&mut self) -> Value {
        self.pushes.pop_front().unwrap_or_else(|| self.conn.recv())
    }
}

/// `(id, name, state)` of each friend in a JSON login reply, by id.
fn json_friends(login: &Value) -> Vec<(u64, String, String)> {
    let mut friends: Vec<_> = strings(login, "friends")
        .iter()
        .map(|f| {
            (
                f["id"].as_u64().unwrap(),
                f["name"].as_str().unwrap().to_owned(),
                f["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    friends.sort();
    friends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_across_nodes() {
    let c = cluster(3, &[]);
    let [n0, n1, n2] = [0, 1, 2].map(|i| c.node(i).addr);

    // alice (FlatBuffers) on node 0, bob (FlatBuffers) on node 1, jay (seed
    // JSON) on node 2, each registered on their own node.
    let (alice, a) = fb_user(n0, "alice").await;
    let (bob, b) = fb_user(n1, "bob").await;
    let j = json_register(n2, "jay");

    // Alice befriends bob, who is online on node 1: she sees him online, he
    // is told.
    let friend = alice.add_friend(b).await.unwrap();
    assert_eq!(
        (friend.id, friend.name.as_str(), friend.online),
        (b, "bob", true)
    );
    expect_presence(&bob, a, "alice", true, WAIT).await;
    assert!(!alice.add_friend(j).await.unwrap().online, "jay is offline");
    assert!(!bob.add_friend(j).await.unwrap().online);

    // Jay logs in on node 2: both friends are online elsewhere, and both
    // hear of jay.
    let (conn, login) = json_login(n2, j);
    let mut jay = JsonUser {
        conn,
        pushes: VecDeque::new(),
    };
    assert_eq!(
        json_friends(&login),
        vec![
            (a, "alice".into(), "online".into()),
            (b, "bob".into(), "online".into())
        ]
    );
    expect_presence(&alice, j, "jay", true, WAIT).await;
    expect_presence(&bob, j, "jay", true, WAIT).await;

    // Bob logs out and in again on node 1; alice on node 0 hears both.
    bob.logout().await.unwrap();
    expect_presence(&alice, b, "bob", false, WAIT).await;
    let login = bob.login(b, "pw").await.unwrap();
    let mut friends: Vec<_> = login.friends.iter().map(|f| (f.id, f.online)).collect();
    friends.sort();
    assert_eq!(friends, vec![(a, true), (j, true)]);
    expect_presence(&alice, b, "bob", true, WAIT).await;

    // One session per user in the whole cluster, in both protocols.
    let elsewhere = Client::connect(n2).await.unwrap();
    assert_eq!(
        code(elsewhere.login(b, "pw").await),
        ErrorCode::AlreadyOnline
    );
    assert_eq!(
        code(elsewhere.login(a, "pw").await),
        ErrorCode::AlreadyOnline
    );
    // (`json_register` gives jay the seed's usual password.)
    for (addr, user, password) in [(n0, j, "123456"), (n1, a, "pw")] {
        let again =
            Json::connect(addr).ask(&format!(r#"{{"msgid":1,"id":{user},"pwd":"{password}"}}"#));
        assert_eq!(
            (again["msgid"].as_u64(), again["errno"].as_u64()),
            (Some(2), Some(2)),
            "second login of {user}: {again}"
        );
    }

    // Direct messages between nodes, FlatBuffers to FlatBuffers.
    let sent = alice.send_direct(b, "hi bob, from node 0").await.unwrap();
    expect_message(
        &bob,
        (sent.message_id, a, "alice", b, 0, "hi bob, from node 0"),
    )
    .await;
    let sent = bob.send_direct(a, "hi alice, from node 1").await.unwrap();
    expect_message(
        &alice,
        (sent.message_id, b, "bob", a, 0, "hi alice, from node 1"),
    )
    .await;

    // ... FlatBuffers to JSON and back.
    let sent = alice
        .send_direct(j, "hi jay, from flatbuffers")
        .await
        .unwrap();
    let push = jay.push();
    assert_eq!(
        (
            push["msgid"].as_u64(),
            push["id"].as_u64(),
            push["name"].as_str(),
            push["toid"].as_u64(),
            push["msg"].as_str(),
            push["messageid"].as_u64()
        ),
        (
            Some(6),
            Some(a),
            Some("alice"),
            Some(j),
            Some("hi jay, from flatbuffers"),
            Some(sent.message_id)
        )
    );
    let r = jay.ask(
        &format!(r#"{{"msgid":6,"id":{j},"toid":{b},"msg":"hi bob, from json"}}"#),
        12,
    );
    assert_eq!(r["errno"], 0, "{r}");
    let id = r["messageid"].as_u64().unwrap();
    expect_message(&bob, (id, j, "jay", b, 0, "hi bob, from json")).await;

    // A group with one member on each node.
    let g = alice
        .create_group("three", "one member per node")
        .await
        .unwrap();
    let group = bob.join_group(g).await.unwrap();
    let members: Vec<_> = group
        .members
        .iter()
        .map(|m| (m.id, m.online, m.role))
        .collect();
    assert_eq!(
        members,
        vec![(a, true, Role::Creator), (b, true, Role::Normal)]
    );
    let r = jay.ask(&format!(r#"{{"msgid":9,"id":{j},"groupid":{g}}}"#), 15);
    assert_eq!(
        (r["errno"].as_u64(), r["groupid"].as_u64()),
        (Some(0), Some(g)),
        "{r}"
    );

    let sent = alice.send_group(g, "hello from node 0").await.unwrap();
    expect_message(
        &bob,
        (sent.message_id, a, "alice", 0, g, "hello from node 0"),
    )
    .await;
    let push = jay.push();
    assert_eq!(
        (
            push["msgid"].as_u64(),
            push["id"].as_u64(),
            push["groupid"].as_u64(),
            push["msg"].as_str(),
            push["messageid"].as_u64()
        ),
        (
            Some(10),
            Some(a),
            Some(g),
            Some("hello from node 0"),
            Some(sent.message_id)
        )
    );
    let r = jay.ask(
        &format!(r#"{{"msgid":10,"id":{j},"groupid":{g},"msg":"hello from json on node 2"}}"#),
        16,
    );
    assert_eq!(r["errno"], 0, "{r}");
    let id = r["messageid"].as_u64().unwrap();
    for member in [&alice, &bob] {
        expect_message(member, (id, j, "jay", 0, g, "hello from json on node 2")).await;
    }
    let sent = bob.send_group(g, "hello from node 1").await.unwrap();
    expect_message(
        &alice,
        (sent.message_id, b, "bob", 0, g, "hello from node 1"),
    )
    .await;
    let push = jay.push();
    assert_eq!(
        (
            push["msgid"].as_u64(),
            push["id"].as_u64(),
            push["msg"].as_str()
        ),
        (Some(10), Some(b), Some("hello from node 1"))
    );

    // Nothing more: no echo to a sender, no duplicate.
    for (who, client) in [("alice", &alice), ("bob", &bob)] {
        let extra = client.next_event_timeout(QUIET).await;
        assert!(extra.is_err(), "{who} got {extra:?}");
    }
    assert!(jay.pushes.is_empty(), "{:?}", jay.pushes);
    let extra = jay.conn.try_recv(QUIET);
    assert!(extra.is_none(), "jay got {extra:?}");
}

/// Removing a friend or a group member, or reading a conversation, on one
/// node reaches the user on another node (pushes 48, 47 and 46 over NATS);
/// group info and finding a user see the other node's users online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_reach_users_on_other_nodes() {
    let c = cluster(2, &[]);
    let [n0, n1] = [0, 1].map(|i| c.node(i).addr);
    let a = json_register(n0, "alice");
    let b = json_register(n1, "bob");
    let (conn, _) = json_login(n0, a);
    let mut alice = JsonUser {
        conn,
        pushes: VecDeque::new(),
    };
    let (conn, _) = json_login(n1, b);
    let mut bob = JsonUser {
        conn,
        pushes: VecDeque::new(),
    };
    let r = alice.ask(&format!(r#"{{"msgid":7,"friendid":{b}}}"#), 13);
    assert_eq!(r["errno"], 0, "{r}");
    let found = alice.ask(r#"{"msgid":38,"name":"bob"}"#, 39);
    assert_eq!(
        (found["userid"].as_u64(), found["state"].as_str()),
        (Some(b), Some("online")),
        "{found}"
    );
    let g = alice.ask(r#"{"msgid":8,"groupname":"g"}"#, 14)["groupid"]
        .as_u64()
        .unwrap();
    let r = bob.ask(&format!(r#"{{"msgid":9,"groupid":{g}}}"#), 15);
    assert_eq!(r["errno"], 0, "{r}");
    let info = bob.ask(&format!(r#"{{"msgid":36,"groupid":{g}}}"#), 37);
    let states: Vec<(u64, String)> = strings(&info, "users")
        .iter()
        .map(|u| {
            (
                u["id"].as_u64().unwrap(),
                u["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states, vec![(a, "online".into()), (b, "online".into())]);

    // A read receipt crosses nodes too.
    let m = alice.ask(&format!(r#"{{"msgid":6,"toid":{b},"msg":"read me"}}"#), 12)["messageid"]
        .as_u64()
        .unwrap();
    assert_eq!(bob.push()["messageid"].as_u64(), Some(m));
    let r = bob.ask(&format!(r#"{{"msgid":42,"peer":{a},"upto":{m}}}"#), 43);
    assert_eq!(r["errno"], 0, "{r}");
    let receipt = alice.push();
    assert_eq!(
        (
            receipt["msgid"].as_u64(),
            receipt["id"].as_u64(),
            receipt["upto"].as_u64()
        ),
        (Some(46), Some(b), Some(m)),
        "{receipt}"
    );
    let r = alice.ask(&format!(r#"{{"msgid":34,"groupid":{g},"userid":{b}}}"#), 35);
    assert_eq!(r["errno"], 0, "{r}");
    let push = bob.push();
    assert_eq!(
        (push["msgid"].as_u64(), push["groupid"].as_u64()),
        (Some(47), Some(g)),
        "{push}"
    );
    let r = alice.ask(&format!(r#"{{"msgid":30,"friendid":{b}}}"#), 31);
    assert_eq!(r["errno"], 0, "{r}");
    let push = bob.push();
    assert_eq!(
        (push["msgid"].as_u64(), push["friendid"].as_u64()),
        (Some(48), Some(a)),
        "{push}"
    );
}

/// A session silent for `--takeover-after` on one node gives way to a new
/// login of its user on another node (asked over NATS) and is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_on_another_node_gives_way_to_a_new_login() {
    let args: &[&str] = &["--takeover-after", "1s"];
    let c = cluster(2, &[args, args]);
    let [n0, n1] = [0, 1].map(|i| c.node(i).addr);
    let alice = json_register(n1, "alice");
    let (mut silent, _) = json_login(n1, alice);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut fresh = Json::connect(n0);
    let login = fresh.ask(&format!(r#"{{"msgid":1,"id":{alice},"pwd":"123456"}}"#));
    assert_eq!(login["errno"], 0, "took over across nodes: {login}");
    let told = silent.recv();
    assert_eq!(
        (told["msgid"].as_u64(), told["errcode"].as_u64()),
        (Some(17), Some(4)),
        "{told}"
    );
    assert!(silent.closed_within(WAIT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_see_a_crashed_nodes_users_go_offline_within_the_lease() {
    let mut c = cluster(2, &[]);
    let (alice, alice_id) = fb_user(c.node(0).addr, "alice").await;
    let (bob, bob_id) = fb_user(c.node(1).addr, "bob").await;
    alice.add_friend(bob_id).await.unwrap();
    expect_presence(&bob, alice_id, "alice", true, WAIT).await;

    // Bob's node dies without a word; the lease decides when he is offline.
    let killed_at = Instant::now();
    c.node_mut(1).kill9();
    expect_presence(&alice, bob_id, "bob", false, LEASE_TTL + MARGIN).await;
    let took = killed_at.elapsed();
    assert!(
        took <= LEASE_TTL + Duration::from_secs(2),
        "offline push {took:?} after the crash (lease {LEASE_TTL:?})"
    );
    drop(bob);

    // His claim is released: he logs in on the surviving node at once, and
    // Alice sees him back.
    let bob = Client::connect(c.node(0).addr).await.unwrap();
    let login = bob.login(bob_id, "pw").await.unwrap();
    assert_eq!(login.friends.len(), 1);
    assert_eq!(
        (login.friends[0].id, login.friends[0].online),
        (alice_id, true)
    );
    expect_presence(&alice, bob_id, "bob", true, WAIT).await;
}

/// A node stopped past its lease has its users released, and they log in
/// elsewhere; when it runs again it closes its old sessions before serving,
/// so a user never has two live sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_a_stall_past_its_lease_closes_its_sessions() {
    let c = cluster(2, &[]);
    let (old, alice) = fb_user(c.node(1).addr, "alice").await;
    let pid = c.node(1).pid().expect("running") as i32;
    // SAFETY: kill(2) on a child's pid has no memory effects.
    let stopped = Instant::now();
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (new, _, _) = login_once_released(c.node(0).addr, alice, "pw", LEASE_TTL + MARGIN).await;
    assert!(
        stopped.elapsed() >= LEASE_TTL / 2,
        "released only by the lease"
    );
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let closed = wait_for_metric(
        c.node(1).metrics_addr,
        "chat_node_connections_closed_total{reason=\"lease_lost\"}",
        WAIT,
        |v| v >= 1.0,
    )
    .await;
    assert!(closed.is_ok(), "closed for the lost lease: {closed:?}");
    // The old session is closed by its node (its client sees the end).
    let ended =
        tokio::time::timeout(WAIT, async { while old.next_event().await.is_some() {} }).await;
    assert!(
        ended.is_ok(),
        "node 1 closed the session of its lapsed lease"
    );
    let lapses = wait_for_metric(
        c.node(1).metrics_addr,
        "chat_node_lease_lapses_total",
        WAIT,
        |v| v >= 1.0,
    )
    .await;
    assert!(lapses.is_ok(), "{lapses:?}");
    // The new session on node 0 is the one that lives.
    new.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_registers_once_across_nodes() {
    const ATTEMPTS: usize = 100;
    let c = cluster(3, &[]);
    let addrs = c.addrs();
    let mut clients = Vec::new();
    for i in 0..ATTEMPTS {
        clients.push(Client::connect(addrs[i % addrs.len()]).await.unwrap());
    }
    // Every registration is on the wire before any reply is awaited.
    let pending: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            client
                .start_request(&Request::Register {
                    name: "highlander",
                    password: &format!("pw{i}"),
                })
                .unwrap()
        })
        .collect();
    let mut winners = Vec::new();
    let mut taken = 0;
    for (i, p) in pending.into_iter().enumerate() {
        match p.wait().await.unwrap() {
            Reply::Register { user_id } => winners.push((i, user_id)),
            Reply::Error {
                code: ErrorCode::NameTaken,
                ..
            } => taken += 1,
            other => panic!("registration {i} on node {}: {other:?}", i % addrs.len()),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one registration wins: {winners:?}"
    );
    assert_eq!(taken, ATTEMPTS - 1);

    // The winner's password is the one stored, whichever node asks.
    let (i, id) = winners[0];
    let other = Client::connect(addrs[(i + 1) % addrs.len()]).await.unwrap();
    assert_eq!(
        code(other.login(id, &format!("pw{}", (i + 1) % ATTEMPTS)).await),
        ErrorCode::InvalidCredentials
    );
    let login = other.login(id, &format!("pw{i}")).await.unwrap();
    assert_eq!(login.name, "highlander");
}

// ---- conversation flows ---------------------------------------------------

/// Pause between two sends of one user.
const PACE: Duration = Duration::from_millis(5);

/// One user of a [`Flow`].
#[derive(Debug, Clone, Copy)]
struct FlowUser {
    id: u64,
    partner: u64,
    home: SocketAddr,
    /// Where to log in again if the home node dies; `None`: a failed send
    /// fails the test.
    fallback: Option<SocketAddr>,
}

/// What one user of a flow sent and received.
#[derive(Default)]
struct Ledger {
    /// `(message id, sequence number)` of every send the node acknowledged.
    acked: Vec<(u64, u64)>,
    dedup: Dedup,
    /// Messages received, each id once across sessions, in arrival order.
    received: Vec<Received>,
    /// When the user got in again after losing its node.
    relogged_at: Option<Instant>,
    /// Broken promises seen while receiving.
    violations: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Received {
    id: u64,
    sender: u64,
    seq: u64,
}

fn flow_text(sender: u64, seq: u64) -> String {
    format!("{sender}:{seq}")
}

/// Records a message received in `session`, where the last id was `last`.
fn record(ledger: &Mutex<Ledger>, m: &Message, session: u32, last: &mut u64) {
    let mut l = ledger.lock().unwrap();
    if m.id <= *last {
        l.violations
            .push(format!("session {session}: id {} after {last}", m.id));
    }
    *last = m.id.max(*last);
    if !l.dedup.first_time(m.id) {
        return;
    }
    let seq = m
        .text
        .split_once(':')
        .filter(|(from, _)| from.parse() == Ok(m.sender_id))
        .and_then(|(_, seq)| seq.parse().ok());
    match seq {
        Some(seq) => l.received.push(Received {
            id: m.id,
            sender: m.sender_id,
            seq,
        }),
        None => l.violations.push(format!("unexpected message {m:?}")),
    }
}

/// Takes in what a login brought and receives the session's pushes until
/// its connection ends, acknowledging now and then (so that a later login
/// repeats some of what was received, which the ledger drops by id).
fn receive(
    client: &Client,
    login: Login,
    ledger: &Arc<Mutex<Ledger>>,
    session: u32,
) -> tokio::task::JoinHandle<()> {
    let mut last = 0;
    for m in &login.pending {
        record(ledger, m, session, &mut last);
    }
    if let Some(m) = login.pending.last() {
        let _ = client.start_request(&Request::DeliveryAck {
            message_id: m.id,
            quiet: false,
        });
    }
    let client = client.clone();
    let ledger = Arc::clone(ledger);
    tokio::spawn(async move {
        let mut count = 0u64;
        while let Some(event) = client.next_event().await {
            if let Event::Message(m) = event {
                record(&ledger, &m, session, &mut last);
                count += 1;
                if count.is_multiple_of(10) {
                    let _ = client.start_request(&Request::DeliveryAck {
                        message_id: m.id,
                        quiet: false,
                    });
                }
            }
        }
    })
}

/// Sends numbered messages to the partner until `stop`; when the home node
/// dies, logs in on the fallback node once it may and goes on. Returns the
/// live session.
async fn run_flow_user(
    user: FlowUser,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> Client {
    let mut client = Client::connect(user.home).await.unwrap();
    let login = client.login(user.id, "pw").await.unwrap();
    let mut session = 0;
    let mut receiver = receive(&client, login, &ledger, session);
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        match client
            .send_direct(user.partner, &flow_text(user.id, seq))
            .await
        {
            Ok(sent) => ledger.lock().unwrap().acked.push((sent.message_id, seq)),
            Err(e) => {
                let Some(fallback) = user.fallback else {
                    panic!("user {}: send {seq} failed: {e}", user.id);
                };
                // The node is gone, and with it this session.
                tokio::time::timeout(WAIT, receiver)
                    .await
                    .expect("the dead node's connection ends")
                    .unwrap();
                let (c, login, at) =
                    login_once_released(fallback, user.id, "pw", LEASE_TTL + MARGIN).await;
                ledger.lock().unwrap().relogged_at = Some(at);
                session += 1;
                receiver = receive(&c, login, &ledger, session);
                client = c;
            }
        }
        seq += 1;
        tokio::time::sleep(PACE).await;
    }
    client
}

/// Users sending to each other continuously, each keeping a [`Ledger`].
struct Flow {
    users: Vec<FlowUser>,
    ledgers: Vec<Arc<Mutex<Ledger>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<Option<tokio::task::JoinHandle<Client>>>,
}

impl Flow {
    /// Registers pairs of users, the first of each pair on `left`, the
    /// second on `right` (falling back to `right_fallback`), and starts them.
    async fn start(
        pairs: usize,
        left: SocketAddr,
        right: SocketAddr,
        right_fallback: Option<SocketAddr>,
    ) -> Flow {
        let mut users = Vec::new();
        for k in 0..pairs {
            let l = Client::connect(left).await.unwrap();
            let l = l.register(&format!("left{k}"), "pw").await.unwrap();
            let r = Client::connect(right).await.unwrap();
            let r = r.register(&format!("right{k}"), "pw").await.unwrap();
            users.push(FlowUser {
                id: l,
                partner: r,
                home: left,
                fallback: None,
            });
            users.push(FlowUser {
                id: r,
                partner: l,
                home: right,
                fallback: right_fallback,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ledgers: Vec<_> = users.iter().map(|_| Arc::default()).collect();
        let tasks = users
            .iter()
            .zip(&ledgers)
            .map(|(u, l)| {
                Some(tokio::spawn(run_flow_user(
                    *u,
                    Arc::clone(l),
                    Arc::clone(&stop),
                )))
            })
            .collect();
        Flow {
            users,
            ledgers,
            stop,
            tasks,
        }
    }

    fn ledger(&self, i: usize) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledgers[i].lock().unwrap()
    }

    fn acked(&self) -> Vec<usize> {
        (0..self.users.len())
            .map(|i| self.ledger(i).acked.len())
            .collect()
    }

    /// Waits until `done(self)`; a user task that ended (a panic) fails the
    /// test at once with its own message.
    async fn wait_until(&mut self, within: Duration, what: &str, done: impl Fn(&Flow) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            for task in &mut self.tasks {
                if task.as_ref().is_some_and(|t| t.is_finished()) {
                    match task.take().unwrap().await {
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        other => panic!("a user stopped early: {other:?}"),
                    }
                }
            }
            assert!(Instant::now() < deadline, "not within {within:?}: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every user has had `more` sends acknowledged since now.
    async fn wait_for_sends(&mut self, more: usize, within: Duration) {
        let base = self.acked();
        self.wait_until(
            within,
            &format!("{more} more acknowledged sends each"),
            |f| {
                f.acked()
                    .iter()
                    .zip(&base)
                    .all(|(now, then)| now >= &(then + more))
            },
        )
        .await;
    }

    /// How many acknowledged sends of each user its partner has not received.
    fn missing(&self) -> Vec<usize> {
        (0..self.users.len())
            .map(|i| {
                let partner = self.partner_index(i);
                let got: HashSet<u64> =
                    self.ledger(partner).received.iter().map(|r| r.id).collect();
                self.ledger(i)
                    .acked
                    .iter()
                    .filter(|(id, _)| !got.contains(id))
                    .count()
            })
            .collect()
    }

    fn partner_index(&self, i: usize) -> usize {
        i ^ 1
    }

    /// Stops sending, waits until every acknowledged message has arrived,
    /// and checks: each arrived once (after dedupe by id), in order per
    /// sender; what else arrived are sends never acknowledged, in order too.
    async fn finish(mut self, within: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sessions = Vec::new();
        for task in &mut self.tasks {
            let task = task.take().expect("every user is still running");
            sessions.push(task.await.unwrap());
        }
        let deadline = Instant::now() + within;
        while self.missing().iter().any(|&n| n > 0) {
            assert!(
                Instant::now() < deadline,
                "acknowledged messages not received within {within:?}, per sender: {:?}",
                self.missing()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..self.users.len() {
            let user = self.users[i];
            let partner = self.partner_index(i);
            let ledger = self.ledger(i);
            assert!(
                ledger.violations.is_empty(),
                "user {}: {:?}",
                user.id,
                ledger.violations
            );
            let theirs: HashMap<u64, u64> = self.ledger(partner).acked.iter().copied().collect();
            let mut last_seq = None;
            for r in &ledger.received {
                assert_eq!(r.sender, user.partner, "user {} got {r:?}", user.id);
                assert!(
                    last_seq < Some(r.seq),
                    "user {}: from {}, seq {} after {last_seq:?} ({r:?})",
                    user.id,
                    r.sender,
                    r.seq
                );
                last_seq = Some(r.seq);
                if let Some(seq) = theirs.get(&r.id) {
                    assert_eq!(*seq, r.seq, "{r:?}");
                }
            }
        }
        drop(sessions);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_node_loses_no_acknowledged_message() {
    let mut c = cluster(3, &[]);
    let [a, b, fallback] = [0, 1, 2].map(|i| c.node(i).addr);
    let mut flow = Flow::start(4, a, b, Some(fallback)).await;
    flow.wait_for_sends(30, Duration::from_secs(20)).await;

    // Node B dies mid-flow. Its users are claimed until its lease expires,
    // then log in on node C and go on; node A's users keep sending to them.
    let killed_at = Instant::now();
    c.node_mut(1).kill9();
    flow.wait_until(
        LEASE_TTL + MARGIN + Duration::from_secs(5),
        "B's users back on C",
        |f| {
            f.users
                .iter()
                .enumerate()
                .all(|(i, u)| u.fallback.is_none() || f.ledger(i).relogged_at.is_some())
        },
    )
    .await;
    for (i, u) in flow.users.iter().enumerate() {
        if let Some(at) = flow.ledger(i).relogged_at {
            let took = at - killed_at;
            assert!(
                took <= LEASE_TTL + MARGIN,
                "user {} got in on node C {took:?} after the kill (lease {LEASE_TTL:?})",
                u.id
            );
        }
    }
    flow.wait_for_sends(30, Duration::from_secs(20)).await;
    flow.finish(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_loses_nothing_and_live_delivery_resumes() {
    let mut c = cluster(2, &[]);
    let [n0, n1] = [0, 1].map(|i| c.node(i).addr);
    let (m0, id0) = fb_user(n0, "marker0").await;
    let (m1, id1) = fb_user(n1, "marker1").await;
    let mut flow = Flow::start(3, n0, n1, None).await;
    flow.wait_for_sends(30, Duration::from_secs(20)).await;

    // NATS dies: sends still succeed (the store is shared, not behind NATS).
    c.nats_mut().kill9();
    flow.wait_for_sends(30, Duration::from_secs(20)).await;

    // NATS comes back on the same port: fresh messages are delivered live.
    c.nats_mut().restart().unwrap();
    let sent = m0
        .send_direct(id1, "after the restart, 0 to 1")
        .await
        .unwrap();
    expect_message(
        &m1,
        (
            sent.message_id,
            id0,
            "marker0",
            id1,
            0,
            "after the restart, 0 to 1",
        ),
    )
    .await;
    let sent = m1
        .send_direct(id0, "after the restart, 1 to 0")
        .await
        .unwrap();
    expect_message(
        &m0,
        (
            sent.message_id,
            id1,
            "marker1",
            id0,
            0,
            "after the restart, 1 to 0",
        ),
    )
    .await;
    flow.wait_for_sends(30, Duration::from_secs(20)).await;
    flow.finish(Duration::from_secs(30)).await;
}

/// A client that stops reading is disconnected as a slow consumer in a
/// cluster too (there its messages come by wake-ups and store reads, not
/// live pushes), and gets what it missed at its next login.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_is_disconnected_in_a_cluster_too() {
    let c = cluster(
        2,
        &[
            &["--send-rate", "0"],
            &["--max-outbound", "65536", "--send-rate", "0"],
        ],
    );
    let [n0, n1] = [0, 1].map(|i| c.node(i).addr);
    let (alice, _) = fb_user(n0, "alice").await;
    // Bob logs in on node 1 and then never reads.
    let (raw, b) = common::fb_login_never_reading(n1, "bob").await;
    let text = "y".repeat(4000);
    const SENT: usize = 4000;
    for _ in 0..SENT {
        alice.send_direct(b, &text).await.unwrap();
    }
    // 16 MB for a client that reads nothing: node 1 cuts it off, so bob can
    // log in again and gets everything from the store.
    let cut = wait_for_metric(
        c.node(1).metrics_addr,
        "chat_node_slow_consumer_disconnects_total",
        WAIT,
        |v| v >= 1.0,
    )
    .await;
    assert!(
        cut.is_ok(),
        "node 1 disconnected the slow consumer: {cut:?}"
    );
    let again = login_once_released(n1, b, "pw", WAIT).await;
    let mut received = again.1.pending.len();
    while received < SENT {
        again.0.next_message_timeout(WAIT).await.unwrap();
        received += 1;
    }
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_slow_consumer_gap_is_recovered() {
    const SENDERS: usize = 16;
    const RECEIVERS: usize = 4;
    const EACH: usize = 25;
    let c = cluster(2, &[&[], &["--nats-subscription-capacity", "1"]]);
    let [n0, n1] = [0, 1].map(|i| c.node(i).addr);
    let mut receivers = Vec::new();
    for r in 0..RECEIVERS {
        receivers.push(fb_user(n1, &format!("receiver{r}")).await);
    }
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        senders.push(fb_user(n0, &format!("sender{s}")).await);
    }

    // A burst: every send is on the wire before any reply is awaited.
    let mut pending = Vec::new();
    for (s, (client, _)) in senders.iter().enumerate() {
        for k in 0..EACH {
            let to = receivers[(s + k) % RECEIVERS].1;
            let text = format!("burst {s} {k}");
            let p = client
                .start_request(&Request::DirectMessage {
                    user_id: 0,
                    to_id: to,
                    text: &text,
                })
                .unwrap();
            pending.push((to, p));
        }
    }
    let mut expected: HashMap<u64, HashSet<u64>> = HashMap::new();
    for (to, p) in pending {
        match p.wait().await.unwrap() {
            Reply::DirectMessage(sent) => {
                expected.entry(to).or_default().insert(sent.message_id);
            }
            other => panic!("send to {to}: {other:?}"),
        }
    }

    // Every message arrives, once, in id order.
    for (client, id) in &receivers {
        let want = &expected[id];
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < want.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.next_event_timeout(left).await {
                Ok(Event::Message(m)) => got.push(m.id),
                Ok(other) => panic!("receiver {id}: unexpected {other:?}"),
                Err(e) => panic!(
                    "receiver {id}: {} of {} messages, then {e}; gaps on the receiving node: {:?}",
                    got.len(),
                    want.len(),
                    common::cluster::metric(c.node(1).metrics_addr, "chat_node_nats_gaps_total")
                        .await
                ),
            }
        }
        assert!(
            got.is_sorted() && got.windows(2).all(|w| w[0] != w[1]),
            "{got:?}"
        );
        assert_eq!(&got.iter().copied().collect::<HashSet<_>>(), want);
    }

    // ... because the receiving node noticed what NATS dropped.
    let gaps = wait_for_metric(
        c.node(1).metrics_addr,
        "chat_node_nats_gaps_total",
        WAIT,
        |v| v > 0.0,
    )
    .await;
    assert!(
        gaps.is_ok(),
        "no NATS gap counted on the receiving node: {gaps:?}"
    );
}

#[tokio::test]
async fn harness_restarts_nats_on_its_port_and_leaves_no_process_behind() {
    let mut c = cluster(2, &[]);
    let nats_addr = c.nats().addr();
    assert_eq!(c.nats().url(), format!("nats://{nats_addr}"));
    assert_eq!(
        c.nodes().iter().map(|n| n.node_id()).collect::<Vec<_>>(),
        ["node-0", "node-1"]
    );
    assert!(c.nodes().iter().all(|n| n.data_dir() == c.data_dir()));
    let varz = http_get(c.nats().monitor_addr(), "/varz").unwrap();
    assert!(varz.contains("\"server_id\""), "{varz}");
    let mut subjects = c.nats().subscriptions().unwrap();
    subjects.sort();
    assert_eq!(subjects, ["chat.node.node-0", "chat.node.node-1"]);

    let first = c.nats().pid().unwrap();
    c.nats_mut().kill9();
    assert!(!alive(first));
    assert!(std::net::TcpStream::connect(nats_addr).is_err());
    c.nats_mut().restart().unwrap();
    assert_eq!(c.nats().addr(), nats_addr);
    let varz = http_get(c.nats().monitor_addr(), "/varz").unwrap();
    assert!(
        varz.contains(&format!("\"port\": {}", nats_addr.port())),
        "{varz}"
    );
    c.wait_joined(Duration::from_secs(10))
        .expect("the nodes subscribe again");

    let (alice, _) = fb_user(c.node(0).addr, "alice").await;
    alice.ping().await.unwrap();
    let mut pids: Vec<u32> = c.nodes().iter().map(|n| n.pid().unwrap()).collect();
    pids.push(c.nats().pid().unwrap());
    let dir = c.data_dir().to_owned();
    drop(c);
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the cluster");
    }
    assert!(!dir.exists(), "{} outlived the cluster", dir.display());
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}
