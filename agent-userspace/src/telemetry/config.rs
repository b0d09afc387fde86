//! The `telemetry:` section of the daemon's configuration file, with the OpenTelemetry
//! environment variables (`OTEL_EXPORTER_OTLP_*` including `_COMPRESSION`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_*HEADERS`, `OTEL_METRIC_EXPORT_INTERVAL`) applied
//! over it.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::TelemetryError;

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(s: &str) -> Result<Self, TelemetryError> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(TelemetryError::Config(format!(
                "OTLP protocol {other:?} is not supported: use grpc or http/protobuf"
            ))),
        }
    }
}

/// How export requests are compressed.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Sent as they are.
    None,
    /// gzip, which OTLP receivers accept (the OpenTelemetry Collector, Rotel): a fraction of
    /// the bytes for a little CPU.
    #[default]
    Gzip,
}

impl Compression {
    fn parse(s: &str) -> Result<Self, TelemetryError> {
        match s {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            other => Err(TelemetryError::Config(format!(
                "OTLP compression {other:?} is not supported: use gzip or none"
            ))),
        }
    }
}

/// Where and how telemetry is exported.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export at all. Without an endpoint (here or in `OTEL_EXPORTER_OTLP_ENDPOINT`) nothing is
    /// exported and nothing is spooled.
    pub enabled: bool,
    /// The collector's base endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: Option<String>,
    /// Per-signal endpoints, used as given (`logs`, `traces`, `metrics`).
    pub signal_endpoints: BTreeMap<String, String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Protocol,
    /// `gzip` or `none`.
    pub compression: Compression,
    /// How long one export may take before it is retried, in milliseconds.
    pub timeout_ms: u64,
    /// Metric export period, in milliseconds.
    pub metrics_interval_ms: u64,
    /// At most this many records per export (and at most 3 MiB a request: a batch of large
    /// records is sent in several).
    pub batch_size: usize,
    /// The longest pause between retries while the collector is unreachable, in milliseconds.
    pub retry_max_ms: u64,
    /// `service.name`.
    pub service_name: String,
    /// The node's identity (defaults to the host name).
    pub node_id: Option<String>,
    /// The identity certificate's id, when agents' credentials are issued (issue 4).
    pub certificate_id: Option<String>,
    /// More resource attributes.
    pub resource_attributes: BTreeMap<String, String>,
    /// Headers sent with every export (an authorization token, a tenant), to which
    /// `OTEL_EXPORTER_OTLP_HEADERS` adds.
    pub headers: BTreeMap<String, String>,
    /// Per-signal headers, from `OTEL_EXPORTER_OTLP_{LOGS,TRACES,METRICS}_HEADERS`.
    #[serde(skip)]
    pub signal_headers: BTreeMap<String, BTreeMap<String, String>>,
    /// Per-signal compression, from `OTEL_EXPORTER_OTLP_{LOGS,TRACES,METRICS}_COMPRESSION`.
    #[serde(skip)]
    pub signal_compression: BTreeMap<String, Compression>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: None,
            signal_endpoints: BTreeMap::new(),
            protocol: Protocol::Grpc,
            compression: Compression::Gzip,
            timeout_ms: 10_000,
            metrics_interval_ms: 10_000,
            batch_size: 1024,
            retry_max_ms: 5_000,
            service_name: "agentcaged".into(),
            node_id: None,
            certificate_id: None,
            resource_attributes: BTreeMap::new(),
            headers: BTreeMap::new(),
            signal_headers: BTreeMap::new(),
            signal_compression: BTreeMap::new(),
        }
    }
}

/// The signals, as named in endpoints and spool readers.
pub const SIGNALS: [&str; 3] = ["logs", "traces", "metrics"];

