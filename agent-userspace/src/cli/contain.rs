//! The run-time commands: containment and the kill switch, approvals, application events,
//! and the policy commands that talk to the daemon (apply, diff, show) or print the schema.

use std::path::Path;

use super::{Cli, CliError, Command, EventCommand, Output, PolicyCommand};
use crate::{
    control::{
        app::{AppMessage, AppReply, Decision},
        Client, ContainedCage, Request, Response,
    },
    events::{AppEvent, Phase},
    policy::{validate_agent_name, Policy},
    runtime::approvals::{Request as ApprovalRequest, Status},
};

use super::cred::REFUSED;

/// Runs one of this module's commands.
pub fn dispatch(cli: &Cli) -> Result<i32, CliError> {
    let call = |request: Request| -> Result<Response, CliError> {
        Ok(Client::connect(&cli.socket)?.call(&request)?)
    };
    match &cli.command {
        Command::Contain {
            agent,
            rung,
            no_wait,
        } => {
            validate_agent_name(agent)?;
            let request = Request::Contain {
                agent: agent.clone(),
                rung: rung.clone(),
            };
            contain(&cli.socket, &request, !no_wait)
        }
        Command::Pause { agent, no_wait } => {
            validate_agent_name(agent)?;
            let request = Request::Contain {
                agent: agent.clone(),
                rung: "paused".into(),
            };
            contain(&cli.socket, &request, !no_wait)
        }
        Command::Resume { agent } => {
            validate_agent_name(agent)?;
            let request = Request::Resume {
                agent: agent.clone(),
            };
            contain(&cli.socket, &request, true)
        }
        Command::Kill {
            agent,
            all,
            no_wait,
        } => {
            if let Some(a) = agent {
                validate_agent_name(a)?;
            }
            let request = Request::Kill {
                agent: agent.clone(),
                all: *all,
            };
            contain(&cli.socket, &request, !no_wait)
        }
        Command::Approvals { output } => match call(Request::Approvals {})? {
            Response::Approvals { requests } => {
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&requests)?),
                    Output::Text if requests.is_empty() => println!("no approval requests"),
                    Output::Text => {
                        for r in &requests {
                            println!("{}", describe(r));
                        }
                    }
                }
                Ok(0)
            }
            other => Err(CliError::unexpected(&other)),
        },
        Command::Approve { id, duration } => match call(Request::Approve {
            id: *id,
            for_secs: duration.map(|d| d.as_secs_f64()),
        })? {
            Response::Approval { request } => {
                println!("{}", describe(&request));
                Ok(0)
            }
            other => Err(CliError::unexpected(&other)),
        },
        Command::Deny { id } => match call(Request::Deny { id: *id })? {
            Response::Approval { request } => {
                println!("{}", describe(&request));
                Ok(0)
            }
            other => Err(CliError::unexpected(&other)),
        },
        Command::Event(e) => app_event(&cli.app_socket, e),
        _ => Err(CliError::Usage("not a run-time command".into())),
    }
}

fn describe(r: &ApprovalRequest) -> String {
    let state = match &r.status {
        Status::Pending => "pending".to_owned(),
        Status::Approved {
            approver,
            until_unix_nano,
            ..
        } => {
            let until = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(*until_unix_nano);
            format!(
                "approved by {approver} until {}",
                humantime::format_rfc3339_seconds(until)
            )
        }
        Status::Denied { approver, .. } => format!("denied by {approver}"),
        Status::Expired { approver } => format!("expired (approved by {approver})"),
    };
    format!(
        "{:>4}  agent:{:<20} {:<40} {state}",
        r.id,
        r.agent,
        r.subject.describe()
    )
}

/// Sends a containment request, prints what is frozen at once, and (with `wait`) what the
/// snapshots and kills came to.
fn contain(socket: &Path, request: &Request, wait: bool) -> Result<i32, CliError> {
    let mut client = Client::connect(socket)?;
    let response = client.call(request)?;
    let Response::Contained { cages } = response else {
        return Err(CliError::unexpected(&response));
    };
    let pending = cages.iter().any(|c| c.pending);
    let mut status = contained(&cages);
    if !(wait && pending) {
        return Ok(status);
    }
    match client.read_response()? {
        Some(Response::ContainmentDone { cages }) => {
            for c in &cages {
                match (&c.error, &c.snapshot) {
                    (Some(e), _) => {
                        status = 1;
                        eprintln!("agent:{}: {e}", c.agent);
                    }
                    (None, Some(s)) if c.emptied => {
                        println!(
                            "agent:{}: snapshot written to {s}; no process left",
                            c.agent
                        )
                    }
                    (None, Some(s)) => println!("agent:{}: snapshot written to {s}", c.agent),
                    (None, None) => println!("agent:{}: done", c.agent),
                }
            }
            Ok(status)
        }
        Some(other) => Err(CliError::unexpected(&other)),
        None => Err(CliError::Usage(
            "agentcaged closed the connection before the containment finished".into(),
        )),
    }
}

