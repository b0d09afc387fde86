//! The event bus: one producer (the ring-buffer reader), any number of consumers, each with
//! its own cursor; a consumer too slow to keep up is told how many it missed.

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

/// Fan-out of events to consumers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    recent: Arc<Mutex<VecDeque<Arc<Event>>>>,
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
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
        }
    }

    /// Publishes an event to every live consumer and the recent buffer.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(&event));
        }
        // No receiver is fine: nobody is following right now.
        let _ = self.tx.send(event);
    }

    /// A live subscription, starting now.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<Arc<Event>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}
