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
//! Costs: the writer counts a recipient's waiting messages once (an index
//! range, at most the cap) and then keeps the count in memory, adding what
//! it stores; an acknowledgement by that user drops the count (counted
//! again at the next message). A full mailbox is not recounted for
//! [`FULL_FOR`], so a sender hammering a full mailbox costs a map lookup per
//! message. Counts older than [`RECOUNT_AFTER`] are counted again: in a
//! cluster other nodes store messages for the same user too, so the cap
//! holds within what the nodes stored in that time. The map is cleared
//! whole past [`MAX_TRACKED`] recipients.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Store, StoreError, UserId};

/// How long a mailbox found full is refused without counting again.
pub const FULL_FOR: Duration = Duration::from_secs(1);
/// How long a count is trusted.
pub const RECOUNT_AFTER: Duration = Duration::from_secs(10);
/// Recipients whose counts are kept at most.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Count {
    waiting: u64,
    counted: Instant,
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
        // A count is trusted while it is recent and, if the mailbox was
        // found full, until that finding expires.
        let trusted = self.counts.get(&to).copied().filter(|c| {
            now.duration_since(c.counted) < RECOUNT_AFTER
                && c.full_until.is_none_or(|until| now < until)
        });
        let count = match trusted {
            Some(c) => c,
            None => {
                if self.counts.len() >= MAX_TRACKED {
                    self.counts.clear();
                }
                let c = Count {
                    waiting: store.pending_direct(to, self.cap)?,
                    counted: now,
                    full_until: None,
                };
                self.counts.insert(to, c);
                c
            }
        };
        if count.waiting >= self.cap {
            if count.full_until.is_none()
                && let Some(c) = self.counts.get_mut(&to)
            {
                c.full_until = Some(now + FULL_FOR);
            }
            crate::metrics::counter("chat_node_refused_total", &[("reason", "mailbox_full")])
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
            c.waiting += 1;
        }
    }

    /// `user` acknowledged messages: their count is no longer known.
    pub fn acked(&mut self, user: UserId) {
        self.counts.remove(&user);
    }
}
