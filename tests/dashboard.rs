//! `agentcage top` and the loopback web dashboard, end to end: the real daemon, a real cage,
//! the page rendered by headless Chromium, and the API's authorisation checked over raw HTTP.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::{dns::TestDns, harness};

use std::{fs, process::Command};

use harness::{stdout, tcp_listener, Daemon};

const EPERM: &str = "err 1";

fn policy(port: u16) -> String {
    format!(
        "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n          protocols: [tcp]\n      allow_events: all\n"
    )
}

/// A daemon serving the dashboard on a free loopback port.
fn daemon_with_dashboard(port: u16) -> (Daemon, tempfile::TempDir) {
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("agentcaged.yaml");
    fs::write(&conf, "dashboard:\n  listen: 127.0.0.1:0\n").unwrap();
    let daemon = Daemon::start_args(&policy(port), &["--config", conf.to_str().unwrap()]);
    (daemon, conf_dir)
}

/// `agentcage dashboard`: the address with its token.
fn dashboard_url(daemon: &Daemon) -> (String, String) {
    let out = daemon.cli().arg("dashboard").output_bounded().unwrap();
    let url = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    let (base, token) = url.split_once("#token=").expect("a token in the fragment");
    let authority = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    (authority, token.to_owned())
}

/// The page at `url` as headless Chromium renders it (its DOM once its fetches finished).
fn render(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Lets the page's fetches finish before the DOM is dumped.
        .arg("--virtual-time-budget=10000")
        .arg("--dump-dom")
        .arg(url)
        .output_bounded()
        .expect("chromium (Debian's chromium package; cargo xtask setup installs it)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// One HTTP/1.1 request; returns the status code and the body.
fn http(authority: &str, host: &str, request_line: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    agentcage_tests::http::exchange(
        authority,
        &format!(
            "{request_line} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
}

#[test]
fn top_shows_the_agents_and_their_recent_denials() {
    let (_listener, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&policy(port));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), EPERM);
    // Events reach the daemon's recent list asynchronously: wait until the denial has.
    events.wait_event("the denial", |e| {
        e["kind"] == "egress" && e["verdict"] == "deny"
    });
    let out = daemon
        .cli()
        .args(["top", "--once"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let frame = stdout(&out);
    let row = frame
        .lines()
        .find(|l| l.starts_with("tester "))
        .unwrap_or_else(|| panic!("no agent row in:\n{frame}"));
    // name, rung, pids, allowed, denied, lost, budget
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[3..6], ["1", "1", "0"], "{row}");
    let denial = frame
        .lines()
        .skip_while(|l| *l != "RECENT DENIALS")
        .find(|l| l.contains(&format!("127.0.0.2:{port}")))
        .unwrap_or_else(|| panic!("no denial in:\n{frame}"));
    assert!(denial.contains(&format!("({})", cage.pid)), "{denial}");
    assert!(denial.contains("default-deny"), "{denial}");
    assert!(cage.finish().success());
}

#[test]
fn the_dashboard_in_headless_chromium_shows_agents_trees_and_decisions() {
    let (_listener, port) = tcp_listener("127.0.0.1");
    let (daemon, _conf) = daemon_with_dashboard(port);
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), EPERM);
    // The reader takes the ring buffer in order: once the denial is out, the probe's exec
    // (before it) is in the daemon's process tree, which the page shows.
    events.wait_event("the denial", |e| {
        e["kind"] == "egress" && e["verdict"] == "deny" && e["dst_port"] == port
    });
    let (authority, token) = dashboard_url(&daemon);
    let dom = render(&format!("http://{authority}/#token={token}"));
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never loaded its data:\n{dom}"
    );
    assert!(
        dom.contains("<tr data-agent=\"tester\"><td>tester</td>"),
        "{dom}"
    );
    // The cage's process tree holds the probe.
    assert!(dom.contains(&format!("data-pid=\"{}\"", cage.pid)), "{dom}");
    assert!(
        dom.contains(&format!(
            "<td class=\"deny\">deny</td><td>127.0.0.2:{port} tcp</td><td>default-deny</td>"
        )),
        "{dom}"
    );
    assert!(dom.contains("none waiting"), "{dom}");
    // Without the token the page shows nothing but the refusal.
    let dom = render(&format!("http://{authority}/"));
    assert!(dom.contains("unauthorised"), "{dom}");
    assert!(!dom.contains("data-agent=\"tester\""), "{dom}");
    assert!(cage.finish().success());
}

