//! The cgroup v2 file interface: discovery, membership, population, kill.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{io_err, CageError};

/// Finds where cgroup2 is mounted: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
/// hybrid ones. Never assumed.
pub fn find_cgroup2_mount() -> Result<PathBuf, CageError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(CageError::MountInfo)?;
    parse_cgroup2_mount(&text).ok_or(CageError::NoCgroup2)
}

/// The mount point of the first cgroup2 entry of a mountinfo text.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
pub fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    /// Wraps a path; nothing is checked until used.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the directory's inode.
    pub fn id(&self) -> Result<u64, CageError> {
        fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(io_err("reading cgroup id of", &self.path))
    }

    /// The processes (thread-group ids) in this cgroup, not its descendants.
    pub fn procs(&self) -> Result<Vec<u32>, CageError> {
        let path = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        text.lines()
            .map(|l| {
                l.trim().parse().map_err(|_| CageError::Parse {
                    path: path.clone(),
                    what: format!("not a pid: {l:?}"),
                })
            })
            .collect()
    }

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CageError> {
        let path = self.path.join("cgroup.procs");
        fs::write(&path, format!("{pid}\n")).map_err(io_err("moving a process into", &path))
    }

    /// Whether any process is in this cgroup or below it (`populated` of cgroup.events).
    pub fn populated(&self) -> Result<bool, CageError> {
        let path = self.events_file();
        let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        text.lines()
            .find_map(|l| l.strip_prefix("populated "))
            .map(|v| v.trim() == "1")
            .ok_or_else(|| CageError::Parse {
                path,
                what: "no `populated` line".into(),
            })
    }

    /// cgroup.events: the file whose modification signals a change of `populated`.
    pub fn events_file(&self) -> PathBuf {
        self.path.join("cgroup.events")
    }

    /// Writes one of the cgroup's interface files (`pids.max`, `memory.max`...).
    pub fn write(&self, file: &str, value: &str) -> Result<(), CageError> {
        let path = self.path.join(file);
        fs::write(&path, value).map_err(io_err("writing", &path))
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) -> Result<(), CageError> {
        fs::remove_dir(&self.path).map_err(io_err("removing cgroup", &self.path))
    }
}

/// The cgroup v2 path (relative to the mount) of process `pid`, from /proc/PID/cgroup.
pub fn cgroup_of_pid(pid: u32) -> Result<String, CageError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| CageError::Parse {
            path,
            what: "no cgroup v2 (0::) line".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:8 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
