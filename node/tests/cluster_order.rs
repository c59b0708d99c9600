//! Order across nodes while wake-ups are late: a message committed on
//! another node whose wake-up has not arrived (NATS killed, or paused with
//! SIGSTOP so that the nodes still think it up), then a later one committed
//! by the recipient's own node. The recipient acknowledges what it got; the
//! earlier message must still reach it, in order or at its next login, and
//! not be acknowledged away by the later one's id.

mod common;

use std::time::Duration;

use chat_client::{Event, Message};
use common::cluster::{cluster, fb_user};

async fn next_message(c: &chat_client::Client, within: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(Event::Message(m))) => return Some(m),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Sends m1 from node a and m2 from node b to u (on b) while `pause`
/// holds the wake-ups back, then `resume`s: u must get m1, before m2 or at
/// its next login, and never lose it by acknowledging m2.
async fn late_wake_up(
    pause: fn(&mut chat_testkit::LocalCluster),
    resume: fn(&mut chat_testkit::LocalCluster),
) {
    let mut c = cluster(2, &[]);
    let [a, b] = [0, 1].map(|i| c.node(i).addr);
    let (far, _) = fb_user(a, "far").await;
    let (near, _) = fb_user(b, "near").await;
    let (u, uid) = fb_user(b, "u").await;

    pause(&mut c);
    let m1 = far.send_direct(uid, "m1 from node a").await.unwrap();
    let m2 = near.send_direct(uid, "m2 from node b").await.unwrap();
    assert!(m1.message_id < m2.message_id);
    let mut got = Vec::new();
    while let Some(m) = next_message(&u, Duration::from_secs(5)).await {
        got.push(m.id);
        if m.id == m2.message_id {
            break;
        }
    }
    // u acknowledges everything pushed to it so far.
    if let Some(&last) = got.last() {
        u.ack(last).await.unwrap();
    }
    resume(&mut c);
    c.wait_joined(Duration::from_secs(10)).unwrap();
    while !got.contains(&m1.message_id) {
        match next_message(&u, Duration::from_secs(5)).await {
            Some(m) => got.push(m.id),
            None => break,
        }
    }
    if got.contains(&m1.message_id) {
        return;
    }
    drop(u);
    let (_u, again, _) =
        common::cluster::login_once_released(b, uid, "pw", Duration::from_secs(20)).await;
    let pending: Vec<u64> = again.pending.iter().map(|m| m.id).collect();
    assert!(
        pending.contains(&m1.message_id),
        "m1 ({}) lost: pushed {got:?}, pending at the next login {pending:?}",
        m1.message_id
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_not_lost_while_nats_is_down() {
    late_wake_up(
        |c| c.nats_mut().kill9(),
        |c| c.nats_mut().restart().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_not_lost_while_nats_is_paused() {
    fn signal(c: &mut chat_testkit::LocalCluster, sig: i32) {
        let pid = c.nats().pid().unwrap() as i32;
        // SAFETY: kill(2) on a child's pid has no memory effects.
        unsafe {
            libc::kill(pid, sig);
        }
    }
    late_wake_up(|c| signal(c, libc::SIGSTOP), |c| signal(c, libc::SIGCONT)).await;
}
