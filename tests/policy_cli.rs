//! Policy as code, end to end: `agentcage policy check|apply|diff|show|schema`, reloads on
//! a change of the policy file, and hot reloads under load that change decisions without a
//! restart and never mix two policies.

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::harness;

use std::{collections::BTreeSet, fs, path::Path};

use harness::{stderr, stdout, tcp_listener, Daemon};

fn allow_port(port: u16) -> String {
    format!(
        "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n          protocols: [tcp]\n"
    )
}

/// The hash `agentcage policy check` reports for a policy text.
fn hash_of(daemon: &Daemon, yaml: &str) -> String {
    let file = daemon.dir.path().join(format!("check-{}.yaml", yaml.len()));
    fs::write(&file, yaml).unwrap();
    let out = daemon
        .cli()
        .args(["policy", "check"])
        .arg(&file)
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .rsplit("sha256 ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_owned()
}

/// Replaces a file the way editors do: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn in_force(daemon: &Daemon) -> String {
    let v = daemon.status();
    v["policy_hash"].as_str().unwrap().to_owned()
}

#[test]
fn apply_diff_and_show() {
    let (_a, a) = tcp_listener("127.0.0.1");
    let (_b, b) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&allow_port(a));
    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{b}")), "err 1");

    let show = daemon
        .cli()
        .args(["policy", "show"])
        .output_bounded()
        .unwrap();
    assert!(show.status.success(), "{}", stderr(&show));
    let text = stdout(&show);
    assert!(text.contains(&in_force(&daemon)), "{text}");
    assert!(text.contains(&format!("ports={a}")), "{text}");

    let next = daemon.dir.path().join("next.yaml");
    fs::write(&next, allow_port(b)).unwrap();
    let diff = daemon
        .cli()
        .args(["policy", "diff"])
        .arg(&next)
        .output_bounded()
        .unwrap();
    assert_eq!(diff.status.code(), Some(1), "they differ");
    let d = stdout(&diff);
    assert!(
        d.contains(&format!(
            "-  allow cidr=127.0.0.1/32 protocols=tcp ports={a}"
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "+  allow cidr=127.0.0.1/32 protocols=tcp ports={b}"
        )),
        "{d}"
    );

    let apply = daemon
        .cli()
        .args(["policy", "apply"])
        .arg(&next)
        .output_bounded()
        .unwrap();
    assert!(apply.status.success(), "{}", stderr(&apply));
    assert_eq!(in_force(&daemon), hash_of(&daemon, &allow_port(b)));
    // Running agents get it without a restart...
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{b}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{a}")), "err 1");
    // ...and the daemon's file holds it, so a reload or restart keeps it.
    assert_eq!(fs::read_to_string(&daemon.policy).unwrap(), allow_port(b));
    let same = daemon
        .cli()
        .args(["policy", "diff"])
        .arg(&next)
        .output_bounded()
        .unwrap();
    assert!(same.status.success(), "{}", stdout(&same));
    assert!(stdout(&same).contains("same as the policy in force"));

    // A broken file is refused, naming its place, and the policy in force stays.
    let broken = daemon.dir.path().join("broken.yaml");
    fs::write(
        &broken,
        allow_port(a).replace("127.0.0.1/32", "127.0.0.1/33"),
    )
    .unwrap();
    let refused = daemon
        .cli()
        .args(["policy", "apply"])
        .arg(&broken)
        .output_bounded()
        .unwrap();
    harness::assert_refused(&refused, &format!("{}:6:17", broken.display()));
    assert_eq!(in_force(&daemon), hash_of(&daemon, &allow_port(b)));
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{b}")), "ok");
    cage.finish();
    daemon.stop();
}

