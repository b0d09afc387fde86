//! The deny tier (BPF LSM active, as in the deny boots of `cargo xtask vm-test`): forbidden
//! execs and opens fail with EPERM, by file and, where the kernel hashes for BPF, by content.
//!
//! Not part of the host's `cargo test` (the host kernel refuses BPF LSM): `cargo xtask
//! vm-test` runs it inside the VMs, where AGENTCAGE_EXPECT_TIER=deny and
//! AGENTCAGE_EXPECT_REFUSED names what the kernel lacks (5.10: file and content rules, whose
//! tests that boot skips; `kernel` checks the refusals).

use agentcage_tests::bounded::Bounded as _;
use agentcage_tests::harness;

use std::{fs, os::unix::fs::PermissionsExt as _};

use harness::Daemon;

const EPERM: &str = "err 1";

fn copy_of(src: &str, dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    fs::copy(src, &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn denied_execs_fail_with_eperm_even_renamed_and_allowed_ones_run() {
    let bins = tempfile::tempdir().unwrap();
    let denied = copy_of("/bin/true", bins.path(), "denied-true");
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    exec:\n      deny: [{denied}]\n"
    ));
    daemon.expect_tier("deny");
    // Linux before 5.18 (and kernels without IMA) cannot hash for BPF: there a deny rule by
    // path stops that file only, as README's limits say.
    let hashes = !harness::expected_refused("deny").contains(&"content_rules");
    assert_eq!(
        daemon.status()["content_hashes"],
        hashes,
        "IMA hashing for BPF as this kernel should have it"
    );
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("t");

    assert_eq!(cage.op(&format!("exec {denied}")), EPERM);
    // A copy made after the policy was applied is the same content: still denied where
    // content is judged.
    let renamed = copy_of(&denied, bins.path(), "innocent-name");
    assert_eq!(
        cage.op(&format!("exec {renamed}")),
        if hashes { EPERM } else { "ok" }
    );
    // Another binary (other content: /bin/true's is denied along with its copy where content
    // is judged) runs.
    assert_eq!(cage.op("exec /bin/echo"), "ok");

    let e = events.wait_event("the refused exec", |e| {
        e["kind"] == "exec" && e["filename"] == denied.as_str()
    });
    assert_eq!(e["verdict"], "deny");
    assert_eq!(e["hook"], "lsm");
    assert_eq!(e["rule"], "exec.deny[0]");
    // Outside the cage, the denied binary runs.
    assert!(std::process::Command::new(&denied)
        .status_bounded()
        .unwrap()
        .success());
}

#[test]
fn an_allow_list_refuses_everything_else() {
    let bins = tempfile::tempdir().unwrap();
    let listed = copy_of("/bin/true", bins.path(), "listed");
    let probe = harness::probe();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    exec:\n      default: deny\n      allow: [{}, {listed}]\n",
        probe.display()
    ));
    daemon.expect_tier("deny");
    let mut cage = daemon.serve_in("t");
    assert_eq!(cage.op(&format!("exec {listed}")), "ok");
    assert_eq!(cage.op("exec /bin/echo"), EPERM);
}

