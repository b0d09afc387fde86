//! The daemon's life cycle and control plane, end to end: policy refusal, restarts, pinned
//! enforcement, adoption, the control socket's access checks, and `agentcage run` standing in
//! for its command.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::harness;

use std::{
    fs,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
};

use harness::{
    assert_refused, attached_programs, listener_pair, stderr, stdout, tcp_listener, Daemon,
    Outsider,
};

fn allow_port(port: u16) -> String {
    format!(
        "version: 1\nagents:\n  tester:\n    run_as: [root, caller]\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n          protocols: [tcp]\n"
    )
}

#[test]
fn a_broken_policy_is_refused_with_its_location_and_the_old_one_keeps_enforcing() {
    let (_listeners, port) = listener_pair();
    let daemon = Daemon::start(&allow_port(port));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");

    // Line 7, column 17: the CIDR value.
    let broken = allow_port(port).replace("127.0.0.1/32", "127.0.0.1/33");
    let reload = daemon.rewrite_policy(&broken);
    assert!(!reload.status.success(), "a broken policy must be refused");
    let message = stderr(&reload);
    let location = format!("{}:7:17", daemon.policy.display());
    assert!(
        message.contains(&location),
        "error must point at {location}: {message}"
    );
    assert!(message.contains("127.0.0.1/33"), "{message}");

    // The old policy still decides, for the running cage and for new runs.
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), "err 1");
    let fresh = daemon.probe_in("tester", &["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(stdout(&fresh), "ok");
    cage.finish();

    // A daemon started on the broken file refuses to start, naming the place.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("broken.yaml");
    fs::write(&policy, &broken).unwrap();
    let socket = dir.path().join("s.sock");
    let log = Daemon::start_with(
        dir,
        policy.clone(),
        socket,
        format!("agentcage-test-broken-{}", std::process::id()),
        &[],
    )
    .err()
    .expect("agentcaged must not start on a broken policy");
    assert!(log.contains(&format!("{}:7:17", policy.display())), "{log}");
    daemon.stop();
}

#[test]
fn a_good_policy_reload_changes_decisions_without_restarting_agents() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let (_l2, port2) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&allow_port(port));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port2}")), "err 1");
    let reload = daemon.rewrite_policy(&allow_port(port2));
    assert!(reload.status.success(), "{}", stderr(&reload));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port2}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "err 1");
    cage.finish();
    daemon.stop();
}

#[test]
fn restarts_keep_enforcing_and_never_attach_twice() {
    let (_listeners, port) = listener_pair();
    let daemon = Daemon::start(&allow_port(port));
    let root = daemon.cgroup_root();
    let programs = daemon.cgroup_programs();
    assert_eq!(
        attached_programs(&root),
        programs,
        "connect4/6, sendmsg4/6, sock_create, skb egress and ingress (and the Unix hooks)"
    );
    let mut cage = daemon.serve_in("tester");

    // Stopped while a cage holds a process: the programs stay, pinned.
    let (dir, policy, socket, name) = daemon.stop_keeping_paths();
    assert_eq!(attached_programs(&root), programs);
    assert_eq!(
        cage.op(&format!("connect 127.0.0.2:{port}")),
        "err 1",
        "still enforced with no daemon"
    );
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");

    // A new daemon takes over: still exactly one set of programs.
    let daemon = Daemon::start_with(dir, policy, socket, name, &[]).expect("restart");
    assert_eq!(
        attached_programs(&root),
        programs,
        "a restart must not attach the programs twice"
    );
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), "err 1");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    let status = daemon.status();
    let agents = status["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["identity"], "agent:tester");
    assert!(agents[0]["pids"]
        .as_array()
        .unwrap()
        .contains(&cage.pid.into()));

    // Even a daemon killed outright leaves the cage enforced (its links were pinned at
    // start), and the next one again attaches exactly one set.
    let (dir, policy, socket, name) = daemon.kill_keeping_paths();
    assert_eq!(
        cage.op(&format!("connect 127.0.0.2:{port}")),
        "err 1",
        "still enforced after SIGKILL"
    );
    assert_eq!(attached_programs(&root), programs);
    let daemon = Daemon::start_with(dir, policy, socket, name, &[]).expect("restart after SIGKILL");
    assert_eq!(attached_programs(&root), programs);
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), "err 1");

    // Once the cage empties, a stop leaves nothing behind.
    assert!(cage.finish().success());
    daemon.stop_keeping_paths();
    assert!(!root.exists(), "the parent cgroup is removed");
    assert!(
        !std::path::Path::new("/sys/fs/bpf")
            .join(root.file_name().unwrap())
            .exists(),
        "no pins are left"
    );
}

