//! Agent identities and just-in-time credentials, end to end: a caged process asks the real
//! daemon for a token on the application socket; the token is checked the way tools check
//! it (`agentcage cred verify`, the daemon's verify endpoint, PyJWT against `keys jwks`).

use agentcage_tests::bounded::Bounded as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentcage_tests::{harness, identity};

use harness::{assert_refused, stderr, stdout, tcp_listener};
use identity::{cred_verify, grant, http_verify, listener, request, TRUST_DOMAIN};
use serde_json::json;

const POLICY: &str = r#"version: 1
users:
  alice:
    envelope:
      - tool: payments
        methods: [POST]
        resources: ["/payouts/4*"]
agents:
  payer:
    identity:
      owner: team-payments
      tools: [payments, ledger]
    credentials:
      - tool: payments
        methods: [POST, GET]
        resources: ["/payouts/*"]
        max_ttl: 10m
      - tool: ledger
        methods: [GET]
        resources: ["/entries/**"]
        requires_approval: true
  other:
    credentials:
      - tool: admin
        methods: ["*"]
        resources: ["/**"]
"#;

fn payout(resource: &str) -> serde_json::Value {
    json!({"tool": "payments", "method": "POST", "resource": resource})
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (bounded) until the wall clock is past `exp`: the passage of time is what expiry
/// tests test.
fn wait_past(exp: u64) {
    let until = Duration::from_secs(exp.saturating_sub(now()) + 1);
    let deadline = std::time::Instant::now() + until + harness::deadline();
    while now() <= exp {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock never passed {exp}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_token_is_good_for_its_tool_method_and_resource_until_it_expires() {
    let (daemon, _conf) = identity::daemon(POLICY);
    let events = daemon.follow_events();
    let mut cage = identity::cage(&daemon, "payer");
    let (token, reply) = grant(&mut cage, &payout("/payouts/42"));
    assert_eq!(reply["scope"], "POST /payouts/42");

    let ok = cred_verify(&daemon, &token, "payments", "POST", "/payouts/42");
    assert!(ok.status.success(), "{}", stderr(&ok));
    let claims: serde_json::Value = serde_json::from_str(&stdout(&ok)).unwrap();
    assert_eq!(
        claims["sub"],
        format!("spiffe://{TRUST_DOMAIN}/agent/payer")
    );
    assert_eq!(claims["aud"], "payments");
    assert_eq!(claims["jti"], reply["jti"]);
    assert_eq!(claims["trace_id"].as_str().unwrap().len(), 32);
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 60, "60 s unless asked otherwise");

    for (tool, method, resource, why) in [
        ("ledger", "POST", "/payouts/42", "issued for tool"),
        ("payments", "GET", "/payouts/42", "scope is"),
        ("payments", "POST", "/payouts/43", "scope is"),
    ] {
        let out = cred_verify(&daemon, &token, tool, method, resource);
        assert_eq!(out.status.code(), Some(1), "{tool} {method} {resource}");
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }

    // Every grant is an event carrying the agent's SPIFFE ID.
    let e = events.wait_event("the grant", |e| {
        e["kind"] == "credential" && e["action"] == "granted"
    });
    assert_eq!(e["jti"], reply["jti"]);
    assert_eq!(e["spiffe_id"], claims["sub"]);
    assert_eq!(e["rule"], "credentials[0]");

    // Asked for longer than the rule's max_ttl: refused; 1 s: granted, then expired.
    let long = request(
        &mut cage,
        &json!({"tool":"payments","method":"POST","resource":"/payouts/1","ttl":"11m"}),
    );
    assert_eq!(long["reason"], "ttl", "{long}");
    let (short, reply) = grant(
        &mut cage,
        &json!({"tool":"payments","method":"POST","resource":"/payouts/1","ttl":"1s"}),
    );
    wait_past(reply["expires_unix"].as_u64().unwrap());
    let late = cred_verify(&daemon, &short, "payments", "POST", "/payouts/1");
    assert_eq!(late.status.code(), Some(1));
    assert!(stderr(&late).contains("expired"), "{}", stderr(&late));

    // The session's end revokes what is still live (the first token).
    cage.finish();
    let gone = events.wait_event("the revocation at the session's end", |e| {
        e["kind"] == "credential" && e["action"] == "revoked"
    });
    assert_eq!(gone["jti"], claims["jti"]);
    assert_eq!(gone["reason"], "session ended");
    daemon.stop();
}

#[test]
fn a_caged_process_gets_nothing_for_another_agent_or_beyond_its_users_envelope() {
    let (daemon, _conf) = identity::daemon(POLICY);
    let events = daemon.follow_events();
    let mut cage = identity::cage(&daemon, "payer");

    // Another agent's rules are not the caller's to use.
    let line =
        json!({"agent": "other", "credential": {"tool":"admin","method":"GET","resource":"/x"}});
    let spoof = identity::request_line(&mut cage, &line.to_string());
    assert_eq!(spoof["type"], "error", "{spoof}");
    assert!(spoof["message"]
        .as_str()
        .unwrap()
        .contains("cannot speak for agent:other"));
    let theirs = request(
        &mut cage,
        &json!({"tool":"admin","method":"GET","resource":"/x"}),
    );
    assert_eq!(theirs["reason"], "not-allowed", "{theirs}");

    // On alice's behalf: inside her envelope only, and the token says for whom.
    let (token, _) = grant(
        &mut cage,
        &json!({"tool":"payments","method":"POST","resource":"/payouts/42","on_behalf_of":"alice"}),
    );
    let out = cred_verify(&daemon, &token, "payments", "POST", "/payouts/42");
    let claims: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(claims["act"]["sub"], "alice");
    for (ask, reason) in [
        (
            json!({"tool":"payments","method":"POST","resource":"/payouts/52","on_behalf_of":"alice"}),
            "envelope",
        ),
        (
            json!({"tool":"payments","method":"GET","resource":"/payouts/42","on_behalf_of":"alice"}),
            "envelope",
        ),
        (
            json!({"tool":"payments","method":"POST","resource":"/payouts/42","on_behalf_of":"mallory"}),
            "unknown-user",
        ),
    ] {
        let r = request(&mut cage, &ask);
        assert_eq!(r["type"], "refused", "{r}");
        assert_eq!(r["reason"], reason, "{r}");
    }
    let refused = events.wait_event("a refusal", |e| {
        e["kind"] == "credential" && e["action"] == "refused" && e["reason"] == "envelope"
    });
    assert_eq!(refused["on_behalf_of"], "alice");

    // Malformed requests are errors, not grants.
    let glob = request(&mut cage, &payout("/payouts/*"));
    assert_eq!(glob["type"], "error", "{glob}");
    let dots = request(&mut cage, &payout("/payouts/../admin"));
    assert_eq!(dots["type"], "error", "{dots}");

    // `agentcage cred request` from inside the cage prints the token alone.
    let inside = daemon
        .cli()
        .args(["run", "--agent", "payer", "--", harness::agentcage()])
        .arg("--app-socket")
        .arg(daemon.app_socket())
        .args(["cred", "request", "--tool", "payments", "--method", "post"])
        .args(["--resource", "/payouts/7", "--ttl", "30s"])
        .output_bounded()
        .unwrap();
    assert!(inside.status.success(), "{}", stderr(&inside));
    let ok = cred_verify(&daemon, &stdout(&inside), "payments", "POST", "/payouts/7");
    assert!(ok.status.success(), "{}", stderr(&ok));
    let beyond = daemon
        .cli()
        .args(["run", "--agent", "payer", "--", harness::agentcage()])
        .arg("--app-socket")
        .arg(daemon.app_socket())
        .args([
            "cred", "request", "--tool", "payments", "--method", "DELETE",
        ])
        .args(["--resource", "/payouts/7"])
        .output_bounded()
        .unwrap();
    assert_eq!(beyond.status.code(), Some(3), "{}", stderr(&beyond));
    assert!(
        stderr(&beyond).contains("refused (not-allowed)"),
        "{}",
        stderr(&beyond)
    );

    // From outside every cage nothing is issued.
    let outside = daemon
        .cli()
        .arg("--app-socket")
        .arg(daemon.app_socket())
        .args(["cred", "request", "--tool", "payments", "--method", "POST"])
        .args(["--resource", "/payouts/42"])
        .output_bounded()
        .unwrap();
    assert_refused(&outside, "is in no agentcage cage");
    cage.finish();
    daemon.stop();
}

#[test]
fn revocation_and_containment_are_seen_by_the_verify_endpoint() {
    let (daemon, _conf) = identity::daemon(POLICY);
    let events = daemon.follow_events();
    let at = listener(&daemon);
    let mut cage = identity::cage(&daemon, "payer");
    let (token, reply) = grant(&mut cage, &payout("/payouts/42"));
    let (code, body) = http_verify(&at, &token, "payments", "POST", "/payouts/42");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["claims"]["jti"], reply["jti"]);
    let (code, body) = http_verify(&at, &token, "payments", "POST", "/payouts/43");
    assert_eq!(code, 401, "{body}");

    // Revoked by hand: the endpoint refuses it (offline verification cannot know).
    let jti = reply["jti"].as_str().unwrap();
    let out = daemon
        .cli()
        .args(["cred", "revoke", jti])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = http_verify(&at, &token, "payments", "POST", "/payouts/42");
    assert_eq!((code, &body["revoked"]), (401, &json!(true)), "{body}");
    let e = events.wait_event("the revocation", |e| {
        e["kind"] == "credential" && e["action"] == "revoked"
    });
    assert_eq!(e["jti"], jti);

    // Containment above observe revokes every live token and issues none.
    let (a, _) = grant(&mut cage, &payout("/payouts/1"));
    let (b, _) = grant(&mut cage, &payout("/payouts/2"));
    let listed = daemon
        .cli()
        .args(["cred", "list", "-o", "json"])
        .output_bounded()
        .unwrap();
    let live: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(live.as_array().unwrap().len(), 2, "{live}");
    let out = daemon
        .cli()
        .args(["contain", "payer", "read_only"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for (t, r) in [(&a, "/payouts/1"), (&b, "/payouts/2")] {
        let (code, body) = http_verify(&at, t, "payments", "POST", r);
        assert_eq!((code, &body["revoked"]), (401, &json!(true)), "{body}");
    }
    let contained = request(&mut cage, &payout("/payouts/3"));
    assert_eq!(contained["reason"], "contained", "{contained}");
    let out = daemon
        .cli()
        .args(["contain", "payer", "observe"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    grant(&mut cage, &payout("/payouts/3"));
    cage.finish();
    daemon.stop();
}

#[test]
fn an_approval_gates_a_credential_and_requests_count_toward_the_tool_call_budget() {
    // Three tool calls at most: the third request reaches the hard limit.
    let policy = POLICY.replace(
        "        requires_approval: true\n",
        "        requires_approval: true\n    budgets:\n      tool_calls: {hard: 3}\n",
    );
    let (daemon, _conf) = identity::daemon(&policy);
    let mut cage = identity::cage(&daemon, "payer");
    let entry = json!({"tool":"ledger","method":"GET","resource":"/entries/2024/7"});
    let waiting = request(&mut cage, &entry);
    assert_eq!(waiting["reason"], "pending-approval", "{waiting}");
    let id = waiting["approval_id"].as_u64().unwrap();
    let list = daemon.cli().args(["approvals"]).output_bounded().unwrap();
    assert!(
        stdout(&list).contains("credential ledger GET /entries/2024/7"),
        "{}",
        stdout(&list)
    );
    let ok = daemon
        .cli()
        .args(["approve", &id.to_string()])
        .output_bounded()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    grant(&mut cage, &entry);
    // Three requests so far; the third reached the hard limit of 3: throttled.
    let over = request(&mut cage, &payout("/payouts/9"));
    assert_eq!(over["reason"], "budget", "{over}");
    cage.finish();
    daemon.stop();
}

#[test]
fn pyjwt_verifies_tokens_and_a_rotation_keeps_old_ones_until_they_expire() {
    let (daemon, _conf) = identity::daemon(POLICY);
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = identity::scratch(&dir, "jwks.json");
    let mut cage = identity::cage(&daemon, "payer");
    // The first key signs one token only, long enough for the checks before its expiry (30 s:
    // a machine busy with VM boots took more than 12 s to get through them).
    let (old, old_reply) = grant(
        &mut cage,
        &json!({"tool":"payments","method":"POST","resource":"/payouts/42","ttl":"30s"}),
    );
    let out = daemon
        .cli()
        .args(["keys", "rotate"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let jwks = identity::save_jwks(&daemon, &jwks_file);
    let still = now() <= old_reply["expires_unix"].as_u64().unwrap();
    assert!(
        !still || jwks["keys"].as_array().unwrap().len() == 2,
        "the old key went before its token expired: {jwks}"
    );
    let claims = identity::pyjwt_verify(&jwks_file, &old, "payments");
    assert!(
        still,
        "the machine took longer than the token's 30 s to get here"
    );
    let claims = claims.expect("PyJWT accepts a token of the rotated key");
    assert_eq!(claims["scope"], "POST /payouts/42");
    assert_eq!(
        identity::pyjwt_verify(&jwks_file, &old, "ledger"),
        Err("InvalidAudienceError".into())
    );
    // One character of the payload changed.
    let mut forged = old.clone();
    let at = old.find('.').unwrap() + 3;
    forged.replace_range(at..=at, if &old[at..=at] == "A" { "B" } else { "A" });
    assert!(identity::pyjwt_verify(&jwks_file, &forged, "payments").is_err());

    // The new key signs from now on.
    let (new, _) = grant(&mut cage, &payout("/payouts/43"));
    assert!(identity::pyjwt_verify(&jwks_file, &new, "payments").is_ok());
    let keys = daemon
        .cli()
        .args(["keys", "show", "-o", "json"])
        .output_bounded()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    assert_eq!(keys[0]["current"], true, "{keys}");
    assert!(keys[1]["kept_until"].is_string(), "{keys}");

    // Once the old key's last token expired, the key is gone from the JWKS.
    wait_past(old_reply["expires_unix"].as_u64().unwrap());
    let jwks = identity::save_jwks(&daemon, &jwks_file);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["kid"], keys[0]["kid"]);
    assert!(identity::pyjwt_verify(&jwks_file, &new, "payments").is_ok());
    assert!(identity::pyjwt_verify(&jwks_file, &old, "payments").is_err());
    let gone = cred_verify(&daemon, &old, "payments", "POST", "/payouts/42");
    assert_eq!(gone.status.code(), Some(1));
    cage.finish();
    daemon.stop();
}

#[test]
fn every_event_carries_the_agents_spiffe_id() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let policy = format!(
        "version: 1\nagents:\n  web:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n      allow_events: all\n"
    );
    let (daemon, _conf) = identity::daemon(&policy);
    let events = daemon.follow_events();
    let mut cage = identity::cage(&daemon, "web");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    let plan = identity::request_line(&mut cage, r#"{"event":{"app":"plan"}}"#);
    assert_eq!(plan["decision"], "allow", "{plan}");
    let id = format!("spiffe://{TRUST_DOMAIN}/agent/web");
    // The kernel's events and the daemon's reach the bus in either order.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        let e = events.wait_event("a session, an egress and an app event", |e| {
            let kind = e["kind"].as_str().unwrap_or_default();
            ["session", "egress", "app"].contains(&kind) && !seen.contains(kind)
        });
        assert_eq!(e["spiffe_id"], id.as_str(), "{e}");
        assert_eq!(e["agent"], "agent:web", "{e}");
        seen.insert(e["kind"].as_str().unwrap().to_owned());
    }
    let status = daemon.status();
    assert_eq!(status["agents"][0]["spiffe_id"], id.as_str());
    cage.finish();
    daemon.stop();
}
