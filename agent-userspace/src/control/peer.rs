//! Who is on the other end of the socket, as the kernel says (SO_PEERCRED, SO_PEERGROUPS),
//! and whether they may talk to the daemon.

use std::{io, os::fd::AsRawFd};

use nix::unistd::{Gid, Group};

/// A connected client's credentials at connect time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Process id of the connecting process.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the peer's credentials from a connected Unix socket.
    pub fn of(socket: &impl AsRawFd) -> io::Result<Self> {
        let fd = socket.as_raw_fd();
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: fd is a live socket, cred/len point to writable memory of the given size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            pid: u32::try_from(cred.pid).unwrap_or(0),
            uid: cred.uid,
            gid: cred.gid,
            groups: peer_groups(fd)?,
        })
    }
}

/// SO_PEERGROUPS: the supplementary groups as they were at connect time (no /proc race).
fn peer_groups(fd: i32) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` writable bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / size_of::<u32>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says how much is needed.
        if err.raw_os_error() == Some(libc::ERANGE) && (len as usize) > groups.len() * 4 {
            groups.resize(len as usize / size_of::<u32>() + 1, 0);
            continue;
        }
        return Err(err);
    }
}

/// Who may use the control socket: root, and members of one optional group.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    group: Option<(String, u32)>,
}

impl AccessPolicy {
    /// Root only.
    pub fn root_only() -> Self {
        Self::default()
    }

    /// Root and members of `group` (a name or a numeric gid).
    pub fn with_group(group: &str) -> io::Result<Self> {
        let gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(group)
                .map_err(io::Error::from)?
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("no group named {group:?}"))
                })?
                .gid
                .as_raw(),
        };
        Ok(Self {
            group: Some((group.to_owned(), gid)),
        })
    }

    /// The group's id, for the socket file's ownership.
    pub fn gid(&self) -> Option<Gid> {
        self.group.as_ref().map(|(_, g)| Gid::from_raw(*g))
    }

    /// Ok if `peer` may use the daemon, else the message to send it.
    pub fn check(&self, peer: &Peer) -> Result<(), String> {
        if peer.uid == 0 {
            return Ok(());
        }
        match &self.group {
            Some((_, gid)) if peer.gid == *gid || peer.groups.contains(gid) => Ok(()),
            Some((name, gid)) => Err(format!(
                "permission denied: uid {} (pid {}) is neither root nor a member of group {name} ({gid}); \
                 agentcaged accepts only root and that group",
                peer.uid, peer.pid
            )),
            None => Err(format!(
                "permission denied: uid {} (pid {}) is not root; agentcaged accepts only root \
                 (start it with --group to admit a group)",
                peer.uid, peer.pid
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_always_passes_others_need_the_group() {
        let root_only = AccessPolicy::root_only();
        assert!(root_only.check(&peer(0, 0, &[])).is_ok());
        assert!(root_only
            .check(&peer(1000, 1000, &[]))
            .unwrap_err()
            .contains("not root"));

        let grouped = AccessPolicy {
            group: Some(("agents".into(), 4242)),
        };
        assert!(grouped.check(&peer(1000, 4242, &[])).is_ok());
        assert!(grouped.check(&peer(1000, 1000, &[4242])).is_ok());
        let refused = grouped.check(&peer(1000, 1000, &[27])).unwrap_err();
        assert!(refused.contains("group agents (4242)"), "{refused}");
    }
}