#[test]
fn adopt_moves_a_running_process_into_the_cage() {
    let (_listeners, port) = listener_pair();
    let daemon = Daemon::start(&allow_port(port));
    let events = daemon.follow_events();
    // A process started outside any cage (without the capabilities that could undo one)...
    let mut outsider = harness::serve_outside(Outsider::Cageable);
    assert_eq!(outsider.op(&format!("connect 127.0.0.2:{port}")), "ok");

    // ...is adopted, and from then on every new socket is judged.
    let adopt = daemon.adopt("tester", outsider.pid);
    assert!(adopt.status.success(), "{}", stderr(&adopt));
    assert_eq!(outsider.op(&format!("connect 127.0.0.2:{port}")), "err 1");
    assert_eq!(outsider.op(&format!("connect 127.0.0.1:{port}")), "ok");
    // UDP-Lite needs no capability: the kernel hook is what refuses it.
    assert_eq!(outsider.op("udplite"), "err 1");
    let refused = events.wait_event("the socket-kind denial", |e| e["hook"] == "sock_create");
    assert_eq!(refused["verdict"], "deny");
    assert_eq!(refused["rule"], "socket-kind");
    assert_eq!(refused["sock_type"], "dgram");
    assert_eq!(refused["protocol"], "136");
    assert_eq!(refused["agent"], "agent:tester");

    let status = daemon.status();
    let agent = &status["agents"][0];
    assert_eq!(agent["denied"], 2);
    assert_eq!(agent["allowed"], 1);
    assert_eq!(agent["lost"], 0);

    // When its last process exits the cage is removed.
    let cage_dir = daemon.cgroup_root().join("tester");
    assert!(cage_dir.exists());
    assert!(outsider.finish().success());
    daemon
        .log
        .wait_for("the cage removal", |l| l.contains("cage removed"));
    assert!(!cage_dir.exists());
    daemon.stop();
}

#[test]
fn adopt_refuses_processes_that_could_undo_their_cage() {
    let daemon = Daemon::start(&allow_port(1));
    let adopt = |pid: u32| daemon.adopt("tester", pid);
    let init = adopt(1);
    assert_refused(&init, "it is init");

    // Root owns the cgroup and bpf files a cage is made of.
    let mut mighty = harness::serve_outside(Outsider::Root);
    let refused = adopt(mighty.pid);
    assert_refused(&refused, "runs as root");
    assert_eq!(mighty.op("bpf"), "ok", "it is still uncaged and mighty");
    mighty.finish();

    // An unprivileged process that could regain capabilities by exec (a setuid or
    // file-capability binary) is refused too, naming what it could regain.
    let nobody = harness::serve_outside(Outsider::Nobody);
    let refused = adopt(nobody.pid);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("could regain at exec") && message.contains("CAP_SYS_ADMIN"),
        "{message}"
    );
    nobody.finish();
    assert!(!daemon.cgroup_root().join("tester").exists());

    // A caged process does not change cages, even through an uncaged helper.
    let caged = daemon.serve_in("tester");
    let moved = adopt(caged.pid);
    assert_refused(&moved, "in a cage already");
    caged.finish();
    daemon.stop();
}

