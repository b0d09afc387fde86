//! Assertions: each agent session's online evaluation, fed observations, acting on
//! violations.

use std::collections::HashMap;

use tracing::warn;

use super::super::State;
use crate::{
    events::{AssertionDetail, EventDetail},
    policy::{AgentPolicy, Policy},
    runtime::{
        assertions::{Observed, Session, Violation},
        Rung,
    },
};

/// Every agent session's assertions.
#[derive(Default)]
pub(crate) struct AssertionState {
    sessions: HashMap<String, Session>,
}

impl AssertionState {
    /// A new session under the agent's policy (None: unknown to the policy, no assertions).
    pub(crate) fn start(&mut self, agent: &str, policy: Option<&AgentPolicy>) {
        let assertions = policy.map(|p| p.assertions.clone()).unwrap_or_default();
        self.sessions
            .insert(agent.to_owned(), Session::new(assertions));
    }

    /// The session ended.
    pub(crate) fn forget(&mut self, agent: &str) {
        self.sessions.remove(agent);
    }

    /// A new policy: sessions whose assertions changed start over under the new ones.
    pub(crate) fn follow(&mut self, policy: &Policy) {
        for (agent, session) in &mut self.sessions {
            let assertions = policy
                .agent(agent)
                .map(|p| p.assertions.clone())
                .unwrap_or_default();
            if session.assertions() != assertions.as_slice() {
                *session = Session::new(assertions);
            }
        }
    }

    /// `within` deadlines that passed by `now`.
    pub(super) fn tick(&mut self, agent: &str, now: u64) -> Vec<Violation> {
        self.sessions
            .get_mut(agent)
            .map(|s| s.tick(now))
            .unwrap_or_default()
    }
}

impl State {
    /// Feeds an observation to the agent's assertions and acts on violations.
    pub(super) fn observe(&mut self, agent: &str, seen: Observed) {
        let Some(session) = self.assertions.sessions.get_mut(agent) else {
            return;
        };
        let violations = session.observe(&seen);
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
        if self.containment.rung(agent) < rung {
            let reason = format!("assertion: {}", violations[0].assertion);
            self.contain_logged(agent, rung, &reason);
        }
    }
}
