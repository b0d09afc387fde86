//! A directory whose every access blocks until the test lets go: a FUSE mount whose server
//! never answers. The kernel holds each caller (killably) until the connection is
//! initialised, which never happens; closing `/dev/fuse` aborts the connection and every
//! held call fails with ENOTCONN. Real kernel waits, under the test's control: a way to
//! hold the daemon inside slow I/O without guessing how long anything takes.

use std::{
    fs::{File, OpenOptions},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A stalled mount over a directory; dropping it aborts the connection and unmounts.
pub struct Stall {
    path: PathBuf,
    dev: Option<File>,
}

impl Stall {
    /// Mounts a FUSE file system that never answers over `path` (created if missing).
    pub fn over(path: &Path) -> Stall {
        std::fs::create_dir_all(path).unwrap();
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("/dev/fuse (the fuse module) is needed to stall a directory");
        let options = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
        mount(
            Some("agentcage-stall"),
            path,
            Some("fuse"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a stalled fuse file system on {path:?}: {e}"));
        Stall {
            path: path.to_path_buf(),
            dev: Some(dev),
        }
    }

    /// Lets go: every held call fails (ENOTCONN) and the mount goes.
    pub fn release(mut self) {
        self.abort();
    }

    fn abort(&mut self) {
        // Closing the only /dev/fuse descriptor aborts the connection, failing held calls.
        if let Some(dev) = self.dev.take() {
            drop(dev);
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.abort();
    }
}
