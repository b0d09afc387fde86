//! Process capture, end to end on the real kernel: exec, fork and exit events of caged
//! processes, the process tree `agentcage ps` rebuilds from them, and loss accounting.
//! These hold in both tiers.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::harness;

use std::{
    cell::Cell,
    io::Write as _,
    process::{Command, Stdio},
};

use harness::{deadline, stderr, Daemon, Lines};

const POLICY: &str = "version: 1\nagents:\n  t: {}\n";

fn is_exec_of(e: &serde_json::Value, agent: &str, filename: &str) -> bool {
    e["kind"] == "exec" && e["agent"] == format!("agent:{agent}") && e["filename"] == filename
}

#[test]
fn a_shell_three_levels_deep_gives_the_right_tree_and_exit_codes() {
    let daemon = Daemon::start(POLICY);
    let events = daemon.follow_events();
    let out = daemon
        .cli()
        .args(["run", "--agent", "t", "--", "/bin/sh", "-c"])
        .arg(r#"/bin/sh -c '/bin/sh -c "/bin/echo leaf; exit 7"; exit 6'; exit 5"#)
        .output_bounded()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // The top shell's exit event is the last of the run: once it is in, the tree is whole.
    events.wait_event("the top shell's exit", |e| {
        e["kind"] == "exit" && e["agent"] == "agent:t" && e["exit_code"] == 5
    });
    let ps = daemon
        .cli()
        .args(["ps", "t", "-o", "json"])
        .output_bounded()
        .unwrap();
    assert!(ps.status.success(), "{}", stderr(&ps));
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&ps.stdout).unwrap();
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        nodes
            .iter()
            .find(|n| pred(n))
            .cloned()
            .unwrap_or_else(|| panic!("node missing from {nodes:#?}"))
    };
    let top = find(&|n| n["exit"]["exit_code"] == 5);
    let mid = find(&|n| n["exit"]["exit_code"] == 6);
    let low = find(&|n| n["exit"]["exit_code"] == 7);
    let leaf = find(&|n| n["program"] == "/bin/echo");
    assert_eq!(mid["ppid"], top["pid"], "{nodes:#?}");
    assert_eq!(low["ppid"], mid["pid"], "{nodes:#?}");
    assert_eq!(leaf["ppid"], low["pid"], "{nodes:#?}");
    assert_eq!(leaf["argv"], serde_json::json!(["/bin/echo", "leaf"]));
    assert_eq!(leaf["exit"]["exit_code"], 0);
    assert_eq!(mid["program"], "/bin/sh");
    assert_eq!(nodes.len(), 4, "exactly the four processes: {nodes:#?}");

    // The text form draws the same tree.
    let text = daemon.cli().args(["ps", "t"]).output_bounded().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let depth_of = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .map(|l| l.len() - l.trim_start().len())
            .unwrap_or_else(|| panic!("{needle} missing from\n{text}"))
    };
    let depths: Vec<usize> = ["[exited 5]", "[exited 6]", "[exited 7]", "[exited 0]"]
        .iter()
        .map(|s| depth_of(s))
        .collect();
    assert_eq!(depths, [0, 2, 4, 6], "one level per generation:\n{text}");
}

#[test]
fn exec_events_carry_arguments_identity_and_the_binary_hash() {
    let daemon = Daemon::start(POLICY);
    let events = daemon.follow_events();
    let out = daemon
        .cli()
        .args([
            "run",
            "--agent",
            "t",
            "--",
            "/bin/sh",
            "-c",
            "/bin/true one 'two words'",
        ])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let e = events.wait_event("the exec of /bin/true", |e| is_exec_of(e, "t", "/bin/true"));
    assert_eq!(
        e["argv"],
        serde_json::json!(["/bin/true", "one", "two words"])
    );
    assert_eq!(e["argv_truncated"], false);
    assert_eq!(e["verdict"], "allow");
    // The agent's own uid (run_as: dynamic), not root's.
    let uid = e["uid"].as_u64().unwrap();
    assert!((61184..=65519).contains(&uid), "{e}");
    assert!(e["ppid"].as_u64().unwrap() > 1);
    assert_eq!(e["comm"], "true");
    let meta = std::fs::metadata("/bin/true").unwrap();
    assert_eq!(e["inode"], std::os::unix::fs::MetadataExt::ino(&meta));
    let expected = sha256_of("/bin/true");
    assert_eq!(e["sha256"], expected, "{e}");
    assert_eq!(e["policy_hash"].as_str().unwrap().len(), 64);

    // Long argument lists are cut at the kernel's bound, and say so.
    let long = "x".repeat(3000);
    let out = daemon
        .cli()
        .args(["run", "--agent", "t", "--", "/bin/echo", &long])
        .output_bounded()
        .unwrap();
    assert!(out.status.success());
    let e = events.wait_event("the long exec", |e| is_exec_of(e, "t", "/bin/echo"));
    assert_eq!(e["argv_truncated"], true);
    assert!(e["argv"][1].as_str().unwrap().len() < 1024);
}

fn sha256_of(path: &str) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output_bounded()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The kernel reports every exec or counts it as lost: received + lost = executed, exactly.
#[test]
fn ten_thousand_execs_are_all_reported_or_counted_as_lost() {
    const N: u64 = 10_000;
    let daemon = Daemon::start(POLICY);
    let events = daemon.follow_events();
    let mut shell = daemon
        .cli()
        .args(["run", "--agent", "t", "--", "/bin/sh", "-c"])
        .arg(format!(
            "i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done; echo looped; read x; /bin/echo end"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::spawn(shell.stdout.take().unwrap());
    // 10,000 fork+execs take seconds on an idle machine and several times that on a busy one.
    out.wait_for_within("the loop to finish", 6 * deadline(), |l| l == "looped");

    // Every exec has happened, so the kernel's loss counter is final.
    let status = daemon.status();
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "t")
        .expect("the agent is running")
        .clone();
    let lost = agent["lost_by_kind"]["exec"].as_u64().unwrap();
    let received = Cell::new(0u64);
    let count = |l: &str| {
        assert!(!l.starts_with("{\"lost\""), "the test's reader lagged: {l}");
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        if is_exec_of(&e, "t", "/bin/true") {
            received.set(received.get() + 1);
        }
        received.get() + lost == N
    };
    if received.get() + lost < N {
        events
            .lines
            .wait_for("received + lost to reach 10000", count);
    }
    // Nothing more than that arrives: the next exec seen is the marker.
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    events.lines.wait_for("the marker exec", |l| {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            !is_exec_of(&e, "t", "/bin/true"),
            "more /bin/true execs than were run"
        );
        is_exec_of(&e, "t", "/bin/echo")
    });
    assert!(shell.wait().unwrap().success());
    assert_eq!(
        received.get() + lost,
        N,
        "received {} lost {lost}",
        received.get()
    );
    eprintln!(
        "received {} exec events, {lost} counted as lost",
        received.get()
    );
}
