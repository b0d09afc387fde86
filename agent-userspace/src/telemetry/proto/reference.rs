//! The OTLP messages of a described record built as prost structs: what the exporter sent
//! before it wrote the bytes itself ([`super::encode`]), kept as the reference its bytes are
//! tested against (and these against the SDK's own conversion).

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{any_value, AnyValue, InstrumentationScope},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status},
};

use prost::Message as _;

use super::{attributes, encode::nanos, Envelope, HAS_IS_REMOTE, SAMPLED};
use crate::telemetry::records::Described;

/// The envelope's resource, scope and schema as messages.
pub fn envelope(e: &Envelope) -> (Resource, InstrumentationScope, String) {
    (
        Resource::decode(e.resource.as_slice()).unwrap(),
        InstrumentationScope::decode(e.scope.as_slice()).unwrap(),
        e.schema_url.clone(),
    )
}

/// One logs request of `records`.
pub fn logs(envelope: &Envelope, log_records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    let (resource, scope, schema_url) = self::envelope(envelope);
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope),
                log_records,
                schema_url: String::new(),
            }],
            schema_url,
        }],
    }
}

/// One traces request of `spans`.
pub fn traces(envelope: &Envelope, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let (resource, scope, schema_url) = self::envelope(envelope);
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans,
                schema_url: String::new(),
            }],
            schema_url,
        }],
    }
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
