//! Golden lines: the JSON of every event kind (as `agentcage events` prints it and the spool
//! stores it) and what OTLP export makes of it are pinned byte for byte, so that changes to
//! the event types never change what users and collectors see. `AGENTCAGE_BLESS=1` rewrites
//! the files (only for a deliberate format change).

use std::{collections::HashMap, fmt::Write as _, path::PathBuf};

use agent_common::{
    egress::{EgressEvent, RULE_BUDGET, RULE_DEFAULT_DENY, RULE_SOCKET_KIND},
    event::{EventHeader, EventKind, Verdict},
    file::{FileEvent, ACCESS_WRITE, OP_OPEN, OP_UNLINK, OP_USERNS, RULE_TOO_DEEP, RULE_USERNS},
    process::{
        ExecEvent, ARGV_BYTES, EXEC_APPROVAL_RULE_BASE, EXEC_F_FROM_LSM, EXEC_F_KILLED,
        EXEC_RULE_DEFAULT, FILENAME_BYTES,
    },
    unix::{UnixEvent, RULE_APP_SOCKET, RULE_UNNAMED, UNIX_PATH_MAX},
};

use super::{egress, exec, file, unix, *};
use crate::identity::{AgentIdentity, TrustDomain};
use crate::{
    policy::Policy,
    spool::{Entry, Record},
    telemetry::records::{describe, sdk::span_data},
};

const POLICY: &str = r#"
version: 1
agents:
  payer:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [8000-8099]
          protocols: [tcp]
          name: local
          comment: dev servers
        - cidr: 127.0.0.5/32
          ports: [443]
          name: payments
          requires_approval: true
    exec:
      default: allow
      allow: [/usr/bin/true]
      deny: [/usr/bin/dd, "sha256:0000000000000000000000000000000000000000000000000000000000000000"]
    approvals:
      exec: ["terraform apply"]
    files:
      protect:
        - path: /etc/agentcage-golden
          access: write
      watch:
        - path: /var/lib/agentcage-golden
    ingress:
      allow:
        - cidr: 127.0.0.0/8
          ports: [8080]
          protocols: [tcp]
    unix:
      allow: [/run/user/1000/bus, "@/tmp/.X11-unix/X*"]
"#;

fn header(kind: u32, pid: u32) -> EventHeader {
    EventHeader {
        kind,
        agent_id: 1,
        policy_slot: 7,
        _pad: 0,
        ts_ns: 5_000_000_000,
        cgroup_id: 4242,
        pid,
        tgid: pid,
        comm: *b"probe\0\0\0\0\0\0\0\0\0\0\0",
    }
}

fn egress_raw(addr: [u8; 4], port: u16, verdict: u8, rule_id: u32, hook: u8) -> EgressEvent {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&addr);
    EgressEvent {
        header: header(EventKind::Egress as u32, 100),
        addr: a,
        rule_id,
        port,
        family: 2,
        protocol: 6,
        sock_type: 1,
        verdict,
        hook,
        _pad: [0; 2],
        name_id: 0,
        _pad2: 0,
    }
}

fn exec_raw(
    filename: &str,
    argv: &[&str],
    verdict: Verdict,
    rule_id: u32,
    flags: u32,
) -> ExecEvent {
    let mut f = [0u8; FILENAME_BYTES];
    f[..filename.len()].copy_from_slice(filename.as_bytes());
    let mut a = [0u8; ARGV_BYTES];
    let mut len = 0;
    for arg in argv {
        a[len..len + arg.len()].copy_from_slice(arg.as_bytes());
        len += arg.len() + 1;
    }
    ExecEvent {
        header: header(EventKind::Exec as u32, 200),
        ppid: 199,
        uid: 1000,
        gid: 1000,
        flags,
        ino: 77,
        dev: (8 << 20) | 1,
        rule_id,
        verdict: verdict as u8,
        _pad: [0; 3],
        argv_len: len as u32,
        filename: f,
        argv: a,
    }
}

