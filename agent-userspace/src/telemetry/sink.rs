//! The spool as the bus's durable sink: every published event is appended as part of
//! publishing, in batches (one write per batch), before any live consumer gets it; the
//! decision metrics count it on the way.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::error;

use super::metrics::Instruments;
use crate::{
    events::{Durable, Event},
    spool::{now_unix_nano, Spool},
};

/// Appends to the spool and wakes the exporters.
pub(super) struct SpoolSink {
    pub(super) spool: Arc<Mutex<Spool>>,
    /// The last sequence number written, for the exporters.
    pub(super) written: watch::Sender<u64>,
    pub(super) instruments: Instruments,
    /// Events whose append failed (disk full, I/O error): counted, and recorded as a loss as
    /// soon as the spool takes writes again.
    pub(super) unwritten: Mutex<u64>,
}

impl Durable for SpoolSink {
    fn append(&self, events: &[Arc<Event>]) {
        self.instruments.on_events(events, now_unix_nano());
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        if *unwritten > 0 && s.record_loss(*unwritten, "write_error").is_ok() {
            *unwritten = 0;
        }
        match s.append_events(events) {
            Ok(last) => {
                let _ = self.written.send(last);
            }
            Err(e) => {
                *unwritten += e.count;
                error!(error = %e, unwritten = *unwritten, "telemetry: events could not be written to the spool");
                // What was written before the failure is there to export.
                let _ = self.written.send(s.stats().last_seq);
            }
        }
    }
}
