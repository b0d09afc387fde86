//! The ring-buffer reader: drains the kernel's records in batches, lets floods of one egress
//! decision become summaries (`events::coalesce`) before anything is enriched, enriches a
//! batch under one lock of the state, hashes exec binaries outside it, and publishes the
//! batch on the bus, whose durable sink (the spool) appends it with one write before any
//! live consumer sees it. A spool slower than the kernel slows this reader, and then the
//! kernel's ring fills and the kernel counts what it could not report: no event is dropped
//! in user space.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tracing::{error, warn};

use super::{server::Shared, tasks::register};
use crate::{
    capture::HashCache,
    clock::boot_ns,
    events::{
        coalesce::{Coalescer, Offer, Summary},
        decode, Event, EventDetail, RawEvent,
    },
};

/// Records per batch: one lock of the state and one spool write each.
const BATCH: usize = 1024;
/// How often the coalescer is asked for the summaries of ended windows (a sweep of its
/// table): the reader drains far more often under load.
const SWEEP_NS: u64 = 20_000_000;

/// A record to report, or a summary of counted repeats.
enum Item {
    Raw(RawEvent),
    Summary(Summary),
}

struct Reader {
    shared: Arc<Shared>,
    coalescer: Coalescer,
    hashes: HashCache,
    items: Vec<Item>,
    summaries: Vec<Summary>,
    /// When the coalescer's table was last swept (CLOCK_BOOTTIME, ns).
    swept: u64,
}

/// Reads kernel events, enriches them and publishes them on the bus; when `stop` changes,
/// publishes what the ring buffer still holds and what was counted, and returns, so a
/// stopping daemon hands every event it was told about to the bus (and the spool).
pub async fn read_events(
    shared: Arc<Shared>,
    ring: RingBuf<MapData>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut fd = match register(ring) {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the event ring buffer: no events will be reported");
            return;
        }
    };
    let mut reader = Reader {
        shared,
        coalescer: Coalescer::default(),
        hashes: HashCache::default(),
        items: Vec::with_capacity(BATCH),
        summaries: Vec::new(),
        swept: 0,
    };
    // Process events are submitted without a wakeup (see agent-ebpf's batched_wakeup): pick
    // them up on a short timer, which also reports the summaries of ended windows.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => reader.drain(fd.get_mut()),
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        error!(error = %e, "event ring buffer poll failed");
                        return;
                    }
                };
                reader.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            () = wake.notified() => reader.drain(fd.get_mut()),
            _ = stop.changed() => {
                reader.drain(fd.get_mut());
                reader.coalescer.flush_all(&mut reader.summaries);
                reader.items.extend(reader.summaries.drain(..).map(Item::Summary));
                reader.publish(false);
                return;
            }
        }
    }
}

impl Reader {
    /// Publishes everything the ring holds, a batch at a time, then the summaries of ended
    /// windows and the session ends waiting for the ring to be empty.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        loop {
            while self.items.len() < BATCH {
                let Some(record) = ring.next() else { break };
                match decode(&record) {
                    Ok(raw) => {
                        drop(record);
                        self.take(raw);
                    }
                    Err(e) => warn!(error = %e, "undecodable event record skipped"),
                }
            }
            let emptied = self.items.len() < BATCH;
            let now = boot_ns();
            if emptied && now.saturating_sub(self.swept) >= SWEEP_NS {
                self.swept = now;
                self.coalescer.due(now, &mut self.summaries);
                self.items
                    .extend(self.summaries.drain(..).map(Item::Summary));
            }
            self.publish(emptied);
            if emptied {
                return;
            }
        }
    }

    /// Takes one record: reported, or counted into a summary to come.
    fn take(&mut self, raw: RawEvent) {
        if let RawEvent::Egress(e) = &raw {
            let offer = self.coalescer.offer(e, &mut self.summaries);
            // Summaries a new key pushed out, or whose window this record ended, go first.
            self.items
                .extend(self.summaries.drain(..).map(Item::Summary));
            if offer == Offer::Counted {
                return;
            }
        }
        self.items.push(Item::Raw(raw));
    }

    /// Enriches the batch under one lock of the state and publishes it. With `emptied` (the
    /// ring is empty now), whatever a removed cage did is published, so its session's end
    /// follows: what was counted of it first, then the end.
    fn publish(&mut self, emptied: bool) {
        let mut events: Vec<Event> = Vec::with_capacity(self.items.len());
        // Exec records: where their event is, and the binary's device and inode.
        let mut execs = Vec::new();
        {
            let mut state = self.shared.state();
            for item in self.items.drain(..) {
                match item {
                    Item::Raw(raw) => {
                        if let RawEvent::Exec(e) = &raw {
                            execs.push((events.len(), e.dev, e.ino));
                        }
                        events.push(state.enrich(&raw));
                    }
                    Item::Summary(s) => events.push(state.enrich_summary(&s)),
                }
            }
            if emptied {
                for cgroup_id in state.ending_cages() {
                    self.coalescer.flush_cage(cgroup_id, &mut self.summaries);
                }
                for s in self.summaries.drain(..) {
                    events.push(state.enrich_summary(&s));
                }
                events.extend(state.take_session_ends());
            }
        }
        // Hashing reads the file: outside the state lock, from a cache.
        for (i, dev, ino) in execs {
            let event = &mut events[i];
            if let EventDetail::Exec(d) = &mut event.detail {
                match self.hashes.hash(event.tgid, &d.filename, dev, ino) {
                    Ok(h) => d.sha256 = Some(h),
                    Err(why) => d.sha256_error = Some(why),
                }
            }
        }
        self.shared.bus.publish_all(events);
    }
}
