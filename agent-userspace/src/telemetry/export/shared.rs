//! Batches encoded once for both signals. The logs and the traces exporter read the same
//! spool records, and describing and encoding a record costs more than sending it: the
//! exporter that reads a batch first encodes it for both, the other takes it from here.
//! Each exporter keeps its own cursor, so one that fell behind (its collector was down)
//! misses here and encodes for itself.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use bytes::Bytes;

use super::Signal;

/// One signal's records of a batch, written one after the other.
#[derive(Debug, Default)]
pub struct Written {
    /// The records, each written as a `ScopeLogs` or `ScopeSpans` field.
    pub bytes: Bytes,
    /// Where each record ends in `bytes`.
    pub ends: Vec<usize>,
}

impl Written {
    /// The records in runs of at most `max` bytes (a record longer than that alone): one
    /// request each.
    pub fn requests(&self, max: usize) -> Vec<Bytes> {
        let mut requests = Vec::new();
        // The run being gathered starts at `start`; `fits` is where its last record ends.
        let (mut start, mut fits) = (0, 0);
        for &end in &self.ends {
            if end - start > max && fits > start {
                requests.push(self.bytes.slice(start..fits));
                start = fits;
            }
            fits = end;
        }
        if fits > start {
            requests.push(self.bytes.slice(start..fits));
        }
        requests
    }
}

/// One batch of spool records, encoded for both signals.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The log records.
    pub logs: Written,
    /// The spans of the kinds that have one.
    pub spans: Written,
    /// The sequence numbers of records that could not be described (counted once, by the
    /// logs exporter).
    pub unencodable: Vec<u64>,
}

impl Encoded {
    /// What `signal` sends of it.
    pub fn of(&self, signal: Signal) -> &Written {
        match signal {
            Signal::Logs => &self.logs,
            Signal::Traces => &self.spans,
        }
    }
}

/// The first and last sequence numbers of a batch: two reads with the same hold the same
/// records.
pub type Range = (u64, u64);

/// Batches kept at most. Exporters that keep pace take each batch within a few; a bound
/// keeps one far ahead of the other (whose collector is away) from holding batches for it.
const SLOTS: usize = 6;

struct Slot {
    range: Range,
    batch: Arc<Encoded>,
    /// Which signals have it (by [`Signal::index`]).
    taken: [bool; 2],
}

/// The batches one signal encoded and the other has not taken yet.
#[derive(Default)]
pub struct Shared {
    slots: Mutex<VecDeque<Slot>>,
}

impl Shared {
    fn slots(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The batch of `range` if the other signal encoded it, taken by `signal`: it goes once
    /// both have it.
    pub fn take(&self, signal: Signal, range: Range) -> Option<Arc<Encoded>> {
        let mut slots = self.slots();
        let i = slots.iter().position(|s| s.range == range)?;
        let batch = Arc::clone(&slots[i].batch);
        take_at(&mut slots, i, signal);
        Some(batch)
    }

    /// Keeps `batch`, which `signal` encoded, for the other signal. When the other encoded
    /// the same range meanwhile, it already has its own: `signal` takes that one's place.
    pub fn offer(&self, signal: Signal, range: Range, batch: Arc<Encoded>) {
        let mut slots = self.slots();
        if let Some(i) = slots.iter().position(|s| s.range == range) {
            take_at(&mut slots, i, signal);
            return;
        }
        if slots.len() == SLOTS {
            slots.pop_front();
        }
        let mut taken = [false; 2];
        taken[signal.index()] = true;
        slots.push_back(Slot {
            range,
            batch,
            taken,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots().len()
    }
}

fn take_at(slots: &mut VecDeque<Slot>, i: usize, signal: Signal) {
    slots[i].taken[signal.index()] = true;
    if slots[i].taken.iter().all(|t| *t) {
        slots.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Arc<Encoded> {
        Arc::new(Encoded {
            logs: Written {
                bytes: Bytes::from(vec![n]),
                ends: vec![1],
            },
            ..Default::default()
        })
    }

    #[test]
    fn requests_hold_whole_records_up_to_the_bound_and_a_longer_record_alone() {
        let lengths = [3usize, 4, 2, 9, 1, 1, 5];
        let mut ends = Vec::new();
        let mut bytes = Vec::new();
        for (i, n) in lengths.iter().enumerate() {
            bytes.extend(std::iter::repeat_n(i as u8, *n));
            ends.push(bytes.len());
        }
        let written = Written {
            bytes: Bytes::from(bytes.clone()),
            ends,
        };
        let requests = written.requests(7);
        let sizes: Vec<usize> = requests.iter().map(|r| r.len()).collect();
        assert_eq!(sizes, [7, 2, 9, 7]);
        assert_eq!(requests.concat(), bytes, "every record once, in order");
        assert_eq!(written.requests(100).len(), 1);
        assert!(Written::default().requests(7).is_empty());
    }

    #[test]
    fn a_batch_encoded_by_one_signal_is_taken_by_the_other_then_dropped() {
        let shared = Shared::default();
        assert!(shared.take(Signal::Logs, (1, 512)).is_none());
        shared.offer(Signal::Logs, (1, 512), batch(1));
        assert!(
            shared.take(Signal::Traces, (1, 300)).is_none(),
            "another range is other records"
        );
        assert_eq!(
            shared.take(Signal::Traces, (1, 512)).unwrap().logs.bytes[..],
            [1]
        );
        assert_eq!(shared.len(), 0, "both signals have it: nothing kept");
    }

    #[test]
    fn a_batch_both_signals_encoded_at_once_is_not_kept() {
        let shared = Shared::default();
        shared.offer(Signal::Logs, (1, 9), batch(1));
        shared.offer(Signal::Traces, (1, 9), batch(2));
        assert_eq!(shared.len(), 0);
    }

    #[test]
    fn a_signal_far_ahead_keeps_only_the_latest_batches_for_the_other() {
        let shared = Shared::default();
        for i in 0..20u64 {
            shared.offer(Signal::Logs, (i * 10 + 1, i * 10 + 10), batch(i as u8));
        }
        assert_eq!(shared.len(), SLOTS);
        assert!(shared.take(Signal::Traces, (1, 10)).is_none(), "evicted");
        assert_eq!(
            shared.take(Signal::Traces, (191, 200)).unwrap().logs.bytes[..],
            [19]
        );
    }
}
