//! Events: decoded from the kernel's ring buffer, enriched with the agent's identity and the
//! policy that decided, and fanned out on a bus to independent consumers.
//!
//! One module per event family (`egress`, `exec`, `process`, `file`, `unix` from the kernel;
//! `app`, `runtime`, `dns` and the session/policy events from the daemon), each holding its typed detail
//! and how a kernel record becomes it. `enrich` puts the families together; the daemon only
//! supplies the lookups (agent names, policy slots, sequence numbers).

mod app;
mod bus;
pub mod coalesce;
mod container;
mod credential;
mod decision;
mod decode;
mod dns;
mod egress;
mod enrich;
mod exec;
mod file;
#[cfg(test)]
mod golden;
pub(crate) mod named;
pub mod process;
mod runtime;
mod unix;

pub use app::{duration_of_ms, AppEvent, Phase};
pub use bus::{Durable, EventBus};
pub use container::ContainerMeta;
pub use credential::{CredentialAction, CredentialDetail};
pub use decision::{RuleRef, Verdict};
pub use decode::{decode, DecodeError, RawEvent};
pub use dns::DnsDetail;
pub use egress::{EgressDetail, EgressHook, EgressSummary, Family, Protocol, SockType};
pub use enrich::{enrich, enrich_summary, Lookups};
pub use exec::{ExecDetail, ExecHook};
pub use file::{FileAccess, FileDetail, FileOp, InodePaths};
pub use process::{ExitDetail, ForkDetail};
pub use runtime::{
    ApprovalDetail, ApprovalState, AssertionDetail, BudgetDetail, BudgetLevel, ContainmentDetail,
    RungState,
};
pub use unix::{UnixDetail, UnixHook};

use serde::{Deserialize, Serialize};

use crate::identity::{AgentIdentity, SpiffeId};
use named::named_enum;

/// One event as consumers see it (and as `agentcage events` prints it, one JSON line each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Wall-clock time of the kernel's timestamp, nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// The kernel's own timestamp (CLOCK_BOOTTIME, ns): monotonic, for ordering.
    pub kernel_ts_ns: u64,
    /// The agent's identity (`agent:NAME`), or null when the caller was in no known cage.
    pub agent: Option<AgentIdentity>,
    /// The container the caller runs in, when its cage is a container's cgroup (boxed: most
    /// events have none, and every event would otherwise carry its size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerMeta>>,
    /// The agent's SPIFFE ID (`spiffe://TRUST_DOMAIN/agent/NAME`), or null with no agent.
    #[serde(default)]
    pub spiffe_id: Option<SpiffeId>,
    /// Position among the agent's events, from 1, in the order they were published (a
    /// resolver's grant, reported just after its answer has gone out, keeps the number it
    /// took at the grant); a gap never occurs without a loss being counted. An
    /// `egress_summary` takes one number; the repeats it counts take none.
    #[serde(default)]
    pub agent_seq: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// The task's command name.
    pub comm: String,
    /// cgroup id of the caller.
    pub cgroup_id: u64,
    /// SHA-256 of the policy in force.
    pub policy_hash: String,
    /// The id of the agent's behavior certificate, while a valid one is in force for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub detail: EventDetail,
}

impl Event {
    /// An event of the daemon itself (not from the kernel): now, no process, no cage.
    pub fn daemon(policy_hash: &str, detail: EventDetail) -> Self {
        Self {
            time_unix_nano: crate::clock::now_unix_nano(),
            kernel_ts_ns: 0,
            agent: None,
            container: None,
            spiffe_id: None,
            agent_seq: 0,
            pid: 0,
            tgid: 0,
            comm: String::new(),
            cgroup_id: 0,
            policy_hash: policy_hash.to_owned(),
            certificate: None,
            detail,
        }
    }

    /// The agent's name, when the event has an agent.
    pub fn agent_name(&self) -> Option<&str> {
        self.agent.as_ref().map(AgentIdentity::name)
    }

    /// The event's kind, as its JSON `kind` field names it.
    pub fn kind(&self) -> &'static str {
        self.detail.kind()
    }
}

/// The family-specific part of an event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventDetail {
    /// An egress decision.
    Egress(EgressDetail),
    /// An exec.
    Exec(ExecDetail),
    /// A new process.
    Fork(ForkDetail),
    /// A process ended.
    Exit(ExitDetail),
    /// An operation on a watched or protected file.
    File(FileDetail),
    /// A Unix-socket connect or send.
    Unix(UnixDetail),
    /// An agent session began (its cage was made) or ended (the cage was removed).
    Session(SessionDetail),
    /// The policy was reloaded, or a reload was refused.
    Policy(PolicyDetail),
    /// What the agent's application reported.
    App(AppEvent),
    /// The cage moved to a containment rung.
    Containment(ContainmentDetail),
    /// An approval was requested or decided.
    Approval(ApprovalDetail),
    /// A budget limit was reached.
    Budget(BudgetDetail),
    /// A temporal assertion was violated.
    Assertion(AssertionDetail),
    /// A credential was granted, refused or revoked.
    Credential(CredentialDetail),
    /// Repeats of one egress decision, counted (a flood, summarized).
    EgressSummary(EgressSummary),
    /// A query to the cage's resolver, answered or refused.
    Dns(DnsDetail),
}

impl EventDetail {
    /// The kind's name, as in the JSON `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Egress(_) => "egress",
            Self::Exec(_) => "exec",
            Self::Fork(_) => "fork",
            Self::Exit(_) => "exit",
            Self::File(_) => "file",
            Self::Unix(_) => "unix",
            Self::Session(_) => "session",
            Self::Policy(_) => "policy",
            Self::App(_) => "app",
            Self::Containment(_) => "containment",
            Self::Approval(_) => "approval",
            Self::Budget(_) => "budget",
            Self::Assertion(_) => "assertion",
            Self::Credential(_) => "credential",
            Self::EgressSummary(_) => "egress_summary",
            Self::Dns(_) => "dns",
        }
    }
}

named_enum! {
    /// Whether a session began or ended.
    pub enum SessionAction ("session action") {
        /// The cage was made.
        Start = "start",
        /// The cage was removed.
        End = "end",
    }
}

named_enum! {
    /// What became of a policy reload.
    pub enum PolicyResult ("policy result") {
        /// The new policy is in force.
        Applied = "applied",
        /// The new policy was refused; the previous one stays.
        Refused = "refused",
    }
}

/// A policy reload, applied or refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PolicyDetail {
    /// Applied or refused.
    pub result: PolicyResult,
    /// The policy file.
    pub source: String,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// An agent session's start or end: one trace per session in the exported telemetry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionDetail {
    /// Start or end.
    pub action: SessionAction,
    /// When the session started, ns since the Unix epoch.
    pub started_unix_nano: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_detail_names_the_kind_its_json_carries() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/events/testdata/events.jsonl"
        ))
        .unwrap();
        for line in text.lines() {
            let e: Event = serde_json::from_str(line).unwrap();
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["kind"], e.kind());
        }
    }
}
