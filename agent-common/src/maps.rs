//! Map names and sizes, shared so user space finds exactly what the kernel side declares.

/// cgroup id of a cage → [`crate::cage::CageConfig`].
pub const CAGES: &str = "CAGES";
/// cgroup id of a cage → [`crate::cage::CageStats`].
pub const CAGE_STATS: &str = "CAGE_STATS";
/// IPv4 egress allow list: [`crate::egress::Key4`] → [`crate::egress::PortRules`].
pub const EGRESS_V4: &str = "EGRESS_V4";
/// IPv6 egress allow list: [`crate::egress::Key6`] → [`crate::egress::PortRules`].
pub const EGRESS_V6: &str = "EGRESS_V6";
/// Approvals: [`crate::approval::ApprovalKey`] → expiry (boot-time ns).
pub const APPROVALS: &str = "APPROVALS";
/// How many approvals can be in force at once.
pub const MAX_APPROVALS: u32 = 4096;
/// The ring buffer every event goes through.
pub const EVENTS: &str = "EVENTS";
/// Events lost because the agent was unknown when the ring buffer was full.
pub const GLOBAL_LOST: &str = "GLOBAL_LOST";

/// How many cages can exist at once.
pub const MAX_CAGES: u32 = 4096;
/// Entries in each egress trie, across all agents and policy slots.
pub const MAX_EGRESS_ENTRIES: u32 = 65_536;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;
