//! Test harness: a real agentcaged per test (own socket, own parent cgroup, own pin
//! directory, so tests run in parallel), the real agentcage CLI, and loopback listeners.
//!
//! Waiting is always for a condition (a log line, a printed line), bounded by a deadline;
//! never a fixed sleep.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

pub use crate::bins::{agentcage, agentcaged, probe};
pub use crate::bounded::Bounded;
pub use crate::lines::Lines;
pub use crate::served::{serve_outside, Follower, Outsider, Served};
pub use crate::sockets::{
    accept_within, assert_refused, listener_pair, open_to_all, stderr, stdout, tcp_listener,
    tcp_listener_at, udp_listener,
};

/// How long an awaited condition may take on the host before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How long any awaited condition may take before the test fails: [`DEADLINE`], or
/// `AGENTCAGE_TEST_DEADLINE_SECS` where everything runs slower (`cargo xtask vm-test` sets it:
/// under qemu's emulation loading the programs alone takes seconds).
pub fn deadline() -> Duration {
    std::env::var("AGENTCAGE_TEST_DEADLINE_SECS").map_or(DEADLINE, |v| {
        Duration::from_secs(
            v.parse()
                .unwrap_or_else(|_| panic!("AGENTCAGE_TEST_DEADLINE_SECS={v:?} is not a number")),
        )
    })
}

/// The policy features (`deny_enforcement`, `file_rules`, `content_rules`, `unix_sockets`,
/// in that order) the daemon must refuse in `tier`: AGENTCAGE_EXPECT_REFUSED
/// (comma-separated) where the test runner names what its kernel lacks (`cargo xtask
/// vm-test` does, per boot), else none in the deny tier, and in the kill tier what needs
/// BPF LSM (not `content_rules`: the daemon's exec watch judges those) and, before Linux 6.7
/// (no cgroup Unix socket hooks), `unix_sockets`.
pub fn expected_refused(tier: &str) -> Vec<&'static str> {
    const ALL: [&str; 4] = [
        "deny_enforcement",
        "file_rules",
        "content_rules",
        "unix_sockets",
    ];
    match std::env::var("AGENTCAGE_EXPECT_REFUSED") {
        Ok(list) => {
            let named: Vec<&str> = list.split(',').filter(|f| !f.is_empty()).collect();
            for f in &named {
                assert!(ALL.contains(f), "AGENTCAGE_EXPECT_REFUSED names {f:?}");
            }
            ALL.into_iter().filter(|f| named.contains(f)).collect()
        }
        Err(_) if tier == "kill" => ["deny_enforcement", "file_rules", "unix_sockets"]
            .into_iter()
            .filter(|&f| f != "unix_sockets" || kernel_version() < (6, 7))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The running kernel's version (major, minor), from uname.
pub fn kernel_version() -> (u32, u32) {
    // SAFETY: uname fills the struct it is given.
    let uts = unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        assert_eq!(libc::uname(&mut uts), 0);
        uts
    };
    // SAFETY: the kernel NUL-terminates the release.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy();
    let mut numbers = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless the test runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the end-to-end tests need root (real eBPF, real cgroups)"
    );
}

/// One running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// Its private directory: the policy file, the sockets, the snapshots.
    pub dir: tempfile::TempDir,
    /// The control socket.
    pub socket: PathBuf,
    /// The policy file it was started on.
    pub policy: PathBuf,
    /// The name of its parent cgroup (and of its pin directory).
    pub cgroup_name: String,
    /// Its log (stderr).
    pub log: Lines,
}

impl Daemon {
    /// Starts agentcaged on `policy_yaml` and waits until it is ready.
    pub fn start(policy_yaml: &str) -> Self {
        Self::start_args(policy_yaml, &[])
    }

    /// Starts agentcaged with extra arguments.
    pub fn start_args(policy_yaml: &str, args: &[&str]) -> Self {
        Self::try_start_customized(policy_yaml, |c| {
            c.args(args);
        })
        .expect("agentcaged did not become ready")
    }

