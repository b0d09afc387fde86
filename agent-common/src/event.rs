//! The header every event in the ring buffer starts with, and the verdicts events carry.

/// The family of a ring-buffer record: tells user space which struct follows the header.
/// One enum for both sides, so the decoder and the per-kind loss counters iterate the same
/// list.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An egress decision ([`crate::egress::EgressEvent`]).
    Egress = 1,
    /// A program image replaced by exec, or an exec refused ([`crate::process::ExecEvent`]).
    Exec = 2,
    /// A new process (not a thread) ([`crate::process::ForkEvent`]).
    Fork = 3,
    /// A process ended ([`crate::process::ExitEvent`]).
    Exit = 4,
    /// An open of a watched or protected file ([`crate::file::FileEvent`]).
    File = 5,
    /// A Unix-socket connect or send judged ([`crate::unix::UnixEvent`]).
    Unix = 6,
}

impl EventKind {
    /// Every kind, in numeric order.
    pub const ALL: [Self; 6] = [
        Self::Egress,
        Self::Exec,
        Self::Fork,
        Self::Exit,
        Self::File,
        Self::Unix,
    ];

    /// One more than the largest kind: the length of per-kind counter arrays.
    pub const COUNT: usize = 7;

    /// The kind of a raw header value, if it is one.
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Egress,
            2 => Self::Exec,
            3 => Self::Fork,
            4 => Self::Exit,
            5 => Self::File,
            6 => Self::Unix,
            _ => return None,
        })
    }

    /// The lower-case name events and counters use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Exec => "exec",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::File => "file",
            Self::Unix => "unix",
        }
    }
}

/// Fields common to every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`]; tells user space which struct follows.
    pub kind: u32,
    /// The agent's number (see [`crate::cage::CageConfig::agent_id`]); 0 when unknown.
    pub agent_id: u32,
    /// The policy slot that decided (see [`crate::cage::CageConfig::policy_slot`]), so user
    /// space names the rule of the policy that was in force, even across a reload.
    pub policy_slot: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` at the decision (CLOCK_BOOTTIME).
    pub ts_ns: u64,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id (thread group).
    pub tgid: u32,
    /// The task's comm, NUL-padded.
    pub comm: [u8; 16],
}

/// The outcome of a decision.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The operation went ahead.
    Allow = 1,
    /// The operation failed with EPERM.
    Deny = 2,
    /// The operation could not be refused on this kernel, so the process was killed with
    /// SIGKILL before it returned to user space (the kill tier).
    Killed = 3,
    /// Nothing was decided: the event only reports (a watched file, a fork, an exit).
    Observed = 4,
    /// The kill tier's SIGKILL could not be sent (the helper failed): the operation went
    /// ahead although the policy forbids it. Reported so it is never silent.
    KillFailed = 5,
    /// The operation failed with EPERM because it needs a person's approval that it does not
    /// have (yet, or any more).
    PendingApproval = 6,
    /// The operation failed with EPERM because the cage is over a hard budget limit.
    Budget = 7,
}

impl Verdict {
    /// The verdict for a raw value from an event, if it is one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allow),
            2 => Some(Self::Deny),
            3 => Some(Self::Killed),
            4 => Some(Self::Observed),
            5 => Some(Self::KillFailed),
            6 => Some(Self::PendingApproval),
            7 => Some(Self::Budget),
            _ => None,
        }
    }

    /// The lower-case name events use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Killed => "killed",
            Self::Observed => "observed",
            Self::KillFailed => "kill-failed",
            Self::PendingApproval => "pending-approval",
            Self::Budget => "budget",
        }
    }
}
