//! Floods become summaries: repeated egress decisions with the same key are counted right
//! after the ring-buffer reader, before anything is enriched, published or spooled.
//!
//! The key is the cage (cgroup and agent), the policy slot that decided, the verdict, the
//! rule, the hook, the protocol, family and socket type, and the destination address and port.
//! - The first decision of a key is reported at once, as a full event.
//! - Repeats within the key's window ([`WINDOW`], from the decision that opened it) are
//!   counted, not reported; when the window ends, one summary says how many there were, with
//!   the times of the first and the last and the record of the last.
//! - A repeat after the window opens the next window (counted, not reported).
//! - A key idle for longer than [`IDLE`] is forgotten: its next decision is a full event again.
//! - At most [`MAX_KEYS`] keys are followed: when the table is full the less recently seen half
//!   is dropped, each key's counted repeats first reported as a summary.
//!
//! So every decision is either a full event or counted in exactly one summary: the full
//! events plus the summaries' counts are the exact number of decisions the kernel reported,
//! and every distinct destination and rule has at least one full event.
//!
//! Times are the kernel's (CLOCK_BOOTTIME, ns): the records' own timestamps decide windows,
//! and the reader's clock only says when an ended window is reported.

use std::{collections::HashMap, time::Duration};

use agent_common::egress::EgressEvent;

/// How long repeats of one key are counted before they are reported as a summary.
pub const WINDOW: Duration = Duration::from_secs(1);
/// A key not seen for this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(5);
/// The most keys followed at once.
pub const MAX_KEYS: usize = 16 * 1024;

/// What makes two egress decisions repeats of each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    cgroup_id: u64,
    agent_id: u32,
    policy_slot: u32,
    rule_id: u32,
    verdict: u8,
    hook: u8,
    protocol: u16,
    family: u16,
    sock_type: u16,
    port: u16,
    addr: [u8; 16],
    // Issue 10 (names in allow lists): the destination's name joins the key here once the
    // kernel's egress record carries it, so that two names on one address stay apart.
}

impl Key {
    fn of(e: &EgressEvent) -> Self {
        Self {
            cgroup_id: e.header.cgroup_id,
            agent_id: e.header.agent_id,
            policy_slot: e.header.policy_slot,
            rule_id: e.rule_id,
            verdict: e.verdict,
            hook: e.hook,
            protocol: e.protocol,
            family: e.family,
            sock_type: e.sock_type,
            port: e.port,
            addr: e.addr,
        }
    }
}

/// Repeats counted in a key's current window.
#[derive(Clone, Copy, Debug)]
struct Counted {
    count: u64,
    first_ts_ns: u64,
    /// The last repeat's record: the summary carries its process and time.
    last: EgressEvent,
}

#[derive(Debug)]
struct Followed {
    /// When the current window ends (kernel time).
    window_end: u64,
    /// When the key was last seen (kernel time).
    last_seen: u64,
    counted: Option<Counted>,
}

/// Repeats of one decision that were counted rather than reported: the record of the last
/// of them, how many there were and when the first was.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// The last repeat's record.
    pub last: EgressEvent,
    /// How many decisions this summary stands for (none of them was reported on its own).
    pub count: u64,
    /// The first repeat's kernel timestamp (CLOCK_BOOTTIME, ns).
    pub first_ts_ns: u64,
}

/// What to do with an egress decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Report it as a full event.
    Report,
    /// Counted into a summary to come: nothing to report now.
    Counted,
}

