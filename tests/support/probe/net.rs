//! The probe's socket plumbing below std: raw addresses for sockets std cannot make or bind
//! the way a test needs, and the DNS query op.

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
};

use super::{addr, check, local_for};

/// A TCP socket of `dst`'s family, not yet bound or connected.
pub(crate) fn socket2_tcp(dst: &SocketAddr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let family = if dst.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: a plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `sockaddr_in` or `sockaddr_in6` of an address, and its length.
fn raw_sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub(crate) fn bind_any(s: &std::os::fd::OwnedFd, a: &SocketAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (sa, len) = raw_sockaddr(a);
    // SAFETY: a valid address of the length given.
    check(unsafe { libc::bind(s.as_raw_fd(), (&raw const sa).cast(), len) })
}

pub(crate) fn connect_fd(s: &std::os::fd::OwnedFd, a: &SocketAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let (sa, len) = raw_sockaddr(a);
    // SAFETY: a valid address of the length given.
    check(unsafe { libc::connect(s.as_raw_fd(), (&raw const sa).cast(), len) })
}

/// Sends one DNS query (`SERVER NAME TYPE [udp|tcp|connected]`) and describes the answer:
/// `RCODE ADDR,ADDR from=SOURCE` (the source as the socket reported it).
pub(crate) fn dns_query(w: &[&str]) -> io::Result<String> {
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