#[test]
fn a_root_agent_cannot_reach_the_files_its_cage_is_made_of() {
    let (_listeners, port) = listener_pair();
    let daemon = Daemon::start(&allow_port(port));
    let mount = harness::cgroup2_mount();
    let mut cage = daemon.serve_in("tester");
    // Outside, root can list both; inside, they are empty read-only mounts.
    assert!(daemon.pin_dir().exists());
    assert_eq!(
        cage.op(&format!("list {}", daemon.pin_dir().display())),
        "err 2"
    );
    assert_eq!(
        cage.op(&format!("list {}", daemon.cgroup_root().display())),
        "err 2"
    );
    // Writing itself into the root cgroup would leave the cage: not from in there.
    let escape = cage.op(&format!("escape-cgroup {}", mount.display()));
    assert!(escape.starts_with("err "), "{escape}");
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), "err 1");
    // The policy file's directory is read-only for it.
    let policy_dir = daemon.policy.parent().unwrap().display().to_string();
    assert_eq!(
        cage.op(&format!("escape-cgroup {policy_dir}")),
        "err 30",
        "EROFS"
    );
    cage.finish();
    daemon.stop();
}

#[test]
fn run_takes_away_what_could_undo_the_cage() {
    let daemon = Daemon::start(&allow_port(1));
    // Root inside the cage still cannot reach the BPF programs that cage it.
    let caged = daemon.probe_in("tester", &["bpf"]);
    assert_eq!(stdout(&caged), "err 1", "{caged:?}");
    let outside = Command::new(harness::probe())
        .arg("bpf")
        .output_bounded()
        .unwrap();
    assert_eq!(stdout(&outside), "ok");
    daemon.stop();
}