fn file_raw(op: u8, verdict: Verdict, rule_id: u32, depth: u8) -> FileEvent {
    FileEvent {
        header: header(EventKind::File as u32, 300),
        ino: 88,
        dev: (8 << 20) | 2,
        rule_id,
        access: ACCESS_WRITE,
        verdict: verdict as u8,
        depth,
        op,
        _pad: [0; 4],
    }
}

fn event(pid: u32, comm: &str, detail: EventDetail) -> Event {
    let agent = AgentIdentity::for_agent("payer");
    Event {
        time_unix_nano: 1_700_000_000_000_000_000,
        kernel_ts_ns: 5_000_000_000,
        spiffe_id: Some(TrustDomain::new("example.org").unwrap().agent(&agent)),
        agent: Some(agent),
        container: None,
        agent_seq: 3,
        pid,
        tgid: pid,
        comm: comm.into(),
        cgroup_id: 4242,
        policy_hash: "a1b2".into(),
        certificate: None,
        detail,
    }
}

/// One event or more of every kind, built the way the daemon builds them.
fn samples() -> Vec<Event> {
    let policy = Policy::from_yaml(POLICY, "golden.yaml").expect("golden policy");
    let p = policy.agent("payer");
    let mut paths = HashMap::new();
    paths.insert(((8 << 20) | 2, 88), "/etc/agentcage-golden".to_owned());
    let mut out = Vec::new();
    for raw in [
        egress_raw([127, 0, 0, 1], 8080, Verdict::Allow as u8, 0, 1),
        egress_raw(
            [127, 0, 0, 2],
            8080,
            Verdict::Deny as u8,
            RULE_DEFAULT_DENY,
            1,
        ),
        egress_raw([127, 0, 0, 5], 443, Verdict::PendingApproval as u8, 1, 1),
        egress_raw([127, 0, 0, 3], 53, Verdict::Budget as u8, RULE_BUDGET, 3),
        egress_raw([0, 0, 0, 0], 0, Verdict::Deny as u8, RULE_SOCKET_KIND, 5),
        EgressEvent {
            protocol: 132,
            sock_type: 5,
            ..egress_raw([127, 0, 0, 9], 7, 9, 99, 99)
        },
    ] {
        out.push(event(
            100,
            "probe",
            EventDetail::Egress(egress::detail(&raw, p, None)),
        ));
    }
    let mut v6 = egress_raw([0; 4], 9000, Verdict::Deny as u8, RULE_DEFAULT_DENY, 2);
    v6.family = 10;
    v6.protocol = 17;
    v6.sock_type = 2;
    v6.addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    out.push(event(
        100,
        "probe",
        EventDetail::Egress(egress::detail(&v6, p, None)),
    ));
    for raw in [
        exec_raw("/usr/bin/true", &["true"], Verdict::Allow, 0, 0),
        exec_raw(
            "/usr/bin/dd",
            &["dd", "if=/dev/zero"],
            Verdict::Killed,
            1,
            EXEC_F_KILLED,
        ),
        exec_raw("/usr/bin/dd", &[], Verdict::Deny, 1, EXEC_F_FROM_LSM),
        exec_raw(
            "/usr/bin/ls",
            &["ls", "-l"],
            Verdict::Allow,
            EXEC_RULE_DEFAULT,
            0,
        ),
        exec_raw(
            "/usr/bin/terraform",
            &["terraform", "apply"],
            Verdict::PendingApproval,
            EXEC_APPROVAL_RULE_BASE,
            EXEC_F_FROM_LSM,
        ),
    ] {
        let mut d = exec::detail(&raw, p);
        if d.verdict == super::Verdict::Allow {
            d.sha256 = Some("ab".repeat(32));
        }
        out.push(event(200, "sh", EventDetail::Exec(d)));
    }
    out.push(event(
        200,
        "sh",
        EventDetail::Fork(ForkDetail { child_pid: 201 }),
    ));
    out.push(event(
        201,
        "sh",
        EventDetail::Exit(ExitDetail::from_status(3 << 8)),
    ));
    out.push(event(
        202,
        "sleep",
        EventDetail::Exit(ExitDetail::from_status(9)),
    ));
    for raw in [
        file_raw(OP_OPEN, Verdict::Deny, 0, 0),
        file_raw(OP_UNLINK, Verdict::Observed, 1, 2),
        file_raw(OP_OPEN, Verdict::Deny, RULE_TOO_DEEP, 0),
        file_raw(OP_USERNS, Verdict::Deny, RULE_USERNS, 0),
    ] {
        let d = file::detail(&raw, p, Some(&paths));
        out.push(event(300, "rm", EventDetail::File(d)));
    }
    let session = |action: &str| {
        event(
            0,
            "",
            EventDetail::Session(SessionDetail {
                action: action.parse().unwrap(),
                started_unix_nano: 1_699_999_999_000_000_000,
            }),
        )
    };
    out.push(session("start"));
    out.push(session("end"));
    out.push(Event {
        agent: None,
        spiffe_id: None,
        agent_seq: 0,
        cgroup_id: 0,
        ..event(
            0,
            "",
            EventDetail::Policy(PolicyDetail {
                result: PolicyResult::Applied,
                source: "/etc/agentcage/policies/default.yaml".into(),
                error: None,
            }),
        )
    });
    out.push(Event {
        agent: None,
        spiffe_id: None,
        agent_seq: 0,
        cgroup_id: 0,
        ..event(
            0,
            "",
            EventDetail::Policy(PolicyDetail {
                result: PolicyResult::Refused,
                source: "/etc/agentcage/policies/default.yaml".into(),
                error: Some("default.yaml:3:5: unknown field `egres`".into()),
            }),
        )
    });
    for app in [
        AppEvent::ToolCall {
            name: "search".into(),
            args_digest: Some("sha256:ff".into()),
            phase: Phase::Start,
            call_id: Some("c1".into()),
            latency_ms: None,
        },
        AppEvent::ToolCall {
            name: "search".into(),
            args_digest: None,
            phase: Phase::End,
            call_id: Some("c1".into()),
            latency_ms: Some(12.5),
        },
        AppEvent::ModelCall {
            model: "m-large".into(),
            input_tokens: 1200,
            output_tokens: 300,
            cost_usd: 0.25,
            queue_ms: Some(3.0),
            model_ms: Some(800.0),
        },
        AppEvent::Plan {
            summary: Some("fetch, then summarise".into()),
        },
        AppEvent::Approval {
            name: "payout".into(),
            approver: Some("alice".into()),
        },
        AppEvent::TicketComment {
            ticket: "OPS-1".into(),
            digest: None,
        },
        AppEvent::Notify {
            channel: "#ops".into(),
        },
        AppEvent::Exec {
            command: "terraform apply".into(),
        },
    ] {
        out.push(event(150, "", EventDetail::App(app)));
    }
    out.push(event(
        0,
        "",
        EventDetail::Containment(ContainmentDetail {
            rung: RungState::Killed,
            previous: RungState::Observe,
            reason: "manual (uid 0 (root) pid 9)".into(),
            snapshot: Some("/var/lib/agentcage/snapshots/payer-1.json".into()),
        }),
    ));
    out.push(event(
        0,
        "",
        EventDetail::Containment(ContainmentDetail {
            rung: RungState::Observe,
            previous: RungState::Paused,
            reason: "resumed by uid 0 (root) pid 9".into(),
            snapshot: None,
        }),
    ));
    out.push(event(
        0,
        "",
        EventDetail::Approval(ApprovalDetail {
            id: 4,
            state: ApprovalState::Requested,
            subject: "egress payments (egress.allow[1] 127.0.0.5/32 443)".into(),
            approver: None,
            expires_unix_nano: None,
        }),
    ));
    out.push(event(
        0,
        "",
        EventDetail::Approval(ApprovalDetail {
            id: 4,
            state: ApprovalState::Approved,
            subject: "tool payout".into(),
            approver: Some("uid 0 (root)".into()),
            expires_unix_nano: Some(1_700_000_600_000_000_000),
        }),
    ));
    out.push(event(
        0,
        "",
        EventDetail::Budget(BudgetDetail {
            scope: "group:finance".into(),
            budget: "tokens".into(),
            level: BudgetLevel::Hard,
            value: 500_100.0,
            limit: 500_000.0,
        }),
    ));
    out.push(event(
        0,
        "",
        EventDetail::Assertion(AssertionDetail {
            assertion: "approval(payout) precedes egress(payments)".into(),
            violation: "egress(payments) without approval(payout) before it".into(),
        }),
    ));
    out.extend(credential_samples());
    // A flood of one denial, summarized: the last repeat's record with the count.
    let flood = egress_raw(
        [127, 0, 0, 2],
        9999,
        Verdict::Deny as u8,
        RULE_DEFAULT_DENY,
        3,
    );
    out.push(event(
        100,
        "probe",
        EventDetail::EgressSummary(EgressSummary {
            decision: egress::detail(&flood, p, None),
            count: 999_999,
            first_unix_nano: 1_699_999_999_250_000_000,
            last_unix_nano: 1_700_000_000_000_000_000,
        }),
    ));
    // Egress by name: a decision on a granted address names it, and the resolver's queries.
    let granted = egress_raw([127, 0, 0, 1], 8080, Verdict::Allow as u8, 0, 1);
    out.push(event(
        100,
        "probe",
        EventDetail::Egress(egress::detail(&granted, p, Some("api.example.com".into()))),
    ));
    out.push(event(
        0,
        "",
        EventDetail::Dns(DnsDetail {
            name: "api.example.com".into(),
            qtype: "A".into(),
            transport: Protocol::Udp,
            verdict: super::Verdict::Allow,
            rule: RuleRef::EgressAllow(0),
            rule_text: Some("api.example.com tcp 8000-8099".into()),
            answers: vec![[127, 0, 0, 1].into()],
            ttl_s: Some(60),
            error: None,
            cached: false,
        }),
    ));
    out.push(event(
        0,
        "",
        EventDetail::Dns(DnsDetail {
            name: "exfil.example.org".into(),
            qtype: "TXT".into(),
            transport: Protocol::Tcp,
            verdict: super::Verdict::Deny,
            rule: RuleRef::DnsQueryType,
            rule_text: None,
            answers: Vec::new(),
            ttl_s: None,
            error: None,
            cached: false,
        }),
    ));
    // Added with ingress and unix: after every earlier line, which stay as they were.
    for raw in [
        egress_raw([127, 0, 0, 9], 8080, Verdict::Allow as u8, 0, 8),
        egress_raw(
            [127, 0, 0, 9],
            9090,
            Verdict::Deny as u8,
            RULE_DEFAULT_DENY,
            8,
        ),
    ] {
        out.push(event(
            0,
            "",
            EventDetail::Egress(egress::detail(&raw, p, None)),
        ));
    }
    for raw in [
        unix_raw(
            b"/var/run/docker.sock\0",
            Verdict::Deny,
            RULE_DEFAULT_DENY,
            1,
        ),
        unix_raw(b"\0/tmp/.X11-unix/X0", Verdict::Allow, 1, 3),
        unix_raw(
            b"/run/agentcage/app.sock",
            Verdict::Allow,
            RULE_APP_SOCKET,
            3,
        ),
        unix_raw(b"", Verdict::Deny, RULE_UNNAMED, 4),
    ] {
        out.push(event(
            100,
            "probe",
            EventDetail::Unix(unix::detail(&raw, p)),
        ));
    }
    out
}

