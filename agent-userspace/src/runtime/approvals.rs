//! Approval requests: raised when the kernel reports a `pending-approval` verdict (or the
//! application asks to run a tool or command that needs approval), decided by a person with
//! `agentcage approve ID [--for 10m]` or `agentcage deny ID`, and expiring on their own.
//!
//! Egress grants live in the kernel's approvals map with their expiry, so the kernel denies
//! again the moment one lapses; this registry keeps the requests, who decided, and until when.

use std::collections::BTreeMap;

use agent_common::{approval::ApprovalKey, egress::RULE_DEFAULT_DENY};
use serde::{Deserialize, Serialize};

/// What needs approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Subject {
    /// An allow rule marked `requires_approval`.
    Rule {
        /// Its index in `egress.allow`.
        index: u32,
        /// Its name, if it has one.
        name: Option<String>,
        /// Its text.
        text: String,
    },
    /// A destination outside the allow list (approval-required rung).
    Destination {
        /// `AF_INET` or `AF_INET6`.
        family: u16,
        /// Address as events carry it.
        addr: [u8; 16],
        /// Port.
        port: u16,
        /// `ADDR:PORT`.
        text: String,
    },
    /// A tool call.
    Tool {
        /// The tool.
        name: String,
    },
    /// A command.
    Exec {
        /// The command prefix the policy names.
        command: String,
        /// Its index in `approvals.exec` when the kernel gates it (an exec it refused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
    },
    /// A credential whose rule says `requires_approval`.
    Credential {
        /// The tool.
        tool: String,
        /// `METHOD RESOURCE`.
        scope: String,
        /// The user the agent acts for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<String>,
    },
}

impl Subject {
    /// For people and events.
    pub fn describe(&self) -> String {
        match self {
            Self::Rule {
                index, name, text, ..
            } => match name {
                Some(n) => format!("egress {n} (allow[{index}] {text})"),
                None => format!("egress allow[{index}] {text}"),
            },
            Self::Destination { text, .. } => format!("egress to {text}"),
            Self::Tool { name } => format!("tool {name}"),
            Self::Exec { command, .. } => format!("exec {command}"),
            Self::Credential {
                tool,
                scope,
                on_behalf_of,
            } => match on_behalf_of {
                Some(user) => format!("credential {tool} {scope} for {user}"),
                None => format!("credential {tool} {scope}"),
            },
        }
    }

    /// The name assertions match with `approval(NAME)`.
    pub fn assertion_name(&self) -> Option<String> {
        match self {
            Self::Rule { name, .. } => name.clone(),
            Self::Destination { text, .. } => Some(text.clone()),
            Self::Tool { name } => Some(name.clone()),
            Self::Exec { command, .. } => Some(command.clone()),
            Self::Credential { tool, .. } => Some(tool.clone()),
        }
    }

    /// The kernel's key for an egress grant of this subject to the cage `cgroup_id`.
    pub fn kernel_key(&self, cgroup_id: u64) -> Option<ApprovalKey> {
        match self {
            Self::Rule { index, .. } => Some(ApprovalKey {
                cgroup_id,
                rule_id: *index,
                ..ApprovalKey::default()
            }),
            Self::Destination {
                family, addr, port, ..
            } => Some(ApprovalKey {
                cgroup_id,
                rule_id: RULE_DEFAULT_DENY,
                port: *port,
                family: *family,
                addr: *addr,
            }),
            Self::Exec { index: Some(i), .. } => Some(ApprovalKey {
                cgroup_id,
                rule_id: agent_common::process::EXEC_APPROVAL_RULE_BASE + i,
                ..ApprovalKey::default()
            }),
            Self::Tool { .. } | Self::Exec { index: None, .. } | Self::Credential { .. } => None,
        }
    }
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a person.
    Pending,
    /// Granted until `until_boot_ns`.
    Approved {
        /// Who.
        approver: String,
        /// Expiry, CLOCK_BOOTTIME ns (the kernel's clock).
        until_boot_ns: u64,
        /// Expiry, ns since the Unix epoch (for people).
        until_unix_nano: u64,
    },
    /// Refused.
    Denied {
        /// Who.
        approver: String,
        /// When (CLOCK_BOOTTIME ns): the same subject is not asked again for a while.
        #[serde(default)]
        at_boot_ns: u64,
    },
    /// The approval lapsed.
    Expired {
        /// Who had approved.
        approver: String,
    },
}

/// One request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Its id.
    pub id: u64,
    /// The agent.
    pub agent: String,
    /// The agent's cage (cgroup id) when it was raised.
    pub cgroup_id: u64,
    /// What needs approval.
    pub subject: Subject,
    /// Where it stands.
    #[serde(flatten)]
    pub status: Status,
}

