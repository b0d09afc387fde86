//! The run-time enforcement concerns, each owning its state: containment (`contain`),
//! approvals (`approve`), budgets (`budget`), assertions (`assert`), application events
//! (`app`), credentials (`credential`) and behavior certificates (`certificate`). This module feeds them what the kernel decided (from the event bus) and the
//! passing of time; the logic itself is `crate::runtime`'s.

mod app;
mod approve;
mod assert;
mod budget;
mod certificate;
mod contain;
mod credential;

pub(crate) use approve::ApprovalState;
pub(crate) use assert::AssertionState;
pub(crate) use budget::BudgetState;
pub(crate) use contain::ContainmentState;
pub use contain::{ContainJob, Contained, JobOutcome};
pub use credential::CredentialSetup;
pub(crate) use credential::CredentialState;

use std::{net::SocketAddr, sync::Arc};

use super::State;
use crate::{
    clock::boot_ns,
    events::{EgressDetail, EgressHook, Event, EventDetail, ExecDetail, RuleRef, Verdict},
    policy::AgentPolicy,
    runtime::{
        approvals::Subject,
        assertions::{Observed, PatternKind},
        Rung,
    },
};

impl State {
    /// Feeds an event of the bus to the run-time checks (kernel decisions; the daemon's own
    /// events are only remembered for snapshots).
    pub fn on_event(&mut self, event: &Arc<Event>) {
        let Some(agent) = event.agent_name().map(str::to_owned) else {
            return;
        };
        let policy = Arc::clone(&self.policy);
        let agent_policy = policy.agent(&agent);
        let keep = agent_policy.map_or(200, |p| p.containment.snapshot_events);
        if !self.containment.has(&agent) {
            return;
        }
        self.containment.remember(&agent, Arc::clone(event), keep);
        match &event.detail {
            EventDetail::Exec(x) => self.on_exec(&agent, agent_policy, x, event.kernel_ts_ns),
            // A peer reaching the agent is not the agent's doing: it feeds neither assertions
            // nor the deny rate (an outsider must not be able to get an agent contained).
            EventDetail::Egress(e) if e.hook == EgressHook::SkbIngress => {}
            EventDetail::EgressSummary(s) if s.decision.hook == EgressHook::SkbIngress => {}
            EventDetail::Egress(e) => {
                self.on_egress(&agent, agent_policy, e, (event.kernel_ts_ns, 1));
            }
            // A flood's repeats count at the time of the last of them: the checks see every
            // decision (fail closed: a summary never makes a rate look lower).
            EventDetail::EgressSummary(s) => {
                self.on_egress(
                    &agent,
                    agent_policy,
                    &s.decision,
                    (event.kernel_ts_ns, s.count),
                );
            }
            _ => {}
        }
    }

    /// An exec that ran counts for assertions (`exec("terraform apply")`), its program named
    /// as typed; one the kernel refused for want of approval raises the request.
    fn on_exec(&mut self, agent: &str, policy: Option<&AgentPolicy>, x: &ExecDetail, at: u64) {
        match x.verdict {
            Verdict::Allow => {
                let mut words = x.argv.clone();
                if let Some(first) = words.first_mut() {
                    if let Some(base) = first.rsplit('/').next() {
                        *first = base.to_owned();
                    }
                }
                self.observe(
                    agent,
                    Observed {
                        kind: PatternKind::Exec,
                        arg: Some(words.join(" ")),
                        at_ns: at,
                    },
                );
            }
            Verdict::PendingApproval => {
                let RuleRef::ApprovalsExec(index) = x.rule else {
                    return;
                };
                let command = policy.and_then(|p| p.approvals.exec.get(index as usize).cloned());
                if let Some(command) = command {
                    let subject = Subject::Exec {
                        command,
                        index: Some(index),
                    };
                    self.request_approval(agent, subject);
                }
            }
            _ => {}
        }
    }

    /// `n` decisions of the same kind, the last at `at` (more than one for a summary).
    fn on_egress(
        &mut self,
        agent: &str,
        policy: Option<&AgentPolicy>,
        e: &EgressDetail,
        (at, n): (u64, u64),
    ) {
        let rule = e
            .rule
            .egress_allow()
            .and_then(|i| policy?.egress.allow.get(i));
        match e.verdict {
            Verdict::Allow => {
                let name = rule.and_then(|r| r.name.clone());
                self.observe(
                    agent,
                    Observed {
                        kind: PatternKind::Egress,
                        arg: name,
                        at_ns: at,
                    },
                );
            }
            Verdict::PendingApproval => {
                let subject = match (e.rule.egress_allow(), rule) {
                    (Some(i), Some(r)) => Some(Subject::Rule {
                        index: u32::try_from(i).unwrap_or(u32::MAX),
                        name: r.name.clone(),
                        text: r.describe(),
                    }),
                    (Some(_), None) => None,
                    (None, _) => destination(e),
                };
                if let Some(subject) = subject {
                    self.request_approval(agent, subject);
                }
                self.denied(agent, policy, e, (at, n));
            }
            Verdict::Deny => self.denied(agent, policy, e, (at, n)),
            Verdict::Budget => {
                let on_budget = policy.map_or(Rung::Paused, |p| p.containment.on_budget);
                if self.containment.rung(agent) < on_budget {
                    self.contain_logged(agent, on_budget, "budget: new egress while throttled");
                }
            }
            _ => {}
        }
    }

    /// Deny-rate anomaly and loop detection on `n` denials of one destination.
    fn denied(
        &mut self,
        agent: &str,
        policy: Option<&AgentPolicy>,
        e: &EgressDetail,
        at: (u64, u64),
    ) {
        let key = format!(
            "denied {}:{}",
            e.dst_addr.map(|a| a.to_string()).unwrap_or_default(),
            e.dst_port
        );
        self.denial(agent, policy, &key, at);
    }

    /// `n` denials count toward the deny-rate anomaly, and `key` (what was denied) toward
    /// loop detection.
    pub(crate) fn denial(
        &mut self,
        agent: &str,
        policy: Option<&AgentPolicy>,
        key: &str,
        (now, n): (u64, u64),
    ) {
        let Some(policy) = policy else { return };
        let mut contain = None;
        if let Some(rate) = policy.containment.deny_rate {
            let window = u64::try_from(rate.window.0.as_nanos()).unwrap_or(u64::MAX);
            let below = self.containment.rung(agent) < rate.rung;
            if self
                .containment
                .denial_rate_reached(agent, (now, n), window, rate.denials, below)
            {
                contain = Some(rate.rung);
            }
        }
        if let Some(b) = self.budgets.repeat(agent, &policy.budgets, key, (now, n)) {
            self.breaches(agent, vec![b]);
        }
        if let Some(rung) = contain {
            self.contain_logged(agent, rung, "deny-rate anomaly");
        }
    }

    /// Time-driven checks: approvals lapse, `within` deadlines pass, wall-clock budgets, new
    /// egress counted by the kernel, and throttled agents reach the end of their grace.
    pub fn tick(&mut self) {
        let now = boot_ns();
        self.expire_approvals(now);
        self.dns_tick(now);
        for agent in self.registry.names_of_cages() {
            if self.policy.agent(&agent).is_none() {
                continue;
            }
            let violations = self.assertions.tick(&agent, now);
            let grace_over = self.tick_budgets(&agent, now);
            self.violations(&agent, violations);
            if let Some(rung) = grace_over {
                self.contain_logged(&agent, rung, "budget: grace over");
            }
        }
    }
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
        text: SocketAddr::new(ip, e.dst_port).to_string(),
    })
}
