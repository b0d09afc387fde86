//! OpenTelemetry export: every event published on the bus is appended to the durable
//! [`crate::spool`] as part of publishing (the bus's durable sink, `sink`), and exported from
//! there as OTLP log records and spans by one task per signal; metrics go through the SDK's
//! periodic reader (they are cumulative, so a collector that was away gets the totals when it
//! is back).
//!
//! Nothing here is in the path of enforcement: the sink only appends to a local file (a slow
//! disk slows the event reader, and the kernel counts what its ring could not hold), and a
//! dead or slow collector only makes the spool grow up to its bound.

mod config;
mod export;
pub mod metrics;
mod proto;
pub mod records;
pub mod resource;
pub mod semconv;
mod sink;
mod transport;

pub use config::{Compression, Protocol, TelemetryConfig};
pub use resource::Identity;

use std::sync::{Arc, Mutex};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{MetricExporter, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    metrics::{periodic_reader_with_async_runtime::PeriodicReader, SdkMeterProvider},
    runtime,
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::info;

use crate::{
    events::EventBus,
    spool::{Spool, SpoolConfig, SpoolError},
};
use export::{Exporter, Shared, Signal, Sink};
use metrics::{Instruments, Observed};
use sink::SpoolSink;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The configuration (file or environment) is not usable.
    #[error("telemetry configuration: {0}")]
    Config(String),
    /// An OTLP exporter could not be built.
    #[error("OTLP {signal} exporter: {source}")]
    Exporter {
        /// `logs`, `traces` or `metrics`.
        signal: &'static str,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// The spool readers, one per exported signal.
const READERS: [&str; 2] = ["logs", "traces"];

/// The running telemetry tasks.
pub struct Telemetry {
    exporters: Vec<JoinHandle<()>>,
    meters: SdkMeterProvider,
    /// The instruments, for producers of application events (issue 4).
    pub instruments: Instruments,
}

impl Telemetry {
    /// Opens the spool, makes it `bus`'s durable sink (so call it before events are
    /// published) and starts the exporters and the metrics.
    pub fn start(
        config: &TelemetryConfig,
        spool: &SpoolConfig,
        bus: &EventBus,
        identity: &Identity,
        kernel_lost: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Self, TelemetryError> {
        let resource = resource::build(config, identity);
        let node = resource::node_id(config);
        let spool = Arc::new(Mutex::new(Spool::open(spool, &READERS)?));
        let logs = Sink::new(Signal::Logs, config, &resource)?;
        let traces = Sink::new(Signal::Traces, config, &resource)?;

        let metrics_endpoint = config.endpoint_for("metrics")?;
        let metric_exporter = match config.protocol {
            Protocol::Grpc => export::grpc(
                MetricExporter::builder().with_tonic(),
                config,
                metrics_endpoint,
            )
            .with_metadata(transport::metadata(config, "metrics")?)
            .build(),
            Protocol::HttpProtobuf => export::http(
                MetricExporter::builder().with_http(),
                config,
                metrics_endpoint,
            )
            // The SDK decodes these values once more: a literal % is passed as %25.
            .with_headers(
                config
                    .headers_for("metrics")
                    .into_iter()
                    .map(|(k, v)| (k, v.replace('%', "%25")))
                    .collect(),
            )
            .build(),
        }
        .map_err(|source| TelemetryError::Exporter {
            signal: "metrics",
            source,
        })?;
        let reader = PeriodicReader::builder(metric_exporter, runtime::Tokio)
            .with_interval(std::time::Duration::from_millis(config.metrics_interval_ms))
            .build();
        let meters = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        let observed_spool = Arc::clone(&spool);
        let instruments = Instruments::new(
            &meters.meter(semconv::SCOPE),
            Observed {
                kernel_lost,
                spool: Arc::new(move || {
                    let s = observed_spool.lock().unwrap_or_else(|p| p.into_inner());
                    let stats = s.stats();
                    let backlog = READERS
                        .iter()
                        .map(|r| (*r, stats.last_seq.saturating_sub(s.cursor(r).unwrap_or(0))))
                        .collect();
                    metrics::SpoolGauges {
                        bytes: stats.bytes,
                        dropped: stats.dropped,
                        backlog,
                    }
                }),
            },
        );

        let last = spool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats()
            .last_seq;
        let (written, written_rx) = watch::channel(last);
        bus.set_durable(Arc::new(SpoolSink {
            spool: Arc::clone(&spool),
            written,
            instruments: instruments.clone(),
            unwritten: Mutex::new(0),
        }));
        let shared = Arc::new(Shared::default());
        let exporters = [logs, traces]
            .into_iter()
            .map(|sink| {
                tokio::spawn(
                    Exporter {
                        sink,
                        spool: Arc::clone(&spool),
                        written: written_rx.clone(),
                        node: node.clone(),
                        batch_size: config.batch_size.max(1),
                        shared: Arc::clone(&shared),
                        unencodable_counted: Default::default(),
                        retry_max: std::time::Duration::from_millis(config.retry_max_ms.max(1)),
                        timeout: config.timeout(),
                    }
                    .run(),
                )
            })
            .collect();
        info!(
            logs = %config.endpoint_for("logs")?,
            protocol = ?config.protocol,
            node = %node,
            "telemetry: exporting events over OTLP from the spool"
        );
        Ok(Self {
            exporters,
            meters,
            instruments,
        })
    }

    /// Stops exporting; what was not exported yet is exported by the next daemon, from the
    /// spool (every published event is already in it).
    pub async fn shutdown(self) {
        for e in &self.exporters {
            e.abort();
        }
        for e in self.exporters {
            let _ = e.await;
        }
        // A last metrics export, bounded: a dead collector must not hold the stop up.
        let meters = self.meters;
        let _ = tokio::task::spawn_blocking(move || {
            meters.shutdown_with_timeout(std::time::Duration::from_secs(1))
        })
        .await;
    }
}
