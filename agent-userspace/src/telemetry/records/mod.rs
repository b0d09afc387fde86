//! What each spool entry becomes in OTLP: a log record (event name, severity, body,
//! attributes) and, for some kinds, a span. One small function per event kind; a new kind
//! needs one more arm in [`describe`].
//!
//! Ids are derived, not random: a session's trace id and root span id come from the node, the
//! agent and the cage's cgroup id, and a record's span id from the node and its spool sequence
//! number. A record re-sent after an unacknowledged export therefore carries the same ids
//! (and the same `agentcage.event.seq`), so a consumer can recognise the repeat, and a
//! decision exported before its session ended still lands in the session's trace.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::{
    logs::Severity,
    trace::{SpanId, TraceId},
    KeyValue,
};
use sha2::{Digest as _, Sha256};

mod daemon;
mod kernel;
#[cfg(test)]
pub mod sdk;

use daemon::{app, approval, assertion, budget, containment, credential, policy, session};
use kernel::{dns, egress, egress_summary, exec, exit, file, unix};

use super::semconv as sc;
use crate::{
    events::{Event, EventDetail, RuleRef, Verdict},
    spool::{Entry, Record},
};

/// The trace a record belongs to and its own span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    /// The session's trace.
    pub trace_id: TraceId,
    /// The session's root span (`invoke_agent`).
    pub root_span_id: SpanId,
    /// This record's span.
    pub span_id: SpanId,
}

/// A span to export for a record.
pub struct SpanPlan {
    /// Span name.
    pub name: String,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Whether this is the session's root span (then it has no parent).
    pub root: bool,
    /// Error status text, if any.
    pub error: Option<String>,
    /// Span-only attributes.
    pub attributes: Vec<KeyValue>,
}

/// Everything exported for one record.
pub struct Described {
    /// Log record event name.
    pub event_name: &'static str,
    /// Severity.
    pub severity: Severity,
    /// One line for people.
    pub body: String,
    /// When it happened.
    pub time: SystemTime,
    /// Attributes shared by the log record and the span.
    pub attributes: Vec<KeyValue>,
    /// The span, for kinds that have one.
    pub span: Option<SpanPlan>,
    /// Ids.
    pub ids: Ids,
}

pub(super) fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn span_id(bytes: &[u8]) -> SpanId {
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[..8]);
    // All-zero ids are invalid in OTLP.
    if id == [0; 8] {
        id[7] = 1;
    }
    SpanId::from_bytes(id)
}

/// The ids of a session (trace, root span), from what stays the same for its whole life.
pub fn session_ids(node: &str, agent: Option<&str>, cgroup_id: u64) -> (TraceId, SpanId) {
    let d = digest(&[
        b"agentcage-session",
        node.as_bytes(),
        agent.unwrap_or("").as_bytes(),
        &cgroup_id.to_le_bytes(),
    ]);
    let mut trace = [0u8; 16];
    trace.copy_from_slice(&d[..16]);
    if trace == [0; 16] {
        trace[15] = 1;
    }
    (TraceId::from_bytes(trace), span_id(&d[16..24]))
}

fn ids(node: &str, agent: Option<&str>, cgroup_id: u64, seq: u64) -> Ids {
    let (trace_id, root_span_id) = session_ids(node, agent, cgroup_id);
    let d = digest(&[b"agentcage-record", node.as_bytes(), &seq.to_le_bytes()]);
    Ids {
        trace_id,
        root_span_id,
        span_id: span_id(&d),
    }
}