#[test]
fn protected_files_cannot_be_opened_even_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    fs::write(&secret, "s3cret").unwrap();
    let readable = dir.path().join("readable");
    fs::write(&readable, "hello").unwrap();
    let vault = dir.path().join("vault");
    fs::create_dir(&vault).unwrap();
    fs::write(vault.join("key"), "k").unwrap();
    let link = dir.path().join("link-to-secret");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    files:\n      protect:\n        - path: {}\n        - path: {}/**\n        - path: {}\n          access: write\n",
        secret.display(),
        vault.display(),
        readable.display()
    ));
    daemon.expect_tier("deny");
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("t");

    assert_eq!(cage.op(&format!("open {} r", secret.display())), EPERM);
    assert_eq!(
        cage.op(&format!("open {} r", link.display())),
        EPERM,
        "via a symlink"
    );
    assert_eq!(
        cage.op(&format!("open {}/key r", vault.display())),
        EPERM,
        "below a protected directory"
    );
    assert_eq!(
        cage.op(&format!("open {} r", readable.display())),
        "ok",
        "read is allowed"
    );
    assert_eq!(
        cage.op(&format!("open {} w", readable.display())),
        EPERM,
        "write is not"
    );

    let e = events.wait_event("the refused open", |e| e["kind"] == "file");
    assert_eq!(e["verdict"], "deny");
    assert_eq!(e["rule"], "files.protect[0]");
    // Outside the cage the file reads fine.
    assert_eq!(fs::read_to_string(&secret).unwrap(), "s3cret");
}

#[test]
fn the_lsm_connect_hook_refuses_first_and_reports_once() {
    let (_listeners, port) = harness::listener_pair();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n"
    ));
    daemon.expect_tier("deny");
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("t");
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), EPERM);
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    let denied = events.wait_event("the refusal", |e| {
        e["kind"] == "egress" && e["verdict"] == "deny"
    });
    assert_eq!(denied["hook"], "lsm_socket_connect", "{denied}");
    // The allowed connect is reported by the cgroup hook, once.
    let allowed = events.wait_event("the allowed connect", |e| {
        e["kind"] == "egress" && e["verdict"] == "allow"
    });
    assert_eq!(allowed["hook"], "connect4");
}

/// A protected file cannot be renamed away, given a second name, truncated or replaced,
/// nothing can be created in a protected directory, and no user namespace can be made (in
/// one, the agent could mount over protected paths).
#[test]
fn protected_places_cannot_be_escaped_or_changed_by_other_calls() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    fs::create_dir(&vault).unwrap();
    let key = vault.join("key");
    fs::write(&key, "k").unwrap();
    let outside = dir.path().join("outside");
    fs::write(&outside, "o").unwrap();
    let d = dir.path().display();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    files:\n      protect:\n        - path: {}/**\n",
        vault.display()
    ));
    daemon.expect_tier("deny");
    let mut cage = daemon.serve_in("t");
    let k = key.display();
    let v = vault.display();
    for (op, what) in [
        (
            format!("link {k} {d}/alias"),
            "a hard link to a protected file",
        ),
        (
            format!("rename {k} {d}/moved"),
            "renaming a protected file away",
        ),
        (
            format!("rename {d}/outside {k}"),
            "replacing a protected file",
        ),
        (format!("truncate {k}"), "truncate(2)"),
        (format!("open-trunc {k}"), "O_TRUNC on a read-only open"),
        (format!("unlink {k}"), "unlink"),
        (
            format!("create {v}/new"),
            "creating in a protected directory",
        ),
        (format!("mkdir {v}/sub"), "mkdir in a protected directory"),
        ("userns".to_owned(), "a new user namespace"),
    ] {
        assert_eq!(cage.op(&op), EPERM, "{what} must be refused ({op})");
    }
    assert_eq!(fs::read_to_string(&key).unwrap(), "k", "the file is intact");
    assert!(!dir.path().join("alias").exists());
    // Outside the protected directory all of it works.
    assert_eq!(cage.op(&format!("rename {d}/outside {d}/renamed")), "ok");
    assert_eq!(cage.op(&format!("create {d}/fresh")), "ok");
}

/// A program run through the dynamic loader is mapped, not exec'd. So in a cage with exec
/// rules the loader may not be the program of an exec; where a policy names the loader to
/// allow it, `mmap_file` still refuses a denied program it maps.
#[test]
fn a_denied_program_cannot_run_through_the_dynamic_loader() {
    let bins = tempfile::tempdir().unwrap();
    let denied = copy_of("/bin/touch", bins.path(), "denied-touch");
    let loader = "/lib64/ld-linux-x86-64.so.2";
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    exec:\n      deny: [{denied}]\n  \
         named:\n    run_as: root\n    exec:\n      allow: [{loader}]\n      deny: [{denied}]\n"
    ));
    daemon.expect_tier("deny");
    let events = daemon.follow_events();
    let marker = bins.path().join("ran");

    let mut cage = daemon.serve_in("t");
    let by_loader = format!("exec {loader} {denied} {}", marker.display());
    assert_eq!(cage.op(&by_loader), EPERM);
    assert_eq!(cage.op(&format!("exec {loader} /bin/true")), EPERM);
    let e = events.wait_event("the refused loader", |e| {
        e["kind"] == "exec" && e["rule"] == "loader"
    });
    assert_eq!((&e["verdict"], &e["hook"]), (&"deny".into(), &"lsm".into()));
    // Dynamic programs still map it as their interpreter.
    assert_eq!(cage.op("exec /bin/true"), "ok");

    let mut named = daemon.serve_in("named");
    assert_ne!(named.op(&by_loader), "ok");
    let e = events.wait_event("the refused mapping", |e| {
        e["kind"] == "exec" && e["hook"] == "lsm_mmap"
    });
    assert_eq!(e["verdict"], "deny");
    assert_eq!(e["rule"], "exec.deny[0]");
    assert!(!marker.exists(), "nothing of the denied program ran");
    // The loader named in the policy runs an allowed program.
    assert_eq!(named.op(&format!("exec {loader} /bin/true")), "ok");
}

/// The read-only rung also stops writes where the kernel can refuse them: no regular file
/// may be written or created, while reads and /dev/null still work.
#[test]
fn the_read_only_rung_refuses_file_writes() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes");
    fs::write(&notes, "n").unwrap();
    let daemon = root_agent_without_file_hooks();
    let mut cage = daemon.serve_in("t");
    let n = notes.display();
    assert_eq!(cage.op(&format!("open {n} w")), "ok", "writable before");
    let out = daemon
        .cli()
        .args(["contain", "t", "read_only"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", harness::stderr(&out));
    // The rung's first write is refused: the hooks were attached before it took effect.
    assert_eq!(cage.op(&format!("open {n} w")), EPERM);
    assert_eq!(file_open_state(&daemon), "attached");
    assert_eq!(
        cage.op(&format!("create {}/new", dir.path().display())),
        EPERM
    );
    assert_eq!(cage.op(&format!("open {n} r")), "ok", "reads go on");
    assert_eq!(cage.op("open /dev/null w"), "ok", "devices are not files");
    let out = daemon.cli().args(["resume", "t"]).output_bounded().unwrap();
    assert!(out.status.success(), "{}", harness::stderr(&out));
    assert_eq!(cage.op(&format!("open {n} w")), "ok", "writable again");
}

/// A deny-tier daemon for one root agent `t` with no file rules: no cage needs the file hooks
/// yet, so they are not attached (nor verified) yet.
fn root_agent_without_file_hooks() -> Daemon {
    let daemon = Daemon::start("version: 1\nagents:\n  t: {run_as: root}\n");
    daemon.expect_tier("deny");
    let state = file_open_state(&daemon);
    assert!(state.starts_with("not loaded yet"), "{state}");
    daemon
}

/// The state `status` gives the `file_open` hook.
fn file_open_state(daemon: &Daemon) -> String {
    let status = daemon.status();
    status["hooks"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["hook"] == "lsm/file_open"))
        .and_then(|h| h["state"].as_str())
        .unwrap_or_else(|| panic!("no lsm/file_open in {status}"))
        .to_owned()
}

/// File rules that arrive with a reload are enforced from the first cage that has them: the
/// file hooks, not attached while no cage needed them, are attached before it runs.
#[test]
fn file_rules_that_arrive_with_a_reload_hold_from_the_first_cage() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    fs::write(&secret, "s3cret").unwrap();
    let daemon = root_agent_without_file_hooks();
    let out = daemon.rewrite_policy(&format!(
        "version: 1\nagents:\n  t:\n    run_as: root\n    files:\n      protect:\n        - path: {}\n",
        secret.display()
    ));
    assert!(out.status.success(), "{}", harness::stderr(&out));
    let read = daemon.probe_in("t", &["open", &secret.display().to_string(), "r"]);
    assert_eq!(harness::stdout(&read), EPERM, "{read:?}");
    assert_eq!(file_open_state(&daemon), "attached");
}

/// In the deny tier a Unix socket is judged by the address its listener bound: a symlink
/// with an allowed name leads nowhere the policy does not name.
#[test]
fn a_unix_socket_is_judged_by_its_listeners_own_address() {
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let _denied = UnixListener::bind(dir.path().join("denied.sock")).unwrap();
    let allowed = UnixListener::bind(dir.path().join("ok.sock")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("denied.sock"), dir.path().join("link.sock"))
        .unwrap();
    harness::open_to_all(dir.path());
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    unix:\n      allow: [{d}/ok.sock, {d}/link.sock]\n"
    ));
    daemon.expect_tier("deny");
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("t");
    assert_eq!(cage.op(&format!("unix-connect {d}/link.sock leak")), EPERM);
    let e = events.wait_event("the refusal", |e| e["kind"] == "unix");
    assert_eq!(e["path"], format!("{d}/denied.sock"), "{e}");
    assert_eq!(e["hook"], "lsm_unix_stream_connect");
    assert_eq!(cage.op(&format!("unix-connect {d}/ok.sock hi")), "ok");
    drop(allowed);
}

/// A listener in the agent's own cage is always reachable, whatever `unix:` lists.
#[test]
fn unix_listeners_in_the_same_cage_are_reachable() {
    let dir = tempfile::tempdir().unwrap();
    harness::open_to_all(dir.path());
    let daemon = Daemon::start("version: 1\nagents:\n  t:\n    unix:\n      allow: []\n");
    daemon.expect_tier("deny");
    let mut cage = daemon.serve_in("t");
    let path = dir.path().join("own.sock");
    assert_eq!(cage.op(&format!("unix-self {}", path.display())), "ok");
    assert_eq!(cage.op("unix-self @agentcage-own-listener"), "ok");
}

/// Sends `fd` over `stream` with SCM_RIGHTS.
fn send_fd(stream: &std::os::unix::net::UnixStream, fd: std::os::fd::RawFd) {
    use std::os::fd::AsRawFd as _;
    let byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut _,
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call, and the
    // cmsg header and data stay inside `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        assert_eq!(
            libc::sendmsg(stream.as_raw_fd(), &raw const msg, 0),
            1,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A connection made outside the cage and passed in carries no data to or from a peer the
/// agent's policy does not allow; one to an allowed peer works.
#[test]
fn a_socket_passed_in_from_outside_is_judged_by_its_peer() {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        os::{fd::AsRawFd as _, unix::net::UnixListener},
    };
    let dir = tempfile::tempdir().unwrap();
    let hand = dir.path().join("hand.sock");
    let handoff = UnixListener::bind(&hand).unwrap();
    harness::open_to_all(dir.path());
    let denied_server = TcpListener::bind("127.0.0.2:0").unwrap();
    let allowed_server = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = allowed_server.local_addr().unwrap().port();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  t:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{allowed_port}]\n"
    ));
    daemon.expect_tier("deny");
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("t");

    let outside = TcpStream::connect(denied_server.local_addr().unwrap()).unwrap();
    let (mut far_end, _) = denied_server.accept().unwrap();
    cage.send(&format!("fd-recv-from {}", hand.display()));
    let courier = harness::accept_within(&handoff, "the cage's fd-recv-from");
    send_fd(&courier, outside.as_raw_fd());
    assert_eq!(cage.read_answer(), "ok");
    assert_eq!(cage.op("fd-send leak"), EPERM);
    let e = events.wait_event("the refused send", |e| {
        e["kind"] == "egress" && e["hook"] == "lsm_socket_sendmsg"
    });
    assert_eq!(e["dst_addr"], "127.0.0.2", "{e}");
    assert_eq!(e["verdict"], "deny");
    far_end.write_all(b"orders").unwrap();
    assert_eq!(
        cage.op("fd-read"),
        EPERM,
        "nothing from that peer reaches the agent"
    );
    far_end.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        far_end.read(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing reached the peer"
    );

    // A connection to an allowed peer, passed in the same way, works.
    let allowed = TcpStream::connect(("127.0.0.1", allowed_port)).unwrap();
    let (mut allowed_end, _) = allowed_server.accept().unwrap();
    cage.send(&format!("fd-recv-from {}", hand.display()));
    let courier = harness::accept_within(&handoff, "the cage's fd-recv-from");
    send_fd(&courier, allowed.as_raw_fd());
    assert_eq!(cage.read_answer(), "ok");
    assert_eq!(cage.op("fd-send hello"), "ok");
    let mut got = [0u8; 5];
    allowed_end.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
}
