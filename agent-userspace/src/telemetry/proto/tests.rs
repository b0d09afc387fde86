//! The messages built here equal the SDK's own conversion of the same records, field by
//! field, for a record of every kind (the pinned `events.jsonl`).

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

use super::{log_record, span, Envelope};
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
    let request = Envelope::new(&resource).logs(Vec::new());
    let logs = &request.resource_logs[0];
    assert_eq!(logs.resource.as_ref().unwrap().attributes, sdk.attributes.0);
    assert_eq!(Some(logs.schema_url.clone()), sdk.schema_url);
    assert_eq!(
        logs.scope_logs[0].scope,
        Some(ProtoScope::from((&scope(), None)))
    );
    let traces = Envelope::new(&resource).traces(Vec::new());
    assert_eq!(traces.resource_spans[0].resource, logs.resource);
    assert_eq!(
        traces.resource_spans[0].scope_spans[0].scope,
        logs.scope_logs[0].scope
    );
}
