//! The control socket: `agentcage` commands from root or the configured group, never from a
//! process inside a cage.

use std::{os::fd::OwnedFd, sync::Arc};

use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    net::{unix::OwnedWriteHalf, UnixStream},
    sync::broadcast::error::{RecvError, TryRecvError},
};
use tracing::{debug, info, warn};

use super::{contain, next_line, send, send_with_fd, Line, Shared, MAX_REQUEST};
use crate::{
    control::{Peer, Request, Response},
    daemon::state::StateError,
    events::Event,
};

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
    let mut held: Vec<(String, crate::accounts::Joiner)> = Vec::new();
    let mut reader = BufReader::new(read);
    loop {
        let line = match next_line(&mut reader).await {
            Line::Read(line) => line,
            Line::Closed => {
                debug!(pid = peer.pid, "control connection closed");
                break;
            }
            Line::Failed(e) => {
                let message = format!("unreadable request: {e}");
                let _ = send(&mut write, &Response::Error { message }).await;
                break;
            }
            Line::TooLong => {
                let message = format!("request longer than {MAX_REQUEST} bytes: connection closed");
                let _ = send(&mut write, &Response::Error { message }).await;
                break;
            }
        };
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
            r @ (Request::Contain { .. } | Request::Resume { .. } | Request::Kill { .. }) => {
                contain::serve(&shared, &who(&peer), r, &mut write).await
            }
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
        for (agent, joiner) in held {
            state.release(&agent, joiner);
        }
    }
}

/// Why a peer inside a cage (or one whose cgroup cannot be read) is refused, if it is.
fn caged_peer(shared: &Shared, peer: &Peer) -> Option<String> {
    let message = match shared.state().holds_pid(peer.pid) {
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
    held: &mut Vec<(String, crate::accounts::Joiner)>,
    attach: &mut Option<OwnedFd>,
) -> Response {
    let mut state = shared.state();
    let result = match request {
        Request::Ping {} => Ok(Response::Pong {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            policy_hash: state.policy().hash().to_owned(),
        }),
        Request::Prepare { agent, user } => {
            state.hold(&agent, user.as_deref(), peer.uid).and_then(|h| {
                // Released when the connection closes, refused or not.
                held.push((agent.clone(), h.run_as.joiner()));
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
                    run_as = h.run_as.account,
                    run_uid = h.run_as.uid,
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
                    run_as: Some(h.run_as),
                })
            })
        }
        Request::Join { agent } => state
            .move_into(&agent, peer.pid, peer.uid, false)
            .map(|cgroup| Response::Joined { agent, cgroup }),
        Request::Processes { agent } => state
            .processes(&agent)
            .map(|processes| Response::Processes { agent, processes }),
        Request::Adopt { agent, pid } => state
            .move_into(&agent, pid, peer.uid, true)
            .map(|cgroup| Response::Adopted { agent, pid, cgroup }),
        Request::ContainerPrepare { agent } => {
            state
                .container_prepare(&agent)
                .map(|(raw_sockets, app_socket)| Response::ContainerPrepared {
                    policy_hash: state.policy().hash().to_owned(),
                    agent,
                    raw_sockets,
                    app_socket,
                })
        }
        // Only root may make a cgroup it did not make a cage (the engine's runtime is root).
        Request::ContainerCage { .. } if peer.uid != 0 => Err(StateError::Usage(
            "only root (a container engine's runtime) may cage containers".into(),
        )),
        Request::ContainerCage {
            agent,
            pid,
            container,
        } => {
            let id = container.id.clone();
            state
                .cage_container(&agent, pid, container)
                .map(|cgroup| Response::ContainerCaged { agent, id, cgroup })
        }
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
        Request::Contain { .. } | Request::Resume { .. } | Request::Kill { .. } => Err(
            StateError::Usage("containment requests are answered in two steps, not here".into()),
        ),
        Request::Approvals {} => Ok(Response::Approvals {
            requests: state.approvals(),
        }),
        Request::Approve { id, for_secs } => for_secs
            .map(|s| {
                std::time::Duration::try_from_secs_f64(s).map_err(|_| {
                    StateError::Usage(format!(
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
        r @ (Request::Agents {}
        | Request::Keys {}
        | Request::KeysRotate {}
        | Request::CertSign { .. }
        | Request::Credentials {}
        | Request::Revoke { .. }) => super::identity::handle(&mut state, &who(peer), r),
    };
    result.unwrap_or_else(|e| {
        warn!(error = %e, uid = peer.uid, pid = peer.pid, "request refused");
        Response::Error {
            message: e.to_string(),
        }
    })
}

/// The person behind a request, for approvals and containment records.
pub(super) fn who(peer: &Peer) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "?".into());
    format!("uid {} ({name}) pid {}", peer.uid, peer.pid)
}

fn unreachable_events() -> Result<Response, StateError> {
    Ok(Response::Error {
        message: "events are streamed, not answered".into(),
    })
}

/// Sends the recent events, or (follow) every new one until the client leaves. Returns
/// whether the connection is still usable.
async fn stream_events(shared: &Shared, write: &mut OwnedWriteHalf, follow: bool) -> bool {
    if !follow {
        for event in shared.bus.recent() {
            if send(
                write,
                &Response::Event {
                    event: (*event).clone(),
                },
            )
            .await
            .is_err()
            {
                return false;
            }
        }
        return false;
    }
    let mut rx = shared.bus.subscribe();
    if send(write, &Response::Subscribed).await.is_err() {
        return false;
    }
    // What has arrived is written together: one write for a burst, not one per event.
    let event = |event: Arc<Event>| Response::Event {
        event: Arc::unwrap_or_clone(event),
    };
    let mut lines = Vec::new();
    loop {
        let mut batch = match rx.recv().await {
            Ok(e) => vec![event(e)],
            // A slow reader is told exactly how many it missed.
            Err(RecvError::Lagged(count)) => vec![Response::Lost { count }],
            Err(RecvError::Closed) => return false,
        };
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(e) => batch.push(event(e)),
                Err(TryRecvError::Lagged(count)) => batch.push(Response::Lost { count }),
                Err(_) => break,
            }
        }
        lines.clear();
        for r in &batch {
            if serde_json::to_writer(&mut lines, r).is_err() {
                return false;
            }
            lines.push(b'\n');
        }
        if write.write_all(&lines).await.is_err() {
            return false;
        }
    }
}
