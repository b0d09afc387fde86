//! Containers as cages, under a real engine: Debian's dockerd with runc, and
//! `agentcage-runtime` registered as the runtime `agentcage`. The image is busybox-static
//! and the probe, imported offline.
//!
//! - the container's very first process (the probe as its entrypoint) is judged by the
//!   agent's allow list, and its events name the container;
//! - without the label, or with runc itself, nothing is caged;
//! - pause freezes the container's cgroup; kill ends it and the engine says it exited;
//! - the engine's memory limit still applies to a caged container;
//! - an agent the policy does not know is refused at create, with the reason in the
//!   engine's error; so is a privileged container;
//! - `docker exec` into a caged container cannot bring capabilities back;
//! - the application socket is mounted into the container and speaks for its agent.
//!
//! Host only: the test VM's initramfs holds no engine (docs/KERNEL.md).

use std::{fs, path::Path, process::Command};

use agentcage_tests::{
    bins,
    engine::{self, Engine, IMAGE},
    harness::{self, listener_pair, stderr, stdout, Daemon},
};

/// Agent `web` may reach TCP 127.0.0.1:PORT and nothing else.
fn policy(port: u16) -> String {
    format!(
        "version: 1
agents:
  web:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{port}]
          protocols: [tcp]
"
    )
}

/// Listeners on 127.0.0.1 and 127.0.0.2 at one port, a daemon whose agent `web` may reach
/// only the first, and an engine using it.
fn web() -> (
    (std::net::TcpListener, std::net::TcpListener),
    u16,
    Daemon,
    Engine,
) {
    let (listeners, port) = listener_pair();
    let daemon = Daemon::start(&policy(port));
    let engine = Engine::start(&daemon);
    (listeners, port, daemon, engine)
}

/// A container `name` sleeping, caged as `web` when `labelled`.
fn sleeper(engine: &Engine, name: &str, labelled: bool) {
    let up = run(
        engine,
        "agentcage",
        labelled,
        &["-d", "--name", name, IMAGE, "/bin/sleep", "1000"],
    );
    assert!(up.status.success(), "{}", stderr(&up));
}

/// `docker run --runtime RUNTIME --network host [--label agentcage.agent=web] ARGS...`.
fn run(engine: &Engine, runtime: &str, labelled: bool, args: &[&str]) -> std::process::Output {
    let mut cmd = engine.docker_cmd();
    cmd.args(["run", "--runtime", runtime, "--network", "host"]);
    if labelled {
        cmd.args(["--label", "agentcage.agent=web"]);
    }
    cmd.args(args).output().expect("docker run")
}

/// The cgroup v2 directory of container `id` (its init's).
fn cgroup_of(engine: &Engine, name: &str) -> std::path::PathBuf {
    let pid = engine.inspect(name, "{{.State.Pid}}");
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    harness::cgroup2_mount().join(rel.trim_start_matches('/'))
}

fn frozen(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "frozen 1"))
        .unwrap_or(false)
}

