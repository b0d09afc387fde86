//! A cage's resolver endpoint: one UDP socket and one TCP listener on the same port, on
//! 127.0.0.1 and on ::1, and the tasks that answer them. What to answer is the daemon's
//! decision ([`Resolve`]); this module only moves bytes.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::Arc,
    time::Duration,
};

use hickory_proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    task::JoinSet,
};

use super::{
    upstream,
    wire::{self, Chain, Question},
};

/// How a query came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A TCP connection.
    Tcp,
}

/// What the daemon decides for a cage's queries. `cage` is the cage's cgroup id.
pub trait Resolve: Send + Sync + 'static {
    /// Whether to ask upstream (the servers and how long to wait for each), or refuse
    /// (None; the handler has reported the refusal).
    fn admit(&self, cage: u64, q: &Question, t: Transport) -> Option<(Vec<SocketAddr>, Duration)>;
    /// Grants the chain's addresses to the cage in the kernel; returns the longest TTL the
    /// answer may carry, or None to refuse after all (the rule went away meanwhile).
    fn grant(&self, cage: u64, q: &Question, t: Transport, chain: &Chain) -> Option<u32>;
    /// The upstream failed; the cage gets SERVFAIL.
    fn failed(&self, cage: u64, q: &Question, t: Transport, error: &str);
}

/// A cage's endpoint, bound.
pub struct Endpoint {
    udp4: UdpSocket,
    tcp4: TcpListener,
    v6: Option<(UdpSocket, TcpListener)>,
    /// The port on 127.0.0.1.
    pub port4: u16,
    /// The port on ::1, or 0 when IPv6 loopback is unavailable.
    pub port6: u16,
}

impl Endpoint {
    /// Binds UDP and TCP on one free port of 127.0.0.1, and of ::1 where it exists.
    pub fn bind() -> io::Result<Self> {
        let (udp4, tcp4, port4) = bind_pair(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let v6 = bind_pair(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).ok();
        let port6 = v6.as_ref().map_or(0, |(_, _, p)| *p);
        Ok(Self {
            udp4,
            tcp4,
            v6: v6.map(|(u, t, _)| (u, t)),
            port4,
            port6,
        })
    }
}

/// A UDP socket and a TCP listener on the same free port of `addr`'s address.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener, u16)> {
    let mut last = None;
    // The UDP port may be taken over TCP; a few tries find one free for both.
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr)?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                return Ok((udp, tcp, port));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

/// Serves `endpoint` for cage `cage` until the returned set is dropped or aborted.
pub fn serve_endpoint<R: Resolve + ?Sized>(
    endpoint: Endpoint,
    cage: u64,
    resolve: Arc<R>,
) -> io::Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    let mut pairs = vec![(endpoint.udp4, endpoint.tcp4)];
    pairs.extend(endpoint.v6);
    for (udp, tcp) in pairs {
        let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        tasks.spawn(serve_udp(udp, cage, Arc::clone(&resolve)));
        tasks.spawn(serve_tcp(tcp, cage, Arc::clone(&resolve)));
    }
    Ok(tasks)
}

async fn serve_udp<R: Resolve + ?Sized>(
    socket: Arc<tokio::net::UdpSocket>,
    cage: u64,
    resolve: Arc<R>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let bytes = buf[..n].to_vec();
        let (socket, resolve) = (Arc::clone(&socket), Arc::clone(&resolve));
        // Each query on its own task: a slow upstream never holds up the next one.
        tokio::spawn(async move {
            if let Some(answer) = handle(&*resolve, cage, &bytes, Transport::Udp).await {
                let _ = socket.send_to(&answer, from).await;
            }
        });
    }
}

async fn serve_tcp<R: Resolve + ?Sized>(
    listener: tokio::net::TcpListener,
    cage: u64,
    resolve: Arc<R>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let resolve = Arc::clone(&resolve);
        tokio::spawn(async move {
            // Queries in a row on one connection, until it closes or idles for 10 s.
            loop {
                let read = async {
                    let len = stream.read_u16().await?;
                    let mut q = vec![0u8; usize::from(len)];
                    stream.read_exact(&mut q).await?;
                    io::Result::Ok(q)
                };
                let Ok(Ok(q)) = tokio::time::timeout(Duration::from_secs(10), read).await else {
                    return;
                };
                let Some(answer) = handle(&*resolve, cage, &q, Transport::Tcp).await else {
                    return;
                };
                let Ok(len) = u16::try_from(answer.len()) else {
                    return;
                };
                if stream.write_all(&len.to_be_bytes()).await.is_err()
                    || stream.write_all(&answer).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// The answer to one query.
async fn handle<R: Resolve + ?Sized>(
    resolve: &R,
    cage: u64,
    bytes: &[u8],
    t: Transport,
) -> Option<Vec<u8>> {
    let q = match wire::parse_query(bytes) {
        Ok(q) => q,
        Err(_) => return wire::formerr(bytes),
    };
    let refused = || Some(wire::error_answer(&q.message, ResponseCode::Refused));
    let Some((servers, wait)) = resolve.admit(cage, &q, t) else {
        return refused();
    };
    let answer = match upstream::resolve(&servers, &q.name, q.qtype, wait).await {
        Ok(a) => a,
        Err(e) => {
            resolve.failed(cage, &q, t, &e);
            return Some(wire::error_answer(&q.message, ResponseCode::ServFail));
        }
    };
    let chain = wire::chain(&q.name, q.qtype, &answer);
    // The grants are in the kernel before the cage sees an address.
    let Some(max_ttl) = resolve.grant(cage, &q, t, &chain) else {
        return refused();
    };
    let bytes = wire::answer(&q.message, &chain, max_ttl);
    Some(match t {
        Transport::Udp => wire::fit_udp(&q.message, bytes),
        Transport::Tcp => bytes,
    })
}
