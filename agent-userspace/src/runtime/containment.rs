//! The containment ladder's cgroup side: freezing, killing, and the forensic snapshot written
//! before either takes effect. Which rung a cage is on, and the kernel maps each rung needs,
//! are the daemon's (it swaps the cage's policy slot and flags).

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use crate::policy::Rung;
use crate::{cage::CgroupDir, events::Event};

/// How long freezing or killing may take before it is reported as failed.
const SETTLE: Duration = Duration::from_secs(5);
/// How often the cgroup's state is re-read meanwhile (the kernel offers no blocking wait
/// short of inotify on cgroup.events, and these waits last milliseconds).
const POLL: Duration = Duration::from_millis(2);

/// Errors of freezing, killing and snapshots.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    /// A cgroup file could not be written or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The cage did not reach the state in time.
    #[error("{path}: the cage was not {what} within {SETTLE:?}")]
    Timeout {
        /// The cage.
        path: PathBuf,
        /// `frozen` or `empty`.
        what: &'static str,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContainError + 'a {
    move |source| ContainError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads one `key value` line of cgroup.events.
fn event_flag(dir: &CgroupDir, key: &str) -> Result<bool, ContainError> {
    let path = dir.events_file();
    let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .is_some_and(|v| v.trim() == "1"))
}

fn wait_until(
    dir: &CgroupDir,
    what: &'static str,
    done: impl Fn() -> Result<bool, ContainError>,
) -> Result<(), ContainError> {
    let deadline = Instant::now() + SETTLE;
    while !done()? {
        if Instant::now() > deadline {
            return Err(ContainError::Timeout {
                path: dir.path().to_path_buf(),
                what,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Freezes every process of the cage (cgroup.freeze) and waits until the kernel says it is.
pub fn freeze(dir: &CgroupDir) -> Result<(), ContainError> {
    let path = dir.path().join("cgroup.freeze");
    fs::write(&path, "1").map_err(io_err("writing", &path))?;
    // An empty cgroup reports frozen too.
    wait_until(dir, "frozen", || event_flag(dir, "frozen "))
}

/// Thaws the cage.
pub fn thaw(dir: &CgroupDir) -> Result<(), ContainError> {
    let path = dir.path().join("cgroup.freeze");
    fs::write(&path, "0").map_err(io_err("writing", &path))
}

/// Whether the cage is frozen now.
pub fn is_frozen(dir: &CgroupDir) -> Result<bool, ContainError> {
    event_flag(dir, "frozen ")
}

/// Kills every process of the cage (cgroup.kill; frozen ones too) and waits until none is
/// left.
pub fn kill(dir: &CgroupDir) -> Result<(), ContainError> {
    let path = dir.path().join("cgroup.kill");
    // Opened without O_CREAT: for a file cgroupfs lacks that says ENOENT, not EACCES.
    let written = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"1"));
    match written {
        Ok(()) => wait_until(dir, "empty", || event_flag(dir, "populated ").map(|p| !p)),
        // Before Linux 5.14 there is no cgroup.kill: SIGKILL each process, in the cage and
        // below it, until it is empty (a fatal signal ends a frozen process too). The cage
        // is frozen first, so nothing forks meanwhile; should it not be, each round signals
        // what has appeared since.
        Err(e) if e.kind() == io::ErrorKind::NotFound => wait_until(dir, "empty", || {
            signal_all(dir.path())?;
            event_flag(dir, "populated ").map(|p| !p)
        }),
        Err(e) => Err(io_err("writing", &path)(e)),
    }
}

/// Sends SIGKILL to every process in cgroup `path` and its descendants.
fn signal_all(path: &Path) -> Result<(), ContainError> {
    let procs = path.join("cgroup.procs");
    let text = fs::read_to_string(&procs).map_err(io_err("reading", &procs))?;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // A process that has gone meanwhile (ESRCH) needs no signal.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let entries = fs::read_dir(path).map_err(io_err("listing", path))?;
    for entry in entries.flatten() {
        // A child cgroup removed meanwhile is fine; whatever stays populated is caught
        // by the caller's check.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = signal_all(&entry.path());
        }
    }
    Ok(())
}

/// One process in a snapshot.
#[derive(Debug, Serialize)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: u32,
    /// Parent's process id (the tree's edges).
    pub ppid: u32,
    /// Real uid.
    pub uid: Option<u32>,
    /// Command name.
    pub comm: String,
    /// Command line, argument by argument.
    pub cmdline: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Executable.
    pub exe: Option<String>,
    /// Open descriptors: number → what it points at (`socket:[INODE]`, a path...).
    pub fds: BTreeMap<u32, String>,
    /// The process's sockets, as its network namespace lists them.
    pub sockets: Vec<SocketRecord>,
}

/// One socket of a process.
#[derive(Debug, Serialize)]
pub struct SocketRecord {
    /// The descriptor.
    pub fd: u32,
    /// `tcp`, `tcp6`, `udp`, `udp6`, `unix`, or `other`.
    pub protocol: String,
    /// Local address:port, as the kernel lists it (decoded for IP sockets).
    pub local: Option<String>,
    /// Remote address:port.
    pub remote: Option<String>,
    /// TCP state number (hex in /proc), e.g. `01` established, `0A` listening.
    pub state: Option<String>,
}

/// What a forensic snapshot holds.
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    /// `agent:NAME`.
    pub agent: String,
    /// When, ns since the Unix epoch.
    pub time_unix_nano: u64,
    /// The rung that wrote it.
    pub rung: String,
    /// Why the cage was contained.
    pub reason: &'a str,
    /// SHA-256 of the policy in force.
    pub policy_hash: &'a str,
    /// The cage's cgroup.
    pub cgroup: String,
    /// Every process, with its parent.
    pub processes: Vec<ProcessRecord>,
    /// The agent's last events, oldest first.
    pub events: Vec<&'a Event>,
}

/// Everything the snapshot needs to say besides what /proc says.
pub struct SnapshotInfo<'a> {
    /// The agent's name.
    pub agent: &'a str,
    /// The rung being applied.
    pub rung: Rung,
    /// Why.
    pub reason: &'a str,
    /// The policy's hash.
    pub policy_hash: &'a str,
    /// The agent's last events.
    pub events: &'a [Arc<Event>],
}

