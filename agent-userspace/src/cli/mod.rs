//! The `agentcage` command line: thin wrappers over the control protocol, plus the local
//! `doctor` and `policy check`.

mod commands;
mod run;
mod shield;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::dispatch;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the daemon failed, or it refused the request.
    #[error(transparent)]
    Client(#[from] crate::control::ClientError),
    /// A policy file or an agent name is invalid.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The daemon answered with something this command does not expect.
    #[error("unexpected response from agentcaged: {0}")]
    Unexpected(String),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Output could not be encoded as JSON.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The command line cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// An [`CliError::Os`] for `what`.
    pub(crate) fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Os { what, source }
    }

    /// An [`CliError::Unexpected`] for a response.
    pub(crate) fn unexpected(response: &crate::control::Response) -> Self {
        Self::Unexpected(format!("{response:?}"))
    }
}

use crate::control::DEFAULT_SOCKET;

/// agentcage: run AI agents in kernel-enforced cages.
#[derive(Debug, Parser)]
#[command(name = "agentcage", version, about)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "AGENTCAGE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For machines.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command as an agent, inside its cage from its first instruction.
    Run(RunArgs),
    /// Move a running process (and its threads) into an agent's cage.
    Adopt {
        /// The agent's name.
        #[arg(long)]
        agent: String,
        /// The process.
        #[arg(long)]
        pid: u32,
    },
    /// Agents, cages, pids and counters.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print events as JSON lines.
    Events {
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
    },
    /// An agent's process tree: its processes with their programs, arguments and how they
    /// ended.
    Ps {
        /// The agent's name.
        agent: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// What this kernel can do for agentcage, probed.
    Doctor {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `agentcage run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent's name (its identity is `agent:NAME`).
    #[arg(long)]
    pub agent: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `agentcage policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate a policy file; errors point at file:line:column.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Ask the daemon to reload its policy file (a broken one is refused, the old one stays).
    Reload,
}
