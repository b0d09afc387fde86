//! Why a state change was refused; each message is meant for the person who asked.

use std::path::PathBuf;

use crate::{
    bpf::BpfError,
    cage::CageError,
    policy::PolicyError,
    runtime::{approvals::ApprovalError, containment::ContainError},
};

/// Errors of state changes; each message is meant for the person who asked.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The policy has no entry for the agent and no default_agent.
    #[error(
        "unknown agent {agent:?}: policy {policy} has no agents.{agent} entry and no default_agent"
    )]
    UnknownAgent {
        /// The agent's name.
        agent: String,
        /// The policy file.
        policy: String,
    },
    /// The policy refused something (bad name, broken file, uncompilable rules).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cage(#[from] CageError),
    /// A map update failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// A non-root client asked to move a process it does not own.
    #[error(
        "permission denied: process {pid} belongs to uid {owner}, not to the caller (uid {caller})"
    )]
    NotYours {
        /// The process.
        pid: u32,
        /// Its owner.
        owner: u32,
        /// The caller.
        caller: u32,
    },
    /// The process does not exist.
    #[error("no process {0}")]
    NoProcess(u32),
    /// No agent of that name has run since the daemon started.
    #[error("no agent {0:?} has run under this daemon")]
    NoSuchAgent(String),
    /// The daemon is shutting down.
    #[error("agentcaged is shutting down and takes no process into a cage")]
    Stopping,
    /// The process may not be caged (init, the daemon, a kernel thread, or one caged already).
    #[error("refused to cage process {pid}: {why}")]
    Uncageable {
        /// The process.
        pid: u32,
        /// Why.
        why: String,
    },
    /// A container may not be caged as it is.
    #[error("refused to cage container {id}: {why}")]
    Container {
        /// The container's id.
        id: String,
        /// Why.
        why: String,
    },
    /// The agent's policy has rules this kernel cannot enforce (the kill tier, or a deny
    /// tier without a hook they need).
    #[error(
        "refused to start agent {agent:?}: its policy has {needs}, which this kernel cannot \
         enforce: {missing}. Run it on a kernel that can (see `agentcage doctor`), or remove \
         {needs} from its policy"
    )]
    TierUnavailable {
        /// The agent.
        agent: String,
        /// What in its policy cannot be enforced.
        needs: String,
        /// What the kernel lacks.
        missing: String,
    },
    /// The agent's policy confines Unix sockets and this kernel has no way to.
    #[error(
        "refused to start agent {agent:?}: its policy confines Unix sockets (unix:), which \
         needs BPF LSM or the cgroup Unix socket hooks of Linux 6.7 and later, and this kernel \
         has neither: {missing}. Run it on such a kernel (see `agentcage doctor`), or remove \
         unix: from its policy"
    )]
    UnixUnavailable {
        /// The agent.
        agent: String,
        /// What the kernel lacks.
        missing: String,
    },
    /// The agent's policy sets a limit whose cgroup v2 controller the hierarchy lacks.
    #[error(
        "refused to start agent {agent:?}: its policy sets {limit}, but the cgroup v2 \
         hierarchy at {hierarchy} has no {controller} controller (it may be bound to a cgroup \
         v1 hierarchy on this host: see {hierarchy}/cgroup.controllers). Boot with cgroup v2 \
         only (systemd.unified_cgroup_hierarchy=1), or remove {limit} from its policy"
    )]
    ControllerUnavailable {
        /// The agent.
        agent: String,
        /// The limit, e.g. `limits.memory`.
        limit: &'static str,
        /// The controller it needs.
        controller: &'static str,
        /// Where cgroup v2 is mounted.
        hierarchy: String,
    },
    /// The agent's exec rules judge content in the kill tier, and the process cannot be
    /// watched (it shares the host's mount namespace, or marking it failed).
    #[error(
        "refused to cage process {pid} as agent {agent:?}: its exec rules judge content, which \
         the kill tier checks only for processes in a mount namespace of their own that the \
         daemon watches ({source}). Start it with `agentcage run` as root (which gives it \
         that namespace), or use rules by file only (an allow list, exec.default: deny)"
    )]
    Unwatchable {
        /// The agent.
        agent: String,
        /// The process.
        pid: u32,
        /// Why it cannot be watched.
        #[source]
        source: crate::execwatch::WatchError,
    },
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
    /// The policy file could not be written.
    #[error("writing the policy file {path}: {source}")]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No cage of that agent exists.
    #[error("agent {0:?} has no cage (it is not running); `agentcage status` lists the agents")]
    NoCage(String),
    /// An approval decision was refused.
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    /// Freezing, killing or the snapshot failed.
    #[error(transparent)]
    Contain(#[from] ContainError),
    /// The account the agent runs as cannot be granted.
    #[error(transparent)]
    Account(#[from] crate::accounts::AccountError),
    /// A recording the policy requires could not be made.
    #[error(transparent)]
    Recording(#[from] crate::recording::RecordingError),
    /// The node's keys or the revocations could not be read or written.
    #[error(transparent)]
    Credential(crate::credentials::CredentialError),
    /// The agent needs a valid behavior certificate and has none.
    #[error(
        "refused to start agent {agent:?}: its policy requires a behavior certificate \
         (certificate: required) valid for the policy in force, and {reason}"
    )]
    Certificate {
        /// The agent.
        agent: String,
        /// What is wrong with its certificate.
        reason: String,
    },
    /// Watching a cage for emptiness failed.
    #[error("watching {path}: {source}")]
    Watch {
        /// The file watched.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The cage's resolver endpoint could not be opened.
    #[error("agent {agent}: opening its DNS resolver on loopback: {source}")]
    Dns {
        /// The agent.
        agent: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
