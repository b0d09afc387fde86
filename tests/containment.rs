//! The containment ladder and the kill switch, on real cgroups: read-only narrows egress in
//! the kernel, pause freezes (the processes make no progress) and writes a snapshot, resume
//! thaws, kill leaves no process alive and keeps the snapshot, `kill --all` kills every cage,
//! and an assertion violation contains the agent by itself.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::{harness, stall::Stall};

use std::{fs, path::Path, process::Stdio, time::Duration};

use harness::{stderr, stdout, tcp_listener, Daemon, Lines, DEADLINE};

/// Allows TCP to 127.0.0.1 at `ro` (kept in the read-only rung) and at `rw`.
fn two_ports(ro: u16, rw: u16) -> String {
    format!(
        "version: 1
agents:
  tester:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{ro}]
          protocols: [tcp]
          read_only: true
        - cidr: 127.0.0.1/32
          ports: [{rw}]
          protocols: [tcp]
  other:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{ro}]
          protocols: [tcp]
"
    )
}

fn cage_dir(daemon: &Daemon, agent: &str) -> std::path::PathBuf {
    daemon.cgroup_root().join(agent)
}

fn frozen(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "frozen 1"))
        .unwrap_or(false)
}

/// Whether process `pid` still runs (a zombie has died: it only waits to be reaped).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.get(s.rfind(')')? + 2..)?.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Waits (bounded) until process `pid` no longer runs.
fn wait_gone(pid: u32) {
    let deadline = std::time::Instant::now() + DEADLINE;
    // Polls the kernel's own answer; the wait ends the moment the process is dead.
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} still exists"
        );
        std::thread::yield_now();
    }
}

fn snapshot_path(out: &str) -> String {
    out.split("(snapshot ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no snapshot named in {out:?}"))
        .to_owned()
}

#[test]
fn read_only_rung_limits_egress_to_the_read_only_set_in_the_kernel() {
    let (_a, ro) = tcp_listener("127.0.0.1");
    let (_b, rw) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&two_ports(ro, rw));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{rw}")), "ok");

    let out = daemon
        .cli()
        .args(["contain", "tester", "read-only"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("observe -> read_only"),
        "{}",
        stdout(&out)
    );
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{ro}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{rw}")), "err 1");
    let status = daemon.status();
    assert_eq!(status["agents"][0]["rung"], "read_only");
    assert_eq!(status["agents"][0]["policy_hash"], status["policy_hash"]);

    // A reload keeps the rung, with the new policy's read-only set.
    let reload = daemon.rewrite_policy(&two_ports(rw, ro));
    assert!(reload.status.success(), "{}", stderr(&reload));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{rw}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{ro}")), "err 1");

    let back = daemon
        .cli()
        .args(["contain", "tester", "observe"])
        .output_bounded()
        .unwrap();
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{ro}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{rw}")), "ok");
    cage.finish();
    daemon.stop();
}

#[test]
fn pause_freezes_the_cage_and_resume_thaws_it() {
    let (_a, ro) = tcp_listener("127.0.0.1");
    let (_b, rw) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&two_ports(ro, rw));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{ro}")), "ok");

    let out = daemon
        .cli()
        .args(["pause", "tester"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let snap = snapshot_path(&stdout(&out));
    assert!(Path::new(&snap).is_file(), "{snap}");
    assert!(frozen(&cage_dir(&daemon, "tester")));

    // Frozen: an operation sent now gets no answer.
    cage.send(&format!("connect 127.0.0.1:{ro}"));
    assert_eq!(
        cage.out.next_within(Duration::from_millis(500)),
        None,
        "a paused agent must make no progress"
    );

    let out = daemon
        .cli()
        .args(["resume", "tester"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!frozen(&cage_dir(&daemon, "tester")));
    // The operation sent while frozen now completes.
    let answer = cage.out.wait_for("the answer after resume", |l| {
        l == "ok" || l.starts_with("err ")
    });
    assert_eq!(answer, "ok");
    cage.finish();
    daemon.stop();
}

#[test]
fn kill_leaves_no_process_of_the_cage_and_keeps_the_snapshot() {
    let (_a, ro) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&two_ports(ro, ro + 1));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{ro}")), "ok");
    // Events reach the daemon asynchronously: the snapshot can only hold those it has.
    events.wait_event("the allowed connect", |e| {
        e["kind"] == "egress" && e["dst_port"] == ro
    });
    // A second process in the cage: the kill must take every one.
    let child: u32 = cage
        .op("fork-hold")
        .strip_prefix("ok ")
        .and_then(|p| p.parse().ok())
        .expect("a child pid");
    let pid = cage.pid;
    let hash = {
        let v = daemon.status();
        v["policy_hash"].as_str().unwrap().to_owned()
    };

    let out = daemon
        .cli()
        .args(["kill", "tester"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let snap = snapshot_path(&stdout(&out));
    // The daemon answers once the cgroup is empty; the exiting tasks finish dying at once.
    wait_gone(pid);
    wait_gone(child);
    let status = cage.finish();
    assert_eq!(status.code(), Some(128 + 9), "the agent died of SIGKILL");
    let procs = cage_dir(&daemon, "tester").join("cgroup.procs");
    let left = fs::read_to_string(&procs).unwrap_or_default();
    assert!(left.trim().is_empty(), "processes left in the cage: {left}");

    let text = fs::read_to_string(&snap).expect("the snapshot stays on disk");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["agent"], "agent:tester");
    assert_eq!(v["rung"], "killed");
    assert_eq!(v["policy_hash"], hash.as_str());
    let procs = v["processes"].as_array().unwrap();
    let me = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("the probe is in the snapshot");
    let kid = procs
        .iter()
        .find(|p| p["pid"] == child)
        .expect("its child is in the snapshot");
    assert_eq!(kid["ppid"], pid, "the process tree");
    assert!(
        me["cmdline"][0].as_str().unwrap().ends_with("probe"),
        "{me}"
    );
    assert!(me["fds"].as_object().is_some_and(|f| !f.is_empty()));
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "egress" && e["dst_port"] == ro),
        "the agent's last events are in the snapshot"
    );
    let ev = events.wait_event("the containment event", |e| {
        e["kind"] == "containment" && e["rung"] == "killed"
    });
    assert_eq!(ev["snapshot"], snap.as_str());
    daemon.stop();
}

