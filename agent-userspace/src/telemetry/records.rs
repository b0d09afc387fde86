//! What each spool entry becomes in OTLP: a log record (event name, severity, body,
//! attributes) and, for some kinds, a span. One small function per event kind; a new kind
//! needs one more arm in [`describe`].
//!
//! Ids are derived, not random: a session's trace id and root span id come from the node, the
//! agent and the cage's cgroup id, and a record's span id from the node and its spool sequence
//! number. A record re-sent after an unacknowledged export therefore carries the same ids
//! (and the same `agentcage.event.seq`), so a consumer can recognise the repeat, and a
//! decision exported before its session ended still lands in the session's trace.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    logs::{AnyValue, Severity},
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue, Value,
};
use sha2::{Digest as _, Sha256};

use super::semconv as sc;
use crate::{
    events::{ContainmentDetail, EgressDetail, Event, EventDetail, PolicyDetail, SessionDetail},
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

fn time_of(ns: u64) -> SystemTime {
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

/// The agent's name from its identity (`agent:NAME`).
fn agent_name(identity: &str) -> &str {
    identity.strip_prefix("agent:").unwrap_or(identity)
}

/// Describes one spool record for export.
pub fn describe(record: &Record, node: &str) -> Described {
    let seq = KeyValue::new(sc::EVENT_SEQ, record.seq as i64);
    match &record.entry {
        Entry::Event(event) => {
            let mut attributes = vec![seq];
            attributes.extend(common(event));
            let ids = ids(node, event.agent.as_deref(), event.cgroup_id, record.seq);
            let (event_name, severity, body, span, more) = match &event.detail {
                EventDetail::Egress(d) => egress(event, d),
                EventDetail::Session(d) => session(event, d),
                EventDetail::Policy(d) => policy(d),
                EventDetail::Containment(d) => containment(event, d),
                EventDetail::App(a) => app(event, a),
                EventDetail::Approval(d) => approval(event, d),
                EventDetail::Budget(d) => budget(d),
                EventDetail::Assertion(d) => assertion(d),
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
    let kind = match &event.detail {
        EventDetail::Egress(_) => "egress",
        EventDetail::Session(_) => "session",
        EventDetail::Policy(_) => "policy",
        EventDetail::Containment(_) => "containment",
        EventDetail::App(_) => "app",
        EventDetail::Approval(_) => "approval",
        EventDetail::Budget(_) => "budget",
        EventDetail::Assertion(_) => "assertion",
        EventDetail::Exec(_) => "exec",
        EventDetail::Fork(_) => "fork",
        EventDetail::Exit(_) => "exit",
        EventDetail::File(_) => "file",
    };
    let mut out = vec![
        KeyValue::new(sc::EVENT_KIND, kind),
        KeyValue::new(sc::CGROUP_ID, event.cgroup_id as i64),
        KeyValue::new(sc::POLICY_HASH, event.policy_hash.clone()),
    ];
    if let Some(identity) = &event.agent {
        out.push(KeyValue::new(sc::GEN_AI_AGENT_ID, identity.clone()));
        out.push(KeyValue::new(
            sc::GEN_AI_AGENT_NAME,
            agent_name(identity).to_owned(),
        ));
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

type KindParts = (
    &'static str,
    Severity,
    String,
    Option<SpanPlan>,
    Vec<KeyValue>,
);

fn egress(event: &Event, d: &EgressDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.clone()),
        KeyValue::new(sc::RULE, d.rule.clone()),
        KeyValue::new(sc::HOOK, d.hook.clone()),
        KeyValue::new(sc::NETWORK_TRANSPORT, d.protocol.clone()),
        KeyValue::new(sc::NETWORK_TYPE, d.family.clone()),
        KeyValue::new(sc::SOCKET_TYPE, d.sock_type.clone()),
    ];
    if let Some(addr) = d.dst_addr {
        attrs.push(KeyValue::new(sc::SERVER_ADDRESS, addr.to_string()));
        attrs.push(KeyValue::new(sc::SERVER_PORT, i64::from(d.dst_port)));
    }
    if let Some(text) = &d.rule_text {
        attrs.push(KeyValue::new(sc::RULE_TEXT, text.clone()));
    }
    let deny = d.verdict == "deny";
    let target = d
        .dst_addr
        .map(|a| format!(" {}", std::net::SocketAddr::new(a, d.dst_port)))
        .unwrap_or_default();
    let body = format!(
        "{} {}{target} {}: {}",
        d.verdict, d.hook, d.protocol, d.rule
    );
    let time = time_of(event.time_unix_nano);
    let span = SpanPlan {
        name: format!("egress {}", d.hook),
        start: time,
        end: time,
        root: false,
        error: deny.then(|| format!("denied by {}", d.rule)),
        attributes: Vec::new(),
    };
    (
        sc::EVENT_EGRESS_DECISION,
        if deny { Severity::Warn } else { Severity::Info },
        body,
        Some(span),
        attrs,
    )
}

/// A decision span at the event's time, failed when the verdict refused or killed.
fn decision_span(event: &Event, name: String, verdict: &str, rule: &str) -> SpanPlan {
    let time = time_of(event.time_unix_nano);
    SpanPlan {
        name,
        start: time,
        end: time,
        root: false,
        error: (verdict != "allow" && verdict != "observed")
            .then(|| format!("{verdict} by {rule}")),
        attributes: Vec::new(),
    }
}

fn exec(event: &Event, d: &crate::events::ExecDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.clone()),
        KeyValue::new(sc::RULE, d.rule.clone()),
        KeyValue::new(sc::HOOK, d.hook.clone()),
        KeyValue::new(sc::PROCESS_EXECUTABLE_PATH, d.filename.clone()),
        KeyValue::new(sc::PROCESS_PARENT_PID, i64::from(d.ppid)),
        KeyValue::new(
            sc::PROCESS_COMMAND_ARGS,
            Value::Array(opentelemetry::Array::String(
                d.argv.iter().cloned().map(Into::into).collect(),
            )),
        ),
    ];
    if let Some(h) = &d.sha256 {
        attrs.push(KeyValue::new(sc::EXEC_SHA256, h.clone()));
    }
    if let Some(text) = &d.rule_text {
        attrs.push(KeyValue::new(sc::RULE_TEXT, text.clone()));
    }
    let refused = d.verdict != "allow";
    let body = format!("{} exec {}: {}", d.verdict, d.filename, d.rule);
    let span = decision_span(event, format!("exec {}", d.filename), &d.verdict, &d.rule);
    (
        sc::EVENT_EXEC,
        if refused {
            Severity::Warn
        } else {
            Severity::Info
        },
        body,
        Some(span),
        attrs,
    )
}

fn exit(event: &Event, d: &crate::events::ExitDetail) -> KindParts {
    let mut attrs = Vec::new();
    if let Some(c) = d.exit_code {
        attrs.push(KeyValue::new(sc::PROCESS_EXIT_CODE, i64::from(c)));
    }
    if let Some(s) = d.signal {
        attrs.push(KeyValue::new(sc::EXIT_SIGNAL, i64::from(s)));
    }
    let body = match (d.exit_code, d.signal) {
        (Some(c), _) => format!("process {} exited {c}", event.tgid),
        (_, Some(s)) => format!("process {} killed by signal {s}", event.tgid),
        _ => format!("process {} ended", event.tgid),
    };
    (sc::EVENT_PROCESS_EXIT, Severity::Info, body, None, attrs)
}

fn file(event: &Event, d: &crate::events::FileDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.clone()),
        KeyValue::new(sc::RULE, d.rule.clone()),
        KeyValue::new(sc::FILE_OP, d.op.clone()),
        KeyValue::new(sc::FILE_ACCESS, d.access.clone()),
    ];
    if let Some(p) = &d.path {
        attrs.push(KeyValue::new(sc::FILE_PATH, p.clone()));
    }
    if let Some(text) = &d.rule_text {
        attrs.push(KeyValue::new(sc::RULE_TEXT, text.clone()));
    }
    let body = format!("{} {} ({}): {}", d.verdict, d.op, d.access, d.rule);
    let span = decision_span(event, format!("file {}", d.op), &d.verdict, &d.rule);
    (
        sc::EVENT_FILE,
        if d.verdict == "deny" {
            Severity::Warn
        } else {
            Severity::Info
        },
        body,
        Some(span),
        attrs,
    )
}

fn session(event: &Event, d: &SessionDetail) -> KindParts {
    let agent = event.agent.as_deref().map_or("", agent_name).to_owned();
    let attrs = vec![KeyValue::new(sc::SESSION_ACTION, d.action.clone())];
    // The root span is complete only when the session ends; decisions point at its id
    // meanwhile.
    let span = (d.action == "end").then(|| SpanPlan {
        name: format!("{} {agent}", sc::OP_INVOKE_AGENT),
        start: time_of(d.started_unix_nano),
        end: time_of(event.time_unix_nano),
        root: true,
        error: None,
        attributes: vec![KeyValue::new(
            sc::GEN_AI_OPERATION_NAME,
            sc::OP_INVOKE_AGENT,
        )],
    });
    (
        sc::EVENT_SESSION,
        Severity::Info,
        format!("session of agent {agent} {}", d.action),
        span,
        attrs,
    )
}

fn policy(d: &PolicyDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::POLICY_RESULT, d.result.clone()),
        KeyValue::new(sc::POLICY_SOURCE, d.source.clone()),
    ];
    if let Some(e) = &d.error {
        attrs.push(KeyValue::new(sc::ERROR_MESSAGE, e.clone()));
    }
    let refused = d.result != "applied";
    (
        sc::EVENT_POLICY,
        if refused {
            Severity::Error
        } else {
            Severity::Info
        },
        match &d.error {
            Some(e) => format!("policy reload {}: {e}", d.result),
            None => format!("policy reload {}: {}", d.result, d.source),
        },
        None,
        attrs,
    )
}

