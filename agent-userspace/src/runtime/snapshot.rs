//! The forensic snapshot of a frozen cage: every process with its parent, command line,
//! descriptors and sockets, and the agent's last events, written as one JSON file (mode
//! 0600) before the cage is killed or while it stays paused.
//!
//! It runs outside every lock of the daemon and is bounded: per-process command lines and
//! descriptor lists are cut at fixed sizes, and once the whole reaches its bound the
//! remaining processes are listed by pid only. What was cut is said in the file. Socket
//! tables are read once per network namespace, not once per process.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;

use super::containment::ContainError;
use crate::{
    cage::CgroupDir, events::Event, identity::AgentIdentity, policy::Rung, recording::LiveRecording,
};

/// Longest command line kept per process, in bytes.
pub const MAX_CMDLINE: usize = 4096;
/// Most descriptors listed per process.
pub const MAX_FDS: usize = 256;
/// Budget for the processes' records, in bytes of JSON (about); past it, pids only.
pub const MAX_PROCESS_BYTES: usize = 16 << 20;

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
    /// Command line, argument by argument (cut at [`MAX_CMDLINE`] bytes).
    pub cmdline: Vec<String>,
    /// Whether the command line was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cmdline_truncated: bool,
    /// Working directory.
    pub cwd: Option<String>,
    /// Executable.
    pub exe: Option<String>,
    /// Open descriptors: number → what it points at (`socket:[INODE]`, a path...).
    pub fds: BTreeMap<u32, String>,
    /// Descriptors left out past [`MAX_FDS`].
    #[serde(skip_serializing_if = "is_zero")]
    pub fds_omitted: usize,
    /// The process's sockets, as its network namespace lists them.
    pub sockets: Vec<SocketRecord>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One socket of a process.
#[derive(Clone, Debug, Serialize)]
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

/// What a snapshot cut to stay within its bounds.
#[derive(Debug, Default, Serialize)]
pub struct Cuts {
    /// Processes whose command line was cut.
    pub cmdlines: usize,
    /// Processes whose descriptor list was cut.
    pub fd_lists: usize,
    /// Processes listed by pid only, past the size bound.
    pub processes: usize,
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
    /// The cgroups of the agent's caged containers, whose processes are listed too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Every process, with its parent (within the bounds).
    pub processes: Vec<ProcessRecord>,
    /// Processes past the size bound, by pid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more_pids: Vec<u32>,
    /// What was cut, and the bounds.
    pub cut: Cuts,
    /// The agent's last events, oldest first.
    pub events: Vec<&'a Event>,
    /// The terminal recordings (`record: always`) still being written, with their last
    /// kilobytes.
    pub recordings: Vec<LiveRecording>,
}

/// Everything a snapshot needs besides /proc; owned, so it is taken under the daemon's lock
/// and written after it is released.
#[derive(Clone, Debug)]
pub struct SnapshotPlan {
    /// The agent's name.
    pub agent: String,
    /// The rung being applied.
    pub rung: Rung,
    /// Why.
    pub reason: String,
    /// The policy's hash.
    pub policy_hash: String,
    /// The agent's last events.
    pub events: Vec<Arc<Event>>,
    /// The file to write.
    pub path: PathBuf,
    /// When it was planned, ns since the Unix epoch (also in its name).
    pub time_unix_nano: u64,
    /// Where the agent's recordings are, to include the live ones.
    pub recording_dir: Option<PathBuf>,
    /// The cgroups of the agent's caged containers.
    pub containers: Vec<CgroupDir>,
}

impl SnapshotPlan {
    /// A plan for `agent`'s snapshot in `out_dir`, named by agent and time.
    pub fn new(
        out_dir: &Path,
        agent: &str,
        rung: Rung,
        reason: &str,
        policy_hash: &str,
        events: Vec<Arc<Event>>,
    ) -> Self {
        let time_unix_nano = crate::clock::now_unix_nano();
        Self {
            agent: agent.to_owned(),
            rung,
            reason: reason.to_owned(),
            policy_hash: policy_hash.to_owned(),
            events,
            path: out_dir.join(format!("{agent}-{time_unix_nano}.json")),
            time_unix_nano,
            recording_dir: None,
            containers: Vec::new(),
        }
    }