    /// Starts agentcaged with a configuration file (`config.yaml` in its directory, where a
    /// restart finds it again) holding `config_yaml`.
    pub fn start_with_config(policy_yaml: &str, config_yaml: &str) -> Self {
        Self::try_start_in(policy_yaml, Some(config_yaml), |_| {}, deadline())
            .expect("agentcaged did not become ready")
    }

    /// Starts agentcaged on `policy_yaml` in fresh paths, with `customize` applied to its
    /// command (arguments, limits, capabilities); Err(log) if it exits instead.
    pub fn try_start_customized(
        policy_yaml: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Result<Self, String> {
        Self::try_start_in(policy_yaml, None, customize, deadline())
    }

    /// Starts agentcaged with extra arguments, allowing it `within` to become ready (a
    /// daemon that runs its self-test first takes a while).
    pub fn start_args_within(policy_yaml: &str, args: &[&str], within: Duration) -> Self {
        Self::try_start_in(
            policy_yaml,
            None,
            |c| {
                c.args(args);
            },
            within,
        )
        .expect("agentcaged did not become ready")
    }

    fn try_start_in(
        policy_yaml: &str,
        config_yaml: Option<&str>,
        customize: impl FnOnce(&mut Command),
        within: Duration,
    ) -> Result<Self, String> {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        // Agents under dynamic uids pass through to their homes (`home/NAME`, each 0700).
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).expect("chmod");
        let config = config_yaml.map(|config| {
            let path = dir.path().join("config.yaml");
            fs::write(&path, config).expect("write config");
            path
        });
        let policy = dir.path().join("policy.yaml");
        fs::write(&policy, policy_yaml).expect("write policy");
        let cgroup_name = format!(
            "agentcage-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let socket = dir.path().join("agentcage.sock");
        Self::launch(
            dir,
            policy,
            socket,
            cgroup_name,
            |c| {
                if let Some(config) = &config {
                    c.arg("--config").arg(config);
                }
                customize(c);
            },
            within,
        )
    }

    /// Starts a daemon on existing paths (e.g. a restart); Err(log) if it exits instead.
    pub fn start_with(
        dir: tempfile::TempDir,
        policy: PathBuf,
        socket: PathBuf,
        cgroup_name: String,
        args: &[&str],
    ) -> Result<Self, String> {
        Self::launch(
            dir,
            policy,
            socket,
            cgroup_name,
            |c| {
                c.args(args);
            },
            deadline(),
        )
    }

    fn launch(
        dir: tempfile::TempDir,
        policy: PathBuf,
        socket: PathBuf,
        cgroup_name: String,
        customize: impl FnOnce(&mut Command),
        within: Duration,
    ) -> Result<Self, String> {
        let mut command = Command::new(agentcaged());
        customize(&mut command);
        let mut child = command
            .arg("--policy")
            .arg(&policy)
            .arg("--socket")
            .arg(&socket)
            .arg("--app-socket")
            .arg(app_socket_of(&socket))
            .arg("--snapshot-dir")
            .arg(snapshots_of(&socket))
            .arg("--home-dir")
            .arg(homes_of(&socket))
            .arg("--state-dir")
            .arg(state_of(&socket))
            .arg("--certificate-dir")
            .arg(certificates_of(&socket))
            .arg("--cgroup-name")
            .arg(&cgroup_name)
            .env("NO_COLOR", "1")
            .env("RUST_LOG_STYLE", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentcaged");
        let log = Lines::spawn(child.stderr.take().unwrap());
        let ready = {
            let deadline = std::time::Instant::now() + within;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match log.rx.recv_timeout(left) {
                    Ok(line) if line.contains("agentcaged ready") => break true,
                    Ok(_) => {}
                    // Disconnected: the daemon exited (stderr closed).
                    Err(_) => break false,
                }
            }
        };
        let mut daemon = Self {
            child: Some(child),
            dir,
            socket,
            policy,
            cgroup_name,
            log,
        };
        if ready {
            Ok(daemon)
        } else {
            let _ = daemon.child.as_mut().unwrap().kill();
            let _ = daemon.child.take().unwrap().wait();
            // What a daemon that never started would clean up may belong to another one.
            daemon.cgroup_name.clear();
            Err(daemon.log.all.lock().unwrap().join("\n"))
        }
    }

    /// The application socket (beside the control socket).
    pub fn app_socket(&self) -> PathBuf {
        app_socket_of(&self.socket)
    }

    /// Where forensic snapshots go (beside the control socket).
    pub fn snapshot_dir(&self) -> PathBuf {
        snapshots_of(&self.socket)
    }

    /// Its state directory (node keys, jwks.json, revocations), beside the control socket.
    pub fn state_dir(&self) -> PathBuf {
        state_of(&self.socket)
    }

    /// Where it looks for agents' behavior certificates (`NAME.json`).
    pub fn certificate_dir(&self) -> PathBuf {
        certificates_of(&self.socket)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The parent cgroup of this daemon's cages.
    pub fn cgroup_root(&self) -> PathBuf {
        cgroup2_mount().join(&self.cgroup_name)
    }

    /// Where it pins its programs and maps.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.cgroup_name)
    }

    /// `agentcage --socket S --state-dir D ARGS...`
    pub fn cli(&self) -> Command {
        let mut c = Command::new(agentcage());
        c.arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state_dir());
        c
    }

