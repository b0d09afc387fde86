//! The exporters: one task per signal reads the spool from its own cursor, sends a batch, and
//! advances the cursor only once the collector acknowledged it. While the collector is down
//! the same batch is retried with a growing pause; nothing else waits on it. A batch is
//! described and encoded once for both signals ([`shared`]).

mod shared;

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::{stream::FuturesOrdered, StreamExt as _};
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    config::Compression,
    proto::{self, Envelope},
    records::describe,
    transport::{SendError, Transport},
    TelemetryConfig, TelemetryError,
};
use crate::spool::{now_unix_nano, Record, Spool};
pub use shared::Shared;
use shared::{Encoded, Range, Written};

/// The signals exported from the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Log records: one per spooled record.
    Logs,
    /// Spans: one per record of a kind that has one.
    Traces,
}

/// Where one signal goes.
pub struct Sink {
    signal: Signal,
    transport: Transport,
    envelope: Envelope,
}

impl Sink {
    /// The sink of `signal` as configured.
    pub fn new(
        signal: Signal,
        config: &TelemetryConfig,
        resource: &Resource,
    ) -> Result<Self, TelemetryError> {
        Ok(Self {
            signal,
            transport: Transport::new(config, signal.reader())?,
            envelope: Envelope::new(resource),
        })
    }

    /// The spool reader name of this signal.
    pub fn reader(&self) -> &'static str {
        self.signal.reader()
    }

    /// Sends this signal's part of one batch, in requests of at most [`MAX_REQUEST`] bytes;
    /// Ok means the collector accepted all of it (perhaps in part: said in the log, and not
    /// sent again, as OTLP asks). After a failure the whole batch is sent again.
    async fn send(&self, batch: &Encoded) -> Result<(), SendError> {
        for records in batch.of(self.signal).requests(MAX_REQUEST) {
            let request = self.envelope.request(records);
            self.transport.send(self.signal, request).await?;
        }
        Ok(())
    }
}

impl Signal {
    /// Its place among the signals.
    fn index(self) -> usize {
        match self {
            Self::Logs => 0,
            Self::Traces => 1,
        }
    }

    /// The spool reader (and endpoint) name of this signal.
    pub fn reader(self) -> &'static str {
        match self {
            Self::Logs => "logs",
            Self::Traces => "traces",
        }
    }
}

/// The metrics exporter's gRPC builder with the configuration's endpoint, timeout and
/// compression.
pub(super) fn grpc<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    config: &TelemetryConfig,
    endpoint: String,
) -> B {
    let b = builder
        .with_endpoint(endpoint)
        .with_timeout(config.timeout());
    match config.compression_for("metrics") {
        Compression::Gzip => b.with_compression(opentelemetry_otlp::Compression::Gzip),
        Compression::None => b,
    }
}

/// The metrics exporter's HTTP/protobuf builder with the configuration's endpoint, timeout
/// and compression.
pub(super) fn http<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    config: &TelemetryConfig,
    endpoint: String,
) -> B {
    let b = builder
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(config.timeout());
    match config.compression_for("metrics") {
        Compression::Gzip => b.with_compression(opentelemetry_otlp::Compression::Gzip),
        Compression::None => b,
    }
}

/// The instrumentation scope of every record.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(super::semconv::SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Batches a signal has sent and not yet seen answered, at most.
const IN_FLIGHT: usize = 4;

/// The records of one request, at most, in bytes: collectors refuse gRPC messages over
/// 4 MiB by default (the OpenTelemetry Collector, Rotel), and a refused batch would be
/// retried for ever.
const MAX_REQUEST: usize = 3 << 20;

/// What an exporter task needs.
pub struct Exporter {
    /// Where it sends.
    pub sink: Sink,
    /// Where it reads.
    pub spool: Arc<Mutex<Spool>>,
    /// The last sequence number written, bumped by the spool writer.
    pub written: watch::Receiver<u64>,
    /// The node identity (part of every id).
    pub node: String,
    /// Records per export.
    pub batch_size: usize,
    /// Batches encoded by either signal's exporter for the other.
    pub shared: Arc<Shared>,
    /// Records that could not be encoded are counted up to this sequence number.
    pub unencodable_counted: AtomicU64,
    /// Longest pause between retries.
    pub retry_max: Duration,
    /// Longest wait for one export.
    pub timeout: Duration,
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|p| p.into_inner())
}

impl Exporter {
    /// The batch encoded for both signals: by the other signal's exporter if it was first,
    /// else here (and kept for it). A record that cannot be described (its description
    /// panics: a value out of range, spooled by an older daemon) is left out and counted in
    /// the spool's `dropped` (once, by the logs exporter), never retried: it would stop the
    /// export at that record for good, after every restart too.
    async fn encoded(&self, batch: &[Record], range: Range) -> Arc<Encoded> {
        let signal = self.sink.signal;
        let encoded = match self.shared.take(signal, range) {
            Some(e) => e,
            None => {
                let e = Arc::new(encode(batch, &self.node));
                self.shared.offer(signal, range, Arc::clone(&e));
                e
            }
        };
        if signal == Signal::Logs {
            // Counted once: after a failed export a batch is read, and encoded, again.
            let counted = self
                .unencodable_counted
                .fetch_max(range.1, Ordering::Relaxed);
            let unencodable = encoded.unencodable.iter().filter(|s| **s > counted).count();
            if unencodable > 0 {
                let spool = Arc::clone(&self.spool);
                let recorded = tokio::task::spawn_blocking(move || {
                    lock(&spool).record_loss(unencodable as u64, "unencodable")
                })
                .await;
                if let Ok(Err(e)) = recorded {
                    warn!(error = %e, "counting unencodable events in the spool failed");
                }
            }
        }
        encoded
    }

