//! OTLP descriptions of the daemon's own events and the application's.

use opentelemetry::{logs::Severity, KeyValue};

use super::{sc, time_of, KindParts, SpanPlan};
use crate::events::{
    ApprovalDetail, ApprovalState, AssertionDetail, BudgetDetail, BudgetLevel, ContainmentDetail,
    CredentialAction, CredentialDetail, Event, PolicyDetail, PolicyResult, RungState,
    SessionAction, SessionDetail,
};

pub(super) fn session(event: &Event, d: &SessionDetail) -> KindParts {
    let agent = event.agent_name().unwrap_or("").to_owned();
    let attrs = vec![KeyValue::new(sc::SESSION_ACTION, d.action.to_string())];
    // The root span is complete only when the session ends; decisions point at its id
    // meanwhile.
    let span = (d.action == SessionAction::End).then(|| SpanPlan {
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

pub(super) fn policy(d: &PolicyDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::POLICY_RESULT, d.result.to_string()),
        KeyValue::new(sc::POLICY_SOURCE, d.source.clone()),
    ];
    if let Some(e) = &d.error {
        attrs.push(KeyValue::new(sc::ERROR_MESSAGE, e.clone()));
    }
    let refused = d.result != PolicyResult::Applied;
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

pub(super) fn containment(event: &Event, d: &ContainmentDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::CONTAINMENT_RUNG, d.rung.to_string()),
        KeyValue::new(sc::CONTAINMENT_PREVIOUS, d.previous.to_string()),
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
    let severity = if d.rung == RungState::Observe {
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

pub(super) fn app(event: &Event, a: &crate::events::AppEvent) -> KindParts {
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
                let took = crate::events::duration_of_ms(latency_ms.unwrap_or(0.0));
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

pub(super) fn approval(event: &Event, d: &ApprovalDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::APPROVAL_ID, d.id as i64),
        KeyValue::new(sc::APPROVAL_STATE, d.state.to_string()),
        KeyValue::new(sc::APPROVAL_SUBJECT, d.subject.clone()),
    ];
    if let Some(a) = &d.approver {
        attrs.push(KeyValue::new(sc::APPROVAL_APPROVER, a.clone()));
    }
    (
        sc::EVENT_APPROVAL,
        if d.state == ApprovalState::Requested {
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
            error: (d.state == ApprovalState::Denied).then(|| format!("approval {} denied", d.id)),
            attributes: Vec::new(),
        }),
        attrs,
    )
}

pub(super) fn budget(d: &BudgetDetail) -> KindParts {
    (
        sc::EVENT_BUDGET,
        if d.level == BudgetLevel::Hard {
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
            KeyValue::new(sc::BUDGET_LEVEL, d.level.to_string()),
            KeyValue::new(sc::BUDGET_VALUE, d.value),
            KeyValue::new(sc::BUDGET_LIMIT, d.limit),
        ],
    )
}

pub(super) fn assertion(d: &AssertionDetail) -> KindParts {
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

pub(super) fn credential(event: &Event, d: &CredentialDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::CREDENTIAL_ACTION, d.action.to_string()),
        KeyValue::new(sc::GEN_AI_TOOL_NAME, d.tool.clone()),
        KeyValue::new(sc::CREDENTIAL_METHOD, d.method.clone()),
        KeyValue::new(sc::CREDENTIAL_RESOURCE, d.resource.clone()),
    ];
    let optional = [
        (sc::CREDENTIAL_ON_BEHALF_OF, &d.on_behalf_of),
        (sc::CREDENTIAL_JTI, &d.jti),
        (sc::RULE, &d.rule),
        (sc::CREDENTIAL_REASON, &d.reason),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            attrs.push(KeyValue::new(key, v.clone()));
        }
    }
    if let Some(id) = d.approval_id {
        attrs.push(KeyValue::new(sc::APPROVAL_ID, id as i64));
    }
    let on_behalf = d
        .on_behalf_of
        .as_ref()
        .map(|u| format!(" for {u}"))
        .unwrap_or_default();
    let why = d
        .reason
        .as_ref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let time = time_of(event.time_unix_nano);
    (
        sc::EVENT_CREDENTIAL,
        super::warn_if(d.action != CredentialAction::Granted),
        format!(
            "credential {} {} {} on {}{on_behalf}{why}",
            d.action, d.method, d.resource, d.tool
        ),
        Some(SpanPlan {
            name: format!("credential {} {}", d.action, d.tool),
            start: time,
            end: time,
            root: false,
            error: (d.action == CredentialAction::Refused).then(|| format!("refused{why}")),
            attributes: Vec::new(),
        }),
        attrs,
    )
}
