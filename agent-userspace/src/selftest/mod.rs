//! `agentcage selftest`: a throwaway daemon with a deny-all policy (no egress, no program
//! but the attempts themselves), one throwaway cage, and inside it the [`attempts`]
//! catalogue: ways to send data out, run a forbidden program, touch protected files, leave
//! the cage and stop enforcement. Each is reported `contained` (with what stopped it),
//! `NOT CONTAINED` or `not applicable`; anything not contained fails the self-test. The
//! daemon runs it before it enforces anything when its configuration says
//! `selftest: on_start`.
//!
//! The cage is made exactly as users make theirs: `agentcage run` through a real daemon, so
//! the account switch, the capability drop and every program are part of what is tested.

pub mod attempts;
pub mod net;

use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// The hidden `agentcage` subcommand that runs the catalogue inside the cage.
pub const ATTEMPTS_COMMAND: &str = "__selftest-attempts";
/// The agent the self-test's cage belongs to: Unix sockets confined (`unix: {allow: []}`).
const AGENT: &str = "selftest";
/// The same without `unix:`, for kernels that cannot confine Unix sockets (where an agent
/// with `unix:` is refused); the Unix attempts then say why they do not apply.
const AGENT_UNIX_OPEN: &str = "selftest-unix-open";
/// What the daemon says when it refuses an agent with `unix:` for want of hooks.
const UNIX_REFUSAL: &str = "its policy confines Unix sockets";

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// Stopped; by what.
    Contained(String),
    /// It got out; how.
    Escaped(String),
    /// Nothing to try it on here; why.
    NotApplicable(String),
}

/// One line of the report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// The attempt's name.
    pub name: String,
    /// What it tried.
    pub what: String,
    /// What came of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Line {
    /// `contained      NAME  WHAT: DETAIL`, for people.
    pub fn text(&self) -> String {
        let (word, detail) = match &self.outcome {
            Outcome::Contained(d) => ("contained", d),
            Outcome::Escaped(d) => ("NOT CONTAINED", d),
            Outcome::NotApplicable(d) => ("not applicable", d),
        };
        format!("{word:<15} {:<18} {}: {detail}", self.name, self.what)
    }
}

/// What the attempts need to know of the world outside the cage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Context {
    /// A TCP listener on 127.0.0.1.
    pub tcp_port: u16,
    /// A TCP listener on ::1.
    pub tcp6_port: u16,
    /// A UDP socket on 127.0.0.1.
    pub udp_port: u16,
    /// A UDP socket on ::1.
    pub udp6_port: u16,
    /// Whether ::1 exists here.
    pub ipv6: bool,
    /// A program the policy does not allow.
    pub forbidden: String,
    /// A directory the agent may write.
    pub scratch: String,
    /// The daemon's policy file.
    pub policy: String,
    /// The cages' parent cgroup directory.
    pub parent_cgroup: String,
    /// The self-test's own process, outside the cage.
    pub runner_pid: u32,
    /// The daemon.
    pub daemon_pid: u32,
    /// The Unix sockets outside the cage.
    pub unix: UnixTargets,
}

/// Unix sockets outside the cage for the attempts to reach, and whether the cage confines
/// Unix sockets at all.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UnixTargets {
    /// The cage's policy has `unix:` (the kernel can confine Unix sockets).
    pub confined: bool,
    /// If not, what the kernel lacks.
    pub why: String,
    /// A stream listener's path.
    pub path: String,
    /// A datagram socket's path.
    pub dgram_path: String,
    /// An abstract stream listener's name (without the leading NUL).
    pub abstract_name: String,
}

/// The sockets [`UnixTargets`] names, held open while the attempts run.
pub struct HeldUnix(
    #[expect(dead_code, reason = "held only so that the sockets stay open")]
    (
        std::os::unix::net::UnixListener,
        std::os::unix::net::UnixDatagram,
        std::os::unix::net::UnixListener,
    ),
);

