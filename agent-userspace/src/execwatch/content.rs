//! A file's content as the kill tier may trust it: the SHA-256 read only once the file's
//! change time is in the past (so any later write gives it another change time), checked
//! unchanged after the read, and kept with that change time and size.
//!
//! The kernel stamps a write with the coarse clock (one tick, a few ms), truncated to the
//! file system's granularity. A write in the same tick as the last one would keep the change
//! time: hashing a file whose change time is still "now" could record content that a write
//! in that tick replaces unseen. So the read waits until the coarse clock has passed the
//! change time (plus the granularity, where a file system's may be coarse), as git does with
//! racily clean index entries.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read as _, Seek as _},
    os::fd::{AsFd, AsRawFd as _},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use agent_common::process::ContentEntry;
use sha2::{Digest, Sha256};

/// Larger files are not hashed (their exec is killed): reading them would hold every exec
/// of every watched cage waiting.
pub const MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// How long a read waits for a change time to be in the past; longer (a clock set back, a
/// file stamped in the future) and the file stays unknown.
const MAX_WAIT: Duration = Duration::from_millis(2500);
/// Entries the cache keeps; it is emptied when full (cheap to refill, never wrong).
const MAX_ENTRIES: usize = 16_384;
/// Reads that found the file changing before giving up.
const ATTEMPTS: usize = 3;

/// What identifies a file's content without reading it: device, inode, change time, size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Device, in the kernel's encoding.
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
    /// Change time, seconds.
    pub ctime_sec: i64,
    /// Change time, nanoseconds.
    pub ctime_nsec: u32,
    /// Size in bytes.
    pub size: i64,
    /// Whether it is a regular file.
    regular: bool,
    /// The file system's magic number (`statfs`), for its timestamp granularity.
    fs_type: i64,
}

impl Stamp {
    /// The stamp of an open file on device `dev` (the kernel's encoding, which stat's
    /// `st_dev` is not on every file system).
    pub fn of(file: &impl AsFd, dev: u32) -> io::Result<Self> {
        let stx = super::marks::statx(file, libc::STATX_BASIC_STATS)?;
        // SAFETY: all-zero is a valid statfs output buffer.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and buffer.
        if unsafe { libc::fstatfs(file.as_fd().as_raw_fd(), &raw mut sfs) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            dev,
            ino: stx.stx_ino,
            ctime_sec: stx.stx_ctime.tv_sec,
            ctime_nsec: stx.stx_ctime.tv_nsec,
            size: i64::try_from(stx.stx_size).unwrap_or(i64::MAX),
            regular: u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFREG,
            fs_type: sfs.f_type,
        })
    }

    /// How far past the change time the coarse clock must be before no write can repeat it.
    fn margin(&self) -> Duration {
        match self.fs_type {
            // Never changed in place (read-only by design).
            SQUASHFS | EROFS | ISO9660 => Duration::ZERO,
            // Nanosecond timestamps: one tick of the coarse clock is enough.
            EXT4 | XFS | BTRFS | TMPFS | OVERLAYFS | F2FS | RAMFS | BCACHEFS | ZFS => {
                coarse_resolution()
            }
            // Anything else (FAT's 2 s, network and FUSE file systems) gets 2 s.
            _ => Duration::from_secs(2),
        }
    }

    /// When the change time stops being "now": the wall-clock time to wait for.
    fn settles_at(&self) -> Duration {
        let ctime = Duration::new(
            u64::try_from(self.ctime_sec).unwrap_or(0),
            self.ctime_nsec.min(999_999_999),
        );
        if self.margin().is_zero() {
            return Duration::ZERO;
        }
        ctime + self.margin()
    }
}

const EXT4: i64 = 0xEF53;
const XFS: i64 = 0x5846_5342;
const BTRFS: i64 = 0x9123_683E;
const TMPFS: i64 = 0x0102_1994;
const OVERLAYFS: i64 = 0x794C_7630;
const F2FS: i64 = 0xF2F5_2010;
const RAMFS: i64 = 0x8584_58F6;
const BCACHEFS: i64 = 0xCA45_1A4E;
const ZFS: i64 = 0x2FC1_2FC1;
const SQUASHFS: i64 = 0x7371_7368;
const EROFS: i64 = 0xE0F5_E1E2;
const ISO9660: i64 = 0x9660;

fn clock(id: libc::clockid_t, res: bool) -> Duration {
    // SAFETY: all-zero is a valid timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and output buffer.
    let rc = unsafe {
        if res {
            libc::clock_getres(id, &raw mut ts)
        } else {
            libc::clock_gettime(id, &raw mut ts)
        }
    };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The coarse clock's tick (the kernel's timestamp clock), at least 1 ms.
fn coarse_resolution() -> Duration {
    clock(libc::CLOCK_REALTIME_COARSE, true).max(Duration::from_millis(1))
}