fn containment(event: &Event, d: &ContainmentDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::CONTAINMENT_RUNG, d.rung.clone()),
        KeyValue::new(sc::CONTAINMENT_PREVIOUS, d.previous.clone()),
        KeyValue::new(sc::CONTAINMENT_REASON, d.reason.clone()),
    ];
    if let Some(s) = &d.snapshot {
        attrs.push(KeyValue::new(sc::CONTAINMENT_SNAPSHOT, s.clone()));
    }
    let time = time_of(event.time_unix_nano);
    let span = SpanPlan {
        name: format!("contain {}", d.rung),
        start: time,
        end: time,
        root: false,
        error: None,
        attributes: Vec::new(),
    };
    let severity = if d.rung == "observe" {
        Severity::Info
    } else {
        Severity::Error
    };
    (
        sc::EVENT_CONTAINMENT,
        severity,
        format!("{} -> {}: {}", d.previous, d.rung, d.reason),
        Some(span),
        attrs,
    )
}

fn app(event: &Event, a: &crate::events::AppEvent) -> KindParts {
    use crate::events::{AppEvent, Phase};
    let time = time_of(event.time_unix_nano);
    match a {
        AppEvent::ToolCall {
            name,
            args_digest,
            phase,
            call_id,
            latency_ms,
        } => {
            let mut attrs = vec![
                KeyValue::new(sc::GEN_AI_OPERATION_NAME, sc::OP_EXECUTE_TOOL),
                KeyValue::new(sc::GEN_AI_TOOL_NAME, name.clone()),
            ];
            if let Some(c) = call_id {
                attrs.push(KeyValue::new(sc::GEN_AI_TOOL_CALL_ID, c.clone()));
            }
            if let Some(d) = args_digest {
                attrs.push(KeyValue::new(sc::TOOL_ARGS_DIGEST, d.clone()));
            }
            // The span is complete at the call's end: it starts latency_ms before.
            let span = (*phase == Phase::End).then(|| {
                let took = Duration::from_secs_f64(latency_ms.unwrap_or(0.0) / 1e3);
                SpanPlan {
                    name: format!("{} {name}", sc::OP_EXECUTE_TOOL),
                    start: time.checked_sub(took).unwrap_or(time),
                    end: time,
                    root: false,
                    error: None,
                    attributes: Vec::new(),
                }
            });
            let body = match phase {
                Phase::Start => format!("tool call {name} started"),
                Phase::End => format!("tool call {name} ended"),
            };
            (sc::EVENT_TOOL_CALL, Severity::Info, body, span, attrs)
        }
        AppEvent::ModelCall {
            model,
            input_tokens,
            output_tokens,
            cost_usd,
            ..
        } => (
            sc::EVENT_MODEL_CALL,
            Severity::Info,
            format!("model call {model}: {input_tokens} in, {output_tokens} out, ${cost_usd}"),
            None,
            vec![
                KeyValue::new(sc::GEN_AI_REQUEST_MODEL, model.clone()),
                KeyValue::new(sc::GEN_AI_USAGE_INPUT_TOKENS, *input_tokens as i64),
                KeyValue::new(sc::GEN_AI_USAGE_OUTPUT_TOKENS, *output_tokens as i64),
                KeyValue::new(sc::COST_USD, *cost_usd),
            ],
        ),
        AppEvent::TicketComment { ticket, .. } => (
            sc::EVENT_APP,
            Severity::Info,
            format!("ticket comment on {ticket}"),
            None,
            vec![KeyValue::new(sc::TICKET_ID, ticket.clone())],
        ),
        other => (
            sc::EVENT_APP,
            Severity::Info,
            serde_json::to_string(other).unwrap_or_default(),
            None,
            Vec::new(),
        ),
    }
}

