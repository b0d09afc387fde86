//! A cage's resolver endpoint: one UDP socket and one TCP listener on the same port, on
//! 127.0.0.1 and on ::1, and the tasks that answer them. What to answer is the daemon's
//! decision ([`Resolve`]); this module only moves bytes.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::{
    future::BoxFuture,
    stream::{FuturesUnordered, StreamExt as _},
};
use hickory_proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    task::JoinSet,
};

use super::{
    cache::AnswerCache,
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
    /// Reports the grants made so far; called once their answers have gone out over UDP
    /// (or before a TCP answer is written), so that reporting does not delay the answer.
    fn settle(&self);
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

/// What the endpoint's tasks share: the cage, the daemon's decisions and the cage's answers.
struct Ctx<R: ?Sized> {
    cage: u64,
    cache: Mutex<AnswerCache>,
    resolve: Arc<R>,
    /// Whether a grant of this endpoint waits to be reported ([`Resolve::settle`]): answers
    /// that grant nothing (refusals, failures) need not take the daemon's lock again.
    granted: AtomicBool,
}

/// Serves `endpoint` for cage `cage` until the returned set is dropped or aborted, keeping
/// answers in `cache`.
pub fn serve_endpoint<R: Resolve + ?Sized>(
    endpoint: Endpoint,
    cage: u64,
    resolve: Arc<R>,
    cache: AnswerCache,
) -> io::Result<JoinSet<()>> {
    let ctx = Arc::new(Ctx {
        cage,
        cache: Mutex::new(cache),
        resolve,
        granted: AtomicBool::new(false),
    });
    let mut tasks = JoinSet::new();
    let mut pairs = vec![(endpoint.udp4, endpoint.tcp4)];
    pairs.extend(endpoint.v6);
    for (udp, tcp) in pairs {
        let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        tasks.spawn(serve_udp(udp, Arc::clone(&ctx)));
        tasks.spawn(serve_tcp(tcp, Arc::clone(&ctx)));
    }
    Ok(tasks)
}

/// Upstream questions one UDP socket has in flight at most; past it a query gets SERVFAIL
/// (the stub asks again later).
const UDP_IN_FLIGHT: usize = 256;

async fn serve_udp<R: Resolve + ?Sized>(socket: Arc<tokio::net::UdpSocket>, ctx: Arc<Ctx<R>>) {
    let mut buf = vec![0u8; 4096];
    // The upstream questions in flight, driven by this task rather than a task each: a slow
    // upstream never holds up the next query, their number is bounded, and an answer needs
    // no other task to be scheduled.
    let mut asking: FuturesUnordered<BoxFuture<'static, (Reply, SocketAddr)>> =
        FuturesUnordered::new();
    loop {
        let (n, from) = tokio::select! {
            // Questions first: one just pushed goes upstream before the socket is read again
            // (a read that mostly finds nothing, on the agent's wait). Each turn takes one
            // answer, and at most UDP_IN_FLIGHT are in flight, so reads are not starved.
            biased;
            Some((reply, to)) = asking.next(), if !asking.is_empty() => {
                // A full send buffer drops it; the stub asks again.
                let _ = socket.try_send_to(&reply.bytes, to);
                after(&ctx, reply.keep);
                continue;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        let answer = match start(&ctx, &buf[..n], Transport::Udp) {
            // Answered without waiting: a refusal, or from the cache.
            Some(Ok(answer)) => answer,
            Some(Err(ask)) if asking.len() < UDP_IN_FLIGHT => {
                let ctx = Arc::clone(&ctx);
                asking.push(Box::pin(async move {
                    (finish(&ctx, ask, Transport::Udp).await, from)
                }));
                continue;
            }
            Some(Err(ask)) => {
                ctx.resolve.failed(
                    ctx.cage,
                    &ask.q,
                    Transport::Udp,
                    "too many queries in flight",
                );
                wire::error_answer(&ask.q.message, ResponseCode::ServFail)
            }
            None => continue,
        };
        let _ = socket.try_send_to(&answer, from);
        after(&ctx, None);
    }
}

async fn serve_tcp<R: Resolve + ?Sized>(listener: tokio::net::TcpListener, ctx: Arc<Ctx<R>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ctx = Arc::clone(&ctx);
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
                let reply = match start(&ctx, &q, Transport::Tcp) {
                    Some(Ok(bytes)) => Reply { bytes, keep: None },
                    Some(Err(ask)) => finish(&ctx, ask, Transport::Tcp).await,
                    None => return,
                };
                // Before the write, which waits on the agent reading: a grant's report must
                // not wait on it.
                after(&ctx, reply.keep);
                let Ok(len) = u16::try_from(reply.bytes.len()) else {
                    return;
                };
                if stream.write_all(&len.to_be_bytes()).await.is_err()
                    || stream.write_all(&reply.bytes).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// A query that needs upstream: where to ask and how long to wait for each server.
struct Ask {
    q: Question,
    servers: Vec<SocketAddr>,
    wait: Duration,
}

/// What needs no waiting: Ok(the answer) for a refusal or an answer from the cage's cache
/// (its grants in the kernel first), Err(what to ask upstream) otherwise; None for bytes
/// too short to answer at all.
fn start<R: Resolve + ?Sized>(
    ctx: &Ctx<R>,
    bytes: &[u8],
    t: Transport,
) -> Option<Result<Vec<u8>, Ask>> {
    let q = match wire::parse_query(bytes) {
        Ok(q) => q,
        Err(_) => return wire::formerr(bytes).map(Ok),
    };
    let Some((servers, wait)) = ctx.resolve.admit(ctx.cage, &q, t) else {
        return Some(Ok(refused(&q)));
    };
    let cached = lock(&ctx.cache).get(&q.normalized, q.qtype, crate::clock::boot_ns());
    Some(match cached {
        Some(chain) => Ok(grant_and_answer(ctx, &q, t, &chain).unwrap_or_else(|| refused(&q))),
        None => Err(Ask { q, servers, wait }),
    })
}

/// An answer for the agent, and what upstream said, for the cage's cache once it has gone.
struct Reply {
    bytes: Vec<u8>,
    keep: Option<(Question, Chain, u64)>,
}

/// Asks upstream and grants; returns the answer.
async fn finish<R: Resolve + ?Sized>(ctx: &Ctx<R>, ask: Ask, t: Transport) -> Reply {
    let Ask { q, servers, wait } = ask;
    let answer = match upstream::resolve(&servers, &q.name, q.qtype, wait).await {
        Ok(a) => a,
        Err(e) => {
            ctx.resolve.failed(ctx.cage, &q, t, &e);
            let bytes = wire::error_answer(&q.message, ResponseCode::ServFail);
            return Reply { bytes, keep: None };
        }
    };
    let now = crate::clock::boot_ns();
    let chain = wire::chain(&q.name, q.qtype, &answer);
    match grant_and_answer(ctx, &q, t, &chain) {
        Some(bytes) => Reply {
            bytes,
            keep: Some((q, chain, now)),
        },
        None => Reply {
            bytes: refused(&q),
            keep: None,
        },
    }
}

/// What follows an answer, after it has gone out (UDP) so as not to delay it: upstream's
/// answer kept in the cage's cache, the grants reported, the upstream sockets tidied.
fn after<R: Resolve + ?Sized>(ctx: &Ctx<R>, keep: Option<(Question, Chain, u64)>) {
    if let Some((q, chain, now)) = keep {
        lock(&ctx.cache).put(&q.normalized, q.qtype, &chain, now);
    }
    if ctx.granted.swap(false, Ordering::Relaxed) {
        ctx.resolve.settle();
    }
    super::sockets::tidy();
}

/// The answer carrying `chain`, once its addresses are granted to the cage in the kernel;
/// None when no rule admits the name any more (it changed while upstream was asked).
fn grant_and_answer<R: Resolve + ?Sized>(
    ctx: &Ctx<R>,
    q: &Question,
    t: Transport,
    chain: &Chain,
) -> Option<Vec<u8>> {
    let max_ttl = ctx.resolve.grant(ctx.cage, q, t, chain)?;
    ctx.granted.store(true, Ordering::Relaxed);
    let bytes = wire::answer(&q.message, chain, max_ttl);
    Some(match t {
        Transport::Udp => wire::fit_udp(&q.message, bytes),
        Transport::Tcp => bytes,
    })
}

fn refused(q: &Question) -> Vec<u8> {
    wire::error_answer(&q.message, ResponseCode::Refused)
}

fn lock(cache: &Mutex<AnswerCache>) -> std::sync::MutexGuard<'_, AnswerCache> {
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
