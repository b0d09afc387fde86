//! What a process becomes between fork and exec before it joins its cage: the account the
//! policy gives it (`run_as`), without the capabilities that could undo a cage, and, for a
//! root agent, behind the [`shield`]. Prepared before fork, applied with async-signal-safe
//! calls only; used by `agentcage run` and by the self-test's attempts.

pub mod shield;

use std::io;

use crate::accounts::RunAsGrant;
use shield::Shield;

/// The account switch, prepared before fork.
struct Switch {
    uid: libc::uid_t,
    gid: Option<libc::gid_t>,
    groups: Option<Vec<libc::gid_t>>,
}

/// Everything the child does to itself before joining.
pub struct Confinement {
    shield: Option<Shield>,
    /// A mount namespace of its own for an agent root starts under another account: the
    /// kill tier's exec watch marks its mounts, which must not be the host's.
    private_mounts: bool,
    raw_sockets: bool,
    switch: Option<Switch>,
}

impl Confinement {
    /// For a child that runs as `grant` (None: as this process), with raw sockets allowed or
    /// not. A root agent started by root gets the shield (`policy_source`'s directory
    /// read-only in it); any other agent root starts, a mount namespace of its own.
    pub fn prepare(
        grant: Option<&RunAsGrant>,
        raw_sockets: bool,
        policy_source: &str,
    ) -> io::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let target = grant.map_or(euid, |g| g.uid);
        let shield = if euid == 0 && target == 0 {
            Some(Shield::for_root_agent(policy_source)?)
        } else {
            None
        };
        let private_mounts = euid == 0 && shield.is_none();
        let switch = grant
            .filter(|g| g.uid != euid || g.gid.is_some() || g.groups.is_some())
            .map(|g| Switch {
                uid: g.uid,
                gid: g.gid,
                groups: g.groups.clone(),
            });
        Ok(Self {
            shield,
            private_mounts,
            raw_sockets,
            switch,
        })
    }

    /// Whether the child switches to another account.
    pub fn switches(&self) -> bool {
        self.switch.is_some()
    }

    /// In the child: the shield, the capabilities dropped, then the account. Async-signal-
    /// safe (reads memory prepared before fork).
    pub fn apply(&self) -> io::Result<()> {
        // Hide what a root agent could undo its cage with, while we may still mount; then the
        // capabilities: the daemon refuses to cage a process that could undo it.
        if let Some(shield) = &self.shield {
            shield.raise()?;
        }
        if self.private_mounts {
            shield::private_mounts()?;
        }
        crate::caps::drop_for_cage(self.raw_sockets)?;
        let Some(s) = &self.switch else {
            return Ok(());
        };
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: plain syscalls on memory prepared before fork.
        unsafe {
            if let Some(groups) = &s.groups {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            }
            if let Some(gid) = s.gid {
                check(libc::setresgid(gid, gid, gid))?;
            }
            check(libc::setresuid(s.uid, s.uid, s.uid))?;
            if s.uid != 0 {
                // No set-uid program or file capability gives the agent back what it lost.
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                // Its working directory must be its to enter.
                check(libc::access(c".".as_ptr(), libc::X_OK))?;
            }
        }
        Ok(())
    }
}
