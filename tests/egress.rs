//! Egress enforcement, end to end: the real daemon, real cages, real sockets on loopback.
//! 127.0.0.1 (and ::1) are allowed where the policy says so; 127.0.0.2 and other loopback
//! addresses stand in for denied destinations.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::harness;

use std::{io::ErrorKind, net::TcpStream};

use harness::{listener_pair, stdout, tcp_listener, tcp_listener_at, udp_listener, Daemon};

const EPERM: &str = "err 1";

fn policy(agent_rules: &str) -> String {
    format!(
        "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n{agent_rules}\n      allow_events: all\n"
    )
}

#[test]
fn tcp_connect_allowed_and_denied_with_a_deny_event_naming_the_rule() {
    let (_ok_listener, port) = tcp_listener("127.0.0.1");
    let _denied_listener = tcp_listener_at("127.0.0.2", port);
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: 127.0.0.1/32\n          ports: [{port}]\n          protocols: [tcp]"
    )));
    let events = daemon.follow_events();

    let allowed = daemon.probe_in("tester", &["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(stdout(&allowed), "ok", "{allowed:?}");
    assert!(allowed.status.success());

    let denied = daemon.probe_in("tester", &["connect", &format!("127.0.0.2:{port}")]);
    assert_eq!(
        stdout(&denied),
        EPERM,
        "a denied connect must fail with EPERM: {denied:?}"
    );
    // The probe exits with the errno and `agentcage run` passes the status on.
    assert_eq!(denied.status.code(), Some(1));

    let allow = events.wait_event("the allow event", |e| {
        e["kind"] == "egress" && e["verdict"] == "allow"
    });
    assert_eq!(allow["agent"], "agent:tester");
    assert_eq!(allow["rule"], "egress.allow[0]");
    assert_eq!(allow["dst_addr"], "127.0.0.1");
    assert_eq!(allow["dst_port"], port);
    let deny = events.wait_event("the deny event", |e| {
        e["kind"] == "egress" && e["verdict"] == "deny"
    });
    assert_eq!(deny["agent"], "agent:tester");
    assert_eq!(deny["rule"], "default-deny");
    // With BPF LSM active (deny tier) its socket_connect hook refuses first.
    let deciding_hook = if daemon.status()["tier"] == "deny" {
        "lsm_socket_connect"
    } else {
        "connect4"
    };
    assert_eq!(deny["hook"], deciding_hook);
    assert_eq!(deny["protocol"], "tcp");
    assert_eq!(deny["dst_addr"], "127.0.0.2");
    assert_eq!(deny["dst_port"], port);
    assert_eq!(deny["comm"], "probe");
    assert!(deny["pid"].as_u64().unwrap() > 0);
    assert!(deny["cgroup_id"].as_u64().unwrap() > 0);
    assert_eq!(deny["policy_hash"].as_str().unwrap().len(), 64);
    assert!(deny["kernel_ts_ns"].as_u64().unwrap() > allow["kernel_ts_ns"].as_u64().unwrap());
    daemon.stop();
}

#[test]
fn udp_datagrams_reach_allowed_listeners_only() {
    let (allowed_rx, allowed_port) = udp_listener("127.0.0.1");
    let (denied_rx, denied_port) = udp_listener("127.0.0.2");
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: 127.0.0.1/32\n          ports: [{allowed_port}]\n          protocols: [udp]"
    )));

    let sent = daemon.probe_in(
        "tester",
        &["udp", &format!("127.0.0.1:{allowed_port}"), "hello"],
    );
    assert_eq!(stdout(&sent), "ok");
    let mut buf = [0u8; 64];
    // Loopback delivery completes inside sendto, and the probe has exited: it is queued.
    let (n, _) = allowed_rx
        .recv_from(&mut buf)
        .expect("allowed datagram arrived");
    assert_eq!(&buf[..n], b"hello");

    for op in ["udp", "udp-connected"] {
        let denied = daemon.probe_in("tester", &[op, &format!("127.0.0.2:{denied_port}"), "leak"]);
        assert_eq!(stdout(&denied), EPERM, "{op}: {denied:?}");
    }
    // Protocol matters: the UDP-only rule does not admit TCP to the same address and port.
    let tcp = daemon.probe_in("tester", &["connect", &format!("127.0.0.1:{allowed_port}")]);
    assert_eq!(stdout(&tcp), EPERM, "{tcp:?}");
    let err = denied_rx
        .recv_from(&mut buf)
        .expect_err("nothing may reach the denied listener");
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    daemon.stop();
}

