//! The kill tier (no BPF LSM, as on this project's host kernel and on the VM booted without
//! `bpf` in `lsm=`): a forbidden exec cannot be refused, so the process is killed with SIGKILL
//! in the kernel before the new image runs; policies that need refusal are not started.

use agentcage_tests::bounded::Bounded as _;
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
        .output_bounded()
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
        .status_bounded()
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
            .output_bounded()
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

/// A shell in agent `agent`'s cage (run under its dynamic uid), fed commands line by line.
struct Shell {
    child: std::process::Child,
    input: std::process::ChildStdin,
    out: harness::Lines,
}

impl Shell {
    fn start(daemon: &Daemon, agent: &str) -> Self {
        let mut child = daemon
            .cli()
            .args(["run", "--agent", agent, "--", "/bin/sh", "-s"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let out = harness::Lines::spawn(child.stdout.take().unwrap());
        Self { child, input, out }
    }

    /// Runs `command` and returns its exit status as the shell saw it (137: SIGKILL).
    fn status_of(&mut self, tag: &str, command: &str) -> String {
        use std::io::Write as _;
        writeln!(self.input, "{command}; echo {tag}=$?").unwrap();
        let line = self
            .out
            .wait_for(tag, |l| l.starts_with(&format!("{tag}=")));
        line[tag.len() + 1..].to_owned()
    }

    fn finish(mut self) {
        drop(self.input);
        assert!(self.child.wait().unwrap().success());
    }
}

/// A directory the agent's dynamic uid may write and run files in.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// A kill-tier daemon whose agent `t` (with `run_as`, if given) denies a copy of touch in a
/// directory its uid may use; returns the directory, the denied binary and the daemon.
fn denying_touch(run_as: Option<&str>) -> (tempfile::TempDir, String, Daemon) {
    let bins = shared_dir();
    let denied = toucher(bins.path(), "denied-touch");
    let run_as = run_as.map_or(String::new(), |r| format!("    run_as: {r}\n"));
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n{run_as}    exec:\n      deny: [{denied}]\n"
    ));
    daemon.expect_tier("kill");
    (bins, denied, daemon)
}

#[test]
fn a_copy_of_a_denied_binary_and_the_loader_running_it_are_killed() {
    let loader = agentcage::policy::loaders()
        .into_iter()
        .next()
        .expect("this host runs dynamic programs, so it has a loader");
    let (bins, denied, daemon) = denying_touch(None);
    let events = daemon.follow_events();
    let mut shell = Shell::start(&daemon, "t");
    let at = |name: &str| bins.path().join(name).display().to_string();

    // The agent makes its own copy under another name: same content, so killed.
    let copy = at("renamed");
    assert_eq!(shell.status_of("cp", &format!("cp {denied} {copy}")), "0");
    assert_eq!(
        shell.status_of("copy", &format!("{copy} {}", at("by-copy"))),
        "137"
    );
    let e = events.wait_event("the killed copy", |e| {
        e["kind"] == "exec" && e["filename"] == copy.as_str()
    });
    assert_eq!(
        (&e["verdict"], &e["rule"]),
        (&"killed".into(), &"exec.deny[0]".into())
    );

    // The loader would map the denied binary without an exec of it: the loader is killed.
    let by_loader = format!("{} {denied} {}", loader.display(), at("by-loader"));
    assert_eq!(shell.status_of("loader", &by_loader), "137");
    let e = events.wait_event("the killed loader", |e| {
        e["kind"] == "exec" && e["verdict"] == "killed" && e["rule"] == "loader"
    });
    assert_eq!(e["filename"], loader.display().to_string());

    // What the policy does not deny still runs, dynamic programs included (they map the
    // loader as their interpreter).
    assert_eq!(
        shell.status_of("mkdir", &format!("mkdir {}", at("made"))),
        "0"
    );
    assert!(bins.path().join("made").is_dir());
    for ran in ["by-copy", "by-loader"] {
        assert!(
            !bins.path().join(ran).exists(),
            "{ran}: nothing of the denied binary ran"
        );
    }
    shell.finish();
}

#[test]
fn with_the_daemon_dead_an_exec_of_unread_content_is_killed_not_run() {
    let (bins, _denied, daemon) = denying_touch(None);
    let mut shell = Shell::start(&daemon, "t");
    // /bin/true runs (and is read) while the daemon lives; a fresh copy of it is not yet
    // read. (Exit statuses tell: 0 ran, 137 killed.)
    let fresh = bins.path().join("fresh-true").display().to_string();
    assert_eq!(shell.status_of("before", "/bin/true"), "0");
    assert_eq!(shell.status_of("cp", &format!("cp /bin/true {fresh}")), "0");

    let (dir, policy, socket, name) = daemon.kill_keeping_paths();
    // Nobody reads the fresh copy: its exec is killed, whatever its content.
    assert_eq!(shell.status_of("fresh", &fresh), "137");
    // Content read before, unchanged since, is still judged (and allowed).
    assert_eq!(shell.status_of("known", "/bin/true"), "0");

    // The next daemon watches the cage it finds: the fresh copy is read and runs.
    let daemon = Daemon::start_with(dir, policy, socket, name, &[]).expect("restart");
    assert_eq!(shell.status_of("after", &fresh), "0");
    shell.finish();
    drop(daemon);
}

#[test]
fn adopting_into_a_cage_that_judges_content_is_refused_saying_why() {
    let (_bins, _denied, daemon) = denying_touch(Some("nobody"));
    // In the host's mount namespace: its execs could not be made to wait for the daemon,
    // so its copies of the denied binary would run unjudged.
    let outsider = harness::serve_outside(harness::Outsider::Cageable);
    let adopt = daemon.adopt("t", outsider.pid);
    harness::assert_refused(&adopt, "mount namespace");
    assert!(outsider.finish().success());
}