/// The table of keys followed.
#[derive(Debug)]
pub struct Coalescer {
    window: u64,
    idle: u64,
    max_keys: usize,
    /// Seeded per process: a caged agent picks the destinations, so the hash must not be
    /// one it can aim collisions at.
    keys: HashMap<Key, Followed, foldhash::fast::RandomState>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new(WINDOW, IDLE, MAX_KEYS)
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Coalescer {
    /// A coalescer with its own window, idle time and bound (tests use small ones).
    pub fn new(window: Duration, idle: Duration, max_keys: usize) -> Self {
        Self {
            window: ns(window),
            idle: ns(idle),
            max_keys: max_keys.max(2),
            keys: HashMap::default(),
        }
    }

    /// Keys followed now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is followed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Takes one decision. Summaries that must be reported before it (a key dropped to bound
    /// the table, a window that ended) go to `out`.
    pub fn offer(&mut self, e: &EgressEvent, out: &mut Vec<Summary>) -> Offer {
        let key = Key::of(e);
        let ts = e.header.ts_ns;
        if let Some(f) = self.keys.get_mut(&key) {
            if ts.saturating_sub(f.last_seen) > self.idle {
                // Forgotten in all but name (the reader's clock had not swept it yet).
                out.extend(f.counted.take().map(|c| summary(&c)));
                *f = Followed::opened(ts, self.window);
                return Offer::Report;
            }
            if ts >= f.window_end {
                out.extend(f.counted.take().map(|c| summary(&c)));
                f.window_end = ts.saturating_add(self.window);
            }
            f.last_seen = f.last_seen.max(ts);
            match &mut f.counted {
                Some(c) => {
                    c.count += 1;
                    c.last = *e;
                }
                None => {
                    f.counted = Some(Counted {
                        count: 1,
                        first_ts_ns: ts,
                        last: *e,
                    })
                }
            }
            return Offer::Counted;
        }
        if self.keys.len() >= self.max_keys {
            self.shed(out);
        }
        self.keys.insert(key, Followed::opened(ts, self.window));
        Offer::Report
    }

    /// Summaries of the windows ended by `now_ns` (kernel time); forgets idle keys.
    pub fn due(&mut self, now_ns: u64, out: &mut Vec<Summary>) {
        let idle = self.idle;
        self.keys.retain(|_, f| {
            if now_ns >= f.window_end {
                out.extend(f.counted.take().map(|c| summary(&c)));
            }
            f.counted.is_some() || now_ns.saturating_sub(f.last_seen) <= idle
        });
    }

    /// Summaries of everything counted for cage `cgroup_id`, now (its session is ending);
    /// forgets its keys.
    pub fn flush_cage(&mut self, cgroup_id: u64, out: &mut Vec<Summary>) {
        self.keys.retain(|k, f| {
            if k.cgroup_id != cgroup_id {
                return true;
            }
            out.extend(f.counted.take().map(|c| summary(&c)));
            false
        });
    }

    /// Summaries of everything counted, now (the daemon is stopping); forgets every key.
    pub fn flush_all(&mut self, out: &mut Vec<Summary>) {
        out.extend(
            self.keys
                .drain()
                .filter_map(|(_, f)| f.counted.as_ref().map(summary)),
        );
    }

    /// Drops the less recently seen half of the keys, reporting what they counted.
    fn shed(&mut self, out: &mut Vec<Summary>) {
        let mut seen: Vec<u64> = self.keys.values().map(|f| f.last_seen).collect();
        let mid = seen.len() / 2;
        let (_, cut, _) = seen.select_nth_unstable(mid);
        let cut = *cut;
        self.keys.retain(|_, f| {
            if f.last_seen > cut {
                return true;
            }
            out.extend(f.counted.take().map(|c| summary(&c)));
            false
        });
    }
}

impl Followed {
    fn opened(ts: u64, window: u64) -> Self {
        Self {
            window_end: ts.saturating_add(window),
            last_seen: ts,
            counted: None,
        }
    }
}

fn summary(c: &Counted) -> Summary {
    Summary {
        last: c.last,
        count: c.count,
        first_ts_ns: c.first_ts_ns,
    }
}

#[cfg(test)]
mod tests {
    use agent_common::event::{EventHeader, EventKind};

    use super::*;

    const MS: u64 = 1_000_000;

    fn deny(addr: u8, port: u16, ts_ms: u64) -> EgressEvent {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[127, 0, 0, addr]);
        EgressEvent {
            header: EventHeader {
                kind: EventKind::Egress as u32,
                agent_id: 1,
                policy_slot: 1,
                _pad: 0,
                ts_ns: ts_ms * MS,
                cgroup_id: 9,
                pid: 10,
                tgid: 10,
                comm: [0; 16],
            },
            addr: a,
            rule_id: u32::MAX,
            port,
            family: 2,
            protocol: 17,
            sock_type: 2,
            verdict: 2,
            hook: 3,
            _pad: [0; 2],
        }
    }

