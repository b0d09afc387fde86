//! The policy sections the daemon enforces at run time, beside the kernel's egress lists:
//! approvals, budgets, assertions and containment (see `docs/POLICY.md`).
//!
//! Each value checks itself as it is read, so errors point at the offending text.

use std::{collections::BTreeMap, fmt, time::Duration};

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A rung of the containment ladder, least to most severe.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    /// Decisions as the policy says; nothing more.
    #[default]
    Observe,
    /// Egress limited to the allow rules marked `read_only`.
    ReadOnly,
    /// Destinations outside the allow list wait for a person's approval (denied meanwhile,
    /// verdict `pending-approval`).
    ApprovalRequired,
    /// Every process frozen (cgroup.freeze), then a forensic snapshot written.
    Paused,
    /// Frozen, snapshot written, then every process killed (cgroup.kill).
    Killed,
}

impl Rung {
    /// The name used in policies, events and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Observe => "observe",
            Self::ReadOnly => "read_only",
            Self::ApprovalRequired => "approval_required",
            Self::Paused => "paused",
            Self::Killed => "killed",
        }
    }

    /// Parses a rung name (`read-only` is accepted for `read_only`, and so on).
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.replace('-', "_").as_str() {
            "observe" => Self::Observe,
            "read_only" => Self::ReadOnly,
            "approval_required" => Self::ApprovalRequired,
            "paused" | "pause" => Self::Paused,
            "killed" | "kill" => Self::Killed,
            _ => {
                return Err(format!(
                    "unknown containment rung {s:?}; expected observe, read_only, \
                     approval_required, paused or killed"
                ))
            }
        })
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A duration written like `90s`, `10m` or `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[schemars(with = "DurationText")]
pub struct Span(pub Duration);

/// The JSON Schema form of [`Span`].
#[derive(JsonSchema)]
#[schemars(
    description = "A duration such as 500ms, 60s, 10m or 1h 30m",
    extend("pattern" = r"^\s*[0-9]+\s*[a-zA-Zµ]+(\s*[0-9]+\s*[a-zA-Zµ]+)*\s*$")
)]
#[expect(dead_code, reason = "only its schema is used")]
struct DurationText(String);

impl Span {
    /// Parses `90s`, `10m`, `1h 30m`...
    pub fn parse(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s).map_err(|e| {
            format!("invalid duration {s:?}: {e}; expected e.g. 500ms, 60s, 10m or 1h")
        })?;
        if d.is_zero() {
            return Err(format!("invalid duration {s:?}: it is zero"));
        }
        Ok(Self(d))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 60s or 10m")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Span, E> {
                Span::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Checks a name used by assertions and approvals (tool, rule, group, workflow names).
pub(crate) fn check_name(s: &str, what: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 128 {
        return Err(format!("invalid {what} {s:?}: expected 1-128 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(format!(
            "invalid {what} {s:?}: character {c:?} is not allowed; expected letters, digits, \
             '.', '_', '-', ':' and '/'"
        ));
    }
    Ok(s.to_owned())
}

/// Actions that wait for a person's approval, besides allow rules marked `requires_approval`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Tool call names that need approval; the daemon refuses them until approved.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Commands (a prefix of the command line, e.g. `terraform apply`) that need approval.
    #[serde(default)]
    pub exec: Vec<String>,
    /// How long an approval lasts when the approver gives no `--for`.
    #[serde(default = "default_approval_for")]
    pub default_for: Span,
    /// The longest approval anyone may give.
    #[serde(default = "default_approval_max")]
    pub max_for: Span,
}

fn default_approval_for() -> Span {
    Span(Duration::from_secs(600))
}

fn default_approval_max() -> Span {
    Span(Duration::from_secs(24 * 3600))
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            tools: Vec::new(),
            exec: Vec::new(),
            default_for: default_approval_for(),
            max_for: default_approval_max(),
        }
    }
}

impl ApprovalPolicy {
    /// Whether nothing beyond the defaults is set.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A soft and a hard limit on a count or amount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Reaching it emits an alert event.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub soft: Option<f64>,
    /// Reaching it throttles (new egress denied with verdict `budget`, tool calls refused)
    /// and then applies the containment rung.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub hard: Option<f64>,
}

/// A soft and a hard limit on a duration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeLimit {
    /// Reaching it emits an alert event.
    #[serde(default)]
    pub soft: Option<Span>,
    /// Reaching it throttles and then applies the containment rung.
    #[serde(default)]
    pub hard: Option<Span>,
}

/// Loop detection: the same tool call, or the same denied destination, `repeats` times
/// within `window` is a breach.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopRule {
    /// How many repeats make a loop (at least 2).
    #[schemars(range(min = 2))]
    pub repeats: u32,
    /// Within how long.
    pub window: Span,
}

/// Budgets of one agent, user group or workflow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// Model tokens (input + output), from `model_call` application events.
    #[serde(default)]
    pub tokens: Option<Limit>,
    /// Cost in US dollars, from `model_call` application events.
    #[serde(default)]
    pub usd: Option<Limit>,
    /// Tool calls, from `tool_call` application events.
    #[serde(default)]
    pub tool_calls: Option<Limit>,
    /// New egress connections and sends the kernel allowed.
    #[serde(default)]
    pub egress_connections: Option<Limit>,
    /// DNS queries the cage's resolver received (answered or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_queries: Option<Limit>,
    /// Time since the cage was created.
    #[serde(default)]
    pub wall_clock: Option<TimeLimit>,
    /// Per model call: time spent queued before the model ran.
    #[serde(default)]
    pub queue_latency: Option<TimeLimit>,
    /// Per model call: the model's own time.
    #[serde(default)]
    pub model_latency: Option<TimeLimit>,
    /// Per tool call: start to end.
    #[serde(default)]
    pub tool_latency: Option<TimeLimit>,
    /// Repeated identical tool calls or denied destinations.
    #[serde(default, rename = "loop")]
    pub loop_rule: Option<LoopRule>,
}

impl Budgets {
    /// Whether no budget is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What happens when something goes wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainmentPolicy {
    /// The rung applied after a hard budget limit (after throttling).
    #[serde(default = "paused")]
    pub on_budget: Rung,
    /// How long a throttled agent may go on before `on_budget` applies (it applies at once
    /// when the agent tries new egress while throttled).
    #[serde(default = "default_grace")]
    pub budget_grace: Span,
    /// The rung applied when a temporal assertion is violated.
    #[serde(default = "paused")]
    pub on_assertion: Rung,
    /// Deny-rate anomaly: this many denials within `deny_window` apply `on_deny_rate`.
    #[serde(default)]
    pub deny_rate: Option<DenyRate>,
    /// How many of the agent's last events a forensic snapshot keeps.
    #[serde(default = "default_snapshot_events")]
    #[schemars(range(min = 1, max = 10000))]
    pub snapshot_events: usize,
}

/// Deny-rate anomaly detection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRate {
    /// Denials that make an anomaly.
    #[schemars(range(min = 1))]
    pub denials: u32,
    /// Within how long.
    pub window: Span,
    /// The rung applied.
    #[serde(default = "read_only")]
    pub rung: Rung,
}

fn paused() -> Rung {
    Rung::Paused
}

fn read_only() -> Rung {
    Rung::ReadOnly
}

fn default_grace() -> Span {
    Span(Duration::from_secs(30))
}

fn default_snapshot_events() -> usize {
    200
}

impl Default for ContainmentPolicy {
    fn default() -> Self {
        Self {
            on_budget: Rung::Paused,
            budget_grace: default_grace(),
            on_assertion: Rung::Paused,
            deny_rate: None,
            snapshot_events: default_snapshot_events(),
        }
    }
}

/// A user group or a workflow: budgets shared by every agent that belongs to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Collective {
    /// Budgets summed over every member agent.
    #[serde(default)]
    pub budgets: Budgets,
}

/// The named user groups or workflows of a policy.
pub type Collectives = BTreeMap<String, Collective>;

/// Checks the values a schema range states but serde does not enforce; the message names the
/// field under `path` (e.g. `agents.payer`).
pub(crate) fn check_values(
    path: &str,
    budgets: &Budgets,
    containment: &ContainmentPolicy,
    approvals: &ApprovalPolicy,
) -> Result<(), String> {
    let limits = [
        ("tokens", budgets.tokens),
        ("usd", budgets.usd),
        ("tool_calls", budgets.tool_calls),
        ("egress_connections", budgets.egress_connections),
        ("dns_queries", budgets.dns_queries),
    ];
    for (name, limit) in limits {
        let Some(l) = limit else { continue };
        for (level, v) in [("soft", l.soft), ("hard", l.hard)] {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!(
                        "{path}.budgets.{name}.{level}: {v} is not a non-negative number"
                    ));
                }
            }
        }
        if let (Some(s), Some(h)) = (l.soft, l.hard) {
            if s > h {
                return Err(format!(
                    "{path}.budgets.{name}: the soft limit {s} is above the hard limit {h}; \
                     expected soft <= hard"
                ));
            }
        }
    }
    if let Some(r) = budgets.loop_rule {
        if r.repeats < 2 {
            return Err(format!(
                "{path}.budgets.loop.repeats: {} is less than 2; a loop repeats at least once",
                r.repeats
            ));
        }
    }
    if let Some(d) = containment.deny_rate {
        if d.denials == 0 {
            return Err(format!(
                "{path}.containment.deny_rate.denials: expected at least 1"
            ));
        }
    }
    if !(1..=10_000).contains(&containment.snapshot_events) {
        return Err(format!(
            "{path}.containment.snapshot_events: {} is outside 1-10000",
            containment.snapshot_events
        ));
    }
    if approvals.default_for > approvals.max_for {
        return Err(format!(
            "{path}.approvals: default_for ({}) is longer than max_for ({})",
            approvals.default_for, approvals.max_for
        ));
    }
    Ok(())
}
