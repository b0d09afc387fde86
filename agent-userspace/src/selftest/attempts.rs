//! The catalogue: one function per way out, run inside the throwaway cage. Each says what
//! happened: `Contained` with the mechanism that stopped it, `Escaped` with what got out, or
//! `NotApplicable` when this host has nothing to try it on. Add an attempt by writing its
//! function and listing it in [`CATALOGUE`].

use std::{
    ffi::CString,
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::process::ExitStatusExt as _,
    process::Command,
    time::Duration,
};

use super::{Context, Outcome};

/// One attempt.
pub struct Attempt {
    /// Its name in the report, `family.what`.
    pub name: &'static str,
    /// What it tries, for people.
    pub what: &'static str,
    /// Tries it.
    pub run: fn(&Context) -> Outcome,
}

/// Every attempt, in report order.
pub const CATALOGUE: &[Attempt] = &[
    Attempt {
        name: "egress.tcp4",
        what: "TCP connect to a listener on 127.0.0.1 outside the cage",
        run: tcp4,
    },
    Attempt {
        name: "egress.tcp6",
        what: "TCP connect to a listener on ::1 outside the cage",
        run: tcp6,
    },
    Attempt {
        name: "egress.mapped",
        what: "TCP connect to ::ffff:127.0.0.1 (IPv4 through an IPv6 socket)",
        run: mapped,
    },
    Attempt {
        name: "egress.udp4",
        what: "UDP datagram to 127.0.0.1 outside the cage",
        run: udp4,
    },
    Attempt {
        name: "egress.udp6",
        what: "UDP datagram to ::1 outside the cage",
        run: udp6,
    },
    Attempt {
        name: "egress.raw",
        what: "a raw IPv4 socket (whole packets, past the connect and send hooks)",
        run: raw,
    },
    Attempt {
        name: "egress.packet",
        what: "a packet socket (AF_PACKET: frames below IP)",
        run: packet,
    },
    Attempt {
        name: "egress.udplite",
        what: "a UDP-Lite socket (an IP protocol other than TCP and UDP)",
        run: udplite,
    },
    Attempt {
        name: "exec.forbidden",
        what: "run a program the policy does not allow",
        run: exec_forbidden,
    },
    Attempt {
        name: "exec.copy",
        what: "run a renamed copy of an allowed-looking program the policy does not list",
        run: exec_copy,
    },
    Attempt {
        name: "exec.loader",
        what: "run a program through the dynamic loader (ld.so PROGRAM)",
        run: exec_loader,
    },
    Attempt {
        name: "files.shadow",
        what: "read /etc/shadow",
        run: read_shadow,
    },
    Attempt {
        name: "files.policy",
        what: "rewrite the daemon's policy file",
        run: write_policy,
    },
    Attempt {
        name: "leave.cgroup",
        what: "move itself out of its cage through the parent cgroup's cgroup.procs",
        run: leave_cgroup,
    },
    Attempt {
        name: "leave.ptrace",
        what: "trace a process outside the cage (the self-test's runner)",
        run: ptrace_outside,
    },
    Attempt {
        name: "leave.setns",
        what: "enter init's mount namespace",
        run: setns_init,
    },
    Attempt {
        name: "stop.signal",
        what: "signal the daemon",
        run: signal_daemon,
    },
    Attempt {
        name: "stop.bpf",
        what: "list the kernel's BPF links (the first step of detaching them)",
        run: bpf_links,
    },
    Attempt {
        name: "stop.core_pattern",
        what: "set kernel.core_pattern to a helper the kernel would run as root",
        run: core_pattern,
    },
];

const EPERM: i32 = libc::EPERM;
const EACCES: i32 = libc::EACCES;

/// Maps a connect or send result: EPERM is the cgroup hook's refusal.
fn judged(r: io::Result<()>, hook: &'static str) -> Outcome {
    match r {
        Ok(()) => Outcome::Escaped("it went through".into()),
        Err(e) if e.raw_os_error() == Some(EPERM) => Outcome::Contained(hook.into()),
        Err(e) => Outcome::NotApplicable(format!("it failed otherwise: {e}")),
    }
}

fn connect(addr: SocketAddr) -> io::Result<()> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop)
}

fn tcp4(c: &Context) -> Outcome {
    judged(
        connect(SocketAddr::from(([127, 0, 0, 1], c.tcp_port))),
        "cgroup/connect4 (EPERM)",
    )
}

fn tcp6(c: &Context) -> Outcome {
    if !c.ipv6 {
        return Outcome::NotApplicable("no IPv6 loopback here".into());
    }
    judged(
        connect(SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            c.tcp6_port,
        ))),
        "cgroup/connect6 (EPERM)",
    )
}

fn mapped(c: &Context) -> Outcome {
    let addr: SocketAddr = format!("[::ffff:127.0.0.1]:{}", c.tcp_port)
        .parse()
        .expect("a literal address");
    judged(connect(addr), "cgroup/connect6, judged as IPv4 (EPERM)")
}

fn send_to(bind: &str, to: SocketAddr) -> io::Result<()> {
    UdpSocket::bind(bind)?.send_to(b"selftest", to).map(drop)
}

fn udp4(c: &Context) -> Outcome {
    judged(
        send_to("0.0.0.0:0", SocketAddr::from(([127, 0, 0, 1], c.udp_port))),
        "cgroup/sendmsg4 (EPERM)",
    )
}

fn udp6(c: &Context) -> Outcome {
    if !c.ipv6 {
        return Outcome::NotApplicable("no IPv6 loopback here".into());
    }
    judged(
        send_to(
            "[::]:0",
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, c.udp6_port)),
        ),
        "cgroup/sendmsg6 (EPERM)",
    )
}