    /// `agentcage run --agent AGENT -- probe OP...`, returning its output.
    pub fn probe_in(&self, agent: &str, op: &[&str]) -> Output {
        self.cli()
            .args(["run", "--agent", agent, "--"])
            .arg(probe())
            .args(op)
            .output_bounded()
            .expect("run agentcage")
    }

    /// Starts a probe that holds the cage and takes operations on stdin.
    pub fn serve_in(&self, agent: &str) -> Served {
        let mut cmd = self.cli();
        cmd.args(["run", "--agent", agent, "--"])
            .arg(probe())
            .arg("serve");
        Served::start(&mut cmd)
    }

    /// `agentcage adopt --agent AGENT --pid PID`.
    pub fn adopt(&self, agent: &str, pid: u32) -> Output {
        self.cli()
            .args(["adopt", "--agent", agent, "--pid", &pid.to_string()])
            .output_bounded()
            .expect("run agentcage")
    }

    /// Reloads the policy file after replacing it with `yaml`.
    pub fn rewrite_policy(&self, yaml: &str) -> Output {
        fs::write(&self.policy, yaml).unwrap();
        self.cli()
            .args(["policy", "reload"])
            .output_bounded()
            .unwrap()
    }

    /// `agentcage status -o json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let mut cli = self.cli();
        cli.args(["status", "-o", "json"]);
        let out = cli.output_bounded().expect("run agentcage status");
        assert!(out.status.success(), "status failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// Asserts the daemon runs in `want` tier (`deny` or `kill`), and that this agrees with
    /// AGENTCAGE_EXPECT_TIER when the test runner (cargo xtask test / vm-test) sets it: a
    /// probe that picked the wrong tier fails here rather than running the wrong suite. So
    /// must the policy features the daemon refuses (see [`expected_refused`]).
    pub fn expect_tier(&self, want: &str) {
        if let Ok(expected) = std::env::var("AGENTCAGE_EXPECT_TIER") {
            assert_eq!(
                expected, want,
                "this suite is for the {want} tier but the runner expects {expected}"
            );
        }
        let status = self.status();
        assert_eq!(
            status["tier"], want,
            "the daemon runs in tier {} ({}); this suite needs {want}",
            status["tier"], status["tier_missing"]
        );
        let refused: Vec<&str> = status["refused"]
            .as_array()
            .expect("status lists what is refused")
            .iter()
            .map(|r| r["feature"].as_str().expect("a feature name"))
            .collect();
        assert_eq!(
            refused,
            expected_refused(want),
            "the daemon refuses other policy features than this kernel should: {:#}",
            status["refused"]
        );
    }

    /// Links the daemon pinned: its cgroup programs and its attached host-wide hooks.
    pub fn expected_pins(&self) -> usize {
        let hooks = self.status()["hooks"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter(|h| {
                        h["state"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("attached"))
                    })
                    .count()
            })
            .unwrap_or(0);
        agentcage::bpf::PROGRAMS.len() + hooks
    }

