//! The SDK's path from a described record to an exported one, kept as the reference the
//! direct messages (`telemetry::proto`) are tested against.

use std::borrow::Cow;

use opentelemetry::{
    logs::AnyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState},
    InstrumentationScope, Value,
};

use super::Described;

/// The log attribute value of a span attribute value (the SDK's path, kept as the
/// reference the direct messages are tested against).
pub fn any_value(v: Value) -> AnyValue {
    match v {
        Value::Bool(b) => AnyValue::Boolean(b),
        Value::I64(i) => AnyValue::Int(i),
        Value::F64(f) => AnyValue::Double(f),
        Value::String(s) => AnyValue::String(s),
        // A list stays a list (`process.command_args`), as in the span.
        Value::Array(opentelemetry::Array::String(items)) => {
            AnyValue::ListAny(Box::new(items.into_iter().map(AnyValue::String).collect()))
        }
        other => AnyValue::String(other.as_str().into_owned().into()),
    }
}

/// The SDK span of a described record (its attributes, then the span's own): the SDK's path,
/// kept as the reference the direct messages are tested against.
pub fn span_data(
    d: Described,
    scope: &InstrumentationScope,
) -> Option<opentelemetry_sdk::trace::SpanData> {
    let plan = d.span?;
    let span_id = if plan.root {
        d.ids.root_span_id
    } else {
        d.ids.span_id
    };
    let mut attributes = d.attributes;
    attributes.extend(plan.attributes);
    Some(opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            d.ids.trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: if plan.root {
            SpanId::INVALID
        } else {
            d.ids.root_span_id
        },
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Owned(plan.name),
        start_time: plan.start,
        end_time: plan.end,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: match plan.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    })
}
