//! Approvals: requests raised from kernel verdicts and the application, decided by a person,
//! granted in the kernel's approvals map with their expiry.

use std::time::Duration;

use tracing::{info, warn};

use super::super::{State, StateError};
use crate::{
    events::{ApprovalDetail, EventDetail},
    runtime::{
        approvals::{Request, Status, Subject},
        assertions::{Observed, PatternKind},
        boot_ns,
    },
};

impl State {
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
        let request = self.approvals.deny(id, approver, boot_ns())?.clone();
        info!(id, agent = request.agent, approver, "approval denied");
        self.publish_approval(&request);
        Ok(request)
    }

    pub(super) fn publish_approval(&mut self, r: &Request) {
        let (state, approver, expires) = match &r.status {
            Status::Pending => ("requested", None, None),
            Status::Approved {
                approver,
                until_unix_nano,
                ..
            } => ("approved", Some(approver.clone()), Some(*until_unix_nano)),
            Status::Denied { approver, .. } => ("denied", Some(approver.clone()), None),
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
    pub(super) fn request_approval(&mut self, agent: &str, subject: Subject) -> Option<u64> {
        let cgroup_id = self.cages.get(agent)?.cgroup_id;
        if let Some(r) = self
            .approvals
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
        self.approvals.open_id(agent, &subject)
    }
}
