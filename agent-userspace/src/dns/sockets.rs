//! The sockets upstream questions are sent on: one each, on a port of the kernel's choosing,
//! as before, but bound ahead and closed behind. Making one (socket, bind, connect) and
//! closing it were about a tenth of the daemon's CPU for a new name, spent while the agent
//! waited: now a spare of each family in use is bound and connected to the server that
//! family last asked once an answer has gone out ([`tidy`]), and a used socket is closed
//! then too.
//!
//! connect() also fixes the socket's source address, and a later connect() keeps it: a spare
//! serves only the server it is connected to, and one for a server off this host only while
//! fresh ([`FRESH`]), since the host's addresses and routes may have changed since.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, UdpSocket},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// How long a spare connected to a server off this host may wait to be used.
const FRESH: Duration = Duration::from_secs(1);

/// A spare: the socket, the server it is connected to, and when.
struct Spare {
    socket: UdpSocket,
    peer: SocketAddr,
    made: Instant,
}

impl Spare {
    /// Whether it may carry a question to `server`.
    fn serves(&self, server: SocketAddr) -> bool {
        self.peer == server && (server.ip().is_loopback() || self.made.elapsed() < FRESH)
    }
}

/// One family's (IPv4, IPv6) spare.
struct Family {
    spare: Option<Spare>,
    /// The server this family asked last; None while the family is not in use.
    last: Option<SocketAddr>,
}

impl Family {
    const UNUSED: Self = Self {
        spare: None,
        last: None,
    };
}

/// The spares and the used sockets.
struct Sockets {
    spares: Mutex<[Family; 2]>,
    /// Used sockets, closed by the next [`tidy`].
    done: Mutex<Vec<UdpSocket>>,
}

/// The daemon's: shared by every cage's resolver.
static SOCKETS: Sockets = Sockets::new();

/// Used sockets kept for [`tidy`] at most; past it they close at once.
const DONE_MAX: usize = 64;
/// Datagrams a spare may have waiting, at most, before a fresh socket is bound instead.
const DRAIN_MAX: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new non-blocking socket on a port of the kernel's choosing, connected to `server`.
fn fresh(server: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_nonblocking(true)?;
    socket.connect(server)?;
    Ok(socket)
}

/// A socket of its own for one question to `server`, connected and non-blocking. A spare
/// may have had datagrams sent to its port while it waited (from anywhere before it was
/// connected, from the server's address since): they are dropped here, before the question
/// goes, as a fresh socket would never have seen them.
pub(super) fn connected(server: SocketAddr) -> io::Result<UdpSocket> {
    SOCKETS.connected(server)
}

/// Hands a socket whose question is answered to the next [`tidy`] to close.
pub(super) fn done(socket: UdpSocket) {
    SOCKETS.done(socket);
}

/// Closes the used sockets and makes a spare for each family in use; called once an answer
/// has gone out.
pub fn tidy() {
    SOCKETS.tidy();
}

impl Sockets {
    const fn new() -> Self {
        Self {
            spares: Mutex::new([Family::UNUSED, Family::UNUSED]),
            done: Mutex::new(Vec::new()),
        }
    }

