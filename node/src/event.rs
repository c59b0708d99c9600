//! What travels between the node's threads about a user: the events the
//! engine (and the bus) send to the shards' routers, and the connection ids
//! they name. Vocabulary only: no logic beyond picking the home shard.

use std::sync::Arc;

use crate::command::Push;
use crate::model::{StoredMessage, UserId};

/// Identifies one connection within a node.
pub type ConnId = u64;

/// What the store tells a shard's router, in commit order. `user` is always
/// the user the event is for: it picks the home shard.
#[derive(Debug, Clone)]
pub enum RouterEvent {
    /// `user` is now served by connection `conn` on shard `shard`.
    Route {
        user: UserId,
        shard: usize,
        conn: ConnId,
    },
    /// `user` left connection `conn`.
    Unroute { user: UserId, conn: ConnId },
    /// A new message for `user` (a node running alone).
    Deliver {
        user: UserId,
        message: Arc<StoredMessage>,
    },
    /// `user` has new stored messages (a cluster node): their session reads
    /// them from the store.
    Wake { user: UserId },
    /// NATS may have lost wake-ups: every online session reads the store.
    /// Sent to every shard, not to a home shard.
    Resync,
    /// Friend `who` of `user` came online or went offline.
    Presence {
        user: UserId,
        who: UserId,
        name: Arc<str>,
        online: bool,
    },
    /// A push for `user` that is not a stored message (removed from a
    /// group, a friendship ended).
    Notify { user: UserId, push: Push },
    /// Another login of `user` waits: their session closes if it has been
    /// silent for the takeover window.
    Takeover { user: UserId },
    /// This node's lease ran out before it was renewed: every session of
    /// the node closes. Sent to every shard.
    LeaseLost,
}

impl RouterEvent {
    /// The user the event is about (0 for `Resync`, which is about everyone).
    pub fn user(&self) -> UserId {
        match self {
            RouterEvent::Route { user, .. }
            | RouterEvent::Unroute { user, .. }
            | RouterEvent::Deliver { user, .. }
            | RouterEvent::Wake { user }
            | RouterEvent::Takeover { user }
            | RouterEvent::Notify { user, .. }
            | RouterEvent::Presence { user, .. } => *user,
            RouterEvent::Resync | RouterEvent::LeaseLost => 0,
        }
    }

    /// The home shard of the event's user among `shards`: the one whose
    /// router applies it.
    pub fn home_shard(&self, shards: usize) -> usize {
        (self.user() % shards as u64) as usize
    }
}
