//! Budgets and application events, end to end: a token budget breach throttles egress in
//! the kernel (verdict `budget`) and then pauses the cage (its processes make no progress);
//! an application-event sender can speak only for its own cage.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::harness;

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use harness::{stderr, tcp_listener, Daemon};

fn budgeted(port: u16) -> String {
    format!(
        "version: 1
agents:
  spender:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{port}]
          protocols: [tcp]
    budgets:
      tokens: {{soft: 50, hard: 100}}
    containment:
      on_budget: paused
      budget_grace: 1h
  bystander:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{port}]
          protocols: [tcp]
"
    )
}

fn model_call(tokens: u64) -> String {
    format!(
        r#"ctl-send {{"event":{{"app":"model_call","model":"m","input_tokens":{tokens},"output_tokens":0,"cost_usd":0.5,"queue_ms":3,"model_ms":40}}}}"#
    )
}

#[test]
fn a_token_budget_breach_throttles_egress_then_pauses_the_cage() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&budgeted(port));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("spender");
    let dst = format!("connect 127.0.0.1:{port}");
    assert_eq!(cage.op(&dst), "ok");
    let app = daemon.app_socket();
    assert_eq!(cage.op(&format!("ctl-connect {}", app.display())), "ok");

    let answer = cage.op(&model_call(60));
    assert!(answer.contains(r#""decision":"allow""#), "{answer}");
    // The event first, then what it caused.
    let app_event = events.wait_event("the model call", |e| e["kind"] == "app");
    assert_eq!(app_event["app"], "model_call");
    assert_eq!(app_event["agent"], "agent:spender");
    assert_eq!(app_event["input_tokens"], 60);
    let soft = events.wait_event("the soft alert", |e| e["kind"] == "budget");
    assert_eq!(soft["level"], "soft");
    assert_eq!(soft["budget"], "tokens");

    let _ = cage.op(&model_call(60));
    let hard = events.wait_event("the hard limit", |e| {
        e["kind"] == "budget" && e["level"] == "hard"
    });
    assert_eq!(hard["value"], 120.0);
    assert_eq!(hard["limit"], 100.0);
    // Throttled: tool calls are refused, and the kernel denies new egress.
    let tool = cage.op(r#"ctl-send {"event":{"app":"tool_call","name":"search","phase":"start"}}"#);
    assert!(tool.contains(r#""reason":"budget""#), "{tool}");
    // The pause follows the denied attempt so closely that the probe may be frozen before
    // it prints its answer: the events tell what happened.
    cage.send(&dst);
    let e = events.wait_event("the budget verdict", |e| {
        e["kind"] == "egress" && e["verdict"] == "budget"
    });
    assert_eq!(e["rule"], "budget");
    // ...and then the policy's rung: paused.
    let c = events.wait_event("the pause", |e| e["kind"] == "containment");
    assert_eq!(c["rung"], "paused");
    assert_eq!(c["reason"], "budget: new egress while throttled");
    let cg = daemon.cgroup_root().join("spender");
    let frozen = fs::read_to_string(cg.join("cgroup.events")).unwrap();
    assert!(frozen.lines().any(|l| l == "frozen 1"), "{frozen}");
    // Frozen: a second attempt gets no answer (the first may have answered before the
    // freeze, and then only with the denial).
    cage.send(&dst);
    let mut answers = Vec::new();
    while let Some(line) = cage.out.next_within(Duration::from_millis(500)) {
        answers.push(line);
    }
    assert!(
        answers.len() <= 1 && answers.iter().all(|a| a == "err 1"),
        "a paused agent makes no progress: {answers:?}"
    );
    // Other agents are not affected.
    let other = daemon.probe_in("bystander", &["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(harness::stdout(&other), "ok");

    let out = daemon
        .cli()
        .args(["kill", "spender"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    cage.finish();
    daemon.stop();
}

#[test]
fn an_app_event_sender_cannot_speak_for_another_cage() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&budgeted(port));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("spender");
    let other = daemon.serve_in("bystander");
    let app = daemon.app_socket();
    assert_eq!(cage.op(&format!("ctl-connect {}", app.display())), "ok");

    let plan = |agent: &str| {
        format!(r#"ctl-send {{"agent":"{agent}","event":{{"app":"plan","summary":"x"}}}}"#)
    };
    let refused = cage.op(&plan("bystander"));
    assert!(
        refused.contains("is in the cage of agent:spender, so it cannot speak for agent:bystander"),
        "{refused}"
    );
    let accepted = cage.op(&plan("spender"));
    assert!(accepted.contains(r#""type":"accepted""#), "{accepted}");
    let e = events.wait_event("the plan", |e| e["kind"] == "app");
    assert_eq!(e["agent"], "agent:spender");
    assert_eq!(e["app"], "plan");
    assert_eq!(e["pid"], cage.pid);

    // From outside every cage: refused, whoever it claims to be.
    let mut s = BufReader::new(UnixStream::connect(&app).unwrap());
    writeln!(
        s.get_mut(),
        r#"{{"agent":"spender","event":{{"app":"plan"}}}}"#
    )
    .unwrap();
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    assert!(line.contains("is in no agentcage cage"), "{line}");

    // Malformed events are refused with the reason.
    let bad = cage.op(r#"ctl-send {"event":{"app":"model_call","model":"m","cost_usd":-1}}"#);
    assert!(bad.contains("cost_usd must be a number from 0"), "{bad}");
    cage.finish();
    other.finish();
    daemon.stop();
}

#[test]
fn a_repeated_tool_call_is_a_loop() {
    let policy = "version: 1
agents:
  looper:
    budgets:
      loop: {repeats: 3, window: 1h}
    containment:
      budget_grace: 1h
";
    let daemon = Daemon::start(policy);
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("looper");
    let app = daemon.app_socket();
    assert_eq!(cage.op(&format!("ctl-connect {}", app.display())), "ok");
    let call = r#"ctl-send {"event":{"app":"tool_call","name":"search","args_digest":"sha256:ab","phase":"start"}}"#;
    for _ in 0..2 {
        assert!(cage.op(call).contains(r#""decision":"allow""#));
    }
    let third = cage.op(call);
    assert!(third.contains(r#""reason":"budget""#), "{third}");
    let e = events.wait_event("the loop breach", |e| e["kind"] == "budget");
    assert_eq!(e["budget"], "loop");
    assert_eq!(e["level"], "hard");
    cage.finish();
    daemon.stop();
}

#[test]
fn agentcage_event_reports_from_inside_the_cage() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&budgeted(port));
    let events = daemon.follow_events();
    let app = daemon.app_socket();
    let out = daemon
        .cli()
        .args(["run", "--agent", "spender", "--", harness::agentcage()])
        .arg("--app-socket")
        .arg(&app)
        .args([
            "event",
            "model-call",
            "big-model",
            "--input-tokens",
            "7",
            "--output-tokens",
            "3",
            "--cost-usd",
            "0.02",
            "--queue-ms",
            "5",
            "--model-ms",
            "120",
        ])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(harness::stdout(&out).contains(r#""decision":"allow""#));
    let e = events.wait_event("the model call", |e| e["kind"] == "app");
    assert_eq!(e["model"], "big-model");
    assert_eq!(e["output_tokens"], 3);
    assert_eq!(e["queue_ms"], 5.0);
    assert_eq!(e["model_ms"], 120.0);
    assert_eq!(e["agent"], "agent:spender");

    // Outside every cage the same command is refused.
    let outside = daemon
        .cli()
        .arg("--app-socket")
        .arg(&app)
        .args(["event", "plan"])
        .output_bounded()
        .unwrap();
    harness::assert_refused(&outside, "is in no agentcage cage");
    daemon.stop();
}

#[test]
fn a_group_budget_is_shared_and_throttles_every_member() {
    let policy = "version: 1
agents:
  one:
    groups: [team]
  two:
    groups: [team]
  loner: {}
groups:
  team:
    budgets:
      usd: {hard: 1.0}
";
    let daemon = Daemon::start(policy);
    let events = daemon.follow_events();
    let app = daemon.app_socket();
    let mut cages: Vec<_> = ["one", "two", "loner"]
        .iter()
        .map(|a| {
            let mut c = daemon.serve_in(a);
            assert_eq!(c.op(&format!("ctl-connect {}", app.display())), "ok");
            c
        })
        .collect();
    // 0.5 + 0.5 USD: neither agent alone reaches the limit, the group does.
    for c in &mut cages[..2] {
        assert!(c.op(&model_call(1)).contains(r#""decision":"allow""#));
    }
    let e = events.wait_event("the group's breach", |e| {
        e["kind"] == "budget" && e["level"] == "hard"
    });
    assert_eq!(e["scope"], "group:team");
    assert_eq!(e["budget"], "usd");
    let v = daemon.status();
    let throttled = |name: &str| {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["throttled"]
            .as_bool()
            .unwrap()
    };
    assert!(throttled("one") && throttled("two"), "{v}");
    assert!(!throttled("loner"), "not in the group");
    for c in cages {
        c.finish();
    }
    daemon.stop();
}

#[test]
fn the_wall_clock_budget_runs_out_by_itself() {
    let policy = "version: 1
agents:
  slow:
    budgets:
      wall_clock: {soft: 1s}
";
    let daemon = Daemon::start(policy);
    let events = daemon.follow_events();
    let cage = daemon.serve_in("slow");
    // No sleep: the daemon's clock does the waiting, the test waits for its event.
    let e = events.wait_event("the wall-clock alert", |e| e["kind"] == "budget");
    assert_eq!(e["budget"], "wall_clock");
    assert_eq!(e["level"], "soft");
    assert!(e["value"].as_f64().unwrap() >= 1.0);
    cage.finish();
    daemon.stop();
}