#[test]
fn ipv4_mapped_ipv6_is_judged_as_ipv4() {
    let (_listeners, port) = listener_pair();
    let (udp_ok, uport) = udp_listener("127.0.0.1");
    let (udp_denied, uport2) = udp_listener("127.0.0.2");
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: 127.0.0.1/32\n          ports: [{port}, {uport}]"
    )));
    let mut cage = daemon.serve_in("tester");
    // connect6 and sendmsg6 both see the mapped address and judge it by the IPv4 list.
    assert_eq!(cage.op(&format!("connect [::ffff:127.0.0.1]:{port}")), "ok");
    assert_eq!(
        cage.op(&format!("connect [::ffff:127.0.0.2]:{port}")),
        EPERM
    );
    assert_eq!(
        cage.op(&format!("udp [::ffff:127.0.0.1]:{uport} mapped")),
        "ok"
    );
    assert_eq!(
        cage.op(&format!("udp [::ffff:127.0.0.2]:{uport2} leak")),
        EPERM
    );
    let mut buf = [0u8; 16];
    let (n, _) = udp_ok
        .recv_from(&mut buf)
        .expect("the allowed mapped datagram arrived");
    assert_eq!(&buf[..n], b"mapped");
    assert_eq!(
        udp_denied.recv_from(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    cage.finish();
    daemon.stop();
}

#[test]
fn ipv6_rules_apply_to_ipv6_destinations() {
    let (_l, port) = tcp_listener("::1");
    // A port other than the allowed one: bind(0) on another address may hand out the same
    // number, and [::1] on the allowed port is allowed.
    let (_l4, port4) = std::iter::repeat_with(|| tcp_listener("127.0.0.1"))
        .find(|&(_, p)| p != port)
        .unwrap();
    // ::1 allowed on one port; IPv4 loopback not listed at all.
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: ::1/128\n          ports: [{port}]\n          protocols: [tcp]"
    )));
    let ok = daemon.probe_in("tester", &["connect", &format!("[::1]:{port}")]);
    assert_eq!(stdout(&ok), "ok", "{ok:?}");
    let other_port = daemon.probe_in("tester", &["connect", &format!("[::1]:{port4}")]);
    assert_eq!(stdout(&other_port), EPERM);
    // Loopback is not special: unlisted IPv4 loopback is denied.
    let v4 = daemon.probe_in("tester", &["connect", &format!("127.0.0.1:{port4}")]);
    assert_eq!(stdout(&v4), EPERM);
    daemon.stop();
}

#[test]
fn raw_and_packet_sockets_are_refused_in_the_cage_only() {
    let daemon = Daemon::start(&policy("        - cidr: 127.0.0.1/32"));
    for op in ["raw", "packet"] {
        let caged = daemon.probe_in("tester", &[op]);
        assert_eq!(stdout(&caged), EPERM, "{op} in the cage: {caged:?}");
        let outside = std::process::Command::new(harness::probe())
            .arg(op)
            .output_bounded()
            .unwrap();
        assert_eq!(
            stdout(&outside),
            "ok",
            "{op} outside any cage (as root): {outside:?}"
        );
    }
    daemon.stop();
}

