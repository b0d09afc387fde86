//! Unix sockets by policy: with `unix:` an agent reaches only the socket addresses its list
//! names (paths, globs, `@abstract` names) and the daemon's application socket; anything else
//! fails with EPERM and is reported. Which hooks do it depends on the kernel (BPF LSM, else
//! the cgroup Unix socket hooks of 6.7 and later); with neither, such an agent is refused.
//! The uncaged listeners are the test process's own, in a temporary directory.

use agentcage_tests::harness;

use std::{
    io::{ErrorKind, Read as _},
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener},
    },
    path::Path,
};

use harness::{stderr, Daemon};

const EPERM: &str = "err 1";

/// How the daemon confines Unix sockets, as `status` says.
#[derive(Debug, PartialEq, Eq)]
enum Mechanism {
    Lsm,
    CgroupHooks,
    None,
}

/// The mechanism, checked against the tier and the kernel: the deny tier uses BPF LSM; the
/// kill tier the cgroup hooks exactly when the kernel is 6.7 or later.
fn mechanism(daemon: &Daemon) -> Mechanism {
    let status = daemon.status();
    let m = match &status["unix"] {
        serde_json::Value::String(s) if s == "lsm" => Mechanism::Lsm,
        serde_json::Value::String(s) if s == "cgroup_hooks" => Mechanism::CgroupHooks,
        v if v.get("unavailable").is_some() => Mechanism::None,
        v => panic!("status has no unix mechanism: {v}"),
    };
    let version = harness::kernel_version();
    let expected = match (status["tier"].as_str(), version >= (6, 7)) {
        (Some("deny"), _) => Mechanism::Lsm,
        (_, true) => Mechanism::CgroupHooks,
        (_, false) => Mechanism::None,
    };
    assert_eq!(m, expected, "kernel {version:?}, tier {}", status["tier"]);
    m
}

fn abstract_addr(name: &str) -> UnixAddr {
    UnixAddr::from_abstract_name(name.as_bytes()).unwrap()
}

/// A listener that must never see a connection: checked without blocking.
fn assert_untouched(listener: &UnixListener, what: &str) {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what} was reached: {other:?}"),
    }
}

/// Reads what the one connection a listener got carried.
fn received(listener: &UnixListener) -> String {
    listener.set_nonblocking(false).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Issue 11, case 3: a caged process reached a Unix socket an uncaged process listened on.
/// Now only the addresses the policy names are reachable, paths and abstract names alike,
/// for streams and datagrams; every refusal is an event naming the address.
#[test]
fn only_the_unix_addresses_the_policy_names_are_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let tag = std::process::id();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  a:\n    egress: {{allow_events: all}}\n    unix:\n      allow: [{d}/ok.sock, {d}/ok-dgram.sock, \"@agentcage-test-{tag}-ok-*\"]\n"
    ));
    if mechanism(&daemon) == Mechanism::None {
        // The kernel cannot confine them (checked against its version by `mechanism`): the
        // agent is refused, which the next test asserts.
        return;
    }
    let deny_hook = if daemon.status()["tier"] == "deny" {
        "lsm_unix_stream_connect"
    } else {
        "connect_unix"
    };
    let ok = UnixListener::bind(dir.path().join("ok.sock")).unwrap();
    let denied = UnixListener::bind(dir.path().join("denied.sock")).unwrap();
    let ok_abstract =
        UnixListener::bind_addr(&abstract_addr(&format!("agentcage-test-{tag}-ok-1"))).unwrap();
    let denied_abstract =
        UnixListener::bind_addr(&abstract_addr(&format!("agentcage-test-{tag}-denied"))).unwrap();
    let ok_dgram = UnixDatagram::bind(dir.path().join("ok-dgram.sock")).unwrap();
    let denied_dgram = UnixDatagram::bind(dir.path().join("denied-dgram.sock")).unwrap();
    harness::open_to_all(dir.path());
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("a");

    assert_eq!(
        cage.op(&format!("unix-connect {d}/denied.sock leak")),
        EPERM
    );
    let e = events.wait_event("the refused connect", |e| {
        e["kind"] == "unix" && e["verdict"] == "deny"
    });
    assert_eq!(e["path"], format!("{d}/denied.sock"), "{e}");
    assert_eq!(e["rule"], "default-deny");
    assert_eq!(e["hook"], deny_hook);
    assert_eq!(e["sock_type"], "stream");
    assert_eq!(e["agent"], "agent:a");
    assert_untouched(&denied, "the denied path");

    assert_eq!(cage.op(&format!("unix-connect {d}/ok.sock hi")), "ok");
    assert_eq!(received(&ok), "hi");
    let e = events.wait_event("the allowed connect", |e| {
        e["kind"] == "unix" && e["verdict"] == "allow"
    });
    assert_eq!(e["rule"], "unix.allow[0]", "{e}");

    assert_eq!(
        cage.op(&format!("unix-connect @agentcage-test-{tag}-denied leak")),
        EPERM
    );
    let e = events.wait_event("the refused abstract connect", |e| {
        e["kind"] == "unix" && e["path"] == format!("@agentcage-test-{tag}-denied")
    });
    assert_eq!(e["verdict"], "deny", "{e}");
    assert_untouched(&denied_abstract, "the denied abstract name");
    assert_eq!(
        cage.op(&format!("unix-connect @agentcage-test-{tag}-ok-1 hi")),
        "ok"
    );
    assert_eq!(received(&ok_abstract), "hi");

    // Datagrams: refused before they are queued.
    assert_eq!(
        cage.op(&format!("unix-send {d}/denied-dgram.sock leak")),
        EPERM
    );
    denied_dgram.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        denied_dgram.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing reached the denied receiver"
    );
    assert_eq!(cage.op(&format!("unix-send {d}/ok-dgram.sock hi")), "ok");
    let n = ok_dgram.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hi");

    // Outside the cage nothing changes.
    std::os::unix::net::UnixStream::connect(dir.path().join("denied.sock"))
        .expect("uncaged connects are not judged");
    cage.finish();
    daemon.stop();
}