fn unix_raw(addr: &[u8], verdict: Verdict, rule_id: u32, hook: u8) -> UnixEvent {
    let mut a = [0u8; UNIX_PATH_MAX];
    a[..addr.len()].copy_from_slice(addr);
    UnixEvent {
        header: header(EventKind::Unix as u32, 100),
        addr: a,
        len: addr.len() as u16,
        sock_type: if hook == 4 { 2 } else { 1 },
        rule_id,
        verdict: verdict as u8,
        hook,
        _pad: [0; 6],
    }
}

/// A grant (to an agent with a certificate in force), a refusal waiting for an approval,
/// and a revocation.
fn credential_samples() -> Vec<Event> {
    let detail = |action: CredentialAction| CredentialDetail {
        action,
        tool: "payments".into(),
        method: "POST".into(),
        resource: "/payouts/42".into(),
        on_behalf_of: Some("alice".into()),
        jti: None,
        expires_unix_nano: None,
        rule: None,
        reason: None,
        approval_id: None,
    };
    let granted = Event {
        certificate: Some(format!("sha256:{}", "c0".repeat(32))),
        ..event(
            150,
            "",
            EventDetail::Credential(CredentialDetail {
                jti: Some("9f86d081884c7d659a2feaa0c55ad015".into()),
                expires_unix_nano: Some(1_700_000_060_000_000_000),
                rule: Some("credentials[0]".into()),
                ..detail(CredentialAction::Granted)
            }),
        )
    };
    let refused = event(
        150,
        "",
        EventDetail::Credential(CredentialDetail {
            reason: Some("pending-approval".into()),
            approval_id: Some(5),
            ..detail(CredentialAction::Refused)
        }),
    );
    let revoked = event(
        0,
        "",
        EventDetail::Credential(CredentialDetail {
            jti: Some("9f86d081884c7d659a2feaa0c55ad015".into()),
            expires_unix_nano: Some(1_700_000_060_000_000_000),
            reason: Some("containment: paused".into()),
            ..detail(CredentialAction::Revoked)
        }),
    );
    vec![granted, refused, revoked]
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/events/testdata")
        .join(name)
}

