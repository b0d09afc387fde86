//! `agentcage selftest` attempts for the network half of issue 11: the wildcard addresses,
//! Unix sockets outside the cage (the well-known ones of a real host included).
//!
//! Written beside the self-test catalogue being built on another branch, in its shape: each
//! attempt is `fn(&NetContext) -> Outcome`, run inside the self-test's throwaway cage under a
//! deny-all policy, and says `contained` with the hook that stopped it, `NOT CONTAINED` with
//! what got out, or `not applicable`. To join them to that catalogue: add [`NetContext`]'s
//! fields to its `Context` (the runner binds the Unix listeners it names, outside the cage),
//! give the throwaway policy `unix: {allow: []}` where `doctor` says Unix sockets can be
//! confined (the attempts are then `not applicable` elsewhere: such an agent is refused), and
//! append [`NET_ATTEMPTS`] to `CATALOGUE`.

use std::{
    io,
    net::{SocketAddr, TcpStream},
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixStream},
    },
    path::Path,
    time::Duration,
};

/// What one attempt came to (the catalogue's own outcome, mirrored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped; by what.
    Contained(String),
    /// It got out; how.
    Escaped(String),
    /// Nothing to try it on here; why.
    NotApplicable(String),
}

impl Outcome {
    /// `contained` / `NOT CONTAINED` / `not applicable`, as the report prints it.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Contained(_) => "contained",
            Self::Escaped(_) => "NOT CONTAINED",
            Self::NotApplicable(_) => "not applicable",
        }
    }
}

/// What the attempts need of the world outside the cage.
#[derive(Clone, Debug, Default)]
pub struct NetContext {
    /// A TCP listener on 127.0.0.1, outside the cage.
    pub tcp_port: u16,
    /// A TCP listener on ::1 (0: no IPv6 loopback).
    pub tcp6_port: u16,
    /// A Unix stream listener's path, outside the cage.
    pub unix_path: String,
    /// A Unix datagram socket's path, outside the cage.
    pub unix_dgram_path: String,
    /// An abstract Unix stream listener's name (without the `@`), outside the cage.
    pub unix_abstract: String,
}

/// One attempt.
pub struct NetAttempt {
    /// Its name in the report, `family.what`.
    pub name: &'static str,
    /// What it tries, for people.
    pub what: &'static str,
    /// Tries it.
    pub run: fn(&NetContext) -> Outcome,
}

/// The attempts, in report order.
pub const NET_ATTEMPTS: &[NetAttempt] = &[
    NetAttempt {
        name: "egress.wildcard4",
        what: "TCP connect to 0.0.0.0, which the kernel sends to 127.0.0.1",
        run: wildcard4,
    },
    NetAttempt {
        name: "egress.wildcard6",
        what: "TCP connect to ::, which the kernel sends to ::1",
        run: wildcard6,
    },
    NetAttempt {
        name: "egress.wildcard_mapped",
        what: "TCP connect to ::ffff:0.0.0.0 (the IPv4 wildcard through an IPv6 socket)",
        run: wildcard_mapped,
    },
    NetAttempt {
        name: "unix.path",
        what: "Unix stream connect to a listener outside the cage",
        run: unix_path,
    },
    NetAttempt {
        name: "unix.abstract",
        what: "Unix stream connect to an abstract name outside the cage",
        run: unix_abstract,
    },
    NetAttempt {
        name: "unix.dgram",
        what: "Unix datagram to a socket outside the cage",
        run: unix_dgram,
    },
    NetAttempt {
        name: "unix.docker",
        what: "connect to the Docker socket (root on the host)",
        run: docker,
    },
    NetAttempt {
        name: "unix.dbus",
        what: "connect to the D-Bus system bus",
        run: dbus,
    },
    NetAttempt {
        name: "unix.resolved",
        what: "connect to systemd-resolved's varlink socket (DNS by the back door)",
        run: resolved,
    },
    NetAttempt {
        name: "unix.ssh_agent",
        what: "connect to the ssh agent of the environment",
        run: ssh_agent,
    },
];

/// How a Unix connect or send is refused, by tier.
const UNIX_HOOKS: &str =
    "unix: LSM unix_stream_connect/unix_may_send, or cgroup/connect_unix/sendmsg_unix (EPERM)";

