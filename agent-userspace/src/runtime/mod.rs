//! Enforcement beyond the kernel's egress lists, run by the daemon per agent session:
//! containment (the ladder and the kill switch), approvals, budgets, temporal assertions and
//! application events. Each module holds one concern's logic; the daemon feeds them from its
//! event bus and carries out what they decide (kernel maps, cgroup files).

pub mod appevents;
pub mod approvals;
pub mod assertions;
pub mod budgets;
pub mod containment;

use std::collections::VecDeque;

pub use containment::Rung;

use crate::policy::AgentPolicy;

/// What the daemon tracks about one agent session (one cage's life).
#[derive(Debug)]
pub struct AgentRuntime {
    /// The containment rung in force.
    pub rung: Rung,
    /// Over a hard budget: the kernel denies new egress (verdict `budget`).
    pub throttled: bool,
    /// When throttling started (boot ns), to apply the containment rung after the grace.
    pub throttled_at_ns: Option<u64>,
    /// The session's assertions, evaluated online.
    pub session: assertions::Session,
    /// The agent's own budget usage.
    pub meter: budgets::Meter,
    /// Recent denials (boot ns) for deny-rate anomaly detection.
    pub denials: VecDeque<u64>,
    /// When the session began (boot ns), for the wall-clock budget.
    pub started_ns: u64,
    /// The kernel's count of allowed decisions when last metered.
    pub egress_seen: u64,
    /// The agent's last events, for forensic snapshots.
    pub recent: VecDeque<std::sync::Arc<crate::events::Event>>,
}

impl AgentRuntime {
    /// A fresh session under `policy` (None: the agent is unknown to the policy).
    pub fn new(policy: Option<&AgentPolicy>, now_ns: u64) -> Self {
        Self {
            rung: Rung::Observe,
            throttled: false,
            throttled_at_ns: None,
            session: assertions::Session::new(
                policy.map(|p| p.assertions.clone()).unwrap_or_default(),
            ),
            meter: budgets::Meter::default(),
            denials: VecDeque::new(),
            started_ns: now_ns,
            egress_seen: 0,
            recent: VecDeque::new(),
        }
    }

    /// Keeps `event` among the last `keep`.
    pub fn remember(&mut self, event: std::sync::Arc<crate::events::Event>, keep: usize) {
        while self.recent.len() >= keep.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back(event);
    }
}

/// CLOCK_BOOTTIME now, in ns: the clock of kernel timestamps and approval expiries.
pub fn boot_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}