    fn coalescer() -> Coalescer {
        Coalescer::new(
            Duration::from_millis(1000),
            Duration::from_millis(5000),
            MAX_KEYS,
        )
    }

    /// Feeds decisions; returns (full events, summaries) including what `due(end)` reports.
    fn run(c: &mut Coalescer, decisions: &[EgressEvent], end_ms: u64) -> (u64, Vec<Summary>) {
        let mut full = 0;
        let mut out = Vec::new();
        for d in decisions {
            if c.offer(d, &mut out) == Offer::Report {
                full += 1;
            }
        }
        c.due(end_ms * MS, &mut out);
        (full, out)
    }

    fn total(full: u64, summaries: &[Summary]) -> u64 {
        full + summaries.iter().map(|s| s.count).sum::<u64>()
    }

    #[test]
    fn the_first_is_reported_and_repeats_in_its_window_are_one_summary() {
        let mut c = coalescer();
        let flood: Vec<_> = (0..1000).map(|i| deny(2, 80, i % 900)).collect();
        let (full, s) = run(&mut c, &flood, 1000);
        assert_eq!(full, 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 999, "repeats only: the first was reported");
        assert_eq!(s[0].first_ts_ns, MS, "the second decision opened the count");
        assert_eq!(s[0].last.header.ts_ns, 99 * MS, "the last repeat's record");
    }

    #[test]
    fn nothing_is_reported_before_the_window_ends_and_a_quiet_key_adds_nothing() {
        let mut c = coalescer();
        let (full, s) = run(&mut c, &[deny(2, 80, 0), deny(2, 80, 10)], 999);
        assert_eq!((full, s.len()), (1, 0), "window still open");
        let mut out = Vec::new();
        c.due(1000 * MS, &mut out);
        assert_eq!(out.len(), 1);
        c.due(2000 * MS, &mut out);
        assert_eq!(out.len(), 1, "no repeats in the second window: no summary");
        let (full, s) = run(&mut c, &[deny(2, 80, 3000)], 3000);
        assert_eq!((full, s.len()), (0, 0), "still followed: counted");
        let mut out = Vec::new();
        c.due(4000 * MS, &mut out);
        assert_eq!(out[0].count, 1);
    }

    #[test]
    fn a_long_flood_is_one_summary_per_window_and_the_total_is_exact() {
        let mut c = coalescer();
        // 10 s of a decision every ms, plus the flush at the end.
        let flood: Vec<_> = (0..10_000).map(|i| deny(2, 80, i)).collect();
        let mut out = Vec::new();
        let mut full = 0;
        for (i, d) in flood.iter().enumerate() {
            if c.offer(d, &mut out) == Offer::Report {
                full += 1;
            }
            if i % 20 == 0 {
                c.due(i as u64 * MS, &mut out);
            }
        }
        c.flush_all(&mut out);
        assert_eq!(full, 1);
        assert!(out.len() <= 11, "{} summaries", out.len());
        assert_eq!(total(full, &out), 10_000);
    }

    #[test]
    fn a_different_destination_in_the_middle_of_a_flood_is_a_full_event() {
        let mut c = coalescer();
        let mut decisions: Vec<_> = (0..500).map(|i| deny(2, 80, i)).collect();
        decisions.insert(250, deny(3, 80, 250));
        decisions.insert(300, deny(2, 81, 300));
        let (full, s) = run(&mut c, &decisions, 5000);
        assert_eq!(full, 3, "127.0.0.2:80, 127.0.0.3:80 and 127.0.0.2:81");
        assert_eq!(total(full, &s), 502);
    }

