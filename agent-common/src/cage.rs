//! Per-cage configuration and counters, keyed by the cage's cgroup id.

use crate::event::EventKind;

/// Raw (`SOCK_RAW`), packet and other non-TCP/UDP network sockets are allowed.
pub const CAGE_F_ALLOW_RAW: u32 = 1 << 0;
/// An exec that no exec rule allows is refused (default deny).
pub const CAGE_F_EXEC_DEFAULT_DENY: u32 = 1 << 1;
/// The policy slot has exec rules by content: each executed file is judged by its SHA-256
/// too (deny tier: hashed by IMA; kill tier: looked up in the content map the daemon fills,
/// an exec of unknown content killed).
pub const CAGE_F_EXEC_HASHES: u32 = 1 << 2;
/// The policy slot has file rules: look opened files up (deny tier only).
pub const CAGE_F_FILES: u32 = 1 << 3;
/// The policy names content (`sha256:` rules): an exec whose content cannot be hashed is
/// refused rather than judged by file alone.
pub const CAGE_F_EXEC_DIGESTS_REQUIRED: u32 = 1 << 4;
/// A hard budget limit was reached: every new connect and send is denied with
/// [`crate::egress::Verdict::Budget`] until the daemon lifts it.
pub const CAGE_F_THROTTLED: u32 = 1 << 5;
/// The approval-required rung: destinations outside the allow list are denied with
/// [`crate::egress::Verdict::PendingApproval`] unless a person approved that destination
/// (an [`crate::approval::ApprovalKey`] naming it, unexpired).
pub const CAGE_F_APPROVAL_ALL: u32 = 1 << 6;
/// The read-only rung: no regular file may be opened for writing, truncated, created,
/// removed, renamed or linked (deny tier only).
pub const CAGE_F_READ_ONLY: u32 = 1 << 7;
/// The policy has `host:` rules: an address no CIDR rule admits is looked up in the cage's
/// DNS grants.
pub const CAGE_F_HOSTS: u32 = 1 << 8;
/// The policy confines Unix sockets (`unix:`): a connect or send to a socket whose listener
/// is outside the cage needs an allow rule for its address.
pub const CAGE_F_UNIX: u32 = 1 << 9;

/// What the kernel needs to know about one cage. Written by user space only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CageConfig {
    /// The daemon's number for the agent; user space maps it back to `agent:NAME`.
    pub agent_id: u32,
    /// Key prefix of this agent's entries in the egress tries. A policy change fills a fresh
    /// slot and then swaps this one field, so a decision sees one whole policy or the other.
    pub policy_slot: u32,
    /// `CAGE_F_*` bits.
    pub flags: u32,
    /// Allowed decisions: 0 emits no event, 1 every one, N about one in N. Denials always emit.
    pub allow_sample: u32,
}

/// Counters kept by the kernel per cage, per CPU (user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CageStats {
    /// Decisions that allowed the operation.
    pub allowed: u64,
    /// Decisions that denied the operation.
    pub denied: u64,
    /// Events that could not be reserved in the ring buffer.
    pub lost: u64,
    /// `lost`, by event kind (`KIND_*` is the index).
    pub lost_by_kind: [u64; EventKind::COUNT],
    /// Processes killed by the kill tier.
    pub killed: u64,
}