impl TelemetryConfig {
    /// Applies the OpenTelemetry environment variables found by `env` (they override the file).
    pub fn apply_env(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), TelemetryError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("OTEL_SDK_DISABLED") {
            if v.trim().eq_ignore_ascii_case("true") {
                self.enabled = false;
            }
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.endpoint = Some(v);
        }
        // The value is not in the error: it usually holds a token.
        let headers = |var: &str| match get(var) {
            None => Ok(None),
            Some(v) => super::transport::parse_headers(&v)
                .map(Some)
                .ok_or_else(|| {
                    TelemetryError::Config(format!(
                        "{var} is not key=value pairs separated by commas (values percent-encoded)"
                    ))
                }),
        };
        if let Some(h) = headers("OTEL_EXPORTER_OTLP_HEADERS")? {
            // The file's names in lower case first, so the variable's replace them.
            self.headers = std::mem::take(&mut self.headers)
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            self.headers.extend(h);
        }
        for signal in SIGNALS {
            let upper = signal.to_uppercase();
            if let Some(v) = get(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")) {
                self.signal_endpoints.insert(signal.to_owned(), v);
            }
            if let Some(h) = headers(&format!("OTEL_EXPORTER_OTLP_{upper}_HEADERS"))? {
                self.signal_headers.insert(signal.to_owned(), h);
            }
            if let Some(v) = get(&format!("OTEL_EXPORTER_OTLP_{upper}_COMPRESSION")) {
                self.signal_compression
                    .insert(signal.to_owned(), Compression::parse(v.trim())?);
            }
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_PROTOCOL") {
            self.protocol = Protocol::parse(v.trim())?;
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_COMPRESSION") {
            self.compression = Compression::parse(v.trim())?;
        }
        if let Some(v) = get("OTEL_EXPORTER_OTLP_TIMEOUT") {
            self.timeout_ms = parse_ms("OTEL_EXPORTER_OTLP_TIMEOUT", &v)?;
        }
        if let Some(v) = get("OTEL_METRIC_EXPORT_INTERVAL") {
            self.metrics_interval_ms = parse_ms("OTEL_METRIC_EXPORT_INTERVAL", &v)?;
        }
        if let Some(v) = get("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, val) = pair.split_once('=').ok_or_else(|| {
                    TelemetryError::Config(format!(
                        "OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"
                    ))
                })?;
                self.resource_attributes
                    .insert(k.trim().to_owned(), val.trim().to_owned());
            }
        }
        Ok(())
    }

    /// Whether anything is to be exported.
    pub fn active(&self) -> bool {
        self.enabled && (self.endpoint.is_some() || !self.signal_endpoints.is_empty())
    }

    /// The endpoint for `signal`: a per-signal one as given; else the base endpoint, with the
    /// signal's path for HTTP (`/v1/logs`), as the OTLP exporter specification says.
    pub fn endpoint_for(&self, signal: &str) -> Result<String, TelemetryError> {
        if let Some(e) = self.signal_endpoints.get(signal) {
            return Ok(e.clone());
        }
        let base = self
            .endpoint
            .clone()
            .ok_or_else(|| TelemetryError::Config(format!("no OTLP endpoint for {signal}")))?;
        Ok(match self.protocol {
            Protocol::Grpc => base,
            Protocol::HttpProtobuf => format!("{}/v1/{signal}", base.trim_end_matches('/')),
        })
    }

    /// The headers of `signal`'s exports: the common ones, then the signal's own over them;
    /// names in lower case (HTTP's are case-insensitive, gRPC's lower case), empty values
    /// left out.
    pub fn headers_for(&self, signal: &str) -> BTreeMap<String, String> {
        self.headers
            .iter()
            .chain(self.signal_headers.get(signal).into_iter().flatten())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    }

    /// How `signal`'s exports are compressed.
    pub fn compression_for(&self, signal: &str) -> Compression {
        self.signal_compression
            .get(signal)
            .copied()
            .unwrap_or(self.compression)
    }

    /// [`Self::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

fn parse_ms(var: &str, v: &str) -> Result<u64, TelemetryError> {
    v.trim().parse().map_err(|_| {
        TelemetryError::Config(format!("{var}: {v:?} is not a number of milliseconds"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = TelemetryConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            headers: [("AUTHORIZATION".to_owned(), "from the file".to_owned())].into(),
            ..Default::default()
        };
        c.apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/t"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test, team=sec",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "250"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Bearer%20t0k,x-tenant=a",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "X-Tenant=b,x-empty="),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
        ]))
        .unwrap();
        assert_eq!(c.compression_for("logs"), Compression::Gzip);
        assert_eq!(c.compression_for("traces"), Compression::None);
        assert!(!c.headers_for("traces").contains_key("x-empty"));
        assert_eq!(c.headers_for("logs")["authorization"], "Bearer t0k");
        assert_eq!(c.headers_for("logs")["x-tenant"], "a");
        assert_eq!(c.headers_for("traces")["x-tenant"], "b");
        assert_eq!(c.compression, Compression::None);
        assert!(c.active());
        assert_eq!(
            c.endpoint_for("logs").unwrap(),
            "http://127.0.0.1:4318/v1/logs"
        );
        assert_eq!(c.endpoint_for("traces").unwrap(), "http://127.0.0.1:9/t");
        assert_eq!(c.timeout(), Duration::from_millis(250));
        assert_eq!(c.resource_attributes["team"], "sec");
        c.apply_env(env(&[("OTEL_SDK_DISABLED", "true")])).unwrap();
        assert!(!c.active());
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = TelemetryConfig::default();
        let e = c
            .apply_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .unwrap_err();
        assert!(e.to_string().contains("\"http/json\""), "{e}");
        let e = c
            .apply_env(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]))
            .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT"), "{e}");
        let e = c
            .apply_env(env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]))
            .unwrap_err();
        assert!(e.to_string().contains("\"zstd\""), "{e}");
        let e = c
            .apply_env(env(&[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization Bearer s3cret",
            )]))
            .unwrap_err();
        assert!(
            !e.to_string().contains("s3cret"),
            "no token in the error: {e}"
        );
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
        assert!(
            !TelemetryConfig::default().active(),
            "no endpoint, no export"
        );
    }
}