/// Why a decision could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    /// No such request.
    #[error("no approval request {0}; `agentcage approvals` lists them")]
    Unknown(u64),
    /// Already decided.
    #[error("approval request {id} is {state} already; a new attempt raises a new request")]
    Decided {
        /// The request.
        id: u64,
        /// Its state.
        state: &'static str,
    },
    /// The duration asked for is longer than the policy permits.
    #[error("approval for {asked:?} is longer than the policy's max_for ({max:?})")]
    TooLong {
        /// Asked.
        asked: std::time::Duration,
        /// Allowed.
        max: std::time::Duration,
    },
}

/// How many decided requests are remembered.
const KEEP_DECIDED: usize = 1024;
/// After a denial, how long the same agent's attempts at the same subject raise no new
/// request (they are still denied): a person said no, and a retrying agent must not flood them.
pub const ASK_AGAIN_AFTER_NS: u64 = 60_000_000_000;
/// How many requests may wait at once; past it no new one is raised (the kernel keeps
/// denying), so agents probing many destinations cannot grow the daemon's memory.
const MAX_PENDING: usize = 1024;
/// How many of them one agent may have waiting: its share, so that one agent cannot crowd
/// out every other agent's requests.
pub const MAX_PENDING_PER_AGENT: usize = 64;

/// Every request of this daemon.
#[derive(Debug, Default)]
pub struct Approvals {
    next_id: u64,
    requests: BTreeMap<u64, Request>,
}

