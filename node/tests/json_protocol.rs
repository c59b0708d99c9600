//! The seed's JSON protocol end to end over real TCP: the seed's own test
//! messages, the shapes its C++ client reads, and the seed's crashes turned
//! into error replies.

mod common;

use std::time::Duration;

use common::{
    Json, json_login, json_login_again, json_register, node, node_with, offline_ids, strings,
};

const QUIET: Duration = Duration::from_millis(300);

#[test]
fn register_login_chat_and_offline_delivery() {
    let node = node();
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    assert!(bob > alice, "ids increase");

    // A taken name fails with the seed's errno 1.
    let dup = Json::connect(node.addr).ask(r#"{"msgid":4,"name":"alice","password":"x"}"#);
    assert_eq!(
        (
            dup["msgid"].as_u64(),
            dup["errno"].as_u64(),
            dup["errcode"].as_u64()
        ),
        (Some(5), Some(1), Some(3))
    );

    let (mut a, login) = json_login(node.addr, alice);
    assert_eq!(login["name"], "alice");
    assert!(login.get("offlinemsg").is_none() && login.get("friends").is_none());

    // Friend request; bob is offline, so the message waits for him.
    let r = a.ask(&format!(r#"{{"msgid":7,"id":{alice},"friendid":{bob}}}"#));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(13), Some(0)),
        "{r}"
    );
    assert_eq!(r["state"], "offline");
    // The seed's test message: `from` and `toid`, quotes inside the text.
    let r = a.ask(&format!(
        r#"{{"msgid":6,"id":{alice},"from":"cmf","toid":{bob},"msg":"say \"hi\" 你好"}}"#
    ));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(12), Some(0)),
        "{r}"
    );
    let first_id = r["messageid"].as_u64().unwrap();

    let (mut b, login) = json_login(node.addr, bob);
    let offline = strings(&login, "offlinemsg");
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0]["msgid"], 6);
    assert_eq!(offline[0]["id"], alice);
    assert_eq!(offline[0]["name"], "alice");
    assert_eq!(offline[0]["toid"], bob);
    assert_eq!(offline[0]["msg"], "say \"hi\" 你好");
    assert_eq!(offline[0]["messageid"], first_id);
    assert!(
        offline[0]["time"].as_str().unwrap().len() == 19,
        "YYYY-MM-DD HH:MM:SS"
    );
    let friends = strings(&login, "friends");
    assert_eq!(friends.len(), 1);
    assert_eq!(
        (
            friends[0]["id"].as_u64(),
            friends[0]["name"].as_str(),
            friends[0]["state"].as_str()
        ),
        (Some(alice), Some("alice"), Some("online"))
    );

    // Live: the format section's `to` works too; the recipient sees the
    // session's name, not what the sender claimed.
    let r = a.ask(&format!(r#"{{"msgid":6,"id":{alice},"name":"mallory","to":{bob},"msg":"live","time":"2024-01-01 00:00:00"}}"#));
    assert_eq!(r["errno"], 0);
    let push = b.recv();
    assert_eq!(
        (
            push["msgid"].as_u64(),
            push["id"].as_u64(),
            push["name"].as_str(),
            push["msg"].as_str()
        ),
        (Some(6), Some(alice), Some("alice"), Some("live"))
    );

    // A JSON push counts as delivered once written: bob's next login is empty.
    drop(b);
    let (_b, login) = json_login_again(node.addr, bob);
    assert!(login.get("offlinemsg").is_none(), "{login}");
}

#[test]
fn second_login_wrong_password_and_unknown_id() {
    let node = node();
    let alice = json_register(node.addr, "alice");
    let (_a, _) = json_login(node.addr, alice);
    let again =
        Json::connect(node.addr).ask(&format!(r#"{{"msgid":1,"id":{alice},"pwd":"123456"}}"#));
    assert_eq!(
        (again["msgid"].as_u64(), again["errno"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(again["errmsg"], "this account is using, input another!");
    let wrong =
        Json::connect(node.addr).ask(&format!(r#"{{"msgid":1,"id":{alice},"pwd":"nope"}}"#));
    assert_eq!(
        (wrong["msgid"].as_u64(), wrong["errno"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(wrong["errmsg"], "id or password is invalid!");
    let unknown = Json::connect(node.addr).ask(r#"{"msgid":1,"id":999999,"pwd":"123456"}"#);
    assert_eq!(unknown["errno"], 1);
}

#[test]
fn groups_reach_every_other_member_online_and_offline() {
    let node = node();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| json_register(node.addr, n));
    let (mut a, _) = json_login(node.addr, alice);
    let (mut b, _) = json_login(node.addr, bob);

    let r = a.ask(&format!(
        r#"{{"msgid":8,"id":{alice},"groupname":"test","groupdesc":"test"}}"#
    ));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(14), Some(0)),
        "{r}"
    );
    let group = r["groupid"].as_u64().unwrap();
    let r = b.ask(&format!(r#"{{"msgid":9,"id":{bob},"groupid":{group}}}"#));
    assert_eq!(
        (
            r["msgid"].as_u64(),
            r["errno"].as_u64(),
            r["groupid"].as_u64()
        ),
        (Some(15), Some(0), Some(group)),
        "{r}"
    );
    let again = b.ask(&format!(r#"{{"msgid":9,"id":{bob},"groupid":{group}}}"#));
    assert_eq!(
        (again["errno"].as_u64(), again["errcode"].as_u64()),
        (Some(1), Some(9)),
        "joining twice"
    );
    {
        let (mut c, _) = json_login(node.addr, carol);
        let r = c.ask(&format!(r#"{{"msgid":9,"id":{carol},"groupid":{group}}}"#));
        assert_eq!(r["errno"], 0);
        c.ask(&format!(r#"{{"msgid":3,"id":{carol}}}"#));
    }
    let r = a.ask(&format!(
        r#"{{"msgid":10,"id":{alice},"name":"mmm","groupid":{group},"msg":"hello every one"}}"#
    ));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(16), Some(0)),
        "{r}"
    );
    let push = b.recv();
    assert_eq!(
        (
            push["msgid"].as_u64(),
            push["id"].as_u64(),
            push["name"].as_str(),
            push["groupid"].as_u64(),
            push["msg"].as_str()
        ),
        (
            Some(10),
            Some(alice),
            Some("alice"),
            Some(group),
            Some("hello every one")
        )
    );
    assert!(
        a.try_recv(QUIET).is_none(),
        "the sender does not get its own group message"
    );

    // Carol was offline: she gets it at login, and sees the group with roles.
    let (_c, login) = json_login(node.addr, carol);
    let offline = strings(&login, "offlinemsg");
    assert_eq!(offline.len(), 1);
    assert_eq!(
        (offline[0]["msgid"].as_u64(), offline[0]["groupid"].as_u64()),
        (Some(10), Some(group))
    );
    let groups = strings(&login, "groups");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["groupname"], "test");
    let users: Vec<serde_json::Value> = groups[0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str(s.as_str().unwrap()).unwrap())
        .collect();
    let roles: Vec<(u64, &str)> = users
        .iter()
        .map(|u| (u["id"].as_u64().unwrap(), u["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        vec![(alice, "creator"), (bob, "normal"), (carol, "normal")]
    );
    assert_eq!(users[0]["state"], "online");

    // Non-members can not post.
    let dave = json_register(node.addr, "dave");
    let (mut d, _) = json_login(node.addr, dave);
    let r = d.ask(&format!(
        r#"{{"msgid":10,"id":{dave},"groupid":{group},"msg":"x"}}"#
    ));
    assert_eq!(
        (
            r["msgid"].as_u64(),
            r["errno"].as_u64(),
            r["errcode"].as_u64()
        ),
        (Some(16), Some(1), Some(8))
    );
    let r = d.ask(r#"{"msgid":9,"id":0,"groupid":987654}"#);
    assert_eq!(r["errno"], 1, "unknown group or forbidden id: {r}");
}

#[test]
fn impersonation_is_refused_and_nothing_is_sent() {
    let node = node();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| json_register(node.addr, n));
    let (mut a, _) = json_login(node.addr, alice);
    let (mut c, _) = json_login(node.addr, carol);
    // Alice's session claims to be bob.
    let r = a.ask(&format!(
        r#"{{"msgid":6,"id":{bob},"toid":{carol},"msg":"I am bob"}}"#
    ));
    assert_eq!(
        (
            r["msgid"].as_u64(),
            r["errno"].as_u64(),
            r["errcode"].as_u64()
        ),
        (Some(12), Some(1), Some(5)),
        "{r}"
    );
    assert!(c.try_recv(QUIET).is_none(), "carol got nothing");
    let r = a.ask(&format!(r#"{{"msgid":3,"id":{carol}}}"#));
    assert_eq!(r["errcode"], 5, "alice can not log carol out: {r}");
    let r = a.ask(&format!(r#"{{"msgid":7,"id":{bob},"friendid":{carol}}}"#));
    assert_eq!(r["errcode"], 5);
    // Requests before login are refused.
    let r = Json::connect(node.addr).ask(&format!(
        r#"{{"msgid":6,"id":{alice},"toid":{carol},"msg":"x"}}"#
    ));
    assert_eq!(
        (r["errno"].as_u64(), r["errcode"].as_u64()),
        (Some(1), Some(4))
    );
    // Carol is still logged in: her session works.
    let r = c.ask(&format!(
        r#"{{"msgid":6,"id":{carol},"toid":{alice},"msg":"still here"}}"#
    ));
    assert_eq!(r["errno"], 0);
    assert_eq!(a.recv()["msg"], "still here");
}

#[test]
fn bad_input_gets_an_error_and_the_node_keeps_serving() {
    let node = node_with(&["--max-text", "100"]);
    let alice = json_register(node.addr, "alice");
    let mut c = Json::connect(node.addr);
    // The seed's crash: a field of the wrong type.
    let r = c.ask(r#"{"msgid":1,"id":"3","pwd":"123456"}"#);
    assert_eq!(
        (
            r["msgid"].as_u64(),
            r["errno"].as_u64(),
            r["errcode"].as_u64()
        ),
        (Some(2), Some(1), Some(13)),
        "{r}"
    );
    assert!(r["errmsg"].as_str().unwrap().contains("id"));
    // Broken JSON, then unknown and missing msgids.
    let r = c.ask(r#"{"msgid":1,"id":"#);
    assert_eq!(
        (r["msgid"].as_u64(), r["errcode"].as_u64()),
        (Some(17), Some(13)),
        "{r}"
    );
    let r = c.ask(r#"{"msgid":99}"#);
    assert_eq!(
        (r["msgid"].as_u64(), r["errcode"].as_u64()),
        (Some(17), Some(13))
    );
    let r = c.ask(r#"{"id":1}"#);
    assert_eq!(r["msgid"], 17);
    // The seed's own register test message has no name.
    let r = c.ask(r#"{"msgid":4,"id":2,"pwd":"123456"}"#);
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(5), Some(1))
    );
    assert!(r["errmsg"].as_str().unwrap().contains("name"), "{r}");
    // Text over the limit is refused, not truncated.
    let r = c.ask(&format!(r#"{{"msgid":1,"id":{alice},"pwd":"123456"}}"#));
    assert_eq!(r["errno"], 0);
    let long = "x".repeat(101);
    let r = c.ask(&format!(
        r#"{{"msgid":6,"id":{alice},"toid":{alice},"msg":"{long}"}}"#
    ));
    assert_eq!(
        (r["msgid"].as_u64(), r["errcode"].as_u64()),
        (Some(12), Some(12))
    );
    // Junk that is not JSON at all.
    c.send_raw(b"hello there\n");
    assert_eq!(c.recv()["msgid"], 17);
    // Still the same working session afterwards.
    // (The push to oneself may come before or after the reply.)
    let first = c.ask(&format!(
        r#"{{"msgid":6,"id":{alice},"toid":{alice},"msg":"to myself"}}"#
    ));
    let mut both = [first, c.recv()];
    both.sort_by_key(|v| v["msgid"].as_u64());
    let [push, reply] = both;
    assert_eq!(
        (reply["msgid"].as_u64(), reply["errno"].as_u64()),
        (Some(12), Some(0)),
        "{reply}"
    );
    assert_eq!(
        (push["msgid"].as_u64(), push["msg"].as_str()),
        (Some(6), Some("to myself")),
        "{push}"
    );
    // And the node still serves others.
    json_register(node.addr, "bob");
}

/// One JSON connection used by two users in turn, as the seed's client
/// allows: B's offline messages, delivered in B's login reply, count as
/// delivered even though A was sent later (higher) ids on the same
/// connection before, so B's next login does not bring them again.
#[test]
fn a_connection_reused_by_another_user_acknowledges_for_that_user() {
    let node = node();
    let a = json_register(node.addr, "a");
    let b = json_register(node.addr, "b");
    let s = json_register(node.addr, "s");
    let (mut sender, _) = json_login(node.addr, s);
    // B's offline messages get the lower ids.
    for i in 0..3 {
        let r = sender.ask(&format!(
            r#"{{"msgid":6,"id":{s},"toid":{b},"msg":"b{i}"}}"#
        ));
        assert_eq!(r["errno"], 0, "{r}");
    }
    let mut c = Json::connect(node.addr);
    let r = c.ask(&format!(r#"{{"msgid":1,"id":{a},"pwd":"123456"}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    for i in 0..5 {
        let r = sender.ask(&format!(
            r#"{{"msgid":6,"id":{s},"toid":{a},"msg":"a{i}"}}"#
        ));
        assert_eq!(r["errno"], 0, "{r}");
        assert_eq!(c.recv()["msg"], format!("a{i}"));
    }
    let r = c.ask(&format!(r#"{{"msgid":3,"id":{a}}}"#));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(11), Some(0)),
        "{r}"
    );
    let r = c.ask(&format!(r#"{{"msgid":1,"id":{b},"pwd":"123456"}}"#));
    assert_eq!(strings(&r, "offlinemsg").len(), 3, "{r}");
    // B logs out (its position is written at logout) and in again.
    let r = c.ask(&format!(r#"{{"msgid":3,"id":{b}}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    let r = c.ask(&format!(r#"{{"msgid":1,"id":{b},"pwd":"123456"}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    assert!(
        r.get("offlinemsg").is_none(),
        "B's messages were delivered once already: {r}"
    );
    // And A's were acknowledged for A alone.
    let r = c.ask(&format!(r#"{{"msgid":3,"id":{b}}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    let r = c.ask(&format!(r#"{{"msgid":1,"id":{a},"pwd":"123456"}}"#));
    assert!(r.get("offlinemsg").is_none(), "{r}");
}

/// A client that trickles a request byte by byte is closed once the request
/// has taken longer than `--frame-timeout`, with an error; one that never
/// logs in is closed after `--login-timeout` (pings do not count); a
/// logged-in client that is only quiet stays.
#[test]
fn trickled_requests_and_connections_that_never_log_in_are_closed() {
    let node = node_with(&["--frame-timeout", "1s", "--login-timeout", "2s"]);
    let alice = json_register(node.addr, "alice");

    let mut trickle = Json::connect(node.addr);
    trickle.send_raw(b"{");
    let mut error = None;
    for b in br#""msgid":18"#.iter().cycle().take(20) {
        std::thread::sleep(Duration::from_millis(300));
        trickle.send_raw(&[*b]);
        if let Some(v) = trickle.try_recv(Duration::from_millis(1)) {
            error = Some(v);
            break;
        }
    }
    let error = error.or_else(|| trickle.try_recv(Duration::from_secs(2)));
    let error = error.expect("an error before the close");
    assert_eq!(
        (error["msgid"].as_u64(), error["errcode"].as_u64()),
        (Some(17), Some(13)),
        "{error}"
    );
    assert!(
        error["errmsg"].as_str().unwrap().contains("incomplete"),
        "{error}"
    );
    assert!(trickle.closed_within(Duration::from_secs(2)));

    let mut anonymous = Json::connect(node.addr);
    let mut closing = None;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        anonymous.send(r#"{"msgid":18}"#);
        match anonymous.try_recv(Duration::from_millis(500)) {
            Some(v) if v["msgid"] == 19 => {}
            other => {
                closing = other;
                break;
            }
        }
    }
    let closing = closing.expect("closed within the login timeout, with an error");
    assert_eq!(
        (closing["msgid"].as_u64(), closing["errcode"].as_u64()),
        (Some(17), Some(4)),
        "{closing}"
    );
    assert!(anonymous.closed_within(Duration::from_secs(2)));

    // Logged in and quiet past both timeouts: still served.
    let (mut quiet, _) = json_login(node.addr, alice);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(quiet.ask(r#"{"msgid":18}"#)["msgid"], 19);
    // Logged out, the login deadline counts again from the logout.
    let r = quiet.ask(&format!(r#"{{"msgid":3,"id":{alice}}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        quiet.ask(r#"{"msgid":18}"#)["msgid"],
        19,
        "1.5 s after the logout"
    );
    let last = quiet
        .try_recv(Duration::from_secs(3))
        .expect("the login deadline");
    assert_eq!(last["errcode"], 4, "{last}");
}

/// Over `--send-rate` a send is refused with `RateLimited` (errcode 19) and
/// a retry hint; after the hint it goes through. Nothing refused is stored.
#[test]
fn a_user_sending_too_fast_is_told_when_to_retry() {
    let node = node_with(&["--send-rate", "5", "--send-burst", "5"]);
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let (mut a, _) = json_login(node.addr, alice);
    // To another user: alice's connection then carries only the replies (a
    // push to oneself may come before the reply to its send).
    let (mut b, _) = json_login(node.addr, bob);
    let send = |a: &mut Json, i: u32| {
        a.ask(&format!(
            r#"{{"msgid":6,"id":{alice},"toid":{bob},"msg":"m{i}"}}"#
        ))
    };
    let mut refused = None;
    for i in 0..20 {
        let r = send(&mut a, i);
        if r["errno"] == 0 {
            assert_eq!(b.recv()["msg"], format!("m{i}"));
        } else {
            refused = Some((i, r));
            break;
        }
    }
    let (at, r) = refused.expect("refused within 20 sends at 5/s");
    assert!(
        at >= 5,
        "the burst of 5 goes through first, refused at {at}: {r}"
    );
    assert_eq!(
        (r["msgid"].as_u64(), r["errcode"].as_u64()),
        (Some(12), Some(19)),
        "{r}"
    );
    let wait = r["retryafter"].as_u64().expect("a retry hint");
    assert!((1..=200).contains(&wait), "{r}");
    assert!(
        r["errmsg"]
            .as_str()
            .unwrap()
            .contains("at most 5 messages a second"),
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(wait + 20));
    let r = send(&mut a, 99);
    assert_eq!(r["errno"], 0, "after the hint: {r}");
    assert_eq!(b.recv()["msg"], "m99", "the refused one was not stored");
    let text = chat_testkit::scrape(node.metrics_addr).unwrap();
    assert!(
        chat_testkit::metric_value(&text, "chat_node_refused_total{reason=\"rate_limited\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

/// At `--max-pending-per-user`, a direct message to that user is refused
/// with `MailboxFull` (errcode 20) and not stored; group messages still go
/// through; once the user has read their messages, others may write again.
#[test]
fn a_full_mailbox_refuses_direct_messages_until_read() {
    let node = node_with(&["--max-pending-per-user", "3"]);
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let (mut a, _) = json_login(node.addr, alice);
    let dm = |a: &mut Json, i: u32| {
        a.ask(&format!(
            r#"{{"msgid":6,"id":{alice},"toid":{bob},"msg":"d{i}"}}"#
        ))
    };
    for i in 0..3 {
        assert_eq!(dm(&mut a, i)["errno"], 0);
    }
    let r = dm(&mut a, 3);
    assert_eq!(
        (r["msgid"].as_u64(), r["errcode"].as_u64()),
        (Some(12), Some(20)),
        "{r}"
    );
    assert!(r["errmsg"].as_str().unwrap().contains("undelivered"), "{r}");
    // A group with bob: its messages are not refused.
    let g = a.ask(r#"{"msgid":8,"groupname":"g","groupdesc":""}"#)["groupid"]
        .as_u64()
        .unwrap();
    let (mut b, login) = json_login(node.addr, bob);
    let offline = strings(&login, "offlinemsg");
    assert_eq!(offline.len(), 3, "only the 3 stored: {login}");
    assert_eq!(
        b.ask(&format!(r#"{{"msgid":9,"id":{bob},"groupid":{g}}}"#))["errno"],
        0
    );
    let r = b.ask(&format!(r#"{{"msgid":3,"id":{bob}}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    // Bob read his three and left; his mailbox has room again.
    let started = std::time::Instant::now();
    loop {
        let r = dm(&mut a, 9);
        if r["errno"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still full: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..5 {
        let r = a.ask(&format!(
            r#"{{"msgid":10,"id":{alice},"groupid":{g},"msg":"g{i}"}}"#
        ));
        assert_eq!(r["errno"], 0, "group messages are not capped: {r}");
    }
}

/// Friends, groups per user and members per group are capped: the request
/// that would pass a cap is refused with `LimitReached` (errcode 21) and
/// changes nothing.
#[test]
fn friends_groups_and_members_are_capped() {
    let node = node_with(&[
        "--max-friends",
        "2",
        "--max-groups-per-user",
        "2",
        "--max-group-members",
        "2",
    ]);
    let ids: Vec<u64> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|n| json_register(node.addr, n))
        .collect();
    let (alice, bob, carol, dave) = (ids[0], ids[1], ids[2], ids[3]);
    let (mut a, _) = json_login(node.addr, alice);
    let limited = |r: &serde_json::Value, msgid: u64, what: &str| {
        assert_eq!(
            (r["msgid"].as_u64(), r["errcode"].as_u64()),
            (Some(msgid), Some(21)),
            "{r}"
        );
        assert!(r["errmsg"].as_str().unwrap().contains(what), "{r}");
    };
    for f in [bob, carol] {
        let r = a.ask(&format!(r#"{{"msgid":7,"id":{alice},"friendid":{f}}}"#));
        assert_eq!(r["errno"], 0, "{r}");
    }
    let r = a.ask(&format!(r#"{{"msgid":7,"id":{alice},"friendid":{dave}}}"#));
    limited(&r, 13, "friends");
    let (mut d, _) = json_login(node.addr, dave);
    let r = d.ask(&format!(r#"{{"msgid":7,"id":{dave},"friendid":{alice}}}"#));
    limited(&r, 13, &format!("user {alice}"));

    let mut groups = Vec::new();
    for i in 0..2 {
        let r = a.ask(&format!(
            r#"{{"msgid":8,"groupname":"g{i}","groupdesc":""}}"#
        ));
        assert_eq!(r["errno"], 0, "{r}");
        groups.push(r["groupid"].as_u64().unwrap());
    }
    let r = a.ask(r#"{"msgid":8,"groupname":"g2","groupdesc":""}"#);
    limited(&r, 14, "groups");
    let (mut b, _) = json_login(node.addr, bob);
    let r = b.ask(&format!(
        r#"{{"msgid":9,"id":{bob},"groupid":{}}}"#,
        groups[0]
    ));
    assert_eq!(r["errno"], 0, "{r}");
    let (mut c, _) = json_login(node.addr, carol);
    let r = c.ask(&format!(
        r#"{{"msgid":9,"id":{carol},"groupid":{}}}"#,
        groups[0]
    ));
    limited(&r, 15, "members");
    // Nothing partial: dave has no friend, carol no group.
    let r = d.ask(&format!(r#"{{"msgid":3,"id":{dave}}}"#));
    assert_eq!(r["errno"], 0);
    let r = d.ask(&format!(r#"{{"msgid":1,"id":{dave},"pwd":"123456"}}"#));
    assert!(r.get("friends").is_none(), "{r}");
    let r = c.ask(&format!(r#"{{"msgid":3,"id":{carol}}}"#));
    assert_eq!(r["errno"], 0);
    let r = c.ask(&format!(r#"{{"msgid":1,"id":{carol},"pwd":"123456"}}"#));
    assert_eq!(strings(&r, "friends").len(), 1, "only alice: {r}");
    assert!(r.get("groups").is_none(), "{r}");
}

/// A session silent for `--takeover-after` (a phone that lost its signal)
/// gives way to a new login of its user, and is told why; a session heard
/// from recently keeps its user (errno 2 for the other login).
#[test]
fn a_silent_session_gives_way_to_a_new_login_and_a_live_one_does_not() {
    let node = node_with(&["--takeover-after", "1s"]);
    let alice = json_register(node.addr, "alice");
    let (mut silent, _) = json_login(node.addr, alice);
    std::thread::sleep(Duration::from_millis(1300));
    let (mut live, login) = json_login(node.addr, alice);
    assert_eq!(login["errno"], 0, "took over: {login}");
    let told = silent.recv();
    assert_eq!(
        (told["msgid"].as_u64(), told["errcode"].as_u64()),
        (Some(17), Some(4)),
        "{told}"
    );
    assert!(
        told["errmsg"].as_str().unwrap().contains("logged in again"),
        "{told}"
    );
    assert!(silent.closed_within(Duration::from_secs(5)));
    // The new session is live (it pings): another login is refused.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(live.ask(r#"{"msgid":18}"#)["msgid"], 19);
    }
    let mut other = Json::connect(node.addr);
    let r = other.ask(&format!(r#"{{"msgid":1,"id":{alice},"pwd":"123456"}}"#));
    assert_eq!(
        (r["errno"].as_u64(), r["errcode"].as_u64()),
        (Some(2), Some(2)),
        "{r}"
    );
    assert_eq!(live.ask(r#"{"msgid":18}"#)["msgid"], 19, "still served");
}

/// A JSON recipient that stops reading is disconnected as a slow consumer;
/// what the node had written to it counts as delivered only once the client
/// showed it read on, so nothing is lost: at its next login it gets every
/// message (the seed's client can not acknowledge, so before, what the
/// kernel had taken counted as delivered and was lost).
#[test]
fn a_json_client_that_stopped_reading_loses_nothing() {
    let node = node_with(&["--max-outbound", "65536", "--send-rate", "0"]);
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let (mut a, _) = json_login(node.addr, alice);
    let (mut b, _) = json_login(node.addr, bob);
    // One message read, shown by a ping: it counts as delivered.
    let r = a.ask(&format!(
        r#"{{"msgid":6,"id":{alice},"toid":{bob},"msg":"first"}}"#
    ));
    assert_eq!(r["errno"], 0, "{r}");
    assert_eq!(b.recv()["msg"], "first");
    assert_eq!(b.ask(r#"{"msgid":18}"#)["msgid"], 19);
    // Then bob stops reading.
    // 16 MB: more than the kernel's socket buffers hold.
    const SENT: usize = 4000;
    let text = "z".repeat(4000);
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..SENT {
        let r = a.ask(&format!(
            r#"{{"msgid":6,"id":{alice},"toid":{bob},"msg":"{text}"}}"#
        ));
        assert_eq!(r["errno"], 0, "{r}");
        ids.insert(r["messageid"].as_u64().unwrap());
    }
    let started = std::time::Instant::now();
    let text_metrics = loop {
        let m = chat_testkit::scrape(node.metrics_addr).unwrap();
        if chat_testkit::metric_value(&m, "chat_node_slow_consumer_disconnects_total")
            .unwrap_or(0.0)
            >= 1.0
        {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not disconnected: {m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(text_metrics);
    drop(b);
    let (mut again, login) = common::json_login_again(node.addr, bob);
    let mut got: std::collections::BTreeSet<u64> = strings(&login, "offlinemsg")
        .iter()
        .map(|m| m["messageid"].as_u64().unwrap())
        .collect();
    while got.len() < ids.len() {
        match again.try_recv(Duration::from_secs(5)) {
            Some(m) if m["msgid"] == 6 => {
                got.insert(m["messageid"].as_u64().unwrap());
            }
            Some(_) => {}
            None => break,
        }
    }
    let missing: Vec<_> = ids.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "lost {} of {SENT}, e.g. {missing:?}",
        ids.len() - got.len().min(ids.len())
    );
    assert!(
        !got.iter().any(|id| !ids.contains(id)),
        "only these, not the first one read"
    );
}

/// A JSON client that acknowledges messages itself (msgid 50) is credited
/// only by its acknowledgements: a request it sends after a push, or a clean
/// close, no longer counts as proof of reading (a request that crossed a
/// push in flight would count that push as read).
#[test]
fn a_json_client_that_acknowledges_itself_is_credited_only_by_its_acknowledgements() {
    let node = node_with(&["--send-rate", "0"]);
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let (mut a, _) = json_login(node.addr, alice);
    let (mut b, _) = json_login(node.addr, bob);
    let r = b.ask(r#"{"msgid":50,"messageid":0}"#);
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(17), Some(0)),
        "{r}"
    );
    let r = a.ask(&format!(
        r#"{{"msgid":6,"id":{alice},"toid":{bob},"msg":"first"}}"#
    ));
    let first = r["messageid"].as_u64().expect("message id");
    assert_eq!(b.recv()["messageid"], first);
    // A request after the push: the implicit rule would take it as read.
    assert_eq!(b.ask(r#"{"msgid":18}"#)["msgid"], 19);
    // Acknowledging what was not pushed is refused.
    let r = b.ask(&format!(r#"{{"msgid":50,"messageid":{}}}"#, first + 1000));
    assert_eq!(r["errcode"], 13, "{r}");
    // A clean close, unacknowledged: it comes again.
    drop(b);
    let (mut b, login) = json_login_again(node.addr, bob);
    let again = offline_ids(&login);
    assert_eq!(again, [first], "{login}");
    // Acknowledged: not again.
    let r = b.ask(&format!(r#"{{"msgid":50,"messageid":{first}}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    drop(b);
    let (_b, login) = json_login_again(node.addr, bob);
    assert!(strings(&login, "offlinemsg").is_empty(), "{login}");
}

/// A msgid 50 sent before logging in (answered `NotLoggedIn`) already
/// switches the connection to explicit acknowledgements: a clean close right
/// after the login reply does not count its `offlinemsg` page as read (the
/// load tester's JSON users do this; a login they abandon closes cleanly).
#[test]
fn a_json_acknowledgement_before_login_keeps_the_offline_page_unread_at_a_clean_close() {
    let node = node_with(&["--send-rate", "0"]);
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let (mut a, _) = json_login(node.addr, alice);
    let r = a.ask(&format!(
        r#"{{"msgid":6,"id":{alice},"toid":{bob},"msg":"waiting"}}"#
    ));
    let waiting = r["messageid"].as_u64().expect("message id");
    let mut b = Json::connect(node.addr);
    let r = b.ask(r#"{"msgid":50,"messageid":0}"#);
    assert_eq!(
        (r["msgid"].as_u64(), r["errcode"].as_u64()),
        (Some(17), Some(4)),
        "NotLoggedIn: {r}"
    );
    let login = b.ask(&format!(r#"{{"msgid":1,"id":{bob},"pwd":"123456"}}"#));
    assert_eq!(login["errno"], 0, "{login}");
    let page = offline_ids(&login);
    assert_eq!(page, [waiting], "{login}");
    // A clean close before any acknowledgement: the page comes again.
    drop(b);
    let (_b, login) = json_login_again(node.addr, bob);
    let again = offline_ids(&login);
    assert_eq!(again, [waiting], "{login}");
}

/// Names are normalized (PRECIS Nickname): a trailing space or fullwidth
/// letters make the same name, not a look-alike second one; characters that
/// do not show are refused.
#[test]
fn look_alike_names_are_one_name_or_refused() {
    let node = node();
    json_register(node.addr, "alice");
    let mut c = Json::connect(node.addr);
    for taken in ["alice ", " alice", "ａｌｉｃｅ"] {
        let r = c.ask(&format!(r#"{{"msgid":4,"name":"{taken}","pwd":"x"}}"#));
        assert_eq!(
            (
                r["msgid"].as_u64(),
                r["errno"].as_u64(),
                r["errcode"].as_u64()
            ),
            (Some(5), Some(1), Some(3)),
            "{taken:?} is alice: {r}"
        );
    }
    for unseen in [r"ali\u200bce", r"ali\u202ece", r"alice\u2066", r"\u00a0"] {
        let r = c.ask(&format!(r#"{{"msgid":4,"name":"{unseen}","pwd":"x"}}"#));
        assert_eq!(
            (
                r["msgid"].as_u64(),
                r["errno"].as_u64(),
                r["errcode"].as_u64()
            ),
            (Some(5), Some(1), Some(16)),
            "{unseen:?} refused: {r}"
        );
    }
    // The stored name is the normalized one, as others see it.
    let r = c.ask(r#"{"msgid":4,"name":"  bob   smith ","pwd":"x"}"#);
    assert_eq!(r["errno"], 0, "{r}");
    let bob = r["id"].as_u64().unwrap();
    let r = c.ask(&format!(r#"{{"msgid":1,"id":{bob},"pwd":"x"}}"#));
    assert_eq!(r["name"], "bob smith", "{r}");
}

#[test]
fn requests_split_by_nul_newline_or_nothing() {
    let node = node();
    let mut c = Json::connect(node.addr);
    c.send_raw(b"{\"msgid\":4,\"name\":\"a\",\"pwd\":\"1\"}\n{\"msgid\":4,\"name\":\"b\",\"pwd\":\"1\"}{\"msgid\":4,\"name\":\"c\",\"pwd\":\"1\"}\0{\"msgid\":18}");
    let ids: Vec<u64> = (0..3).map(|_| c.recv()["id"].as_u64().unwrap()).collect();
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
    assert_eq!(c.recv()["msgid"], 19);
    // One request arriving a byte at a time.
    for b in br#"{"msgid":4,"name":"d","pwd":"1"}"# {
        c.send_raw(&[*b]);
    }
    c.send_raw(b"\0");
    assert_eq!(c.recv()["msgid"], 5);
}

#[test]
fn an_endless_object_is_refused_and_closed() {
    let node = node();
    let mut c = Json::connect(node.addr);
    c.send_raw(b"{\"msgid\":4,\"name\":\"");
    c.send_raw(&vec![b'a'; 70 * 1024]);
    let r = c.recv();
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(17), Some(1)),
        "{r}"
    );
    assert!(c.closed_within(Duration::from_secs(5)));
    json_register(node.addr, "still-serving");
}

/// The error a reply carries: (msgid, errno, errcode).
fn refusal(r: &serde_json::Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    (
        r["msgid"].as_u64(),
        r["errno"].as_u64(),
        r["errcode"].as_u64(),
    )
}

/// Msgids 30/31 and push 48: a friendship ends both ways, the other user
/// is told, and presence pushes between them stop; removing a non-friend
/// is refused with `NotFriends` (22).
#[test]
fn friends_are_removed_and_told() {
    let node = node();
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let (mut a, _) = json_login(node.addr, alice);
    let (mut b, _) = json_login(node.addr, bob);
    assert_eq!(
        a.ask(&format!(r#"{{"msgid":7,"id":{alice},"friendid":{bob}}}"#))["errno"],
        0
    );
    let r = a.ask(&format!(r#"{{"msgid":30,"id":{alice},"friendid":{bob}}}"#));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(31), Some(0)),
        "{r}"
    );
    let push = b.recv();
    assert_eq!(push["msgid"], 48, "{push}");
    assert_eq!(push["friendid"], alice, "{push}");
    let r = b.ask(&format!(r#"{{"msgid":30,"friendid":{alice}}}"#));
    assert_eq!(refusal(&r), (Some(31), Some(1), Some(22)), "{r}");
    assert!(r["errmsg"].as_str().unwrap().contains("not friends"), "{r}");
    // Bob's login no longer lists alice.
    drop(b);
    let (_, login) = json_login_again(node.addr, bob);
    assert!(login.get("friends").is_none(), "{login}");
    // Missing field.
    let r = a.ask(r#"{"msgid":30}"#);
    assert_eq!(refusal(&r), (Some(31), Some(1), Some(13)), "{r}");
}

/// Msgids 32-37 and push 47: group info for members only, leaving (the
/// creator hands the role on), removing a member (creator only, not
/// oneself; the member is told and can no longer post).
#[test]
fn groups_are_left_managed_and_described() {
    let node = node();
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let carol = json_register(node.addr, "carol");
    let dave = json_register(node.addr, "dave");
    let (mut a, _) = json_login(node.addr, alice);
    let (mut b, _) = json_login(node.addr, bob);
    let (mut c, _) = json_login(node.addr, carol);
    let (mut d, _) = json_login(node.addr, dave);
    let g = a.ask(r#"{"msgid":8,"groupname":"g","groupdesc":"about g"}"#)["groupid"]
        .as_u64()
        .unwrap();
    for (conn, id) in [(&mut b, bob), (&mut c, carol)] {
        let r = conn.ask(&format!(r#"{{"msgid":9,"id":{id},"groupid":{g}}}"#));
        assert_eq!(r["errno"], 0, "{r}");
    }

    let info = c.ask(&format!(r#"{{"msgid":36,"groupid":{g}}}"#));
    assert_eq!(
        (info["msgid"].as_u64(), info["errno"].as_u64()),
        (Some(37), Some(0)),
        "{info}"
    );
    assert_eq!(info["groupid"], g);
    assert_eq!(info["groupname"], "g");
    assert_eq!(info["groupdesc"], "about g");
    let users = strings(&info, "users");
    let shown: Vec<(u64, &str, &str)> = users
        .iter()
        .map(|u| {
            (
                u["id"].as_u64().unwrap(),
                u["role"].as_str().unwrap(),
                u["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (alice, "creator", "online"),
            (bob, "normal", "online"),
            (carol, "normal", "online")
        ]
    );
    // Not a member: nothing about the group shows.
    let r = d.ask(&format!(r#"{{"msgid":36,"groupid":{g}}}"#));
    assert_eq!(refusal(&r), (Some(37), Some(1), Some(8)), "{r}");
    assert!(r.get("users").is_none());
    let r = d.ask(r#"{"msgid":36,"groupid":999999}"#);
    assert_eq!(refusal(&r), (Some(37), Some(1), Some(7)), "{r}");

    // Removing: not by a non-creator, not oneself, not a non-member.
    let r = b.ask(&format!(r#"{{"msgid":34,"groupid":{g},"userid":{carol}}}"#));
    assert_eq!(refusal(&r), (Some(35), Some(1), Some(23)), "{r}");
    let r = a.ask(&format!(r#"{{"msgid":34,"groupid":{g},"userid":{alice}}}"#));
    assert_eq!(refusal(&r), (Some(35), Some(1), Some(13)), "{r}");
    let r = a.ask(&format!(r#"{{"msgid":34,"groupid":{g},"userid":{dave}}}"#));
    assert_eq!(refusal(&r), (Some(35), Some(1), Some(8)), "{r}");
    let r = a.ask(&format!(r#"{{"msgid":34,"groupid":{g}}}"#));
    assert_eq!(
        refusal(&r),
        (Some(35), Some(1), Some(13)),
        "missing userid: {r}"
    );
    let r = a.ask(&format!(r#"{{"msgid":34,"groupid":{g},"userid":{carol}}}"#));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(35), Some(0)),
        "{r}"
    );
    let push = c.recv();
    assert_eq!(
        (push["msgid"].as_u64(), push["groupid"].as_u64()),
        (Some(47), Some(g)),
        "{push}"
    );
    // The removed member can no longer post or see the group.
    let r = c.ask(&format!(
        r#"{{"msgid":10,"id":{carol},"groupid":{g},"msg":"hi"}}"#
    ));
    assert_eq!(refusal(&r), (Some(16), Some(1), Some(8)), "{r}");
    let r = c.ask(&format!(r#"{{"msgid":36,"groupid":{g}}}"#));
    assert_eq!(refusal(&r), (Some(37), Some(1), Some(8)), "{r}");

    // The creator leaves: bob takes over; leaving twice is refused.
    let r = a.ask(&format!(r#"{{"msgid":32,"id":{alice},"groupid":{g}}}"#));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(33), Some(0)),
        "{r}"
    );
    let r = a.ask(&format!(r#"{{"msgid":32,"groupid":{g}}}"#));
    assert_eq!(refusal(&r), (Some(33), Some(1), Some(8)), "{r}");
    let info = b.ask(&format!(r#"{{"msgid":36,"groupid":{g}}}"#));
    let users = strings(&info, "users");
    assert_eq!(users.len(), 1, "{info}");
    assert_eq!(
        (users[0]["id"].as_u64(), users[0]["role"].as_str()),
        (Some(bob), Some("creator"))
    );
    // The last one out deletes it.
    let r = b.ask(&format!(r#"{{"msgid":32,"groupid":{g}}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    let r = d.ask(&format!(r#"{{"msgid":9,"id":{dave},"groupid":{g}}}"#));
    assert_eq!(refusal(&r), (Some(15), Some(1), Some(7)), "deleted: {r}");
    // Acting as someone else is refused.
    let r = d.ask(&format!(r#"{{"msgid":32,"id":{alice},"groupid":{g}}}"#));
    assert_eq!(refusal(&r), (Some(33), Some(1), Some(5)), "{r}");
}

/// Msgids 38/39: exact name → id, name, online state; the name is
/// normalized as at registration; empty, over-long or unknown names are
/// refused.
#[test]
fn users_are_found_by_name() {
    let node = node();
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let (mut a, _) = json_login(node.addr, alice);
    let r = a.ask(r#"{"msgid":38,"name":"bob"}"#);
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(39), Some(0)),
        "{r}"
    );
    assert_eq!(
        (
            r["userid"].as_u64(),
            r["name"].as_str(),
            r["state"].as_str()
        ),
        (Some(bob), Some("bob"), Some("offline"))
    );
    let r = a.ask(r#"{"msgid":38,"name":" alice "}"#);
    assert_eq!(
        (r["userid"].as_u64(), r["state"].as_str()),
        (Some(alice), Some("online")),
        "{r}"
    );
    let r = a.ask(r#"{"msgid":38,"name":"bo"}"#);
    assert_eq!(
        refusal(&r),
        (Some(39), Some(1), Some(6)),
        "no prefix search: {r}"
    );
    let r = a.ask(r#"{"msgid":38,"name":""}"#);
    assert_eq!(refusal(&r), (Some(39), Some(1), Some(16)), "{r}");
    let long = "x".repeat(65);
    let r = a.ask(&format!(r#"{{"msgid":38,"name":"{long}"}}"#));
    assert_eq!(refusal(&r), (Some(39), Some(1), Some(16)), "{r}");
    let r = a.ask(r#"{"msgid":38,"name":7}"#);
    assert_eq!(refusal(&r), (Some(39), Some(1), Some(13)), "{r}");
    // Not before login.
    let r = Json::connect(node.addr).ask(r#"{"msgid":38,"name":"bob"}"#);
    assert_eq!(refusal(&r), (Some(39), Some(1), Some(4)), "{r}");
}

/// Msgids 40/41: history pages newest first, both directions of a direct
/// conversation, groups from when one joined; every rule refused with its
/// error.
#[test]
fn history_pages_back_through_a_conversation() {
    let node = node();
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let carol = json_register(node.addr, "carol");
    let (mut a, _) = json_login(node.addr, alice);
    let (mut c, _) = json_login(node.addr, carol);
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = a.ask(&format!(r#"{{"msgid":6,"toid":{bob},"msg":"m{i}"}}"#));
        ids.push(r["messageid"].as_u64().unwrap());
    }
    let r = a.ask(&format!(r#"{{"msgid":40,"peer":{bob},"limit":2}}"#));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(41), Some(0)),
        "{r}"
    );
    let page: Vec<(u64, u64, String)> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["msgid"].as_u64().unwrap(),
                m["messageid"].as_u64().unwrap(),
                m["msg"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        page,
        vec![(6, ids[4], "m4".into()), (6, ids[3], "m3".into())]
    );
    assert_eq!(
        (r["more"].as_bool(), r["readupto"].as_u64()),
        (Some(true), Some(0)),
        "{r}"
    );
    let m = &r["messages"][0];
    assert_eq!(
        (m["id"].as_u64(), m["name"].as_str(), m["toid"].as_u64()),
        (Some(alice), Some("alice"), Some(bob))
    );
    assert!(m["time"].is_string());
    let r = a.ask(&format!(
        r#"{{"msgid":40,"peer":{bob},"before":{}}}"#,
        ids[3]
    ));
    let texts: Vec<&str> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["m2", "m1", "m0"]);
    assert_eq!(r["more"], false);
    // Group history from when one joined.
    let g = a.ask(r#"{"msgid":8,"groupname":"g"}"#)["groupid"]
        .as_u64()
        .unwrap();
    a.ask(&format!(
        r#"{{"msgid":10,"groupid":{g},"msg":"before carol"}}"#
    ));
    c.ask(&format!(r#"{{"msgid":9,"groupid":{g}}}"#));
    a.ask(&format!(
        r#"{{"msgid":10,"groupid":{g},"msg":"hello carol"}}"#
    ));
    let pushed = c.recv();
    assert_eq!(pushed["msgid"], 10, "{pushed}");
    let r = c.ask(&format!(r#"{{"msgid":40,"groupid":{g}}}"#));
    let texts: Vec<&str> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["hello carol"], "{r}");
    assert_eq!(r["messages"][0]["msgid"], 10);

    // The rules.
    for (request, errcode) in [
        (format!(r#"{{"msgid":40,"peer":{bob},"groupid":{g}}}"#), 13),
        (r#"{"msgid":40}"#.to_owned(), 13),
        (format!(r#"{{"msgid":40,"peer":{bob},"limit":0}}"#), 13),
        (format!(r#"{{"msgid":40,"peer":{bob},"limit":201}}"#), 13),
        (format!(r#"{{"msgid":40,"peer":{bob},"before":"x"}}"#), 13),
        (format!(r#"{{"msgid":40,"peer":{bob},"before":-1}}"#), 13),
        (r#"{"msgid":40,"peer":999999}"#.to_owned(), 6),
        (r#"{"msgid":40,"groupid":999999}"#.to_owned(), 7),
    ] {
        let r = c.ask(&request);
        assert_eq!(
            refusal(&r),
            (Some(41), Some(1), Some(errcode)),
            "{request}: {r}"
        );
        assert!(r.get("messages").is_none(), "{r}");
    }
    // Carol is not part of alice's group once she leaves.
    c.ask(&format!(r#"{{"msgid":32,"groupid":{g}}}"#));
    let r = c.ask(&format!(r#"{{"msgid":40,"groupid":{g}}}"#));
    assert_eq!(refusal(&r), (Some(41), Some(1), Some(8)), "{r}");
    // Carol's conversation with bob is empty: nothing of alice's leaks.
    let r = c.ask(&format!(r#"{{"msgid":40,"peer":{bob}}}"#));
    assert_eq!(r["messages"].as_array().map(Vec::len), Some(0), "{r}");
    let r = Json::connect(node.addr).ask(&format!(r#"{{"msgid":40,"peer":{bob}}}"#));
    assert_eq!(
        refusal(&r),
        (Some(41), Some(1), Some(4)),
        "not logged in: {r}"
    );
}

/// Msgids 42-46 and the login's `unread`: marking read (forward only), the
/// read receipt push, the read position in history, readers of a group
/// message.
#[test]
fn read_receipts_unread_counts_and_readers() {
    let node = node();
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let carol = json_register(node.addr, "carol");
    let (mut a, _) = json_login(node.addr, alice);
    let g = a.ask(r#"{"msgid":8,"groupname":"g"}"#)["groupid"]
        .as_u64()
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = a.ask(&format!(r#"{{"msgid":6,"toid":{bob},"msg":"m{i}"}}"#));
        ids.push(r["messageid"].as_u64().unwrap());
    }
    // Bob logs in: 3 unread from alice.
    let (mut b, login) = json_login(node.addr, bob);
    let unread = login["unread"]
        .as_array()
        .expect("unread when non-empty")
        .clone();
    assert_eq!(
        unread,
        vec![serde_json::json!({"peer": alice, "count": 3})],
        "{login}"
    );
    let r = b.ask(&format!(
        r#"{{"msgid":42,"peer":{alice},"upto":{}}}"#,
        ids[1]
    ));
    assert_eq!(
        (r["msgid"].as_u64(), r["errno"].as_u64()),
        (Some(43), Some(0)),
        "{r}"
    );
    let receipt = a.recv();
    assert_eq!(
        receipt,
        serde_json::json!({"msgid": 46, "id": bob, "peer": alice, "upto": ids[1]})
    );
    // Going back is ignored (no error, no receipt); past the newest is refused.
    let r = b.ask(&format!(
        r#"{{"msgid":42,"peer":{alice},"upto":{}}}"#,
        ids[0]
    ));
    assert_eq!(r["errno"], 0, "{r}");
    let r = b.ask(&format!(
        r#"{{"msgid":42,"peer":{alice},"upto":{}}}"#,
        ids[2] + 100
    ));
    assert_eq!(refusal(&r), (Some(43), Some(1), Some(13)), "{r}");
    for bad in [
        r#"{"msgid":42,"upto":1}"#.to_owned(),
        format!(r#"{{"msgid":42,"peer":{alice}}}"#),
        format!(r#"{{"msgid":42,"peer":{alice},"upto":0}}"#),
        format!(r#"{{"msgid":42,"peer":{alice},"groupid":{g},"upto":1}}"#),
    ] {
        let r = b.ask(&bad);
        assert_eq!(refusal(&r), (Some(43), Some(1), Some(13)), "{bad}: {r}");
    }
    assert!(
        a.try_recv(QUIET).is_none(),
        "no receipt for an ignored mark"
    );
    // Alice's history shows how far bob read.
    let r = a.ask(&format!(r#"{{"msgid":40,"peer":{bob}}}"#));
    assert_eq!(r["readupto"].as_u64(), Some(ids[1]), "{r}");
    // Bob's next login: one unread.
    drop(b);
    let (mut b, login) = json_login_again(node.addr, bob);
    assert_eq!(
        login["unread"],
        serde_json::json!([{"peer": alice, "count": 1}]),
        "{login}"
    );

    // Readers of a group message.
    let (mut c, _) = json_login(node.addr, carol);
    for (conn, _) in [(&mut b, bob), (&mut c, carol)] {
        assert_eq!(
            conn.ask(&format!(r#"{{"msgid":9,"groupid":{g}}}"#))["errno"],
            0
        );
    }
    let m = a.ask(&format!(r#"{{"msgid":10,"groupid":{g},"msg":"read me"}}"#))["messageid"]
        .as_u64()
        .unwrap();
    assert_eq!(b.recv()["msgid"], 10);
    assert_eq!(c.recv()["msgid"], 10);
    let r = b.ask(&format!(r#"{{"msgid":42,"groupid":{g},"upto":{m}}}"#));
    assert_eq!(r["errno"], 0, "{r}");
    let r = a.ask(&format!(r#"{{"msgid":44,"groupid":{g},"messageid":{m}}}"#));
    assert_eq!(
        r,
        serde_json::json!({"msgid": 45, "errno": 0, "readers": 1, "members": 3})
    );
    let dave = json_register(node.addr, "dave");
    let (mut d, _) = json_login(node.addr, dave);
    let r = d.ask(&format!(r#"{{"msgid":44,"groupid":{g},"messageid":{m}}}"#));
    assert_eq!(refusal(&r), (Some(45), Some(1), Some(8)), "{r}");
    let r = d.ask(&format!(r#"{{"msgid":42,"groupid":{g},"upto":{m}}}"#));
    assert_eq!(refusal(&r), (Some(43), Some(1), Some(8)), "{r}");
    let r = d.ask(&format!(r#"{{"msgid":44,"groupid":{g}}}"#));
    assert_eq!(refusal(&r), (Some(45), Some(1), Some(13)), "{r}");
}

/// A login reply holds a page of groups (`--login-group-members` members in
/// all, one group at least); `moregroups` says how many follow, and they
/// come as msgid 49 pushes, in id order, each once.
#[test]
fn a_login_pages_its_groups() {
    let node = node_with(&["--login-group-members", "4"]);
    let alice = json_register(node.addr, "alice");
    let bob = json_register(node.addr, "bob");
    let carol = json_register(node.addr, "carol");
    let (mut a, _) = json_login(node.addr, alice);
    let (mut b, _) = json_login(node.addr, bob);
    let (mut c, _) = json_login(node.addr, carol);
    let mut groups = Vec::new();
    for i in 0..5 {
        let g = a.ask(&format!(r#"{{"msgid":8,"groupname":"g{i}"}}"#))["groupid"]
            .as_u64()
            .unwrap();
        for conn in [&mut b, &mut c] {
            assert_eq!(
                conn.ask(&format!(r#"{{"msgid":9,"groupid":{g}}}"#))["errno"],
                0
            );
        }
        groups.push(g);
    }
    drop(a);
    let (mut a, login) = json_login_again(node.addr, alice);
    let first = strings(&login, "groups");
    assert_eq!(first.len(), 1, "3 members fit in 4, 6 do not: {login}");
    assert_eq!(first[0]["id"].as_u64(), Some(groups[0]));
    assert_eq!(login["moregroups"].as_u64(), Some(4), "{login}");
    let mut rest = Vec::new();
    for _ in 0..4 {
        let push = a.recv();
        assert_eq!(push["msgid"], 49, "{push}");
        assert_eq!(strings(&push, "users").len(), 3, "{push}");
        assert!(push["groupname"].is_string() && push["groupdesc"].is_string());
        rest.push(push["id"].as_u64().unwrap());
    }
    assert_eq!(rest, groups[1..].to_vec());
    assert!(a.try_recv(QUIET).is_none(), "each group once");
    // Without a small page, every group is in the reply.
    drop(b);
    let node2 = common::node();
    let dave = json_register(node2.addr, "dave");
    let (mut d, _) = json_login(node2.addr, dave);
    for i in 0..3 {
        d.ask(&format!(r#"{{"msgid":8,"groupname":"h{i}"}}"#));
    }
    drop(d);
    let (_, login) = json_login_again(node2.addr, dave);
    assert_eq!(strings(&login, "groups").len(), 3, "{login}");
    assert!(login.get("moregroups").is_none(), "{login}");
}
