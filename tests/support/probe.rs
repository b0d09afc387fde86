//! A tiny workload for the end-to-end tests: performs one network, file or exec operation (or
//! a stream of them, read from stdin) and prints `ok` or `err ERRNO` for each, so a test can tell a
//! policy denial (EPERM) from anything else. Run inside cages by `agentcage run`.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::fs::OpenOptionsExt as _,
    os::unix::net::UnixStream,
    process::exit,
};

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
        // Application connections held open by `app-conns`.
        let mut held: Vec<UnixStream> = Vec::new();
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(path) = line.strip_prefix("ctl-connect ") {
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

/// Sends one DNS query (`SERVER NAME TYPE [udp|tcp|connected]`) and describes the answer:
/// `RCODE ADDR,ADDR from=SOURCE` (the source as the socket reported it).
fn dns_query(w: &[&str]) -> io::Result<String> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    use std::{io::Read as _, str::FromStr as _};
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let [server, name, qtype, rest @ ..] = w else {
        return Err(bad("dns SERVER NAME TYPE [udp|tcp|connected]"));
    };
    let server = addr(server)?;
    let name = Name::from_ascii(format!("{name}.")).map_err(|_| bad("name"))?;
    let qtype = RecordType::from_str(qtype).map_err(|_| bad("type"))?;
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name, qtype));
    let bytes = q.to_vec().map_err(io::Error::other)?;
    // Only bounds the wait: a loaded VM under emulation took over 5 s for one answer.
    let wait = Some(agentcage_tests::harness::deadline());
    let (answer, from) = match rest.first().copied().unwrap_or("udp") {
        "tcp" => {
            let mut s = TcpStream::connect(server)?;
            s.set_read_timeout(wait)?;
            s.write_all(&(bytes.len() as u16).to_be_bytes())?;
            s.write_all(&bytes)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf)?;
            (buf, s.peer_addr()?)
        }
        mode => {
            let s = UdpSocket::bind(local_for(&server))?;
            s.set_read_timeout(wait)?;
            if mode == "connected" {
                s.connect(server)?;
                s.send(&bytes)?;
            } else {
                s.send_to(&bytes, server)?;
            }
            let mut buf = vec![0u8; 4096];
            let (n, from) = s.recv_from(&mut buf)?;
            buf.truncate(n);
            (buf, from)
        }
    };
    let m = Message::from_vec(&answer).map_err(io::Error::other)?;
    let addrs: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    Ok(format!(
        "{} {} from={from}",
        match u16::from(m.metadata.response_code) {
            0 => "NOERROR".to_owned(),
            2 => "SERVFAIL".to_owned(),
            3 => "NXDOMAIN".to_owned(),
            5 => "REFUSED".to_owned(),
            n => format!("RCODE{n}"),
        },
        addrs.join(",")
    ))
}
