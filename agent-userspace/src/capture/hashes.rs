//! SHA-256 of executed programs, computed in user space and cached by (device, inode,
//! mtime, ctime, size), so a binary run ten thousand times is read once.
//!
//! The daemon runs as root and the file name comes from the agent, so a file is opened
//! only once it is known to be the regular file the kernel executed: `O_PATH` first (which
//! neither blocks on a FIFO nor opens a device), then checks, then a real open through
//! /proc/self/fd.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
};

use sha2::{Digest, Sha256};

use crate::policy::kernel_dev_of;

/// Entries kept; the cache is emptied when full (cheap to refill, never wrong).
const MAX_ENTRIES: usize = 16_384;
/// Larger files are not hashed: reading them would stall the event reader.
const MAX_BYTES: u64 = 256 * 1024 * 1024;

type Key = (u32, u64, i64, i64, i64, i64, u64);

/// The cache.
#[derive(Default)]
pub struct HashCache {
    map: HashMap<Key, String>,
}

impl HashCache {
    /// The hex SHA-256 of the file process `pid` executed, identified by the kernel as
    /// (`kdev`, `ino`). Found through /proc/PID/exe while the process lives, else through
    /// `filename`; either must be that same regular file.
    pub fn hash(
        &mut self,
        pid: u32,
        filename: &str,
        kdev: u32,
        ino: u64,
    ) -> Result<String, String> {
        let found = open_path(&format!("/proc/{pid}/exe"), kdev, ino).or_else(|first| {
            if !filename.starts_with('/') {
                return Err(first);
            }
            open_path(filename, kdev, ino)
                .map_err(|e| format!("process {pid} is gone and {filename}: {e}"))
        })?;
        let meta = found.metadata().map_err(|e| e.to_string())?;
        if meta.size() > MAX_BYTES {
            return Err(format!(
                "{filename} is {} bytes, more than the {MAX_BYTES} hashed",
                meta.size()
            ));
        }
        let key = (
            kdev,
            ino,
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.size(),
        );
        if let Some(h) = self.map.get(&key) {
            return Ok(h.clone());
        }
        let file = File::open(format!("/proc/self/fd/{}", found.as_raw_fd()))
            .map_err(|e| format!("reopening {filename}: {e}"))?;
        let digest = sha256(file).map_err(|e| format!("reading {filename}: {e}"))?;
        if self.map.len() >= MAX_ENTRIES {
            self.map.clear();
        }
        self.map.insert(key, digest.clone());
        Ok(digest)
    }
}

/// An `O_PATH` descriptor of `path`, if it is a regular file with the kernel's identity.
fn open_path(path: &str, kdev: u32, ino: u64) -> Result<File, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.ino() != ino || kernel_dev_of(&f) != Some(kdev) {
        return Err("now another file than the one executed".to_owned());
    }
    Ok(f)
}

fn sha256(file: File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut file.take(MAX_BYTES), &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_this_test_binary_and_caches() {
        let me = File::open("/proc/self/exe").unwrap();
        let (dev, ino) = (kernel_dev_of(&me).unwrap(), me.metadata().unwrap().ino());
        let pid = std::process::id();
        let mut cache = HashCache::default();
        let a = cache.hash(pid, "", dev, ino).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(cache.map.len(), 1);
        assert_eq!(cache.hash(pid, "", dev, ino).unwrap(), a);
        // A different inode is not this file.
        assert!(cache.hash(pid, "/nonexistent", dev, ino + 1).is_err());
    }

    #[test]
    fn a_fifo_named_by_the_agent_is_never_opened_for_reading() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let f = File::open("/proc/self/exe").unwrap();
        let dev = kernel_dev_of(&f).unwrap();
        // No process 0 exe, so the file name is tried: it must fail at once, not block.
        let e = HashCache::default()
            .hash(0, &fifo.display().to_string(), dev, 1)
            .unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
