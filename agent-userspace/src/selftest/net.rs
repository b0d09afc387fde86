//! The network attempts: the wildcard addresses (which the kernel delivers to loopback) and
//! Unix sockets outside the cage, the well-known ones of a real host included (Docker's,
//! D-Bus, systemd-resolved's, an ssh agent's).

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

use super::{attempts::Attempt, Context, Outcome};

/// The network attempts, after [`super::attempts::CATALOGUE`]'s, in report order.
pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "egress.wildcard4",
        what: "TCP connect to 0.0.0.0, which the kernel sends to 127.0.0.1",
        run: wildcard4,
    },
    Attempt {
        name: "egress.wildcard6",
        what: "TCP connect to ::, which the kernel sends to ::1",
        run: wildcard6,
    },
    Attempt {
        name: "egress.wildcard_mapped",
        what: "TCP connect to ::ffff:0.0.0.0 (the IPv4 wildcard through an IPv6 socket)",
        run: wildcard_mapped,
    },
    Attempt {
        name: "unix.path",
        what: "Unix stream connect to a listener outside the cage",
        run: unix_path,
    },
    Attempt {
        name: "unix.abstract",
        what: "Unix stream connect to an abstract name outside the cage",
        run: unix_abstract,
    },
    Attempt {
        name: "unix.dgram",
        what: "Unix datagram to a socket outside the cage",
        run: unix_dgram,
    },
    Attempt {
        name: "unix.docker",
        what: "connect to the Docker socket (root on the host)",
        run: docker,
    },
    Attempt {
        name: "unix.dbus",
        what: "connect to the D-Bus system bus",
        run: dbus,
    },
    Attempt {
        name: "unix.resolved",
        what: "connect to systemd-resolved's varlink socket (DNS by the back door)",
        run: resolved,
    },
    Attempt {
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

fn wildcard4(c: &Context) -> Outcome {
    judged(
        connect(&format!("0.0.0.0:{}", c.tcp_port)),
        "cgroup/connect4, judged as 127.0.0.1 (EPERM)",
    )
}

fn wildcard6(c: &Context) -> Outcome {
    if c.tcp6_port == 0 {
        return Outcome::NotApplicable("no IPv6 loopback here".into());
    }
    judged(
        connect(&format!("[::]:{}", c.tcp6_port)),
        "cgroup/connect6, judged as ::1 (EPERM)",
    )
}

fn wildcard_mapped(c: &Context) -> Outcome {
    judged(
        connect(&format!("[::ffff:0.0.0.0]:{}", c.tcp_port)),
        "cgroup/connect6, judged as 127.0.0.1 (EPERM)",
    )
}

/// Where Unix sockets cannot be confined, the self-test's agent has no `unix:` (it would be
/// refused) and the Unix attempts would get out by design: they say why they do not apply.
fn unconfined(c: &Context) -> Option<Outcome> {
    (!c.unix.confined).then(|| {
        Outcome::NotApplicable(format!(
            "this kernel cannot confine Unix sockets ({}): agents with unix: are refused here",
            c.unix.why
        ))
    })
}

fn unix_path(c: &Context) -> Outcome {
    if let Some(o) = unconfined(c) {
        return o;
    }
    judged(UnixStream::connect(&c.unix.path).map(drop), UNIX_HOOKS)
}

fn unix_abstract(c: &Context) -> Outcome {
    if let Some(o) = unconfined(c) {
        return o;
    }
    let r = UnixAddr::from_abstract_name(c.unix.abstract_name.as_bytes())
        .and_then(|a| UnixStream::connect_addr(&a))
        .map(drop);
    judged(r, UNIX_HOOKS)
}

fn unix_dgram(c: &Context) -> Outcome {
    if let Some(o) = unconfined(c) {
        return o;
    }
    let r = UnixDatagram::unbound().and_then(|s| s.send_to(b"selftest", &c.unix.dgram_path));
    judged(r.map(drop), UNIX_HOOKS)
}

/// A connect to a well-known socket of the host, if it is there.
fn well_known(c: &Context, paths: &[&str]) -> Outcome {
    if let Some(o) = unconfined(c) {
        return o;
    }
    let Some(path) = paths.iter().find(|p| Path::new(p).exists()) else {
        return Outcome::NotApplicable(format!("none of {} here", paths.join(", ")));
    };
    judged(UnixStream::connect(path).map(drop), UNIX_HOOKS)
}

fn docker(c: &Context) -> Outcome {
    well_known(c, &["/var/run/docker.sock", "/run/docker.sock"])
}

fn dbus(c: &Context) -> Outcome {
    well_known(
        c,
        &[
            "/run/dbus/system_bus_socket",
            "/var/run/dbus/system_bus_socket",
        ],
    )
}

fn resolved(c: &Context) -> Outcome {
    well_known(c, &["/run/systemd/resolve/io.systemd.Resolve"])
}

fn ssh_agent(c: &Context) -> Outcome {
    if let Some(o) = unconfined(c) {
        return o;
    }
    match std::env::var("SSH_AUTH_SOCK") {
        Ok(path) if !path.is_empty() => well_known(c, &[path.as_str()]),
        _ => Outcome::NotApplicable("no SSH_AUTH_SOCK in the environment".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selftest::UnixTargets;

    fn context(unix: UnixTargets, tcp_port: u16) -> Context {
        Context {
            tcp_port,
            tcp6_port: 0,
            udp_port: 0,
            udp6_port: 0,
            ipv6: false,
            forbidden: String::new(),
            scratch: String::new(),
            policy: String::new(),
            parent_cgroup: String::new(),
            runner_pid: 0,
            daemon_pid: 0,
            unix,
        }
    }

    /// Outside any cage nothing stops the attempts: each says so, which is how a self-test
    /// run without its hooks would read; where Unix sockets cannot be confined their
    /// attempts say why they do not apply.
    #[test]
    fn outside_a_cage_the_attempts_get_out_or_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (unix, _held) = UnixTargets::bind(dir.path(), true, String::new()).unwrap();
        let c = context(unix, tcp.local_addr().unwrap().port());
        for a in ATTEMPTS {
            let outcome = (a.run)(&c);
            match a.name {
                "egress.wildcard6" => assert!(matches!(outcome, Outcome::NotApplicable(_))),
                "egress.wildcard4"
                | "egress.wildcard_mapped"
                | "unix.path"
                | "unix.abstract"
                | "unix.dgram" => {
                    assert!(matches!(outcome, Outcome::Escaped(_)), "{}", a.name)
                }
                _ => assert!(!matches!(outcome, Outcome::Contained(_)), "{}", a.name),
            }
        }
        let unconfined = context(
            UnixTargets {
                confined: false,
                why: "no hooks".into(),
                ..c.unix.clone()
            },
            0,
        );
        for a in ATTEMPTS.iter().filter(|a| a.name.starts_with("unix.")) {
            assert!(
                matches!((a.run)(&unconfined), Outcome::NotApplicable(w) if w.contains("no hooks")),
                "{}",
                a.name
            );
        }
        assert_eq!(
            judged(Err(io::Error::from_raw_os_error(libc::EPERM)), "hook"),
            Outcome::Contained("hook".into())
        );
    }
}