impl UnixTargets {
    /// Binds the three sockets in `dir`, open to every uid (the agent runs under one of its
    /// own): only a hook can stop the attempts, not a file mode.
    pub fn bind(dir: &Path, confined: bool, why: String) -> std::io::Result<(Self, HeldUnix)> {
        use std::os::{
            linux::net::SocketAddrExt as _,
            unix::net::{SocketAddr, UnixDatagram, UnixListener},
        };
        let path = dir.join("listener.sock");
        let dgram_path = dir.join("dgram.sock");
        let stream = UnixListener::bind(&path)?;
        let dgram = UnixDatagram::bind(&dgram_path)?;
        for p in [&path, &dgram_path] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))?;
        }
        let abstract_name = format!("agentcage-selftest-{}", std::process::id());
        let abstract_listener =
            UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes())?)?;
        Ok((
            Self {
                confined,
                why,
                path: path.display().to_string(),
                dgram_path: dgram_path.display().to_string(),
                abstract_name,
            },
            HeldUnix((stream, dgram, abstract_listener)),
        ))
    }
}

/// Every attempt, in report order: the catalogue's, then the network ones.
pub fn catalogue() -> impl Iterator<Item = &'static attempts::Attempt> {
    attempts::CATALOGUE.iter().chain(net::ATTEMPTS)
}

/// Inside the cage: runs the catalogue and prints one JSON [`Line`] per attempt.
pub fn run_attempts(context: &str) -> i32 {
    let Ok(c) = serde_json::from_str::<Context>(context) else {
        eprintln!("agentcage selftest: unreadable context");
        return 2;
    };
    for a in catalogue() {
        let line = Line {
            name: a.name.to_owned(),
            what: a.what.to_owned(),
            outcome: (a.run)(&c),
        };
        println!("{}", serde_json::to_string(&line).unwrap_or_default());
    }
    0
}

/// Where the binaries are.
pub struct Binaries {
    /// The daemon.
    pub agentcaged: PathBuf,
    /// The CLI (it also runs the attempts).
    pub agentcage: PathBuf,
}

impl Binaries {
    /// The two binaries side by side with the running one.
    pub fn beside_this_one() -> Result<Self, SelftestError> {
        let me = std::env::current_exe()
            .map_err(|e| SelftestError::Setup(format!("finding this program: {e}")))?;
        let dir = me.parent().unwrap_or(Path::new("/"));
        Ok(Self {
            agentcaged: dir.join("agentcaged"),
            agentcage: dir.join("agentcage"),
        })
    }
}

/// Why the self-test could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    /// Preparing it failed.
    #[error("self-test: {0}")]
    Setup(String),
    /// The throwaway daemon did not start.
    #[error("self-test: the throwaway agentcaged did not start:\n{0}")]
    Daemon(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> SelftestError + '_ {
    move |e| SelftestError::Setup(format!("{what}: {e}"))
}

