//! What `agentcage run` hands the agent besides its standard streams: never an IP socket it
//! inherited. Such a socket was made outside the cage, so the cgroup hooks that judge every
//! socket made inside never run for it, and in the kill tier nothing would judge its peer.

use std::{fs, os::fd::RawFd};

/// Marks every inherited IPv4/IPv6 socket above the standard streams close-on-exec, so the
/// agent never gets it; returns the descriptors so marked.
pub fn keep_ip_sockets_out() -> Vec<RawFd> {
    let Ok(entries) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut marked = Vec::new();
    for fd in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| fd > 2)
    {
        if is_ip_socket(fd) && close_on_exec(fd) {
            marked.push(fd);
        }
    }
    marked
}

fn is_ip_socket(fd: RawFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `domain`; a descriptor that is not
    // a socket (or no longer open) only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&raw mut domain).cast(),
            &mut len,
        )
    };
    rc == 0 && (domain == libc::AF_INET || domain == libc::AF_INET6)
}

fn close_on_exec(fd: RawFd) -> bool {
    // SAFETY: fcntl on a descriptor of this process; failure leaves it as it was.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) == 0
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn inherited_ip_sockets_are_kept_from_the_agent_and_other_descriptors_are_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        // As an inherited descriptor would be: without close-on-exec.
        for d in [fd, a.as_raw_fd()] {
            // SAFETY: clearing a flag on descriptors this test owns.
            unsafe { libc::fcntl(d, libc::F_SETFD, 0) };
        }
        let marked = keep_ip_sockets_out();
        assert!(marked.contains(&fd), "{marked:?}");
        assert!(
            !marked.contains(&a.as_raw_fd()),
            "Unix sockets are passed on"
        );
        // SAFETY: reading the flags of a descriptor this test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