#[test]
fn a_connection_opened_before_caging_is_refused_after_it() {
    // The outsider runs as nobody: let its group use the control socket.
    let daemon = Daemon::start_args(
        "version: 1\nagents:\n  tester:\n    run_as: caller\n    egress:\n      allow: []\n  lax:\n    egress:\n      allow:\n        - cidr: 0.0.0.0/0\n",
        &["--group", "65534"],
    );
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(daemon.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut outsider = harness::serve_outside(Outsider::Cageable);
    let socket = daemon.socket.display().to_string();
    assert_eq!(outsider.op(&format!("ctl-connect {socket}")), "ok");
    let pong = outsider.op(r#"ctl-send {"op":"ping"}"#);
    assert!(pong.contains(r#""type":"pong""#), "{pong}");
    let adopt = daemon.adopt("tester", outsider.pid);
    assert!(adopt.status.success(), "{}", stderr(&adopt));
    // The same connection, now from inside a cage: refused, and no laxer cage is joined.
    let join = outsider.op(r#"ctl-send {"op":"join","agent":"lax"}"#);
    assert!(join.contains("inside an agentcage cage"), "{join}");
    assert!(!daemon.cgroup_root().join("lax").exists());
    outsider.finish();
    daemon.stop();
}

#[test]
fn unknown_agents_and_bad_names_get_clear_errors() {
    let daemon = Daemon::start(&allow_port(1));
    let unknown = daemon
        .cli()
        .args(["run", "--agent", "nobody", "--", "true"])
        .output_bounded()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("unknown agent \"nobody\""),
        "{}",
        stderr(&unknown)
    );
    let bad = daemon
        .cli()
        .args(["run", "--agent", "../etc", "--", "true"])
        .output_bounded()
        .unwrap();
    assert_refused(&bad, "../etc");
    assert!(!daemon.cgroup_root().join("nobody").exists());
    daemon.stop();
}

#[test]
fn run_passes_on_exit_codes_and_signals() {
    let daemon = Daemon::start(&allow_port(1));
    let code = daemon
        .cli()
        .args(["run", "--agent", "tester", "--", "sh", "-c", "exit 7"])
        .status_bounded()
        .unwrap();
    assert_eq!(code.code(), Some(7));

    // SIGTERM to `agentcage run` reaches the agent, which dies of it: 128 + 15.
    let mut run = daemon
        .cli()
        .args([
            "run",
            "--agent",
            "tester",
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = harness::Lines::spawn(run.stdout.take().unwrap());
    out.wait_for("the agent to start", |l| l == "started");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    assert_eq!(run.wait().unwrap().code(), Some(128 + 15));
    daemon.stop();
}

#[test]
fn the_control_socket_refuses_other_users() {
    let daemon = Daemon::start(&allow_port(1));
    let mode = fs::metadata(&daemon.socket).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(mode.permissions().mode() & 0o777, 0o660);
    // Let uid 65534 reach the socket's directory.
    fs::set_permissions(daemon.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();

    // A plain unprivileged user: the socket's mode refuses it.
    let plain = daemon
        .cli()
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output_bounded()
        .unwrap();
    assert_refused(&plain, "permission denied");

    // One that can bypass file permissions (CAP_DAC_OVERRIDE) but is neither root nor in
    // the group: the daemon's own peer-credential check refuses it, and says why.
    let mut cmd = daemon.cli();
    cmd.arg("status");
    // SAFETY: only async-signal-safe calls (prctl, setgroups, setres[ug]id, capset).
    unsafe { cmd.pre_exec(become_nobody_with_dac_override) };
    let sneaky = cmd.output_bounded().unwrap();
    assert!(!sneaky.status.success(), "{}", stdout(&sneaky));
    let message = stderr(&sneaky);
    assert!(
        message.contains("uid 65534") && message.contains("not root"),
        "{message}"
    );
    daemon.stop();
}

/// Drops to uid/gid 65534 keeping CAP_DAC_OVERRIDE across exec (as an ambient capability).
fn become_nobody_with_dac_override() -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(65534, 65534, 65534))?;
        check(libc::setresuid(65534, 65534, 65534))?;
    }
    agentcage::caps::raise_ambient(agentcage::caps::CAP_DAC_OVERRIDE)
}

#[test]
fn caged_processes_cannot_use_the_control_socket() {
    let daemon = Daemon::start(
        "version: 1\nagents:\n  tester:\n    run_as: root\n    egress:\n      allow: []\n  lax:\n    egress:\n      allow:\n        - cidr: 0.0.0.0/0\n",
    );
    // A (root) agent trying to start itself again as a laxer agent, or to read the daemon.
    let socket = daemon.socket.to_str().unwrap().to_owned();
    let inner = format!(
        "{cli} --socket {socket} run --agent lax -- true; echo run=$?; {cli} --socket {socket} status; echo status=$?",
        cli = harness::agentcage()
    );
    let out = daemon
        .cli()
        .args(["run", "--agent", "tester", "--", "sh", "-c", &inner])
        .output_bounded()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("run=2") && text.contains("status=2"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("inside an agentcage cage"),
        "{}",
        stderr(&out)
    );
    assert!(
        !daemon.cgroup_root().join("lax").exists(),
        "no cage was made for the laxer agent"
    );
    daemon.stop();
}

#[test]
fn the_configured_group_may_use_the_control_socket() {
    // gid 65534 (nogroup) is the configured group; uid 65534 in it may talk to the daemon.
    let daemon = Daemon::start_args(&allow_port(1), &["--group", "65534"]);
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(daemon.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let member = daemon
        .cli()
        .arg("status")
        .uid(65534)
        .gid(65534)
        .output_bounded()
        .unwrap();
    assert!(member.status.success(), "{}", stderr(&member));
    assert!(stdout(&member).contains("no agents are running"));
    // The same user outside the group (primary group 100) is refused.
    let outsider = daemon
        .cli()
        .arg("status")
        .uid(65534)
        .gid(100)
        .output_bounded()
        .unwrap();
    assert_refused(&outsider, "permission denied");
    daemon.stop();
}

#[test]
fn a_second_daemon_refuses_to_start_and_leaves_the_first_intact() {
    let (_listeners, port) = listener_pair();
    let daemon = Daemon::start(&allow_port(port));
    let root = daemon.cgroup_root();
    let programs = daemon.cgroup_programs();
    let mut cage = daemon.serve_in("tester");
    let pins = || fs::read_dir(daemon.pin_dir()).unwrap().count();
    assert_eq!(pins(), daemon.expected_pins());

    // Same socket: refused before it touches anything.
    let dir = tempfile::tempdir().unwrap();
    let same_socket = Daemon::start_with(
        dir,
        daemon.policy.clone(),
        daemon.socket.clone(),
        format!("{}-other", daemon.cgroup_name),
        &[],
    )
    .err()
    .expect("a second daemon on the same socket must not start");
    assert!(same_socket.contains("already serving"), "{same_socket}");

    // Same cgroup, other socket: refused by the cgroup lock.
    let dir = tempfile::tempdir().unwrap();
    let other_socket = dir.path().join("other.sock");
    let same_cgroup = Daemon::start_with(
        dir,
        daemon.policy.clone(),
        other_socket.clone(),
        daemon.cgroup_name.clone(),
        &[],
    )
    .err()
    .expect("a second daemon on the same cgroup must not start");
    assert!(
        same_cgroup.contains("another agentcaged manages"),
        "{same_cgroup}"
    );
    assert!(
        !other_socket.exists(),
        "the refused daemon removes its socket"
    );

    // The first daemon is untouched: its pins, its programs, its enforcement, its socket.
    assert_eq!(pins(), daemon.expected_pins());
    assert_eq!(attached_programs(&root), programs);
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), "err 1");
    assert!(daemon
        .cli()
        .arg("status")
        .output_bounded()
        .unwrap()
        .status
        .success());
    cage.finish();
    daemon.stop();
}

#[test]
fn sighup_reloads_the_policy_file() {
    let (_l, port) = tcp_listener("127.0.0.1");
    let (_l2, port2) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&allow_port(port));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port2}")), "err 1");
    fs::write(&daemon.policy, allow_port(port2)).unwrap();
    let pid = daemon.pid();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    daemon
        .log
        .wait_for("the reload", |l| l.contains("policy in force"));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port2}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "err 1");

    // A broken file on SIGHUP is refused in the log, and the policy stays.
    fs::write(&daemon.policy, "version: 2\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    // The directory watcher may also see the file half-written (empty) and refuse that
    // first: wait for the refusal that names the broken line.
    let refused = daemon.log.wait_for("the refusal", |l| {
        l.contains("policy reload refused") && l.contains("policy.yaml:1:10")
    });
    assert!(refused.contains("version"), "{refused}");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port2}")), "ok");
    cage.finish();
    daemon.stop();
}

#[test]
fn a_detached_program_is_put_back() {
    let (_listeners, port) = listener_pair();
    let daemon = Daemon::start(&allow_port(port));
    let root = daemon.cgroup_root();
    let programs = daemon.cgroup_programs();
    let mut cage = daemon.serve_in("tester");
    // Root outside every cage detaches the connect4 link, as bpftool lets it.
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&root).unwrap().ino()
    };
    let links = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output_bounded()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&links.stdout).unwrap();
    let link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["cgroup_id"] == cgroup_id && l["attach_type"] == "cgroup_inet4_connect")
        .expect("our connect4 link");
    let id = link["id"].to_string();
    let detach = Command::new("bpftool")
        .args(["link", "detach", "id", &id])
        .output_bounded()
        .unwrap();
    assert!(detach.status.success(), "{}", stderr(&detach));
    // The daemon notices and attaches it again.
    daemon
        .log
        .wait_for("the repair", |l| l.contains("programs re-attached"));
    assert_eq!(attached_programs(&root), programs);
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), "err 1");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    cage.finish();
    daemon.stop();
}
