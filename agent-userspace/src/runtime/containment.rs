//! The containment ladder's cgroup side: freezing, thawing and killing a cage (the forensic
//! snapshot written in between is `snapshot`). Which rung a cage is on, and the kernel maps
//! each rung needs, are the daemon's (it swaps the cage's policy slot and flags).

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::cage::CgroupDir;
pub use crate::policy::Rung;

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
        Ok(()) => {}
        // Emptied and removed by itself before the kill: nothing is left to kill. A cgroup
        // removed while the write was under way says ENODEV (rmdir needs it empty).
        Err(e) if removed(&e) && !dir.path().exists() => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
        // Before Linux 5.14 there is no cgroup.kill: SIGKILL each process, in the cage and
        // below it, until it is empty (a fatal signal ends a frozen process too). The cage
        // is frozen first, so nothing forks meanwhile; should it not be, each round signals
        // what has appeared since.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return wait_until(dir, "empty", || {
                if !dir.path().exists() {
                    return Ok(true);
                }
                signal_all(dir.path())?;
                populated_or_gone(dir)
            })
        }
        Err(e) => return Err(io_err("writing", &path)(e)),
    }
    // The daemon removes a cage as soon as it empties, maybe before this looks: a cgroup
    // that is gone was empty.
    wait_until(dir, "empty", || populated_or_gone(dir))
}

/// Whether the cage is empty: its `populated` flag is 0, or the cgroup is gone.
fn populated_or_gone(dir: &CgroupDir) -> Result<bool, ContainError> {
    match event_flag(dir, "populated ") {
        Err(ContainError::Io { source, .. }) if removed(&source) => Ok(true),
        other => other.map(|populated| !populated),
    }
}

/// Whether an error says the cgroup is gone: removed (ENOENT) or being removed (ENODEV, as
/// cgroupfs answers on a file of a cgroup rmdir took meanwhile). rmdir needs it empty.
fn removed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// Sends SIGKILL to every process in cgroup `path` and its descendants.
fn signal_all(path: &Path) -> Result<(), ContainError> {
    let procs = path.join("cgroup.procs");
    let text = match fs::read_to_string(&procs) {
        // Removed meanwhile: it was empty.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(io_err("reading", &procs))?,
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // A process that has gone meanwhile (ESRCH) needs no signal.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let Ok(entries) = fs::read_dir(path) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        // A child cgroup removed meanwhile is fine; whatever stays populated is caught
        // by the caller's check.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            signal_all(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
