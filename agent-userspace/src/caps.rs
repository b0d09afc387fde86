//! Linux capability sets, read and written with raw syscalls only, so the functions are
//! async-signal-safe and can run between fork and exec.

use std::io;

/// `CAP_DAC_OVERRIDE`.
pub const CAP_DAC_OVERRIDE: u32 = 1;
/// `CAP_NET_RAW`.
pub const CAP_NET_RAW: u32 = 13;

const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

/// One 32-capability word of the effective, permitted and inheritable sets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapWord {
    /// Effective set.
    pub effective: u32,
    /// Permitted set.
    pub permitted: u32,
    /// Inheritable set.
    pub inheritable: u32,
}

/// The calling thread's capability sets (capabilities 0-63).
pub fn get() -> io::Result<[CapWord; 2]> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapWord::default(); 2];
    // SAFETY: header and data are the sizes the v3 ABI expects.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// Sets the calling thread's capability sets.
pub fn set(data: &[CapWord; 2]) -> io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: as in `get`.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: i32, arg: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(option, libc::c_ulong::from(arg), 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Capabilities with which a process could undo its own cage: detach or rewrite the BPF
/// programs (SYS_ADMIN, BPF, PERFMON), change the network around them (NET_ADMIN), reach
/// into other processes or the kernel (SYS_PTRACE, SYS_MODULE, SYS_RAWIO), or override a
/// mandatory access control (MAC_*). No caged process keeps them.
pub const ESCAPE_CAPS: [u32; 9] = [12, 16, 17, 19, 21, 32, 33, 38, 39];

/// Bit mask (capabilities 0-63) of [`ESCAPE_CAPS`], plus CAP_NET_RAW unless raw sockets
/// are allowed (packet sockets are invisible to the cgroup socket hooks).
pub fn forbidden_mask(raw_sockets: bool) -> u64 {
    let mut mask = ESCAPE_CAPS.iter().fold(0u64, |m, c| m | (1 << c));
    if !raw_sockets {
        mask |= 1 << CAP_NET_RAW;
    }
    mask
}

/// Takes the forbidden capabilities away for good, before exec. A process that may (root)
/// drops them from the bounding set and from every set; anyone else gets no_new_privs, so no
/// file capability (ping's CAP_NET_RAW, say) can grant them. Async-signal-safe.
pub fn drop_for_cage(raw_sockets: bool) -> io::Result<()> {
    let mask = forbidden_mask(raw_sockets);
    for cap in 0..64u32 {
        if mask & (1 << cap) == 0 {
            continue;
        }
        if let Err(e) = prctl(libc::PR_CAPBSET_DROP, cap) {
            match e.raw_os_error() {
                // Not privileged to change the bounding set: it has nothing to drop now, and
                // no_new_privs stops it from gaining anything at exec.
                Some(libc::EPERM) => return prctl(libc::PR_SET_NO_NEW_PRIVS, 1),
                // A capability this kernel does not know.
                Some(libc::EINVAL) => continue,
                _ => return Err(e),
            }
        }
    }
    let mut sets = get()?;
    for (word, set) in sets.iter_mut().enumerate() {
        let keep = !((mask >> (32 * word)) as u32);
        set.effective &= keep;
        set.permitted &= keep;
        set.inheritable &= keep;
    }
    set(&sets)?;
    // Ambient capabilities must stay within permitted and inheritable; lowering each is
    // harmless where absent.
    for cap in 0..64u32 {
        if mask & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments only.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_LOWER,
                    libc::c_ulong::from(cap),
                    0,
                    0,
                )
            };
        }
    }
    Ok(())
}

/// The capabilities process `pid` holds or could use: effective, permitted and ambient
/// sets, from /proc/PID/status.
pub fn held_by(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_held(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no capability lines in status"))
}

fn parse_held(status: &str) -> Option<u64> {
    let mut found = false;
    let mut held = 0;
    for line in status.lines() {
        for key in ["CapEff:", "CapPrm:", "CapAmb:"] {
            if let Some(hex) = line.strip_prefix(key) {
                held |= u64::from_str_radix(hex.trim(), 16).ok()?;
                found = true;
            }
        }
    }
    found.then_some(held)
}

/// Names of the capabilities in `mask` that this module knows, for messages.
pub fn names(mask: u64) -> Vec<&'static str> {
    const NAMES: [(u32, &str); 10] = [
        (12, "CAP_NET_ADMIN"),
        (13, "CAP_NET_RAW"),
        (16, "CAP_SYS_MODULE"),
        (17, "CAP_SYS_RAWIO"),
        (19, "CAP_SYS_PTRACE"),
        (21, "CAP_SYS_ADMIN"),
        (32, "CAP_MAC_OVERRIDE"),
        (33, "CAP_MAC_ADMIN"),
        (38, "CAP_PERFMON"),
        (39, "CAP_BPF"),
    ];
    NAMES
        .iter()
        .filter(|(c, _)| mask & (1 << c) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Raises `cap` (0-31) into the ambient set, so it survives exec for a non-root user. It
/// must already be permitted; it is made inheritable here.
pub fn raise_ambient(cap: u32) -> io::Result<()> {
    let mut sets = get()?;
    sets[0].inheritable |= 1 << cap;
    sets[0].effective |= 1 << cap;
    set(&sets)?;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            libc::c_ulong::from(cap),
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_capability_lines() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000002000\n\
                      CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000008000000000\n";
        let held = parse_held(status).unwrap();
        assert_eq!(held, (1 << 13) | (1 << 39));
        assert_eq!(
            names(held & forbidden_mask(false)),
            ["CAP_NET_RAW", "CAP_BPF"]
        );
        assert_eq!(names(held & forbidden_mask(true)), ["CAP_BPF"]);
        assert!(parse_held("Name:\tx\n").is_none());
    }

    #[test]
    fn reads_this_threads_sets() {
        let sets = get().unwrap();
        // Permitted always contains effective.
        assert_eq!(sets[0].effective & !sets[0].permitted, 0);
    }
}
