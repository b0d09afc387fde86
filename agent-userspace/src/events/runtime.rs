//! Events the daemon itself raises while enforcing a policy at run time: containment,
//! approval requests and decisions, budget alerts and assertion violations.

use serde::{Deserialize, Serialize};

use super::named::named_enum;
use crate::policy::Rung;

named_enum! {
    /// A containment rung as events name it, with the watchdog's two extra states.
    pub enum RungState ("containment rung") {
        /// See [`Rung::Observe`].
        Observe = "observe",
        /// See [`Rung::ReadOnly`].
        ReadOnly = "read_only",
        /// See [`Rung::ApprovalRequired`].
        ApprovalRequired = "approval_required",
        /// See [`Rung::Paused`].
        Paused = "paused",
        /// See [`Rung::Killed`].
        Killed = "killed",
        /// The watchdog could not freeze the cages: nothing changed.
        Unchanged = "unchanged",
        /// The watchdog acted on every cage, whatever its rung.
        Any = "any",
    }
}

impl From<Rung> for RungState {
    fn from(r: Rung) -> Self {
        match r {
            Rung::Observe => Self::Observe,
            Rung::ReadOnly => Self::ReadOnly,
            Rung::ApprovalRequired => Self::ApprovalRequired,
            Rung::Paused => Self::Paused,
            Rung::Killed => Self::Killed,
        }
    }
}

named_enum! {
    /// Where an approval request stands.
    pub enum ApprovalState ("approval state") {
        /// Waiting for a person.
        Requested = "requested",
        /// Granted (until `expires_unix_nano`).
        Approved = "approved",
        /// Refused by a person.
        Denied = "denied",
        /// Lapsed, unanswered or past its grant.
        Expired = "expired",
    }
}

named_enum! {
    /// How serious a budget limit is.
    pub enum BudgetLevel ("budget level") {
        /// An alert.
        Soft = "soft",
        /// Throttle, then contain.
        Hard = "hard",
    }
}

/// The cage moved to a containment rung.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainmentDetail {
    /// The rung now in force.
    pub rung: RungState,
    /// The rung before.
    pub previous: RungState,
    /// Why: `manual` (with who), `budget`, `assertion`, `deny-rate`, `kill-switch`.
    pub reason: String,
    /// The forensic snapshot written, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// An approval was requested, granted, denied or expired.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApprovalDetail {
    /// The request's id (`agentcage approve ID`).
    pub id: u64,
    /// Where the request stands.
    pub state: ApprovalState,
    /// What needs approval, e.g. `egress payments (allow[2] ...)`, `tool payout`.
    pub subject: String,
    /// Who decided (`uid N (name)`), for approved and denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// When an approval lapses, ns since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_nano: Option<u64>,
}

/// A budget limit was reached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BudgetDetail {
    /// Whose budget: `agent`, `group:NAME` or `workflow:NAME`.
    pub scope: String,
    /// Which budget: `tokens`, `usd`, `tool_calls`, `egress_connections`, `wall_clock`,
    /// `queue_latency`, `model_latency`, `tool_latency`, `loop`.
    pub budget: String,
    /// `soft` (an alert) or `hard` (throttled, then contained).
    pub level: BudgetLevel,
    /// The value reached.
    pub value: f64,
    /// The limit.
    pub limit: f64,
}

/// A temporal assertion was violated.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AssertionDetail {
    /// The assertion, as the policy says it.
    pub assertion: String,
    /// What happened.
    pub violation: String,
}