    fn connected(&self, server: SocketAddr) -> io::Result<UdpSocket> {
        let family = usize::from(!server.is_ipv4());
        let spare = {
            let mut spares = lock(&self.spares);
            spares[family].last = Some(server);
            spares[family].spare.take()
        };
        let socket = match spare {
            Some(spare) if spare.serves(server) => spare.socket,
            // Connected elsewhere (its source address chosen for there), or stale: closed.
            _ => fresh(server)?,
        };
        let mut sink = [0u8; 1];
        for _ in 0..DRAIN_MAX {
            match socket.recv(&mut sink) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(socket),
                // A datagram, or an ICMP error to nothing of ours: dropped.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
        // Flooded while it waited: a fresh one instead.
        fresh(server)
    }

    fn done(&self, socket: UdpSocket) {
        let mut done = lock(&self.done);
        if done.len() < DONE_MAX {
            done.push(socket);
        }
    }

    fn tidy(&self) {
        drop(std::mem::take(&mut *lock(&self.done)));
        let wanted: Vec<(usize, SocketAddr)> = lock(&self.spares)
            .iter()
            .enumerate()
            .filter(|(_, f)| f.spare.is_none())
            .filter_map(|(i, f)| f.last.map(|server| (i, server)))
            .collect();
        for (family, server) in wanted {
            // Made outside the lock; one that failed is made when needed.
            if let Ok(socket) = fresh(server) {
                let mut spares = lock(&self.spares);
                if spares[family].spare.is_none() {
                    spares[family].spare = Some(Spare {
                        socket,
                        peer: server,
                        made: Instant::now(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The address of the IPv4 spare.
    fn spare_of(sockets: &Sockets) -> SocketAddr {
        let spares = lock(&sockets.spares);
        spares[0]
            .spare
            .as_ref()
            .unwrap()
            .socket
            .local_addr()
            .unwrap()
    }

    /// Whether `socket` has nothing waiting.
    fn nothing_waiting(socket: &UdpSocket) -> bool {
        let mut buf = [0u8; 16];
        socket
            .recv(&mut buf)
            .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn a_spare_is_used_once_and_what_reached_it_before_its_question_is_dropped() {
        let sockets = Sockets::new();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let first = sockets.connected(server.local_addr().unwrap()).unwrap();
        assert!(lock(&sockets.spares)[1].spare.is_none());
        sockets.tidy();
        let spare = spare_of(&sockets);
        assert!(
            lock(&sockets.spares)[1].spare.is_none(),
            "no spare for a family not in use"
        );
        assert_ne!(spare.port(), first.local_addr().unwrap().port());
        // Datagrams to the spare's port before it is used: from anywhere (the kernel drops
        // those, as the spare is connected) and from the server's own address (dropped
        // before the question goes). A forged answer sent ahead is never read as the answer.
        let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
        forger
            .send_to(b"forged", ("127.0.0.1", spare.port()))
            .unwrap();
        server
            .send_to(b"forged", ("127.0.0.1", spare.port()))
            .unwrap();
        let second = sockets.connected(server.local_addr().unwrap()).unwrap();
        assert_eq!(second.local_addr().unwrap().port(), spare.port());
        assert_eq!(second.peer_addr().unwrap(), server.local_addr().unwrap());
        assert!(nothing_waiting(&second));
        // The server sees the question from the spare's port, and answers reach it.
        second.send(b"q").unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(from.port(), spare.port());
        sockets.done(second);
        sockets.done(first);
        sockets.tidy();
        assert!(lock(&sockets.done).is_empty());
    }

    #[test]
    fn a_spare_flooded_while_it_waited_is_replaced_by_a_fresh_socket() {
        let sockets = Sockets::new();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        drop(sockets.connected(server.local_addr().unwrap()).unwrap());
        sockets.tidy();
        let spare = spare_of(&sockets);
        // Connected ahead to the server, the spare takes datagrams from its address only.
        for _ in 0..DRAIN_MAX + 1 {
            server.send_to(b"x", ("127.0.0.1", spare.port())).unwrap();
        }
        let socket = sockets.connected(server.local_addr().unwrap()).unwrap();
        assert_ne!(socket.local_addr().unwrap().port(), spare.port());
        assert!(nothing_waiting(&socket));
    }

    #[test]
    fn a_spare_connected_to_another_server_is_not_used_for_the_one_asked() {
        let sockets = Sockets::new();
        let (one, two) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        drop(sockets.connected(one.local_addr().unwrap()).unwrap());
        sockets.tidy();
        let spare = spare_of(&sockets);
        // What the first server sent the spare must not reach a question to the second.
        one.send_to(b"early", spare).unwrap();
        let socket = sockets.connected(two.local_addr().unwrap()).unwrap();
        assert_ne!(socket.local_addr().unwrap(), spare);
        assert_eq!(socket.peer_addr().unwrap(), two.local_addr().unwrap());
        assert!(nothing_waiting(&socket));
        assert!(lock(&sockets.spares)[0].spare.is_none());
    }

    #[test]
    fn a_spare_for_a_server_off_this_host_serves_only_while_fresh() {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        // `there` is any address that is not loopback; nothing is sent.
        let (here, there): (SocketAddr, SocketAddr) = (
            "127.0.0.53:53".parse().unwrap(),
            "0.0.0.0:53".parse().unwrap(),
        );
        let spare = |peer, age| Spare {
            socket: socket.try_clone().unwrap(),
            peer,
            made: Instant::now() - age,
        };
        assert!(spare(there, Duration::ZERO).serves(there));
        assert!(!spare(there, FRESH).serves(there));
        assert!(spare(here, FRESH * 2).serves(here));
        assert!(!spare(here, Duration::ZERO).serves(there));
    }
}