/// Where the kernel can confine Unix sockets, an agent without `unix:` is not confined and
/// one with it runs; where it cannot, the one with it is refused, naming what is missing.
#[test]
fn an_agent_confining_unix_sockets_runs_only_where_the_kernel_can_confine_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("any.sock");
    let listener = UnixListener::bind(&path).unwrap();
    harness::open_to_all(dir.path());
    let daemon =
        Daemon::start("version: 1\nagents:\n  free: {}\n  confined:\n    unix:\n      allow: []\n");
    let p = path.display().to_string();
    let free = daemon.probe_in("free", &["unix-connect", &p, "hi"]);
    assert_eq!(harness::stdout(&free), "ok", "{free:?}");
    assert_eq!(received(&listener), "hi");
    let confined = daemon.probe_in("confined", &["unix-connect", &p, "leak"]);
    if mechanism(&daemon) == Mechanism::None {
        assert!(!confined.status.success());
        let err = stderr(&confined);
        assert!(err.contains("confines Unix sockets"), "{err}");
        assert!(err.contains("BPF LSM"), "names what is missing: {err}");
        assert!(err.contains("cgroup Unix socket hooks"), "{err}");
        assert!(!daemon.cgroup_root().join("confined").exists());
    } else {
        assert_eq!(harness::stdout(&confined), EPERM, "{confined:?}");
    }
    assert_untouched(&listener, "the socket the confined agent tried");
    daemon.stop();
}

/// The daemon's application socket stays reachable under any `unix:` list: it is how agents
/// report their tool and model calls.
#[test]
fn the_application_socket_stays_reachable() {
    let daemon = Daemon::start(
        "version: 1\nagents:\n  a:\n    egress: {allow_events: all}\n    unix:\n      allow: []\n",
    );
    if mechanism(&daemon) == Mechanism::None {
        return;
    }
    let events = daemon.follow_events();
    let app = daemon.app_socket();
    let out = daemon.probe_in("a", &["unix-connect", &app.display().to_string(), "\n"]);
    assert_eq!(harness::stdout(&out), "ok", "{out:?}");
    let e = events.wait_event("the allowed connect", |e| e["kind"] == "unix");
    assert_eq!(e["verdict"], "allow", "{e}");
    assert_eq!(e["rule"], "app-socket");
    assert!(Path::new(&app).exists());
    daemon.stop();
}