/// Describes one spool record for export.
pub fn describe(record: &Record, node: &str) -> Described {
    let seq = KeyValue::new(sc::EVENT_SEQ, record.seq as i64);
    match &record.entry {
        Entry::Event(event) => {
            let mut attributes = vec![seq];
            attributes.extend(common(event));
            let identity = event.agent.as_ref().map(|a| a.as_str());
            let ids = ids(node, identity, event.cgroup_id, record.seq);
            let (event_name, severity, body, span, more) = match &event.detail {
                EventDetail::Egress(d) => egress(event, d),
                EventDetail::EgressSummary(s) => egress_summary(event, s),
                EventDetail::Session(d) => session(event, d),
                EventDetail::Policy(d) => policy(d),
                EventDetail::Containment(d) => containment(event, d),
                EventDetail::App(a) => app(event, a),
                EventDetail::Approval(d) => approval(event, d),
                EventDetail::Budget(d) => budget(d),
                EventDetail::Assertion(d) => assertion(d),
                EventDetail::Credential(d) => credential(event, d),
                EventDetail::Exec(d) => exec(event, d),
                EventDetail::Fork(d) => (
                    sc::EVENT_PROCESS_FORK,
                    Severity::Info,
                    format!("{} made process {}", event.tgid, d.child_pid),
                    None,
                    vec![KeyValue::new(sc::CHILD_PID, i64::from(d.child_pid))],
                ),
                EventDetail::Exit(d) => exit(event, d),
                EventDetail::File(d) => file(event, d),
                EventDetail::Unix(d) => unix(event, d),
                EventDetail::Dns(d) => dns(event, d),
            };
            attributes.extend(more);
            Described {
                event_name,
                severity,
                body,
                time: time_of(event.time_unix_nano),
                attributes,
                span,
                ids,
            }
        }
        Entry::Dropped {
            time_unix_nano,
            count,
            reason,
        } => Described {
            event_name: sc::EVENT_DROPPED,
            severity: Severity::Error,
            body: format!("{count} events were never exported ({reason})"),
            time: time_of(*time_unix_nano),
            attributes: vec![
                seq,
                KeyValue::new(sc::DROPPED_COUNT, *count as i64),
                KeyValue::new(sc::DROPPED_REASON, reason.clone()),
            ],
            span: None,
            ids: ids(node, None, 0, record.seq),
        },
    }
}

/// Attributes every event kind has.
fn common(event: &Event) -> Vec<KeyValue> {
    let kind = event.kind();
    let mut out = vec![
        KeyValue::new(sc::EVENT_KIND, kind),
        KeyValue::new(sc::CGROUP_ID, event.cgroup_id as i64),
        KeyValue::new(sc::POLICY_HASH, event.policy_hash.clone()),
    ];
    if let Some(c) = &event.certificate {
        out.push(KeyValue::new(sc::CERTIFICATE_ID, c.clone()));
    }
    if let Some(identity) = &event.agent {
        // Records spooled before agents had SPIFFE IDs carry none.
        if let Some(spiffe) = &event.spiffe_id {
            out.push(KeyValue::new(sc::GEN_AI_AGENT_ID, spiffe.to_string()));
        }
        out.push(KeyValue::new(sc::AGENT_IDENTITY, identity.to_string()));
        out.push(KeyValue::new(
            sc::GEN_AI_AGENT_NAME,
            identity.name().to_owned(),
        ));
    }
    if let Some(c) = &event.container {
        out.push(KeyValue::new(sc::CONTAINER_ID, c.id.clone()));
        for (key, value) in [
            (sc::CONTAINER_NAME, &c.name),
            (sc::CONTAINER_IMAGE_NAME, &c.image),
            (sc::K8S_POD_NAME, &c.pod),
            (sc::K8S_NAMESPACE_NAME, &c.namespace),
        ] {
            if let Some(v) = value {
                out.push(KeyValue::new(key, v.clone()));
            }
        }
    }
    if event.tgid != 0 {
        out.push(KeyValue::new(sc::PROCESS_PID, i64::from(event.tgid)));
        out.push(KeyValue::new(sc::THREAD_ID, i64::from(event.pid)));
        out.push(KeyValue::new(
            sc::PROCESS_EXECUTABLE_NAME,
            event.comm.clone(),
        ));
    }
    out
}

/// What one kind adds: event name, severity, body, span, attributes.
pub(super) type KindParts = (
    &'static str,
    Severity,
    String,
    Option<SpanPlan>,
    Vec<KeyValue>,
);

/// A decision span at the event's time, failed when the verdict refused or killed.
pub(super) fn decision_span(
    event: &Event,
    name: String,
    verdict: Verdict,
    rule: RuleRef,
) -> SpanPlan {
    let time = time_of(event.time_unix_nano);
    SpanPlan {
        name,
        start: time,
        end: time,
        root: false,
        error: (verdict != Verdict::Allow && verdict != Verdict::Observed)
            .then(|| format!("{verdict} by {rule}")),
        attributes: Vec::new(),
    }
}

/// Warn for what was refused, info otherwise.
pub(super) fn warn_if(refused: bool) -> Severity {
    if refused {
        Severity::Warn
    } else {
        Severity::Info
    }
}

#[cfg(test)]
mod tests {
    use super::{sdk::span_data, *};
    use crate::events::EgressDetail;
    use crate::events::{SessionAction, SessionDetail};
    use opentelemetry::{InstrumentationScope, Value};