/// Runs the self-test: the report's lines, in catalogue order.
pub fn run(bins: &Binaries, deadline: Duration) -> Result<Vec<Line>, SelftestError> {
    let dir = tempfile::Builder::new()
        .prefix("agentcage-selftest")
        .tempdir()
        .map_err(setup("a directory of its own"))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .map_err(setup("chmod"))?;
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).map_err(setup("scratch directory"))?;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o1777))
        .map_err(setup("chmod"))?;
    // Deny-all: no egress, and no program but the attempts themselves.
    let cli = bins
        .agentcage
        .canonicalize()
        .map_err(setup("the agentcage binary"))?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nagents:\n  {AGENT}:\n    unix: {{allow: []}}\n    exec:\n      default: deny\n      allow: [{cli}]\n  {AGENT_UNIX_OPEN}:\n    exec:\n      default: deny\n      allow: [{cli}]\n",
            cli = serde_json::to_string(&cli.display().to_string()).unwrap_or_default()
        ),
    )
    .map_err(setup("the policy"))?;
    let tcp = TcpListener::bind("127.0.0.1:0").map_err(setup("a TCP listener"))?;
    let udp = UdpSocket::bind("127.0.0.1:0").map_err(setup("a UDP socket"))?;
    let tcp6 = TcpListener::bind("[::1]:0").ok();
    let udp6 = UdpSocket::bind("[::1]:0").ok();
    let port = |a: Option<std::net::SocketAddr>| a.map_or(0, |a| a.port());
    let cgroup_name = format!("agentcage-selftest-{}", std::process::id());
    let socket = dir.path().join("control.sock");
    let mut daemon = Command::new(&bins.agentcaged)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .arg("--policy")
        .arg(&policy)
        .arg("--socket")
        .arg(&socket)
        .arg("--app-socket")
        .arg(dir.path().join("app.sock"))
        .arg("--snapshot-dir")
        .arg(dir.path().join("snapshots"))
        .arg("--recording-dir")
        .arg(dir.path().join("recordings"))
        .arg("--home-dir")
        .arg(dir.path().join("home"))
        .arg("--cgroup-name")
        .arg(&cgroup_name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(setup("starting agentcaged"))?;
    let result = (|| {
        let log = wait_ready(&mut daemon, deadline)?;
        let forbidden = Path::new("/bin/true")
            .canonicalize()
            .map_err(setup("/bin/true"))?;
        let unix_dir = dir.path().join("unix");
        std::fs::create_dir(&unix_dir).map_err(setup("a directory for Unix sockets"))?;
        std::fs::set_permissions(&unix_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(setup("chmod"))?;
        let (unix, _held) =
            UnixTargets::bind(&unix_dir, true, String::new()).map_err(setup("Unix sockets"))?;
        let mut context = Context {
            tcp_port: port(tcp.local_addr().ok()),
            tcp6_port: port(tcp6.as_ref().and_then(|l| l.local_addr().ok())),
            udp_port: port(udp.local_addr().ok()),
            udp6_port: port(udp6.as_ref().and_then(|l| l.local_addr().ok())),
            ipv6: tcp6.is_some() && udp6.is_some(),
            forbidden: forbidden.display().to_string(),
            scratch: scratch.display().to_string(),
            policy: policy.display().to_string(),
            parent_cgroup: crate::cage::find_cgroup2_mount()
                .map(|m| m.join(&cgroup_name).display().to_string())
                .unwrap_or_default(),
            runner_pid: std::process::id(),
            daemon_pid: daemon.id(),
            unix,
        };
        let attempt = |agent: &str, context: &Context| {
            Command::new(&cli)
                .arg("--socket")
                .arg(&socket)
                .args(["run", "--no-pty", "--agent", agent, "--"])
                .arg(&cli)
                .arg(ATTEMPTS_COMMAND)
                .arg(serde_json::to_string(context).unwrap_or_default())
                .stdin(Stdio::null())
                .output()
                .map_err(setup("agentcage run"))
        };
        let mut out = attempt(AGENT, &context)?;
        let refusal = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() && refusal.contains(UNIX_REFUSAL) {
            // This kernel cannot confine Unix sockets: the rest runs without unix:.
            context.unix.confined = false;
            context.unix.why = refusal
                .split_once("has neither: ")
                .map_or(refusal.as_str(), |(_, why)| why)
                .split(". Run it")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            out = attempt(AGENT_UNIX_OPEN, &context)?;
        }
        let lines: Vec<Line> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let expected = catalogue().count();
        if lines.len() != expected {
            return Err(SelftestError::Setup(format!(
                "the attempts did not all report ({} of {expected}): {}\n{log}",
                lines.len(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(lines)
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    result
}

/// Waits for the daemon's "ready" line; its log so far otherwise.
fn wait_ready(
    daemon: &mut std::process::Child,
    deadline: Duration,
) -> Result<String, SelftestError> {
    let Some(stderr) = daemon.stderr.take() else {
        return Err(SelftestError::Daemon("no log".into()));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the daemon never blocks.
            }
        }
    });
    let end = Instant::now() + deadline;
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("agentcaged ready") => return Ok(log.join("\n")),
            Ok(line) => log.push(line),
            Err(_) => return Err(SelftestError::Daemon(log.join("\n"))),
        }
    }
}

/// Prints the report; returns whether everything was contained.
pub fn print(lines: &[Line]) -> bool {
    let mut counts = (0, 0, 0);
    for l in lines {
        println!("{}", l.text());
        match l.outcome {
            Outcome::Contained(_) => counts.0 += 1,
            Outcome::Escaped(_) => counts.1 += 1,
            Outcome::NotApplicable(_) => counts.2 += 1,
        }
    }
    println!(
        "selftest: {} contained, {} NOT CONTAINED, {} not applicable",
        counts.0, counts.1, counts.2
    );
    counts.1 == 0
}
