//! The application socket: application events and credential requests, each from a process
//! inside the cage it speaks for (checked on every message, by the sender's pid as the
//! kernel reported it at connect time).

use std::sync::Arc;

use tokio::{io::BufReader, net::UnixStream};
use tracing::warn;

use super::{next_line, send, Line, Shared, MAX_REQUEST};
use crate::{
    control::app::{sender_agent, start_time, AppMessage, AppReply},
    control::credential::{CredentialMessage, CredentialReply},
    control::Peer,
};

/// Serves one connection on the application socket until the client goes away.
pub async fn serve_app(shared: Arc<Shared>, stream: UnixStream) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "could not read peer credentials: application connection dropped");
            return;
        }
    };
    // Which process connected, for good: a pid alone could be reused by another cage's.
    let started = start_time(peer.pid);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // The sender's cage, from the start: a connection from outside every cage is refused at
    // once, and each cage holds only its own share of connections.
    let cage = {
        let state = shared.state();
        sender_agent(
            state.root(),
            |cgroup| state.container_agent(cgroup),
            &peer,
            started,
            None,
        )
    };
    let _slot = match cage.map(|agent| (shared.app_share.take(&agent), agent)) {
        Ok((Some(slot), _)) => slot,
        Ok((None, agent)) => {
            // One answer per line, as ever: the refusal answers the first one.
            let _ = next_line(&mut reader).await;
            let message = format!(
                "refused: agent:{agent} already holds {} application connections, its share",
                super::share::PER_CAGE
            );
            let _ = send(&mut write, &AppReply::Error { message }).await;
            return;
        }
        Err(message) => {
            let _ = next_line(&mut reader).await;
            let _ = send(&mut write, &AppReply::Error { message }).await;
            return;
        }
    };
    loop {
        let line = match next_line(&mut reader).await {
            Line::Read(line) => line,
            Line::Closed | Line::Failed(_) => break,
            Line::TooLong => {
                let message = format!("message longer than {MAX_REQUEST} bytes: connection closed");
                let _ = send(&mut write, &AppReply::Error { message }).await;
                break;
            }
        };
        if let Some(message) = CredentialMessage::parse(&line) {
            let reply = credential(&shared, &peer, started, message);
            if send(&mut write, &reply).await.is_err() {
                break;
            }
            continue;
        }
        let reply = match serde_json::from_str::<AppMessage>(&line) {
            // The stream is not this protocol: answer once and close.
            Err(e) => {
                let message = format!("malformed application event: {e}: connection closed");
                let _ = send(&mut write, &AppReply::Error { message }).await;
                break;
            }
            Ok(msg) => {
                let mut state = shared.state();
                let agent = sender_agent(
                    state.root(),
                    |cgroup| state.container_agent(cgroup),
                    &peer,
                    started,
                    msg.agent.as_deref(),
                );
                match agent {
                    Err(message) => {
                        warn!(pid = peer.pid, uid = peer.uid, "{message}");
                        AppReply::Error { message }
                    }
                    Ok(agent) => state.on_app_event(&agent, peer.pid, msg.event),
                }
            }
        };
        if send(&mut write, &reply).await.is_err() {
            break;
        }
    }
}

/// Answers a credential request: who asks is the sender's cage, as for events.
fn credential(
    shared: &Shared,
    peer: &Peer,
    started: Option<u64>,
    message: Result<CredentialMessage, String>,
) -> CredentialReply {
    let message = match message {
        Ok(m) => m,
        Err(message) => return CredentialReply::Error { message },
    };
    let mut state = shared.state();
    let agent = sender_agent(
        state.root(),
        |cgroup| state.container_agent(cgroup),
        peer,
        started,
        message.agent.as_deref(),
    );
    match agent {
        Err(message) => {
            warn!(pid = peer.pid, uid = peer.uid, "{message}");
            CredentialReply::Error { message }
        }
        Ok(agent) => state.on_credential_request(&agent, peer.pid, &message.credential),
    }
}