impl Approvals {
    /// Raises a request unless one for the same agent and subject is pending or approved, or
    /// was denied less than [`ASK_AGAIN_AFTER_NS`] ago; returns the new request.
    pub fn request(
        &mut self,
        agent: &str,
        cgroup_id: u64,
        subject: Subject,
        now_boot_ns: u64,
    ) -> Option<&Request> {
        let open = self.requests.values().any(|r| {
            r.agent == agent
                && r.subject == subject
                && match r.status {
                    Status::Pending | Status::Approved { .. } => true,
                    Status::Denied { at_boot_ns, .. } => {
                        now_boot_ns.saturating_sub(at_boot_ns) < ASK_AGAIN_AFTER_NS
                    }
                    Status::Expired { .. } => false,
                }
        });
        let pending = || {
            self.requests
                .values()
                .filter(|r| matches!(r.status, Status::Pending))
        };
        if open
            || pending().count() >= MAX_PENDING
            || pending().filter(|r| r.agent == agent).count() >= MAX_PENDING_PER_AGENT
        {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.requests.insert(
            id,
            Request {
                id,
                agent: agent.to_owned(),
                cgroup_id,
                subject,
                status: Status::Pending,
            },
        );
        self.trim();
        self.requests.get(&id)
    }

    /// Grants a pending request until `until_boot_ns`.
    pub fn approve(
        &mut self,
        id: u64,
        approver: &str,
        until_boot_ns: u64,
        until_unix_nano: u64,
    ) -> Result<&Request, ApprovalError> {
        let r = self.pending(id)?;
        r.status = Status::Approved {
            approver: approver.to_owned(),
            until_boot_ns,
            until_unix_nano,
        };
        Ok(r)
    }

    /// Refuses a pending request.
    pub fn deny(
        &mut self,
        id: u64,
        approver: &str,
        now_boot_ns: u64,
    ) -> Result<&Request, ApprovalError> {
        let r = self.pending(id)?;
        r.status = Status::Denied {
            approver: approver.to_owned(),
            at_boot_ns: now_boot_ns,
        };
        Ok(r)
    }

    /// A request by id.
    pub fn get(&self, id: u64) -> Option<&Request> {
        self.requests.get(&id)
    }

    fn pending(&mut self, id: u64) -> Result<&mut Request, ApprovalError> {
        let r = self
            .requests
            .get_mut(&id)
            .ok_or(ApprovalError::Unknown(id))?;
        match r.status {
            Status::Pending => Ok(r),
            Status::Approved { .. } => Err(ApprovalError::Decided {
                id,
                state: "approved",
            }),
            Status::Denied { .. } => Err(ApprovalError::Decided {
                id,
                state: "denied",
            }),
            Status::Expired { .. } => Err(ApprovalError::Decided {
                id,
                state: "expired",
            }),
        }
    }

    /// Marks approvals whose time is up as expired and returns them.
    pub fn expire(&mut self, now_boot_ns: u64) -> Vec<Request> {
        let mut out = Vec::new();
        for r in self.requests.values_mut() {
            if let Status::Approved {
                approver,
                until_boot_ns,
                ..
            } = &r.status
            {
                if *until_boot_ns <= now_boot_ns {
                    r.status = Status::Expired {
                        approver: approver.clone(),
                    };
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// Ends an approval now (its rule changed, or the kernel refused the grant).
    pub fn expire_one(&mut self, id: u64) -> Option<&Request> {
        let r = self.requests.get_mut(&id)?;
        let approver = match &r.status {
            Status::Approved { approver, .. } => approver.clone(),
            Status::Pending => "nobody".to_owned(),
            _ => return Some(r),
        };
        r.status = Status::Expired { approver };
        Some(r)
    }

    /// The id of the agent's pending or approved request for `subject`, if any.
    pub fn open_id(&self, agent: &str, subject: &Subject) -> Option<u64> {
        self.requests
            .values()
            .find(|r| {
                r.agent == agent
                    && r.subject == *subject
                    && matches!(r.status, Status::Pending | Status::Approved { .. })
            })
            .map(|r| r.id)
    }

    /// Whether the agent holds an unexpired approval of `subject`.
    pub fn is_approved(&self, agent: &str, subject: &Subject, now_boot_ns: u64) -> bool {
        self.requests.values().any(|r| {
            r.agent == agent
                && r.subject == *subject
                && matches!(r.status, Status::Approved { until_boot_ns, .. } if until_boot_ns > now_boot_ns)
        })
    }

    /// Every request, oldest first.
    pub fn list(&self) -> Vec<Request> {
        self.requests.values().cloned().collect()
    }

    /// Forgets the open requests of a cage that is gone (their grants went with its id).
    pub fn forget_cage(&mut self, cgroup_id: u64) {
        for r in self.requests.values_mut() {
            if r.cgroup_id == cgroup_id && matches!(r.status, Status::Pending) {
                r.status = Status::Denied {
                    approver: "agentcaged (the cage was removed)".into(),
                    at_boot_ns: 0,
                };
            }
        }
    }

    fn trim(&mut self) {
        while self.requests.len() > KEEP_DECIDED {
            let oldest_decided = self
                .requests
                .iter()
                .find(|(_, r)| !matches!(r.status, Status::Pending | Status::Approved { .. }))
                .map(|(id, _)| *id);
            match oldest_decided {
                Some(id) => {
                    self.requests.remove(&id);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(n: &str) -> Subject {
        Subject::Tool { name: n.into() }
    }

    #[test]
    fn one_open_request_per_subject_and_expiry() {
        let mut a = Approvals::default();
        let id = a.request("x", 1, tool("payout"), 0).unwrap().id;
        assert!(
            a.request("x", 1, tool("payout"), 0).is_none(),
            "deduplicated"
        );
        assert!(a.request("y", 2, tool("payout"), 0).is_some(), "per agent");
        assert!(!a.is_approved("x", &tool("payout"), 0));
        a.approve(id, "uid 0", 100, 1).unwrap();
        assert!(a.is_approved("x", &tool("payout"), 99));
        assert!(!a.is_approved("x", &tool("payout"), 100));
        assert_eq!(
            a.approve(id, "uid 0", 5, 5).unwrap_err(),
            ApprovalError::Decided {
                id,
                state: "approved"
            }
        );
        assert_eq!(a.expire(100).len(), 1);
        assert!(a.expire(200).is_empty());
        assert!(a.request("x", 1, tool("payout"), 0).is_some(), "asks again");
        assert_eq!(
            a.deny(999, "me", 0).unwrap_err(),
            ApprovalError::Unknown(999)
        );
    }

    #[test]
    fn one_agent_cannot_fill_the_queue_for_the_others() {
        let mut a = Approvals::default();
        for i in 0..MAX_PENDING_PER_AGENT {
            assert!(a.request("flood", 1, tool(&format!("t{i}")), 0).is_some());
        }
        assert!(
            a.request("flood", 1, tool("one-more"), 0).is_none(),
            "its share is full"
        );
        assert!(
            a.request("quiet", 2, tool("t0"), 0).is_some(),
            "another agent still asks"
        );
    }

    #[test]
    fn a_denial_is_not_asked_again_at_once() {
        let mut a = Approvals::default();
        let id = a.request("x", 1, tool("t"), 0).unwrap().id;
        a.deny(id, "me", 10).unwrap();
        assert!(a
            .request("x", 1, tool("t"), 10 + ASK_AGAIN_AFTER_NS - 1)
            .is_none());
        assert!(a
            .request("x", 1, tool("t"), 10 + ASK_AGAIN_AFTER_NS)
            .is_some());
    }
}
