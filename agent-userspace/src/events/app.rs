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

/// The longest duration an application event may report: 30 days, in milliseconds.
pub const MAX_MS: f64 = 30.0 * 24.0 * 3600.0 * 1000.0;
/// The most tokens one model call may report.
pub const MAX_TOKENS: u64 = 1 << 40;
/// The highest cost one model call may report, in US dollars.
pub const MAX_USD: f64 = 1e9;
/// The longest text field, in bytes.
pub const MAX_TEXT: usize = 1024;

/// A reported duration in milliseconds as a [`std::time::Duration`]; out-of-range values
/// (records spooled before they were checked) saturate instead of panicking.
pub fn duration_of_ms(ms: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(ms / 1e3).unwrap_or(if ms > 0.0 {
        std::time::Duration::MAX
    } else {
        std::time::Duration::ZERO
    })
}

impl AppEvent {
    /// Checks sizes and values, so that every number the daemon computes with is in range;
    /// the message names the field and what it must be.
    pub fn validate(&self) -> Result<(), String> {
        let text = |field: &str, v: &str| {
            if v.is_empty() || v.len() > MAX_TEXT {
                Err(format!("{field} must be 1-{MAX_TEXT} bytes long"))
            } else {
                Ok(())
            }
        };
        let optional =
            |field: &str, v: &Option<String>| v.as_deref().map_or(Ok(()), |v| text(field, v));
        let ms = |field: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && (0.0..=MAX_MS).contains(&x)) => Err(format!(
                "{field} must be a number of milliseconds from 0 to {MAX_MS}"
            )),
            _ => Ok(()),
        };
        match self {
            Self::ToolCall {
                name,
                args_digest,
                call_id,
                latency_ms,
                ..
            } => {
                text("name", name)?;
                optional("args_digest", args_digest)?;
                optional("call_id", call_id)?;
                ms("latency_ms", *latency_ms)
            }
            Self::Plan { summary } => optional("summary", summary),
            Self::Approval { name, approver } => {
                text("name", name)?;
                optional("approver", approver)
            }
            Self::TicketComment { ticket, digest } => {
                text("ticket", ticket)?;
                optional("digest", digest)
            }
            Self::ModelCall {
                model,
                input_tokens,
                output_tokens,
                cost_usd,
                queue_ms,
                model_ms,
            } => {
                text("model", model)?;
                for (field, n) in [
                    ("input_tokens", input_tokens),
                    ("output_tokens", output_tokens),
                ] {
                    if *n > MAX_TOKENS {
                        return Err(format!("{field} must be at most {MAX_TOKENS}"));
                    }
                }
                if !(cost_usd.is_finite() && (0.0..=MAX_USD).contains(cost_usd)) {
                    return Err(format!("cost_usd must be a number from 0 to {MAX_USD}"));
                }
                ms("queue_ms", *queue_ms)?;
                ms("model_ms", *model_ms)
            }
            Self::Notify { channel } => text("channel", channel),
            Self::Exec { command } => text("command", command),
        }
    }
}
