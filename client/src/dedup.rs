//! Dropping duplicate messages: the node re-sends unacknowledged messages at
//! the next login, so a client may see a message id twice. [`Dedup`]
//! remembers the most recent ids in a bounded window.

use std::collections::{HashSet, VecDeque};

use crate::model::MessageId;

/// Remembers the last `capacity` message ids seen.
#[derive(Debug, Clone)]
pub struct Dedup {
    seen: HashSet<MessageId>,
    order: VecDeque<MessageId>,
    capacity: usize,
}

impl Dedup {
    /// A window of `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Dedup {
        let capacity = capacity.max(1);
        Dedup {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity,
        }
    }

    /// `true` the first time `id` is offered, `false` for a repeat still in
    /// the window.
    pub fn first_time(&mut self, id: MessageId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::new(65536)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_within_the_window() {
        let mut d = Dedup::new(2);
        assert!(d.first_time(1));
        assert!(!d.first_time(1));
        assert!(d.first_time(2));
        assert!(d.first_time(3)); // 1 leaves the window
        assert!(!d.first_time(3));
        assert!(d.first_time(1));
    }
}
