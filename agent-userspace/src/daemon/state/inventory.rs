//! `agentcage agents`: every agent the policy defines, with its declared identity, the tier
//! it is enforced with here, its behavior certificate and whether it runs.

use std::sync::Arc;

use super::State;
use crate::{
    control::credential::AgentInventory, identity::AgentIdentity, policy::kernel::CageMode,
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
                let tier = match self.compile_for(&policy, &name, true, false, CageMode::default())
                {
                    Ok(_) => self.kernel.tier.to_string(),
                    Err(e) => format!("refused: {e}"),
                };
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
