//! Sending OTLP requests for one signal, encoded ahead ([`Request`]): over gRPC on tonic's
//! channel ([`grpc`]), or as HTTP/protobuf bodies with reqwest. One attempt per call: the exporter retries from the
//! spool, so a failed request is never retried here as well.

mod grpc;

use std::{collections::BTreeMap, io::Write};

use flate2::{write::GzEncoder, Compression as GzLevel};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, trace::v1::ExportTraceServiceResponse,
};
use prost::Message as _;
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};
use tracing::warn;

use super::{
    config::{Compression, Protocol},
    export::Signal,
    proto::Request,
    TelemetryConfig, TelemetryError,
};

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The gRPC call failed (the collector is down, or refused the request). Said by its
    /// code and cause, not the collector's message, which may echo a request's headers.
    #[error("gRPC export: {}", grpc_reason(.0))]
    Grpc(#[from] tonic::Status),
    /// The HTTP request failed before an answer.
    #[error("HTTP export: {0}")]
    Http(#[from] reqwest::Error),
    /// The collector answered with an error status.
    #[error("HTTP export: the collector answered {0}")]
    Status(reqwest::StatusCode),
    /// The request could not be compressed.
    #[error("compressing the export: {0}")]
    Compress(#[from] std::io::Error),
}

/// How one signal reaches its collector.
pub enum Transport {
    /// OTLP/gRPC.
    Grpc {
        /// The connection, opened on first use and shared by the calls.
        channel: Channel,
        /// Whether requests are gzipped.
        gzip: bool,
        /// Headers sent with every call.
        metadata: MetadataMap,
    },
    /// OTLP/HTTP with protobuf bodies.
    Http {
        /// The client (a connection pool).
        client: reqwest::Client,
        /// The signal's URL.
        url: String,
        /// Whether bodies are gzipped.
        gzip: bool,
        /// Headers sent with every request.
        headers: reqwest::header::HeaderMap,
    },
}

fn grpc_reason(status: &tonic::Status) -> String {
    let mut reason = format!("{:?}", status.code());
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        reason.push_str(&format!(": {c}"));
        cause = c.source();
    }
    reason
}

/// What the exporter calls itself (OTLP exporters should say who they are).
const USER_AGENT: &str = concat!("agentcaged/", env!("CARGO_PKG_VERSION"), " (OTLP, Rust)");

fn bad_header(signal: &str, name: &str) -> TelemetryError {
    TelemetryError::Config(format!(
        "OTLP {signal} header {name:?} is not a valid header name and value"
    ))
}

/// The gRPC metadata of `signal`'s configured headers.
pub(super) fn metadata(
    config: &TelemetryConfig,
    signal: &str,
) -> Result<MetadataMap, TelemetryError> {
    let mut metadata = MetadataMap::new();
    for (k, v) in &config.headers_for(signal) {
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| bad_header(signal, k))?;
        let value = MetadataValue::try_from(v.as_str()).map_err(|_| bad_header(signal, k))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// The gRPC methods of the two signals.
pub(super) const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl Transport {
    /// The transport of `signal` (`logs`, `traces`) as configured. Connects lazily: a
    /// collector that is down at start only delays the export.
    pub fn new(config: &TelemetryConfig, signal: &str) -> Result<Self, TelemetryError> {
        let endpoint = config.endpoint_for(signal)?;
        // Built without TLS (the collector is node-local): an https endpoint could never be
        // reached, so it is refused here rather than retried for ever.
        if !endpoint
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
        {
            return Err(TelemetryError::Config(format!(
                "OTLP {signal} endpoint {endpoint:?}: only http:// endpoints are supported (no TLS)"
            )));
        }
        let gzip = config.compression_for(signal) == Compression::Gzip;
        match config.protocol {
            Protocol::Grpc => {
                let channel = Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| {
                        TelemetryError::Config(format!("OTLP {signal} endpoint {endpoint:?}: {e}"))
                    })?
                    .timeout(config.timeout())
                    .user_agent(USER_AGENT)
                    .map_err(|e| TelemetryError::Config(format!("OTLP {signal} client: {e}")))?
                    .connect_lazy();
                let metadata = metadata(config, signal)?;
                Ok(Self::Grpc {
                    channel,
                    gzip,
                    metadata,
                })
            }
            Protocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(config.timeout())
                    .user_agent(USER_AGENT)
                    .build()
                    .map_err(|e| TelemetryError::Config(format!("OTLP {signal} client: {e}")))?;
                let mut map = reqwest::header::HeaderMap::new();
                for (k, v) in &config.headers_for(signal) {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| bad_header(signal, k))?;
                    let value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|_| bad_header(signal, k))?;
                    map.insert(name, value);
                }
                Ok(Self::Http {
                    client,
                    url: endpoint,
                    gzip,
                    headers: map,
                })
            }
        }
    }

    /// Sends one request of `signal`; Ok once the collector accepted it, perhaps in part
    /// (said in the log).
    pub async fn send(&self, signal: Signal, request: Request) -> Result<(), SendError> {
        let rejected = match signal {
            Signal::Logs => self
                .call::<ExportLogsServiceResponse>(LOGS_EXPORT, request)
                .await?
                .and_then(|a| a.partial_success)
                .map(|p| (p.rejected_log_records, p.error_message)),
            Signal::Traces => self
                .call::<ExportTraceServiceResponse>(TRACES_EXPORT, request)
                .await?
                .and_then(|a| a.partial_success)
                .map(|p| (p.rejected_spans, p.error_message)),
        };
        partly_rejected(signal.reader(), rejected);
        Ok(())
    }

    /// One export call of gRPC method `path` (or a POST), compressed as configured and
    /// carrying the headers; the collector's answer, None when there is none (a trailers-only
    /// gRPC answer, an HTTP body that is not one: an acceptance all the same).
    async fn call<A: prost::Message + Default + Send + 'static>(
        &self,
        path: &'static str,
        request: Request,
    ) -> Result<Option<A>, SendError> {
        let Self::Grpc {
            channel,
            gzip,
            metadata,
        } = self
        else {
            return self.post(&request).await;
        };
        Ok(grpc::unary(channel, path, &request, *gzip, metadata).await?)
    }

    /// POSTs `request`; the collector's answer, None when its body is not one (a 2xx is
    /// an acceptance all the same).
    async fn post<A: prost::Message + Default>(
        &self,
        request: &Request,
    ) -> Result<Option<A>, SendError> {
        let Self::Http {
            client,
            url,
            gzip: gzipped,
            headers,
        } = self
        else {
            unreachable!("only the HTTP transport posts");
        };
        let post = client
            .post(url)
            .headers(headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
        let post = if *gzipped {
            let size = request.encoded_len() / 4;
            post.header(reqwest::header::CONTENT_ENCODING, "gzip")
                .body(gzip(request, Vec::with_capacity(size))?)
        } else {
            post.body(request.encode_to_vec())
        };
        let answer = post.send().await?;
        let status = answer.status();
        if !status.is_success() {
            return Err(SendError::Status(status));
        }
        Ok(A::decode(answer.bytes().await?).ok())
    }
}