    /// Moves `reader`'s cursor past `last`.
    async fn ack(&self, reader: &'static str, last: u64) {
        let spool = Arc::clone(&self.spool);
        let acked = tokio::task::spawn_blocking(move || lock(&spool).ack(reader, last)).await;
        if let Ok(Err(e)) = acked {
            warn!(signal = reader, error = %e, "recording the export in the spool failed");
        }
    }

    /// Reads the batch after `after` (and the cursor); None when the spool failed (said).
    async fn read(&self, reader: &'static str, after: u64) -> Result<Option<Vec<Record>>, ()> {
        let spool = Arc::clone(&self.spool);
        let max = self.batch_size;
        match tokio::task::spawn_blocking(move || lock(&spool).read_after(reader, after, max)).await
        {
            Ok(Ok(b)) => Ok(Some(b)),
            Ok(Err(e)) => {
                warn!(signal = reader, error = %e, "reading the spool failed; retrying");
                Ok(None)
            }
            Err(_) => Err(()),
        }
    }

    /// Runs until aborted. Up to [`IN_FLIGHT`] batches are sent at once (one round trip to
    /// the collector per batch, one after the other, left it idle most of the time), and
    /// acknowledged in order: the cursor passes a batch only once it and every batch before
    /// it were accepted. A failure drops what is in flight; all of it is read again from the
    /// cursor (at-least-once).
    pub async fn run(mut self) {
        let reader = self.sink.reader();
        let mut failing_since: Option<std::time::Instant> = None;
        let mut pause = Duration::from_millis(100);
        let mut inflight = FuturesOrdered::new();
        // The last sequence number read and sent (or being sent); 0: from the cursor.
        let mut read_to = 0;
        loop {
            let mut read_failed = false;
            while inflight.len() < IN_FLIGHT {
                // Marks what this read sees; a write after it wakes the wait below.
                self.written.borrow_and_update();
                let batch = match self.read(reader, read_to).await {
                    Ok(Some(b)) => b,
                    Ok(None) => {
                        read_failed = true;
                        break;
                    }
                    Err(()) => return,
                };
                let Some(last) = batch.last().map(|r| r.seq) else {
                    break;
                };
                let encoded = self.encoded(&batch, (batch[0].seq, last)).await;
                read_to = last;
                let (sink, timeout) = (&self.sink, self.timeout);
                inflight.push_back(async move {
                    // Nothing to send (no record of a kind with a span, or none encodable):
                    // acknowledged as is, so it is never read again.
                    let result = tokio::time::timeout(timeout, sink.send(&encoded)).await;
                    (last, result)
                });
            }
            let Some((last, result)) = inflight.next().await else {
                if read_failed {
                    tokio::time::sleep(self.retry_max).await;
                } else if self.written.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match result {
                Ok(Ok(())) => {
                    if let Some(since) = failing_since.take() {
                        info!(
                            signal = reader,
                            down_for_ms = since.elapsed().as_millis() as u64,
                            "collector reachable again; export resumed from the spool"
                        );
                    }
                    pause = Duration::from_millis(100);
                    self.ack(reader, last).await;
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    if failing_since.is_none() {
                        failing_since = Some(std::time::Instant::now());
                        warn!(
                            signal = reader,
                            %error,
                            "collector unreachable; events stay in the spool and are retried"
                        );
                    }
                    // What was sent after the failed batch is sent again, from the cursor.
                    inflight.clear();
                    read_to = 0;
                    // Backoff while the collector is down (not a synchronisation).
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.retry_max);
                }
            }
        }
    }
}

/// Bytes per record of the last batch encoded, of log records and of spans.
static LOG_BYTES: AtomicUsize = AtomicUsize::new(1536);
static SPAN_BYTES: AtomicUsize = AtomicUsize::new(1536);

/// Describes and writes every record of `batch` for both signals; see [`Exporter::encoded`].
fn encode(batch: &[Record], node: &str) -> Encoded {
    let observed = now_unix_nano();
    // Sized from the last batch's bytes per record: one allocation each, rather than a
    // doubling series, and little to spare (a cached batch holds its buffers' capacity).
    let estimate = |per: &AtomicUsize| batch.len() * per.load(Ordering::Relaxed) * 9 / 8;
    let (mut logs, mut spans) = (
        Vec::with_capacity(estimate(&LOG_BYTES)),
        Vec::with_capacity(estimate(&SPAN_BYTES)),
    );
    let (mut log_ends, mut span_ends) = (Vec::with_capacity(batch.len()), Vec::new());
    let mut unencodable = Vec::new();
    for r in batch {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| describe(r, node))) {
            Ok(d) => {
                proto::put_log_record(&d, observed, &mut logs);
                log_ends.push(logs.len());
                if proto::put_span(&d, &mut spans) {
                    span_ends.push(spans.len());
                }
            }
            Err(_) => {
                unencodable.push(r.seq);
                warn!(
                    seq = r.seq,
                    "a spooled event cannot be encoded for export: dropped and counted"
                );
            }
        }
    }
    if !batch.is_empty() {
        LOG_BYTES.store(logs.len().div_ceil(batch.len()).max(1), Ordering::Relaxed);
        SPAN_BYTES.store(spans.len().div_ceil(batch.len()).max(1), Ordering::Relaxed);
    }
    Encoded {
        logs: Written {
            bytes: logs.into(),
            ends: log_ends,
        },
        spans: Written {
            bytes: spans.into(),
            ends: span_ends,
        },
        unencodable,
    }
}
