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
                // Not privileged to change the bounding set: no_new_privs stops exec from
                // granting anything; the sets it may hold are cleared below all the same.
                Some(libc::EPERM) => {
                    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
                    break;
                }
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

/// What /proc/PID/status says of a process's privileges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Effective, permitted and ambient sets together: what it can use now.
    pub held: u64,
    /// The bounding set: what it could gain at exec.
    pub bounding: u64,
    /// no_new_privs: exec can grant it nothing it does not hold.
    pub no_new_privs: bool,
    /// Whether any of its user ids (real, effective, saved, fs) is 0.
    pub root: bool,
}

impl Privileges {
    /// The forbidden capabilities it holds now or could gain at exec.
    pub fn forbidden(&self, raw_sockets: bool) -> u64 {
        let mask = forbidden_mask(raw_sockets);
        let could_gain = if self.no_new_privs { 0 } else { self.bounding };
        (self.held | could_gain) & mask
    }
}

/// The privileges of process `pid`.
pub fn privileges_of(pid: u32) -> io::Result<Privileges> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&status)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no capability lines in status"))
}

fn parse_status(status: &str) -> Option<Privileges> {
    let mut p = Privileges::default();
    let mut found = false;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "CapEff" | "CapPrm" | "CapAmb" => {
                p.held |= u64::from_str_radix(value, 16).ok()?;
                found = true;
            }
            "CapBnd" => p.bounding = u64::from_str_radix(value, 16).ok()?,
            "NoNewPrivs" => p.no_new_privs = value == "1",
            "Uid" => p.root = value.split_whitespace().any(|u| u == "0"),
            _ => {}
        }
    }
    found.then_some(p)
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
    fn parses_status_privileges() {
        let status = "Name:\tx\nUid:\t1000\t1000\t1000\t1000\nCapInh:\t0000000000000000\n\
                      CapPrm:\t0000000000002000\nCapEff:\t0000000000000000\n\
                      CapBnd:\t0000000000200000\nCapAmb:\t0000008000000000\nNoNewPrivs:\t0\n";
        let p = parse_status(status).unwrap();
        assert_eq!(p.held, (1 << 13) | (1 << 39));
        assert!(!p.root);
        // CAP_SYS_ADMIN (21) is only in the bounding set: exec could grant it.
        assert_eq!(
            names(p.forbidden(false)),
            ["CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_BPF"]
        );
        assert_eq!(names(p.forbidden(true)), ["CAP_SYS_ADMIN", "CAP_BPF"]);
        let nnp = parse_status(&status.replace("NoNewPrivs:\t0", "NoNewPrivs:\t1")).unwrap();
        assert_eq!(names(nnp.forbidden(true)), ["CAP_BPF"]);
        let root = status.replace("1000\t1000\t1000\t1000", "1000\t0\t1000\t1000");
        assert!(parse_status(&root).unwrap().root);
        assert!(parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn reads_this_threads_sets() {
        let sets = get().unwrap();
        // Permitted always contains effective.
        assert_eq!(sets[0].effective & !sets[0].permitted, 0);
    }
}
