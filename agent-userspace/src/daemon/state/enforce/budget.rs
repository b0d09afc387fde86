//! Budgets: metering usage per agent, group and workflow, reporting breaches, throttling.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tracing::{error, warn};

use super::super::State;
use crate::{
    clock::boot_ns,
    events::{BudgetDetail, EventDetail},
    policy::Budgets,
    runtime::{
        budgets::{Breach, Latency, Level, Meter, Metric},
        Rung,
    },
};

/// One agent session's budget state.
#[derive(Debug)]
struct AgentBudget {
    meter: Meter,
    /// Over a hard limit: the kernel denies new egress (verdict `budget`).
    throttled: bool,
    /// When throttling started (boot ns), to apply the containment rung after the grace.
    throttled_at_ns: Option<u64>,
    /// When the session began (boot ns), for the wall-clock budget.
    started_ns: u64,
    /// The kernel's count of allowed decisions when last metered.
    egress_seen: u64,
}

/// Usage of every agent session, and of the user groups and workflows they belong to.
#[derive(Default)]
pub(crate) struct BudgetState {
    agents: HashMap<String, AgentBudget>,
    /// `group:NAME` and `workflow:NAME`.
    scopes: HashMap<String, Meter>,
}

/// A breach and the scope it is of (`agent`, `group:NAME`, `workflow:NAME`).
pub(super) type ScopedBreach = (String, Breach);

fn agent_scope(b: Vec<Breach>) -> impl Iterator<Item = ScopedBreach> {
    b.into_iter().map(|x| ("agent".to_owned(), x))
}

impl BudgetState {
    /// A new session, started at `now` (boot ns).
    pub(crate) fn start(&mut self, agent: &str, now: u64) {
        self.agents.insert(
            agent.to_owned(),
            AgentBudget {
                meter: Meter::default(),
                throttled: false,
                throttled_at_ns: None,
                started_ns: now,
                egress_seen: 0,
            },
        );
    }

    /// The session ended (group and workflow usage stays).
    pub(crate) fn forget(&mut self, agent: &str) {
        self.agents.remove(agent);
    }

    /// Whether the agent is over a hard limit.
    pub(crate) fn throttled(&self, agent: &str) -> bool {
        self.agents.get(agent).is_some_and(|a| a.throttled)
    }

    /// A person let the agent go on: the throttle lifts and limits can be reported again.
    pub(crate) fn unthrottle(&mut self, agent: &str) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.throttled = false;
            a.throttled_at_ns = None;
            a.meter.rearm();
        }
    }

    /// One call's latency, against the agent's per-call limits.
    pub(super) fn latency(
        &mut self,
        agent: &str,
        budgets: &Budgets,
        which: Latency,
        took: Duration,
    ) -> Vec<ScopedBreach> {
        self.agents
            .get_mut(agent)
            .map(|a| agent_scope(a.meter.latency(budgets, which, took)).collect())
            .unwrap_or_default()
    }

    /// The same action again (loop detection).
    pub(super) fn repeat(
        &mut self,
        agent: &str,
        budgets: &Budgets,
        key: &str,
        (now, n): (u64, u64),
    ) -> Option<ScopedBreach> {
        let b = self
            .agents
            .get_mut(agent)?
            .meter
            .repeat(budgets, key, now, n)?;
        Some(("agent".to_owned(), b))
    }

    /// The time-driven part: wall clock and the kernel's count of allowed egress. Returns
    /// the breaches, the new egress to meter, and whether the throttle's grace is over.
    fn tick(
        &mut self,
        agent: &str,
        budgets: &Budgets,
        allowed: u64,
        grace: Option<Duration>,
        now: u64,
    ) -> (Vec<ScopedBreach>, u64, bool) {
        let Some(a) = self.agents.get_mut(agent) else {
            return (Vec::new(), 0, false);
        };
        let age = Duration::from_nanos(now.saturating_sub(a.started_ns));
        let breaches = agent_scope(a.meter.wall_clock(budgets, age)).collect();
        let new_egress = allowed.saturating_sub(a.egress_seen);
        a.egress_seen = allowed;
        let grace_over = a.throttled
            && grace.is_some_and(|g| {
                a.throttled_at_ns.is_some_and(|t| {
                    now.saturating_sub(t) >= u64::try_from(g.as_nanos()).unwrap_or(u64::MAX)
                })
            });
        (breaches, new_egress, grace_over)
    }
}

