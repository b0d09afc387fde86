//! A tiny workload for the end-to-end tests: performs one network, file or exec operation (or
//! a stream of them, read from stdin) and prints `ok` or `err ERRNO` for each, so a test can tell a
//! policy denial (EPERM) from anything else. Run inside cages by `agentcage run`.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::linux::net::SocketAddrExt as _,
    os::unix::fs::OpenOptionsExt as _,
    os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream},
    process::exit,
};

#[path = "probe/net.rs"]
mod net;

use net::{bind_any, connect_fd, dns_query, socket2_tcp};

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn report(r: io::Result<()>) -> i32 {
    match r {
        Ok(()) => {
            println!("ok");
            0
        }
        Err(e) => {
            println!("err {}", errno(&e));
            errno(&e)
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn addr(s: &str) -> io::Result<SocketAddr> {
    s.parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{s}: {e}")))
}

fn local_for(dst: &SocketAddr) -> &'static str {
    if dst.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
}

/// Runs one operation; the result is Ok or the OS error.
fn op(args: &[&str]) -> io::Result<()> {
    match args {
        ["connect", a] => TcpStream::connect(addr(a)?).map(drop),
        ["udp", a, payload] => {
            let dst = addr(a)?;
            let s = UdpSocket::bind(local_for(&dst))?;
            s.send_to(payload.as_bytes(), dst).map(drop)
        }
        ["udp-connected", a, payload] => {
            let dst = addr(a)?;
            let s = UdpSocket::bind(local_for(&dst))?;
            s.connect(dst)?;
            s.send(payload.as_bytes()).map(drop)
        }
        ["raw"] => socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        // Needs no capability, and is neither TCP nor UDP: only the sock_create hook stops it.
        ["udplite"] => socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
        ["bpf"] => bpf_next_link_id(),
        ["packet"] => socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
        ["fork-connect", a] => fork_connect(a),
        // Binds to SRC (port 0) first, then connects: where 0.0.0.0 goes depends on it.
        ["connect-from", src, a] => {
            let dst = addr(a)?;
            let s = socket2_tcp(&dst)?;
            bind_any(&s, &addr(&format!("{src}:0"))?)?;
            connect_fd(&s, &dst)
        }
        // A Unix stream connect and one message; PATH starting with @ is an abstract name.
        ["unix-connect", path, payload] => {
            let mut s = UnixStream::connect_addr(&unix_addr(path)?)?;
            s.write_all(payload.as_bytes())
        }
        // A Unix datagram sent to PATH (or @name) from an unbound socket.
        ["unix-send", path, payload] => {
            let s = UnixDatagram::unbound()?;
            s.send_to_addr(payload.as_bytes(), &unix_addr(path)?)
                .map(drop)
        }
        // A listener and a connect to it by the same process: a socket of its own cage.
        ["unix-self", path] => {
            let addr = unix_addr(path)?;
            let _listener = UnixListener::bind_addr(&addr)?;
            let mut s = UnixStream::connect_addr(&addr)?;
            s.write_all(b"self")
        }
        ["udp6-rthdr", a, payload] => udp6_with_routing_header(a, payload),
        // Try to leave the cage: move ourselves into the cgroup at DIR.
        ["escape-cgroup", dir] => std::fs::write(
            format!("{dir}/cgroup.procs"),
            std::process::id().to_string(),
        ),
        // One line to the application socket; ok if the daemon accepted it.
        ["app", socket, line] => app_event(socket, line),
        ["list", dir] => std::fs::read_dir(dir).map(drop),
        // Whether a signal could be sent (signal 0 sends none: only the permission check).
        ["signal", pid] => {
            let pid: i32 = pid
                .parse()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: kill with signal 0 only checks.
            check(unsafe { libc::kill(pid, 0) })
        }
        // Who this process is: printed as `ids UID GID HOME` before the result.
        ["ids"] => {
            // SAFETY: getters without preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let home = std::env::var("HOME").unwrap_or_default();
            println!("ids {uid} {gid} {home}");
            Ok(())
        }
        // Opens a file for reading (r), writing (w) or both (rw).
        ["open", path, mode] => std::fs::OpenOptions::new()
            .read(mode.contains('r'))
            .write(mode.contains('w'))
            .open(path)
            .map(drop),
        ["open-trunc", path] => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(path)
            .map(drop),
        ["truncate", path] => {
            let c = std::ffi::CString::new(*path)?;
            // SAFETY: a NUL-terminated path.
            check(unsafe { libc::truncate(c.as_ptr(), 0) })
        }
        ["link", from, to] => std::fs::hard_link(from, to),
        ["rename", from, to] => std::fs::rename(from, to),
        ["unlink", path] => std::fs::remove_file(path),
        ["create", path] => std::fs::File::create(path).map(drop),
        ["mkdir", path] => std::fs::create_dir(path),
        // SAFETY: unshare has no memory preconditions.
        ["userns"] => check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }),
        // Runs a program and waits: ok if it ran and exited 0, the errno if exec failed.
        ["exec", program, args @ ..] => {
            let status = std::process::Command::new(program).args(args).status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("{program} ended with {status}")))
            }
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown operation {args:?}"),
        )),
    }
}

