//! The daemon's glue between the run-time modules (`crate::runtime`) and what they act on:
//! the kernel maps, the cages' cgroup files and the event bus. Everything runs under the
//! state lock, like every other change.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tracing::{error, info, warn};

use super::{KernelMode, State, StateError};
use crate::{
    events::{
        AppEvent, ApprovalDetail, AssertionDetail, BudgetDetail, ContainmentDetail, EgressDetail,
        Event, EventDetail, Phase,
    },
    identity::AgentIdentity,
    policy::{AgentPolicy, Policy},
    runtime::{
        appevents::{AppReply, Decision},
        approvals::{Request, Status, Subject},
        assertions::{Observed, PatternKind, Violation},
        boot_ns,
        budgets::{Breach, Latency, Level, Metric},
        containment::{self, SnapshotInfo},
        Rung,
    },
};

/// What a containment request did.
#[derive(Clone, Debug)]
pub struct Contained {
    /// The agent.
    pub agent: String,
    /// The rung now in force.
    pub rung: Rung,
    /// The rung before.
    pub previous: Rung,
    /// The forensic snapshot, when one was written.
    pub snapshot: Option<PathBuf>,
}

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
    pub(super) fn publish(&self, agent: &str, pid: u32, detail: EventDetail) {
        let now = boot_ns();
        let cgroup_id = self.cages.get(agent).map_or(0, |c| c.cgroup_id);
        let time = i128::from(now) + self.boot_to_wall_ns;
        self.bus.publish(Event {
            time_unix_nano: u64::try_from(time).unwrap_or(0),
            kernel_ts_ns: now,
            agent: Some(AgentIdentity::for_agent(agent).to_string()),
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
    fn rekey(&mut self, agent: &str) -> Result<(), StateError> {
        let mode = self.kernel_mode(agent);
        let (compiled, flags, allow_sample) = Self::compile_for(&self.policy, agent, false, mode)?;
        let slot = self.take_slot();
        let entries = self.maps.fill_slot(slot, &compiled)?;
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
        self.retire(&old);
        Ok(())
    }

    /// Moves the agent's cage to `rung`: the kernel maps for observe, read-only and
    /// approval-required; freeze and snapshot for paused; freeze, snapshot and kill for
    /// killed. `reason` goes on the event and into the snapshot.
    pub fn contain(
        &mut self,
        agent: &str,
        rung: Rung,
        reason: &str,
    ) -> Result<Contained, StateError> {
        let dir = self
            .cages
            .get(agent)
            .map(|c| c.dir.clone())
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))?;
        let previous = self.runtimes.get(agent).map_or(Rung::Observe, |r| r.rung);
        let mut snapshot = None;
        match rung {
            Rung::Observe | Rung::ReadOnly | Rung::ApprovalRequired => {
                self.set_rung(agent, rung);
                if let Err(e) = self.rekey(agent) {
                    self.set_rung(agent, previous);
                    return Err(e);
                }
                if previous >= Rung::Paused {
                    containment::thaw(&dir)?;
                }
            }
            Rung::Paused => {
                // Narrow the kernel state first, so that a thaw by anyone else still finds
                // the cage restricted; then freeze, then look.
                self.set_rung(agent, rung);
                if let Err(e) = self.rekey(agent) {
                    warn!(agent, error = %e, "could not narrow egress before pausing");
                }
                containment::freeze(&dir)?;
                snapshot = self.write_snapshot(agent, &dir, rung, reason);
            }
            Rung::Killed => {
                self.set_rung(agent, rung);
                // The kill switch must kill: a failed freeze or snapshot is logged, not fatal.
                if let Err(e) = containment::freeze(&dir) {
                    error!(agent, error = %e, "freeze before kill failed; killing anyway");
                }
                snapshot = self.write_snapshot(agent, &dir, rung, reason);
                containment::kill(&dir)?;
            }
        }
        warn!(agent, rung = %rung, previous = %previous, reason, snapshot = ?snapshot, "containment");
        self.publish(
            agent,
            0,
            EventDetail::Containment(ContainmentDetail {
                rung: rung.name().to_owned(),
                previous: previous.name().to_owned(),
                reason: reason.to_owned(),
                snapshot: snapshot.as_ref().map(|p| p.display().to_string()),
            }),
        );
        Ok(Contained {
            agent: agent.to_owned(),
            rung,
            previous,
            snapshot,
        })
    }

    fn set_rung(&mut self, agent: &str, rung: Rung) {
        if let Some(rt) = self.runtimes.get_mut(agent) {
            rt.rung = rung;
        }
    }

    /// Thaws a paused cage and puts it back on observe, lifting any budget throttle (a person
    /// decided the agent may go on; the budgets throttle again at the next use over them).
    pub fn resume(&mut self, agent: &str, who: &str) -> Result<Contained, StateError> {
        if let Some(rt) = self.runtimes.get_mut(agent) {
            rt.throttled = false;
            rt.throttled_at_ns = None;
            rt.meter.rearm();
        }
        self.contain(agent, Rung::Observe, &format!("resumed by {who}"))
    }

    /// The kill switch: kills every cage. Returns each agent with its outcome.
    pub fn kill_all(&mut self, who: &str) -> Vec<(String, Result<Contained, StateError>)> {
        let agents: Vec<String> = self.cages.keys().cloned().collect();
        agents
            .into_iter()
            .map(|a| {
                let r = self.contain(&a, Rung::Killed, &format!("kill switch ({who})"));
                (a, r)
            })
            .collect()
    }

    fn write_snapshot(
        &self,
        agent: &str,
        dir: &crate::cage::CgroupDir,
        rung: Rung,
        reason: &str,
    ) -> Option<PathBuf> {
        let events: Vec<Arc<Event>> = self
            .runtimes
            .get(agent)
            .map(|r| r.recent.iter().cloned().collect())
            .unwrap_or_default();
        let info = SnapshotInfo {
            agent,
            rung,
            reason,
            policy_hash: self.policy.hash(),
            events: &events,
        };
        match containment::snapshot(&self.snapshot_dir, dir, &info) {
            Ok(p) => Some(p),
            Err(e) => {
                error!(agent, error = %e, "forensic snapshot failed");
                None
            }
        }
    }

    /// Every approval request.
    pub fn approvals(&self) -> Vec<Request> {
        self.approvals.list()
    }

    /// Grants request `id` for `duration` (the policy's `default_for` when None).
    pub fn approve(
        &mut self,
        id: u64,
        approver: &str,
        duration: Option<Duration>,
    ) -> Result<Request, StateError> {
        let request = self
            .approvals
            .get(id)
            .cloned()
            .ok_or(crate::runtime::approvals::ApprovalError::Unknown(id))?;
        let rules = self
            .policy
            .agent(&request.agent)
            .map(|p| p.approvals.clone())
            .unwrap_or_default();
        let duration = duration.unwrap_or(rules.default_for.0);
        if duration > rules.max_for.0 {
            return Err(crate::runtime::approvals::ApprovalError::TooLong {
                asked: duration,
                max: rules.max_for.0,
            }
            .into());
        }
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let until_boot = boot_ns().saturating_add(nanos);
        let until_unix =
            u64::try_from(i128::from(until_boot) + self.boot_to_wall_ns).unwrap_or(u64::MAX);
        // Check the state first (a decided request must not be granted in the kernel).
        self.approvals
            .approve(id, approver, until_boot, until_unix)?;
        if let Some(key) = request.subject.kernel_key(request.cgroup_id) {
            if let Err(e) = self.approval_map.grant(&key, until_boot) {
                let _ = self.approvals.expire_one(id);
                return Err(e.into());
            }
        }
        let request = self.approvals.get(id).cloned().unwrap_or(request);
        info!(
            id,
            agent = request.agent,
            approver,
            ?duration,
            subject = request.subject.describe(),
            "approved"
        );
        self.publish_approval(&request);
        let name = request.subject.assertion_name();
        self.observe(
            &request.agent,
            Observed {
                kind: PatternKind::Approval,
                arg: name,
                at_ns: boot_ns(),
            },
        );
        Ok(request)
    }

    /// Refuses request `id`.
    pub fn deny(&mut self, id: u64, approver: &str) -> Result<Request, StateError> {
        let request = self.approvals.deny(id, approver)?.clone();
        info!(id, agent = request.agent, approver, "approval denied");
        self.publish_approval(&request);
        Ok(request)
    }

    fn publish_approval(&self, r: &Request) {
        let (state, approver, expires) = match &r.status {
            Status::Pending => ("requested", None, None),
            Status::Approved {
                approver,
                until_unix_nano,
                ..
            } => ("approved", Some(approver.clone()), Some(*until_unix_nano)),
            Status::Denied { approver } => ("denied", Some(approver.clone()), None),
            Status::Expired { approver } => ("expired", Some(approver.clone()), None),
        };
        self.publish(
            &r.agent,
            0,
            EventDetail::Approval(ApprovalDetail {
                id: r.id,
                state: state.to_owned(),
                subject: r.subject.describe(),
                approver,
                expires_unix_nano: expires,
            }),
        );
    }

    /// Raises a request for `subject` unless one is open; returns the open or new id.
    fn request_approval(&mut self, agent: &str, subject: Subject) -> Option<u64> {
        let cgroup_id = self.cages.get(agent)?.cgroup_id;
        if let Some(r) = self.approvals.request(agent, cgroup_id, subject.clone()) {
            let r = r.clone();
            warn!(
                id = r.id,
                agent,
                subject = r.subject.describe(),
                "approval needed: agentcage approve {}",
                r.id
            );
            self.publish_approval(&r);
            return Some(r.id);
        }
        self.approvals.open_id(agent, &subject)
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
    fn denied(&mut self, agent: &str, policy: Option<&AgentPolicy>, e: &EgressDetail, now: u64) {
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

    fn contain_logged(&mut self, agent: &str, rung: Rung, reason: &str) {
        if let Err(e) = self.contain(agent, rung, reason) {
            error!(agent, rung = %rung, reason, error = %e, "containment failed");
        }
    }

    /// Feeds an observation to the agent's assertions and acts on violations.
    fn observe(&mut self, agent: &str, seen: Observed) {
        let Some(rt) = self.runtimes.get_mut(agent) else {
            return;
        };
        let violations = rt.session.observe(&seen);
        self.violations(agent, violations);
    }

    fn violations(&mut self, agent: &str, violations: Vec<Violation>) {
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

    /// Reports budget breaches; a hard one throttles every agent in its scope.
    fn breaches(&mut self, agent: &str, breaches: Vec<(String, Breach)>) {
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
    fn members(&self, scope: &str) -> Vec<String> {
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
    fn throttle(&mut self, agent: &str) {
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
    fn meter(&mut self, agent: &str, metric: Metric, amount: f64) -> Vec<(String, Breach)> {
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

    /// An application event from a process (pid) inside `agent`'s cage: recorded, metered,
    /// checked, and answered with whether the action may go ahead.
    pub fn on_app_event(&mut self, agent: &str, pid: u32, event: AppEvent) -> AppReply {
        if let Err(message) = event.validate() {
            return AppReply::Error { message };
        }
        if !self.runtimes.contains_key(agent) {
            return AppReply::Error {
                message: format!("agent {agent:?} has no cage this daemon manages"),
            };
        }
        let policy = self.policy.agent(agent).cloned().unwrap_or_default();
        self.publish(agent, pid, EventDetail::App(event.clone()));
        let now = boot_ns();
        let mut refusal: Option<(String, Option<u64>)> = None;
        let observed = match &event {
            AppEvent::ModelCall {
                model,
                input_tokens,
                output_tokens,
                cost_usd,
                queue_ms,
                model_ms,
            } => {
                let tokens = (*input_tokens).saturating_add(*output_tokens) as f64;
                let mut b = self.meter(agent, Metric::Tokens, tokens);
                b.extend(self.meter(agent, Metric::Usd, *cost_usd));
                if let Some(rt) = self.runtimes.get_mut(agent) {
                    for (which, ms) in [(Latency::Queue, queue_ms), (Latency::Model, model_ms)] {
                        if let Some(ms) = ms {
                            let took = Duration::from_secs_f64(ms / 1000.0);
                            b.extend(
                                rt.meter
                                    .latency(&policy.budgets, which, took)
                                    .into_iter()
                                    .map(|x| ("agent".to_owned(), x)),
                            );
                        }
                    }
                }
                self.breaches(agent, b);
                Some((PatternKind::ModelCall, Some(model.clone())))
            }
            AppEvent::ToolCall {
                name,
                args_digest,
                phase: Phase::Start,
                ..
            } => {
                let key = format!("tool {name} {}", args_digest.as_deref().unwrap_or(""));
                let mut b = self.meter(agent, Metric::ToolCalls, 1.0);
                if let Some(rt) = self.runtimes.get_mut(agent) {
                    if let Some(x) = rt.meter.repeat(&policy.budgets, &key, now) {
                        b.push(("agent".to_owned(), x));
                    }
                }
                self.breaches(agent, b);
                refusal = self.tool_refusal(
                    agent,
                    Subject::Tool { name: name.clone() },
                    policy.approvals.tools.contains(name),
                );
                Some((PatternKind::ToolCall, Some(name.clone())))
            }
            AppEvent::ToolCall {
                phase: Phase::End,
                latency_ms,
                ..
            } => {
                if let (Some(ms), Some(rt)) = (latency_ms, self.runtimes.get_mut(agent)) {
                    let b = rt
                        .meter
                        .latency(
                            &policy.budgets,
                            Latency::Tool,
                            Duration::from_secs_f64(ms / 1000.0),
                        )
                        .into_iter()
                        .map(|x| ("agent".to_owned(), x))
                        .collect();
                    self.breaches(agent, b);
                }
                None
            }
            AppEvent::Plan { .. } => Some((PatternKind::Plan, None)),
            // The application's word only: `approval(X)` needs a person's `agentcage approve`.
            AppEvent::Approval { name, .. } => {
                Some((PatternKind::ReportedApproval, Some(name.clone())))
            }
            AppEvent::TicketComment { ticket, .. } => {
                Some((PatternKind::TicketComment, Some(ticket.clone())))
            }
            AppEvent::Notify { channel } => Some((PatternKind::Notify, Some(channel.clone()))),
            AppEvent::Exec { command } => {
                let needs = policy
                    .approvals
                    .exec
                    .iter()
                    .find(|p| command.starts_with(p.as_str()))
                    .cloned();
                if let Some(prefix) = &needs {
                    refusal = self.tool_refusal(
                        agent,
                        Subject::Exec {
                            command: prefix.clone(),
                        },
                        true,
                    );
                } else if self.runtimes.get(agent).is_some_and(|r| r.throttled) {
                    refusal = Some(("budget".into(), None));
                }
                Some((PatternKind::Exec, Some(command.clone())))
            }
        };
        // Only actions that go ahead count for assertions.
        if refusal.is_none() {
            if let Some((kind, arg)) = observed {
                self.observe(
                    agent,
                    Observed {
                        kind,
                        arg,
                        at_ns: now,
                    },
                );
            }
        }
        match refusal {
            None => AppReply::Accepted {
                decision: Decision::Allow,
                reason: None,
                approval_id: None,
            },
            Some((reason, approval_id)) => AppReply::Accepted {
                decision: Decision::Refuse,
                reason: Some(reason),
                approval_id,
            },
        }
    }

    /// Why a tool call or command may not go ahead, if it may not.
    fn tool_refusal(
        &mut self,
        agent: &str,
        subject: Subject,
        needs_approval: bool,
    ) -> Option<(String, Option<u64>)> {
        let rt = self.runtimes.get(agent)?;
        if rt.throttled {
            return Some(("budget".into(), None));
        }
        if rt.rung >= Rung::Paused {
            return Some(("contained".into(), None));
        }
        if needs_approval && !self.approvals.is_approved(agent, &subject, boot_ns()) {
            let id = self.request_approval(agent, subject);
            return Some(("pending-approval".into(), id));
        }
        None
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
