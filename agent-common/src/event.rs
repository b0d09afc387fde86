//! The header every event in the ring buffer starts with.

/// Event kinds; the first field of every record.
pub const KIND_EGRESS: u32 = 1;

/// Fields common to every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of the `KIND_*` constants; tells user space which struct follows.
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
