//! The event bus: producers (the ring-buffer reader, the daemon's own events) publish; a
//! durable sink (the spool) takes every event first, in order, as part of publishing; then
//! any number of live consumers, each with its own cursor, get it, and one too slow to keep
//! up is told how many it missed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use super::Event;

/// How many recent events are kept for `agentcage events` without `--follow`.
const RECENT: usize = 1024;
/// How far a live consumer may fall behind before it starts missing events.
const CHANNEL: usize = 64 * 1024;

/// Where every published event is recorded before any live consumer sees it. A slow sink
/// slows the publishers (the ring-buffer reader, and so the kernel's ring fills and the
/// kernel counts what it could not report): nothing is dropped between them.
pub trait Durable: Send + Sync {
    /// Records `events`, in order. It reports its own failures (counted, retried).
    fn append(&self, events: &[Arc<Event>]);
}

struct Inner {
    recent: VecDeque<Arc<Event>>,
    durable: Option<Arc<dyn Durable>>,
}

/// Fan-out of events to consumers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    /// Held while an event is recorded and sent, so the durable record and every consumer
    /// see one order.
    inner: Arc<Mutex<Inner>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        Self {
            tx,
            inner: Arc::new(Mutex::new(Inner {
                recent: VecDeque::with_capacity(RECENT),
                durable: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on every event is recorded by `durable` before it is sent.
    pub fn set_durable(&self, durable: Arc<dyn Durable>) {
        self.lock().durable = Some(durable);
    }

    /// Publishes an event: recorded, then sent to every live consumer and the recent buffer.
    pub fn publish(&self, event: Event) {
        self.publish_all(vec![event]);
    }

    /// Publishes events in order, recorded together (one write to the spool).
    pub fn publish_all(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        let mut inner = self.lock();
        if let Some(d) = &inner.durable {
            d.append(&events);
        }
        let keep = events.len().min(RECENT);
        while inner.recent.len() + keep > RECENT {
            inner.recent.pop_front();
        }
        inner
            .recent
            .extend(events[events.len() - keep..].iter().cloned());
        for event in events {
            // No receiver is fine: nobody is following right now.
            let _ = self.tx.send(event);
        }
    }

    /// A live subscription, starting now.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<Arc<Event>> {
        self.lock().recent.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EgressDetail, EventDetail};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<u16>>);

    impl Durable for Recorder {
        fn append(&self, events: &[Arc<Event>]) {
            let mut seen = self.0.lock().unwrap();
            for e in events {
                if let EventDetail::Egress(d) = &e.detail {
                    seen.push(d.dst_port);
                }
            }
        }
    }

    fn event(port: u16) -> Event {
        Event::daemon(
            "h",
            EventDetail::Egress(EgressDetail::denied([127, 0, 0, 2].into(), port)),
        )
    }

    #[test]
    fn the_durable_sink_gets_everything_in_order_even_when_a_consumer_lags() {
        let bus = EventBus::new();
        let durable = Arc::new(Recorder::default());
        bus.set_durable(Arc::clone(&durable) as Arc<dyn Durable>);
        let mut slow = bus.subscribe();
        let n = CHANNEL + 10;
        bus.publish_all((0..n).map(|i| event(i as u16)).collect());
        assert_eq!(durable.0.lock().unwrap().len(), n);
        assert!(durable
            .0
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .all(|(i, p)| *p == i as u16));
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 10),
            other => panic!("a lagging consumer is told how many it missed: {other:?}"),
        }
        assert_eq!(bus.recent().len(), RECENT);
        assert!(matches!(
            &bus.recent().last().unwrap().detail,
            EventDetail::Egress(d) if d.dst_port == (n - 1) as u16
        ));
    }
}
