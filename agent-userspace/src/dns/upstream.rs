//! Asking the upstream resolvers: UDP first, TCP when the answer is truncated, each server in
//! turn until one answers in time. Only queries the cage's policy allows get here.

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType},
    rr::{Name, RecordType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::wire::upstream_query;

/// Asks `servers` for `name`/`qtype`; the first answer that matches the question wins.
pub async fn resolve(
    servers: &[SocketAddr],
    name: &Name,
    qtype: RecordType,
    wait: Duration,
) -> Result<Message, String> {
    let mut last = "no upstream resolver is configured (dns.upstream, /etc/resolv.conf)".to_owned();
    for &server in servers {
        let query = upstream_query(name, qtype);
        match timeout(wait, ask(server, &query)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Err(_) => last = format!("{server}: no answer within {wait:?}"),
        }
    }
    Err(last)
}

async fn ask(server: SocketAddr, query: &Message) -> std::io::Result<Message> {
    let bytes = query.to_vec().map_err(std::io::Error::other)?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // Sent before the socket is registered with the runtime: a new registration is not yet
    // known writable, so an async send would first wait a turn of the event loop for it.
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(server)?;
    socket.set_nonblocking(true)?;
    socket.send(&bytes)?;
    let mut buf = vec![0u8; 4096];
    let polled = if server.ip().is_loopback() {
        poll_for_answer(&socket, query, &mut buf)?
    } else {
        None
    };
    let answer = match polled {
        Some(answer) => answer,
        None => {
            let socket = UdpSocket::from_std(socket)?;
            loop {
                let n = socket.recv(&mut buf).await?;
                // Anything that is not the answer to this query (a late or forged datagram)
                // is ignored.
                if let Some(answer) = answer_in(query, &buf[..n]) {
                    break answer;
                }
            }
        }
    };
    if answer.metadata.truncation {
        return ask_tcp(server, query).await;
    }
    Ok(answer)
}

/// The answer to `query` in a datagram, if it is one.
fn answer_in(query: &Message, datagram: &[u8]) -> Option<Message> {
    Message::from_vec(datagram)
        .ok()
        .filter(|a| answers(query, a))
}

/// The longest a query polls for its answer.
const POLL_MAX: Duration = Duration::from_micros(300);
/// The CPU time all cages' queries may spend polling in vain, per second.
const POLL_BUDGET: Duration = Duration::from_millis(50);

/// What polling has spent in the current second.
static POLL_SPENT: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);

/// Polls a resolver on this host for the answer for up to [`POLL_MAX`], while the budget
/// lasts; None when it has not answered by then. Sleeping on the socket instead costs a
/// wakeup of this thread when the answer comes, about 75 us from idle on a VM: most of
/// what a new name added to a query. The budget bounds what an agent that floods new names
/// to a slow resolver can burn this way to 5% of a CPU.
fn poll_for_answer(
    socket: &std::net::UdpSocket,
    query: &Message,
    buf: &mut [u8],
) -> std::io::Result<Option<Message>> {
    let start = Instant::now();
    let allowance = {
        let mut spent = POLL_SPENT.lock().unwrap_or_else(|p| p.into_inner());
        let (since, used) = spent.get_or_insert((start, Duration::ZERO));
        if start.duration_since(*since) >= Duration::from_secs(1) {
            (*since, *used) = (start, Duration::ZERO);
        }
        POLL_BUDGET.saturating_sub(*used).min(POLL_MAX)
    };
    let mut found = None;
    while found.is_none() && start.elapsed() < allowance {
        match socket.recv(buf) {
            Ok(n) => found = answer_in(query, &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    // Only polls that found nothing are charged: one that found the answer took what the
    // resolver took, and saved the wakeup.
    if found.is_none() {
        let mut spent = POLL_SPENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, used)) = spent.as_mut() {
            *used += start.elapsed();
        }
    }
    Ok(found)
}

async fn ask_tcp(server: SocketAddr, query: &Message) -> std::io::Result<Message> {
    let bytes = query.to_vec().map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    let n = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await?;
    let answer = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if !answers(query, &answer) {
        return Err(std::io::Error::other(
            "the answer does not match the question",
        ));
    }
    Ok(answer)
}

/// Whether `answer` answers `query`: a response with its id and its question.
fn answers(query: &Message, answer: &Message) -> bool {
    answer.metadata.message_type == MessageType::Response
        && answer.metadata.id == query.metadata.id
        && answer.queries.len() == 1
        && query.queries.first().is_some_and(|q| {
            let a = &answer.queries[0];
            a.query_type == q.query_type && a.name.eq_ignore_root(&q.name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_a_silent_resolver_stops_at_the_budget() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(silent.local_addr().unwrap()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let query = upstream_query(&Name::from_ascii("a.test.").unwrap(), RecordType::A);
        let mut buf = [0u8; 512];
        let started = Instant::now();
        let mut polled = Duration::ZERO;
        for _ in 0..1_000 {
            let t = Instant::now();
            assert!(poll_for_answer(&socket, &query, &mut buf)
                .unwrap()
                .is_none());
            polled += t.elapsed();
        }
        // Unbounded, 1,000 queries would poll 300 ms; the budget allows 50 ms a second, and
        // each call its few microseconds of bookkeeping. The calls span this many of the
        // budget's seconds at most (another test may have started the first one).
        let seconds = started.elapsed().as_secs() + 2;
        let allowed = POLL_BUDGET * u32::try_from(seconds).unwrap()
            + POLL_MAX
            + Duration::from_micros(20) * 1_000;
        assert!(polled <= allowed, "{polled:?} polled, {allowed:?} allowed");
    }
}
