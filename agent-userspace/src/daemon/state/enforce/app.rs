//! Application events: recorded, metered, checked, and answered.

use super::super::State;
use crate::{
    clock::boot_ns,
    control::app::{AppReply, Decision},
    events::{AppEvent, EventDetail, Phase},
    runtime::{
        approvals::Subject,
        assertions::{Observed, PatternKind},
        budgets::{Latency, Metric},
        Rung,
    },
};

impl State {
    /// An application event from a process (pid) inside `agent`'s cage: recorded, metered,
    /// checked, and answered with whether the action may go ahead.
    pub fn on_app_event(&mut self, agent: &str, pid: u32, event: AppEvent) -> AppReply {
        if let Err(message) = event.validate() {
            return AppReply::Error { message };
        }
        if !self.containment.has(agent) {
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
                for (which, ms) in [(Latency::Queue, queue_ms), (Latency::Model, model_ms)] {
                    if let Some(ms) = ms {
                        let took = crate::events::duration_of_ms(*ms);
                        b.extend(self.budgets.latency(agent, &policy.budgets, which, took));
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
                b.extend(self.budgets.repeat(agent, &policy.budgets, &key, (now, 1)));
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
                if let Some(ms) = latency_ms {
                    let took = crate::events::duration_of_ms(*ms);
                    let b = self
                        .budgets
                        .latency(agent, &policy.budgets, Latency::Tool, took);
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
                            index: None,
                        },
                        true,
                    );
                } else {
                    refusal = self.tool_refusal(
                        agent,
                        Subject::Exec {
                            command: command.clone(),
                            index: None,
                        },
                        false,
                    );
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
    pub(super) fn tool_refusal(
        &mut self,
        agent: &str,
        subject: Subject,
        needs_approval: bool,
    ) -> Option<(String, Option<u64>)> {
        if !self.containment.has(agent) {
            return None;
        }
        if self.budgets.throttled(agent) {
            return Some(("budget".into(), None));
        }
        let rung = self.containment.rung(agent);
        if rung >= Rung::Paused {
            return Some(("contained".into(), None));
        }
        // On the approval-required rung every tool call and command waits for a person.
        let needs_approval = needs_approval || rung == Rung::ApprovalRequired;
        if needs_approval && !self.is_approved(agent, &subject) {
            let id = self.request_approval(agent, subject);
            return Some(("pending-approval".into(), id));
        }
        None
    }
}
