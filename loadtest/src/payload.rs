//! The text of every message the load tester sends: who sent it, to which
//! stream (recipient or group), its sequence number in that stream and its
//! intended send time, so that a recipient can measure delivery latency and
//! spot lost, duplicated and reordered messages with no other channel.
//!
//! `lt <sender> <stream> <seq> <intended µs> <sent µs> xxxx…`, padded to the
//! text size.
//! Times are µs since the run's start; sender and recipients of a message are
//! users of the same process, so they share that clock.

/// Shortest text that holds the header (with room for large numbers).
pub const MIN_TEXT: usize = 48;

const MAGIC: &str = "lt";

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sending user in this process.
    pub sender: u32,
    /// The recipient's user index (direct) or the group's index (group),
    /// with [`GROUP_STREAM`] set for a group.
    pub stream: u64,
    /// Sequence number of the message in its (sender, stream), from 0.
    pub seq: u64,
    /// Intended send time, µs since the run's start.
    pub intended_us: u64,
    /// Actual send time (for the uncorrected delivery latency).
    pub sent_us: u64,
}

/// Set in [`Stamp::stream`] for a group message.
pub const GROUP_STREAM: u64 = 1 << 63;

impl Stamp {
    /// The text, padded with `x` to `size` bytes.
    pub fn text(&self, size: usize) -> String {
        let mut s = format!(
            "{MAGIC} {} {} {} {} {} ",
            self.sender, self.stream, self.seq, self.intended_us, self.sent_us
        );
        if s.len() < size {
            s.extend(std::iter::repeat_n('x', size - s.len()));
        }
        s
    }

    /// Reads a text written by [`Stamp::text`]; `None` for any other text.
    pub fn parse(text: &str) -> Option<Stamp> {
        let mut it = text.split(' ');
        if it.next()? != MAGIC {
            return None;
        }
        Some(Stamp {
            sender: it.next()?.parse().ok()?,
            stream: it.next()?.parse().ok()?,
            seq: it.next()?.parse().ok()?,
            intended_us: it.next()?.parse().ok()?,
            sent_us: it.next()?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let s = Stamp {
            sender: u32::MAX,
            stream: GROUP_STREAM | 12,
            seq: u64::MAX,
            intended_us: 3_600_000_000,
            sent_us: 3_600_000_001,
        };
        let text = s.text(MIN_TEXT);
        assert!(text.len() >= MIN_TEXT);
        assert_eq!(Stamp::parse(&text), Some(s));
        assert_eq!(s.text(200).len(), 200);
    }

    #[test]
    fn other_texts_are_not_stamps() {
        assert_eq!(Stamp::parse("hello"), None);
        assert_eq!(Stamp::parse("lt 1 2 x 4 5 "), None);
        assert_eq!(Stamp::parse("lt 1 2 3 4 "), None);
        assert_eq!(Stamp::parse(""), None);
    }
}