/// `request` gzipped onto `out`, part by part. Level 1 ("fast"), where the SDK's exporters
/// use 6 (tonic's is fixed there): a little more to send over loopback for a fraction of the
/// CPU.
pub(super) fn gzip<W: Write>(request: &Request, out: W) -> std::io::Result<W> {
    let mut encoder = GzEncoder::new(out, GzLevel::fast());
    for part in request.parts() {
        encoder.write_all(part)?;
    }
    encoder.finish()
}

/// Says what a collector accepted only in part (OTLP's partial success: not retried, as the
/// specification says, since the same records would be refused again).
fn partly_rejected(signal: &str, rejected: Option<(i64, String)>) {
    if let Some((count, message)) = rejected.filter(|(n, m)| *n > 0 || !m.is_empty()) {
        warn!(
            signal,
            rejected = count,
            message = %message,
            "the collector accepted an export only in part"
        );
    }
}

/// The headers of `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,key2=value2`, values
/// percent-encoded), or None when it is malformed.
pub(super) fn parse_headers(text: &str) -> Option<BTreeMap<String, String>> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let v = percent_encoding::percent_decode_str(v.trim())
                .decode_utf8()
                .ok()?;
            Some((k.trim().to_ascii_lowercase(), v.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_that_needs_tls_is_refused_at_start_not_retried_for_ever() {
        for (protocol, endpoint) in [
            (Protocol::Grpc, "https://collector.internal:4317"),
            (Protocol::HttpProtobuf, "https://collector.internal:4318"),
            (Protocol::Grpc, "collector.internal:4317"),
            (Protocol::Grpc, "h"),
        ] {
            let config = TelemetryConfig {
                endpoint: Some(endpoint.into()),
                protocol,
                ..Default::default()
            };
            let e = Transport::new(&config, "logs").err().expect(endpoint);
            assert!(e.to_string().contains("no TLS"), "{e}");
        }
    }

    #[test]
    fn header_values_are_percent_decoded_and_names_lower_cased() {
        let h = parse_headers("Authorization=Bearer%20a%2Cb, x-t = v ").unwrap();
        assert_eq!(h["authorization"], "Bearer a,b");
        assert_eq!(h["x-t"], "v");
        assert!(parse_headers("novalue").is_none());
    }
}