#[test]
fn a_changed_policy_file_is_reloaded_and_a_broken_one_refused() {
    let (_a, a) = tcp_listener("127.0.0.1");
    let (_b, b) = tcp_listener("127.0.0.1");
    let daemon = Daemon::start(&allow_port(a));
    let mut cage = daemon.serve_in("tester");
    let want = hash_of(&daemon, &allow_port(b));

    replace(&daemon.policy, &allow_port(b));
    daemon.log.wait_for("the reload", |l| {
        l.contains("policy in force") && l.contains(&want)
    });
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{b}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{a}")), "err 1");

    replace(
        &daemon.policy,
        "version: 1\nagents:\n  tester:\n    egres: {}\n",
    );
    daemon.log.wait_for("the refusal", |l| {
        l.contains("reload refused") && l.contains("egres")
    });
    assert_eq!(in_force(&daemon), want);
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{b}")), "ok");
    cage.finish();
    daemon.stop();
}

#[test]
fn hot_reload_under_load_changes_decisions_and_never_mixes_policies() {
    let (la, a) = tcp_listener("127.0.0.1");
    let (lb, b) = tcp_listener("127.0.0.1");
    // Hundreds of connections: accept them, or a full accept queue would stall the probe.
    for l in [la, lb] {
        std::thread::spawn(move || l.incoming().for_each(drop));
    }
    let daemon = Daemon::start(&allow_port(a));
    let (ha, hb) = (
        hash_of(&daemon, &allow_port(a)),
        hash_of(&daemon, &allow_port(b)),
    );
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("tester");

    const RELOADS: usize = 12;
    const OPS: usize = 300;
    let (policy, socket) = (daemon.policy.clone(), daemon.socket.clone());
    let ops = std::thread::scope(|s| {
        let reloader = s.spawn(|| {
            for i in 0..RELOADS {
                let port = if i % 2 == 0 { b } else { a };
                replace(&policy, &allow_port(port));
                let out = std::process::Command::new(harness::agentcage())
                    .arg("--socket")
                    .arg(&socket)
                    .args(["policy", "reload"])
                    .output_bounded()
                    .unwrap();
                assert!(out.status.success(), "{}", stderr(&out));
            }
        });
        // Decisions all through the reloads, and at least OPS of them.
        let mut i = 0;
        while i < OPS || !reloader.is_finished() {
            let port = if i % 2 == 0 { a } else { b };
            let r = cage.op(&format!("connect 127.0.0.1:{port}"));
            assert!(r == "ok" || r == "err 1", "{r}");
            i += 1;
        }
        reloader.join().unwrap();
        i
    });
    // A marker after everything: full events arrive in order, so once it is seen all are;
    // the summaries of the last repeats come at their window's end, so they are awaited
    // until the decisions add up (more would fail below too).
    assert_eq!(cage.op(&format!("connect 127.0.0.3:{a}")), "err 1");
    events.wait_event("the marker", |e| e["dst_addr"] == "127.0.0.3");
    let counted = |line: &str| -> usize {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            return 0;
        };
        match (e["kind"].as_str(), e["dst_addr"] == "127.0.0.1") {
            (Some("egress"), true) => 1,
            (Some("egress_summary"), true) => e["count"].as_u64().unwrap_or(0) as usize,
            _ => 0,
        }
    };
    // Up to the marker: the lines after it are still to be read from the follower.
    let so_far: usize = {
        let all = events.lines.all.lock().unwrap();
        let marker = all
            .iter()
            .rposition(|l| l.contains("\"127.0.0.3\""))
            .unwrap();
        all[..marker].iter().map(|l| counted(l)).sum()
    };
    if so_far < ops {
        let total = std::cell::Cell::new(so_far);
        events
            .lines
            .wait_for("the summaries of the last decisions", |l| {
                total.set(total.get() + counted(l));
                total.get() >= ops
            });
    }

    let lines = events.lines.all.lock().unwrap().clone();
    let mut seen = BTreeSet::new();
    let mut judged = 0;
    for line in lines {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        // A flood of one decision is reported once in full, then as summaries that count
        // the repeats (`egress_summary`, with the fields of the decision they stand for).
        let repeats = match e["kind"].as_str() {
            Some("egress") => 1,
            Some("egress_summary") => e["count"].as_u64().unwrap() as usize,
            _ => continue,
        };
        if e["dst_addr"] != "127.0.0.1" {
            continue;
        }
        judged += repeats;
        let hash = e["policy_hash"].as_str().unwrap().to_owned();
        let port = e["dst_port"].as_u64().unwrap() as u16;
        let allowed_port = if hash == ha {
            a
        } else if hash == hb {
            b
        } else {
            panic!("an event under an unknown policy {hash}: {e}");
        };
        let want = if port == allowed_port {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(
            e["verdict"], want,
            "a decision mixed two policies: {e} (policy {hash} allows port {allowed_port})"
        );
        seen.insert(hash);
    }
    assert_eq!(judged, ops, "every decision was reported");
    assert_eq!(seen.len(), 2, "decisions changed with the reloads");
    cage.finish();
    daemon.stop();
}