#[test]
fn raw_sockets_can_be_allowed_by_policy() {
    let daemon = Daemon::start(
        // Raw sockets need CAP_NET_RAW, which only a root agent keeps.
        "version: 1\nagents:\n  tester:\n    run_as: root\n    egress:\n      allow: []\n      raw_sockets: true\n",
    );
    let caged = daemon.probe_in("tester", &["raw"]);
    assert_eq!(stdout(&caged), "ok", "{caged:?}");
    daemon.stop();
}

#[test]
fn children_are_caged_and_outsiders_are_not() {
    let (_listeners, port) = listener_pair();
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: 127.0.0.1/32\n          ports: [{port}]"
    )));
    // A child forked after caging inherits the cage.
    let denied = daemon.probe_in("tester", &["fork-connect", &format!("127.0.0.2:{port}")]);
    assert_eq!(stdout(&denied), EPERM, "{denied:?}");
    let allowed = daemon.probe_in("tester", &["fork-connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(stdout(&allowed), "ok", "{allowed:?}");
    // This test process is in no cage: the daemon's programs leave it alone.
    TcpStream::connect(("127.0.0.2", port)).expect("uncaged connect to 127.0.0.2 works");
    daemon.stop();
}

#[test]
fn cidr_edges_are_exact() {
    // 127.0.1.0/30 holds .0 to .3; .255 before it and .4 after it are outside.
    let (_first, port) = tcp_listener("127.0.1.0");
    let _last = tcp_listener_at("127.0.1.3", port);
    let _before = tcp_listener_at("127.0.0.255", port);
    let _after = tcp_listener_at("127.0.1.4", port);
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: 127.0.1.0/30\n          ports: [{}-{port}]\n          protocols: [tcp]",
        port - 1
    )));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.1.0:{port}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.1.3:{port}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.255:{port}")), EPERM);
    assert_eq!(cage.op(&format!("connect 127.0.1.4:{port}")), EPERM);
    // Port edges: the range's top is in, one above is out (nothing listens there, so an
    // allowed connect is refused by the stack, ECONNREFUSED = 111, not by the policy).
    assert_eq!(
        cage.op(&format!("connect 127.0.1.0:{}", port - 1)),
        "err 111"
    );
    if port < u16::MAX {
        assert_eq!(cage.op(&format!("connect 127.0.1.0:{}", port + 1)), EPERM);
    }
    assert!(cage.finish().success());
    daemon.stop();
}

#[test]
fn longest_prefix_match_still_sees_broader_rules() {
    // A narrow rule for one port must not hide a broad rule for another.
    let (_l, port) = tcp_listener("127.0.0.1");
    // TCP and UDP number their ports apart: a UDP port equal to the TCP one would be allowed.
    let (_u, uport) = std::iter::repeat_with(|| udp_listener("127.0.0.1"))
        .find(|&(_, p)| p != port)
        .unwrap();
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: 127.0.0.0/8\n          ports: [{uport}]\n          protocols: [udp]\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n          protocols: [tcp]"
    )));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert_eq!(cage.op(&format!("udp 127.0.0.1:{uport} x")), "ok");
    assert_eq!(cage.op(&format!("udp 127.0.0.1:{port} x")), EPERM);
    cage.finish();
    daemon.stop();
}

#[test]
fn allow_events_none_reports_denials_only() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n      allow_events: none\n"
    ));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), EPERM);
    // Events arrive in order through one ring buffer: the first one is the denial.
    let first = events.wait_event("the first decision", |e| e["kind"] == "egress");
    assert_eq!(first["verdict"], "deny", "{first}");
    // The allowed connect was still counted.
    let status = daemon.status();
    assert_eq!(status["agents"][0]["allowed"], 1, "{status}");
    assert_eq!(status["agents"][0]["denied"], 1, "{status}");
    cage.finish();
    daemon.stop();
}

