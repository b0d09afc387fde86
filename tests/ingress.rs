//! Who may reach a caged agent: a connection to its listeners, or a datagram to its sockets,
//! from a peer its `ingress.allow` does not admit never exists; nothing the agent would send
//! on it ever leaves. Loopback only; the test process is the uncaged peer.

use agentcage_tests::harness;

use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
};

use harness::Daemon;

/// The port a serving probe answered with (`ok PORT`).
fn port_of(answer: &str) -> u16 {
    answer
        .strip_prefix("ok ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected `ok PORT`, got {answer:?}"))
}

/// Starts a connect that the kernel completes or not in the background (a dropped SYN is
/// retransmitted for minutes); the test decides by the kernel's event, never by a timeout.
fn connect_nonblocking(from: &str, to: SocketAddr) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscalls on a descriptor owned at once.
    let fd = unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        std::os::fd::OwnedFd::from_raw_fd(fd)
    };
    let sin = |a: &SocketAddr| {
        let SocketAddr::V4(v4) = a else {
            panic!("IPv4 only here")
        };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    };
    let local = sin(&format!("{from}:0").parse().unwrap());
    let remote = sin(&to);
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid addresses of the length given.
    unsafe {
        assert_eq!(
            libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len),
            0,
            "bind {from}"
        );
        let rc = libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), len);
        let err = std::io::Error::last_os_error();
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {err}"
        );
    }
    fd
}

/// Whether a non-blocking connect has completed (the socket has a peer).
fn connected(fd: &std::os::fd::OwnedFd) -> bool {
    // SAFETY: an all-zero sockaddr_storage is valid; getpeername writes within its length.
    unsafe {
        let mut sa: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::getpeername(fd.as_raw_fd(), (&raw mut sa).cast(), &mut len) == 0
    }
}

fn policy(ingress: &str) -> String {
    format!("version: 1\nagents:\n  server:\n    egress:\n      allow_events: all\n{ingress}")
}

/// Issue 11, case 1: a caged process listened on loopback, an uncaged client connected and
/// received what the caged process sent. Now the connection is refused before it exists.
#[test]
fn a_peer_that_ingress_does_not_admit_never_connects_to_a_caged_listener() {
    let daemon = Daemon::start(&policy(""));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("server");
    let port = port_of(&cage.op("listen-tcp 127.0.0.1:0"));

    let client = connect_nonblocking("127.0.0.1", SocketAddr::from(([127, 0, 0, 1], port)));
    let refused = events.wait_event("the refused connection", |e| {
        e["hook"] == "skb_ingress" && e["dst_port"] == port
    });
    assert_eq!(refused["verdict"], "deny", "{refused}");
    assert_eq!(refused["rule"], "default-deny");
    assert_eq!(refused["src_addr"], "127.0.0.1");
    assert_eq!(refused["protocol"], "tcp");
    assert_eq!(refused["agent"], "agent:server");

    // The SYN was dropped: there is no connection for the agent to accept or to write to.
    assert_eq!(cage.op("accept-send leaked"), "err 11", "nothing to accept");
    assert!(!connected(&client), "the client never got a connection");
    // Outside the cage, the same client connects at once (loopback is not special-cased).
    let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    TcpStream::connect(outside.local_addr().unwrap()).expect("uncaged connects work");
    cage.finish();
    daemon.stop();
}

#[test]
fn an_admitted_peer_connects_and_others_on_the_same_port_do_not() {
    let daemon = Daemon::start(&policy(
        "    ingress:\n      allow:\n        - cidr: 127.0.0.1/32\n          protocols: [tcp]\n",
    ));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("server");
    let port = port_of(&cage.op("listen-tcp 0.0.0.0:0"));

    let mut admitted = TcpStream::connect(("127.0.0.1", port)).expect("an admitted peer");
    assert_eq!(cage.op("accept-wait-send hello"), "ok 127.0.0.1");
    let mut got = String::new();
    admitted.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello");
    let accepted = events.wait_event("the accepted connection", |e| {
        e["hook"] == "skb_ingress" && e["verdict"] == "allow"
    });
    assert_eq!(accepted["rule"], "ingress.allow[0]", "{accepted}");
    assert_eq!(accepted["rule_text"], "127.0.0.1/32 tcp any port");

    // Another loopback address is another peer: not admitted.
    let other = connect_nonblocking("127.0.0.2", SocketAddr::from(([127, 0, 0, 1], port)));
    let refused = events.wait_event("the refused peer", |e| {
        e["hook"] == "skb_ingress" && e["verdict"] == "deny"
    });
    assert_eq!(refused["src_addr"], "127.0.0.2", "{refused}");
    assert_eq!(cage.op("accept-send leaked"), "err 11");
    assert!(!connected(&other));
    cage.finish();
    daemon.stop();
}

/// A datagram for a caged UDP socket passes if its source is one the agent may send to (a
/// reply) or one ingress admits; any other never reaches the agent.
#[test]
fn datagrams_reach_a_caged_socket_only_from_admitted_sources_and_replies() {
    let replier = UdpSocket::bind("127.0.0.3:0").unwrap();
    let reply_port = replier.local_addr().unwrap().port();
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  server:\n    egress:\n      allow:\n        - cidr: 127.0.0.3/32\n          ports: [{reply_port}]\n          protocols: [udp]\n    ingress:\n      allow:\n        - cidr: 127.0.0.2/32\n          protocols: [udp]\n"
    ));
    let events = daemon.follow_events();
    let mut cage = daemon.serve_in("server");
    let port = port_of(&cage.op("bind-udp 127.0.0.1:0"));
    let to = SocketAddr::from(([127, 0, 0, 1], port));

    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"intrude", to).unwrap();
    let refused = events.wait_event("the refused datagram", |e| {
        e["hook"] == "skb_ingress" && e["dst_port"] == port
    });
    assert_eq!(refused["verdict"], "deny", "{refused}");
    assert_eq!(refused["protocol"], "udp");
    assert_eq!(refused["src_addr"], "127.0.0.1");
    // Loopback delivery completes inside sendto: had it passed, it would be queued now.
    assert_eq!(cage.op("recv-udp"), "err 11", "the datagram never arrived");

    let admitted = UdpSocket::bind("127.0.0.2:0").unwrap();
    admitted.send_to(b"welcome", to).unwrap();
    assert_eq!(cage.op("recv-udp"), "ok welcome");
    replier.send_to(b"reply", to).unwrap();
    assert_eq!(
        cage.op("recv-udp"),
        "ok reply",
        "a reply from an egress destination"
    );
    // The same source address from another port is no reply.
    let not_reply = UdpSocket::bind("127.0.0.3:0").unwrap();
    not_reply.send_to(b"spoof", to).unwrap();
    events.wait_event("the second refusal", |e| {
        e["hook"] == "skb_ingress" && e["src_addr"] == "127.0.0.3"
    });
    assert_eq!(cage.op("recv-udp"), "err 11");
    cage.finish();
    daemon.stop();
}
