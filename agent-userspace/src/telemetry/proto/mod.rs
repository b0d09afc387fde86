//! Described records as OTLP protobuf messages, built directly: the SDK's path (an
//! `SdkLogRecord` or `SpanData` per record, then its per-batch grouping by resource and scope,
//! which builds and hashes a scope per record, then a copy of every attribute) took about
//! half of the export's CPU for records that all share one resource and one scope.
//!
//! The messages are those the SDK's exporters send (a test checks each field against the
//! SDK's own conversion), so collectors see no difference.

use opentelemetry::Value;
use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status},
};
use opentelemetry_sdk::Resource as SdkResource;

use super::records::Described;

/// `TraceFlags::SAMPLED`: every exported record is.
const SAMPLED: u32 = 1;
/// OTLP's `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: the parent is known to be local.
const HAS_IS_REMOTE: u32 = 0x100;

/// What every request carries once: the resource and the instrumentation scope, converted
/// when the exporter starts rather than per batch.
#[derive(Clone, Debug)]
pub struct Envelope {
    resource: Resource,
    schema_url: String,
    scope: InstrumentationScope,
}

impl Envelope {
    /// The envelope of `resource` and the daemon's scope.
    pub fn new(resource: &SdkResource) -> Self {
        let scope = super::export::scope();
        Self {
            resource: Resource {
                attributes: resource
                    .iter()
                    .map(|(k, v)| key_value(k.as_str().to_owned(), value(v.clone())))
                    .collect(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            },
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
            scope: InstrumentationScope {
                name: scope.name().to_owned(),
                version: scope.version().unwrap_or_default().to_owned(),
                ..Default::default()
            },
        }
    }

    /// One logs request of `records`.
    pub fn logs(&self, log_records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(self.scope.clone()),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: self.schema_url.clone(),
            }],
        }
    }

    /// One traces request of `spans`.
    pub fn traces(&self, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: self.schema_url.clone(),
            }],
        }
    }
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn key_value(key: String, value: AnyValue) -> KeyValue {
    KeyValue {
        key,
        value: Some(value),
        key_strindex: 0,
    }
}

/// An attribute value, its string moved rather than copied.
fn value(v: Value) -> AnyValue {
    use any_value::Value as V;
    let v = match v {
        Value::Bool(b) => V::BoolValue(b),
        Value::I64(i) => V::IntValue(i),
        Value::F64(f) => V::DoubleValue(f),
        Value::String(s) => V::StringValue(s.into()),
        Value::Array(opentelemetry::Array::String(items)) => V::ArrayValue(ArrayValue {
            values: items
                .into_iter()
                .map(|s| AnyValue {
                    value: Some(V::StringValue(s.into())),
                })
                .collect(),
        }),
        // No record has other arrays; the SDK's conversion for the rare case.
        other => return other.into(),
    };
    AnyValue { value: Some(v) }
}

fn attributes(kvs: Vec<opentelemetry::KeyValue>) -> Vec<KeyValue> {
    kvs.into_iter()
        .map(|kv| key_value(kv.key.as_str().to_owned(), value(kv.value)))
        .collect()
}

/// The log record of `d`, observed at `observed` (Unix nanoseconds).
pub fn log_record(d: Described, observed: u64) -> LogRecord {
    // Correlation: the record's own span when it has one, else the session's root span.
    let span = match &d.span {
        Some(plan) if !plan.root => d.ids.span_id,
        _ => d.ids.root_span_id,
    };
    LogRecord {
        time_unix_nano: nanos(d.time),
        observed_time_unix_nano: observed,
        severity_number: d.severity as i32,
        severity_text: d.severity.name().to_owned(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(d.body)),
        }),
        attributes: attributes(d.attributes),
        dropped_attributes_count: 0,
        flags: SAMPLED,
        trace_id: d.ids.trace_id.to_bytes().to_vec(),
        span_id: span.to_bytes().to_vec(),
        event_name: d.event_name.to_owned(),
    }
}

/// The span of `d`, for kinds that have one: the record's attributes, then the span's own.
pub fn span(d: Described) -> Option<Span> {
    let plan = d.span?;
    let (span_id, parent) = if plan.root {
        (d.ids.root_span_id, Vec::new())
    } else {
        (d.ids.span_id, d.ids.root_span_id.to_bytes().to_vec())
    };
    let mut attrs = attributes(d.attributes);
    attrs.extend(attributes(plan.attributes));
    Some(Span {
        trace_id: d.ids.trace_id.to_bytes().to_vec(),
        span_id: span_id.to_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: parent,
        flags: SAMPLED | HAS_IS_REMOTE,
        name: plan.name,
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: nanos(plan.start),
        end_time_unix_nano: nanos(plan.end),
        attributes: attrs,
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(match plan.error {
            Some(message) => Status {
                message,
                code: StatusCode::Error as i32,
            },
            None => Status {
                message: String::new(),
                code: StatusCode::Unset as i32,
            },
        }),
    })
}

#[cfg(test)]
mod tests;
