//! Who may hold a connection: the node's cap (`--max-connections`, checked
//! by the shards' accept loops against [`crate::load::NodeLoad`]) and the
//! cap per client address (`--max-connections-per-ip`), kept here.
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
