//! One recipient's bookkeeping of what it received: which messages of each
//! stream (a sender's messages to it, or to one of its groups) arrived, so
//! that duplicates and reordering show, and the highest server id seen, so
//! that the node's at-least-once redelivery after a re-login is told apart
//! from a real duplicate.

use std::collections::{BTreeSet, HashMap};

use chat_client::MessageId;

use crate::payload::Stamp;

/// What a receipt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First receipt, in order.
    New,
    /// First receipt, after a later message of the same stream.
    OutOfOrder,
    /// A message received before, again under a server id at or below the
    /// highest already seen: the node sending again what was not
    /// acknowledged. (A message never received is never a redelivery, even
    /// under a low id: it counts as delivered.)
    Redelivered,
    /// A new server id for a message already received.
    Duplicate,
}

#[derive(Debug, Default)]
struct Stream {
    /// Every sequence number below this arrived.
    watermark: u64,
    /// Sequence numbers above the watermark that arrived.
    above: BTreeSet<u64>,
    highest: Option<u64>,
}

impl Stream {
    fn seen(&self, seq: u64) -> bool {
        seq < self.watermark || self.above.contains(&seq)
    }

    fn mark(&mut self, seq: u64) {
        self.above.insert(seq);
        while self.above.remove(&self.watermark) {
            self.watermark += 1;
        }
        self.highest = self.highest.max(Some(seq));
    }
}

/// What one user received.
#[derive(Debug, Default)]
pub struct Tally {
    streams: HashMap<(u32, u64), Stream>,
    highest_id: Option<MessageId>,
}

impl Tally {
    pub fn receive(&mut self, stamp: &Stamp, message_id: Option<MessageId>) -> Receipt {
        let known_id = message_id.is_some_and(|id| self.highest_id.is_some_and(|h| id <= h));
        self.highest_id = self.highest_id.max(message_id);
        let stream = self
            .streams
            .entry((stamp.sender, stamp.stream))
            .or_default();
        if stream.seen(stamp.seq) {
            // Sent again under an id already seen: the node's redelivery of
            // what was not acknowledged; under a new id: a real duplicate.
            return if known_id {
                Receipt::Redelivered
            } else {
                Receipt::Duplicate
            };
        }
        let late = stream.highest.is_some_and(|h| stamp.seq < h);
        stream.mark(stamp.seq);
        if late {
            Receipt::OutOfOrder
        } else {
            Receipt::New
        }
    }

    /// Whether message `seq` of `sender`'s `stream` arrived.
    pub fn has(&self, sender: u32, stream: u64, seq: u64) -> bool {
        self.streams
            .get(&(sender, stream))
            .is_some_and(|s| s.seen(seq))
    }

    /// The highest server id received, to acknowledge.
    pub fn highest_id(&self) -> Option<MessageId> {
        self.highest_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(sender: u32, seq: u64) -> Stamp {
        Stamp {
            sender,
            stream: 7,
            seq,
            intended_us: 0,
            sent_us: 0,
        }
    }

    #[test]
    fn in_order_gaps_reorders_and_duplicates() {
        let mut t = Tally::default();
        assert_eq!(t.receive(&stamp(1, 0), Some(10)), Receipt::New);
        assert_eq!(
            t.receive(&stamp(1, 2), Some(11)),
            Receipt::New,
            "a gap is not disorder"
        );
        assert_eq!(t.receive(&stamp(1, 1), Some(12)), Receipt::OutOfOrder);
        assert_eq!(t.receive(&stamp(1, 1), Some(13)), Receipt::Duplicate);
        assert_eq!(
            t.receive(&stamp(2, 0), Some(14)),
            Receipt::New,
            "streams are per sender"
        );
        assert_eq!(t.highest_id(), Some(14));
        assert!(t.has(1, 7, 0) && t.has(1, 7, 1) && t.has(1, 7, 2));
        assert!(!t.has(1, 7, 3) && !t.has(2, 7, 1) && !t.has(1, 8, 0));
    }

    #[test]
    fn a_known_server_id_is_a_redelivery() {
        let mut t = Tally::default();
        assert_eq!(t.receive(&stamp(1, 0), Some(10)), Receipt::New);
        assert_eq!(t.receive(&stamp(1, 0), Some(10)), Receipt::Redelivered);
        assert_eq!(
            t.receive(&stamp(1, 0), None),
            Receipt::Duplicate,
            "no id: the seed"
        );
    }

    #[test]
    fn a_message_never_received_is_delivered_whatever_its_id() {
        // A re-login's pending messages checked after a later push.
        let mut t = Tally::default();
        assert_eq!(t.receive(&stamp(1, 1), Some(20)), Receipt::New);
        assert_eq!(t.receive(&stamp(1, 0), Some(15)), Receipt::OutOfOrder);
        assert_eq!(t.receive(&stamp(1, 0), Some(15)), Receipt::Redelivered);
        assert_eq!(t.highest_id(), Some(20));
    }
}