/// Compares `got` with the file, or writes it with `AGENTCAGE_BLESS=1`.
fn check(name: &str, got: &str) {
    let path = testdata(name);
    if std::env::var_os("AGENTCAGE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (AGENTCAGE_BLESS=1 writes it)", path.display()));
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "{name} line {} differs", i + 1);
    }
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{name}: line count"
    );
}

#[test]
fn every_event_kind_serializes_as_pinned() {
    let mut got = String::new();
    for e in samples() {
        got.push_str(&serde_json::to_string(&e).unwrap());
        got.push('\n');
    }
    check("events.jsonl", &got);
}

#[test]
fn pinned_lines_read_back_unchanged() {
    let text = std::fs::read_to_string(testdata("events.jsonl")).unwrap();
    for line in text.lines() {
        let e: Event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(serde_json::to_string(&e).unwrap(), line);
    }
}

/// A value with its OTLP type, independent of how the SDK stores it.
fn value(v: &opentelemetry::Value) -> String {
    use opentelemetry::{Array, Value};
    match v {
        Value::Bool(b) => format!("bool:{b}"),
        Value::I64(i) => format!("int:{i}"),
        Value::F64(f) => format!("double:{f}"),
        Value::String(s) => format!("string:{:?}", s.as_str()),
        Value::Array(Array::String(a)) => {
            let items: Vec<_> = a.iter().map(|s| format!("{:?}", s.as_str())).collect();
            format!("string[]:[{}]", items.join(","))
        }
        other => format!("other:{other}"),
    }
}

