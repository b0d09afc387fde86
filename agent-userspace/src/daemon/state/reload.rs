//! Policy changes: a reload of the file, or a policy applied as text. Every cage is compiled
//! first (the change is refused whole if one fails), written into fresh slots, then each
//! cage is switched with one map update; the old slots are retired.

use std::sync::Arc;

use tracing::{info, warn};

use super::{State, StateError};
use crate::{
    bpf::SlotEntries,
    events::{Event, EventDetail, PolicyDetail, PolicyResult},
    policy::Policy,
};

impl State {
    /// Reads the policy file again and swaps it in for every cage. A policy that fails to
    /// parse, validate or compile is refused and the old one stays in force.
    pub fn reload(&mut self) -> Result<Arc<Policy>, StateError> {
        let result = Policy::load(&self.policy_path)
            .map_err(StateError::from)
            .and_then(|policy| {
                if policy.hash() == self.policy.hash() {
                    // Unchanged (e.g. the file was rewritten by `policy apply`): nothing to swap.
                    return Ok(Arc::clone(&self.policy));
                }
                self.apply(policy)
            });
        let (hash, detail) = match &result {
            Ok(p) => (
                p.hash().to_owned(),
                PolicyDetail {
                    result: PolicyResult::Applied,
                    source: p.source().to_owned(),
                    error: None,
                },
            ),
            Err(e) => (
                self.policy.hash().to_owned(),
                PolicyDetail {
                    result: PolicyResult::Refused,
                    source: self.policy_path.display().to_string(),
                    error: Some(crate::errors::render(e)),
                },
            ),
        };
        self.bus
            .publish(Event::daemon(&hash, EventDetail::Policy(detail)));
        result
    }

    /// Swaps `policy` in: compile everything first, fill fresh slots, then switch each cage
    /// with one map update, then retire the old slots.
    pub fn apply(&mut self, policy: Policy) -> Result<Arc<Policy>, StateError> {
        self.check_container_policy(&policy)?;
        let policy = Arc::new(policy);
        let agents = self.registry.names_of_cages();
        let mut compiled = Vec::with_capacity(agents.len());
        for agent in agents {
            let mode = self.mode(&agent);
            let c = self.compile_for(&policy, &agent, false, false, mode)?;
            compiled.push((agent, c));
        }
        let mut filled = Vec::with_capacity(compiled.len());
        for (agent, c) in compiled {
            match self.fill(&policy, c) {
                Ok(f) => filled.push((agent, f)),
                Err(e) => {
                    for (_, f) in &filled {
                        self.maps.clear_slot(&f.entries);
                    }
                    return Err(e);
                }
            }
        }
        for (agent, f) in filled {
            let Some((cgroup_id, agent_id)) =
                self.registry.get(&agent).map(|c| (c.cgroup_id, c.agent_id))
            else {
                self.maps.clear_slot(&f.entries);
                continue;
            };
            // Content rules may be new to it: its execs wait for the daemon before they count.
            self.watch_cage(&agent, f.settings.flags);
            match self.switch_in(cgroup_id, agent_id, f) {
                Ok(entries) => self.replace_slot(&agent, entries),
                Err(e) => warn!(agent, error = %e, "cage kept its previous policy"),
            }
        }
        self.policy = policy;
        for (agent, cage) in self.registry.iter() {
            if let Err(e) = self.apply_limits(agent, &cage.dir) {
                warn!(agent, error = %e, "cage kept its previous limits");
            }
        }
        self.assertions.follow(&self.policy);
        self.approvals.lapse_changed_rules(&self.policy);
        self.recheck_identities();
        info!(
            source = self.policy.source(),
            policy_hash = self.policy.hash(),
            "policy in force"
        );
        Ok(Arc::clone(&self.policy))
    }

    /// Gives `agent`'s cage its new slot and retires the old one.
    pub(super) fn replace_slot(&mut self, agent: &str, entries: SlotEntries) {
        if let Some(cage) = self.registry.get_mut(agent) {
            let old = std::mem::replace(&mut cage.slot, entries);
            self.slots.retire(old, &mut self.maps);
        }
    }

    /// Swaps in a policy given as text (`agentcage policy apply`) and writes it to the
    /// daemon's policy file, so that reloads and restarts keep it. The file is written beside
    /// the old one first and renamed over it only once the policy is in force.
    pub fn apply_text(&mut self, yaml: &str, source: &str) -> Result<Arc<Policy>, StateError> {
        // Errors name the file the person gave.
        Policy::from_yaml(yaml, source)?;
        let path = self.policy_path.clone();
        let file_err = |source| StateError::PolicyFile {
            path: path.clone(),
            source,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.apply"));
        std::fs::write(&tmp, yaml).map_err(file_err)?;
        // The policy names the daemon's file from now on, as a reload would.
        let applied = Policy::from_yaml(yaml, &path.display().to_string())
            .map_err(StateError::from)
            .and_then(|policy| self.apply(policy));
        match applied {
            Ok(p) => {
                std::fs::rename(&tmp, &path).map_err(file_err)?;
                Ok(p)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}