#[test]
fn the_dashboard_api_needs_the_token_the_control_socket_hands_out() {
    let (_listener, port) = tcp_listener("127.0.0.1");
    let (daemon, _conf) = daemon_with_dashboard(port);
    let (authority, token) = dashboard_url(&daemon);
    let host = authority.as_str();
    assert_eq!(http(host, host, "GET /api/state", None).0, 401);
    assert_eq!(http(host, host, "GET /api/state", Some("0000")).0, 401);
    let (code, body) = http(host, host, "GET /api/state", Some(&token));
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(state["status"]["agents"].is_array(), "{state}");
    assert_eq!(state["approvals"], serde_json::json!([]));
    // Approve and deny need the token too; with it, an id that is not waiting is refused.
    assert_eq!(
        http(host, host, "POST /api/approvals/a1/approve", None).0,
        401
    );
    let (code, body) = http(host, host, "POST /api/approvals/a1/deny", Some(&token));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no approval \\\"a1\\\" is waiting"), "{body}");
    // A page reached under another name (DNS rebinding) is refused.
    let (code, _) = http(host, "attacker.example:80", "GET /api/state", Some(&token));
    assert_eq!(code, 421);
}

#[test]
fn a_dashboard_on_a_non_loopback_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("agentcaged.yaml");
    fs::write(&conf, "dashboard:\n  listen: 0.0.0.0:0\n").unwrap();
    let policy_path = dir.path().join("policy.yaml");
    fs::write(&policy_path, policy(1)).unwrap();
    let socket = dir.path().join("s.sock");
    let err = Daemon::start_with(
        dir,
        policy_path,
        socket,
        format!("agentcage-test-dash-{}", std::process::id()),
        &["--config", conf.to_str().unwrap()],
    )
    .err()
    .expect("the daemon must refuse");
    assert!(err.contains("not a loopback address"), "{err}");
}

/// An approval waiting is listed on the dashboard, and its approve button (the API behind
/// it, with the control socket's token) lets the agent through.
#[test]
fn the_dashboard_lists_waiting_approvals_and_approves_them() {
    let (_listener, port) = tcp_listener("127.0.0.1");
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("agentcaged.yaml");
    fs::write(&conf, "dashboard:\n  listen: 127.0.0.1:0\n").unwrap();
    let daemon = Daemon::start_args(
        &format!(
            "version: 1\nagents:\n  payer:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n          protocols: [tcp]\n          requires_approval: true\n"
        ),
        &["--config", conf.to_str().unwrap()],
    );
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("payer");
    let dst = format!("connect 127.0.0.1:{port}");
    assert_eq!(cage.op(&dst), "err 1", "denied until approved");
    let id = events.wait_event("the approval request", |e| {
        e["kind"] == "approval" && e["state"] == "requested"
    })["id"]
        .as_u64()
        .unwrap();
    let (authority, token) = dashboard_url(&daemon);
    let host = authority.as_str();
    let (code, body) = http(host, host, "GET /api/state", Some(&token));
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let waiting = state["approvals"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{state}");
    assert_eq!(waiting[0]["id"], id.to_string());
    assert_eq!(waiting[0]["agent"], "payer");
    let (code, body) = http(
        host,
        host,
        &format!("POST /api/approvals/{id}/approve"),
        Some(&token),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(cage.op(&dst), "ok", "allowed once approved");
    // Decided: not waiting any more, and a second decision is refused.
    let (code, _) = http(
        host,
        host,
        &format!("POST /api/approvals/{id}/deny"),
        Some(&token),
    );
    assert_eq!(code, 409);
    assert!(cage.finish().success());
}

#[test]
fn the_dashboard_names_destinations_the_cages_resolver_granted_and_its_refusals() {
    let upstream = TestDns::start(60);
    let (_listener, port) = tcp_listener("127.0.0.1");
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("agentcaged.yaml");
    fs::write(
        &conf,
        format!(
            "dashboard:\n  listen: 127.0.0.1:0\ndns:\n  upstream: [\"{}\"]\n",
            upstream.addr
        ),
    )
    .unwrap();
    let policy = format!(
        "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n        - host: allowed.test\n          ports: [{port}]\n          protocols: [tcp]\n      allow_events: all\n"
    );
    let daemon = Daemon::start_args(&policy, &["--config", conf.to_str().unwrap()]);
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    assert!(cage.op("resolve allowed.test").contains("127.0.0.1"));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert!(cage
        .op("dns 127.0.0.2:53 denied.test A")
        .starts_with("ok REFUSED"));
    // The connect's event comes through the kernel's ring buffer: the page shows what the
    // daemon has read.
    events.wait_event("the connect's event", |e| {
        e["kind"] == "egress" && e["dst_name"] == "allowed.test"
    });
    let (authority, token) = dashboard_url(&daemon);
    let dom = render(&format!("http://{authority}/#token={token}"));
    assert!(
        dom.contains(&format!(
            "<td class=\"allow\">allow</td><td>allowed.test (127.0.0.1:{port}) tcp</td>"
        )),
        "{dom}"
    );
    assert!(
        dom.contains(
            "<td class=\"deny\">deny</td><td>dns denied.test A udp</td><td>dns-name-not-allowed</td>"
        ),
        "{dom}"
    );
    assert!(cage.finish().success());
}
