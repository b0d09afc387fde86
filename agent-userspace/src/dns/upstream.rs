//! Asking the upstream resolvers: UDP first, TCP when the answer is truncated, each server in
//! turn until one answers in time. Only queries the cage's policy allows get here.

use std::{net::SocketAddr, time::Duration};

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
    // Sent before the socket is registered with the runtime: a new registration is not yet
    // known writable, so an async send would first wait a turn of the event loop for it.
    let socket = super::sockets::connected(server)?;
    socket.send(&bytes)?;
    let mut buf = vec![0u8; 4096];
    let polled = if server.ip().is_loopback() {
        super::poll::answer(&socket, query, &mut buf)?
    } else {
        None
    };
    let answer = match polled {
        Some(answer) => {
            super::sockets::done(socket);
            answer
        }
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
pub(super) fn answer_in(query: &Message, datagram: &[u8]) -> Option<Message> {
    Message::from_vec(datagram)
        .ok()
        .filter(|a| answers(query, a))
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
