//! The cap on stored, undelivered direct messages per recipient
//! (`--max-pending-per-user`), kept by the store's writer: without it one
//! sender can fill a stranger's mailbox (and the disk) as fast as it may
//! send.
//!
//! At the cap a new direct message to that user is refused with
//! `MailboxFull`; nothing is stored, the sender is told. Group messages are
//! not refused (one full member must not silence a group); they are bounded
//! by the senders' rate limit and group sizes.
//!
//! Costs: the writer counts a recipient's waiting messages (an index range,
//! at most the cap) and then keeps an upper bound in memory: each message it
//! stores adds one, and an acknowledgement only notes that the bound may be
//! high. It counts again only when the bound reaches the cap after an
//! acknowledgement, or when the count is older than [`RECOUNT_AFTER`]; so a
//! recipient who reads as messages come costs one count per
//! [`RECOUNT_AFTER`], not one per message (counting at every message after
//! an ack was 10 % of the node's CPU at 5 000 messages/s). A full mailbox is
//! not counted again for [`FULL_FOR`], so a sender hammering it costs a map
//! lookup per message. In a cluster other nodes store messages for the same
//! user too, so the cap holds within what the nodes stored in
//! [`RECOUNT_AFTER`]. The map is cleared whole past [`MAX_TRACKED`]
//! recipients.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::metric_names;
use crate::model::UserId;
use crate::store::{Store, StoreError};

/// How long a mailbox found full is refused without counting again.
pub const FULL_FOR: Duration = Duration::from_secs(1);
/// How long a count is trusted.
pub const RECOUNT_AFTER: Duration = Duration::from_secs(10);
/// Recipients whose counts are kept at most.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Count {
    /// At least the messages waiting (exact when counted; one more per
    /// message stored since; acks lower the real number, not this).
    at_most: u64,
    counted: Instant,
    /// The recipient acknowledged since the count: `at_most` may be high.
    acked: bool,
    full_until: Option<Instant>,
}

/// Waiting direct messages per recipient, against the cap.
#[derive(Debug)]
pub struct Mailboxes {
    /// 0 = no cap.
    cap: u64,
    counts: HashMap<UserId, Count>,
}

impl Mailboxes {
    pub fn new(cap: u64) -> Mailboxes {
        Mailboxes {
            cap,
            counts: HashMap::new(),
        }
    }

    /// Before a direct message to `to` is stored: `MailboxFull` at the cap.
    pub fn admit<S: Store>(&mut self, store: &mut S, to: UserId) -> Result<(), StoreError> {
        if self.cap == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let known = self.counts.get(&to).copied().filter(|c| {
            now.duration_since(c.counted) < RECOUNT_AFTER
                // Below the cap the bound admits; at it, a count that acks
                // may have made too high is redone, unless it found the
                // mailbox full a moment ago.
                && (c.at_most < self.cap
                    || c.full_until.map_or(!c.acked, |until| now < until))
        });
        let count = match known {
            Some(c) => c,
            None => {
                if self.counts.len() >= MAX_TRACKED {
                    self.counts.clear();
                }
                let at_most = store.pending_direct(to, self.cap)?;
                let c = Count {
                    at_most,
                    counted: now,
                    acked: false,
                    full_until: (at_most >= self.cap).then_some(now + FULL_FOR),
                };
                self.counts.insert(to, c);
                c
            }
        };
        if count.at_most >= self.cap {
            crate::metrics::counter(metric_names::REFUSED_TOTAL, &[("reason", "mailbox_full")])
                .increment(1);
            tracing::debug!(user = to, "direct message refused: mailbox full");
            return Err(StoreError::MailboxFull {
                user: to,
                cap: self.cap,
            });
        }
        Ok(())
    }

    /// A direct message to `to` was stored.
    pub fn stored(&mut self, to: UserId) {
        if let Some(c) = self.counts.get_mut(&to) {
            c.at_most += 1;
        }
    }

    /// `user` acknowledged messages: their count may now be too high.
    pub fn acked(&mut self, user: UserId) {
        if let Some(c) = self.counts.get_mut(&user) {
            c.acked = true;
            // A full mailbox that was read is counted again at once.
            c.full_until = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NewMessage, Target};
    use crate::store::sqlite::{SqliteStore, SyncPolicy};

    /// Admits and stores one direct message from `from` to `to`, as the
    /// writer does; returns its id.
    fn send(
        boxes: &mut Mailboxes,
        store: &mut SqliteStore,
        from: UserId,
        to: UserId,
    ) -> Result<u64, StoreError> {
        boxes.admit(store, to)?;
        let m = store.append(&NewMessage {
            sender_id: from,
            sender_name: "a".into(),
            target: Target::User(to),
            time_ms: 0,
            text: "x".into(),
        })?;
        boxes.stored(to);
        store.commit()?;
        Ok(m.id)
    }

    /// The bound kept between counts never lets more than the cap wait, and
    /// never refuses once the recipient has read: acks lower the real count
    /// below the bound, and reaching the cap after an ack counts again.
    #[test]
    fn the_cap_holds_while_the_recipient_reads_some() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("chat.db"), SyncPolicy::Normal).unwrap();
        let a = store.create_user("a", "h").unwrap();
        let b = store.create_user("b", "h").unwrap();
        store.commit().unwrap();
        let mut boxes = Mailboxes::new(3);
        let ids: Vec<u64> = (0..3)
            .map(|_| send(&mut boxes, &mut store, a, b).unwrap())
            .collect();
        assert!(matches!(
            send(&mut boxes, &mut store, a, b),
            Err(StoreError::MailboxFull { cap: 3, .. })
        ));
        // b reads two: the bound (3) is now above the real count (1).
        store.ack(b, ids[1]).unwrap();
        store.commit().unwrap();
        boxes.acked(b);
        send(&mut boxes, &mut store, a, b).unwrap();
        send(&mut boxes, &mut store, a, b).unwrap();
        assert!(
            matches!(
                send(&mut boxes, &mut store, a, b),
                Err(StoreError::MailboxFull { .. })
            ),
            "1 left + 2 new = the cap"
        );
        assert_eq!(store.pending_direct(b, 10).unwrap(), 3);
    }
}
