//! SHA-256 of executed programs, computed in user space and cached by (device, inode,
//! mtime, size), so a binary run ten thousand times is read once.

use std::{collections::HashMap, fs::File, io, os::unix::fs::MetadataExt as _, path::Path};

use sha2::{Digest, Sha256};

use crate::policy::kernel_dev;

/// Entries kept; the cache is emptied when full (cheap to refill, never wrong).
const MAX_ENTRIES: usize = 16_384;

/// The cache.
#[derive(Default)]
pub struct HashCache {
    map: HashMap<(u32, u64, i64, i64, u64), String>,
}

impl HashCache {
    /// The hex SHA-256 of the file process `pid` executed, identified by the kernel as
    /// (`kdev`, `ino`). Read through /proc/PID/exe while the process lives, else through
    /// `filename`; either must be that same file.
    pub fn hash(
        &mut self,
        pid: u32,
        filename: &str,
        kdev: u32,
        ino: u64,
    ) -> Result<String, String> {
        let by_exe = File::open(format!("/proc/{pid}/exe"));
        let file = match by_exe {
            Ok(f) if same_file(&f, kdev, ino) => f,
            _ => match File::open(Path::new(filename)) {
                Ok(f) if filename.starts_with('/') && same_file(&f, kdev, ino) => f,
                Ok(_) => {
                    return Err(format!(
                        "process {pid} is gone and {filename} is now another file"
                    ))
                }
                Err(e) => return Err(format!("process {pid} is gone and {filename}: {e}")),
            },
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        let key = (kdev, ino, meta.mtime(), meta.mtime_nsec(), meta.size());
        if let Some(h) = self.map.get(&key) {
            return Ok(h.clone());
        }
        let digest = sha256(file).map_err(|e| format!("reading {filename}: {e}"))?;
        if self.map.len() >= MAX_ENTRIES {
            self.map.clear();
        }
        self.map.insert(key, digest.clone());
        Ok(digest)
    }
}

fn same_file(f: &File, kdev: u32, ino: u64) -> bool {
    f.metadata()
        .is_ok_and(|m| m.ino() == ino && kernel_dev(m.dev()) == kdev)
}

fn sha256(mut file: File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_this_test_binary_and_caches() {
        let me = std::fs::metadata("/proc/self/exe").unwrap();
        let pid = std::process::id();
        let mut cache = HashCache::default();
        let a = cache.hash(pid, "", kernel_dev(me.dev()), me.ino()).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(cache.map.len(), 1);
        let b = cache.hash(pid, "", kernel_dev(me.dev()), me.ino()).unwrap();
        assert_eq!(a, b);
        // A different inode is not this file.
        assert!(cache
            .hash(pid, "/nonexistent", kernel_dev(me.dev()), me.ino() + 1)
            .is_err());
    }
}
