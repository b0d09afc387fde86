//! The reference messages equal the SDK's own conversion of the same records, field by
//! field, for a record of every kind (the pinned `events.jsonl`), and the bytes written
//! directly equal prost's encoding of those messages.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use opentelemetry::{
    logs::{LogRecord as _, Logger as _, LoggerProvider as _},
    trace::TraceFlags,
    KeyValue,
};
use opentelemetry_proto::{
    tonic::{common::v1::InstrumentationScope as ProtoScope, logs::v1::LogRecord, trace::v1::Span},
    transform::common::tonic::ResourceAttributesWithSchema,
};
use opentelemetry_sdk::{
    logs::{SdkLogRecord, SdkLogger, SdkLoggerProvider},
    Resource,
};

use bytes::Bytes;
use prost::Message as _;

use super::{
    put_log_record, put_span,
    reference::{self, log_record, span},
    Envelope,
};
use crate::{
    events::Event,
    spool::{Entry, Record},
    telemetry::{
        export::scope,
        records::{
            describe,
            sdk::{any_value, span_data},
            Described,
        },
    },
};

/// The SDK log record the exporter used to build for `d`.
fn sdk_log_record(logger: &SdkLogger, d: Described, observed: SystemTime) -> SdkLogRecord {
    let mut r = logger.create_log_record();
    r.set_event_name(d.event_name);
    r.set_timestamp(d.time);
    r.set_observed_timestamp(observed);
    r.set_severity_number(d.severity);
    r.set_severity_text(d.severity.name());
    let span = match &d.span {
        Some(plan) if !plan.root => d.ids.span_id,
        _ => d.ids.root_span_id,
    };
    r.set_trace_context(d.ids.trace_id, span, Some(TraceFlags::SAMPLED));
    r.set_body(d.body.into());
    for kv in d.attributes {
        r.add_attribute(kv.key, any_value(kv.value));
    }
    r
}

fn pinned_records() -> Vec<Record> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/events/testdata/events.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| Record {
            seq: i as u64 + 1,
            entry: Entry::Event(Arc::new(serde_json::from_str::<Event>(line).unwrap())),
        })
        .chain(std::iter::once(Record {
            seq: 1_000,
            entry: Entry::Dropped {
                time_unix_nano: 5,
                count: 3,
                reason: "full".into(),
            },
        }))
        .collect()
}

#[test]
fn log_records_and_spans_equal_the_sdks_conversion_for_every_kind() {
    let provider = SdkLoggerProvider::builder().build();
    let logger = provider.logger_with_scope(scope());
    let observed = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_234_567);
    let records = pinned_records();
    let mut spans = 0;
    for r in &records {
        let sdk = LogRecord::from(&sdk_log_record(&logger, describe(r, "n"), observed));
        let ours = log_record(describe(r, "n"), 1_234_567);
        assert_eq!(ours, sdk, "log record of seq {}", r.seq);

        let sdk = span_data(describe(r, "n"), &scope()).map(Span::from);
        let ours = span(describe(r, "n"));
        assert_eq!(ours, sdk, "span of seq {}", r.seq);
        spans += usize::from(ours.is_some());
    }
    assert!(records.len() > 20, "a record of every kind");
    assert!(
        spans > 5 && spans < records.len(),
        "kinds with and without spans"
    );
}

#[test]
fn the_envelope_is_the_sdks_resource_and_scope() {
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "agentcaged"),
            KeyValue::new("host.name", "h"),
            KeyValue::new("agentcage.spool.readers", 2_i64),
        ])
        .with_schema_url(
            Vec::<KeyValue>::new(),
            "https://opentelemetry.io/schemas/1.30.0",
        )
        .build();
    let sdk = ResourceAttributesWithSchema::from(&resource);
    let (ours, our_scope, schema_url) = reference::envelope(&Envelope::new(&resource));
    assert_eq!(ours.attributes, sdk.attributes.0);
    assert_eq!(Some(schema_url), sdk.schema_url);
    assert_eq!(our_scope, ProtoScope::from((&scope(), None)));
}

