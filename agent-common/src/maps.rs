//! Map names and sizes, shared so user space finds exactly what the kernel side declares.

/// cgroup id of a cage → [`crate::cage::CageConfig`].
pub const CAGES: &str = "CAGES";
/// cgroup id of a cage → [`crate::cage::CageStats`].
pub const CAGE_STATS: &str = "CAGE_STATS";
/// IPv4 egress allow list: [`crate::egress::Key4`] → [`crate::egress::PortRules`].
pub const EGRESS_V4: &str = "EGRESS_V4";
/// IPv6 egress allow list: [`crate::egress::Key6`] → [`crate::egress::PortRules`].
pub const EGRESS_V6: &str = "EGRESS_V6";
/// [`crate::file::InodeKey`] → [`crate::process::ExecRule`]: exec rules by file.
pub const EXEC_INODES: &str = "EXEC_INODES";
/// [`crate::process::HashKey`] → [`crate::process::ExecRule`]: exec rules by content.
pub const EXEC_HASHES: &str = "EXEC_HASHES";
/// [`crate::process::ContentKey`] → [`crate::process::ContentEntry`]: executed files' content
/// as the daemon hashed it (kill tier), least recently used first out.
pub const EXEC_CONTENT: &str = "EXEC_CONTENT";
/// Files whose content the kill tier keeps at once.
pub const MAX_CONTENT_ENTRIES: u32 = 16_384;
/// [`crate::file::InodeKey`] → [`crate::file::FileRule`]: file rules.
pub const FILE_RULES: &str = "FILE_RULES";
/// IPv4 ingress allow list (who may connect to the agent's listeners): [`crate::egress::Key4`]
/// (the peer's address) → [`crate::egress::PortRules`] (the agent's ports).
pub const INGRESS_V4: &str = "INGRESS_V4";
/// IPv6 ingress allow list; see [`INGRESS_V4`].
pub const INGRESS_V6: &str = "INGRESS_V6";
/// Unix-socket allow lists as automata: [`crate::unix::DfaKey`] → [`crate::unix::DfaNext`].
pub const UNIX_DFA: &str = "UNIX_DFA";
/// The automata's byte classes: policy slot → [`crate::unix::ByteClasses`].
pub const UNIX_CLASSES: &str = "UNIX_CLASSES";
/// Policy slots with Unix-socket rules at once: every cage's, and as many again for slots
/// being replaced (allocated as used).
pub const MAX_UNIX_SLOTS: u32 = 2 * MAX_CAGES;
/// Entries in each ingress trie, across all agents and policy slots.
pub const MAX_INGRESS_ENTRIES: u32 = 16_384;
/// Transitions in the Unix-socket automata, across all agents and policy slots (allocated
/// as used).
pub const MAX_UNIX_DFA_ENTRIES: u32 = 262_144;
/// One [`crate::kernel::KernelSettings`] at index 0.
pub const SETTINGS: &str = "SETTINGS";
/// Approvals: [`crate::approval::ApprovalKey`] → expiry (boot-time ns).
pub const APPROVALS: &str = "APPROVALS";
/// How many approvals can be in force at once.
pub const MAX_APPROVALS: u32 = 4096;
/// cgroup id of a cage → [`crate::dns::DnsTarget`]: where its DNS is redirected.
pub const DNS_TARGETS: &str = "DNS_TARGETS";
/// [`crate::dns::DnsEndpoint`] → cgroup id of the cage the resolver endpoint serves.
pub const DNS_ENDPOINTS: &str = "DNS_ENDPOINTS";
/// Socket cookie → [`crate::dns::RevNat`]: what a redirected socket asked for (LRU).
pub const DNS_REVNAT: &str = "DNS_REVNAT";
/// Name grants (addresses the cages' resolvers handed out), across all cages and policy
/// slots: each is an entry of the egress tries, which hold these beside the CIDR entries.
pub const MAX_DNS_GRANTS: u32 = 262_144;
/// Redirected sockets remembered for the recvmsg rewrite (least recently used go first).
pub const MAX_DNS_REVNAT: u32 = 65_536;
/// The ring buffer every event goes through.
pub const EVENTS: &str = "EVENTS";
/// Events lost because the agent was unknown when the ring buffer was full.
pub const GLOBAL_LOST: &str = "GLOBAL_LOST";

/// How many cages can exist at once.
pub const MAX_CAGES: u32 = 4096;
/// CIDR entries in each egress trie, across all agents and policy slots.
pub const MAX_EGRESS_ENTRIES: u32 = 65_536;
/// Entries in each egress trie: the CIDR entries and the name grants (allocated as used).
pub const EGRESS_TRIE_ENTRIES: u32 = MAX_EGRESS_ENTRIES + MAX_DNS_GRANTS;
/// Entries in each exec-rule and file-rule map, across all agents and policy slots.
pub const MAX_INODE_RULES: u32 = 16_384;
/// How many directories above an opened file are looked up for file rules.
pub const MAX_FILE_DEPTH: u32 = 32;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 16 * 1024 * 1024;