#[test]
fn the_entrypoint_is_judged_from_its_first_connect_and_events_name_the_container() {
    let (_listeners, port, daemon, engine) = web();
    let events = daemon.follow_events();

    // The probe is the container's first process: nothing ran before its connect.
    let denied = run(
        &engine,
        "agentcage",
        true,
        &[
            "--name",
            "c-deny",
            IMAGE,
            "/probe",
            "connect",
            &format!("127.0.0.2:{port}"),
        ],
    );
    assert_eq!(stdout(&denied), "err 1", "EPERM; {}", stderr(&denied));
    let allowed = run(
        &engine,
        "agentcage",
        true,
        &[
            "--rm",
            IMAGE,
            "/probe",
            "connect",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert_eq!(stdout(&allowed), "ok", "{}", stderr(&allowed));

    let id = engine.id_of("c-deny");
    // Its exec was captured, under the container, and then its denial.
    events.wait_event("the probe's exec in the container", |v| {
        v["kind"] == "exec" && v["container"]["id"] == id.as_str()
    });
    let ev = events.wait_event("the container's denial", |v| {
        v["kind"] == "egress" && v["verdict"] == "deny" && v["container"]["name"] == "c-deny"
    });
    assert_eq!(ev["agent"], "agent:web");
    assert_eq!(ev["container"]["id"], id.as_str());
    assert_eq!(ev["container"]["image"], IMAGE);
    assert_eq!(ev["dst_addr"], "127.0.0.2");
}

#[test]
fn without_the_label_or_with_runc_nothing_is_caged() {
    let (_listeners, port, daemon, engine) = web();
    let target = format!("127.0.0.2:{port}");
    let unlabelled = run(
        &engine,
        "agentcage",
        false,
        &["--rm", IMAGE, "/probe", "connect", &target],
    );
    assert_eq!(stdout(&unlabelled), "ok", "{}", stderr(&unlabelled));
    let runc = run(
        &engine,
        "runc",
        true,
        &["--rm", IMAGE, "/probe", "connect", &target],
    );
    assert_eq!(stdout(&runc), "ok", "{}", stderr(&runc));
    // And the daemon made no cage for either.
    let status = daemon.status();
    assert!(status["agents"].as_array().unwrap().is_empty(), "{status}");
}

#[test]
fn pause_freezes_the_container_and_kill_ends_it_as_the_engine_sees_it() {
    let (_listeners, _, daemon, engine) = web();
    sleeper(&engine, "k1", true);
    let cgroup = cgroup_of(&engine, "k1");
    let status = daemon.status();
    let containers = &status["agents"][0]["containers"];
    assert_eq!(containers[0]["container"]["name"], "k1", "{status}");
    assert_eq!(
        containers[0]["cgroup"],
        cgroup.display().to_string(),
        "the container keeps the engine's cgroup"
    );

    let paused = daemon.cli().args(["pause", "web"]).output().unwrap();
    assert!(paused.status.success(), "{}", stderr(&paused));
    assert!(frozen(&cgroup), "the container's cgroup is frozen");
    let resumed = daemon.cli().args(["resume", "web"]).output().unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(!frozen(&cgroup));

    let killed = daemon.cli().args(["kill", "web"]).output().unwrap();
    assert!(killed.status.success(), "{}", stderr(&killed));
    assert!(
        stdout(&killed).contains("no process left"),
        "{}",
        stdout(&killed)
    );
    // The engine saw its container's init die of SIGKILL.
    let waited = Command::new("timeout")
        .arg(harness::deadline().as_secs().to_string())
        .args(engine_cmd_args(&engine, &["wait", "k1"]))
        .output()
        .unwrap();
    assert_eq!(stdout(&waited), "137", "{}", stderr(&waited));
    assert_eq!(engine.inspect("k1", "{{.State.Running}}"), "false");
}

/// `docker -H SOCKET ARGS...` as an argument list (for wrapping in `timeout`).
fn engine_cmd_args(engine: &Engine, args: &[&str]) -> Vec<String> {
    let cmd = engine.docker_cmd();
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect()
}

#[test]
fn the_engines_memory_limit_still_applies_in_a_cage() {
    let (_listeners, _, daemon, engine) = web();
    // dd holds a 64 MiB buffer; the container may have 32.
    let out = run(
        &engine,
        "agentcage",
        true,
        &[
            "--name",
            "m1",
            "--memory",
            "32m",
            "--memory-swap",
            "32m",
            IMAGE,
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(engine.inspect("m1", "{{.State.OOMKilled}}"), "true");
    // It was caged: the daemon made its cgroup a cage.
    let id = engine.id_of("m1");
    daemon
        .log
        .wait_for("the memory test's container caged", |l| {
            l.contains("container caged") && l.contains(&id)
        });
    // Within the limit, the same command completes.
    let fits = run(
        &engine,
        "agentcage",
        true,
        &[
            "--rm",
            "--memory",
            "128m",
            "--memory-swap",
            "128m",
            IMAGE,
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
    );
    assert!(fits.status.success(), "{}", stderr(&fits));
}

#[test]
fn an_unknown_agent_or_a_privileged_container_is_refused_at_create_with_the_reason() {
    let (_listeners, _, _daemon, engine) = web();
    let unknown = engine
        .docker_cmd()
        .args(["run", "--rm", "--runtime", "agentcage", "--network", "none"])
        .args(["--label", "agentcage.agent=nobody", IMAGE, "/bin/true"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let err = stderr(&unknown);
    assert!(err.contains(r#"unknown agent "nobody""#), "{err}");
    let privileged = run(
        &engine,
        "agentcage",
        true,
        &["--rm", "--privileged", IMAGE, "/bin/true"],
    );
    assert!(!privileged.status.success());
    assert!(
        stderr(&privileged).contains("writable"),
        "{}",
        stderr(&privileged)
    );
}

/// The bounding set of the process that prints its /proc/self/status.
fn cap_bounding(status: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd")
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// `agentcage-runtime exec` as the engine's shim runs it (this host's root lacks
/// CAP_SYS_RESOURCE, so `docker exec --privileged` cannot start anything here): a process
/// asking for CAP_SYS_ADMIN and CAP_NET_RAW, which prints its own status.
fn exec_with_caps(engine: &Engine, name: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let process = dir.path().join("process.json");
    let caps = serde_json::json!(["CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_KILL"]);
    let json = serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/cat", "/proc/self/status"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
    });
    fs::write(&process, json.to_string()).unwrap();
    Command::new(bins::agentcage_runtime())
        .arg(format!("--agentcage-runtime={}", engine::RUNC))
        .arg("--root")
        .arg(engine.runc_root())
        .arg("exec")
        .args(extra)
        .arg("--process")
        .arg(&process)
        .arg(engine.id_of(name))
        .output()
        .unwrap()
}

#[test]
fn exec_into_a_caged_container_gets_no_capability_that_could_undo_the_cage() {
    let (_listeners, _, _daemon, engine) = web();
    const SYS_ADMIN: u64 = 1 << 21;
    const NET_RAW: u64 = 1 << 13;
    const KILL: u64 = 1 << 5;
    sleeper(&engine, "x1", true);
    let init = fs::read_to_string(format!(
        "/proc/{}/status",
        engine.inspect("x1", "{{.State.Pid}}")
    ))
    .unwrap();
    assert_eq!(cap_bounding(&init) & (SYS_ADMIN | NET_RAW), 0, "{init}");
    let exec = exec_with_caps(&engine, "x1", &[]);
    assert!(exec.status.success(), "{}", stderr(&exec));
    let bnd = cap_bounding(&stdout(&exec));
    assert_eq!(bnd & (SYS_ADMIN | NET_RAW), 0, "bounding set {bnd:x}");
    assert_ne!(bnd & KILL, 0, "what a cage allows is kept");
    let asked = exec_with_caps(&engine, "x1", &["--cap", "CAP_SYS_ADMIN"]);
    assert!(!asked.status.success());
    assert!(
        stderr(&asked).contains("could undo its cage"),
        "{}",
        stderr(&asked)
    );
    // In an uncaged container the same process keeps them (the test can fail).
    sleeper(&engine, "x2", false);
    let exec = exec_with_caps(&engine, "x2", &[]);
    assert!(exec.status.success(), "{}", stderr(&exec));
    assert_ne!(cap_bounding(&stdout(&exec)) & SYS_ADMIN, 0);
}

#[test]
fn the_application_socket_is_in_the_container_and_speaks_for_its_agent() {
    let (_listeners, _, daemon, engine) = web();
    let events = daemon.follow_events();
    let out = run(
        &engine,
        "agentcage",
        true,
        &[
            "--rm",
            IMAGE,
            "/probe",
            "app",
            "/run/agentcage/app.sock",
            r#"{"event":{"app":"plan","summary":"from a container"}}"#,
        ],
    );
    assert_eq!(stdout(&out), "ok", "{}", stderr(&out));
    let ev = events.wait_event("the application's plan", |v| {
        v["kind"] == "app" && v["summary"] == "from a container"
    });
    assert_eq!(ev["agent"], "agent:web");
    // Claiming another agent from inside the container is refused.
    let claim = run(
        &engine,
        "agentcage",
        true,
        &[
            "--rm",
            IMAGE,
            "/probe",
            "app",
            "/run/agentcage/app.sock",
            r#"{"agent":"other","event":{"app":"plan"}}"#,
        ],
    );
    assert!(
        stderr(&claim).contains("cannot speak for agent:other"),
        "{}",
        stderr(&claim)
    );
}

#[test]
fn a_restarted_daemon_takes_over_a_caged_container() {
    let (_listeners, port, daemon, engine) = web();
    sleeper(&engine, "r1", true);
    let pins = daemon.pin_dir().join("containers");
    // The cgroup programs, the kill tier's Unix-socket programs included where they load.
    let programs = daemon.cgroup_programs();
    let (dir, policy_file, socket, name) = daemon.stop_keeping_paths();
    // No daemon now: its pinned links keep the container's cgroup judged.
    assert_eq!(pinned_links(&pins), programs);
    let denied = engine.docker(&[
        "exec",
        "r1",
        "/probe",
        "connect",
        &format!("127.0.0.2:{port}"),
    ]);
    assert_eq!(stdout(&denied), "err 1", "{}", stderr(&denied));

    let daemon = Daemon::start_with(dir, policy_file, socket, name, &[]).expect("restart");
    // Said before "ready", which start_with waited for.
    let said = daemon.log.all.lock().unwrap().join("\n");
    assert!(said.contains("took over containers"), "{said}");
    let status = daemon.status();
    assert_eq!(
        status["agents"][0]["containers"][0]["container"]["name"], "r1",
        "{status}"
    );
    // This daemon's links replaced the earlier ones.
    assert_eq!(pinned_links(&pins), programs);
    let denied = engine.docker(&[
        "exec",
        "r1",
        "/probe",
        "connect",
        &format!("127.0.0.2:{port}"),
    ]);
    assert_eq!(stdout(&denied), "err 1", "{}", stderr(&denied));
    let allowed = engine.docker(&[
        "exec",
        "r1",
        "/probe",
        "connect",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(stdout(&allowed), "ok", "{}", stderr(&allowed));
    // And it contains it.
    let killed = daemon.cli().args(["kill", "web"]).output().unwrap();
    assert!(killed.status.success(), "{}", stderr(&killed));
    assert_eq!(engine.inspect("r1", "{{.State.Running}}"), "false");
}

/// How many links are pinned below `dir` (one directory per container cgroup).
fn pinned_links(dir: &Path) -> usize {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| fs::read_dir(d.path()).map_or(0, Iterator::count))
        .sum()
}

#[test]
fn an_approval_lets_a_containers_connect_through() {
    let ((_ok, _no), port) = listener_pair();
    let daemon = Daemon::start(&format!(
        "version: 1
agents:
  web:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [{port}]
          protocols: [tcp]
          requires_approval: true
"
    ));
    let engine = Engine::start(&daemon);
    let events = daemon.follow_events();
    sleeper(&engine, "a1", true);
    let dst = format!("127.0.0.1:{port}");
    let pending = engine.docker(&["exec", "a1", "/probe", "connect", &dst]);
    assert_eq!(stdout(&pending), "err 1", "denied until approved");
    let request = events.wait_event("the approval request", |e| {
        e["kind"] == "approval" && e["state"] == "requested"
    });
    let id = request["id"].as_u64().unwrap().to_string();
    let approved = daemon.cli().args(["approve", &id]).output().unwrap();
    assert!(approved.status.success(), "{}", stderr(&approved));
    let through = engine.docker(&["exec", "a1", "/probe", "connect", &dst]);
    assert_eq!(stdout(&through), "ok", "{}", stderr(&through));
    // A container started after the grant has it too.
    let later = run(
        &engine,
        "agentcage",
        true,
        &["--rm", IMAGE, "/probe", "connect", &dst],
    );
    assert_eq!(stdout(&later), "ok", "{}", stderr(&later));
}

#[test]
fn a_program_detached_from_a_container_is_put_back() {
    let (_listeners, port, daemon, engine) = web();
    sleeper(&engine, "w1", true);
    let cgroup = cgroup_of(&engine, "w1");
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&cgroup).unwrap().ino()
    };
    // Root outside every cage detaches the container's connect4 link, as bpftool lets it.
    let links = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&links.stdout).unwrap();
    let id = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["cgroup_id"] == cgroup_id && l["attach_type"] == "cgroup_inet4_connect")
        .expect("the container's connect4 link")["id"]
        .to_string();
    let detach = Command::new("bpftool")
        .args(["link", "detach", "id", &id])
        .output()
        .unwrap();
    assert!(detach.status.success(), "{}", stderr(&detach));
    daemon.log.wait_for("the repair", |l| {
        l.contains("container's programs re-attached")
    });
    assert_eq!(
        harness::attached_programs(&cgroup),
        daemon.cgroup_programs()
    );
    let denied = engine.docker(&[
        "exec",
        "w1",
        "/probe",
        "connect",
        &format!("127.0.0.2:{port}"),
    ]);
    assert_eq!(stdout(&denied), "err 1", "{}", stderr(&denied));
}

#[test]
fn exec_rules_hold_in_a_container_and_rules_by_host_path_are_refused() {
    // Nothing may be executed: the container's entrypoint itself is stopped (killed before
    // its first instruction in the kill tier, refused in the deny tier).
    let daemon = Daemon::start("version: 1\nagents:\n  web:\n    exec:\n      default: deny\n");
    let engine = Engine::start(&daemon);
    let events = daemon.follow_events();
    let out = run(
        &engine,
        "agentcage",
        true,
        &["--name", "e1", IMAGE, "/probe", "connect", "127.0.0.1:1"],
    );
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "", "the probe never ran");
    let ev = events.wait_event("the entrypoint's exec", |v| {
        v["kind"] == "exec" && v["container"]["name"] == "e1"
    });
    assert!(ev["verdict"] == "killed" || ev["verdict"] == "deny", "{ev}");
    drop(engine);
    drop(daemon);
    // A rule naming a host file could not apply to the image's files: refused, not ignored.
    let daemon =
        Daemon::start("version: 1\nagents:\n  web:\n    exec:\n      deny: [/usr/bin/dd]\n");
    let engine = Engine::start(&daemon);
    let out = run(&engine, "agentcage", true, &["--rm", IMAGE, "/bin/true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot run in a container: its exec rule /usr/bin/dd"),
        "{}",
        stderr(&out)
    );
    // Nor can a reload give such a rule to an agent whose container runs.
    let yaml = "version: 1\nagents:\n  web:\n    exec:\n      default: allow\n";
    daemon.rewrite_policy(yaml);
    let up = run(
        &engine,
        "agentcage",
        true,
        &["-d", IMAGE, "/bin/sleep", "1000"],
    );
    assert!(up.status.success(), "{}", stderr(&up));
    let reload = daemon
        .rewrite_policy("version: 1\nagents:\n  web:\n    exec:\n      deny: [/usr/bin/dd]\n");
    harness::assert_refused(&reload, "has caged containers");
}

/// Exec rules by content hold in a container in either tier: the probe, denied by its
/// digest, is stopped in the image while the image's other programs run (in the kill tier
/// the daemon's exec watch reads each exec's file in the container's own mount namespace;
/// unread content would be killed too).
#[test]
fn exec_rules_by_content_hold_in_a_container() {
    let sum = Command::new("sha256sum")
        .arg(bins::probe())
        .output()
        .unwrap();
    let text = stdout(&sum);
    let digest = text.split_whitespace().next().expect("a digest");
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  web:\n    exec:\n      deny: [\"sha256:{digest}\"]\n"
    ));
    let engine = Engine::start(&daemon);
    let out = run(
        &engine,
        "agentcage",
        true,
        &[
            "--rm",
            IMAGE,
            "/bin/sh",
            "-c",
            "/bin/true && echo ran; /probe connect 127.0.0.1:1; echo $?",
        ],
    );
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ran"), "{text}\n{}", stderr(&out));
    let status = lines.last().unwrap_or_default();
    assert!(
        status == "137" || status == "126",
        "the probe is killed (kill tier) or refused (deny tier): {text}"
    );
}