/// Creates (and closes) a socket.
fn socket(family: i32, ty: i32, proto: i32) -> io::Result<()> {
    // SAFETY: plain syscalls on a descriptor this function owns.
    let fd = unsafe { libc::socket(family, ty, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

fn refused(r: io::Result<()>, how: &'static str) -> Outcome {
    match r {
        Ok(()) => Outcome::Escaped("it was allowed".into()),
        Err(e) if matches!(e.raw_os_error(), Some(EPERM | EACCES)) => {
            Outcome::Contained(format!("{how} ({e})"))
        }
        Err(e) => Outcome::NotApplicable(format!("it failed otherwise: {e}")),
    }
}

fn raw(_: &Context) -> Outcome {
    refused(
        socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "no CAP_NET_RAW; cgroup/sock_create",
    )
}

fn packet(_: &Context) -> Outcome {
    refused(socket(libc::AF_PACKET, libc::SOCK_RAW, 0), "no CAP_NET_RAW")
}

fn udplite(_: &Context) -> Outcome {
    refused(
        socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
        "cgroup/sock_create",
    )
}

/// Runs a program; a kill (kill tier) or EPERM/EACCES at exec (deny tier) is containment.
fn run_program(program: &str, args: &[&str]) -> Outcome {
    match Command::new(program).args(args).status() {
        Ok(s) if s.signal() == Some(libc::SIGKILL) => {
            Outcome::Contained("killed at exec: sched_process_exec (kill tier)".into())
        }
        Ok(s) if s.success() => Outcome::Escaped(format!("{program} ran")),
        Ok(s) => Outcome::NotApplicable(format!("{program} ended with {s}")),
        Err(e) if matches!(e.raw_os_error(), Some(EPERM | EACCES)) => {
            Outcome::Contained(format!("refused at exec: bprm_check_security ({e})"))
        }
        Err(e) => Outcome::NotApplicable(format!("could not start {program}: {e}")),
    }
}

fn exec_forbidden(c: &Context) -> Outcome {
    run_program(&c.forbidden, &[])
}

fn exec_copy(c: &Context) -> Outcome {
    let copy = format!("{}/selftest-copy", c.scratch);
    if let Err(e) = std::fs::copy(&c.forbidden, &copy) {
        return Outcome::NotApplicable(format!("cannot copy {}: {e}", c.forbidden));
    }
    run_program(&copy, &[])
}

fn exec_loader(c: &Context) -> Outcome {
    let Some(loader) = crate::policy::loaders().into_iter().next() else {
        return Outcome::NotApplicable("no dynamic loader at the usual paths".into());
    };
    run_program(&loader.display().to_string(), &[&c.forbidden])
}

/// Opens a file; refusals by permission or by a hook are containment.
fn open(path: &str, write: bool, how: &'static str) -> Outcome {
    let r = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(path)
        .map(drop);
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            Outcome::Contained(format!("{how}: not there ({e})"))
        }
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            Outcome::Contained(format!("{how}: read-only ({e})"))
        }
        other => refused(other, how),
    }
}

fn read_shadow(_: &Context) -> Outcome {
    open("/etc/shadow", false, "Unix permissions of the agent's uid")
}

fn write_policy(c: &Context) -> Outcome {
    open(&c.policy, true, "Unix permissions of the agent's uid")
}

fn leave_cgroup(c: &Context) -> Outcome {
    let procs = format!("{}/cgroup.procs", c.parent_cgroup);
    match std::fs::write(&procs, std::process::id().to_string()) {
        Ok(()) => Outcome::Escaped(format!("wrote itself into {procs}")),
        Err(e) => refused(Err(e), "cgroup files are root's"),
    }
}

fn ptrace_outside(c: &Context) -> Outcome {
    // SAFETY: PTRACE_ATTACH with a pid; nothing is read or written through it.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            c.runner_pid as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc == 0 {
        // SAFETY: as above; let it go again.
        unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                c.runner_pid as libc::pid_t,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        return Outcome::Escaped(format!("attached to process {}", c.runner_pid));
    }
    refused(
        Err(io::Error::last_os_error()),
        "another uid; no CAP_SYS_PTRACE",
    )
}

fn setns_init(_: &Context) -> Outcome {
    let path = CString::new("/proc/1/ns/mnt").expect("no NUL");
    // SAFETY: open of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return refused(
            Err(io::Error::last_os_error()),
            "init's namespaces are not its to open",
        );
    }
    // SAFETY: fd is ours.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNS) };
    let e = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc == 0 {
        return Outcome::Escaped("entered init's mount namespace".into());
    }
    refused(Err(e), "no CAP_SYS_ADMIN")
}

fn signal_daemon(c: &Context) -> Outcome {
    // SAFETY: signal 0 checks the permission and sends nothing.
    let rc = unsafe { libc::kill(c.daemon_pid as libc::pid_t, 0) };
    if rc == 0 {
        return Outcome::Escaped(format!("may signal the daemon (pid {})", c.daemon_pid));
    }
    refused(Err(io::Error::last_os_error()), "another uid")
}

fn bpf_links(_: &Context) -> Outcome {
    const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
    let mut attr = [0u32; 4];
    // SAFETY: bpf(2) reads start_id and writes next_id within the zeroed 16-byte attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_NEXT_ID,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    let e = io::Error::last_os_error();
    if rc >= 0 || e.raw_os_error() == Some(libc::ENOENT) {
        return Outcome::Escaped("may walk the kernel's BPF links".into());
    }
    refused(Err(e), "no CAP_BPF or CAP_SYS_ADMIN")
}

fn core_pattern(_: &Context) -> Outcome {
    // Opened for writing only: nothing is written, should it open.
    open(
        "/proc/sys/kernel/core_pattern",
        true,
        "/proc/sys is root's (and read-only for root agents)",
    )
}
