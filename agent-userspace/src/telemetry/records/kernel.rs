//! OTLP descriptions of the kernel's decisions and process events.

use opentelemetry::{logs::Severity, KeyValue, Value};

use super::{decision_span, sc, time_of, warn_if, KindParts, SpanPlan};
use crate::events::{
    DnsDetail, EgressDetail, EgressSummary, Event, ExecDetail, ExitDetail, FileDetail, UnixDetail,
    Verdict,
};

pub(super) fn egress(event: &Event, d: &EgressDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.to_string()),
        KeyValue::new(sc::RULE, d.rule.to_string()),
        KeyValue::new(sc::HOOK, d.hook.to_string()),
        KeyValue::new(sc::NETWORK_TRANSPORT, d.protocol.to_string()),
        KeyValue::new(sc::NETWORK_TYPE, d.family.to_string()),
        KeyValue::new(sc::SOCKET_TYPE, d.sock_type.to_string()),
    ];
    match (d.dst_addr, &d.dst_name) {
        // Granted by a name: the name is the server, the address its peer address.
        (Some(addr), Some(name)) => {
            attrs.push(KeyValue::new(sc::SERVER_ADDRESS, name.clone()));
            attrs.push(KeyValue::new(sc::SERVER_PORT, i64::from(d.dst_port)));
            attrs.push(KeyValue::new(sc::NETWORK_PEER_ADDRESS, addr.to_string()));
        }
        (Some(addr), None) => {
            attrs.push(KeyValue::new(sc::SERVER_ADDRESS, addr.to_string()));
            attrs.push(KeyValue::new(sc::SERVER_PORT, i64::from(d.dst_port)));
        }
        (None, _) => {}
    }
    if let Some(peer) = d.src_addr {
        // A peer reaching the agent: the agent is the server, on its own port.
        attrs.push(KeyValue::new(sc::CLIENT_ADDRESS, peer.to_string()));
        attrs.push(KeyValue::new(sc::SERVER_PORT, i64::from(d.dst_port)));
    }
    if let Some(text) = &d.rule_text {
        attrs.push(KeyValue::new(sc::RULE_TEXT, text.clone()));
    }
    let deny = d.verdict == Verdict::Deny;
    let target = match (d.dst_addr, d.src_addr) {
        (Some(a), _) => format!(" {}", std::net::SocketAddr::new(a, d.dst_port)),
        (None, Some(peer)) => format!(" from {peer} to port {}", d.dst_port),
        (None, None) => String::new(),
    };
    let target = match &d.dst_name {
        Some(name) => format!("{target} ({name})"),
        None => target,
    };
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
        warn_if(deny),
        body,
        Some(span),
        attrs,
    )
}

/// A summary: the decision's record with the count and the first time; its span runs from
/// the first repeat to the last.
pub(super) fn egress_summary(event: &Event, s: &EgressSummary) -> KindParts {
    let (_, severity, body, span, mut attrs) = egress(event, &s.decision);
    attrs.push(KeyValue::new(sc::SUMMARY_COUNT, s.count as i64));
    attrs.push(KeyValue::new(sc::SUMMARY_FIRST, s.first_unix_nano as i64));
    let span = span.map(|plan| SpanPlan {
        name: format!("egress {} x{}", s.decision.hook, s.count),
        start: time_of(s.first_unix_nano),
        ..plan
    });
    (
        sc::EVENT_EGRESS_SUMMARY,
        severity,
        format!("{} more: {body}", s.count),
        span,
        attrs,
    )
}

