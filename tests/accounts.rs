//! Agents are not root unless the policy says so: `run_as` (dynamic by default), `--user`,
//! the daemon's check of every joiner, and the shield of root agents (issue 11, case 4).

use agentcage_tests::bounded::Bounded as _;
use std::{fs, os::unix::fs::FileTypeExt as _, process::Command};

use agentcage_tests::harness::{self, assert_refused, stderr, stdout, Daemon, Outsider};

const DYNAMIC: std::ops::RangeInclusive<u32> = 61184..=65519;

fn policy(run_as: &str) -> String {
    format!("version: 1\nagents:\n  tester:\n    run_as: {run_as}\n  other: {{}}\n")
}

/// `probe ids` in the agent's cage: (uid, gid, HOME).
fn ids(daemon: &Daemon, agent: &str, extra: &[&str]) -> (u32, u32, String) {
    let mut cmd = daemon.cli();
    cmd.args(["run", "--agent", agent]).args(extra).arg("--");
    let out = cmd
        .arg(harness::probe())
        .arg("ids")
        .output_bounded()
        .unwrap();
    let text = stdout(&out);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ids "))
        .unwrap_or_else(|| panic!("no ids from the probe: {text}\n{}", stderr(&out)));
    let mut f = line.split(' ');
    let uid = f.next().unwrap().parse().unwrap();
    let gid = f.next().unwrap().parse().unwrap();
    (uid, gid, f.next().unwrap_or_default().to_owned())
}

#[test]
fn agents_run_under_a_uid_of_their_own_with_a_home_that_goes_with_the_cage() {
    let daemon = Daemon::start("version: 1\nagents:\n  tester: {}\n  other: {}\n");
    let (uid, gid, home) = ids(&daemon, "tester", &[]);
    assert!(DYNAMIC.contains(&uid), "uid {uid}");
    assert_eq!(gid, uid);
    assert_eq!(
        home,
        daemon.dir.path().join("home/tester").display().to_string()
    );
    let (other, ..) = ids(&daemon, "other", &[]);
    assert!(DYNAMIC.contains(&other) && other != uid, "{other} vs {uid}");
    // The home was the agent's (it could write there) and went with the cage.
    let mut cage = daemon.serve_in("tester");
    let file = format!("{home}/note");
    assert_eq!(cage.op(&format!("create {file}")), "ok");
    // A file only root may read (the VM's initramfs has no /etc/shadow), beside the homes.
    let secret = daemon.dir.path().join("root-only");
    fs::write(&secret, "s").unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(
        cage.op(&format!("open {} r", secret.display())),
        "err 13",
        "not root"
    );
    cage.finish();
    let deadline = std::time::Instant::now() + harness::deadline();
    while fs::metadata(&home).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{home} outlived its cage"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    daemon.stop();
}

#[test]
fn agents_cannot_signal_trace_or_read_each_other_or_the_operator() {
    let daemon = Daemon::start("version: 1\nagents:\n  tester: {}\n  other: {}\n");
    let mut a = daemon.serve_in("tester");
    let mut b = daemon.serve_in("other");
    let operator = harness::serve_outside(Outsider::Root);
    for target in [a.pid, operator.pid] {
        assert_eq!(
            b.op(&format!("signal {target}")),
            "err 1",
            "signal {target}"
        );
        // /proc/PID/environ needs the right to trace the process.
        assert_eq!(
            b.op(&format!("open /proc/{target}/environ r")),
            "err 13",
            "read {target}"
        );
    }
    // Within one cage the agent's processes share the uid.
    assert_eq!(a.op(&format!("signal {}", a.pid)), "ok");
    operator.finish();
    a.finish();
    b.finish();
    daemon.stop();
}

#[test]
fn root_must_be_written_out_and_run_user_chooses_within_the_policy() {
    let daemon = Daemon::start(&policy("[caller, nobody, root]"));
    // Started by root, `caller` would be root: refused, naming the way out.
    let out = daemon
        .cli()
        .args(["run", "--agent", "tester", "--", "true"])
        .output_bounded()
        .unwrap();
    assert_refused(&out, "root must be written out");
    assert_eq!(ids(&daemon, "tester", &["--user", "nobody"]).0, 65534);
    assert_eq!(ids(&daemon, "tester", &["--user", "root"]).0, 0);
    // `dynamic` narrows, so it is always allowed; anything unlisted is not.
    assert!(DYNAMIC.contains(&ids(&daemon, "tester", &["--user", "dynamic"]).0));
    let out = daemon
        .cli()
        .args(["run", "--agent", "other", "--user", "root", "--", "true"])
        .output_bounded()
        .unwrap();
    assert_refused(&out, "--user root is not allowed");
    daemon.stop();
}

