//! The control socket server: one task per connection, peer checked before anything is read.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, Mutex},
};

use nix::unistd::{chown, Gid};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};
use tracing::{debug, info, warn};

use super::{state::State, DaemonError};
use crate::{
    control::{AccessPolicy, Peer, Request, Response},
    events::EventBus,
};

/// The longest request line served.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a connection may sit without sending its next request.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Shared by every connection.
pub struct Shared {
    /// The daemon's state.
    pub state: Mutex<State>,
    /// Events for followers.
    pub bus: EventBus,
    /// Who may connect.
    pub access: AccessPolicy,
}

impl Shared {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds the socket: refuses to steal a live daemon's socket, replaces a stale one, and sets
/// mode 0660 with the configured group.
pub fn bind(path: &Path, access: &AccessPolicy) -> Result<UnixListener, DaemonError> {
    let io_err = |op: &'static str| {
        move |source: io::Error| DaemonError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("creating the directory of"))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(io_err("removing stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("binding"))?;
    chown(path, None, Some(access.gid().unwrap_or(Gid::from_raw(0))))
        .map_err(|e| io_err("setting the group of")(e.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(io_err("setting the mode of"))?;
    Ok(listener)
}

/// Serves one connection until the client goes away.
pub async fn serve(shared: Arc<Shared>, stream: UnixStream) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "could not read peer credentials: connection dropped");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    if let Err(message) = shared.access.check(&peer) {
        warn!(uid = peer.uid, pid = peer.pid, "control connection refused");
        let _ = send(&mut write, &Response::Error { message }).await;
        return;
    }
    // Caged peers are turned away at once, so they cannot even hold connections open.
    if let Some(message) = caged_peer(&shared, &peer) {
        let _ = send(&mut write, &Response::Error { message }).await;
        return;
    }
    let mut held: Vec<String> = Vec::new();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        let mut limited = (&mut reader).take(MAX_REQUEST + 1);
        match tokio::time::timeout(IDLE, limited.read_line(&mut line)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let message = format!("unreadable request: {e}");
                let _ = send(&mut write, &Response::Error { message }).await;
                break;
            }
            Err(_) => {
                debug!(pid = peer.pid, "idle control connection closed");
                break;
            }
        }
        if line.len() as u64 > MAX_REQUEST {
            let message = format!("request longer than {MAX_REQUEST} bytes: connection closed");
            let _ = send(&mut write, &Response::Error { message }).await;
            break;
        }
        // An agent must not steer its own containment (join a laxer cage, reload policy...):
        // nothing from inside a cage is served. Checked on every request, since a process
        // may have been caged after it connected.
        if let Some(message) = caged_peer(&shared, &peer) {
            let _ = send(&mut write, &Response::Error { message }).await;
            break;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("malformed request: {e}");
                if send(&mut write, &Response::Error { message })
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let keep_going = match request {
            Request::Events { follow } => stream_events(&shared, &mut write, follow).await,
            other => {
                let response = handle(&shared, &peer, other, &mut held);
                send(&mut write, &response).await.is_ok()
            }
        };
        if !keep_going {
            break;
        }
    }
    if !held.is_empty() {
        let mut state = shared.state();
        for agent in held {
            state.release(&agent);
        }
    }
}

/// Why a peer inside a cage (or one whose cgroup cannot be read) is refused, if it is.
fn caged_peer(shared: &Shared, peer: &Peer) -> Option<String> {
    let message = match shared.state().root().holds_pid(peer.pid) {
        Ok(false) => return None,
        Ok(true) => format!(
            "refused: process {} is inside an agentcage cage, and caged processes may not use \
             the control socket",
            peer.pid
        ),
        Err(e) => format!(
            "refused: cannot tell whether process {} is in a cage ({e})",
            peer.pid
        ),
    };
    warn!(uid = peer.uid, pid = peer.pid, "{message}");
    Some(message)
}

fn handle(shared: &Shared, peer: &Peer, request: Request, held: &mut Vec<String>) -> Response {
    let mut state = shared.state();
    let result = match request {
        Request::Ping {} => Ok(Response::Pong {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            policy_hash: state.policy().hash().to_owned(),
        }),
        Request::Prepare { agent } => state.hold(&agent).map(|h| {
            held.push(agent.clone());
            info!(
                agent,
                pid = peer.pid,
                uid = peer.uid,
                policy_hash = h.policy_hash,
                "agent run starting"
            );
            Response::Prepared {
                identity: crate::identity::AgentIdentity::for_agent(&agent).to_string(),
                agent,
                cgroup: h.cgroup,
                policy_hash: h.policy_hash,
                raw_sockets: h.raw_sockets,
                policy_source: h.policy_source,
            }
        }),
        Request::Join { agent } => state
            .move_into(&agent, peer.pid, peer.uid, false)
            .map(|cgroup| Response::Joined { agent, cgroup }),
        Request::Processes { agent } => state
            .processes(&agent)
            .map(|processes| Response::Processes { agent, processes }),
        Request::Adopt { agent, pid } => state
            .move_into(&agent, pid, peer.uid, true)
            .map(|cgroup| Response::Adopted { agent, pid, cgroup }),
        Request::Status {} => Ok(Response::Status(state.status())),
        Request::Reload {} => state.reload().map(|p| Response::Reloaded {
            source: p.source().to_owned(),
            policy_hash: p.hash().to_owned(),
        }),
        Request::Events { .. } => unreachable_events(),
    };
    result.unwrap_or_else(|e| {
        warn!(error = %e, uid = peer.uid, pid = peer.pid, "request refused");
        Response::Error {
            message: e.to_string(),
        }
    })
}

fn unreachable_events() -> Result<Response, super::state::StateError> {
    Ok(Response::Error {
        message: "events are streamed, not answered".into(),
    })
}

/// Sends the recent events, or (follow) every new one until the client leaves. Returns
/// whether the connection is still usable.
async fn stream_events(shared: &Shared, write: &mut OwnedWriteHalf, follow: bool) -> bool {
    if !follow {
        for event in shared.bus.recent() {
            let r = Response::Event {
                event: (*event).clone(),
            };
            if send(write, &r).await.is_err() {
                return false;
            }
        }
        return false;
    }
    let mut rx = shared.bus.subscribe();
    if send(write, &Response::Subscribed).await.is_err() {
        return false;
    }
    loop {
        let response = match rx.recv().await {
            Ok(event) => Response::Event {
                event: (*event).clone(),
            },
            // A slow reader is told exactly how many it missed.
            Err(RecvError::Lagged(count)) => Response::Lost { count },
            Err(RecvError::Closed) => return false,
        };
        if send(write, &response).await.is_err() {
            return false;
        }
    }
}

async fn send(write: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}
