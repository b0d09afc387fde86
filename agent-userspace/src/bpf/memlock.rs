//! RLIMIT_MEMLOCK on kernels that charge BPF memory to it. Before Linux 5.11 every map and
//! program counts against the locked-memory limit of its creator's user (64 KiB by default:
//! far too little for the daemon's maps); from 5.11 the memory cgroup is charged instead.
//! Which one applies is found by trying (a tiny map with the limit at 0), not by the kernel's
//! version (vendor kernels backport), and the limit is raised only where it is charged, so a
//! host without CAP_SYS_RESOURCE (such as this project's) never needs it.

use std::{fmt, io};

use super::BpfError;

/// How BPF memory is accounted here, and what became of the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Memlock {
    /// The limit is unlimited already: nothing to find out or raise.
    Unlimited,
    /// Charged to the memory cgroup (Linux 5.11+): the limit does not matter.
    Cgroup,
    /// Charged to RLIMIT_MEMLOCK, which was raised to unlimited from `from` bytes.
    Raised {
        /// The soft limit before.
        from: u64,
    },
    /// Charged to RLIMIT_MEMLOCK, which could not be made unlimited: loading may still fit
    /// in `limit` bytes, and if it does not, the error says why.
    Limited {
        /// The soft limit now (raised to the hard limit where that was higher).
        limit: u64,
        /// Why raising it to unlimited failed.
        why: String,
    },
}

impl Memlock {
    /// Adds what RLIMIT_MEMLOCK has to do with it to an error of loading, where the limit
    /// may be the cause.
    pub fn explain(&self, e: BpfError) -> BpfError {
        match self {
            Self::Limited { limit, why } => BpfError::Memlock {
                limit: kib(*limit),
                why: why.clone(),
                source: Box::new(e),
            },
            _ => e,
        }
    }
}

impl fmt::Display for Memlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unlimited => f.write_str("RLIMIT_MEMLOCK unlimited"),
            Self::Cgroup => f.write_str("charged to the memory cgroup (Linux 5.11+)"),
            Self::Raised { from } => write!(
                f,
                "charged to RLIMIT_MEMLOCK (before Linux 5.11): raised from {} to unlimited",
                kib(*from)
            ),
            Self::Limited { limit, why } => write!(
                f,
                "charged to RLIMIT_MEMLOCK (before Linux 5.11), limited to {}: raising it \
                 failed ({why})",
                kib(*limit)
            ),
        }
    }
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes / 1024)
}

/// Finds how BPF memory is accounted and, where RLIMIT_MEMLOCK is charged, raises it to
/// unlimited (or as far as the hard limit allows). Never fails for a limit it cannot raise:
/// [`Memlock::explain`] names it should loading then fail.
pub fn ensure() -> Result<Memlock, BpfError> {
    let (cur, max) = get().map_err(|source| io_error("getrlimit(RLIMIT_MEMLOCK)", source))?;
    if cur == libc::RLIM_INFINITY {
        return Ok(Memlock::Unlimited);
    }
    if charged_to_memlock(cur, max) {
        Ok(raise(cur, max))
    } else {
        Ok(Memlock::Cgroup)
    }
}

/// Whether a one-entry array map cannot be made with the soft limit at 0 (always allowed to
/// lower, and restored after). A refusal for another reason (no CAP_BPF) also says yes: the
/// limit is then raised needlessly, which is harmless.
fn charged_to_memlock(cur: u64, max: u64) -> bool {
    if set(0, max).is_err() {
        return true;
    }
    let made = tiny_map();
    // Back to what it was; raising to a value at most the hard limit is always allowed.
    let _ = set(cur, max);
    made.is_err()
}

fn raise(cur: u64, max: u64) -> Memlock {
    match set(libc::RLIM_INFINITY, libc::RLIM_INFINITY) {
        Ok(()) => {
            tracing::info!(
                from = cur,
                "BPF memory is charged to RLIMIT_MEMLOCK here (before Linux 5.11): raised it to unlimited"
            );
            Memlock::Raised { from: cur }
        }
        Err(e) => {
            let why = format!(
                "{e}: raising it needs CAP_SYS_RESOURCE; or start agentcaged with \
                 `ulimit -l unlimited` (systemd: LimitMEMLOCK=infinity)"
            );
            // The soft limit may still go up to the hard one.
            let limit = if max > cur && set(max, max).is_ok() {
                max
            } else {
                cur
            };
            tracing::warn!(limit, reason = %why, "BPF memory is charged to RLIMIT_MEMLOCK here and it cannot be made unlimited");
            Memlock::Limited { limit, why }
        }
    }
}

fn get() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

fn set(cur: u64, max: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: r is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes and closes a one-entry array map (a raw BPF_MAP_CREATE: aya's own map creation
/// raises the limit itself on EPERM, which would hide what this asks).
fn tiny_map() -> io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    /// The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the kernel zero-fills
    /// the rest.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: attr is a valid prefix of bpf_attr for BPF_MAP_CREATE, without pointers.
    let fd = unsafe { super::sys_bpf(BPF_MAP_CREATE, &mut attr) }?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

fn io_error(op: &'static str, source: io::Error) -> BpfError {
    BpfError::Io {
        op,
        path: "(process limits)".into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::{ensure, get, Memlock};

    /// On Linux 5.11+ (this project's host: 6.18, without CAP_SYS_RESOURCE) the probe finds
    /// the memory cgroup charged and leaves the limit as it was.
    #[test]
    fn the_limit_is_only_raised_where_it_is_charged() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: making a BPF map needs root");
            return;
        }
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy();
        let mut v = release
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        let before = get().unwrap();
        let m = ensure().unwrap();
        if before.0 == libc::RLIM_INFINITY {
            assert_eq!(m, Memlock::Unlimited);
        } else if (major, minor) >= (5, 11) {
            assert_eq!(
                m,
                Memlock::Cgroup,
                "Linux {release} charges the memory cgroup"
            );
            assert_eq!(get().unwrap(), before, "the probe restores the limit");
        } else {
            assert!(
                matches!(m, Memlock::Raised { .. } | Memlock::Limited { .. }),
                "Linux {release} charges RLIMIT_MEMLOCK: {m:?}"
            );
        }
    }

    #[test]
    fn a_limit_that_stays_is_named_in_the_error() {
        let m = Memlock::Limited {
            limit: 64 * 1024,
            why: "Operation not permitted".into(),
        };
        let e = m.explain(super::BpfError::MissingProgram("p"));
        let text = crate::errors::render(&e);
        assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
        assert!(text.contains("64 KiB"), "{text}");
        assert!(text.contains("program p"), "{text}");
    }
}
