//! The `createRuntime` hook: the runtime runs it with the container's state on stdin once
//! the container's init is in its cgroup, before the container's program starts; it asks
//! the daemon to make that cgroup a cage. Whatever it prints on failure, the runtime puts in
//! its error, which the engine shows.

use std::{io::Read as _, path::Path};

use serde_json::Value;

use super::{bundle::Bundle, forbidden, OciError};
use crate::{
    control::{Client, ClientError, Request, Response},
    events::ContainerMeta,
};

/// Runs the hook; returns its exit code (0: caged).
pub(super) fn run(socket: &Path, agent: &str, meta: &str) -> i32 {
    match cage(socket, agent, meta) {
        Ok(()) => 0,
        Err(e) => {
            // The runtime shows the hook's output in its error.
            eprintln!("agentcage: {}", crate::errors::render(&e));
            1
        }
    }
}

fn cage(socket: &Path, agent: &str, meta: &str) -> Result<(), OciError> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| OciError::State(e.to_string()))?;
    let state: Value = serde_json::from_str(&input).map_err(|e| OciError::State(e.to_string()))?;
    let pid = state
        .get("pid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 1)
        .ok_or_else(|| OciError::State(format!("no init pid in {input}")))?;
    let id = state
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| OciError::State(format!("no id in {input}")))?;
    let mut container: ContainerMeta =
        serde_json::from_str(meta).map_err(|e| OciError::State(format!("--meta: {e}")))?;
    container.id = id.to_owned();
    let refused = |message: String| OciError::Refused {
        id: id.to_owned(),
        agent: agent.to_owned(),
        message,
    };
    // The config the runtime used must be the one the wrapper made fit (not, say, a bundle
    // someone handed a copy of this hook).
    if let Some(dir) = state.get("bundle").and_then(Value::as_str) {
        let bundle = Bundle::read(Path::new(dir))?;
        let forbidden = forbidden(bundle.bounding_has("CAP_NET_RAW"));
        let held = bundle
            .config()
            .get("process")
            .map(|p| Bundle::held_caps(p, &forbidden))
            .unwrap_or_default();
        if !held.is_empty() {
            return Err(refused(format!(
                "its process still holds {held:?}, with which it could undo its cage"
            )));
        }
    }
    let answer = Client::connect(socket).and_then(|mut c| {
        c.call(&Request::ContainerCage {
            agent: agent.to_owned(),
            pid,
            container,
        })
    });
    match answer {
        Ok(Response::ContainerCaged { .. }) => Ok(()),
        Ok(other) => Err(OciError::Unexpected(format!("{other:?}"))),
        Err(ClientError::Refused(message)) => Err(refused(message)),
        Err(e) => Err(OciError::Daemon(e)),
    }
}