#[test]
fn kill_all_is_the_kill_switch() {
    let (_a, ro) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&two_ports(ro, ro + 1));
    let one = daemon.serve_in("tester");
    let two = daemon.serve_in("other");
    let out = daemon
        .cli()
        .args(["kill", "--all"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("agent:tester: observe -> killed"), "{text}");
    assert!(text.contains("agent:other: observe -> killed"), "{text}");
    for p in [one.pid, two.pid] {
        wait_gone(p);
    }
    assert_eq!(one.finish().code(), Some(137));
    assert_eq!(two.finish().code(), Some(137));
    // Neither a name with --all, nor nothing at all.
    let bad = daemon
        .cli()
        .args(["kill", "tester", "--all"])
        .output_bounded()
        .unwrap();
    assert!(!bad.status.success());
    daemon.stop();
}

#[test]
fn an_assertion_violation_contains_the_agent() {
    let (_a, port) = tcp_listener("127.0.0.1");
    let policy = format!(
        "version: 1
agents:
  payer:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{port}]
          protocols: [tcp]
          name: payments
    assertions:
      - approval(payout) precedes egress(payments)
    containment:
      on_assertion: paused
"
    );
    let daemon = Daemon::start(&policy);
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("payer");
    // The payout goes out before any approval: the kernel allows it (the rule does not
    // require approval), and the assertion catches it, so fast that the probe may be frozen
    // before it prints its answer: the events tell.
    cage.send(&format!("connect 127.0.0.1:{port}"));
    let e = events.wait_event("the payout", |e| e["kind"] == "egress");
    assert_eq!(e["verdict"], "allow");
    let v = events.wait_event("the violation", |e| e["kind"] == "assertion");
    assert_eq!(v["assertion"], "approval(payout) precedes egress(payments)");
    assert_eq!(v["agent"], "agent:payer");
    let c = events.wait_event("the containment", |e| e["kind"] == "containment");
    assert_eq!(c["rung"], "paused");
    assert!(c["reason"].as_str().unwrap().starts_with("assertion"));
    assert!(frozen(&cage_dir(&daemon, "payer")));
    let out = daemon
        .cli()
        .args(["kill", "payer"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    cage.finish();
    daemon.stop();
}

#[test]
fn a_deny_rate_anomaly_narrows_the_agent_to_read_only() {
    let (_a, ro) = tcp_listener("127.0.0.1");
    let (_b, rw) = tcp_listener("127.0.0.1");
    let policy = two_ports(ro, rw).replace(
        "  other:\n",
        "    containment:\n      deny_rate: {denials: 3, window: 1h, rung: read_only}\n  other:\n",
    );
    let daemon = Daemon::start(&policy);
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{rw}")), "ok");
    for _ in 0..3 {
        assert_eq!(cage.op("connect 127.0.0.2:1"), "err 1");
    }
    let c = events.wait_event("the anomaly", |e| e["kind"] == "containment");
    assert_eq!(c["rung"], "read_only");
    assert_eq!(c["reason"], "deny-rate anomaly");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{rw}")), "err 1");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{ro}")), "ok");
    cage.finish();
    daemon.stop();
}

