//! Approvals: requests raised from kernel verdicts and the application, decided by a person,
//! granted in the kernel's approvals map with their expiry.

use std::time::Duration;

use tracing::{info, warn};

use super::super::{State, StateError};
use crate::{
    bpf::ApprovalMap,
    clock::{boot_ns, wall_of_boot},
    events::{ApprovalDetail, ApprovalState as Stage, EventDetail},
    policy::Policy,
    runtime::{
        approvals::{ApprovalError, Approvals, Request, Status, Subject},
        assertions::{Observed, PatternKind},
    },
};

/// The requests and the kernel's grants, kept in step.
pub(crate) struct ApprovalState {
    requests: Approvals,
    kernel: ApprovalMap,
    /// The cgroups of an agent's containers, by the agent's own cage: a grant for the cage
    /// is a grant for each of them (the kernel keys grants by the caller's cgroup).
    mirrors: std::collections::HashMap<u64, Vec<u64>>,
}

impl ApprovalState {
    pub(crate) fn new(kernel: ApprovalMap) -> Self {
        Self {
            requests: Approvals::default(),
            kernel,
            mirrors: std::collections::HashMap::new(),
        }
    }

    /// The kernel keys of a request: for the agent's cage and each of its containers.
    fn keys(&self, r: &Request) -> Vec<agent_common::approval::ApprovalKey> {
        std::iter::once(r.cgroup_id)
            .chain(
                self.mirrors
                    .get(&r.cgroup_id)
                    .into_iter()
                    .flatten()
                    .copied(),
            )
            .filter_map(|c| r.subject.kernel_key(c))
            .collect()
    }

    /// Container cgroup `mirror` takes the grants of the agent's cage `cage`, now and later.
    pub(crate) fn mirror(&mut self, cage: u64, mirror: u64) {
        self.mirrors.entry(cage).or_default().push(mirror);
        for r in self.requests.list() {
            if let (true, Status::Approved { until_boot_ns, .. }) = (r.cgroup_id == cage, &r.status)
            {
                if let Some(key) = r.subject.kernel_key(mirror) {
                    if let Err(e) = self.kernel.grant(&key, *until_boot_ns) {
                        warn!(id = r.id, error = %e, "a container did not get an approval's grant");
                    }
                }
            }
        }
    }

    /// Container cgroup `mirror` is no longer a cage: its grants go.
    pub(crate) fn unmirror(&mut self, mirror: u64) {
        for list in self.mirrors.values_mut() {
            list.retain(|m| *m != mirror);
        }
        self.kernel.revoke_cage(mirror);
    }

    /// A cage is gone: its open requests are closed and its grants revoked.
    pub(crate) fn forget_cage(&mut self, cgroup_id: u64) {
        self.requests.forget_cage(cgroup_id);
        self.kernel.revoke_cage(cgroup_id);
        for m in self.mirrors.remove(&cgroup_id).unwrap_or_default() {
            self.kernel.revoke_cage(m);
        }
    }

    /// A grant names a rule by its index: where the rule there is no longer the one a person
    /// approved, the grant goes (fail closed) and a later attempt asks again.
    pub(crate) fn lapse_changed_rules(&mut self, policy: &Policy) {
        let mut lapsed = Vec::new();
        for r in self.requests.list() {
            if let (Subject::Rule { index, text, .. }, Status::Approved { .. }) =
                (&r.subject, &r.status)
            {
                let same = policy
                    .agent(&r.agent)
                    .and_then(|p| p.egress.allow.get(*index as usize))
                    .is_some_and(|rule| rule.describe() == *text && rule.requires_approval);
                if !same {
                    lapsed.push(r);
                }
            }
        }
        for r in lapsed {
            for key in self.keys(&r) {
                self.kernel.revoke(&key);
            }
            let _ = self.requests.expire_one(r.id);
        }
    }

    /// Requests and grants that lapsed by `now`, their grants revoked.
    fn expire(&mut self, now: u64) -> Vec<Request> {
        let expired = self.requests.expire(now);
        for r in &expired {
            for key in self.keys(r) {
                self.kernel.revoke(&key);
            }
        }
        expired
    }
}

impl State {
    /// Every approval request.
    pub fn approvals(&self) -> Vec<Request> {
        self.approvals.requests.list()
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
            .requests
            .get(id)
            .cloned()
            .ok_or(ApprovalError::Unknown(id))?;
        let rules = self
            .policy
            .agent(&request.agent)
            .map(|p| p.approvals.clone())
            .unwrap_or_default();
        let duration = duration.unwrap_or(rules.default_for.0);
        if duration > rules.max_for.0 {
            return Err(ApprovalError::TooLong {
                asked: duration,
                max: rules.max_for.0,
            }
            .into());
        }
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let until_boot = boot_ns().saturating_add(nanos);
        let until_unix = wall_of_boot(until_boot, self.boot_to_wall_ns);
        // The state first: a decided request must not be granted in the kernel.
        self.approvals
            .requests
            .approve(id, approver, until_boot, until_unix)?;
        for key in self.approvals.keys(&request) {
            if let Err(e) = self.approvals.kernel.grant(&key, until_boot) {
                for key in self.approvals.keys(&request) {
                    self.approvals.kernel.revoke(&key);
                }
                let _ = self.approvals.requests.expire_one(id);
                return Err(e.into());
            }
        }
        let request = self.approvals.requests.get(id).cloned().unwrap_or(request);
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
        let request = self
            .approvals
            .requests
            .deny(id, approver, boot_ns())?
            .clone();
        info!(id, agent = request.agent, approver, "approval denied");
        self.publish_approval(&request);
        Ok(request)
    }

    pub(super) fn publish_approval(&mut self, r: &Request) {
        let (state, approver, expires) = match &r.status {
            Status::Pending => (Stage::Requested, None, None),
            Status::Approved {
                approver,
                until_unix_nano,
                ..
            } => (
                Stage::Approved,
                Some(approver.clone()),
                Some(*until_unix_nano),
            ),
            Status::Denied { approver, .. } => (Stage::Denied, Some(approver.clone()), None),
            Status::Expired { approver } => (Stage::Expired, Some(approver.clone()), None),
        };
        self.publish(
            &r.agent,
            0,
            EventDetail::Approval(ApprovalDetail {
                id: r.id,
                state,
                subject: r.subject.describe(),
                approver,
                expires_unix_nano: expires,
            }),
        );
    }

    /// Raises a request for `subject` unless one is open; returns the open or new id.
    pub(super) fn request_approval(&mut self, agent: &str, subject: Subject) -> Option<u64> {
        let cgroup_id = self.registry.get(agent)?.cgroup_id;
        if let Some(r) =
            self.approvals
                .requests
                .request(agent, cgroup_id, subject.clone(), boot_ns())
        {
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
        self.approvals.requests.open_id(agent, &subject)
    }

    /// Whether a person approved `subject` for `agent` and the grant still holds.
    pub(super) fn is_approved(&self, agent: &str, subject: &Subject) -> bool {
        self.approvals
            .requests
            .is_approved(agent, subject, boot_ns())
    }

    /// Approvals that lapsed by `now`: revoked in the kernel and reported.
    pub(super) fn expire_approvals(&mut self, now: u64) {
        for r in self.approvals.expire(now) {
            info!(id = r.id, agent = r.agent, "approval expired");
            self.publish_approval(&r);
        }
    }
}
