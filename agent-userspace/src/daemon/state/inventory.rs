//! `agentcage agents`: every agent the policy defines, with its declared identity, the tier
//! it is enforced with here, its behavior certificate and whether it runs.

use std::sync::Arc;

use super::State;
use crate::{
    control::credential::AgentInventory,
    identity::AgentIdentity,
    policy::{
        kernel::{cage_settings, compile_agent, CageMode, Shortfall},
        Policy, Rung,
    },
};

impl State {
    /// The trust domain of agents' SPIFFE IDs.
    pub fn trust_domain(&self) -> String {
        self.credentials.trust_domain.to_string()
    }

    /// Every agent the policy names, and every running one (under `default_agent`).
    pub fn agents(&self) -> Vec<AgentInventory> {
        let policy = Arc::clone(&self.policy);
        let mut names: Vec<String> = policy.agents.keys().cloned().collect();
        for running in self.registry.names_of_cages() {
            if !names.contains(&running) {
                names.push(running);
            }
        }
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let identity = AgentIdentity::for_agent(&name);
                let tier = self.tier_of(&policy, &name);
                let running = self.registry.contains(&name);
                AgentInventory {
                    spiffe_id: self.credentials.trust_domain.agent(&identity).to_string(),
                    id: identity.to_string(),
                    identity: policy
                        .agent(&name)
                        .map(|p| p.identity.clone())
                        .unwrap_or_default(),
                    tier,
                    certificate: self.certificate_state(&name),
                    running,
                    rung: running.then(|| self.containment.rung(&name).name().to_owned()),
                    name,
                }
            })
            .collect()
    }
}

impl State {
    /// The tier the agent gets here, or why it would be refused (as `run` would say, without
    /// the warnings a real start logs).
    fn tier_of(&self, policy: &Policy, agent: &str) -> String {
        // Only what the kernel must enforce matters here, not the application socket.
        let compiled = match compile_agent(policy, agent, Rung::Observe, None) {
            Ok(Some(c)) => c,
            Ok(None) => return "refused: the policy defines no such agent".to_owned(),
            Err(e) => return format!("refused: {e}"),
        };
        let caps = self.kernel.caps();
        match cage_settings(policy.agent(agent), &compiled, caps, CageMode::default()).1 {
            None => self.kernel.caps.tier.to_string(),
            Some(Shortfall::Feature(feature)) => format!(
                "refused: {} cannot be enforced here; {}",
                feature.describe(),
                self.kernel.caps.lacks(feature).unwrap_or_default()
            ),
            Some(Shortfall::Controller { limit, controller }) => format!(
                "refused: {limit} cannot be enforced here; the cgroup v2 hierarchy has no \
                 {controller} controller"
            ),
        }
    }
}
