//! Who may hold a connection, and how fast a user may send: the node's cap
//! (`--max-connections`, checked by the shards' accept loops against
//! [`crate::load::NodeLoad`]), the cap per client address
//! (`--max-connections-per-ip`) and the send rate (`--send-rate`,
//! `--send-burst`: a [`TokenBucket`] per session, so per user while they
//! are logged in).
//!
//! The per-address count is shared by the shards (a mutex around a map,
//! touched once when a connection opens and once when it closes, never per
//! message). The address is the client's: the PROXY header's source for a
//! connection from a trusted balancer. An entry lives while its address
//! has a connection, so the map holds at most one entry per open
//! connection. A refused connection gets `Overloaded` in its protocol
//! before it is closed (`session::refuse`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// `rate` tokens a second, at most `burst` saved; a send takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32, burst: u32) -> Option<TokenBucket> {
        (rate > 0).then(|| TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        })
    }

    /// Takes a token at `now`: `Ok`, or `Err` with the milliseconds until
    /// one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), u32> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Err((wait * 1000.0).ceil().max(1.0) as u32)
    }
}

/// Open connections per client address, against a cap.
#[derive(Debug)]
pub struct PerAddress {
    /// Most connections one address may hold; 0 = no cap.
    limit: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection's place in its address's count, given back when
/// dropped.
#[derive(Debug)]
pub struct Slot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(limit: u32) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `ip`: `Ok(None)` when there is no cap,
    /// `Ok(Some(slot))` while under it, `Err(limit)` at it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Slot>, u32> {
        if self.limit == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return Err(self.limit);
        }
        *count += 1;
        Ok(Some(Slot {
            table: self.clone(),
            ip,
        }))
    }

    /// Open connections counted for `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 5).unwrap();
        for _ in 0..5 {
            assert!(b.take(start).is_ok());
        }
        let wait = b.take(start).unwrap_err();
        assert!((95..=100).contains(&wait), "{wait}");
        let later = start + std::time::Duration::from_millis(100);
        assert!(b.take(later).is_ok(), "one token after 100 ms at 10/s");
        assert!(b.take(later).is_err());
        let much_later = start + std::time::Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.take(much_later).is_ok());
        }
        assert!(b.take(much_later).is_err(), "never more than the burst");
        assert!(TokenBucket::new(0, 5).is_none());
    }

    #[test]
    fn an_address_holds_at_most_its_cap_and_entries_go_with_their_last_connection() {
        let table = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = table.admit(a).unwrap();
        let second = table.admit(a).unwrap();
        assert_eq!(table.admit(a).unwrap_err(), 2);
        let other = table.admit(b).unwrap();
        assert_eq!((table.open(a), table.open(b)), (2, 1));
        drop(first);
        let again = table.admit(a).unwrap();
        drop((second, again, other));
        assert!(table.open.lock().unwrap().is_empty());
        let none = PerAddress::new(0);
        for _ in 0..10 {
            assert!(none.admit(a).unwrap().is_none());
        }
    }
}
