//! The kill tier (no BPF LSM, as on this project's host kernel and on the VM booted without
//! `bpf` in `lsm=`): a forbidden exec cannot be refused, so the process is killed with SIGKILL
//! in the kernel before the new image runs; policies that need refusal are not started.

use agentcage_tests::harness;

use std::{fs, os::unix::fs::PermissionsExt as _};

use harness::{stderr, Daemon};

/// A copy of /bin/touch under `dir`: when it runs, it creates the file it is given.
fn toucher(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    fs::copy("/bin/touch", &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_denied_exec_is_killed_before_the_binary_runs() {
    let bins = tempfile::tempdir().unwrap();
    let denied = toucher(bins.path(), "denied-touch");
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    exec:\n      deny: [{denied}]\n"
    ));
    daemon.expect_tier("kill");
    let events = daemon.follow_events();
    let marker = bins.path().join("ran");

    let out = daemon
        .cli()
        .args(["run", "--agent", "t", "--", &denied])
        .arg(&marker)
        .output()
        .unwrap();
    // `run` passes a death by signal on as 128 + signal, as shells do.
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
    assert!(!marker.exists(), "nothing of the denied binary may run");
    let e = events.wait_event("the killed exec", |e| {
        e["kind"] == "exec" && e["filename"] == denied.as_str()
    });
    assert_eq!(e["verdict"], "killed");
    assert_eq!(e["rule"], "exec.deny[0]");
    let exit = events.wait_event("its exit", |x| {
        x["kind"] == "exit" && x["tgid"] == e["tgid"]
    });
    assert_eq!(exit["signal"], 9);

    // Outside the cage the same binary runs: the hook judges caged processes only.
    assert!(std::process::Command::new(&denied)
        .arg(&marker)
        .status()
        .unwrap()
        .success());
    assert!(marker.exists());
}

fn daemon_killed(status: &serde_json::Value) -> u64 {
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["killed"].as_u64().unwrap())
        .sum()
}

#[test]
fn an_allow_list_kills_everything_else_and_counts_it() {
    let bins = tempfile::tempdir().unwrap();
    let allowed = toucher(bins.path(), "allowed-touch");
    let other = toucher(bins.path(), "other-touch");
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    exec:\n      default: deny\n      allow: [{}, {allowed}]\n",
        sh.display()
    ));
    daemon.expect_tier("kill");
    let (ran_allowed, ran_other) = (bins.path().join("a"), bins.path().join("b"));
    let script = format!(
        "{allowed} {}; {other} {}; echo after=$?; read x; exit 0",
        ran_allowed.display(),
        ran_other.display()
    );
    let mut shell = daemon
        .cli()
        .args(["run", "--agent", "t", "--", "/bin/sh", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = harness::Lines::spawn(shell.stdout.take().unwrap());
    assert_eq!(
        out.wait_for("the shell's report", |l| l.starts_with("after=")),
        "after=137"
    );
    assert!(ran_allowed.exists(), "the allowed binary ran");
    assert!(!ran_other.exists(), "the unlisted binary never ran");
    let status = daemon.status();
    assert_eq!(daemon_killed(&status), 1, "{status:#}");
    drop(shell.stdin.take());
    assert!(shell.wait().unwrap().success());
}

#[test]
fn a_policy_demanding_the_deny_tier_is_refused_naming_what_is_missing() {
    let daemon = Daemon::start(
        "version: 1\nagents:\n  strict:\n    enforcement: deny\n  files:\n    files:\n      protect:\n        - path: /etc/shadow\n",
    );
    daemon.expect_tier("kill");
    for (agent, needs) in [("strict", "enforcement: deny"), ("files", "files rules")] {
        let out = daemon
            .cli()
            .args(["run", "--agent", agent, "--", "/bin/true"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{agent} must not start");
        let err = stderr(&out);
        assert!(err.contains(needs), "{err}");
        assert!(
            err.contains("BPF LSM"),
            "the message names what is missing: {err}"
        );
        assert!(
            !daemon.cgroup_root().join(agent).exists(),
            "no cage is made for a refused agent"
        );
    }
}
