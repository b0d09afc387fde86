//! Budgets: metering usage per agent, group and workflow, reporting breaches, throttling.

use tracing::{error, warn};

use super::super::State;
use crate::{
    events::{BudgetDetail, EventDetail},
    runtime::{
        boot_ns,
        budgets::{Breach, Level, Metric},
        Rung,
    },
};

impl State {
    /// Reports budget breaches; a hard one throttles every agent in its scope.
    pub(super) fn breaches(&mut self, agent: &str, breaches: Vec<(String, Breach)>) {
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
                        level: b.level.name().to_owned(),
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
    pub(super) fn members(&self, scope: &str) -> Vec<String> {
        self.cages
            .keys()
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
    pub(super) fn throttle(&mut self, agent: &str) {
        let Some(rt) = self.runtimes.get_mut(agent) else {
            return;
        };
        if rt.throttled {
            return;
        }
        rt.throttled = true;
        rt.throttled_at_ns = Some(boot_ns());
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
    pub(super) fn meter(
        &mut self,
        agent: &str,
        metric: Metric,
        amount: f64,
    ) -> Vec<(String, Breach)> {
        let Some(policy) = self.policy.agent(agent).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(rt) = self.runtimes.get_mut(agent) {
            out.extend(
                rt.meter
                    .add(&policy.budgets, metric, amount)
                    .into_iter()
                    .map(|b| ("agent".to_owned(), b)),
            );
        }
        let scopes = policy
            .groups
            .iter()
            .map(|g| (format!("group:{g}"), self.policy.groups.get(g)))
            .chain(
                policy
                    .workflows
                    .iter()
                    .map(|w| (format!("workflow:{w}"), self.policy.workflows.get(w))),
            )
            .filter_map(|(s, c)| c.map(|c| (s, c.budgets.clone())))
            .collect::<Vec<_>>();
        for (scope, budgets) in scopes {
            let meter = self.scope_meters.entry(scope.clone()).or_default();
            out.extend(
                meter
                    .add(&budgets, metric, amount)
                    .into_iter()
                    .map(|b| (scope.clone(), b)),
            );
        }
        out
    }
}