fn contained(cages: &[ContainedCage]) -> i32 {
    if cages.is_empty() {
        println!("no cages");
    }
    let mut failed = false;
    for ContainedCage {
        agent,
        rung,
        previous,
        snapshot,
        error,
        ..
    } in cages
    {
        match error {
            Some(e) => {
                failed = true;
                eprintln!("agent:{agent}: {e}");
            }
            None => {
                print!("agent:{agent}: {previous} -> {rung}");
                match snapshot {
                    Some(s) => println!(" (snapshot {s})"),
                    None => println!(),
                }
            }
        }
    }
    i32::from(failed)
}

fn app_event(socket: &Path, command: &EventCommand) -> Result<i32, CliError> {
    let event = match command.clone() {
        EventCommand::ToolCall {
            name,
            phase,
            args_digest,
            call_id,
            latency_ms,
        } => AppEvent::ToolCall {
            name,
            args_digest,
            phase: match phase.as_str() {
                "start" => Phase::Start,
                "end" => Phase::End,
                other => {
                    return Err(CliError::Usage(format!(
                        "--phase {other:?}: expected start or end"
                    )))
                }
            },
            call_id,
            latency_ms,
        },
        EventCommand::Plan { summary } => AppEvent::Plan { summary },
        EventCommand::Approval { name, approver } => AppEvent::Approval { name, approver },
        EventCommand::TicketComment { ticket, digest } => {
            AppEvent::TicketComment { ticket, digest }
        }
        EventCommand::ModelCall {
            model,
            input_tokens,
            output_tokens,
            cost_usd,
            queue_ms,
            model_ms,
        } => AppEvent::ModelCall {
            model,
            input_tokens,
            output_tokens,
            cost_usd,
            queue_ms,
            model_ms,
        },
        EventCommand::Notify { channel } => AppEvent::Notify { channel },
        EventCommand::Exec { command } => AppEvent::Exec { command },
    };
    event.validate().map_err(CliError::Usage)?;
    let message = AppMessage { agent: None, event };
    let answer = super::cred::app_round_trip(socket, &message)?;
    let reply: AppReply = serde_json::from_str(&answer)
        .map_err(|e| CliError::Unexpected(format!("{e}: {answer:?}")))?;
    println!("{}", answer.trim());
    match reply {
        AppReply::Accepted {
            decision: Decision::Allow,
            ..
        } => Ok(0),
        AppReply::Accepted { .. } => Ok(REFUSED),
        AppReply::Error { message } => Err(crate::control::ClientError::Refused(message).into()),
    }
}

/// `policy apply|diff|show|schema`.
pub fn policy(socket: &Path, command: PolicyCommand) -> Result<i32, CliError> {
    match command {
        PolicyCommand::Schema => {
            print!("{}", crate::policy::json_schema());
            Ok(0)
        }
        PolicyCommand::Show => {
            let (source, hash, canonical) = in_force(socket)?;
            println!("# {source} (sha256 {hash})");
            print!("{canonical}");
            Ok(0)
        }
        PolicyCommand::Apply { file } => {
            // Validate here first: errors then name the file as the person wrote it.
            Policy::load(&file)?;
            let yaml = std::fs::read_to_string(&file)
                .map_err(CliError::os(format!("reading {}", file.display())))?;
            let mut client = Client::connect(socket)?;
            match client.call(&Request::PolicyApply {
                yaml,
                source: file.display().to_string(),
            })? {
                Response::Reloaded {
                    source,
                    policy_hash,
                } => {
                    println!(
                        "{}: in force as {source} (sha256 {policy_hash})",
                        file.display()
                    );
                    Ok(0)
                }
                other => Err(CliError::unexpected(&other)),
            }
        }
        PolicyCommand::Diff { file } => {
            let policy = Policy::load(&file)?;
            let (source, hash, canonical) = in_force(socket)?;
            if hash == policy.hash() {
                println!(
                    "{}: same as the policy in force (sha256 {hash})",
                    file.display()
                );
                return Ok(0);
            }
            let new = policy.canonical();
            let diff = similar::TextDiff::from_lines(&canonical, &new);
            print!(
                "{}",
                diff.unified_diff().context_radius(3).header(
                    &format!("in force: {source} (sha256 {hash})"),
                    &format!("{} (sha256 {})", file.display(), policy.hash()),
                )
            );
            Ok(1)
        }
        PolicyCommand::Check { .. } | PolicyCommand::Reload => {
            Err(CliError::Usage("handled elsewhere".into()))
        }
    }
}

fn in_force(socket: &Path) -> Result<(String, String, String), CliError> {
    match Client::connect(socket)?.call(&Request::PolicyShow {})? {
        Response::Policy {
            source,
            policy_hash,
            canonical,
        } => Ok((source, policy_hash, canonical)),
        other => Err(CliError::unexpected(&other)),
    }
}
