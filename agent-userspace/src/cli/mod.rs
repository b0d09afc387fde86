//! The `agentcage` command line: thin wrappers over the control protocol, plus the local
//! `doctor` and `policy check`.

mod assets;
mod cert;
mod commands;
mod contain;
mod cred;
mod fds;
mod identity;
mod pty;
mod relay;
mod run;
mod stream;
mod top;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use cert::CertCommand;
pub use commands::dispatch;
pub use cred::CredCommand;
pub use identity::KeysCommand;

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

use crate::control::{DEFAULT_APP_SOCKET, DEFAULT_SOCKET};

/// agentcage: run AI agents in kernel-enforced cages.
#[derive(Debug, Parser)]
#[command(name = "agentcage", version, about)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "AGENTCAGE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The daemon's application socket (for `agentcage event` and `cred request`).
    #[arg(long, global = true, env = "AGENTCAGE_APP_SOCKET", default_value = DEFAULT_APP_SOCKET)]
    pub app_socket: PathBuf,
    /// The daemon's state directory (`cred verify` and `cert verify` read the node's public
    /// keys from its jwks.json).
    #[arg(long, global = true, env = "AGENTCAGE_STATE_DIR", default_value = crate::daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
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
    /// Try a catalogue of ways out of a cage (egress, forbidden programs, protected files,
    /// leaving the cage, stopping enforcement) in a throwaway cage of a throwaway daemon under
    /// a deny-all policy; exits 1 if anything was not contained.
    Selftest {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
        /// Seconds the throwaway daemon may take to start.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Runs the self-test's attempts inside its cage.
    #[command(name = "__selftest-attempts", hide = true)]
    SelftestAttempts {
        /// The context (JSON).
        context: String,
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
    /// A live view: agents, rung, budgets used, recent denials (Ctrl-C to stop).
    Top {
        /// Redraw period in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
    },
    /// Print the address of the daemon's local web dashboard (with its access token).
    Dashboard,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages of agentcage and agentcaged into a directory (packaging).
    #[command(hide = true)]
    Manpages {
        /// The directory.
        dir: PathBuf,
    },
    /// Move an agent's cage to a containment rung: observe, read_only, approval_required,
    /// paused or killed.
    Contain {
        /// The agent.
        agent: String,
        /// The rung.
        rung: String,
        /// Return once frozen, without waiting for the snapshot (and the kill).
        #[arg(long)]
        no_wait: bool,
    },
    /// Freeze an agent's processes and write a forensic snapshot.
    Pause {
        /// The agent.
        agent: String,
        /// Return once frozen, without waiting for the snapshot.
        #[arg(long)]
        no_wait: bool,
    },
    /// Thaw a paused agent and put it back on observe (lifting a budget throttle).
    Resume {
        /// The agent.
        agent: String,
    },
    /// Kill every process of an agent's cage (a forensic snapshot is written first);
    /// `--all` kills every cage (the kill switch).
    Kill {
        /// The agent.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        agent: Option<String>,
        /// Every cage.
        #[arg(long)]
        all: bool,
        /// Return once every targeted cage is frozen, without waiting for the snapshots and
        /// the kills (which go on in the daemon).
        #[arg(long)]
        no_wait: bool,
    },
    /// Approval requests, pending and decided.
    Approvals {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Grant an approval request.
    Approve {
        /// The request's id.
        id: u64,
        /// For how long (e.g. 90s, 10m); the policy's approvals.default_for otherwise.
        #[arg(long = "for", value_parser = parse_span)]
        duration: Option<std::time::Duration>,
    },
    /// Refuse an approval request.
    Deny {
        /// The request's id.
        id: u64,
    },
    /// Report an application event from inside a cage (tool calls, plans, model calls...).
    #[command(subcommand)]
    Event(EventCommand),
    /// Every agent the policy defines: its identity, SPIFFE ID, enforcement tier, behavior
    /// certificate, and whether it runs.
    Agents {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// The node's signing keys (credentials and certificates).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Just-in-time credentials: request one from inside a cage, verify, list, revoke.
    #[command(subcommand)]
    Cred(CredCommand),
    /// Behavior certificates: create, sign, verify, show.
    #[command(subcommand)]
    Cert(CertCommand),
}

fn parse_span(s: &str) -> Result<std::time::Duration, String> {
    crate::policy::Span::parse(s).map(|s| s.0)
}

/// `agentcage event ...`: each prints the daemon's answer; exit status 3 when the action
/// may not go ahead (over budget, contained, waiting for an approval).
#[derive(Clone, Debug, Subcommand)]
pub enum EventCommand {
    /// A tool call starts or ends.
    ToolCall {
        /// The tool.
        name: String,
        /// start or end.
        #[arg(long, default_value = "start")]
        phase: String,
        /// Digest of the arguments.
        #[arg(long)]
        args_digest: Option<String>,
        /// Ties an end to its start.
        #[arg(long)]
        call_id: Option<String>,
        /// For an end: how long it took, in milliseconds.
        #[arg(long)]
        latency_ms: Option<f64>,
    },
    /// A plan.
    Plan {
        /// A summary.
        #[arg(long)]
        summary: Option<String>,
    },
    /// An approval the application obtained itself.
    Approval {
        /// What was approved.
        name: String,
        /// Who approved.
        #[arg(long)]
        approver: Option<String>,
    },
    /// A ticket comment.
    TicketComment {
        /// The ticket.
        ticket: String,
        /// Digest of the comment.
        #[arg(long)]
        digest: Option<String>,
    },
    /// A model call.
    ModelCall {
        /// The model.
        model: String,
        /// Input tokens.
        #[arg(long, default_value_t = 0)]
        input_tokens: u64,
        /// Output tokens.
        #[arg(long, default_value_t = 0)]
        output_tokens: u64,
        /// Cost in US dollars.
        #[arg(long, default_value_t = 0.0)]
        cost_usd: f64,
        /// Queueing time, ms.
        #[arg(long)]
        queue_ms: Option<f64>,
        /// Model time, ms.
        #[arg(long)]
        model_ms: Option<f64>,
    },
    /// A notification to a channel.
    Notify {
        /// The channel.
        channel: String,
    },
    /// A command the application runs.
    Exec {
        /// The command line.
        command: String,
    },
}

/// `agentcage run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent's name (its identity is `agent:NAME`, its SPIFFE ID
    /// `spiffe://TRUST_DOMAIN/agent/NAME`).
    #[arg(long)]
    pub agent: String,
    /// The account to run the agent as, among those its policy's run_as lists (`dynamic` is
    /// always allowed: a uid of the agent's own).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Let the agent share your terminal and session instead of giving it a pseudo-terminal
    /// of its own. It can then push input into your shell (TIOCSTI), change your terminal's
    /// settings and read what you type after it exits.
    #[arg(long)]
    pub no_pty: bool,
    /// Record the session into FILE (asciicast v2, as `asciinema play` and `asciinema cat`
    /// read it): what the agent's terminal showed.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Record what you type too (`"i"` events), in `--record`'s file and in a recording the
    /// policy requires.
    #[arg(long)]
    pub record_input: bool,
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
    /// Validate a policy file and put it in force (the daemon also writes it to its own
    /// policy file); a broken one is refused and the old one stays.
    Apply {
        /// The file.
        file: PathBuf,
    },
    /// What would change: the policy in force against a file, as canonical forms (exit
    /// status 1 when they differ).
    Diff {
        /// The file.
        file: PathBuf,
    },
    /// The policy in force: file, hash and canonical form.
    Show,
    /// Print the JSON Schema of policy files (also in policies/schema.json).
    Schema,
}
