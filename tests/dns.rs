//! Egress by name, end to end: `host:` rules, the resolver every cage must use, grants in
//! the kernel per cage. The upstream is the test's own DNS server on loopback; every query
//! a cage sends, to whatever address, must reach agentcage's resolver and nothing else.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::{dns::TestDns, harness};

use std::net::{TcpListener, UdpSocket};

use harness::{deadline, tcp_listener, tcp_listener_at, Daemon};

const EPERM: &str = "err 1";

fn policy(rules: &str) -> String {
    format!(
        "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n{rules}\n      allow_events: all\n  other:\n    egress:\n      allow:\n{rules}\n"
    )
}

fn host_rule(host: &str, port: u16) -> String {
    format!("        - host: \"{host}\"\n          ports: [{port}]\n          protocols: [tcp]")
}

fn config(upstream: &TestDns, extra: &str) -> String {
    format!("dns:\n  upstream: [\"{}\"]\n{extra}", upstream.addr)
}

fn start(upstream: &TestDns, rules: &str, extra: &str) -> Daemon {
    Daemon::start_with_config(&policy(rules), &config(upstream, extra))
}

/// Waits until `check` holds, up to the deadline.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + deadline();
    while !check() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn dns_an_allowed_name_resolves_connects_on_its_ports_and_events_name_it() {
    let upstream = TestDns::start(60);
    let (_l, port) = tcp_listener("127.0.0.1");
    let other = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let other_port = other.local_addr().unwrap().port();
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    // The C library's resolver, configured for whatever /etc/resolv.conf names.
    let resolved = cage.op("resolve allowed.test");
    assert!(
        resolved.starts_with("ok ") && resolved.contains("127.0.0.1"),
        "{resolved}"
    );
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert_eq!(
        cage.op(&format!("connect 127.0.0.1:{other_port}")),
        EPERM,
        "a port the rule does not list"
    );
    let dns = events.wait_event("the dns event", |e| {
        e["kind"] == "dns" && e["name"] == "allowed.test" && e["qtype"] == "A"
    });
    assert_eq!(dns["verdict"], "allow");
    assert_eq!(dns["rule"], "egress.allow[0]");
    assert_eq!(dns["answers"][0], "127.0.0.1");
    let allow = events.wait_event("the allow event", |e| {
        e["kind"] == "egress" && e["verdict"] == "allow"
    });
    assert_eq!(allow["dst_name"], "allowed.test");
    assert_eq!(allow["dst_addr"], "127.0.0.1");
    assert_eq!(allow["dst_port"], port);
    // The grant's event is numbered before the connect that used it (it is published just
    // after the answer, with the number taken at the grant).
    let seq = |e: &serde_json::Value| e["agent_seq"].as_u64().unwrap_or(0);
    assert!(0 < seq(&dns) && seq(&dns) < seq(&allow), "{dns}\n{allow}");
    let deny = events.wait_event("the deny event", |e| {
        e["kind"] == "egress" && e["verdict"] == "deny"
    });
    assert_eq!(deny["dst_port"], other_port);
    assert!(upstream.asked("allowed.test"));
    drop(cage);
    daemon.stop();
}

