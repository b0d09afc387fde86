//! Cages: one cgroup v2 directory per agent, below one parent cgroup that the egress programs
//! are attached to.

mod cgroupfs;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

pub use cgroupfs::{cgroup_of_pid, find_cgroup2_mount, unescape_mountinfo, CgroupDir};

/// Errors of cage management.
#[derive(Debug, thiserror::Error)]
pub enum CageError {
    /// /proc/self/mountinfo could not be read.
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    /// No cgroup2 file system is mounted.
    #[error(
        "no cgroup v2 file system is mounted (looked for fstype cgroup2 in /proc/self/mountinfo)"
    )]
    NoCgroup2,
    /// A cgroup file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },
    /// Another daemon manages this parent cgroup.
    #[error("another agentcaged manages {0} (it holds the lock on that cgroup)")]
    Busy(PathBuf),
    /// A cgroup file held something unexpected.
    #[error("unexpected content in {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// Shorthand for attaching the operation and path to an I/O error.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CageError + 'a {
    move |source| CageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The parent cgroup that holds every cage.
#[derive(Debug, Clone)]
pub struct CageRoot {
    dir: CgroupDir,
    /// The parent's path as /proc/PID/cgroup shows it (relative to the mount), e.g.
    /// `/agentcage`.
    relative: String,
    /// Where cgroup v2 is mounted.
    mount: PathBuf,
}

impl CageRoot {
    /// Creates (or reuses) the parent cgroup `name` directly below the cgroup2 mount.
    pub fn create(mount: &Path, name: &str) -> Result<Self, CageError> {
        let path = mount.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating cgroup", &path)(e)),
        }
        Ok(Self {
            dir: CgroupDir::new(path),
            relative: format!("/{name}"),
            mount: mount.to_path_buf(),
        })
    }

    /// Where cgroup v2 is mounted.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The controllers the cgroup v2 hierarchy offers (the root's `cgroup.controllers`).
    pub fn available_controllers(&self) -> Result<String, CageError> {
        let path = self.mount.join("cgroup.controllers");
        fs::read_to_string(&path).map_err(io_err("reading", &path))
    }

    /// Makes `controllers` available to the cages: enabled in the root's and the parent's
    /// `cgroup.subtree_control` where they are not yet.
    pub fn enable_controllers(&self, controllers: &[&str]) -> Result<(), CageError> {
        for dir in [self.mount.as_path(), self.dir.path()] {
            let path = dir.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
            let missing: Vec<String> = controllers
                .iter()
                .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                fs::write(&path, missing.join(" "))
                    .map_err(io_err("enabling controllers in", &path))?;
            }
        }
        Ok(())
    }

    /// Takes the exclusive lock on the parent cgroup directory that says this process
    /// manages it; held until the returned value is dropped.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, CageError> {
        let path = self.dir.path();
        let dir = fs::File::open(path).map_err(io_err("opening", path))?;
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
            |(_, e)| {
                if e == nix::errno::Errno::EWOULDBLOCK {
                    CageError::Busy(path.to_path_buf())
                } else {
                    io_err("locking", path)(e.into())
                }
            },
        )
    }

    /// Whether process `pid` is in a cage (or the parent itself).
    pub fn holds_pid(&self, pid: u32) -> Result<bool, CageError> {
        let path = cgroup_of_pid(pid)?;
        Ok(path == self.relative
            || path
                .strip_prefix(&self.relative)
                .is_some_and(|rest| rest.starts_with('/')))
    }

    /// The parent's path as /proc/PID/cgroup shows it, e.g. `/agentcage`.
    pub fn relative(&self) -> &str {
        &self.relative
    }

    /// The parent cgroup.
    pub fn dir(&self) -> &CgroupDir {
        &self.dir
    }

    /// The cage of `agent`, created if missing.
    pub fn ensure_cage(&self, agent: &str) -> Result<CgroupDir, CageError> {
        let path = self.dir.path().join(agent);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(io_err("creating cage", &path)(e)),
        }
        Ok(CgroupDir::new(path))
    }

    /// The cages that exist now (left by an earlier daemon, or made by this one), by agent name.
    pub fn existing_cages(&self) -> Result<Vec<(String, CgroupDir)>, CageError> {
        let path = self.dir.path();
        let mut cages = Vec::new();
        for entry in fs::read_dir(path).map_err(io_err("listing cgroup", path))? {
            let entry = entry.map_err(io_err("listing cgroup", path))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(name) = entry.file_name().to_str() {
                    cages.push((name.to_owned(), CgroupDir::new(entry.path())));
                }
            }
        }
        cages.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(cages)
    }

    /// Removes the parent cgroup; fails (EBUSY) while any cage or process is left in it.
    pub fn remove(&self) -> Result<(), CageError> {
        self.dir.remove()
    }
}
