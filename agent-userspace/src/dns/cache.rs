//! A cage's answer cache: the address answers its resolver got from upstream, kept per
//! (name, type) until their TTL passes, so that a name asked again is answered without a
//! second trip upstream (the stub resolvers of the C library and of most runtimes keep no
//! cache of their own).
//!
//! Each cage has its own: a shared one would tell one agent, by its timing, what another
//! resolved. Only positive answers are kept (NOERROR with addresses), for their smallest TTL
//! along the chain and at most `max_ttl`, so an answer from the cache never outlives what a
//! grant may last; the grant itself is still checked or written before each answer leaves.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use hickory_proto::{op::ResponseCode, rr::RecordType};

use super::wire::Chain;

/// How many answers a cage keeps; past it the oldest go first.
pub const CACHE_ENTRIES: usize = 1024;

struct Entry {
    chain: Chain,
    /// CLOCK_BOOTTIME ns when it was stored, and when it expires.
    stored_ns: u64,
    expiry_ns: u64,
    seq: u64,
}

/// One cage's answers.
pub struct AnswerCache {
    entries: HashMap<(String, RecordType), Entry>,
    order: BTreeMap<u64, (String, RecordType)>,
    next: u64,
    max_entries: usize,
    max_ttl_s: u32,
}

impl AnswerCache {
    /// A cache of at most `max_entries` answers, none kept longer than `max_ttl`.
    pub fn new(max_entries: usize, max_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            max_entries,
            max_ttl_s: u32::try_from(max_ttl.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The answer for `name`/`qtype` at `now_ns`, its TTLs lowered by the time it was kept;
    /// None if there is none or it expired (then it is dropped).
    pub fn get(&mut self, name: &str, qtype: RecordType, now_ns: u64) -> Option<Chain> {
        let key = (name.to_owned(), qtype);
        let e = self.entries.get(&key)?;
        if now_ns >= e.expiry_ns {
            let seq = e.seq;
            self.entries.remove(&key);
            self.order.remove(&seq);
            return None;
        }
        let elapsed = secs(now_ns - e.stored_ns);
        // At least 1 s left: a TTL of 0 would tell the stub not to use it.
        let left = secs(e.expiry_ns - now_ns).max(1);
        let mut chain = e.chain.clone();
        chain.cached = true;
        for r in &mut chain.records {
            r.ttl = r.ttl.saturating_sub(elapsed).clamp(1, left);
        }
        for (_, ttl) in &mut chain.addrs {
            *ttl = (*ttl).saturating_sub(elapsed).clamp(1, left);
        }
        Some(chain)
    }

    /// Keeps `chain`, the answer upstream gave at `now_ns` for `name`/`qtype`, if it is a
    /// positive one with a TTL.
    pub fn put(&mut self, name: &str, qtype: RecordType, chain: &Chain, now_ns: u64) {
        let Some(ttl) = chain.addrs.iter().map(|(_, t)| *t).min() else {
            return;
        };
        let ttl = ttl.min(self.max_ttl_s);
        if chain.code != ResponseCode::NoError || ttl == 0 || self.max_entries == 0 {
            return;
        }
        self.next += 1;
        let key = (name.to_owned(), qtype);
        let entry = Entry {
            chain: chain.clone(),
            stored_ns: now_ns,
            expiry_ns: now_ns.saturating_add(u64::from(ttl) * 1_000_000_000),
            seq: self.next,
        };
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.order.remove(&old.seq);
        }
        self.order.insert(self.next, key);
        while self.entries.len() > self.max_entries {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whole seconds in `ns`.
fn secs(ns: u64) -> u32 {
    u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use hickory_proto::rr::{rdata::A, Name, RData, Record};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn chain(ttl: u32, code: ResponseCode) -> Chain {
        let ip = Ipv4Addr::new(127, 0, 0, 9);
        Chain {
            code,
            records: vec![Record::from_rdata(
                Name::from_ascii("a.test.").unwrap(),
                ttl,
                RData::A(A(ip)),
            )],
            addrs: vec![(IpAddr::V4(ip), ttl)],
            cached: false,
        }
    }

    #[test]
    fn answers_last_their_ttl_capped_and_age_as_they_are_kept() {
        let mut c = AnswerCache::new(8, Duration::from_secs(60));
        c.put(
            "a.test",
            RecordType::A,
            &chain(600, ResponseCode::NoError),
            10 * S,
        );
        let hit = c.get("a.test", RecordType::A, 25 * S).unwrap();
        // Capped at max_ttl (60 s), 15 s of it gone.
        assert_eq!(hit.addrs[0].1, 45);
        assert_eq!(hit.records[0].ttl, 45);
        assert!(hit.cached);
        assert!(c.get("a.test", RecordType::AAAA, 25 * S).is_none());
        assert!(c.get("a.test", RecordType::A, 70 * S).is_none());
        assert!(c.is_empty(), "an expired answer is dropped");
    }

    #[test]
    fn only_positive_answers_with_a_ttl_are_kept_and_the_oldest_go_first() {
        let mut c = AnswerCache::new(2, Duration::from_secs(3600));
        c.put(
            "n.test",
            RecordType::A,
            &chain(60, ResponseCode::NXDomain),
            0,
        );
        c.put("z.test", RecordType::A, &chain(0, ResponseCode::NoError), 0);
        let mut empty = chain(60, ResponseCode::NoError);
        empty.addrs.clear();
        c.put("e.test", RecordType::A, &empty, 0);
        assert!(c.is_empty());
        for name in ["1.test", "2.test", "3.test"] {
            c.put(name, RecordType::A, &chain(60, ResponseCode::NoError), 0);
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("1.test", RecordType::A, S).is_none());
        assert!(c.get("3.test", RecordType::A, S).is_some());
    }
}