/// Writes the snapshot of a (frozen) cage into `out_dir` as JSON, mode 0600, and returns its
/// path. Processes that vanish while being read are left out; nothing else is.
pub fn snapshot(
    out_dir: &Path,
    dir: &CgroupDir,
    info: &SnapshotInfo<'_>,
) -> Result<PathBuf, ContainError> {
    fs::create_dir_all(out_dir).map_err(io_err("creating", out_dir))?;
    let _ = fs::set_permissions(out_dir, fs::Permissions::from_mode(0o700));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let time_unix_nano = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    let pids = dir.procs().unwrap_or_default();
    let processes = pids.iter().filter_map(|&pid| process(pid)).collect();
    let snap = Snapshot {
        agent: crate::identity::AgentIdentity::for_agent(info.agent).to_string(),
        time_unix_nano,
        rung: info.rung.name().to_owned(),
        reason: info.reason,
        policy_hash: info.policy_hash,
        cgroup: dir.path().display().to_string(),
        processes,
        events: info.events.iter().map(AsRef::as_ref).collect(),
    };
    let name = format!("{}-{time_unix_nano}.json", info.agent);
    let path = out_dir.join(&name);
    let tmp = out_dir.join(format!(".{name}.tmp"));
    let text = serde_json::to_vec_pretty(&snap).map_err(|e| ContainError::Io {
        op: "encoding",
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
    Ok(path)
}

/// One process's record from /proc; None if it is gone.
fn process(pid: u32) -> Option<ProcessRecord> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let stat = fs::read_to_string(base.join("stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // After the command: state ppid ...
    let ppid = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let cmdline = fs::read(base.join("cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let uid = fs::read_to_string(base.join("status")).ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    });
    let link = |p: PathBuf| fs::read_link(p).ok().map(|l| l.display().to_string());
    let mut fds = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(base.join("fd")) {
        for e in entries.flatten() {
            if let (Some(n), Some(target)) = (
                e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()),
                link(e.path()),
            ) {
                fds.insert(n, target);
            }
        }
    }
    let table = socket_table(&base);
    let sockets = fds
        .iter()
        .filter_map(|(&fd, target)| {
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(match table.get(inode) {
                Some((protocol, local, remote, state)) => SocketRecord {
                    fd,
                    protocol: protocol.clone(),
                    local: Some(local.clone()),
                    remote: Some(remote.clone()),
                    state: Some(state.clone()),
                },
                None => SocketRecord {
                    fd,
                    protocol: "other".into(),
                    local: None,
                    remote: None,
                    state: None,
                },
            })
        })
        .collect();
    Some(ProcessRecord {
        pid,
        ppid,
        uid,
        comm,
        cmdline,
        cwd: link(base.join("cwd")),
        exe: link(base.join("exe")),
        fds,
        sockets,
    })
}

/// Socket inode → (protocol, local, remote, state), from the process's network namespace.
fn socket_table(base: &Path) -> BTreeMap<String, (String, String, String, String)> {
    let mut out = BTreeMap::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = fs::read_to_string(base.join("net").join(proto)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if let (Some(local), Some(remote), Some(state), Some(inode)) =
                (f.get(1), f.get(2), f.get(3), f.get(9))
            {
                out.insert(
                    (*inode).to_owned(),
                    (
                        proto.to_owned(),
                        decode_addr(local),
                        decode_addr(remote),
                        (*state).to_owned(),
                    ),
                );
            }
        }
    }
    if let Ok(text) = fs::read_to_string(base.join("net").join("unix")) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let Some(inode) = f.get(6) {
                let path = f.get(7).map_or_else(String::new, |p| (*p).to_owned());
                out.insert(
                    (*inode).to_owned(),
                    (
                        "unix".to_owned(),
                        path,
                        String::new(),
                        (*f.get(5).unwrap_or(&"")).to_owned(),
                    ),
                );
            }
        }
    }
    out
}

/// `0100007F:1F90` → `127.0.0.1:8080` (the kernel prints each 32-bit word in host order).
fn decode_addr(s: &str) -> String {
    let Some((addr, port)) = s.split_once(':') else {
        return s.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    let words: Option<Vec<u32>> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let mut bytes = Vec::new();
    for w in words.unwrap_or_default() {
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]]),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&bytes);
            std::net::IpAddr::from(a)
        }
        _ => return s.to_owned(),
    };
    std::net::SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_proc_net_addresses() {
        assert_eq!(decode_addr("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(
            decode_addr("00000000000000000000000001000000:0050"),
            "[::1]:80"
        );
    }

    #[test]
    fn rung_names_round_trip() {
        for r in [
            Rung::Observe,
            Rung::ReadOnly,
            Rung::ApprovalRequired,
            Rung::Paused,
            Rung::Killed,
        ] {
            assert_eq!(Rung::parse(r.name()).unwrap(), r);
        }
        assert_eq!(Rung::parse("read-only").unwrap(), Rung::ReadOnly);
        assert!(Rung::parse("frozen")
            .unwrap_err()
            .contains("expected observe"));
    }
}
