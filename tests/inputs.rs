//! Bounded inputs (issue 11, case 5): every number of an application event is range-checked
//! (no panic on any JSON), a malformed line closes its connection, each cage holds only its
//! share of the application socket, and the dashboard drops clients that send their headers
//! too slowly.

use agentcage_tests::bounded::Bounded as _;
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use agentcage_tests::harness::{self, Daemon};

const POLICY: &str = "version: 1
agents:
  spender:
    budgets:
      tokens: {hard: 1000}
    containment:
      budget_grace: 1h
  other: {}
";

#[test]
fn an_out_of_range_number_is_refused_and_the_connection_goes_on() {
    let daemon = Daemon::start(POLICY);
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("spender");
    let app = daemon.app_socket().display().to_string();
    assert_eq!(cage.op(&format!("ctl-connect {app}")), "ok");
    // The line that panicked the handler (and left the budget it breached unapplied).
    let huge = cage.op(
        r#"ctl-send {"event":{"app":"model_call","model":"m","input_tokens":5000,"model_ms":1e300}}"#,
    );
    assert!(
        huge.contains(r#""type":"error""#) && huge.contains("model_ms"),
        "{huge}"
    );
    let end = cage.op(
        r#"ctl-send {"event":{"app":"tool_call","name":"t","phase":"end","latency_ms":1e300}}"#,
    );
    assert!(end.contains("latency_ms"), "{end}");
    // The same connection still serves, and the budget holds.
    let ok = cage.op(
        r#"ctl-send {"event":{"app":"model_call","model":"m","input_tokens":5000,"model_ms":40}}"#,
    );
    assert!(ok.contains(r#""type":"accepted""#), "{ok}");
    let hard = events.wait_event("the hard limit", |e| {
        e["kind"] == "budget" && e["level"] == "hard"
    });
    assert_eq!(hard["value"], 5000.0);
    cage.finish();
    daemon.stop();
}

#[test]
fn a_malformed_line_closes_its_connection() {
    let daemon = Daemon::start(POLICY);
    let mut cage = daemon.serve_in("spender");
    let app = daemon.app_socket().display().to_string();
    assert_eq!(cage.op(&format!("ctl-connect {app}")), "ok");
    let bad = cage.op("ctl-send this is not json");
    assert!(bad.contains("connection closed"), "{bad}");
    // Nothing more is read from it: the answer is the end of the stream (or a broken pipe).
    let after = cage.op(r#"ctl-send {"event":{"app":"plan"}}"#);
    assert!(!after.contains("accepted"), "{after}");
    cage.finish();
    daemon.stop();
}

#[test]
fn each_cage_holds_only_its_share_of_the_application_socket() {
    let daemon = Daemon::start(POLICY);
    let app = daemon.app_socket().display().to_string();
    let mut greedy = daemon.serve_in("spender");
    let mut other = daemon.serve_in("other");
    let share = 32;
    let all = greedy.op(&format!("app-conns {app} {share}"));
    assert!(all.contains("accepted"), "{all}");
    let more = greedy.op(&format!("app-conns {app} 1"));
    assert!(more.contains("its share"), "{more}");
    // Another agent still reports, and is answered.
    let theirs = other.op(&format!("app-conns {app} 1"));
    assert!(theirs.contains("accepted"), "{theirs}");
    greedy.finish();
    other.finish();
    daemon.stop();
}

#[test]
fn the_dashboard_drops_a_client_that_sends_its_headers_too_slowly() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("agentcaged.yaml");
    std::fs::write(&file, "dashboard:\n  listen: 127.0.0.1:0\n").unwrap();
    let daemon = Daemon::start_args(POLICY, &["--config", file.to_str().unwrap()]);
    let url = harness::stdout(&daemon.cli().arg("dashboard").output_bounded().unwrap());
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: ").unwrap();
    // The server closes it (read gives 0, or an answer then 0) within its header timeout.
    let deadline = harness::deadline();
    slow.set_read_timeout(Some(deadline)).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let closed = slow.read_to_end(&mut buf).is_ok();
    assert!(
        closed && t.elapsed() < deadline,
        "still open after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "closed at once: {buf:?}"
    );
    daemon.stop();
}
