//! Recordings the policy requires (`record: always`), on the daemon's side: the daemon makes
//! each file under its own directory (root's, mode 0700; the file 0600) and hands `agentcage
//! run` an open descriptor, so neither the operator nor the agent (usually the same uid) can
//! reach the file by its name. The open file is locked (flock) for as long as `run` holds it:
//! that is how a forensic snapshot tells a live recording from a finished one.

use std::{
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// How much of a live recording a forensic snapshot keeps.
pub const SNAPSHOT_TAIL: u64 = 8 * 1024;

/// Why a required recording could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// A directory or the file could not be made or locked.
    #[error("agent {agent:?} must be recorded (record: always), but {op} {path} failed: {source}")]
    Io {
        /// The agent.
        agent: String,
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What `run` is told about the recording it must write.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordingGrant {
    /// Where the file is (for people; `run` writes through the descriptor it is handed).
    pub path: String,
    /// The file's size bound, in bytes.
    pub max_bytes: u64,
}

/// Where the daemon keeps required recordings, and their bound.
#[derive(Clone, Debug)]
pub struct RecordingStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl RecordingStore {
    /// Recordings go under `dir/AGENT/`, each at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes: max_bytes.max(super::asciicast::MIN_LIMIT),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes a new, locked recording file for a session of `agent` started by process `pid`.
    pub fn create(
        &self,
        agent: &str,
        pid: u32,
    ) -> Result<(RecordingGrant, OwnedFd), RecordingError> {
        let err = |op, path: &Path| {
            let agent = agent.to_owned();
            let path = path.to_path_buf();
            move |source| RecordingError::Io {
                agent,
                op,
                path,
                source,
            }
        };
        let dir = self.dir.join(agent);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err("creating", &dir))?;
        // A directory made earlier with another mode is narrowed too.
        for d in [&self.dir, &dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(err("setting the mode of", d))?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = dir.join(format!("{now}-{pid}.cast"));
        let file = fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(err("creating", &path))?;
        // Held by `run`'s descriptor (the same open file) until it exits; never unlocked here.
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(err("locking", &path)(io::Error::last_os_error()));
        }
        Ok((
            RecordingGrant {
                path: path.display().to_string(),
                max_bytes: self.max_bytes,
            },
            file.into(),
        ))
    }
}

/// A recording still being written, as a forensic snapshot shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LiveRecording {
    /// The file.
    pub path: String,
    /// Its size when the snapshot was taken.
    pub bytes: u64,
    /// Its last events (at most [`SNAPSHOT_TAIL`] bytes, from a line start), as text.
    pub tail: String,
}

/// The recordings of `agent` under `dir` that a running `agentcage run` still writes.
pub fn live(dir: &Path, agent: &str) -> Vec<LiveRecording> {
    let Ok(entries) = fs::read_dir(dir.join(agent)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cast"))
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| live_one(p)).collect()
}

fn live_one(path: &Path) -> Option<LiveRecording> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    // A shared lock is refused while `run` holds its exclusive one: the recording is live.
    // SAFETY: flock on a descriptor we own; closing it drops a lock we did get.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        return None;
    }
    let bytes = file.metadata().ok()?.len();
    let from = bytes.saturating_sub(SNAPSHOT_TAIL);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    file.take(SNAPSHOT_TAIL).read_to_end(&mut buf).ok()?;
    // Start at a whole event.
    let start = if from == 0 {
        0
    } else {
        buf.iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |i| i + 1)
    };
    Some(LiveRecording {
        path: path.display().to_string(),
        bytes,
        tail: String::from_utf8_lossy(&buf[start..]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn made_private_and_live_while_held_then_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RecordingStore::new(tmp.path().join("rec"), 1 << 20);
        let (grant, fd) = store.create("demo", 42).unwrap();
        let meta = fs::metadata(&grant.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir_mode = fs::metadata(tmp.path().join("rec/demo"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let mut file = fs::File::from(fd);
        file.write_all(b"{\"version\":2}\n").unwrap();
        for i in 0..2000 {
            writeln!(file, "[{i}.0, \"o\", \"line {i}\"]").unwrap();
        }
        let found = live(&store.dir, "demo");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, grant.path);
        assert!(found[0].tail.len() as u64 <= SNAPSHOT_TAIL);
        assert!(found[0].tail.starts_with('['), "{:?}", &found[0].tail[..20]);
        assert!(found[0].tail.ends_with("\"line 1999\"]\n"));
        assert!(live(&store.dir, "other").is_empty());
        drop(file);
        assert!(live(&store.dir, "demo").is_empty(), "finished, not live");
    }
}
