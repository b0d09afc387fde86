//! The sockets upstream questions are sent on: one each, on a port of the kernel's choosing,
//! as before, but bound ahead and closed behind. Making one (socket, bind) and closing it
//! were about a tenth of the daemon's CPU for a new name, spent while the agent waited: now a
//! spare of each family in use is bound after an answer has gone out ([`tidy`]), and a used
//! socket is closed then too.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, UdpSocket},
    sync::{Mutex, MutexGuard, PoisonError},
};

/// The spares and the used sockets.
struct Sockets {
    /// The spare of each family (IPv4, IPv6) and whether that family is used at all.
    spares: Mutex<[(Option<UdpSocket>, bool); 2]>,
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

fn bind(v4: bool) -> io::Result<UdpSocket> {
    let local: SocketAddr = if v4 {
        ([0, 0, 0, 0], 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A socket of its own for one question to `server`, connected and non-blocking. A spare
/// may have had datagrams sent to its port while it waited: they are dropped here, before
/// the question goes, as a fresh socket would never have seen them.
pub(super) fn connected(server: SocketAddr) -> io::Result<UdpSocket> {
    SOCKETS.connected(server)
}

/// Hands a socket whose question is answered to the next [`tidy`] to close.
pub(super) fn done(socket: UdpSocket) {
    SOCKETS.done(socket);
}

/// Closes the used sockets and binds a spare for each family in use; called once an answer
/// has gone out.
pub fn tidy() {
    SOCKETS.tidy();
}

impl Sockets {
    const fn new() -> Self {
        Self {
            spares: Mutex::new([(None, false), (None, false)]),
            done: Mutex::new(Vec::new()),
        }
    }

    fn connected(&self, server: SocketAddr) -> io::Result<UdpSocket> {
        let family = usize::from(!server.is_ipv4());
        let spare = {
            let mut spares = lock(&self.spares);
            spares[family].1 = true;
            spares[family].0.take()
        };
        let socket = match spare {
            Some(s) => s,
            None => bind(server.is_ipv4())?,
        };
        socket.connect(server)?;
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
        let fresh = bind(server.is_ipv4())?;
        fresh.connect(server)?;
        Ok(fresh)
    }

    fn done(&self, socket: UdpSocket) {
        let mut done = lock(&self.done);
        if done.len() < DONE_MAX {
            done.push(socket);
        }
    }

    fn tidy(&self) {
        drop(std::mem::take(&mut *lock(&self.done)));
        let wanted: Vec<usize> = lock(&self.spares)
            .iter()
            .enumerate()
            .filter(|(_, (spare, used))| *used && spare.is_none())
            .map(|(i, _)| i)
            .collect();
        for family in wanted {
            // Bound outside the lock; a spare that failed to bind is made when needed.
            if let Ok(socket) = bind(family == 0) {
                let mut spares = lock(&self.spares);
                if spares[family].0.is_none() {
                    spares[family].0 = Some(socket);
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
        spares[0].0.as_ref().unwrap().local_addr().unwrap()
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
        assert!(lock(&sockets.spares)[1].0.is_none());
        sockets.tidy();
        let spare = spare_of(&sockets);
        assert!(
            lock(&sockets.spares)[1].0.is_none(),
            "no spare for a family not in use"
        );
        assert_ne!(spare.port(), first.local_addr().unwrap().port());
        // A datagram to the spare's port from anywhere, before it is used: a forged answer
        // sent ahead must not be read as the answer.
        let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
        forger
            .send_to(b"forged", ("127.0.0.1", spare.port()))
            .unwrap();
        let second = sockets.connected(server.local_addr().unwrap()).unwrap();
        assert_eq!(second.local_addr().unwrap().port(), spare.port());
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
        let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..DRAIN_MAX + 1 {
            forger.send_to(b"x", ("127.0.0.1", spare.port())).unwrap();
        }
        let socket = sockets.connected(server.local_addr().unwrap()).unwrap();
        assert_ne!(socket.local_addr().unwrap().port(), spare.port());
        assert!(nothing_waiting(&socket));
    }
}
