//! What a root agent must not see or change. uid 0 owns the cgroup files (it could write
//! itself out of its cage through cgroup.procs), the bpffs pins (it could open and detach the
//! links that enforce every cage), and the kernel's settings under /proc/sys and /sys (it
//! could set `kernel.core_pattern` to a helper the kernel then runs as full root outside the
//! cage), whatever capabilities it lacks: the kernel checks those writes by uid. Device files
//! are checked by uid too (a block device is the raw disk).
//!
//! So, for a root agent, `run` gives the child a private mount namespace in which bpffs and
//! the cgroup2 mount are covered by empty read-only tmpfs mounts, /sys (every mount below it)
//! and /proc/sys, /proc/sysrq-trigger and the other writable kernel files of /proc are
//! read-only, /dev is a fresh tmpfs holding only the harmless character devices, the
//! terminals and shared memory, and the policy's directory is read-only; and only then drops
//! CAP_SYS_ADMIN (and CAP_MKNOD), so nothing can be remounted or made again.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path, ptr};

/// Writable kernel files of /proc that a root agent gets read-only (as container runtimes
/// do); those this kernel lacks are skipped.
const PROC_READ_ONLY: [&str; 6] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
    "/proc/acpi",
];

/// The device files of a root agent's /dev, bound from the host's: no block device, no
/// memory, no kernel log, no console.
const DEVICES: [&str; 7] = ["null", "zero", "full", "random", "urandom", "tty", "ptmx"];
/// Directories of /dev bound whole: the terminals and POSIX shared memory.
const DEVICE_DIRS: [&str; 3] = ["pts", "shm", "mqueue"];
/// The usual links of /dev.
const DEVICE_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Where the new /dev is assembled before it is moved over /dev: a directory every host has,
/// covered only for that moment.
const STAGING: &str = "/run";

/// One mount to make read-only, with the flags it already has (kept by the remount).
struct ReadOnly {
    path: CString,
    flags: libc::c_ulong,
}

/// Paths prepared before fork; [`Shield::raise`] runs between fork and exec.
pub struct Shield {
    hide: Vec<CString>,
    read_only: Vec<ReadOnly>,
    bind_read_only: Vec<CString>,
    dev: Vec<(CString, CString, DevEntry)>,
}

#[derive(Clone, Copy)]
enum DevEntry {
    Device,
    Dir,
    Link,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} holds a NUL byte", path.display()),
        )
    })
}

fn c_str(s: &str) -> io::Result<CString> {
    c_path(Path::new(s))
}

/// In the child: a mount namespace of its own, whose mounts do not propagate back to the
/// host's. Async-signal-safe.
pub fn private_mounts() -> io::Result<()> {
    // SAFETY: plain syscalls on static NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        ))
    }
}

