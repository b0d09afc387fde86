//! Every map the programs use. Names come from `agent_common::maps` (the static's name is the
//! map's name) so user space finds them.

use agent_common::{
    approval::{ApprovalExpiry, ApprovalKey},
    cage::{CageConfig, CageStats},
    dns::{DnsEndpoint, DnsTarget, RevNat},
    egress::{Key4, Key6, PortRules},
    file::{FileRule, InodeKey},
    maps::{
        EGRESS_TRIE_ENTRIES, EVENTS_BYTES, MAX_APPROVALS, MAX_CAGES, MAX_CONTENT_ENTRIES,
        MAX_DNS_REVNAT, MAX_INGRESS_ENTRIES, MAX_INODE_RULES, MAX_UNIX_DFA_ENTRIES, MAX_UNIX_SLOTS,
    },
    process::{ContentEntry, ContentKey, ExecRule, HashKey},
    unix::{ByteClasses, DfaKey, DfaNext},
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

#[map]
pub static CAGES: HashMap<u64, CageConfig> = HashMap::with_max_entries(MAX_CAGES, 0);

#[map]
pub static CAGE_STATS: PerCpuHashMap<u64, CageStats> =
    PerCpuHashMap::with_max_entries(MAX_CAGES, 0);

#[map]
pub static EGRESS_V4: LpmTrie<Key4, PortRules> = LpmTrie::with_max_entries(EGRESS_TRIE_ENTRIES, 0);

#[map]
pub static EGRESS_V6: LpmTrie<Key6, PortRules> = LpmTrie::with_max_entries(EGRESS_TRIE_ENTRIES, 0);

#[map]
pub static INGRESS_V4: LpmTrie<Key4, PortRules> = LpmTrie::with_max_entries(MAX_INGRESS_ENTRIES, 0);

#[map]
pub static INGRESS_V6: LpmTrie<Key6, PortRules> = LpmTrie::with_max_entries(MAX_INGRESS_ENTRIES, 0);

/// Allocated as used (`BPF_F_NO_PREALLOC`): most cages have no Unix rules at all.
#[map]
pub static UNIX_DFA: HashMap<DfaKey, DfaNext> =
    HashMap::with_max_entries(MAX_UNIX_DFA_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static UNIX_CLASSES: HashMap<u32, ByteClasses> =
    HashMap::with_max_entries(MAX_UNIX_SLOTS, BPF_F_NO_PREALLOC);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static GLOBAL_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static EXEC_INODES: HashMap<InodeKey, ExecRule> = HashMap::with_max_entries(MAX_INODE_RULES, 0);

#[map]
pub static EXEC_HASHES: HashMap<HashKey, ExecRule> = HashMap::with_max_entries(MAX_INODE_RULES, 0);

#[map]
pub static EXEC_CONTENT: LruHashMap<ContentKey, ContentEntry> =
    LruHashMap::with_max_entries(MAX_CONTENT_ENTRIES, 0);

#[map]
pub static FILE_RULES: HashMap<InodeKey, FileRule> = HashMap::with_max_entries(MAX_INODE_RULES, 0);

#[map]
pub static APPROVALS: HashMap<ApprovalKey, ApprovalExpiry> =
    HashMap::with_max_entries(MAX_APPROVALS, 0);

#[map]
pub static DNS_TARGETS: HashMap<u64, DnsTarget> = HashMap::with_max_entries(MAX_CAGES, 0);

#[map]
pub static DNS_ENDPOINTS: HashMap<DnsEndpoint, u64> = HashMap::with_max_entries(2 * MAX_CAGES, 0);

#[map]
pub static DNS_REVNAT: LruHashMap<u64, RevNat> = LruHashMap::with_max_entries(MAX_DNS_REVNAT, 0);
