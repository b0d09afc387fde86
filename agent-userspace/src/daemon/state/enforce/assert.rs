//! Assertions: feeding observations to the agent's session and acting on violations.

use tracing::warn;

use super::super::State;
use crate::{
    events::{AssertionDetail, EventDetail},
    runtime::{
        assertions::{Observed, Violation},
        Rung,
    },
};

impl State {
    /// Feeds an observation to the agent's assertions and acts on violations.
    pub(super) fn observe(&mut self, agent: &str, seen: Observed) {
        let Some(rt) = self.runtimes.get_mut(agent) else {
            return;
        };
        let violations = rt.session.observe(&seen);
        self.violations(agent, violations);
    }

    /// Reports each violation and applies the policy's `on_assertion` rung (once, for all).
    pub(super) fn violations(&mut self, agent: &str, violations: Vec<Violation>) {
        if violations.is_empty() {
            return;
        }
        let rung = self
            .policy
            .agent(agent)
            .map_or(Rung::Paused, |p| p.containment.on_assertion);
        for v in &violations {
            warn!(
                agent,
                assertion = v.assertion,
                violation = v.what,
                "assertion violated"
            );
            self.publish(
                agent,
                0,
                EventDetail::Assertion(AssertionDetail {
                    assertion: v.assertion.clone(),
                    violation: v.what.clone(),
                }),
            );
        }
        let current = self.runtimes.get(agent).map_or(Rung::Observe, |r| r.rung);
        if current < rung {
            let reason = format!("assertion: {}", violations[0].assertion);
            self.contain_logged(agent, rung, &reason);
        }
    }
}