#[test]
fn packets_with_routing_headers_are_dropped_even_to_allowed_destinations() {
    let (_u, port) = udp_listener("::1");
    let daemon = Daemon::start(&policy("        - cidr: ::1/128"));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("udp [::1]:{port} plain")), "ok");
    // The judged address is allowed, but a routing header could take the packet anywhere.
    assert_eq!(cage.op(&format!("udp6-rthdr [::1]:{port} routed")), EPERM);
    let drop = events.wait_event("the drop", |e| e["hook"] == "skb_egress");
    assert_eq!(drop["verdict"], "deny");
    assert_eq!(drop["rule"], "routing-header");
    assert_eq!(drop["dst_addr"], "::1");
    assert_eq!(drop["agent"], "agent:tester");
    cage.finish();
    // Outside any cage the same send goes out.
    let outside = std::process::Command::new(harness::probe())
        .args(["udp6-rthdr", &format!("[::1]:{port}"), "routed"])
        .output_bounded()
        .unwrap();
    assert_eq!(stdout(&outside), "ok");
    daemon.stop();
}

/// Issue 11, case 2: with an allow rule `0.0.0.0/5` (the first line of the usual "public IPv4
/// only" lists), a connect to 0.0.0.0 reached a server on 127.0.0.1: the hook judged the
/// literal address, the kernel then sent it to the local host. Now the wildcard (and `::`,
/// and `::ffff:0.0.0.0`) is judged as the address it reaches: the socket's bound address,
/// else loopback.
#[test]
fn the_wildcard_address_is_judged_as_the_address_it_reaches() {
    let (_pair, port) = listener_pair();
    let (_other, other) = tcp_listener("127.0.0.1");
    let (_v6, port6) = tcp_listener("::1");
    let (_v6_other, other6) = tcp_listener("::1");
    let (udp_rx, uport) = udp_listener("127.0.0.1");
    let daemon = Daemon::start(&policy(&format!(
        "        - cidr: 0.0.0.0/5\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n        - cidr: ::/128\n        - cidr: ::1/128\n          ports: [{port6}]"
    )));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");

    // 127.0.0.1 on the port its own rule names: allowed, and reported as 127.0.0.1.
    assert_eq!(cage.op(&format!("connect 0.0.0.0:{port}")), "ok");
    let e = events.wait_event("the allowed wildcard connect", |e| {
        e["kind"] == "egress" && e["dst_port"] == port
    });
    assert_eq!(e["dst_addr"], "127.0.0.1", "{e}");
    assert_eq!(e["rule"], "egress.allow[1]");
    // Any other local port: 0.0.0.0/5 does not hold 127.0.0.1.
    for target in [
        format!("0.0.0.0:{other}"),
        format!("[::ffff:0.0.0.0]:{other}"),
    ] {
        assert_eq!(cage.op(&format!("connect {target}")), EPERM, "{target}");
    }
    let e = events.wait_event("the refused wildcard connect", |e| {
        e["verdict"] == "deny" && e["dst_port"] == other
    });
    assert_eq!(e["dst_addr"], "127.0.0.1", "{e}");
    // Bound to 127.0.0.2, the wildcard reaches 127.0.0.2.
    assert_eq!(
        cage.op(&format!("connect-from 127.0.0.2 0.0.0.0:{port}")),
        EPERM
    );
    let e = events.wait_event("the refused bound connect", |e| {
        e["verdict"] == "deny" && e["dst_addr"] == "127.0.0.2"
    });
    assert_eq!(e["dst_port"], port, "{e}");
    // `::` is ::1.
    assert_eq!(cage.op(&format!("connect [::]:{port6}")), "ok");
    assert_eq!(cage.op(&format!("connect [::]:{other6}")), EPERM);
    // Datagrams too.
    assert_eq!(cage.op(&format!("udp 0.0.0.0:{uport} leak")), EPERM);
    let mut buf = [0u8; 16];
    assert_eq!(
        udp_rx.recv_from(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing reached the local UDP server"
    );
    cage.finish();
    daemon.stop();
}