#[test]
fn otlp_records_of_every_kind_are_pinned() {
    let text = std::fs::read_to_string(testdata("events.jsonl")).unwrap();
    let scope = opentelemetry::InstrumentationScope::builder("golden").build();
    let mut got = String::new();
    for (i, line) in text.lines().enumerate() {
        let e: Event = serde_json::from_str(line).unwrap();
        let record = Record {
            seq: i as u64 + 1,
            entry: Entry::Event(std::sync::Arc::new(e)),
        };
        let d = describe(&record, "node-1");
        let _ = writeln!(got, "{} {:?} {}", d.event_name, d.severity, d.body);
        for kv in &d.attributes {
            let _ = writeln!(got, "  {}={}", kv.key, value(&kv.value));
        }
        let shared = d.attributes.len();
        if let Some(s) = span_data(d, &scope) {
            let _ = writeln!(
                got,
                "  span {:?} {:?} {:?}->{:?} {:?} parent={}",
                s.name,
                s.status,
                s.start_time,
                s.end_time,
                s.span_context.span_id(),
                s.parent_span_id
            );
            for kv in &s.attributes[shared..] {
                let _ = writeln!(got, "  span {}={}", kv.key, value(&kv.value));
            }
        }
    }
    check("otlp.txt", &got);
}