#[test]
fn a_missed_obligation_is_a_violation_when_its_time_is_up() {
    let policy = "version: 1
agents:
  ops:
    assertions:
      - ticket_comment within 3s after exec(\"kubectl apply\")
    containment:
      on_assertion: read_only
";
    let daemon = Daemon::start(policy);
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("ops");
    let app = daemon.app_socket();
    assert_eq!(cage.op(&format!("ctl-connect {}", app.display())), "ok");
    let exec = r#"ctl-send {"event":{"app":"exec","command":"kubectl apply -f a.yaml"}}"#;
    let comment = r#"ctl-send {"event":{"app":"ticket_comment","ticket":"OPS-1"}}"#;
    // Kept: a comment follows in time.
    assert!(cage.op(exec).contains("accepted"));
    assert!(cage.op(comment).contains("accepted"));
    // Missed: nothing follows; the daemon's clock says when the second is up.
    assert!(cage.op(exec).contains("accepted"));
    let v = events.wait_event("the violation", |e| e["kind"] == "assertion");
    assert_eq!(
        v["violation"],
        "no ticket_comment within the window after exec(\"kubectl apply\")"
    );
    let c = events.wait_event("the containment", |e| e["kind"] == "containment");
    assert_eq!(c["rung"], "read_only");
    // Exactly one violation: the kept obligation raised none.
    let lines = events.lines.all.lock().unwrap().clone();
    let violations = lines
        .iter()
        .filter(|l| l.contains(r#""kind":"assertion""#))
        .count();
    assert_eq!(violations, 1);
    cage.finish();
    daemon.stop();
}

#[test]
fn containment_of_an_unknown_agent_or_rung_is_refused() {
    let daemon = Daemon::start(&two_ports(1, 2));
    let out = daemon
        .cli()
        .args(["pause", "nobody"])
        .output_bounded()
        .unwrap();
    harness::assert_refused(&out, "agent \"nobody\" has no cage");
    let cage = daemon.serve_in("tester");
    let out = daemon
        .cli()
        .args(["contain", "tester", "frozen"])
        .output_bounded()
        .unwrap();
    harness::assert_refused(&out, "unknown containment rung \"frozen\"");
    cage.finish();
    daemon.stop();
}

/// While a cage is being killed (its snapshot written, its processes killed), the daemon
/// keeps serving: `status` answers and another cage's events arrive. The cage is frozen
/// before `kill` answers. The snapshot directory is a file system that never answers, so
/// the kill is still in progress for certain while the rest is checked; once it lets go
/// (its calls fail), the kill switch kills anyway and says the snapshot failed.
#[test]
fn a_kill_in_progress_holds_up_neither_events_nor_status() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&format!(
        "version: 1
agents:
  tester: {{}}
  other:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{port}]
"
    ));
    let events = daemon.follow_events();
    let mut other = daemon.serve_in("other");
    let mut victim = daemon.serve_in("tester");
    assert_eq!(victim.op("fork-hold 50"), "ok 50");
    let stall = Stall::over(&daemon.snapshot_dir());
    let mut kill = daemon
        .cli()
        .args(["kill", "tester"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::spawn(kill.stdout.take().unwrap());
    let errors = Lines::spawn(kill.stderr.take().unwrap());
    lines.wait_for("the kill's first answer", |l| {
        l.contains("observe -> killed")
    });
    let dir = cage_dir(&daemon, "tester");
    assert!(frozen(&dir), "kill answered before the cage was frozen");
    // Meanwhile: status answers, and another cage's connect is reported.
    let status = daemon.status();
    assert!(status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "other"));
    assert_eq!(other.op(&format!("connect 127.0.0.1:{port}")), "ok");
    events.wait_event("the other cage's connect", |e| {
        e["kind"] == "egress" && e["agent"] == "agent:other" && e["dst_port"] == port
    });
    // The kill is held in its snapshot: the cage is whole, frozen, and nothing more was said.
    assert!(
        frozen(&dir) && dir.exists(),
        "the cage went while its snapshot was held"
    );
    assert_eq!(
        lines.all.lock().unwrap().len(),
        1,
        "the kill finished while held"
    );
    stall.release();
    errors.wait_for("the failed snapshot, said", |l| {
        l.contains("agent:tester: snapshot:")
    });
    assert_eq!(
        kill.wait().unwrap().code(),
        Some(1),
        "a failed snapshot is an error"
    );
    assert_eq!(victim.finish().code(), Some(128 + 9), "killed all the same");
    other.finish();
    daemon.stop();
}
