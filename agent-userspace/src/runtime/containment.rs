//! The containment ladder's cgroup side: freezing, thawing and killing a cage (the forensic
//! snapshot written in between is `snapshot`). Which rung a cage is on, and the kernel maps
//! each rung needs, are the daemon's (it swaps the cage's policy slot and flags).

use std::{
    fs, io,
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
    match fs::write(&path, "1") {
        // Emptied and removed by itself before the kill: nothing is left to kill.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(io_err("writing", &path))?,
    }
    // The daemon removes a cage as soon as it empties, maybe before this looks: a cgroup
    // that is gone was empty.
    wait_until(dir, "empty", || match event_flag(dir, "populated ") {
        Err(ContainError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(true)
        }
        other => other.map(|populated| !populated),
    })
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