fn approval(event: &Event, d: &crate::events::ApprovalDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::APPROVAL_ID, d.id as i64),
        KeyValue::new(sc::APPROVAL_STATE, d.state.clone()),
        KeyValue::new(sc::APPROVAL_SUBJECT, d.subject.clone()),
    ];
    if let Some(a) = &d.approver {
        attrs.push(KeyValue::new(sc::APPROVAL_APPROVER, a.clone()));
    }
    (
        sc::EVENT_APPROVAL,
        if d.state == "requested" {
            Severity::Warn
        } else {
            Severity::Info
        },
        format!("approval {} {}: {}", d.id, d.state, d.subject),
        Some(SpanPlan {
            name: format!("approval {}", d.state),
            start: time_of(event.time_unix_nano),
            end: time_of(event.time_unix_nano),
            root: false,
            error: (d.state == "denied").then(|| format!("approval {} denied", d.id)),
            attributes: Vec::new(),
        }),
        attrs,
    )
}

fn budget(d: &crate::events::BudgetDetail) -> KindParts {
    (
        sc::EVENT_BUDGET,
        if d.level == "hard" {
            Severity::Error
        } else {
            Severity::Warn
        },
        format!(
            "{} budget {} of {}: {} of {}",
            d.level, d.budget, d.scope, d.value, d.limit
        ),
        None,
        vec![
            KeyValue::new(sc::BUDGET, d.budget.clone()),
            KeyValue::new(sc::BUDGET_SCOPE, d.scope.clone()),
            KeyValue::new(sc::BUDGET_LEVEL, d.level.clone()),
            KeyValue::new(sc::BUDGET_VALUE, d.value),
            KeyValue::new(sc::BUDGET_LIMIT, d.limit),
        ],
    )
}

