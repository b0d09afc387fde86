//! Events: decoded from the kernel's ring buffer, enriched with the agent's identity and the
//! policy in force, and fanned out on a bus to independent consumers.

mod app;
mod bus;
mod decode;
#[cfg(test)]
mod golden;
pub mod process;
mod runtime;

pub use app::{AppEvent, Phase};
pub use runtime::{ApprovalDetail, AssertionDetail, BudgetDetail, ContainmentDetail};

pub use bus::EventBus;
pub use decode::{decode, DecodeError, RawEvent};
pub use process::{ExecDetail, ExitDetail, FileDetail, ForkDetail};

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One event as consumers see it (and as `agentcage events` prints it, one JSON line each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Wall-clock time of the kernel's timestamp, nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// The kernel's own timestamp (CLOCK_BOOTTIME, ns): monotonic, for ordering.
    pub kernel_ts_ns: u64,
    /// The agent's identity (`agent:NAME`), or null when the caller was in no known cage.
    pub agent: Option<String>,
    /// Position among the agent's events, from 1, in the order the kernel produced them
    /// (ring-buffer order); a gap never occurs without a loss being counted.
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
    /// What happened.
    #[serde(flatten)]
    pub detail: EventDetail,
}

impl Event {
    /// An event of the daemon itself (not from the kernel): now, no process, no cage.
    pub fn daemon(policy_hash: &str, detail: EventDetail) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            time_unix_nano: now,
            kernel_ts_ns: 0,
            agent: None,
            agent_seq: 0,
            pid: 0,
            tgid: 0,
            comm: String::new(),
            cgroup_id: 0,
            policy_hash: policy_hash.to_owned(),
            detail,
        }
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
    /// An open of a watched or protected file.
    File(FileDetail),
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
}

/// A policy reload, applied or refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PolicyDetail {
    /// `applied` or `refused`.
    pub result: String,
    /// The policy file.
    pub source: String,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// An agent session's start or end: one trace per session in the exported telemetry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionDetail {
    /// `start` or `end`.
    pub action: String,
    /// When the session started, ns since the Unix epoch.
    pub started_unix_nano: u64,
}

/// An egress decision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EgressDetail {
    /// The hook that decided (`connect4`, `sendmsg6`, `sock_create`, ...).
    pub hook: String,
    /// `ipv4` or `ipv6` (the family judged: IPv4-mapped IPv6 is `ipv4`), or the socket family
    /// number for sock_create of other families.
    pub family: String,
    /// `tcp`, `udp`, or the protocol number.
    pub protocol: String,
    /// `stream`, `dgram`, `raw`, or the type number.
    pub sock_type: String,
    /// Destination address (none for sock_create).
    pub dst_addr: Option<IpAddr>,
    /// Destination port (0 for sock_create).
    pub dst_port: u16,
    /// `allow`, `deny`, `pending-approval` or `budget`.
    pub verdict: String,
    /// The rule that decided: `egress.allow[N]`, `default-deny`, `socket-kind`,
    /// `raw-sockets-allowed` or `no-cage`.
    pub rule: String,
    /// The rule's text, for allow-list rules.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
}