/// The coarse wall clock, as the kernel stamps files with.
fn coarse_now() -> Duration {
    clock(libc::CLOCK_REALTIME_COARSE, false)
}

/// Why a file's content is not known.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// It could not be read or stat'ed.
    #[error("reading it: {0}")]
    Io(#[from] io::Error),
    /// Not a regular file.
    #[error("not a regular file")]
    NotRegular,
    /// Larger than [`MAX_BYTES`].
    #[error("{0} bytes, more than the {MAX_BYTES} hashed")]
    TooLarge(i64),
    /// Its change time stayed in the future for longer than the read waits.
    #[error("its change time is in the future (a clock set back?)")]
    Unsettled,
    /// It kept changing while read.
    #[error("it changed while it was read")]
    Changing,
}

/// Content already read, by stamp.
#[derive(Default)]
pub struct ContentCache {
    map: HashMap<Stamp, [u8; 32]>,
}

/// The content of `file` (on kernel device `dev`) as the kill tier may trust it: from the
/// cache when its stamp is known, else read (outside the lock) once its change time has
/// settled.
pub fn entry(
    cache: &Mutex<ContentCache>,
    file: &File,
    dev: u32,
) -> Result<ContentEntry, ContentError> {
    let lock = || cache.lock().unwrap_or_else(PoisonError::into_inner);
    let stamp = Stamp::of(file, dev)?;
    if !stamp.regular {
        return Err(ContentError::NotRegular);
    }
    if let Some(d) = lock().map.get(&stamp) {
        return Ok(as_entry(&stamp, *d));
    }
    let (stamp, digest) = read_settled(file, dev)?;
    let mut cache = lock();
    if cache.map.len() >= MAX_ENTRIES {
        cache.map.clear();
    }
    cache.map.insert(stamp, digest);
    Ok(as_entry(&stamp, digest))
}

fn as_entry(s: &Stamp, sha256: [u8; 32]) -> ContentEntry {
    ContentEntry {
        ctime_sec: s.ctime_sec,
        ctime_nsec: s.ctime_nsec,
        _pad: 0,
        size: s.size,
        sha256,
    }
}

/// Waits for the change time to settle, reads the file, and checks the stamp unchanged.
fn read_settled(file: &File, dev: u32) -> Result<(Stamp, [u8; 32]), ContentError> {
    for _ in 0..ATTEMPTS {
        let before = Stamp::of(file, dev)?;
        if before.size > i64::try_from(MAX_BYTES).unwrap_or(i64::MAX) {
            return Err(ContentError::TooLarge(before.size));
        }
        wait_until(before.settles_at())?;
        let mut reader = file;
        reader.seek(io::SeekFrom::Start(0))?;
        let mut hasher = Sha256::new();
        io::copy(&mut reader.take(MAX_BYTES), &mut hasher)?;
        let digest: [u8; 32] = hasher.finalize().into();
        if Stamp::of(file, dev)? == before {
            return Ok((before, digest));
        }
    }
    Err(ContentError::Changing)
}

/// Sleeps until the coarse clock is past `at` (by its own ticks), for at most [`MAX_WAIT`].
fn wait_until(at: Duration) -> Result<(), ContentError> {
    let start = coarse_now();
    loop {
        let now = coarse_now();
        if now > at {
            return Ok(());
        }
        if now.saturating_sub(start) > MAX_WAIT || at.saturating_sub(now) > MAX_WAIT {
            return Err(ContentError::Unsettled);
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)) + Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn digest_of(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn a_fresh_file_is_read_once_settled_and_a_write_gives_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"first").unwrap();
        let file = File::open(&path).unwrap();
        let cache = Mutex::new(ContentCache::default());
        let e = entry(&cache, &file, 7).unwrap();
        assert_eq!(e.sha256, digest_of(b"first"));
        assert!(
            coarse_now() > Stamp::of(&file, 7).unwrap().settles_at(),
            "read only once the change time was in the past"
        );
        // Written at once, with the same size: the change time moves, so the old entry no
        // longer describes the file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"other")
            .unwrap();
        let e2 = entry(&cache, &file, 7).unwrap();
        assert_ne!(
            (e2.ctime_sec, e2.ctime_nsec),
            (e.ctime_sec, e.ctime_nsec),
            "a write after the read changes the change time"
        );
        assert_eq!(e2.sha256, digest_of(b"other"));
        assert_eq!(cache.lock().unwrap().map.len(), 2);
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = File::open("/").unwrap();
        assert!(matches!(
            entry(&Mutex::default(), &dir, 1),
            Err(ContentError::NotRegular)
        ));
    }

    #[test]
    fn a_change_time_far_in_the_future_is_not_waited_for() {
        let far = coarse_now() + Duration::from_secs(3600);
        assert!(matches!(wait_until(far), Err(ContentError::Unsettled)));
        assert!(wait_until(Duration::ZERO).is_ok());
    }
}
