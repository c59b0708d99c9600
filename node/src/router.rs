//! Routing of pushes to the session that serves their user.
//!
//! Each user has a home shard, `user % shards`; the store thread sends every
//! event about a user to that shard's router, in commit order. The home shard
//! keeps the user's route (which shard and connection serve them) and either
//! hands the push to the session directly, when the session is local, or
//! forwards it over glommio's channel mesh to the shard that holds it. Routes
//! are partitioned by user, so no state is shared between executors and no
//! lock sits on the message path; every hop is a FIFO channel, so a user sees
//! their messages in commit order.
//!
//! In a cluster the router gets wake-ups instead of messages (from this
//! node's store thread and from the bus) and hands them on the same way; a
//! resync, sent to every shard, wakes every session the shard holds.

use std::rc::Rc;

use glommio::channels::channel_mesh::{Receivers, Senders};

use crate::command::Push;
use crate::event::RouterEvent;
use crate::model::UserId;
use crate::outbound::CloseReason;
use crate::shard::{Delivery, Forward, Route, Shard};

/// Applies the store's events for the users homed on this shard, forever.
pub async fn run(
    shard: &Rc<Shard>,
    events: flume::Receiver<Vec<RouterEvent>>,
    mesh: &Senders<Forward>,
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
            send(shard, mesh, user, delivery).await;
        }
    }
}

async fn send(shard: &Rc<Shard>, mesh: &Senders<Forward>, user: UserId, delivery: Delivery) {
    let route = shard.route(user);
    let Some(route) = route else {
        // Offline: the message waits in the store for the next login.
        return;
    };
    if route.shard == shard.id {
        shard.deliver(route.conn, delivery);
    } else if mesh
        .send_to(
            route.shard,
            Forward {
                conn: route.conn,
                delivery,
            },
        )
        .await
        .is_err()
    {
        tracing::warn!(peer = route.shard, "mesh peer gone; push left in the store");
    }
}

/// Starts one task per peer that hands forwarded pushes to local sessions.
pub fn receive(shard: Rc<Shard>, mut receivers: Receivers<Forward>) {
    for (_, stream) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(Forward { conn, delivery }) = stream.recv().await {
                shard.deliver(conn, delivery);
            }
        })
        .detach();
    }
}