/// Sends one application event and reads the daemon's answer; its text goes to stderr.
fn app_event(socket: &str, line: &str) -> io::Result<()> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    eprintln!("{}", reply.trim());
    if reply.contains(r#""type":"accepted""#) {
        Ok(())
    } else {
        Err(io::Error::other(reply))
    }
}

/// BPF_LINK_GET_NEXT_ID: the first step of listing (and then detaching) BPF links.
fn bpf_next_link_id() -> io::Result<()> {
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
    // ENOENT just means "no link": the call itself was allowed.
    if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends a UDP datagram to `a` (IPv6) carrying a segment-routing header (type 4) whose only
/// segment is `a` itself: harmless here, but the same header could name any other address.
fn udp6_with_routing_header(a: &str, payload: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let dst = addr(a)?;
    let SocketAddr::V6(v6) = dst else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "needs an IPv6 address",
        ));
    };
    let s = UdpSocket::bind("[::]:0")?;
    // next header (filled by the kernel), length 2 (one segment), type 4, segments left 0,
    // last entry 0, flags 0, tag 0, then the segment.
    let mut srh = vec![0u8, 2, 4, 0, 0, 0, 0, 0];
    srh.extend_from_slice(&v6.ip().octets());
    // SAFETY: setsockopt with a buffer of the length given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RTHDR,
            srh.as_ptr().cast(),
            srh.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    s.send_to(payload.as_bytes(), dst).map(drop)
}

/// A Unix socket address: `@name` is abstract, anything else a path.
fn unix_addr(s: &str) -> io::Result<UnixAddr> {
    match s.strip_prefix('@') {
        Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
        None => UnixAddr::from_pathname(s),
    }
}

fn socket(family: i32, ty: i32, proto: i32) -> io::Result<()> {
    // SAFETY: plain syscalls on a descriptor we own.
    let fd = unsafe { libc::socket(family, ty, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Forks; the child connects and exits with the errno; the parent reports it.
fn fork_connect(a: &str) -> io::Result<()> {
    let dst = addr(a)?;
    // SAFETY: the probe is single-threaded, so the child may run ordinary code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = TcpStream::connect(dst)
                .map(|_| 0)
                .unwrap_or_else(|e| errno(&e));
            // SAFETY: leave the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            match libc::WEXITSTATUS(status) {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
}

/// Forks a child that waits forever (a second process in the cage) and prints its pid.
fn fork_hold() -> io::Result<i32> {
    // SAFETY: the probe is single-threaded, so the child may run ordinary code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => loop {
            // SAFETY: waits for a signal; the child never returns.
            unsafe { libc::pause() };
        },
        child => Ok(child),
    }
}

/// The `i`-th of the distinct loopback destinations `udp-spread` uses: 127.1.0.0 onwards.
fn spread(i: u32, port: u16) -> SocketAddr {
    let [_, b, c, d] = (0x7f01_0000u32 + i).to_be_bytes();
    SocketAddr::from(([127, b, c, d], port))
}

/// Sends `n` datagrams from one socket, the `i`-th to `dst(i)`; returns how many were denied
/// with EPERM, or the first other outcome.
fn udp_sends(n: u32, dst: impl Fn(u32) -> SocketAddr) -> io::Result<u32> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    let mut denied = 0;
    for i in 0..n {
        match s.send_to(b"x", dst(i)) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => denied += 1,
            Err(e) => return Err(e),
            Ok(_) => return Err(io::Error::other(format!("a send to {} went out", dst(i)))),
        }
    }
    Ok(denied)
}

fn print_denied(r: io::Result<u32>) {
    match r {
        Ok(n) => println!("ok {n}"),
        Err(e) => println!("err {}", errno(&e)),
    }
}

fn ctl_send(control: &mut BufReader<UnixStream>, json: &str) -> io::Result<String> {
    writeln!(control.get_mut(), "{json}")?;
    let mut answer = String::new();
    control.read_line(&mut answer)?;
    Ok(answer.trim().to_owned())
}