/// Maps a connect or send: EPERM is a hook's refusal.
fn judged(r: io::Result<()>, hook: &str) -> Outcome {
    match r {
        Ok(()) => Outcome::Escaped("it went through".into()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Outcome::Contained(hook.to_owned()),
        Err(e) => Outcome::NotApplicable(format!("it failed otherwise: {e}")),
    }
}

fn connect(addr: &str) -> io::Result<()> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop)
}

fn wildcard4(c: &NetContext) -> Outcome {
    judged(
        connect(&format!("0.0.0.0:{}", c.tcp_port)),
        "cgroup/connect4, judged as 127.0.0.1 (EPERM)",
    )
}

fn wildcard6(c: &NetContext) -> Outcome {
    if c.tcp6_port == 0 {
        return Outcome::NotApplicable("no IPv6 loopback here".into());
    }
    judged(
        connect(&format!("[::]:{}", c.tcp6_port)),
        "cgroup/connect6, judged as ::1 (EPERM)",
    )
}

fn wildcard_mapped(c: &NetContext) -> Outcome {
    judged(
        connect(&format!("[::ffff:0.0.0.0]:{}", c.tcp_port)),
        "cgroup/connect6, judged as 127.0.0.1 (EPERM)",
    )
}

fn unix_path(c: &NetContext) -> Outcome {
    judged(UnixStream::connect(&c.unix_path).map(drop), UNIX_HOOKS)
}

fn unix_abstract(c: &NetContext) -> Outcome {
    let r = UnixAddr::from_abstract_name(c.unix_abstract.as_bytes())
        .and_then(|a| UnixStream::connect_addr(&a))
        .map(drop);
    judged(r, UNIX_HOOKS)
}

fn unix_dgram(c: &NetContext) -> Outcome {
    let r = UnixDatagram::unbound().and_then(|s| s.send_to(b"selftest", &c.unix_dgram_path));
    judged(r.map(drop), UNIX_HOOKS)
}

/// A connect to a well-known socket of the host, if it is there.
fn well_known(paths: &[&str]) -> Outcome {
    let Some(path) = paths.iter().find(|p| Path::new(p).exists()) else {
        return Outcome::NotApplicable(format!("none of {} here", paths.join(", ")));
    };
    judged(UnixStream::connect(path).map(drop), UNIX_HOOKS)
}

fn docker(_: &NetContext) -> Outcome {
    well_known(&["/var/run/docker.sock", "/run/docker.sock"])
}

fn dbus(_: &NetContext) -> Outcome {
    well_known(&[
        "/run/dbus/system_bus_socket",
        "/var/run/dbus/system_bus_socket",
    ])
}

fn resolved(_: &NetContext) -> Outcome {
    well_known(&["/run/systemd/resolve/io.systemd.Resolve"])
}

fn ssh_agent(_: &NetContext) -> Outcome {
    match std::env::var("SSH_AUTH_SOCK") {
        Ok(path) if !path.is_empty() => well_known(&[path.as_str()]),
        _ => Outcome::NotApplicable("no SSH_AUTH_SOCK in the environment".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside any cage nothing stops the attempts: each says so, which is how a self-test
    /// run without its hooks would read.
    #[test]
    fn outside_a_cage_the_attempts_get_out_or_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let unix_path = dir.path().join("l.sock");
        let _unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
        let dgram_path = dir.path().join("d.sock");
        let _dgram = UnixDatagram::bind(&dgram_path).unwrap();
        let name = format!("agentcage-selftest-net-{}", std::process::id());
        let _abstract = std::os::unix::net::UnixListener::bind_addr(
            &UnixAddr::from_abstract_name(name.as_bytes()).unwrap(),
        )
        .unwrap();
        let c = NetContext {
            tcp_port: tcp.local_addr().unwrap().port(),
            tcp6_port: 0,
            unix_path: unix_path.display().to_string(),
            unix_dgram_path: dgram_path.display().to_string(),
            unix_abstract: name,
        };
        for a in NET_ATTEMPTS {
            let outcome = (a.run)(&c);
            match a.name {
                "egress.wildcard6" => assert_eq!(outcome.word(), "not applicable"),
                "egress.wildcard4"
                | "egress.wildcard_mapped"
                | "unix.path"
                | "unix.abstract"
                | "unix.dgram" => assert_eq!(outcome.word(), "NOT CONTAINED", "{}", a.name),
                _ => assert_ne!(outcome.word(), "contained", "{}", a.name),
            }
        }
        assert_eq!(
            judged(Err(io::Error::from_raw_os_error(libc::EPERM)), "hook"),
            Outcome::Contained("hook".into())
        );
    }
}