fn a_resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([KeyValue::new("service.name", "agentcaged")])
        .with_schema_url(
            Vec::<KeyValue>::new(),
            "https://opentelemetry.io/schemas/1.30.0",
        )
        .build()
}

/// Every record of `described` written as a logs and a traces request.
fn written(envelope: &Envelope, described: &[Described], observed: u64) -> (Vec<u8>, Vec<u8>) {
    let (mut logs, mut spans) = (Vec::new(), Vec::new());
    for d in described {
        put_log_record(d, observed, &mut logs);
        put_span(d, &mut spans);
    }
    (
        envelope.request(Bytes::from(logs)).encode_to_vec(),
        envelope.request(Bytes::from(spans)).encode_to_vec(),
    )
}

/// prost's encoding of the reference messages of `described`.
fn encoded(
    envelope: &Envelope,
    described: impl Fn() -> Vec<Described>,
    observed: u64,
) -> (Vec<u8>, Vec<u8>) {
    let logs = described()
        .into_iter()
        .map(|d| log_record(d, observed))
        .collect();
    let spans = described().into_iter().filter_map(span).collect();
    (
        reference::logs(envelope, logs).encode_to_vec(),
        reference::traces(envelope, spans).encode_to_vec(),
    )
}

#[test]
fn the_bytes_written_are_prosts_encoding_of_the_messages_for_every_kind() {
    let envelope = Envelope::new(&a_resource());
    let records = pinned_records();
    let described = || records.iter().map(|r| describe(r, "n")).collect::<Vec<_>>();
    assert_eq!(
        written(&envelope, &described(), 1_234_567),
        encoded(&envelope, described, 1_234_567)
    );
    for r in &records {
        let one = || vec![describe(r, "n")];
        assert_eq!(
            written(&envelope, &one(), 0),
            encoded(&envelope, one, 0),
            "seq {}",
            r.seq
        );
    }
    // No schema: the field is left out.
    let bare = Envelope::new(&Resource::builder_empty().build());
    assert_eq!(
        written(&bare, &described(), 9),
        encoded(&bare, described, 9)
    );
}

/// A description with every kind of value, edge lengths and defaults, as a root span
/// (`root`) or a failed child.
fn unusual(root: bool) -> Described {
    use opentelemetry::{logs::Severity, Array, StringValue, Value};

    use crate::telemetry::records::{session_ids, Ids, SpanPlan};
    let (trace_id, root_span_id) = session_ids("n", None, 7);
    let long = "x".repeat(300);
    let attributes = vec![
        KeyValue::new("b", true),
        KeyValue::new("f", false),
        KeyValue::new("neg", -5_i64),
        KeyValue::new("zero", 0_i64),
        KeyValue::new("big", i64::MAX),
        KeyValue::new("pi", 3.25_f64),
        KeyValue::new("empty", ""),
        KeyValue::new("long", long.clone()),
        KeyValue::new(
            "args",
            Value::Array(Array::String(vec![
                StringValue::from(""),
                StringValue::from(long.clone()),
            ])),
        ),
        KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
        KeyValue::new("bools", Value::Array(Array::Bool(vec![true]))),
        KeyValue::new("", "no key"),
    ];
    Described {
        event_name: "",
        severity: Severity::Error,
        body: String::new(),
        time: SystemTime::UNIX_EPOCH,
        attributes: attributes.clone(),
        span: Some(SpanPlan {
            name: if root { String::new() } else { long.clone() },
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1),
            root,
            error: (!root).then(|| long.clone()),
            attributes,
        }),
        ids: Ids {
            trace_id,
            root_span_id,
            span_id: root_span_id,
        },
    }
}

#[test]
fn the_bytes_written_are_prosts_encoding_for_every_value_type_and_edge_length() {
    let envelope = Envelope::new(&a_resource());
    for root in [true, false] {
        let described = || vec![unusual(root), unusual(!root)];
        assert_eq!(
            written(&envelope, &described(), u64::MAX),
            encoded(&envelope, described, u64::MAX),
            "root {root}"
        );
    }
}