#[test]
fn only_root_starts_an_agent_under_another_account() {
    let daemon = Daemon::start_args(&policy("caller"), &["--group", "65534"]);
    let as_nobody = |agent: &str| {
        let mut cmd = daemon.cli();
        cmd.args(["run", "--agent", agent, "--"])
            .arg(harness::probe())
            .arg("ids");
        use std::os::unix::process::CommandExt as _;
        cmd.uid(65534).gid(65534).output_bounded().unwrap()
    };
    let caller = as_nobody("tester");
    assert!(stdout(&caller).contains("ids 65534 65534"), "{caller:?}");
    // The default (dynamic) needs root to switch to it: refused, saying what to do.
    let dynamic = as_nobody("other");
    assert_refused(&dynamic, "only root can start");
    daemon.stop();
}

#[test]
fn a_joiner_that_kept_another_account_is_refused() {
    let daemon = Daemon::start(&policy("dynamic"));
    // A client that prepares the run but skips the switch: root joining a dynamic agent.
    let mut rogue = harness::serve_outside(Outsider::Root);
    let socket = daemon.socket.display().to_string();
    assert_eq!(rogue.op(&format!("ctl-connect {socket}")), "ok");
    let prepared = rogue.op(r#"ctl-send {"op":"prepare","agent":"tester"}"#);
    assert!(prepared.contains(r#""type":"prepared""#), "{prepared}");
    let join = rogue.op(r#"ctl-send {"op":"join","agent":"tester"}"#);
    assert!(
        join.contains("not as the account its run was granted"),
        "{join}"
    );
    let cgroup = daemon.cgroup_root().join("tester");
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    assert!(!procs.contains(&rogue.pid.to_string()), "{procs}");
    rogue.finish();
    daemon.stop();
}

#[test]
fn a_root_agent_cannot_change_kernel_settings_or_open_block_devices() {
    let daemon = Daemon::start(&policy("root"));
    let mut cage = daemon.serve_in("tester");
    // Case 4 of issue 11: with core_pattern writable, a crash runs any helper as full root
    // outside the cage. Opened for writing only (nothing is written, should it open).
    assert_eq!(
        cage.op("open /proc/sys/kernel/core_pattern w"),
        "err 30",
        "core_pattern"
    );
    // Those this kernel has (sysrq is not built into every kernel).
    for path in [
        "/proc/sysrq-trigger",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        if fs::metadata(path).is_ok() {
            assert_eq!(cage.op(&format!("open {path} w")), "err 30", "{path}");
        }
    }
    // A block device is the raw disk, whatever the file system above it enforces.
    let block = fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()));
    if let Some(dev) = block {
        let path = dev.path().display().to_string();
        assert_eq!(cage.op(&format!("open {path} r")), "err 2", "{path}");
    }
    assert_eq!(cage.op("open /dev/null rw"), "ok");
    assert_eq!(cage.op("open /dev/urandom r"), "ok");
    cage.finish();
    // Outside, nothing changed: the host's own /proc/sys is writable to root.
    let outside = Command::new(harness::probe())
        .args(["open", "/proc/sys/kernel/core_pattern", "w"])
        .output_bounded()
        .unwrap();
    assert_eq!(stdout(&outside), "ok");
    daemon.stop();
}

#[test]
fn a_limit_is_enforced_where_its_controller_exists_and_refused_where_not() {
    let controllers =
        fs::read_to_string(harness::cgroup2_mount().join("cgroup.controllers")).unwrap_or_default();
    let daemon = Daemon::start("version: 1\nagents:\n  tester:\n    limits: {pids: 16}\n");
    if !controllers.split_whitespace().any(|c| c == "pids") {
        // This host keeps pids on cgroup v1: the agent is refused, naming why.
        let out = daemon
            .cli()
            .args(["run", "--agent", "tester", "--", "true"])
            .output_bounded()
            .unwrap();
        assert_refused(&out, "has no pids controller");
    } else {
        // A fork bomb stops at the limit; the host goes on.
        let mut cage = daemon.serve_in("tester");
        assert_eq!(cage.op("fork-hold 40"), "err 11", "EAGAIN at pids.max");
        let pids = fs::read_to_string(daemon.cgroup_root().join("tester/pids.current")).unwrap();
        assert!(pids.trim().parse::<u32>().unwrap() <= 16, "{pids}");
        assert!(Command::new("true").status_bounded().unwrap().success());
        let killed = daemon
            .cli()
            .args(["kill", "tester"])
            .output_bounded()
            .unwrap();
        assert!(killed.status.success(), "{}", stderr(&killed));
        cage.finish();
    }
    daemon.stop();
}
