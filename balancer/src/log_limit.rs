//! A rate limit for log lines that repeat with every client while something
//! stays broken (a failed connect to a dead node, a client no node took, a
//! pick in panic mode).
//!
//! Semantics: for each kind of line and key (an upstream's address, or a
//! fixed word), at most one line every [`PERIOD`] on each thread. The
//! lines held back in between are counted, and the next line let through
//! says how many, through [`More`]: `connect failed (37 more since the last
//! line)`. Held-back lines are reported only when the next one comes: a
//! burst that ends inside the period is never reported as such (the
//! counters in `/metrics` count every event). The state is per thread, so
//! with `--threads N` a key may log up to N lines a period, each with its
//! own thread's count.
//!
//! Cost: no lock and no atomic; a thread-local map lookup by a borrowed
//! `&str` and one `Instant::now()` per event. A key is allocated once, the
//! first time a thread sees it, and kept: keys are upstream addresses and
//! fixed words, so the map stays as small as the list of upstreams ever
//! configured.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// At most one line per kind and key this often, per thread.
pub const PERIOD: Duration = Duration::from_secs(5);

/// The lines of one kind, by key.
#[derive(Debug, Default)]
pub struct Limiter {
    slots: HashMap<String, Slot>,
}

#[derive(Debug)]
struct Slot {
    /// When the last line for this key was let through.
    last: Instant,
    /// Lines held back since then.
    held: u64,
}

impl Limiter {
    /// Whether a line for `key` may be written at `now`: `Some(n)`, `n`
    /// being the lines held back since the last one, if at least `period`
    /// has passed since it (or there was none); otherwise `None`, and the
    /// line is counted as held back.
    pub fn allow(&mut self, key: &str, now: Instant, period: Duration) -> Option<u64> {
        match self.slots.get_mut(key) {
            None => {
                self.slots
                    .insert(key.to_owned(), Slot { last: now, held: 0 });
                Some(0)
            }
            Some(slot) if now.saturating_duration_since(slot.last) >= period => {
                slot.last = now;
                Some(std::mem::take(&mut slot.held))
            }
            Some(slot) => {
                slot.held += 1;
                None
            }
        }
    }
}

thread_local! {
    static LIMITERS: RefCell<HashMap<&'static str, Limiter>> = RefCell::new(HashMap::new());
}

/// [`Limiter::allow`] on this thread's limiter for `kind`, now, every
/// [`PERIOD`]: `Some(held back)` when the line may be written.
pub fn allow(kind: &'static str, key: &str) -> Option<u64> {
    LIMITERS.with_borrow_mut(|l| {
        l.entry(kind)
            .or_default()
            .allow(key, Instant::now(), PERIOD)
    })
}

/// Formats the held-back count for the end of a message: nothing for 0,
/// else ` (N more since the last line)`.
pub struct More(pub u64);

impl fmt::Display for More {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more since the last line)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_period_then_the_count_held_back() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let p = Duration::from_secs(5);
        assert_eq!(l.allow("a", t0, p), Some(0));
        assert_eq!(l.allow("b", t0, p), Some(0), "keys are separate");
        for i in 1..=37 {
            assert_eq!(l.allow("a", t0 + s * (i % 5), p), None);
        }
        assert_eq!(l.allow("a", t0 + s * 5, p), Some(37));
        assert_eq!(l.allow("a", t0 + s * 6, p), None);
        assert_eq!(l.allow("a", t0 + s * 10, p), Some(1));
        assert_eq!(l.allow("a", t0 + s * 20, p), Some(0));
        assert_eq!(l.allow("b", t0 + s * 2, p), None);
    }

    #[test]
    fn the_count_reads_as_a_suffix() {
        assert_eq!(format!("x{}", More(0)), "x");
        assert_eq!(format!("x{}", More(37)), "x (37 more since the last line)");
        assert_eq!(allow("test", "k"), Some(0));
        assert_eq!(allow("test", "k"), None);
        assert_eq!(allow("other", "k"), Some(0), "kinds are separate");
    }
}
