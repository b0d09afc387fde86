//! What `agentcage status` reports: agents, cages, the kernel's counters, the tier.

use std::collections::BTreeMap;

use agent_common::event::EventKind;

use super::State;
use crate::control::{AgentStatus, StatusReport};

impl State {
    /// Agents, cages and counters.
    pub fn status(&self) -> StatusReport {
        let agents = self
            .registry
            .iter()
            .map(|(name, cage)| {
                let stats = self.maps.stats(cage.cgroup_id);
                let (dns_grants, dns_evicted) = self.dns.counts(cage.cgroup_id);
                AgentStatus {
                    name: name.clone(),
                    identity: cage.identity.to_string(),
                    cgroup: cage.dir.path().display().to_string(),
                    cgroup_id: cage.cgroup_id,
                    pids: cage.dir.procs().unwrap_or_default(),
                    allowed: stats.allowed,
                    denied: stats.denied,
                    lost: stats.lost,
                    lost_by_kind: lost_by_kind(&stats.lost_by_kind),
                    killed: stats.killed,
                    rung: self.containment.rung(name).name().to_owned(),
                    throttled: self.budgets.throttled(name),
                    policy_hash: self
                        .slots
                        .policy(cage.slot.slot())
                        .map(|p| p.hash().to_owned())
                        .unwrap_or_default(),
                    containers: self.container_status(cage.agent_id),
                    spiffe_id: self
                        .credentials
                        .trust_domain
                        .agent(&cage.identity)
                        .to_string(),
                    certificate: cage.certificate.clone(),
                    dns_grants: dns_grants as u64,
                    dns_evicted,
                }
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            policy_source: self.policy.source().to_owned(),
            policy_hash: self.policy.hash().to_owned(),
            cgroup_root: self.root.dir().path().display().to_string(),
            global_lost: self.maps.global_lost(),
            tier: self.kernel.caps.tier.to_string(),
            tier_missing: self.kernel.caps.missing.clone(),
            content_hashes: self.kernel.caps().content_hashes,
            refused: self.kernel.caps.refused(),
            unix: Some(self.kernel.caps.unix.clone()),
            hooks: self.hooks(),
            agents,
        }
    }

    /// Events lost so far: every live cage's plus those of callers in no cage.
    pub fn total_lost(&self) -> u64 {
        let caged: u64 = self
            .registry
            .iter()
            .map(|(_, c)| self.maps.stats(c.cgroup_id).lost)
            .sum();
        caged + self.maps.global_lost()
    }
}

/// Per-kind loss counters by kind name.
fn lost_by_kind(counts: &[u64; EventKind::COUNT]) -> BTreeMap<String, u64> {
    EventKind::ALL
        .into_iter()
        .map(|kind| (kind.name().to_owned(), counts[kind as usize]))
        .collect()
}
