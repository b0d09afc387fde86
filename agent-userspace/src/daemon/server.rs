//! The control socket server: one task per connection, peer checked before anything is read.

use std::{
    fs, io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::PermissionsExt as _,
    },
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
    /// The dashboard's address with its token, when it is served.
    pub dashboard: Option<String>,
    /// Where recordings the policy requires are made.
    pub recordings: crate::recording::RecordingStore,
}

impl Shared {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds a Unix socket at `path`: refuses to steal a live daemon's socket and replaces a
/// stale one. The caller sets its owner and mode.
fn bind_fresh(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(path, "creating the directory of"))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(io_err(path, "removing stale socket"))?;
    }
    UnixListener::bind(path).map_err(io_err(path, "binding"))
}

/// The error of file operation `op` on `path`.
fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the control socket with mode 0660 and the configured group.
pub fn bind(path: &Path, access: &AccessPolicy) -> Result<UnixListener, DaemonError> {
    let listener = bind_fresh(path)?;
    chown(path, None, Some(access.gid().unwrap_or(Gid::from_raw(0))))
        .map_err(|e| io_err(path, "setting the group of")(e.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(io_err(path, "setting the mode of"))?;
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
                let mut attach = None;
                let response = handle(&shared, &peer, other, &mut held, &mut attach);
                match attach {
                    Some(fd) => send_with_fd(&mut write, &response, fd).await.is_ok(),
                    None => send(&mut write, &response).await.is_ok(),
                }
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

/// Answers one request; a descriptor to send with the answer goes into `attach`.
fn handle(
    shared: &Shared,
    peer: &Peer,
    request: Request,
    held: &mut Vec<String>,
    attach: &mut Option<OwnedFd>,
) -> Response {
    let mut state = shared.state();
    let result = match request {
        Request::Ping {} => Ok(Response::Pong {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            policy_hash: state.policy().hash().to_owned(),
        }),
        Request::Prepare { agent } => state.hold(&agent).and_then(|h| {
            // Released when the connection closes, refused or not.
            held.push(agent.clone());
            let recording = if h.record {
                let (grant, fd) = shared.recordings.create(&agent, peer.pid)?;
                *attach = Some(fd);
                Some(grant)
            } else {
                None
            };
            info!(
                agent,
                pid = peer.pid,
                uid = peer.uid,
                policy_hash = h.policy_hash,
                recording = recording.as_ref().map(|r| r.path.as_str()),
                "agent run starting"
            );
            Ok(Response::Prepared {
                identity: crate::identity::AgentIdentity::for_agent(&agent).to_string(),
                agent,
                cgroup: h.cgroup,
                policy_hash: h.policy_hash,
                raw_sockets: h.raw_sockets,
                policy_source: h.policy_source,
                recording,
            })
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
        // The control socket's checks (root or the group, never a caged process) are the
        // dashboard's authorisation: its token is handed out only here.
        Request::Dashboard {} => Ok(match &shared.dashboard {
            Some(url) => Response::Dashboard { url: url.clone() },
            None => Response::Error {
                message: "the dashboard is not enabled: set dashboard.listen (a loopback address) \
                          in the daemon's configuration file"
                    .into(),
            },
        }),
        Request::PolicyShow {} => {
            let p = state.policy();
            Ok(Response::Policy {
                source: p.source().to_owned(),
                policy_hash: p.hash().to_owned(),
                canonical: p.canonical(),
            })
        }
        Request::PolicyApply { yaml, source } => state.apply_text(&yaml, &source).map(|p| {
            info!(
                uid = peer.uid,
                pid = peer.pid,
                policy_hash = p.hash(),
                "policy applied"
            );
            Response::Reloaded {
                source: p.source().to_owned(),
                policy_hash: p.hash().to_owned(),
            }
        }),
        Request::Contain { agent, rung } => crate::runtime::Rung::parse(&rung)
            .map_err(super::state::StateError::Usage)
            .and_then(|rung| state.contain(&agent, rung, &format!("manual ({})", who(peer))))
            .map(|c| Response::Contained {
                cages: vec![contained(&c)],
            }),
        Request::Resume { agent } => {
            state
                .resume(&agent, &who(peer))
                .map(|c| Response::Contained {
                    cages: vec![contained(&c)],
                })
        }
        Request::Kill { agent, all } => match (agent, all) {
            (None, true) => {
                let cages = state
                    .kill_all(&who(peer))
                    .into_iter()
                    .map(|(agent, r)| match r {
                        Ok(c) => contained(&c),
                        Err(e) => crate::control::ContainedCage {
                            agent,
                            rung: String::new(),
                            previous: String::new(),
                            snapshot: None,
                            error: Some(e.to_string()),
                        },
                    })
                    .collect();
                Ok(Response::Contained { cages })
            }
            (Some(agent), false) => state
                .contain(
                    &agent,
                    crate::runtime::Rung::Killed,
                    &format!("manual ({})", who(peer)),
                )
                .map(|c| Response::Contained {
                    cages: vec![contained(&c)],
                }),
            _ => Err(super::state::StateError::Usage(
                "kill takes an agent name or --all, not both".into(),
            )),
        },
        Request::Approvals {} => Ok(Response::Approvals {
            requests: state.approvals(),
        }),
        Request::Approve { id, for_secs } => for_secs
            .map(|s| {
                std::time::Duration::try_from_secs_f64(s).map_err(|_| {
                    super::state::StateError::Usage(format!(
                        "invalid approval duration {s} s; expected a positive number"
                    ))
                })
            })
            .transpose()
            .and_then(|d| state.approve(id, &who(peer), d))
            .map(|request| Response::Approval { request }),
        Request::Deny { id } => state
            .deny(id, &who(peer))
            .map(|request| Response::Approval { request }),
    };
    result.unwrap_or_else(|e| {
        warn!(error = %e, uid = peer.uid, pid = peer.pid, "request refused");
        Response::Error {
            message: e.to_string(),
        }
    })
}

/// The person behind a request, for approvals and containment records.
fn who(peer: &Peer) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "?".into());
    format!("uid {} ({name}) pid {}", peer.uid, peer.pid)
}

fn contained(c: &super::state::Contained) -> crate::control::ContainedCage {
    crate::control::ContainedCage {
        agent: c.agent.clone(),
        rung: c.rung.name().to_owned(),
        previous: c.previous.name().to_owned(),
        snapshot: c.snapshot.as_ref().map(|p| p.display().to_string()),
        error: None,
    }
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

/// Sends a response with a descriptor attached to its first byte (SCM_RIGHTS).
async fn send_with_fd(
    write: &mut OwnedWriteHalf,
    response: &Response,
    fd: OwnedFd,
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    let stream: &UnixStream = write.as_ref();
    let raw = [fd.as_raw_fd()];
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[io::IoSlice::new(&line)],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    };
    // Our copy goes; the client's is the one that holds the file (and its lock) now.
    drop(fd);
    write.write_all(&line[sent..]).await
}

async fn send(write: &mut OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Serves one connection on the application socket: application events only, each from a
/// process inside the cage it speaks for (checked on every message, by the sender's pid as
/// the kernel reported it at connect time).
pub async fn serve_app(shared: Arc<Shared>, stream: UnixStream) {
    use crate::runtime::appevents::{sender_agent, start_time, AppMessage, AppReply};
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
    loop {
        let mut line = String::new();
        let mut limited = (&mut reader).take(MAX_REQUEST + 1);
        match tokio::time::timeout(IDLE, limited.read_line(&mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        if line.len() as u64 > MAX_REQUEST {
            let message = format!("message longer than {MAX_REQUEST} bytes: connection closed");
            let _ = send_json(&mut write, &AppReply::Error { message }).await;
            break;
        }
        let reply = match serde_json::from_str::<AppMessage>(&line) {
            Err(e) => AppReply::Error {
                message: format!("malformed application event: {e}"),
            },
            Ok(msg) => {
                let mut state = shared.state();
                match sender_agent(state.root(), &peer, started, msg.agent.as_deref()) {
                    Err(message) => {
                        warn!(pid = peer.pid, uid = peer.uid, "{message}");
                        AppReply::Error { message }
                    }
                    Ok(agent) => state.on_app_event(&agent, peer.pid, msg.event),
                }
            }
        };
        if send_json(&mut write, &reply).await.is_err() {
            break;
        }
    }
}

async fn send_json<T: serde::Serialize>(write: &mut OwnedWriteHalf, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Binds the application socket, mode 0666: any process may connect, and each message is
/// checked against the sender's cage.
pub fn bind_app(path: &Path) -> Result<UnixListener, DaemonError> {
    let listener = bind_fresh(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .map_err(io_err(path, "setting the mode of"))?;
    Ok(listener)
}
