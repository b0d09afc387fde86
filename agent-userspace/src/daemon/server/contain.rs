//! Containment requests (`contain`, `pause`, `resume`, `kill`, `kill --all`), answered in
//! two steps: once every targeted cage is frozen (under the state lock, milliseconds), and
//! again when the snapshots are written and killed cages are empty (awaited with no lock
//! held, so events, `status` and the application socket go on meanwhile).

use tokio::{net::unix::OwnedWriteHalf, sync::oneshot};

use super::{send, Shared};
use crate::{
    control::{ContainedCage, ContainmentOutcome, Request, Response},
    daemon::state::{Contained, JobOutcome, StateError},
    runtime::Rung,
};

/// Serves one containment request; returns whether the connection is still usable.
pub(super) async fn serve(
    shared: &Shared,
    who: &str,
    request: Request,
    write: &mut OwnedWriteHalf,
) -> bool {
    let all = matches!(request, Request::Kill { all: true, .. });
    let (first, pending) = {
        let mut state = shared.state();
        let results: Vec<(String, Result<Contained, StateError>)> = match request {
            Request::Contain { agent, rung } => {
                let r = Rung::parse(&rung)
                    .map_err(StateError::Usage)
                    .and_then(|rung| state.contain(&agent, rung, &format!("manual ({who})")));
                vec![(agent, r)]
            }
            Request::Resume { agent } => {
                let r = state.resume(&agent, who);
                vec![(agent, r)]
            }
            Request::Kill {
                agent: None,
                all: true,
            } => state.kill_all(who),
            Request::Kill {
                agent: Some(agent),
                all: false,
            } => {
                let r = state.contain(&agent, Rung::Killed, &format!("manual ({who})"));
                vec![(agent, r)]
            }
            Request::Kill { .. } => {
                let message = "kill takes an agent name or --all, not both".to_owned();
                drop(state);
                return send(write, &Response::Error { message }).await.is_ok();
            }
            _ => return false,
        };
        answer(results)
    };
    // The one cage asked for was refused: the request failed.
    let response = match first.as_slice() {
        [ContainedCage {
            error: Some(message),
            ..
        }] if !all => Response::Error {
            message: message.clone(),
        },
        _ => Response::Contained { cages: first },
    };
    if send(write, &response).await.is_err() {
        return false;
    }
    if pending.is_empty() {
        return true;
    }
    let mut cages = Vec::with_capacity(pending.len());
    for (agent, done) in pending {
        cages.push(match done.await {
            Ok(o) => outcome(o),
            Err(_) => ContainmentOutcome {
                agent,
                snapshot: None,
                emptied: false,
                error: Some("the containment worker stopped; the cage stays frozen".into()),
            },
        });
    }
    send(write, &Response::ContainmentDone { cages })
        .await
        .is_ok()
}

/// What to answer at once, and the jobs still to wait for.
fn answer(
    results: Vec<(String, Result<Contained, StateError>)>,
) -> (
    Vec<ContainedCage>,
    Vec<(String, oneshot::Receiver<JobOutcome>)>,
) {
    let mut first = Vec::with_capacity(results.len());
    let mut pending = Vec::new();
    for (agent, r) in results {
        first.push(match r {
            Ok(c) => {
                let waiting = c.done.is_some();
                if let Some(done) = c.done {
                    pending.push((agent, done));
                }
                ContainedCage {
                    agent: c.agent,
                    rung: c.rung.name().to_owned(),
                    previous: c.previous.name().to_owned(),
                    snapshot: c.snapshot.map(|p| p.display().to_string()),
                    pending: waiting,
                    error: None,
                }
            }
            Err(e) => ContainedCage {
                agent,
                rung: String::new(),
                previous: String::new(),
                snapshot: None,
                pending: false,
                error: Some(e.to_string()),
            },
        });
    }
    (first, pending)
}

fn outcome(o: JobOutcome) -> ContainmentOutcome {
    ContainmentOutcome {
        agent: o.agent,
        snapshot: o.snapshot.map(|p| p.display().to_string()),
        emptied: o.emptied,
        error: o.error,
    }
}
