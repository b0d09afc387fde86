//! Approvals, end to end: the kernel denies a destination that needs approval with the
//! verdict `pending-approval`, the daemon raises a request, `agentcage approve` lets it
//! through, and the kernel denies again once the approval lapses.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::harness;

use harness::{stderr, stdout, tcp_listener, Daemon, Follower};

fn payments(port: u16) -> String {
    format!(
        "version: 1
agents:
  payer:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{port}]
          protocols: [tcp]
          name: payments
          requires_approval: true
    approvals:
      tools: [payout]
      default_for: 10m
      max_for: 1h
"
    )
}

/// The id of the next approval request raised.
fn requested(events: &Follower) -> u64 {
    let e = events.wait_event("an approval request", |e| {
        e["kind"] == "approval" && e["state"] == "requested"
    });
    e["id"].as_u64().unwrap()
}

#[test]
fn pending_approval_is_denied_then_allowed_then_denied_after_expiry() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&payments(port));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("payer");
    let dst = format!("connect 127.0.0.1:{port}");

    assert_eq!(cage.op(&dst), "err 1", "denied until approved");
    let e = events.wait_event("the kernel's verdict", |e| e["kind"] == "egress");
    assert_eq!(e["verdict"], "pending-approval");
    assert_eq!(e["rule"], "egress.allow[0]");
    let id = requested(&events);
    let list = daemon.cli().args(["approvals"]).output_bounded().unwrap();
    assert!(
        stdout(&list).contains("egress payments"),
        "{}",
        stdout(&list)
    );
    assert!(stdout(&list).contains("pending"), "{}", stdout(&list));

    let ok = daemon
        .cli()
        .args(["approve", &id.to_string(), "--for", "2s"])
        .output_bounded()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("approved by uid 0 (root)"),
        "{}",
        stdout(&ok)
    );
    assert_eq!(cage.op(&dst), "ok", "allowed while approved");

    // The approval lapses by itself: wait for the daemon to say so, then the kernel (which
    // compares the expiry at each decision) denies again.
    let gone = events.wait_event("the expiry", |e| {
        e["kind"] == "approval" && e["state"] == "expired"
    });
    assert_eq!(gone["id"], id);
    assert_eq!(cage.op(&dst), "err 1", "denied again after expiry");
    let again = requested(&events);
    assert!(again > id, "a new attempt raises a new request");

    // Approvals are recorded with who gave them.
    let json = daemon
        .cli()
        .args(["approvals", "-o", "json"])
        .output_bounded()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let first = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap();
    assert_eq!(first["state"], "expired");
    assert!(first["approver"]
        .as_str()
        .unwrap()
        .starts_with("uid 0 (root)"));
    cage.finish();
    daemon.stop();
}

#[test]
fn denied_and_overlong_approvals() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&payments(port));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("payer");
    let dst = format!("connect 127.0.0.1:{port}");
    assert_eq!(cage.op(&dst), "err 1");
    let id = requested(&events);

    let long = daemon
        .cli()
        .args(["approve", &id.to_string(), "--for", "2h"])
        .output_bounded()
        .unwrap();
    harness::assert_refused(&long, "longer than the policy's max_for");
    let no = daemon
        .cli()
        .args(["deny", &id.to_string()])
        .output_bounded()
        .unwrap();
    assert!(no.status.success(), "{}", stderr(&no));
    assert_eq!(cage.op(&dst), "err 1");
    let late = daemon
        .cli()
        .args(["approve", &id.to_string()])
        .output_bounded()
        .unwrap();
    harness::assert_refused(&late, "is denied already");
    let unknown = daemon
        .cli()
        .args(["approve", "9999"])
        .output_bounded()
        .unwrap();
    harness::assert_refused(&unknown, "no approval request 9999");
    cage.finish();
    daemon.stop();
}