    #[test]
    fn verdict_rule_hook_slot_and_cage_are_part_of_the_key() {
        let mut c = coalescer();
        let base = deny(2, 80, 0);
        let mut variants = vec![base];
        let mut v = base;
        v.verdict = 1;
        variants.push(v);
        let mut v = base;
        v.rule_id = 0;
        variants.push(v);
        let mut v = base;
        v.hook = 1;
        variants.push(v);
        let mut v = base;
        v.header.policy_slot = 2;
        variants.push(v);
        let mut v = base;
        v.header.cgroup_id = 10;
        variants.push(v);
        let mut v = base;
        v.protocol = 6;
        variants.push(v);
        let (full, s) = run(&mut c, &variants, 0);
        assert_eq!((full, s.len()), (7, 0));
    }

    #[test]
    fn an_idle_key_is_forgotten_and_reported_in_full_again() {
        let mut c = coalescer();
        let (full, _) = run(&mut c, &[deny(2, 80, 0)], 6000);
        assert_eq!(full, 1);
        assert!(c.is_empty(), "forgotten after 5 s of quiet");
        let (full, _) = run(&mut c, &[deny(2, 80, 7000)], 7000);
        assert_eq!(full, 1, "a full event again");
        // Even when the reader's sweep has not run, the record's own time tells.
        let (full, s) = run(&mut c, &[deny(2, 80, 7100), deny(2, 80, 20_000)], 7100);
        assert_eq!((full, s.len()), (1, 1), "{s:?}");
        assert_eq!(s[0].count, 1);
    }

    #[test]
    fn a_full_table_sheds_the_older_half_and_reports_their_counts_first() {
        let mut c = Coalescer::new(Duration::from_secs(1), Duration::from_secs(5), 8);
        let mut out = Vec::new();
        let mut full = 0;
        let mut sent = 0;
        // Eight keys, each with a repeat: the table is full.
        for addr in 0..8u8 {
            for t in 0..2 {
                sent += 1;
                if c.offer(&deny(addr, 80, u64::from(addr) * 10 + t), &mut out) == Offer::Report {
                    full += 1;
                }
            }
        }
        assert_eq!((c.len(), full, out.len()), (8, 8, 0));
        // A ninth sheds the older half (their repeats are reported), then is followed.
        sent += 1;
        assert_eq!(c.offer(&deny(100, 80, 200), &mut out), Offer::Report);
        full += 1;
        assert!(c.len() <= 5, "{}", c.len());
        assert_eq!(
            out.len(),
            8 - (c.len() - 1),
            "each shed key's count was reported"
        );
        c.flush_all(&mut out);
        assert_eq!(total(full, &out), sent);
        assert!(c.is_empty());
    }

    #[test]
    fn a_flood_mixed_with_distinct_destinations_stays_exact_under_the_bound() {
        let mut c = Coalescer::new(Duration::from_secs(1), Duration::from_secs(5), 64);
        let mut out = Vec::new();
        let mut full = 0;
        let mut sent = 0;
        for i in 0..10_000u64 {
            // Every other decision a flood of one destination, the rest all distinct.
            let d = if i % 2 == 0 {
                deny(2, 80, i / 10)
            } else {
                deny(3, (i % 60_000) as u16 + 1, i / 10)
            };
            sent += 1;
            if c.offer(&d, &mut out) == Offer::Report {
                full += 1;
            }
        }
        c.flush_all(&mut out);
        assert_eq!(total(full, &out), sent);
        // The flood key is recent when the table sheds, so it survives: few reports of it.
        let flood_full = full - 5000;
        assert!(flood_full < 10, "the flood was reported {flood_full} times");
    }

    #[test]
    fn a_session_end_reports_its_cage_only() {
        let mut c = coalescer();
        let mut other = deny(2, 80, 0);
        other.header.cgroup_id = 77;
        let decisions = [deny(2, 80, 0), deny(2, 80, 1), other, other];
        let (full, s) = run(&mut c, &decisions, 10);
        assert_eq!((full, s.len()), (2, 0));
        let mut out = Vec::new();
        c.flush_cage(9, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].last.header.cgroup_id, 9);
        assert_eq!(c.len(), 1);
    }
}