impl Shield {
    /// The shield for a root agent: hide bpffs and the cgroup2 mount, make /sys and the
    /// kernel's files of /proc read-only, give it a /dev of its own, freeze the policy's
    /// directory.
    pub fn for_root_agent(policy_source: &str) -> io::Result<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut hide = vec![c_str("/sys/fs/bpf")?];
        if let Ok(cgroup2) = crate::cage::find_cgroup2_mount() {
            hide.push(c_path(&cgroup2)?);
        }
        // Every mount at or below /sys, made read-only in place (top to bottom is the order
        // of mountinfo; each is remounted on its own).
        let mut read_only = Vec::new();
        for (point, flags) in mounts(&mountinfo) {
            if point == "/sys" || point.starts_with("/sys/") {
                read_only.push(ReadOnly {
                    path: c_str(&point)?,
                    flags,
                });
            }
        }
        let mut bind_read_only = PROC_READ_ONLY
            .iter()
            .map(|p| c_str(p))
            .collect::<io::Result<Vec<_>>>()?;
        if let Ok(p) = Path::new(policy_source).canonicalize() {
            if let Some(dir) = p.parent() {
                bind_read_only.push(c_path(dir)?);
            }
        }
        let mut dev = Vec::new();
        for name in DEVICES {
            dev.push((
                c_str(&format!("/dev/{name}"))?,
                c_str(&format!("{STAGING}/{name}"))?,
                DevEntry::Device,
            ));
        }
        for name in DEVICE_DIRS {
            dev.push((
                c_str(&format!("/dev/{name}"))?,
                c_str(&format!("{STAGING}/{name}"))?,
                DevEntry::Dir,
            ));
        }
        for (name, target) in DEVICE_LINKS {
            dev.push((
                c_str(target)?,
                c_str(&format!("{STAGING}/{name}"))?,
                DevEntry::Link,
            ));
        }
        Ok(Self {
            hide,
            read_only,
            bind_read_only,
            dev,
        })
    }

    /// In the child: a private mount namespace with the paths covered. Async-signal-safe
    /// (every path was prepared before fork).
    pub fn raise(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on NUL-terminated paths prepared before fork.
        unsafe {
            private_mounts()?;
            for ro in &self.read_only {
                let rc = libc::mount(
                    ptr::null(),
                    ro.path.as_ptr(),
                    ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | ro.flags,
                    ptr::null(),
                );
                // A mount hidden below another at the same point is out of reach anyway.
                if rc != 0 && !absent() {
                    return Err(io::Error::last_os_error());
                }
            }
            for path in &self.hide {
                let rc = libc::mount(
                    c"agentcage".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=4k,mode=0555".as_ptr().cast(),
                );
                // A path this host does not have needs no hiding.
                if rc != 0 && !absent() {
                    return Err(io::Error::last_os_error());
                }
            }
            for path in &self.bind_read_only {
                bind_read_only(path)?;
            }
            self.private_dev()?;
        }
        Ok(())
    }

    /// A fresh /dev: a tmpfs assembled at [`STAGING`] (the host's /dev still visible), made
    /// read-only, then moved over /dev.
    unsafe fn private_dev(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on NUL-terminated paths prepared before fork.
        unsafe {
            check(libc::mount(
                c"agentcage-dev".as_ptr(),
                c"/run".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"size=64k,mode=0755".as_ptr().cast(),
            ))?;
            for (source, target, kind) in &self.dev {
                match kind {
                    DevEntry::Link => check(libc::symlink(source.as_ptr(), target.as_ptr()))?,
                    DevEntry::Device | DevEntry::Dir => {
                        let made = if matches!(kind, DevEntry::Dir) {
                            libc::mkdir(target.as_ptr(), 0o755)
                        } else {
                            let fd = libc::open(
                                target.as_ptr(),
                                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                                0o666,
                            );
                            if fd >= 0 {
                                libc::close(fd);
                            }
                            fd.min(0)
                        };
                        check(made)?;
                        let rc = libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            ptr::null(),
                        );
                        // A device or directory this host lacks stays an empty placeholder.
                        if rc != 0 && !absent() {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
            }
            check(libc::mount(
                ptr::null(),
                c"/run".as_ptr(),
                ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
                c"size=64k,mode=0755".as_ptr().cast(),
            ))?;
            check(libc::mount(
                c"/run".as_ptr(),
                c"/dev".as_ptr(),
                ptr::null(),
                libc::MS_MOVE,
                ptr::null(),
            ))
        }
    }
}

/// Binds `path` onto itself and makes that read-only; a path this host lacks is skipped.
/// Async-signal-safe.
unsafe fn bind_read_only(path: &CString) -> io::Result<()> {
    // SAFETY: plain syscalls on a NUL-terminated path.
    unsafe {
        if libc::mount(
            path.as_ptr(),
            path.as_ptr(),
            ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            ptr::null(),
        ) != 0
        {
            return if absent() {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            };
        }
        check(libc::mount(
            ptr::null(),
            path.as_ptr(),
            ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            ptr::null(),
        ))
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the last error says the path does not exist.
fn absent() -> bool {
    io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT)
}

/// Mount points and their per-mount flags (`nosuid`, `nodev`, `noexec`, atime), from a
/// mountinfo text.
fn mounts(mountinfo: &str) -> Vec<(String, libc::c_ulong)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options ...
            let mut fields = line.split_whitespace();
            let point = fields.nth(4)?;
            let options = fields.next()?;
            let flags = options.split(',').fold(0, |f, o| {
                f | match o {
                    "nosuid" => libc::MS_NOSUID,
                    "nodev" => libc::MS_NODEV,
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    _ => 0,
                }
            });
            Some((crate::cage::unescape_mountinfo(point), flags))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_keep_their_flags() {
        let text = "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n\
                    42 23 0:39 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime - bpf bpf rw\n\
                    50 27 0:50 / /mnt/a\\040b ro - tmpfs tmpfs rw\n";
        let m = mounts(text);
        assert_eq!(m[0], ("/sys".into(), libc::MS_RELATIME));
        assert_eq!(
            m[1].1,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME
        );
        assert_eq!(m[2].0, "/mnt/a b");
    }
}
