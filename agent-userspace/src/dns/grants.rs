//! One cage's granted addresses: which allowed name each came from, until when, and in which
//! order, so the oldest go first past the cage's bound.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

/// What an address was granted for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The allowed name asked (normalized).
    pub name: String,
    /// Its number on kernel records.
    pub name_id: u32,
    /// CLOCK_BOOTTIME ns after which the grant no longer counts.
    pub expiry_ns: u64,
    /// When it was last granted, for eviction (oldest first).
    seq: u64,
}

/// The grants of one cage, bounded.
#[derive(Debug, Default)]
pub struct CageGrants {
    by_addr: HashMap<IpAddr, Granted>,
    order: BTreeMap<u64, IpAddr>,
    next: u64,
    /// Grants evicted to stay within the bound, since the cage was made.
    pub evicted: u64,
}

impl CageGrants {
    /// Grants `addr` for `name` until `expiry_ns` (a later answer refreshes it and makes it
    /// the newest); returns the addresses evicted to stay within `max`.
    pub fn grant(
        &mut self,
        addr: IpAddr,
        name: &str,
        name_id: u32,
        expiry_ns: u64,
        max: usize,
    ) -> Vec<IpAddr> {
        self.next += 1;
        let seq = self.next;
        if let Some(old) = self.by_addr.insert(
            addr,
            Granted {
                name: name.to_owned(),
                name_id,
                expiry_ns,
                seq,
            },
        ) {
            self.order.remove(&old.seq);
        }
        self.order.insert(seq, addr);
        let mut evicted = Vec::new();
        while self.by_addr.len() > max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_addr.remove(&oldest);
            self.evicted += 1;
            evicted.push(oldest);
        }
        evicted
    }

    /// Forgets `addr`.
    pub fn remove(&mut self, addr: &IpAddr) -> Option<Granted> {
        let g = self.by_addr.remove(addr)?;
        self.order.remove(&g.seq);
        Some(g)
    }

    /// Removes and returns the grants expired at `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<IpAddr> {
        let gone: Vec<IpAddr> = self
            .by_addr
            .iter()
            .filter(|(_, g)| g.expiry_ns <= now_ns)
            .map(|(a, _)| *a)
            .collect();
        for a in &gone {
            self.remove(a);
        }
        gone
    }

    /// Every grant.
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Granted)> {
        self.by_addr.iter()
    }

    /// How many addresses are granted.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The grant of `addr`.
    pub fn get(&self, addr: &IpAddr) -> Option<&Granted> {
        self.by_addr.get(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_are_counted() {
        let mut g = CageGrants::default();
        let a = |i: u8| IpAddr::from([10, 0, 0, i]);
        assert!(g.grant(a(1), "one", 1, 100, 2).is_empty());
        assert!(g.grant(a(2), "two", 2, 100, 2).is_empty());
        // Refreshing 1 makes 2 the oldest.
        assert!(g.grant(a(1), "one", 1, 200, 2).is_empty());
        assert_eq!(g.grant(a(3), "three", 3, 100, 2), vec![a(2)]);
        assert_eq!((g.len(), g.evicted), (2, 1));
        assert_eq!(g.expire(150), vec![a(3)]);
        assert_eq!(g.get(&a(1)).map(|x| x.expiry_ns), Some(200));
    }
}