fn assertion(d: &crate::events::AssertionDetail) -> KindParts {
    (
        sc::EVENT_ASSERTION,
        Severity::Error,
        format!("assertion violated: {}: {}", d.assertion, d.violation),
        None,
        vec![
            KeyValue::new(sc::ASSERTION, d.assertion.clone()),
            KeyValue::new(sc::ERROR_MESSAGE, d.violation.clone()),
        ],
    )
}

/// The log attribute value of a span attribute value.
pub fn any_value(v: &Value) -> AnyValue {
    match v {
        Value::Bool(b) => AnyValue::Boolean(*b),
        Value::I64(i) => AnyValue::Int(*i),
        Value::F64(f) => AnyValue::Double(*f),
        other => AnyValue::String(other.as_str().into_owned().into()),
    }
}

/// The SDK span of a described record.
pub fn span_data(
    d: &Described,
    scope: &InstrumentationScope,
) -> Option<opentelemetry_sdk::trace::SpanData> {
    let plan = d.span.as_ref()?;
    let span_id = if plan.root {
        d.ids.root_span_id
    } else {
        d.ids.span_id
    };
    let mut attributes = d.attributes.clone();
    attributes.extend(plan.attributes.iter().cloned());
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
        name: Cow::Owned(plan.name.clone()),
        start_time: plan.start,
        end_time: plan.end,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: match &plan.error {
            Some(e) => Status::error(e.clone()),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EgressDetail;

    fn record(seq: u64, detail: EventDetail) -> Record {
        Record {
            seq,
            entry: Entry::Event(Box::new(Event {
                time_unix_nano: 2_000_000_000,
                kernel_ts_ns: 1,
                agent: Some("agent:a".into()),
                agent_seq: 1,
                pid: 11,
                tgid: 10,
                comm: "curl".into(),
                cgroup_id: 99,
                policy_hash: "h".into(),
                detail,
            })),
        }
    }

    fn deny() -> EventDetail {
        EventDetail::Egress(EgressDetail {
            hook: "connect4".into(),
            family: "ipv4".into(),
            protocol: "tcp".into(),
            sock_type: "stream".into(),
            dst_addr: Some([127, 0, 0, 2].into()),
            dst_port: 8080,
            verdict: "deny".into(),
            rule: "default-deny".into(),
            rule_text: None,
        })
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
                    action: "end".into(),
                    started_unix_nano: 1_000_000_000,
                }),
            ),
            "node",
        );
        let scope = InstrumentationScope::builder("t").build();
        let root = span_data(&end, &scope).expect("the end of a session is its root span");
        let child = span_data(&a, &scope).unwrap();
        assert_eq!(root.name, "invoke_agent a");
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(child.parent_span_id, root.span_context.span_id());
        assert_eq!(child.span_context.trace_id(), root.span_context.trace_id());
        assert_eq!(root.start_time, time_of(1_000_000_000));
        // Another node's session with the same cgroup id is another trace.
        assert_ne!(
            describe(&record(7, deny()), "other").ids.trace_id,
            a.ids.trace_id
        );
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
        assert_eq!(get(sc::EVENT_SEQ), Some(Value::I64(1)));
    }
}
