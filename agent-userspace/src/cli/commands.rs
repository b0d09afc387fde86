//! One function per subcommand.

use super::{run, Cli, CliError, Command, Output, PolicyCommand};
use crate::{
    control::{Client, Request, Response, StatusReport},
    doctor,
    policy::{validate_agent_name, Policy},
};

/// Runs the parsed command line; returns the process exit code.
pub fn dispatch(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Run(args) => run::run(&cli.socket, &args),
        Command::Adopt { agent, pid } => {
            validate_agent_name(&agent)?;
            let mut client = Client::connect(&cli.socket)?;
            match client.call(&Request::Adopt { agent, pid })? {
                Response::Adopted { agent, pid, cgroup } => {
                    println!("process {pid} is now in the cage of agent:{agent} ({cgroup})");
                    Ok(0)
                }
                other => Err(CliError::unexpected(&other)),
            }
        }
        Command::Status { output } => {
            let mut client = Client::connect(&cli.socket)?;
            match client.call(&Request::Status {})? {
                Response::Status(report) => {
                    match output {
                        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                        Output::Text => print_status(&report),
                    }
                    Ok(0)
                }
                other => Err(CliError::unexpected(&other)),
            }
        }
        Command::Events { follow } => events(&cli, follow),
        Command::Ps { agent, output } => {
            validate_agent_name(&agent)?;
            let mut client = Client::connect(&cli.socket)?;
            match client.call(&Request::Processes { agent })? {
                Response::Processes { processes, .. } => {
                    match output {
                        Output::Json => println!("{}", serde_json::to_string_pretty(&processes)?),
                        Output::Text => print!("{}", crate::capture::render(&processes)),
                    }
                    Ok(0)
                }
                other => Err(CliError::unexpected(&other)),
            }
        }
        Command::Top { interval_ms, once } => super::top::top(
            &cli.socket,
            std::time::Duration::from_millis(interval_ms),
            once,
        ),
        Command::Dashboard => match Client::connect(&cli.socket)?.call(&Request::Dashboard {})? {
            Response::Dashboard { url } => {
                println!("{url}");
                Ok(0)
            }
            other => Err(CliError::unexpected(&other)),
        },
        Command::Completions { shell } => {
            super::assets::completions(shell);
            Ok(0)
        }
        Command::Manpages { dir } => {
            super::assets::manpages(&dir)?;
            Ok(0)
        }
        Command::Selftest { output, timeout } => {
            let bins = crate::selftest::Binaries::beside_this_one()
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let lines = crate::selftest::run(&bins, std::time::Duration::from_secs(timeout))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let sealed = match output {
                Output::Json => {
                    for l in &lines {
                        println!("{}", serde_json::to_string(l)?);
                    }
                    lines
                        .iter()
                        .all(|l| !matches!(l.outcome, crate::selftest::Outcome::Escaped(_)))
                }
                Output::Text => crate::selftest::print(&lines),
            };
            Ok(if sealed { 0 } else { 1 })
        }
        Command::SelftestAttempts { context } => Ok(crate::selftest::run_attempts(&context)),
        Command::Doctor { output } => {
            let mut report = doctor::probe();
            let status = Client::connect(&cli.socket)
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.call(&Request::Status {}).map_err(|e| e.to_string()));
            match status {
                Ok(Response::Status(s)) => {
                    report.hooks = Some(s.hooks);
                    report.daemon_tier = Some(s.tier);
                    report.refused = Some(s.refused);
                }
                Ok(other) => report.hooks_unknown = Some(format!("unexpected answer {other:?}")),
                Err(e) => {
                    report.hooks_unknown = Some(format!(
                        "no daemon answers on {}: {e}",
                        cli.socket.display()
                    ))
                }
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Text => print!("{report}"),
            }
            Ok(if report.egress_ready() { 0 } else { 1 })
        }
        Command::Policy(PolicyCommand::Check { file }) => {
            let policy = Policy::load(&file)?;
            println!(
                "{}: ok (version {}, {} agent(s){}, sha256 {})",
                file.display(),
                policy.version,
                policy.agents.len(),
                if policy.default_agent.is_some() {
                    " and a default_agent"
                } else {
                    ""
                },
                policy.hash()
            );
            Ok(0)
        }
        Command::Policy(
            c @ (PolicyCommand::Apply { .. }
            | PolicyCommand::Diff { .. }
            | PolicyCommand::Show
            | PolicyCommand::Schema),
        ) => super::contain::policy(&cli.socket, c),
        Command::Contain { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Kill { .. }
        | Command::Approvals { .. }
        | Command::Approve { .. }
        | Command::Deny { .. }
        | Command::Event(_) => super::contain::dispatch(&cli),
        Command::Agents { .. } | Command::Keys(_) => super::identity::dispatch(&cli),
        Command::Cred(_) => super::cred::dispatch(&cli),
        Command::Cert(_) => super::cert::dispatch(&cli),
        Command::Policy(PolicyCommand::Reload) => {
            let mut client = Client::connect(&cli.socket)?;
            match client.call(&Request::Reload {})? {
                Response::Reloaded {
                    source,
                    policy_hash,
                } => {
                    println!("{source}: in force (sha256 {policy_hash})");
                    Ok(0)
                }
                other => Err(CliError::unexpected(&other)),
            }
        }
    }
}

/// `agentcage events`: the daemon's event lines, passed through (see [`super::stream`]).
fn events(cli: &Cli, follow: bool) -> Result<i32, CliError> {
    let mut client = Client::connect(&cli.socket)?;
    client.send(&Request::Events { follow })?;
    let stdout = std::io::stdout();
    while let Some(line) = client.read_line()? {
        super::stream::pass_through(&line, &mut stdout.lock())?;
    }
    Ok(0)
}

fn print_status(report: &StatusReport) {
    println!(
        "policy   {} (sha256 {})",
        report.policy_source, report.policy_hash
    );
    println!("cgroups  {}", report.cgroup_root);
    match &report.tier_missing {
        None => println!("tier     {}", report.tier),
        Some(why) => println!("tier     {} ({why})", report.tier),
    }
    if report.global_lost > 0 {
        println!(
            "lost     {} events from callers in no known cage",
            report.global_lost
        );
    }
    if report.agents.is_empty() {
        println!("no agents are running");
        return;
    }
    println!(
        "{:<20} {:<10} {:>8} {:>8} {:>6} {:>6}  {:<18} {:<24} cgroup",
        "AGENT", "PIDS", "ALLOWED", "DENIED", "KILLED", "LOST", "RUNG", "PID LIST"
    );
    for a in &report.agents {
        let pids: Vec<String> = a.pids.iter().map(u32::to_string).collect();
        let rung = if a.throttled {
            format!("{} throttled", a.rung)
        } else {
            a.rung.clone()
        };
        println!(
            "{:<20} {:<10} {:>8} {:>8} {:>6} {:>6}  {:<18} {:<24} {}",
            a.identity,
            a.pids.len(),
            a.allowed,
            a.denied,
            a.killed,
            a.lost,
            rung,
            pids.join(","),
            a.cgroup
        );
    }
}