pub(super) fn unix(event: &Event, d: &UnixDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.to_string()),
        KeyValue::new(sc::RULE, d.rule.to_string()),
        KeyValue::new(sc::HOOK, d.hook.to_string()),
        KeyValue::new(sc::NETWORK_TRANSPORT, "unix"),
        KeyValue::new(sc::SOCKET_TYPE, d.sock_type.to_string()),
    ];
    if let Some(path) = &d.path {
        attrs.push(KeyValue::new(sc::SERVER_ADDRESS, path.clone()));
    }
    if let Some(text) = &d.rule_text {
        attrs.push(KeyValue::new(sc::RULE_TEXT, text.clone()));
    }
    let body = format!(
        "{} {} {}: {}",
        d.verdict,
        d.hook,
        d.path.as_deref().unwrap_or("(unnamed)"),
        d.rule
    );
    let span = decision_span(event, format!("unix {}", d.hook), d.verdict, d.rule);
    (
        sc::EVENT_UNIX_DECISION,
        warn_if(d.verdict == Verdict::Deny),
        body,
        Some(span),
        attrs,
    )
}

pub(super) fn exec(event: &Event, d: &ExecDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.to_string()),
        KeyValue::new(sc::RULE, d.rule.to_string()),
        KeyValue::new(sc::HOOK, d.hook.to_string()),
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
    let body = format!("{} exec {}: {}", d.verdict, d.filename, d.rule);
    let span = decision_span(event, format!("exec {}", d.filename), d.verdict, d.rule);
    let severity = warn_if(d.verdict != Verdict::Allow);
    (sc::EVENT_EXEC, severity, body, Some(span), attrs)
}

pub(super) fn exit(event: &Event, d: &ExitDetail) -> KindParts {
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

pub(super) fn file(event: &Event, d: &FileDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.to_string()),
        KeyValue::new(sc::RULE, d.rule.to_string()),
        KeyValue::new(sc::FILE_OP, d.op.to_string()),
        KeyValue::new(sc::FILE_ACCESS, d.access.to_string()),
    ];
    if let Some(p) = &d.path {
        attrs.push(KeyValue::new(sc::FILE_PATH, p.clone()));
    }
    if let Some(text) = &d.rule_text {
        attrs.push(KeyValue::new(sc::RULE_TEXT, text.clone()));
    }
    let body = format!("{} {} ({}): {}", d.verdict, d.op, d.access, d.rule);
    let span = decision_span(event, format!("file {}", d.op), d.verdict, d.rule);
    let severity = warn_if(d.verdict == Verdict::Deny);
    (sc::EVENT_FILE, severity, body, Some(span), attrs)
}

/// A query to a cage's resolver (raised by the daemon; beside the kernel's egress decisions,
/// which it makes possible).
pub(super) fn dns(event: &Event, d: &DnsDetail) -> KindParts {
    let mut attrs = vec![
        KeyValue::new(sc::VERDICT, d.verdict.to_string()),
        KeyValue::new(sc::RULE, d.rule.to_string()),
        KeyValue::new(sc::DNS_QUESTION_NAME, d.name.clone()),
        KeyValue::new(sc::DNS_QUESTION_TYPE, d.qtype.clone()),
        KeyValue::new(sc::NETWORK_TRANSPORT, d.transport.to_string()),
    ];
    if let Some(text) = &d.rule_text {
        attrs.push(KeyValue::new(sc::RULE_TEXT, text.clone()));
    }
    if !d.answers.is_empty() {
        attrs.push(KeyValue::new(
            sc::DNS_ANSWERS,
            Value::Array(opentelemetry::Array::String(
                d.answers.iter().map(|a| a.to_string().into()).collect(),
            )),
        ));
    }
    if let Some(e) = &d.error {
        attrs.push(KeyValue::new(sc::ERROR_MESSAGE, e.clone()));
    }
    if d.verdict == Verdict::Allow && d.error.is_none() {
        attrs.push(KeyValue::new(sc::DNS_CACHED, d.cached));
    }
    let refused = d.verdict != Verdict::Allow;
    let body = format!("dns {} {} {}: {}", d.verdict, d.qtype, d.name, d.rule);
    let time = time_of(event.time_unix_nano);
    let span = SpanPlan {
        name: format!("dns {}", d.qtype),
        start: time,
        end: time,
        root: false,
        error: refused.then(|| format!("refused by {}", d.rule)),
        attributes: Vec::new(),
    };
    (
        sc::EVENT_DNS,
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
