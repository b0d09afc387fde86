//! The application-event protocol: one JSON object per line on the application socket, from
//! a process inside the cage it speaks for (the daemon reads the sender's pid from the kernel,
//! `SO_PEERCRED`, and its cgroup from /proc; a claim for any other cage is refused).
//!
//! ```text
//! → {"agent":"payer","event":{"app":"model_call","model":"m","input_tokens":10,"output_tokens":5,"cost_usd":0.01}}
//! ← {"type":"accepted","decision":"allow"}
//! → {"event":{"app":"tool_call","name":"payout","phase":"start"}}
//! ← {"type":"accepted","decision":"refuse","reason":"pending-approval","approval_id":3}
//! ← {"type":"error","message":"..."}
//! ```
//!
//! `agent` may be left out: the sender's own cage is meant. The answer to a tool call's start
//! says whether the application may go ahead: tool calls are refused while the agent is over
//! a hard budget, contained, or waiting for an approval the policy requires.

use serde::{Deserialize, Serialize};

use super::Peer;
use crate::{cage::CageRoot, events::AppEvent, policy::validate_agent_name};

/// One message from the application.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppMessage {
    /// The agent the sender speaks for; its own cage's agent when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The event.
    pub event: AppEvent,
}

/// Whether the application may go ahead.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Do not: see the reason.
    Refuse,
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppReply {
    /// Recorded.
    Accepted {
        /// Whether the action may go ahead.
        decision: Decision,
        /// Why not: `budget`, `pending-approval`, `contained`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The approval request to decide, when one is needed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<u64>,
    },
    /// Refused; nothing was recorded.
    Error {
        /// Why.
        message: String,
    },
}

/// When process `pid` started (field 22 of /proc/PID/stat, in clock ticks since boot): with
/// the pid, it names one process for good, so a pid reused after the sender exited is told
/// apart from the sender.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command (which may hold spaces and parentheses): state is field 3, start
    // time field 22.
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The agent whose cage the sender is in: the cage directory's name. The daemon refuses a
/// sender in no cage, a claim naming another agent, and a connection whose process has
/// exited (`started` is its start time at connect, see [`start_time`]; a process with the
/// same pid later is another one).
pub fn sender_agent(
    root: &CageRoot,
    container_agent: impl Fn(&str) -> Option<String>,
    peer: &Peer,
    started: Option<u64>,
    claimed: Option<&str>,
) -> Result<String, String> {
    let same_process = || started.is_some() && start_time(peer.pid) == started;
    let gone = || {
        format!(
            "refused: process {} that opened this connection has exited; application events \
             are accepted only from the process that connected",
            peer.pid
        )
    };
    if !same_process() {
        return Err(gone());
    }
    let cgroup = crate::cage::cgroup_of_pid(peer.pid)
        .map_err(|e| format!("cannot tell which cage process {} is in: {e}", peer.pid))?;
    // Read again after the cgroup: the cgroup read above was the connecting process's.
    if !same_process() {
        return Err(gone());
    }
    let rel = root_relative(root);
    let own = cgroup
        .strip_prefix(&rel)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(|rest| rest.split('/').next().unwrap_or_default().to_owned())
        .filter(|name| !name.is_empty())
        // A container whose own cgroup is a cage speaks for that cage's agent.
        .or_else(|| container_agent(&cgroup))
        .ok_or_else(|| {
            format!(
                "refused: process {} is in no agentcage cage (cgroup {cgroup}); application \
                 events are accepted only from inside the cage they speak for",
                peer.pid
            )
        })?;
    if let Some(claimed) = claimed {
        validate_agent_name(claimed).map_err(|e| e.to_string())?;
        if claimed != own {
            return Err(format!(
                "refused: process {} is in the cage of agent:{own}, so it cannot speak for \
                 agent:{claimed}",
                peer.pid
            ));
        }
    }
    Ok(own)
}

/// The parent cgroup's path as /proc/PID/cgroup shows it.
fn root_relative(root: &CageRoot) -> String {
    root.relative().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_name_one_process() {
        let me = start_time(std::process::id()).expect("our own start time");
        assert_eq!(start_time(std::process::id()), Some(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(start_time(pid), None, "reaped: gone");
    }

    #[test]
    fn wire_forms() {
        let m: AppMessage = serde_json::from_str(
            r#"{"agent":"payer","event":{"app":"model_call","model":"m","input_tokens":10,"output_tokens":5,"cost_usd":0.01}}"#,
        )
        .unwrap();
        assert_eq!(m.agent.as_deref(), Some("payer"));
        assert!(matches!(
            m.event,
            AppEvent::ModelCall {
                input_tokens: 10,
                ..
            }
        ));
        let e =
            serde_json::from_str::<AppMessage>(r#"{"event":{"app":"plan","x":1}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        let r = serde_json::to_string(&AppReply::Accepted {
            decision: Decision::Refuse,
            reason: Some("pending-approval".into()),
            approval_id: Some(3),
        })
        .unwrap();
        assert_eq!(
            r,
            r#"{"type":"accepted","decision":"refuse","reason":"pending-approval","approval_id":3}"#
        );
    }

    #[test]
    fn app_events_round_trip_inside_events() {
        let ev = crate::events::Event {
            time_unix_nano: 1,
            kernel_ts_ns: 2,
            agent: Some(crate::identity::AgentIdentity::for_agent("a")),
            container: None,
            spiffe_id: None,
            agent_seq: 1,
            pid: 3,
            tgid: 3,
            comm: "x".into(),
            cgroup_id: 4,
            policy_hash: "h".into(),
            certificate: None,
            detail: crate::events::EventDetail::App(AppEvent::ToolCall {
                name: "payout".into(),
                args_digest: None,
                phase: crate::events::Phase::Start,
                call_id: None,
                latency_ms: None,
            }),
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert!(text.contains(r#""kind":"app","app":"tool_call""#), "{text}");
        let back: crate::events::Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ev);
    }
}
