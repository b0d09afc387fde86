//! Application events: what the agent's host application knows and the kernel cannot see
//! (tool calls, plans, approvals, tickets, model calls and their cost). They arrive on the
//! application socket (see `control::app`) from a process inside the cage they speak for.

use serde::{Deserialize, Serialize};

/// Start or end of a timed action.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// It began.
    Start,
    /// It finished.
    End,
}

/// One application event, as sent (`{"app":"tool_call",...}`) and as reported.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "app", rename_all = "snake_case", deny_unknown_fields)]
pub enum AppEvent {
    /// A tool call began or ended.
    ToolCall {
        /// The tool's name.
        name: String,
        /// A digest of the arguments (e.g. `sha256:...`), never the arguments themselves.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args_digest: Option<String>,
        /// Start or end.
        phase: Phase,
        /// Ties the end to its start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        /// For an end: how long the tool took, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_ms: Option<f64>,
    },
    /// The agent made or changed a plan.
    Plan {
        /// A short summary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
    },
    /// The application obtained an approval (e.g. from its own user interface).
    Approval {
        /// What was approved (matched by `approval(NAME)` in assertions).
        name: String,
        /// Who approved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approver: Option<String>,
    },
    /// A comment was posted on a ticket.
    TicketComment {
        /// The ticket.
        ticket: String,
        /// A digest of the comment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// A model call finished.
    ModelCall {
        /// The model.
        model: String,
        /// Input tokens.
        #[serde(default)]
        input_tokens: u64,
        /// Output tokens.
        #[serde(default)]
        output_tokens: u64,
        /// Cost in US dollars.
        #[serde(default)]
        cost_usd: f64,
        /// Time queued before the model ran, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue_ms: Option<f64>,
        /// The model's own time, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_ms: Option<f64>,
    },
    /// A notification was sent to a channel.
    Notify {
        /// The channel.
        channel: String,
    },
    /// The application ran a command (until the kernel reports execs itself).
    Exec {
        /// The command line.
        command: String,
    },
}

impl AppEvent {
    /// Checks sizes and values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let text = |field: &str, v: &str| {
            if v.is_empty() || v.len() > 1024 {
                Err(format!("{field} must be 1-1024 bytes long"))
            } else {
                Ok(())
            }
        };
        let ms = |field: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && x >= 0.0) => Err(format!(
                "{field} must be a non-negative number of milliseconds"
            )),
            _ => Ok(()),
        };
        match self {
            Self::ToolCall {
                name, latency_ms, ..
            } => {
                text("name", name)?;
                ms("latency_ms", *latency_ms)
            }
            Self::Plan { .. } => Ok(()),
            Self::Approval { name, .. } => text("name", name),
            Self::TicketComment { ticket, .. } => text("ticket", ticket),
            Self::ModelCall {
                model,
                cost_usd,
                queue_ms,
                model_ms,
                ..
            } => {
                text("model", model)?;
                if !(cost_usd.is_finite() && *cost_usd >= 0.0) {
                    return Err("cost_usd must be a non-negative number".into());
                }
                ms("queue_ms", *queue_ms)?;
                ms("model_ms", *model_ms)
            }
            Self::Notify { channel } => text("channel", channel),
            Self::Exec { command } => text("command", command),
        }
    }
}