#[test]
fn dns_names_no_rule_allows_and_other_types_are_refused_and_never_sent_upstream() {
    let upstream = TestDns::start(60);
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    let denied = cage.op("dns 127.0.0.2:53 denied.test A");
    assert!(denied.starts_with("ok REFUSED"), "{denied}");
    assert!(cage.op("resolve denied.test").starts_with("err"));
    let txt = cage.op("dns 127.0.0.2:53 allowed.test TXT");
    assert!(txt.starts_with("ok REFUSED"), "{txt}");
    // Names through a CNAME target are not allowed by the alias's rule.
    let target = cage.op("dns 127.0.0.2:53 target.elsewhere.test A");
    assert!(target.starts_with("ok REFUSED"), "{target}");
    let e = events.wait_event("the refusal", |e| {
        e["kind"] == "dns" && e["name"] == "denied.test"
    });
    assert_eq!(
        (e["verdict"].as_str(), e["rule"].as_str()),
        (Some("deny"), Some("dns-name-not-allowed"))
    );
    let e = events.wait_event("the type refusal", |e| {
        e["kind"] == "dns" && e["qtype"] == "TXT"
    });
    assert_eq!(e["rule"], "dns-query-type");
    // `agentcage top` lists the refusals among the recent denials, by name.
    let out = daemon
        .cli()
        .args(["top", "--once"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let view = String::from_utf8_lossy(&out.stdout);
    assert!(
        view.lines()
            .any(|l| l.contains("dns udp denied.test A") && l.contains("dns-name-not-allowed")),
        "{view}"
    );
    assert!(
        upstream.received().iter().all(|r| r.name != "denied.test"
            && r.qtype != "TXT"
            && r.name != "target.elsewhere.test"),
        "refused queries reached the upstream: {:?}",
        upstream.received()
    );
    drop(cage);
    daemon.stop();
}

#[test]
fn dns_a_cname_chain_grants_its_addresses_under_the_allowed_name_only() {
    let upstream = TestDns::start(60);
    let listener = tcp_listener_at("127.0.0.4", 0);
    let port = listener.local_addr().unwrap().port();
    let daemon = start(&upstream, &host_rule("alias.allowed.test", port), "");
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    let a = cage.op("dns 127.0.0.2:53 alias.allowed.test A");
    assert!(a.starts_with("ok NOERROR 127.0.0.4"), "{a}");
    assert_eq!(cage.op(&format!("connect 127.0.0.4:{port}")), "ok");
    let allow = events.wait_event("the allow", |e| {
        e["kind"] == "egress" && e["verdict"] == "allow"
    });
    assert_eq!(allow["dst_name"], "alias.allowed.test");
    drop(cage);
    daemon.stop();
}

/// A fresh loopback address for a listener on port 53 (the tests of other suites, or other
/// sessions, may hold 127.0.0.2:53).
fn port53_listeners() -> (String, UdpSocket, TcpListener) {
    for i in 0..200u32 {
        let ip = format!("127.53.{}.{}", std::process::id() % 200, 10 + i);
        if let (Ok(u), Ok(t)) = (
            UdpSocket::bind((ip.as_str(), 53)),
            TcpListener::bind((ip.as_str(), 53)),
        ) {
            u.set_nonblocking(true).unwrap();
            t.set_nonblocking(true).unwrap();
            return (ip, u, t);
        }
    }
    panic!("no free loopback address for port 53");
}

#[test]
fn dns_queries_to_any_address_over_udp_or_tcp_reach_agentcage_and_answers_come_from_where_asked() {
    let upstream = TestDns::start(60);
    let (_l, port) = tcp_listener("127.0.0.1");
    let (ip, udp, tcp) = port53_listeners();
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let mut cage = daemon.serve_in("tester");
    for mode in ["udp", "connected", "tcp"] {
        let got = cage.op(&format!("dns {ip}:53 allowed.test A {mode}"));
        assert!(got.starts_with("ok NOERROR 127.0.0.1"), "{mode}: {got}");
        assert!(
            got.ends_with(&format!("from={ip}:53")),
            "{mode}: the answer's source: {got}"
        );
    }
    let v6 = cage.op("dns [::1]:53 allowed.test AAAA");
    assert!(
        v6.starts_with("ok NOERROR ::1") && v6.ends_with("from=[::1]:53"),
        "{v6}"
    );
    let mut buf = [0u8; 512];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "the listener at {ip}:53 got a datagram"
    );
    assert!(
        tcp.accept().is_err(),
        "the listener at {ip}:53 got a connection"
    );
    drop(cage);
    daemon.stop();
}

/// The wildcard is judged as the address it reaches (loopback here) before DNS is
/// recognized: a query to 0.0.0.0:53 or [::]:53 still goes to the cage's resolver, and its
/// answer comes from where the kernel would have sent it.
#[test]
fn dns_queries_to_the_wildcard_address_reach_agentcage_too() {
    let upstream = TestDns::start(60);
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let mut cage = daemon.serve_in("tester");
    for mode in ["udp", "connected", "tcp"] {
        let got = cage.op(&format!("dns 0.0.0.0:53 allowed.test A {mode}"));
        assert!(
            got.starts_with("ok NOERROR 127.0.0.1") && got.ends_with("from=127.0.0.1:53"),
            "{mode}: {got}"
        );
    }
    let v6 = cage.op("dns [::]:53 allowed.test AAAA");
    assert!(
        v6.starts_with("ok NOERROR ::1") && v6.ends_with("from=[::1]:53"),
        "{v6}"
    );
    drop(cage);
    daemon.stop();
}

#[test]
fn dns_an_address_nobody_resolved_or_whose_ttl_passed_is_denied() {
    let upstream = TestDns::start(1);
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = start(
        &upstream,
        &host_rule("allowed.test", port),
        "  min_ttl: 1s\n",
    );
    let mut cage = daemon.serve_in("tester");
    assert_eq!(
        cage.op(&format!("connect 127.0.0.1:{port}")),
        EPERM,
        "before any resolution"
    );
    assert!(cage
        .op("dns 127.0.0.2:53 allowed.test A")
        .starts_with("ok NOERROR"));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    eventually("the grant to expire", || {
        cage.op(&format!("connect 127.0.0.1:{port}")) == EPERM
    });
    drop(cage);
    daemon.stop();
}

#[test]
fn dns_another_cage_cannot_use_what_one_resolved() {
    let upstream = TestDns::start(60);
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let mut first = daemon.serve_in("tester");
    let mut second = daemon.serve_in("other");
    assert!(first
        .op("dns 127.0.0.2:53 allowed.test A")
        .starts_with("ok NOERROR"));
    assert_eq!(first.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert_eq!(second.op(&format!("connect 127.0.0.1:{port}")), EPERM);
    drop((first, second));
    daemon.stop();
}

/// How many times the upstream was asked for `name`/`qtype`.
fn asked_times(upstream: &TestDns, name: &str, qtype: &str) -> usize {
    upstream
        .received()
        .iter()
        .filter(|r| r.name == name && r.qtype == qtype)
        .count()
}

/// A name asked again within its TTL is answered from the cage's own cache (upstream is
/// asked once, the event says so), and the address still connects; another cage has a cache
/// of its own, so it cannot tell by timing what the first one resolved.
#[test]
fn dns_a_name_asked_again_is_answered_from_the_cages_own_cache() {
    let upstream = TestDns::start(60);
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let events = daemon.follow_events();
    let mut first = daemon.serve_in("tester");
    for _ in 0..3 {
        let answer = first.op("dns 127.0.0.2:53 allowed.test A");
        assert!(answer.starts_with("ok NOERROR 127.0.0.1"), "{answer}");
    }
    assert_eq!(asked_times(&upstream, "allowed.test", "A"), 1);
    let cached = events.wait_event("a dns event answered from the cache", |e| {
        e["kind"] == "dns" && e["name"] == "allowed.test" && e["cached"] == true
    });
    assert_eq!(cached["verdict"], "allow");
    assert_eq!(cached["answers"][0], "127.0.0.1");
    assert_eq!(first.op(&format!("connect 127.0.0.1:{port}")), "ok");
    // AAAA is another question: asked upstream in its own right.
    assert!(first
        .op("dns 127.0.0.2:53 allowed.test AAAA")
        .starts_with("ok NOERROR ::1"));
    assert_eq!(asked_times(&upstream, "allowed.test", "AAAA"), 1);

    let mut second = daemon.serve_in("other");
    assert!(second
        .op("dns 127.0.0.2:53 allowed.test A")
        .starts_with("ok NOERROR 127.0.0.1"));
    assert_eq!(asked_times(&upstream, "allowed.test", "A"), 2);
    assert_eq!(second.op(&format!("connect 127.0.0.1:{port}")), "ok");
    drop((first, second));
    daemon.stop();
}

/// An answer from the cache is granted again when its grant went meanwhile (evicted past
/// the cage's bound): the cache never answers with an address the kernel would refuse.
#[test]
fn dns_an_answer_from_the_cache_whose_grant_was_evicted_is_granted_again() {
    let upstream = TestDns::start(600);
    let first = tcp_listener_at("127.1.0.1", 0);
    let port = first.local_addr().unwrap().port();
    let _second = tcp_listener_at("127.1.0.2", port);
    let daemon = start(
        &upstream,
        &host_rule("*.wild.test", port),
        "  max_grants: 1\n",
    );
    let mut cage = daemon.serve_in("tester");
    let resolve = |cage: &mut harness::Served, n: u32| {
        let answer = cage.op(&format!("dns 127.0.0.2:53 n{n}.wild.test A"));
        assert!(
            answer.starts_with(&format!("ok NOERROR 127.1.0.{n}")),
            "{answer}"
        );
    };
    resolve(&mut cage, 1);
    resolve(&mut cage, 2);
    assert_eq!(
        cage.op(&format!("connect 127.1.0.1:{port}")),
        EPERM,
        "n1's grant was evicted by n2's"
    );
    resolve(&mut cage, 1);
    assert_eq!(
        asked_times(&upstream, "n1.wild.test", "A"),
        1,
        "from the cache"
    );
    assert_eq!(cage.op(&format!("connect 127.1.0.1:{port}")), "ok");
    drop(cage);
    daemon.stop();
}

#[test]
fn dns_a_reload_that_removes_the_rule_revokes_its_grants_at_once() {
    let upstream = TestDns::start(600);
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let mut cage = daemon.serve_in("tester");
    assert!(cage
        .op("dns 127.0.0.2:53 allowed.test A")
        .starts_with("ok NOERROR"));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    let out = daemon.rewrite_policy(&policy(&host_rule("other.test", port)));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        cage.op(&format!("connect 127.0.0.1:{port}")),
        EPERM,
        "right after the reload"
    );
    drop(cage);
    daemon.stop();
}

#[test]
fn dns_ten_thousand_names_keep_memory_bounded_and_evict_the_oldest() {
    let upstream = TestDns::start(600);
    let first = tcp_listener_at("127.1.0.0", 0);
    let port = first.local_addr().unwrap().port();
    let _last = tcp_listener_at("127.1.39.15", port);
    let daemon = start(
        &upstream,
        &host_rule("*.wild.test", port),
        "  max_grants: 1000\n",
    );
    let mut cage = daemon.serve_in("tester");
    for from in (0..10_000).step_by(1000) {
        assert_eq!(cage.op(&format!("resolve-many {from} 1000")), "ok 1000");
    }
    let status = daemon.status();
    let me = &status["agents"][0];
    assert_eq!(me["dns_grants"], 1000, "{status}");
    assert_eq!(me["dns_evicted"], 9000, "{status}");
    assert_eq!(
        cage.op(&format!("connect 127.1.0.0:{port}")),
        EPERM,
        "the oldest grant is gone"
    );
    assert_eq!(
        cage.op(&format!("connect 127.1.39.15:{port}")),
        "ok",
        "the newest stays"
    );
    drop(cage);
    daemon.stop();
}

#[test]
fn dns_a_restarted_daemon_keeps_the_cage_resolving_and_its_grants() {
    let upstream = TestDns::start(600);
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = start(&upstream, &host_rule("allowed.test", port), "");
    let mut cage = daemon.serve_in("tester");
    assert!(cage.op("resolve allowed.test").starts_with("ok "));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    let (dir, policy, socket, name) = daemon.stop_keeping_paths();
    let config = dir.path().join("config.yaml").display().to_string();
    let daemon = Daemon::start_with(dir, policy, socket, name, &["--config", &config]).unwrap();
    // What was resolved before the restart is still granted.
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert!(cage.op("resolve allowed.test").starts_with("ok "));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    drop(cage);
    daemon.stop();
}
