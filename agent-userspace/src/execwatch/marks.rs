//! Marking a cage's mount namespace: every mount the namespace holds gets a fanotify mount
//! mark for `FAN_OPEN_EXEC_PERM`. A mount namespace's mounts are its own (copies of the
//! host's, on the same file systems), so the marks fire for execs through them only: nothing
//! outside the namespace ever waits for the daemon.
//!
//! Each mount is reached through the process's root (`openat2` with `RESOLVE_IN_ROOT`, no
//! symlinks) and marked only if the file descriptor is on that very mount (its mount id),
//! so a path an agent has played with can never get another mount marked. A mount that
//! cannot be marked is only unwatched: an exec through it meets content the kernel does not
//! know, and is killed.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
};

use nix::sys::fanotify::{Fanotify, MarkFlags, MaskFlags};

/// One mount of a mountinfo text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLine {
    /// The mount's id.
    pub id: u64,
    /// Its super block's device, in the kernel's encoding.
    pub dev: u32,
    /// Where it is mounted, unescaped.
    pub point: String,
}

/// The mounts of a mountinfo text (lines that do not parse are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options ...
            let mut fields = line.split_whitespace();
            let id = fields.next()?.parse().ok()?;
            let (major, minor) = fields.nth(1)?.split_once(':')?;
            let dev = (major.parse::<u32>().ok()? << 20) | (minor.parse::<u32>().ok()? & 0xf_ffff);
            let point = crate::cage::unescape_mountinfo(fields.nth(1)?);
            Some(MountLine { id, dev, point })
        })
        .collect()
}

/// The inode of a process's mount namespace.
pub fn namespace_of(pid: u32) -> io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/mnt"))?.ino())
}

/// What marking a namespace came to.
#[derive(Debug, Default)]
pub struct Marked {
    /// Mounts marked, with their devices.
    pub mounts: Vec<(u64, u32)>,
    /// Mounts left unmarked (file systems that refuse permission events, such as procfs;
    /// mounts hidden under another).
    pub skipped: usize,
}

/// Marks every mount of process `pid`'s mount namespace in `group`.
pub fn mark_namespace(group: &Fanotify, pid: u32) -> io::Result<Marked> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = File::open(format!("/proc/{pid}/root"))?;
    let mut marked = Marked::default();
    for m in parse_mountinfo(&text) {
        match mark_one(group, &root, &m) {
            Ok(()) => marked.mounts.push((m.id, m.dev)),
            Err(_) => marked.skipped += 1,
        }
    }
    Ok(marked)
}

fn mark_one(group: &Fanotify, root: &File, m: &MountLine) -> io::Result<()> {
    let fd = open_in_root(root, &m.point)?;
    if mount_id(&fd)? != m.id {
        return Err(io::Error::other("another mount is on top of it"));
    }
    // fanotify_mark takes no O_PATH descriptor itself, but its magic link names that very
    // mount and dentry, with nothing opened (a mount point may be a device file).
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    group
        .mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            &fd,
            Some(link.as_str()),
        )
        .map_err(io::Error::from)
}

/// An `O_PATH` descriptor of `path` resolved inside `root`, following no symlink.
fn open_in_root(root: &File, path: &str) -> io::Result<OwnedFd> {
    let path = CString::new(path).map_err(|_| io::Error::other("a NUL in a mount point"))?;
    // SAFETY: all-zero is a valid open_how; the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory fd, a NUL-terminated path and an open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &raw const how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `statx` of an open descriptor, asking for `mask`.
pub fn statx(fd: &impl std::os::fd::AsFd, mask: u32) -> io::Result<libc::statx> {
    // SAFETY: all-zero is a valid statx output buffer.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty NUL-terminated path with AT_EMPTY_PATH, and a buffer.
    let rc = unsafe {
        libc::statx(
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            mask,
            &raw mut stx,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stx)
}

/// The id of the mount a descriptor is on.
pub fn mount_id(fd: &impl std::os::fd::AsFd) -> io::Result<u64> {
    let stx = statx(fd, libc::STATX_MNT_ID)?;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::other("this kernel does not report mount ids"));
    }
    Ok(stx.stx_mnt_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_id_device_and_point() {
        let text = "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n\
                    61 27 8:1 / /mnt/a\\040b rw - ext4 /dev/sda1 rw\n\
                    broken\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                MountLine {
                    id: 23,
                    dev: 22,
                    point: "/sys".into()
                },
                MountLine {
                    id: 61,
                    dev: (8 << 20) | 1,
                    point: "/mnt/a b".into()
                },
            ]
        );
    }

    #[test]
    fn a_mount_is_reached_inside_the_root_only() {
        let root = File::open("/proc/self/root").unwrap();
        let fd = open_in_root(&root, "/").unwrap();
        let me = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
        let top = me.iter().rev().find(|m| m.point == "/").unwrap();
        assert_eq!(mount_id(&fd).unwrap(), top.id);
        // `..` cannot climb out of the root, and symlinks are refused.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let inner = File::open(dir.path()).unwrap();
        assert!(open_in_root(&inner, "/link").is_err());
        let up = File::from(open_in_root(&inner, "/../..").unwrap());
        assert_eq!(
            up.metadata().unwrap().ino(),
            inner.metadata().unwrap().ino(),
            "`..` of the root is the root"
        );
    }
}