#[test]
fn check_and_schema_work_offline() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cli = || std::process::Command::new(harness::agentcage());
    for f in [
        "policies/default.yaml",
        "policies/examples/layered.yaml",
        "policies/examples/web-agent.yaml",
        "policies/examples/payments.yaml",
    ] {
        let out = cli()
            .args(["policy", "check"])
            .arg(repo.join(f))
            .output_bounded()
            .unwrap();
        assert!(out.status.success(), "{f}: {}", stderr(&out));
    }
    let schema = cli().args(["policy", "schema"]).output_bounded().unwrap();
    assert!(schema.status.success());
    let committed = fs::read_to_string(repo.join("policies/schema.json")).unwrap();
    assert_eq!(String::from_utf8(schema.stdout).unwrap(), committed);
    let bad = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        bad.path(),
        "version: 1\nagents:\n  a:\n    assertions:\n      - plan preceeds exec(x)\n",
    )
    .unwrap();
    let out = cli()
        .args(["policy", "check"])
        .arg(bad.path())
        .output_bounded()
        .unwrap();
    harness::assert_refused(&out, "invalid assertion");
    assert!(stderr(&out).contains(":5:9:"), "{}", stderr(&out));
}

#[test]
fn a_kubernetes_configmap_update_is_reloaded() {
    use std::os::unix::fs::symlink;
    let (_a, a) = tcp_listener("127.0.0.1");
    let (_b, b) = tcp_listener("127.0.0.1");
    // A ConfigMap volume: the file is a symlink through `..data`, which the kubelet points
    // at a new directory with one rename; the file itself is never written.
    let dir = tempfile::tempdir().unwrap();
    let first = "..2026_01_01_00_00_00.000000001";
    fs::create_dir(dir.path().join(first)).unwrap();
    fs::write(dir.path().join(first).join("policy.yaml"), allow_port(a)).unwrap();
    symlink(first, dir.path().join("..data")).unwrap();
    let policy = dir.path().join("policy.yaml");
    symlink("..data/policy.yaml", &policy).unwrap();
    let socket = dir.path().join("agentcage.sock");
    let cgroup = format!("agentcage-test-{}-configmap", std::process::id());
    let daemon = Daemon::start_with(dir, policy, socket, cgroup, &[]).expect("daemon");
    let events = daemon.follow_events();

    let second = "..2026_01_01_00_00_01.000000002";
    let root = daemon.dir.path();
    fs::create_dir(root.join(second)).unwrap();
    fs::write(root.join(second).join("policy.yaml"), allow_port(b)).unwrap();
    symlink(second, root.join("..data_tmp")).unwrap();
    fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    fs::remove_dir_all(root.join(first)).unwrap();

    events.wait_event("the reload of the swapped ConfigMap", |v| {
        v["kind"] == "policy" && v["result"] == "applied"
    });
    assert_eq!(in_force(&daemon), hash_of(&daemon, &allow_port(b)));
}
