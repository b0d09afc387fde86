//! What a root agent must not see. uid 0 owns the cgroup files (it could write itself out
//! of its cage through cgroup.procs) and the bpffs pins (it could open and detach the links
//! that enforce every cage), whatever capabilities it lacks. So, for a root agent, `run`
//! gives the child a private mount namespace in which those file systems are covered by
//! empty read-only tmpfs mounts and the policy's directory is read-only, and only then drops
//! CAP_SYS_ADMIN, so nothing can be unmounted again.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path, ptr};

use super::CliError;

/// Paths prepared before fork; [`Shield::raise`] runs between fork and exec.
pub struct Shield {
    hide: Vec<CString>,
    read_only: Vec<CString>,
}

fn c_path(path: &Path) -> Result<CString, CliError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| CliError::Usage(format!("path {} holds a NUL byte", path.display())))
}

impl Shield {
    /// The shield for a root agent: hide bpffs and the cgroup2 mount, freeze the policy's
    /// directory. None for anyone else (they cannot reach those files anyway).
    pub fn for_root_agent(policy_source: &str) -> Result<Option<Self>, CliError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let mut hide = vec![c_path(Path::new("/sys/fs/bpf"))?];
        if let Ok(cgroup2) = crate::cage::find_cgroup2_mount() {
            hide.push(c_path(&cgroup2)?);
        }
        let read_only = match Path::new(policy_source).canonicalize() {
            Ok(p) => p.parent().map(c_path).transpose()?.into_iter().collect(),
            Err(_) => Vec::new(),
        };
        Ok(Some(Self { hide, read_only }))
    }

    /// In the child: a private mount namespace with the paths covered. Async-signal-safe.
    pub fn raise(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: plain syscalls on NUL-terminated paths prepared before fork.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Keep our mounts from propagating back to the host.
            check(libc::mount(
                ptr::null(),
                c"/".as_ptr(),
                ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                ptr::null(),
            ))?;
            for path in &self.hide {
                let rc = libc::mount(
                    c"agentcage".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=4k,mode=0555".as_ptr().cast(),
                );
                // A path this host does not have needs no hiding.
                if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
                    return Err(io::Error::last_os_error());
                }
            }
            for path in &self.read_only {
                check(libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    ptr::null(),
                ))?;
                check(libc::mount(
                    ptr::null(),
                    path.as_ptr(),
                    ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    ptr::null(),
                ))?;
            }
        }
        Ok(())
    }
}
