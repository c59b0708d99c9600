//! Routing of pushes to the session that serves their user.
//!
//! Each user has a home shard, `user % shards`; the store thread sends every
//! event about a user to that shard's router, in commit order. The home shard
//! keeps the user's route (which shard and connection serve them) and either
//! hands the push to the session directly, when the session is local, or
//! forwards it over that shard's inbox (a flume channel) to the shard that
//! holds it. Routes
//! are partitioned by user, so no state is shared between executors and no
//! lock sits on the message path; every hop is a FIFO channel, so a user sees
//! their messages in commit order.
//!
//! In a cluster the router gets wake-ups instead of messages (from this
//! node's store thread and from the bus) and hands them on the same way; a
//! resync, sent to every shard, wakes every session the shard holds.

use std::rc::Rc;

use crate::command::Push;
use crate::event::RouterEvent;
use crate::model::UserId;
use crate::outbound::CloseReason;
use crate::shard::{Delivery, Forward, Route, Shard};

/// Applies the store's events for the users homed on this shard, forever.
pub async fn run(
    shard: &Rc<Shard>,
    events: flume::Receiver<Vec<RouterEvent>>,
    inboxes: &[flume::Sender<Forward>],
) {
    while let Ok(batch) = events.recv_async().await {
        for event in batch {
            let (user, delivery) = match event {
                RouterEvent::Route {
                    user,
                    shard: s,
                    conn,
                } => {
                    tracing::trace!(shard = shard.id, user, to = s, conn, "route");
                    shard.set_route(user, Route { shard: s, conn });
                    continue;
                }
                RouterEvent::Unroute { user, conn } => {
                    shard.unroute(user, conn);
                    continue;
                }
                RouterEvent::Deliver { user, message } => {
                    (user, Delivery::Push(Push::Message(message)))
                }
                RouterEvent::Wake { user } => (user, Delivery::Wake),
                RouterEvent::Takeover { user } => (user, Delivery::Takeover),
                RouterEvent::Notify { user, push } => (user, Delivery::Push(push)),
                RouterEvent::Resync => {
                    shard.resync();
                    continue;
                }
                RouterEvent::LeaseLost => {
                    shard.close_all(CloseReason::LeaseLost);
                    continue;
                }
                RouterEvent::Presence {
                    user,
                    who,
                    name,
                    online,
                } => (
                    user,
                    Delivery::Push(Push::Presence {
                        user: who,
                        name: name.to_string(),
                        online,
                    }),
                ),
            };
            send(shard, inboxes, user, delivery).await;
        }
    }
}

async fn send(
    shard: &Rc<Shard>,
    inboxes: &[flume::Sender<Forward>],
    user: UserId,
    delivery: Delivery,
) {
    let route = shard.route(user);
    let Some(route) = route else {
        // Offline: the message waits in the store for the next login.
        return;
    };
    if route.shard == shard.id {
        shard.deliver(route.conn, delivery);
    } else if inboxes[route.shard]
        .send_async(Forward {
            conn: route.conn,
            delivery,
        })
        .await
        .is_err()
    {
        tracing::warn!(
            peer = route.shard,
            "shard inbox gone; push left in the store"
        );
    }
}

/// Starts the task that hands pushes other shards forwarded to local
/// sessions; returns it (it runs until aborted).
pub fn receive(shard: Rc<Shard>, inbox: flume::Receiver<Forward>) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        while let Ok(Forward { conn, delivery }) = inbox.recv_async().await {
            shard.deliver(conn, delivery);
        }
    })
}