    /// Reads the (frozen) cage from /proc and writes the snapshot, mode 0600. Processes that
    /// vanish while being read are left out; nothing else is, within the bounds.
    pub fn write(&self, dir: &CgroupDir) -> Result<PathBuf, ContainError> {
        let out_dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(out_dir).map_err(io_err("creating", out_dir))?;
        let _ = fs::set_permissions(out_dir, fs::Permissions::from_mode(0o700));
        let mut pids = dir.procs().unwrap_or_default();
        for c in &self.containers {
            pids.extend(c.procs().unwrap_or_default());
        }
        let (processes, more_pids, cut) = read_processes(&pids);
        let snap = Snapshot {
            agent: AgentIdentity::for_agent(&self.agent).to_string(),
            time_unix_nano: self.time_unix_nano,
            rung: self.rung.name().to_owned(),
            reason: &self.reason,
            policy_hash: &self.policy_hash,
            cgroup: dir.path().display().to_string(),
            containers: self
                .containers
                .iter()
                .map(|c| c.path().display().to_string())
                .collect(),
            processes,
            more_pids,
            cut,
            events: self.events.iter().map(AsRef::as_ref).collect(),
            recordings: self
                .recording_dir
                .as_deref()
                .map(|d| crate::recording::live(d, &self.agent))
                .unwrap_or_default(),
        };
        let text = serde_json::to_vec_pretty(&snap).map_err(|e| ContainError::Io {
            op: "encoding",
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = out_dir.join(format!(".{name}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err("renaming into place", &self.path))?;
        Ok(self.path.clone())
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContainError + 'a {
    move |source| ContainError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The records of `pids`, within the size bound; the pids past it; what was cut.
fn read_processes(pids: &[u32]) -> (Vec<ProcessRecord>, Vec<u32>, Cuts) {
    let mut tables = NetTables::default();
    let mut cut = Cuts::default();
    let mut out = Vec::new();
    let mut more = Vec::new();
    let mut bytes = 0;
    for &pid in pids {
        if bytes >= MAX_PROCESS_BYTES {
            more.push(pid);
            continue;
        }
        if let Some(p) = process(pid, &mut tables) {
            cut.cmdlines += usize::from(p.cmdline_truncated);
            cut.fd_lists += usize::from(p.fds_omitted > 0);
            bytes += approx_size(&p);
            out.push(p);
        }
    }
    cut.processes = more.len();
    (out, more, cut)
}

/// About the JSON size of a record, without encoding it twice.
fn approx_size(p: &ProcessRecord) -> usize {
    let strings = p.cmdline.iter().map(|a| a.len() + 4).sum::<usize>()
        + p.fds.values().map(|t| t.len() + 12).sum::<usize>()
        + p.sockets.len() * 120;
    strings + 256
}

/// One process's record from /proc; None if it is gone.
fn process(pid: u32, tables: &mut NetTables) -> Option<ProcessRecord> {
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
    let (cmdline, cmdline_truncated) = read_cmdline(&base.join("cmdline"));
    let uid = fs::read_to_string(base.join("status")).ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    });
    let link = |p: PathBuf| fs::read_link(p).ok().map(|l| l.display().to_string());
    let mut fds = BTreeMap::new();
    let mut fds_omitted = 0;
    if let Ok(entries) = fs::read_dir(base.join("fd")) {
        for e in entries.flatten() {
            let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if fds.len() >= MAX_FDS {
                fds_omitted += 1;
                continue;
            }
            if let Some(target) = link(e.path()) {
                fds.insert(n, target);
            }
        }
    }
    let has_sockets = fds.values().any(|t| t.starts_with("socket:["));
    let table = if has_sockets {
        tables.of(&base)
    } else {
        Arc::default()
    };
    let sockets = fds
        .iter()
        .filter_map(|(&fd, target)| {
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(match table.get(inode) {
                Some(s) => SocketRecord { fd, ..s.clone() },
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
        cmdline_truncated,
        cwd: link(base.join("cwd")),
        exe: link(base.join("exe")),
        fds,
        fds_omitted,
        sockets,
    })
}

/// The arguments in the first [`MAX_CMDLINE`] bytes of a cmdline file, and whether it is
/// longer.
fn read_cmdline(path: &Path) -> (Vec<String>, bool) {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(256);
    let Ok(file) = fs::File::open(path) else {
        return (Vec::new(), false);
    };
    // One byte more than kept tells whether there is more.
    let _ = file.take(MAX_CMDLINE as u64 + 1).read_to_end(&mut buf);
    let truncated = buf.len() > MAX_CMDLINE;
    buf.truncate(MAX_CMDLINE);
    let args = buf
        .split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (args, truncated)
}

/// Socket inode → record (without its fd), per network namespace.
type SocketTable = HashMap<String, SocketRecord>;

/// Socket tables read so far, by network namespace: the processes of a cage nearly always
/// share one, and reading it is most of a snapshot's cost.
#[derive(Default)]
struct NetTables {
    by_netns: HashMap<String, Arc<SocketTable>>,
}

impl NetTables {
    fn of(&mut self, base: &Path) -> Arc<SocketTable> {
        let Ok(ns) = fs::read_link(base.join("ns/net")) else {
            return Arc::new(socket_table(base));
        };
        let key = ns.display().to_string();
        Arc::clone(
            self.by_netns
                .entry(key)
                .or_insert_with(|| Arc::new(socket_table(base))),
        )
    }
}

fn socket_table(base: &Path) -> SocketTable {
    let mut out = SocketTable::new();
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
                    SocketRecord {
                        fd: 0,
                        protocol: proto.to_owned(),
                        local: Some(decode_addr(local)),
                        remote: Some(decode_addr(remote)),
                        state: Some((*state).to_owned()),
                    },
                );
            }
        }
    }
    if let Ok(text) = fs::read_to_string(base.join("net").join("unix")) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let Some(inode) = f.get(6) {
                out.insert(
                    (*inode).to_owned(),
                    SocketRecord {
                        fd: 0,
                        protocol: "unix".to_owned(),
                        local: Some(f.get(7).map_or_else(String::new, |p| (*p).to_owned())),
                        remote: Some(String::new()),
                        state: Some((*f.get(5).unwrap_or(&"")).to_owned()),
                    },
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
    fn long_command_lines_are_cut_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmdline");
        let mut long = b"prog\0".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_CMDLINE * 2));
        long.push(0);
        fs::write(&path, &long).unwrap();
        let (args, cut) = read_cmdline(&path);
        assert!(cut);
        assert_eq!(args[0], "prog");
        assert_eq!(args[1].len(), MAX_CMDLINE - 5);
        fs::write(&path, b"sh\0-c\0true\0").unwrap();
        assert_eq!(
            read_cmdline(&path),
            (vec!["sh".into(), "-c".into(), "true".into()], false)
        );
    }

    #[test]
    fn this_process_reads_with_its_sockets_from_one_table() {
        let _l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tables = NetTables::default();
        let me = process(std::process::id(), &mut tables).expect("our own record");
        assert!(
            me.sockets.iter().any(|s| s.protocol == "tcp"),
            "{:?}",
            me.sockets
        );
        assert_eq!(tables.by_netns.len(), 1);
        let (records, more, cut) = read_processes(&[std::process::id(), u32::MAX]);
        assert_eq!(
            (records.len(), more.len(), cut.processes),
            (1, 0, 0),
            "a gone pid is left out"
        );
    }
}
