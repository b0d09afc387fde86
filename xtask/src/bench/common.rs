//! What the benchmarks share: a scratch directory, agentcaged in the background, reading a
//! workload's figure, medians, and where cgroup v2 is mounted.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, ErrorKind};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::util::{capture, cargo, cmd, describe, output, repo_root, run};

/// The agent the benchmarks' policies define.
pub(super) const AGENT: &str = "bench";
/// Bound on the daemon's start-up; readiness itself is polled, not assumed after a sleep.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const POLL: Duration = Duration::from_millis(50);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a workload and reads its ns/op figure (the last line: a wrapper may print before it).
pub(super) fn measure(c: &mut Command) -> Result<f64> {
    let out = output(c)?;
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim()
        .parse()
        .with_context(|| format!("`{}` printed no ns/op figure: {out:?}", describe(c)))
}

pub(super) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A scratch directory for the generated files and the daemon's socket, removed on drop.
pub(super) struct WorkDir(pub(super) PathBuf);

impl WorkDir {
    pub(super) fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("agentcage-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// agentcaged running in the background; stopped with SIGTERM on drop, error or not.
pub(super) struct Daemon {
    child: Child,
    cli: PathBuf,
    sock: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Builds (release) and starts agentcaged on `yaml`, parent cgroup `cgroup_name`.
    pub(super) fn start_with_policy(work: &Path, yaml: &str, cgroup_name: &str) -> Result<Self> {
        Self::start_with_args(work, yaml, cgroup_name, &[])
    }

    /// [`Self::start_with_policy`] with more arguments for agentcaged (`--config FILE`).
    pub(super) fn start_with_args(
        work: &Path,
        yaml: &str,
        cgroup_name: &str,
        args: &[&OsStr],
    ) -> Result<Self> {
        run(cargo().args(["build", "--release", "--bins", "-p", "agent-userspace"]))?;
        let bin = repo_root().join("target/release");
        let policy = work.join("bench-policy.yaml");
        fs::write(&policy, yaml).with_context(|| format!("writing {}", policy.display()))?;
        let sock = work.join("agentcage.sock");
        let log = work.join("agentcaged.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;

        let mut c = cmd(bin.join("agentcaged"));
        c.arg("--policy")
            .arg(&policy)
            .arg("--socket")
            .arg(&sock)
            .arg("--app-socket")
            .arg(work.join("app.sock"))
            .arg("--snapshot-dir")
            .arg(work.join("snapshots"))
            .args(["--cgroup-name", cgroup_name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // Drop does not run when xtask itself is killed; this stops the daemon then too, so
        // that it does not linger holding the bench's cgroup name.
        // SAFETY: prctl is async-signal-safe, as pre_exec requires.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        eprintln!("+ {} &", describe(&c));
        let child = c
            .spawn()
            .with_context(|| format!("could not start `{}`", describe(&c)))?;
        // The guard exists from here on, so a failure below still stops the daemon.
        let mut d = Self {
            child,
            cli: bin.join("agentcage"),
            sock,
            log,
        };
        d.wait_ready()?;
        Ok(d)
    }

    /// Ready = the socket exists and `agentcage status` answers through it.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("its socket does not exist yet");
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "agentcaged exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            if self.sock.exists() {
                let mut c = self.cli_cmd();
                c.arg("status");
                let out = capture(&mut c)?;
                if out.status.success() {
                    eprintln!("agentcaged is ready ({})", describe(&c));
                    return Ok(());
                }
                last = format!(
                    "`{}`: {}",
                    describe(&c),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "agentcaged not ready after {READY_TIMEOUT:?} ({last}); its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub(super) fn cli_cmd(&self) -> Command {
        let mut c = cmd(&self.cli);
        c.arg("--socket").arg(&self.sock);
        c
    }

    /// The control socket.
    pub(super) fn socket(&self) -> &Path {
        &self.sock
    }

    /// The daemon's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `agentcage run --agent bench -- ARGV`.
    pub(super) fn run_cmd(&self, argv: &[String]) -> Command {
        let mut c = self.cli_cmd();
        c.args(["run", "--agent", AGENT, "--"]).args(argv);
        c
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL);
        }
        eprintln!("agentcaged ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The argv of a command, for `agentcage run -- ARGV`.
pub(super) fn argv(c: &Command) -> Vec<String> {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Starts a holder (`xtask __hold`) and waits for its `ready`.
pub(super) fn spawn_ready(mut c: Command) -> Result<Child> {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the holder")?;
    let out = child.stdout.take().context("holder stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    ensure!(line.trim() == "ready", "the holder said {line:?}");
    Ok(child)
}

pub(super) fn make_dir(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// (mount point, fstype) of every mount, from /proc/self/mountinfo.
fn mounts() -> Result<Vec<(PathBuf, String)>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| {
            // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ..."
            let (head, tail) = line.split_once(" - ")?;
            let mount_point = head.split(' ').nth(4)?;
            let fstype = tail.split(' ').next()?;
            Some((PathBuf::from(unescape(mount_point)), fstype.to_owned()))
        })
        .collect())
}

pub(super) fn mount_points() -> Result<Vec<PathBuf>> {
    Ok(mounts()?.into_iter().map(|(p, _)| p).collect())
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified on hybrid
/// ones such as this project's machines.
pub(super) fn cgroup2_mount() -> Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(p, _)| p)
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| {
            let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            u8::try_from(v).ok()
        }) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
