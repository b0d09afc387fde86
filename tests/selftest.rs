//! `agentcage selftest` passes here, and `selftest: on_start` runs it before the daemon
//! enforces anything.

use std::process::Command;

use agentcage_tests::harness::{self, stderr, stdout, Daemon};

#[test]
fn every_attempt_of_the_selftest_is_contained() {
    harness::require_root();
    let out = Command::new(harness::agentcage())
        .args(["selftest", "--timeout"])
        .arg(harness::deadline().as_secs().max(60).to_string())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains(" 0 NOT CONTAINED"), "{text}");
    // The catalogue ran whole: the egress, exec, file, leaving and stopping families.
    for family in [
        "egress.tcp4",
        "exec.loader",
        "files.shadow",
        "leave.cgroup",
        "stop.bpf",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(family) && l.starts_with("contained")),
            "{family}:\n{text}"
        );
    }
}

#[test]
fn selftest_on_start_runs_before_anything_is_enforced() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("agentcaged.yaml");
    std::fs::write(&file, "selftest: on_start\n").unwrap();
    // The self-test's own daemon starts and stops first.
    let daemon = Daemon::start_args_within(
        "version: 1\nagents:\n  t: {}\n",
        &["--config", file.to_str().unwrap()],
        harness::deadline() * 4,
    );
    let log = daemon.stop();
    let passed = log.find("self-test passed").expect("the self-test ran");
    let ready = log
        .find("agentcaged ready")
        .expect("then the daemon started");
    assert!(passed < ready, "{log}");
}