impl State {
    /// Reports budget breaches; a hard one throttles every agent in its scope.
    pub(crate) fn breaches(&mut self, agent: &str, breaches: Vec<ScopedBreach>) {
        for (scope, b) in breaches {
            warn!(
                agent,
                scope,
                budget = b.budget,
                level = b.level.name(),
                value = b.value,
                limit = b.limit,
                "budget limit reached"
            );
            let members: Vec<String> = if scope == "agent" {
                vec![agent.to_owned()]
            } else {
                self.members(&scope)
            };
            for m in &members {
                self.publish(
                    m,
                    0,
                    EventDetail::Budget(BudgetDetail {
                        scope: scope.clone(),
                        budget: b.budget.to_owned(),
                        level: b.level.into(),
                        value: b.value,
                        limit: b.limit,
                    }),
                );
            }
            if b.level == Level::Hard {
                for m in members {
                    self.throttle(&m);
                }
            }
        }
    }

    /// Live agents belonging to `group:NAME` or `workflow:NAME`.
    fn members(&self, scope: &str) -> Vec<String> {
        self.registry
            .iter()
            .map(|(a, _)| a)
            .filter(|a| {
                self.policy
                    .agent(a)
                    .is_some_and(|p| match scope.split_once(':') {
                        Some(("group", g)) => p.groups.iter().any(|x| x == g),
                        Some(("workflow", w)) => p.workflows.iter().any(|x| x == w),
                        _ => false,
                    })
            })
            .cloned()
            .collect()
    }

    /// Over a hard limit: new egress denied by the kernel (verdict `budget`), tool calls
    /// refused; the containment rung follows after the grace, or at the next egress attempt.
    fn throttle(&mut self, agent: &str) {
        let Some(a) = self.budgets.agents.get_mut(agent) else {
            return;
        };
        if a.throttled {
            return;
        }
        a.throttled = true;
        a.throttled_at_ns = Some(boot_ns());
        if let Err(e) = self.rekey(agent) {
            // Fail closed: without the kernel throttle, contain at once.
            error!(agent, error = %e, "could not throttle in the kernel; containing now");
            let rung = self
                .policy
                .agent(agent)
                .map_or(Rung::Paused, |p| p.containment.on_budget);
            self.contain_logged(agent, rung, "budget (throttle failed)");
        }
    }

    /// Adds usage to the agent's meter and to its groups' and workflows'.
    pub(crate) fn meter(&mut self, agent: &str, metric: Metric, amount: f64) -> Vec<ScopedBreach> {
        // Borrowed through its own handle, not cloned: this runs for every DNS query.
        let whole = Arc::clone(&self.policy);
        let Some(policy) = whole.agent(agent) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(a) = self.budgets.agents.get_mut(agent) {
            out.extend(agent_scope(a.meter.add(&policy.budgets, metric, amount)));
        }
        let scopes = policy
            .groups
            .iter()
            .filter_map(|g| Some((format!("group:{g}"), whole.groups.get(g)?)))
            .chain(
                policy
                    .workflows
                    .iter()
                    .filter_map(|w| Some((format!("workflow:{w}"), whole.workflows.get(w)?))),
            );
        for (scope, c) in scopes {
            let meter = self.budgets.scopes.entry(scope.clone()).or_default();
            out.extend(
                meter
                    .add(&c.budgets, metric, amount)
                    .into_iter()
                    .map(|b| (scope.clone(), b)),
            );
        }
        out
    }

    /// The time-driven budget checks of one agent: wall clock and new egress counted by the
    /// kernel (so sampling hides none). Returns the rung to apply when a throttle's grace is
    /// over.
    pub(super) fn tick_budgets(&mut self, agent: &str, now: u64) -> Option<Rung> {
        let policy = self.policy.agent(agent).cloned()?;
        let allowed = self.registry.get(agent).map_or(0, |c| {
            self.maps.stats(c.cgroup_id).allowed + self.containers_allowed(c.agent_id)
        });
        // The grace only matters while the rung is still below the one it leads to.
        let below = self.containment.rung(agent) < policy.containment.on_budget;
        let grace = below.then_some(policy.containment.budget_grace.0);
        let (mut b, new_egress, grace_over) =
            self.budgets
                .tick(agent, &policy.budgets, allowed, grace, now);
        if new_egress > 0 {
            b.extend(self.meter(agent, Metric::EgressConnections, new_egress as f64));
        }
        self.breaches(agent, b);
        grace_over.then_some(policy.containment.on_budget)
    }
}
