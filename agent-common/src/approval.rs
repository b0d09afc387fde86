//! Approvals: grants a person gave one cage, checked by the kernel at each decision.

/// Key of the approvals map. A grant of an allow rule that needs approval names the rule and
/// leaves the destination zero; a grant of a destination outside the allow list (the
/// approval-required rung) has `rule_id` [`crate::egress::RULE_DEFAULT_DENY`] and names the
/// destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ApprovalKey {
    /// cgroup v2 id of the cage the grant is for.
    pub cgroup_id: u64,
    /// The rule granted, or `RULE_DEFAULT_DENY` for a destination grant.
    pub rule_id: u32,
    /// Destination port (host order), 0 for a rule grant.
    pub port: u16,
    /// `AF_INET` or `AF_INET6` for a destination grant, 0 for a rule grant.
    pub family: u16,
    /// Destination address as events carry it (IPv4 in the first four bytes); zero for a rule
    /// grant.
    pub addr: [u8; 16],
}

/// Value of the approvals map: `bpf_ktime_get_boot_ns()` after which the grant no longer
/// counts. The kernel compares it at each decision, so an expired grant denies at once,
/// whether or not user space has removed it yet.
pub type ApprovalExpiry = u64;
