//! The daemon's glue between the run-time modules (`crate::runtime`) and what they act on:
//! the kernel maps, the cages' cgroup files and the event bus. Everything runs under the
//! state lock, like every other change.

mod app;
mod approve;
mod assert;
mod budget;
mod contain;

pub use contain::Contained;

use std::{sync::Arc, time::Duration};

use tracing::info;

use super::{KernelMode, State, StateError};
use crate::{
    events::{EgressDetail, Event, EventDetail},
    identity::AgentIdentity,
    policy::{AgentPolicy, Policy},
    runtime::{
        approvals::{Status, Subject},
        assertions::{Observed, PatternKind},
        boot_ns,
        budgets::{Breach, Metric},
        Rung,
    },
};

impl State {
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
        let policy = match Policy::from_yaml(yaml, &path.display().to_string()) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        let applied = match self.apply(policy) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &path).map_err(file_err)?;
        Ok(applied)
    }

    /// The kernel mode a cage's runtime asks for.
    pub(super) fn kernel_mode(&self, agent: &str) -> KernelMode {
        self.runtimes
            .get(agent)
            .map(|r| KernelMode {
                rung: r.rung,
                throttled: r.throttled,
            })
            .unwrap_or_default()
    }

    /// Assertions follow the policy in force; grants of rules that changed are withdrawn.
    pub(super) fn after_policy_change(&mut self) {
        for (agent, rt) in &mut self.runtimes {
            let assertions = self
                .policy
                .agent(agent)
                .map(|p| p.assertions.clone())
                .unwrap_or_default();
            if rt.session.assertions() != assertions.as_slice() {
                rt.session = crate::runtime::assertions::Session::new(assertions);
            }
        }
        // A grant names a rule by its index: if the rule there is no longer the one a person
        // approved, the grant goes (fail closed).
        let mut lapsed = Vec::new();
        for r in self.approvals.list() {
            if let (Subject::Rule { index, text, .. }, Status::Approved { .. }) =
                (&r.subject, &r.status)
            {
                let same = self
                    .policy
                    .agent(&r.agent)
                    .and_then(|p| p.egress.allow.get(*index as usize))
                    .is_some_and(|rule| rule.describe() == *text && rule.requires_approval);
                if !same {
                    lapsed.push(r);
                }
            }
        }
        for r in lapsed {
            if let Some(key) = r.subject.kernel_key(r.cgroup_id) {
                self.approval_map.revoke(&key);
            }
            // Expire it now: a later attempt raises a fresh request against the new rule.
            let _ = self.approvals.expire_one(r.id);
        }
    }

    /// Publishes an event the daemon raises itself for `agent`.
    pub(super) fn publish(&mut self, agent: &str, pid: u32, detail: EventDetail) {
        let agent_seq = self
            .agent_ids
            .get(agent)
            .copied()
            .map_or(0, |id| self.next_seq(id));
        let now = boot_ns();
        let cgroup_id = self.cages.get(agent).map_or(0, |c| c.cgroup_id);
        let time = i128::from(now) + self.boot_to_wall_ns;
        self.bus.publish(Event {
            time_unix_nano: u64::try_from(time).unwrap_or(0),
            kernel_ts_ns: now,
            agent: Some(AgentIdentity::for_agent(agent).to_string()),
            agent_seq,
            pid,
            tgid: pid,
            comm: String::new(),
            cgroup_id,
            policy_hash: self.policy.hash().to_owned(),
            detail,
        });
    }

    /// Re-installs the cage's kernel state for its rung and throttle: a fresh slot, then one
    /// update of its `CAGES` entry, so no decision sees half of the change.
    pub(super) fn rekey(&mut self, agent: &str) -> Result<(), StateError> {
        let mode = self.kernel_mode(agent);
        let (compiled, flags, allow_sample) =
            Self::compile_for(&self.policy, &self.kernel, agent, false, false, mode)?;
        let slot = self.take_slot();
        let entries = self.maps.fill_slot(slot, &compiled)?;
        self.slot_paths
            .insert(slot, Arc::new(compiled.files.paths.clone()));
        let Some(cage) = self.cages.get_mut(agent) else {
            self.maps.clear_slot(&entries);
            return Err(StateError::NoCage(agent.to_owned()));
        };
        let config = agent_common::cage::CageConfig {
            agent_id: cage.agent_id,
            policy_slot: slot,
            flags,
            allow_sample,
        };
        if let Err(e) = self.maps.set_cage(cage.cgroup_id, config) {
            self.maps.clear_slot(&entries);
            return Err(e.into());
        }
        self.slot_policies.insert(slot, Arc::clone(&self.policy));
        let old = std::mem::replace(&mut cage.slot, entries);
        self.retire(old);
        Ok(())
    }

    /// Feeds an event of the bus to the run-time checks (kernel decisions; the daemon's own
    /// events are only remembered for snapshots).
    pub fn on_event(&mut self, event: &Arc<Event>) {
        let Some(agent) = event
            .agent
            .as_deref()
            .and_then(|a| a.strip_prefix("agent:"))
            .map(str::to_owned)
        else {
            return;
        };
        let policy = Arc::clone(&self.policy);
        let agent_policy = policy.agent(&agent);
        let keep = agent_policy.map_or(200, |p| p.containment.snapshot_events);
        let Some(rt) = self.runtimes.get_mut(&agent) else {
            return;
        };
        rt.remember(Arc::clone(event), keep);
        let EventDetail::Egress(e) = &event.detail else {
            return;
        };
        let now = event.kernel_ts_ns;
        match e.verdict.as_str() {
            "allow" => {
                let name = rule_index(&e.rule).and_then(|i| {
                    agent_policy
                        .and_then(|p| p.egress.allow.get(i))
                        .and_then(|r| r.name.clone())
                });
                self.observe(
                    &agent,
                    Observed {
                        kind: PatternKind::Egress,
                        arg: name,
                        at_ns: now,
                    },
                );
            }
            "pending-approval" => {
                let subject =
                    match rule_index(&e.rule) {
                        Some(i) => agent_policy.and_then(|p| p.egress.allow.get(i)).map(|r| {
                            Subject::Rule {
                                index: u32::try_from(i).unwrap_or(u32::MAX),
                                name: r.name.clone(),
                                text: r.describe(),
                            }
                        }),
                        None => destination(e),
                    };
                if let Some(subject) = subject {
                    self.request_approval(&agent, subject);
                }
                self.denied(&agent, agent_policy, e, now);
            }
            "deny" => self.denied(&agent, agent_policy, e, now),
            "budget" => {
                let on_budget = agent_policy.map_or(Rung::Paused, |p| p.containment.on_budget);
                let rung = self.runtimes.get(&agent).map(|r| r.rung);
                if rung.is_some_and(|r| r < on_budget) {
                    self.contain_logged(&agent, on_budget, "budget: new egress while throttled");
                }
            }
            _ => {}
        }
    }

    /// Deny-rate anomaly and loop detection on denied destinations.
    pub(super) fn denied(
        &mut self,
        agent: &str,
        policy: Option<&AgentPolicy>,
        e: &EgressDetail,
        now: u64,
    ) {
        let Some(policy) = policy else { return };
        let Some(rt) = self.runtimes.get_mut(agent) else {
            return;
        };
        let mut actions = Vec::new();
        if let Some(rate) = policy.containment.deny_rate {
            let window = u64::try_from(rate.window.0.as_nanos()).unwrap_or(u64::MAX);
            rt.denials.push_back(now);
            while rt
                .denials
                .front()
                .is_some_and(|&t| now.saturating_sub(t) >= window)
            {
                rt.denials.pop_front();
            }
            if rt.denials.len() >= rate.denials as usize && rt.rung < rate.rung {
                rt.denials.clear();
                actions.push((rate.rung, "deny-rate anomaly".to_owned()));
            }
        }
        let key = format!(
            "denied {}:{}",
            e.dst_addr.map(|a| a.to_string()).unwrap_or_default(),
            e.dst_port
        );
        if let Some(b) = rt.meter.repeat(&policy.budgets, &key, now) {
            self.breaches(agent, vec![("agent".to_owned(), b)]);
        }
        for (rung, why) in actions {
            self.contain_logged(agent, rung, &why);
        }
    }

    /// Time-driven checks: approvals lapse, `within` deadlines pass, wall-clock budgets, new
    /// egress counted by the kernel, and throttled agents reach the end of their grace.
    pub fn tick(&mut self) {
        let now = boot_ns();
        for r in self.approvals.expire(now) {
            if let Some(key) = r.subject.kernel_key(r.cgroup_id) {
                self.approval_map.revoke(&key);
            }
            info!(id = r.id, agent = r.agent, "approval expired");
            self.publish_approval(&r);
        }
        let agents: Vec<String> = self.runtimes.keys().cloned().collect();
        for agent in agents {
            let Some(policy) = self.policy.agent(&agent).cloned() else {
                continue;
            };
            let cgroup_id = self.cages.get(&agent).map(|c| c.cgroup_id);
            let allowed = cgroup_id.map_or(0, |id| self.maps.stats(id).allowed);
            let Some(rt) = self.runtimes.get_mut(&agent) else {
                continue;
            };
            let violations = rt.session.tick(now);
            let age = Duration::from_nanos(now.saturating_sub(rt.started_ns));
            let mut b: Vec<(String, Breach)> = rt
                .meter
                .wall_clock(&policy.budgets, age)
                .into_iter()
                .map(|x| ("agent".to_owned(), x))
                .collect();
            let new_egress = allowed.saturating_sub(rt.egress_seen);
            rt.egress_seen = allowed;
            let grace_over = rt.throttled
                && rt.rung < policy.containment.on_budget
                && rt.throttled_at_ns.is_some_and(|t| {
                    now.saturating_sub(t)
                        >= u64::try_from(policy.containment.budget_grace.0.as_nanos())
                            .unwrap_or(u64::MAX)
                });
            if new_egress > 0 {
                b.extend(self.meter(&agent, Metric::EgressConnections, new_egress as f64));
            }
            self.breaches(&agent, b);
            self.violations(&agent, violations);
            if grace_over {
                self.contain_logged(&agent, policy.containment.on_budget, "budget: grace over");
            }
        }
    }
}

/// `egress.allow[N]` → N.
fn rule_index(rule: &str) -> Option<usize> {
    rule.strip_prefix("egress.allow[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The destination of a denied attempt, as an approval subject.
fn destination(e: &EgressDetail) -> Option<Subject> {
    let ip = e.dst_addr?;
    let mut addr = [0u8; 16];
    let family = match ip {
        std::net::IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            2
        }
        std::net::IpAddr::V6(v6) => {
            addr = v6.octets();
            10
        }
    };
    Some(Subject::Destination {
        family,
        addr,
        port: e.dst_port,
        text: std::net::SocketAddr::new(ip, e.dst_port).to_string(),
    })
}