/// What a serving probe listens on, between lines: a TCP listener, a UDP socket, a Unix
/// listener.
#[derive(Default)]
struct Servers {
    tcp: Option<TcpListener>,
    udp: Option<UdpSocket>,
    unix: Option<UnixListener>,
    /// A socket made outside the cage and passed in (SCM_RIGHTS).
    passed: Option<std::os::fd::OwnedFd>,
}

impl Servers {
    /// Runs a line that is one of the servers' operations; None for any other line.
    fn handle(&mut self, line: &str) -> Option<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = |r: io::Result<String>| match r {
            Ok(s) if s.is_empty() => "ok".to_owned(),
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {}", errno(&e)),
        };
        Some(match words.as_slice() {
            // Listens on ADDR (port 0: any); answers the port.
            ["listen-tcp", a] => answer(addr(a).and_then(|a| {
                let l = TcpListener::bind(a)?;
                let port = l.local_addr()?.port();
                self.tcp = Some(l);
                Ok(port.to_string())
            })),
            // Takes a waiting connection without blocking (err 11: none), sends TEXT on it.
            ["accept-send", text] => answer(self.tcp.as_ref().ok_or_else(none).and_then(|l| {
                l.set_nonblocking(true)?;
                let (mut s, peer) = l.accept()?;
                s.set_nonblocking(false)?;
                s.write_all(text.as_bytes())?;
                Ok(peer.ip().to_string())
            })),
            // The same, waiting for a connection (one the test has made).
            ["accept-wait-send", text] => {
                answer(self.tcp.as_ref().ok_or_else(none).and_then(|l| {
                    l.set_nonblocking(false)?;
                    let (mut s, peer) = l.accept()?;
                    s.write_all(text.as_bytes())?;
                    Ok(peer.ip().to_string())
                }))
            }
            ["bind-udp", a] => answer(addr(a).and_then(|a| {
                let s = UdpSocket::bind(a)?;
                let port = s.local_addr()?.port();
                self.udp = Some(s);
                Ok(port.to_string())
            })),
            // A datagram waiting on the UDP socket (err 11: none), as text.
            ["recv-udp"] => answer(self.udp.as_ref().ok_or_else(none).and_then(|s| {
                s.set_nonblocking(true)?;
                let mut buf = [0u8; 256];
                let n = s.recv(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            })),
            ["unix-listen", path] => answer(unix_addr(path).and_then(|a| {
                self.unix = Some(UnixListener::bind_addr(&a)?);
                Ok(String::new())
            })),
            // Takes a waiting Unix connection without blocking and reads what it sent.
            ["unix-accept"] => answer(self.unix.as_ref().ok_or_else(none).and_then(|l| {
                l.set_nonblocking(true)?;
                let (mut s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            })),
            // Connects to PATH and takes the descriptor sent there (SCM_RIGHTS).
            ["fd-recv-from", path] => answer(unix_addr(path).and_then(|a| {
                let s = UnixStream::connect_addr(&a)?;
                self.passed = Some(recv_fd(&s)?);
                Ok(String::new())
            })),
            ["fd-send", text] => answer(self.passed.as_ref().ok_or_else(none).and_then(|fd| {
                use std::os::fd::AsRawFd as _;
                // SAFETY: a write from a buffer of the length given.
                let n = unsafe { libc::write(fd.as_raw_fd(), text.as_ptr().cast(), text.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(String::new())
            })),
            ["fd-read"] => answer(self.passed.as_ref().ok_or_else(none).and_then(|fd| {
                use std::os::fd::AsRawFd as _;
                let mut buf = [0u8; 256];
                // SAFETY: a read into a buffer of the length given.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
            })),
            _ => return None,
        })
    }
}

/// Receives one descriptor sent with SCM_RIGHTS on `s`.
fn recv_fd(s: &UnixStream) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one cmsghdr and one descriptor, aligned.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg writes within the buffers msg describes.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/CMSG_DATA stay inside `control`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no descriptor sent",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

/// The error of an operation on a server that was never started.
fn none() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "no such server")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if args == ["serve"] {
        // Hold the cage and take operations from stdin, one a line, until stdin closes.
        println!("ready {}", std::process::id());
        let _ = io::stdout().flush();
        // A control-socket connection kept across lines: `ctl-connect PATH`, then
        // `ctl-send JSON` prints the daemon's first response line.
        let mut control: Option<BufReader<UnixStream>> = None;
        let mut servers = Servers::default();
        // Application connections held open by `app-conns`.
        let mut held: Vec<UnixStream> = Vec::new();
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(answer) = servers.handle(&line) {
                println!("{answer}");
            } else if let Some(path) = line.strip_prefix("ctl-connect ") {
                report(UnixStream::connect(path).map(|s| control = Some(BufReader::new(s))));
            } else if let Some(json) = line.strip_prefix("ctl-send ") {
                match control.as_mut().map(|c| ctl_send(c, json)) {
                    Some(Ok(answer)) => println!("ok {answer}"),
                    Some(Err(e)) => println!("err {}", errno(&e)),
                    None => println!("err -1"),
                }
            } else if let Some(rest) = line.strip_prefix("dns ") {
                // `dns SERVER NAME TYPE [udp|tcp|connected]`: prints the answer.
                let w: Vec<&str> = rest.split_whitespace().collect();
                match dns_query(&w) {
                    Ok(text) => println!("ok {text}"),
                    Err(e) => println!("err {}", errno(&e)),
                }
            } else if let Some(name) = line.strip_prefix("resolve ") {
                // The C library's resolver, as any program uses it.
                use std::net::ToSocketAddrs as _;
                match (name.trim(), 0).to_socket_addrs() {
                    Ok(addrs) => {
                        let list: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                        println!("ok {}", list.join(","));
                    }
                    Err(e) => println!("err {}", e.raw_os_error().unwrap_or(-1)),
                }
            } else if let Some(range) = line.strip_prefix("resolve-many ") {
                // `resolve-many FROM COUNT`: nI.wild.test for I in FROM..FROM+COUNT, one
                // query each: how many were answered with an address.
                let mut w = range
                    .split_whitespace()
                    .map(|n| n.parse::<u32>().unwrap_or(0));
                let (from, count) = (w.next().unwrap_or(0), w.next().unwrap_or(0));
                let ok = (from..from + count)
                    .filter(|i| {
                        let name = format!("n{i}.wild.test");
                        dns_query(&["127.0.0.2:53", &name, "A"])
                            .is_ok_and(|t| t.starts_with("NOERROR 127."))
                    })
                    .count();
                println!("ok {ok}");
            } else if let Some(rest) = line.strip_prefix("app-conns ") {
                // `app-conns PATH N`: N more connections, held open, each reporting a plan;
                // prints the last answer.
                let mut words = rest.split_whitespace();
                let path = words.next().unwrap_or_default().to_owned();
                let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                let mut last = String::new();
                let result = (0..n).try_for_each(|_| {
                    let mut c = BufReader::new(UnixStream::connect(&path)?);
                    last = ctl_send(&mut c, r#"{"event":{"app":"plan"}}"#)?;
                    held.push(c.into_inner());
                    Ok::<_, io::Error>(())
                });
                match result {
                    Ok(()) => println!("ok {last}"),
                    Err(e) => println!("err {}", errno(&e)),
                }
            } else if line == "fork-hold" {
                match fork_hold() {
                    Ok(child) => println!("ok {child}"),
                    Err(e) => println!("err {}", errno(&e)),
                }
            } else if let Some(args) = line.strip_prefix("udp-flood ") {
                // `udp-flood ADDR N`: N datagrams to one destination; prints how many were
                // denied (EPERM).
                let words: Vec<&str> = args.split_whitespace().collect();
                match words.as_slice() {
                    [a, n] => match (addr(a), n.parse::<u32>()) {
                        (Ok(dst), Ok(n)) => print_denied(udp_sends(n, |_| dst)),
                        _ => println!("err -1"),
                    },
                    _ => println!("err -1"),
                }
            } else if let Some(args) = line.strip_prefix("udp-spread ") {
                // `udp-spread N PORT`: one datagram to each of N distinct loopback addresses
                // (127.1.0.0 onwards); prints how many were denied.
                let words: Vec<&str> = args.split_whitespace().collect();
                match words.as_slice() {
                    [n, port] => match (n.parse::<u32>(), port.parse::<u16>()) {
                        (Ok(n), Ok(port)) => print_denied(udp_sends(n, |i| spread(i, port))),
                        _ => println!("err -1"),
                    },
                    _ => println!("err -1"),
                }
            } else if let Some(n) = line.strip_prefix("fork-hold ") {
                // N more processes in the cage, each waiting to be killed.
                let n: usize = n.trim().parse().unwrap_or(0);
                match (0..n).try_for_each(|_| fork_hold().map(drop)) {
                    Ok(()) => println!("ok {n}"),
                    Err(e) => println!("err {}", errno(&e)),
                }
            } else {
                let words: Vec<&str> = line.split_whitespace().collect();
                report(op(&words));
            }
            let _ = io::stdout().flush();
        }
        return;
    }
    exit(report(op(&args)));
}
