//! Events the daemon itself raises while enforcing a policy at run time: containment,
//! approval requests and decisions, budget alerts and assertion violations.

use serde::{Deserialize, Serialize};

/// The cage moved to a containment rung.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainmentDetail {
    /// The rung now in force (`observe`, `read_only`, `approval_required`, `paused`,
    /// `killed`).
    pub rung: String,
    /// The rung before.
    pub previous: String,
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
    /// `requested`, `approved`, `denied` or `expired`.
    pub state: String,
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
    pub level: String,
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