    fn record(seq: u64, detail: EventDetail) -> Record {
        Record {
            seq,
            entry: Entry::Event(std::sync::Arc::new(Event {
                time_unix_nano: 2_000_000_000,
                kernel_ts_ns: 1,
                agent: Some(crate::identity::AgentIdentity::for_agent("a")),
                container: None,
                spiffe_id: Some(
                    crate::identity::TrustDomain::new("td")
                        .unwrap()
                        .agent(&crate::identity::AgentIdentity::for_agent("a")),
                ),
                agent_seq: 1,
                pid: 11,
                tgid: 10,
                comm: "curl".into(),
                cgroup_id: 99,
                policy_hash: "h".into(),
                certificate: None,
                detail,
            })),
        }
    }

    fn deny() -> EventDetail {
        EventDetail::Egress(EgressDetail::denied([127, 0, 0, 2].into(), 8080))
    }

    #[test]
    fn a_resent_record_has_the_same_ids_and_decisions_hang_under_the_session_root() {
        let a = describe(&record(7, deny()), "node");
        let again = describe(&record(7, deny()), "node");
        assert_eq!(a.ids, again.ids, "derived, not random");
        let other = describe(&record(8, deny()), "node");
        assert_ne!(a.ids.span_id, other.ids.span_id);
        assert_eq!(
            a.ids.trace_id, other.ids.trace_id,
            "same session, same trace"
        );
        let end = describe(
            &record(
                9,
                EventDetail::Session(SessionDetail {
                    action: SessionAction::End,
                    started_unix_nano: 1_000_000_000,
                }),
            ),
            "node",
        );
        let scope = InstrumentationScope::builder("t").build();
        let a_ids = a.ids;
        let root = span_data(end, &scope).expect("the end of a session is its root span");
        let child = span_data(a, &scope).unwrap();
        assert_eq!(root.name, "invoke_agent a");
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(child.parent_span_id, root.span_context.span_id());
        assert_eq!(child.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(root.start_time, time_of(1_000_000_000));
        // Another node's session with the same cgroup id is another trace.
        assert_ne!(
            describe(&record(7, deny()), "other").ids.trace_id,
            a_ids.trace_id
        );
    }

    #[test]
    fn a_containers_events_carry_its_container_and_pod_under_the_semantic_convention_names() {
        let mut r = record(1, deny());
        let Entry::Event(e) = &mut r.entry else {
            unreachable!()
        };
        std::sync::Arc::make_mut(e).container = Some(Box::new(crate::events::ContainerMeta {
            id: "c0ffee".into(),
            name: Some("web-1".into()),
            image: Some("bb:1".into()),
            pod: Some("agent-pod".into()),
            namespace: Some("agents".into()),
        }));
        let attrs = describe(&r, "n").attributes;
        let get = |k: &str| {
            attrs
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(get(sc::CONTAINER_ID).as_deref(), Some("c0ffee"));
        assert_eq!(get(sc::CONTAINER_NAME).as_deref(), Some("web-1"));
        assert_eq!(get(sc::CONTAINER_IMAGE_NAME).as_deref(), Some("bb:1"));
        assert_eq!(get(sc::K8S_POD_NAME).as_deref(), Some("agent-pod"));
        assert_eq!(get(sc::K8S_NAMESPACE_NAME).as_deref(), Some("agents"));
        assert_eq!(get(sc::GEN_AI_AGENT_NAME).as_deref(), Some("a"));
        // Without a container, none of them.
        let plain = describe(&record(1, deny()), "n").attributes;
        assert!(!plain
            .iter()
            .any(|kv| kv.key.as_str().starts_with("container.")));
    }

    #[test]
    fn a_denial_is_a_warning_with_typed_network_and_process_attributes() {
        let d = describe(&record(1, deny()), "n");
        assert_eq!(d.event_name, sc::EVENT_EGRESS_DECISION);
        assert_eq!(d.severity, Severity::Warn);
        let get = |k: &str| {
            d.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(get(sc::SERVER_PORT), Some(Value::I64(8080)));
        assert_eq!(get(sc::PROCESS_PID), Some(Value::I64(10)));
        assert_eq!(get(sc::SERVER_ADDRESS), Some(Value::from("127.0.0.2")));
        assert_eq!(get(sc::GEN_AI_AGENT_NAME), Some(Value::from("a")));
        assert_eq!(
            get(sc::GEN_AI_AGENT_ID),
            Some(Value::from("spiffe://td/agent/a"))
        );
        assert_eq!(get(sc::AGENT_IDENTITY), Some(Value::from("agent:a")));
        assert_eq!(get(sc::EVENT_SEQ), Some(Value::I64(1)));
    }
}
