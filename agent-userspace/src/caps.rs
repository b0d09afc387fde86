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

/// Takes CAP_NET_RAW away for good. Packet (AF_PACKET) sockets are invisible to the cgroup
/// socket hooks, so lacking the capability is what keeps them closed. A process that may
/// (root) drops it from the bounding set and every set; anyone else gets no_new_privs, so no
/// file capability (ping's) can grant it.
pub fn drop_net_raw() -> io::Result<()> {
    if prctl(libc::PR_CAPBSET_DROP, CAP_NET_RAW).is_err() {
        return prctl(libc::PR_SET_NO_NEW_PRIVS, 1);
    }
    let mut sets = get()?;
    let keep = !(1u32 << CAP_NET_RAW);
    sets[0].effective &= keep;
    sets[0].permitted &= keep;
    sets[0].inheritable &= keep;
    set(&sets)?;
    // Ambient capabilities must stay within permitted: lower it too (harmless if absent).
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_LOWER,
            libc::c_ulong::from(CAP_NET_RAW),
            0,
            0,
        )
    };
    Ok(())
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
    fn reads_this_threads_sets() {
        let sets = get().unwrap();
        // Permitted always contains effective.
        assert_eq!(sets[0].effective & !sets[0].permitted, 0);
    }
}