#[test]
fn approval_required_rung_holds_destinations_outside_the_allow_list() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let (_m, other) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&payments(port));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("payer");
    let dst = format!("connect 127.0.0.1:{other}");
    assert_eq!(cage.op(&dst), "err 1");
    let e = events.wait_event("a plain denial", |e| e["kind"] == "egress");
    assert_eq!(e["verdict"], "deny");

    let out = daemon
        .cli()
        .args(["contain", "payer", "approval_required"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cage.op(&dst), "err 1");
    let e = events.wait_event("a held attempt", |e| {
        e["kind"] == "egress" && e["verdict"] == "pending-approval"
    });
    assert_eq!(e["rule"], "default-deny");
    let id = requested(&events);
    let ok = daemon
        .cli()
        .args(["approve", &id.to_string()])
        .output_bounded()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(cage.op(&dst), "ok", "that destination, approved");
    // Tool calls wait for a person on this rung too, even those the policy does not name.
    let app = daemon.app_socket();
    assert_eq!(cage.op(&format!("ctl-connect {}", app.display())), "ok");
    let held = cage.op(r#"ctl-send {"event":{"app":"tool_call","name":"search","phase":"start"}}"#);
    assert!(held.contains(r#""reason":"pending-approval""#), "{held}");
    cage.finish();
    daemon.stop();
}

#[test]
fn tool_calls_needing_approval_are_refused_until_approved() {
    let daemon = Daemon::start(&payments(1));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("payer");
    let app = daemon.app_socket();
    assert_eq!(cage.op(&format!("ctl-connect {}", app.display())), "ok");
    let call = r#"ctl-send {"event":{"app":"tool_call","name":"payout","phase":"start"}}"#;
    let refused = cage.op(call);
    assert!(
        refused.contains(r#""decision":"refuse","reason":"pending-approval""#),
        "{refused}"
    );
    let id = requested(&events);
    assert!(
        refused.contains(&format!(r#""approval_id":{id}"#)),
        "{refused}"
    );
    let ok = daemon
        .cli()
        .args(["approve", &id.to_string()])
        .output_bounded()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let allowed = cage.op(call);
    assert!(allowed.contains(r#""decision":"allow""#), "{allowed}");
    cage.finish();
    daemon.stop();
}

/// `approvals.exec`: the kernel refuses (deny tier) or kills (kill tier) the gated program
/// until a person approves; the request names the command.
#[test]
fn a_gated_program_runs_only_once_approved() {
    let bins = tempfile::tempdir().unwrap();
    // The agent (a uid of its own) writes its marks here.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(bins.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let gated = bins.path().join("gated-touch");
    std::fs::copy("/bin/touch", &gated).unwrap();
    let g = gated.display().to_string();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    approvals:\n      exec: [\"{g} --deploy\"]\n"
    ));
    let refused = if daemon.status()["tier"] == "deny" {
        "126"
    } else {
        "137"
    };
    let events = daemon.follow_events();
    let (first, second) = (bins.path().join("first"), bins.path().join("second"));
    let mut shell = daemon
        .cli()
        .args(["run", "--agent", "t", "--", "/bin/sh", "-c"])
        .arg(format!(
            "{g} {}; echo r1=$?; read go; {g} {}; echo r2=$?",
            first.display(),
            second.display()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = harness::Lines::spawn(shell.stdout.take().unwrap());
    assert_eq!(
        out.wait_for("the first try", |l| l.starts_with("r1=")),
        format!("r1={refused}")
    );
    assert!(!first.exists(), "nothing of the gated program ran");
    let e = events.wait_event("the refused exec", |e| {
        e["kind"] == "exec" && e["filename"] == g.as_str()
    });
    assert_eq!(e["verdict"], "pending-approval");
    assert_eq!(e["rule"], "approvals.exec[0]");
    let id = requested(&events);
    let ok = daemon
        .cli()
        .args(["approve", &id.to_string(), "--for", "10m"])
        .output_bounded()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    use std::io::Write as _;
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(
        out.wait_for("the second try", |l| l.starts_with("r2=")),
        "r2=0"
    );
    assert!(second.exists(), "the approved program ran");
    assert!(shell.wait().unwrap().success());
}
