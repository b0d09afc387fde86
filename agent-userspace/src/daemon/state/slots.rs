//! Policy slots: every cage's kernel rules live under a slot number, so a new policy is
//! written beside the old one and switched in with one update of the cage's entry. This
//! keeps what each live and recently retired slot was compiled from, for events still in
//! the ring buffer after a switch, and empties retired slots after a grace period.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    bpf::{EgressMaps, SlotEntries},
    events::InodePaths,
    policy::Policy,
};

/// How long a retired slot's entries stay in the maps for decisions already under way.
const GRACE: Duration = Duration::from_secs(2);

/// How many retired slots keep their policy for late events.
const RETIRED_KEPT: usize = 1024;

/// The slots in use and recently retired.
pub(super) struct Slots {
    next: u32,
    /// The policy each slot was compiled from.
    policies: HashMap<u32, Arc<Policy>>,
    /// Where each slot's file rules found their inodes.
    paths: HashMap<u32, Arc<InodePaths>>,
    /// Retired slots whose policy is still kept, oldest first.
    retired: VecDeque<u32>,
    /// Retired slots whose entries are still in the maps, with when they were retired.
    draining: VecDeque<(Instant, SlotEntries)>,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            // Slot 0 is never used: an unset entry must not look like a policy.
            next: 1,
            policies: HashMap::new(),
            paths: HashMap::new(),
            retired: VecDeque::new(),
            draining: VecDeque::new(),
        }
    }
}

impl Slots {
    /// A fresh slot number.
    pub(super) fn take(&mut self) -> u32 {
        let slot = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        slot
    }

    /// Remembers what `slot` was compiled from.
    pub(super) fn record(&mut self, slot: u32, policy: &Arc<Policy>, paths: InodePaths) {
        self.policies.insert(slot, Arc::clone(policy));
        self.paths.insert(slot, Arc::new(paths));
    }

    /// The policy `slot` was compiled from, if it is live or recently retired.
    pub(super) fn policy(&self, slot: u32) -> Option<&Arc<Policy>> {
        self.policies.get(&slot)
    }

    /// Where `slot`'s file rules found their inodes.
    pub(super) fn paths(&self, slot: u32) -> Option<&Arc<InodePaths>> {
        self.paths.get(&slot)
    }

    /// Retires a slot no cage uses any more: its entries are emptied after the grace
    /// period, its policy kept a while longer for late events.
    pub(super) fn retire(&mut self, entries: SlotEntries, maps: &mut EgressMaps) {
        self.retired.push_back(entries.slot());
        // Not emptied now: a program that read the cage's old slot just before the switch
        // may still be looking it up (the sleepable exec hook can spend milliseconds
        // hashing), and an emptied slot would judge by defaults.
        self.draining.push_back((Instant::now(), entries));
        self.reap(maps);
        while self.retired.len() > RETIRED_KEPT {
            if let Some(old) = self.retired.pop_front() {
                self.policies.remove(&old);
                self.paths.remove(&old);
            }
        }
    }

    /// Empties the retired slots whose grace period is over.
    pub(super) fn reap(&mut self, maps: &mut EgressMaps) {
        while self
            .draining
            .front()
            .is_some_and(|(at, _)| at.elapsed() >= GRACE)
        {
            if let Some((_, entries)) = self.draining.pop_front() {
                maps.clear_slot(&entries);
            }
        }
    }
}