    /// Programs the daemon attaches to its parent cgroup: aya's, and the Unix-socket hooks
    /// it loads itself where the kernel has them (attached `cgroup/...` hooks in `status`).
    pub fn cgroup_programs(&self) -> usize {
        let unix = self.status()["hooks"].as_array().map_or(0, |hooks| {
            hooks
                .iter()
                .filter(|h| {
                    h["state"] == "attached"
                        && h["hook"].as_str().is_some_and(|s| s.starts_with("cgroup/"))
                })
                .count()
        });
        agentcage::bpf::PROGRAMS.len() + unix
    }

    /// Follows events; returns once the subscription is live.
    pub fn follow_events(&self) -> Follower {
        let mut child = self
            .cli()
            .args(["events", "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = Lines::spawn(child.stderr.take().unwrap());
        let out: ChildStdout = child.stdout.take().unwrap();
        err.wait_for("the event subscription", |l| l.contains("following events"));
        Follower {
            child,
            lines: Lines::spawn(out),
        }
    }

    /// SIGTERM and wait; returns the daemon's log.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log.all.lock().unwrap().join("\n")
    }

    fn terminate(&mut self) {
        if let Some(child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = crate::bounded::wait_bounded(child, "agentcaged's stop after SIGTERM");
            assert!(
                status.success(),
                "agentcaged exited with {status}:\n{}",
                self.log.all.lock().unwrap().join("\n")
            );
        }
    }

    /// Hands the paths over for a restart without cleaning up.
    pub fn stop_keeping_paths(mut self) -> (tempfile::TempDir, PathBuf, PathBuf, String) {
        self.terminate();
        self.into_paths()
    }

    /// SIGKILLs the daemon (no chance to clean up) and hands the paths over.
    pub fn kill_keeping_paths(mut self) -> (tempfile::TempDir, PathBuf, PathBuf, String) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.into_paths()
    }

    fn into_paths(mut self) -> (tempfile::TempDir, PathBuf, PathBuf, String) {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let name = std::mem::take(&mut self.cgroup_name);
        (dir, self.policy.clone(), self.socket.clone(), name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.cgroup_name.is_empty() {
            cleanup_cgroup(&self.cgroup_root());
            let _ = fs::remove_dir_all(self.pin_dir());
        }
    }
}

fn app_socket_of(socket: &Path) -> PathBuf {
    socket.with_file_name("app.sock")
}

fn snapshots_of(socket: &Path) -> PathBuf {
    socket.with_file_name("snapshots")
}

fn homes_of(socket: &Path) -> PathBuf {
    socket.with_file_name("home")
}

fn state_of(socket: &Path) -> PathBuf {
    socket.with_file_name("state")
}

fn certificates_of(socket: &Path) -> PathBuf {
    socket.with_file_name("certificates")
}

/// Kills whatever a failed test left in the cgroup tree and removes it.
pub fn cleanup_cgroup(root: &Path) {
    if !root.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                let _ = fs::write(e.path().join("cgroup.kill"), "1");
                // rmdir succeeds once the killed processes are reaped; retry boundedly.
                for _ in 0..200 {
                    if fs::remove_dir(e.path()).is_ok() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    let _ = fs::remove_dir(root);
}

/// The cgroup v2 mount, from mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("cgroup2 mounted")
}

/// How many programs are attached to `cgroup` itself: those `bpftool` lists, and those on
/// the Unix socket-address hooks, which Debian 12's bpftool does not know (asked of the
/// kernel directly).
pub fn attached_programs(cgroup: &Path) -> usize {
    let btf = agentcage::bpf::btf::Btf::from_sys_fs().expect("the kernel's BTF");
    let unix: usize = agentcage::bpf::unix::attach_types(&btf)
        .into_iter()
        .flatten()
        .map(|t| {
            agentcage::bpf::attached_ids(cgroup, t)
                .expect("BPF_PROG_QUERY")
                .len()
        })
        .sum();
    bpftool_programs(cgroup) + unix
}

/// How many programs `bpftool` says are attached to `cgroup` itself.
fn bpftool_programs(cgroup: &Path) -> usize {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output_bounded()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "bpftool failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array().map_or(0, Vec::len)
}
