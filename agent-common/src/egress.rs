//! Egress decisions: the allow-list maps' keys and values, and the decision event.

use crate::event::EventHeader;
pub use crate::event::Verdict;

/// Rule bits: which transport a [`PortRule`] admits.
pub const PROTO_TCP: u8 = 1 << 0;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 1 << 1;

/// [`PortRule::flags`] bit: a match allows only while a person's approval of the rule for
/// this cage is unexpired (see [`crate::approval`]); otherwise the verdict is
/// [`Verdict::PendingApproval`].
pub const RULE_F_APPROVAL: u8 = 1 << 0;
/// [`PortRule::flags`] bit: the rule is a `host:` rule's, in a name grant's entry (see
/// [`PortRules::name_id`]); it counts only until the grant's expiry, and a decision by it
/// names the grant's name.
pub const RULE_F_NAMED: u8 = 1 << 1;

/// How many port rules one trie entry can hold (its own plus those of every shorter prefix
/// that covers it; user space folds them in so the longest match alone decides).
pub const MAX_PORT_RULES: usize = 16;

/// `rule_id` when no allow rule matched (default deny).
pub const RULE_DEFAULT_DENY: u32 = u32::MAX;
/// `rule_id` when a raw, packet or otherwise non-TCP/UDP socket was refused.
pub const RULE_SOCKET_KIND: u32 = u32::MAX - 1;
/// `rule_id` when the caller is in no known cage (fail closed).
pub const RULE_NO_CAGE: u32 = u32::MAX - 2;
/// `rule_id` when a socket was allowed by the cage's raw-socket permission.
pub const RULE_SOCKET_ALLOWED: u32 = u32::MAX - 3;
/// `rule_id` when an IPv4 packet carried options (a source route can send it elsewhere
/// than the address that was judged).
pub const RULE_IP_OPTIONS: u32 = u32::MAX - 4;
/// `rule_id` when an IPv6 packet carried a routing header (likewise).
pub const RULE_ROUTING_HEADER: u32 = u32::MAX - 5;
/// `rule_id` when the cage is throttled because a hard budget limit was reached.
pub const RULE_BUDGET: u32 = u32::MAX - 6;
/// `rule_id` when a DNS query could not be sent to agentcage's resolver: the socket was made
/// outside every cage (the deny tier's second line), or the cage has no resolver of that
/// family. DNS never leaves a cage any other way.
pub const RULE_DNS_UNREDIRECTED: u32 = u32::MAX - 7;

/// Which hook decided.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// cgroup/connect4
    Connect4 = 1,
    /// cgroup/connect6
    Connect6 = 2,
    /// cgroup/sendmsg4
    Sendmsg4 = 3,
    /// cgroup/sendmsg6
    Sendmsg6 = 4,
    /// cgroup/sock_create
    SockCreate = 5,
    /// cgroup_skb/egress (packets whose headers could redirect them)
    SkbEgress = 6,
    /// The deny tier's BPF LSM `socket_connect`, a second line that judges the caller's
    /// cage even for a socket made outside it.
    LsmConnect = 7,
    /// cgroup_skb/ingress: a packet for a caged listening socket (a connection being
    /// accepted) or a datagram for a caged UDP socket, judged by its source. The event's
    /// address is the peer's, its port the agent's own; the rule is an `ingress.allow` index.
    SkbIngress = 8,
    /// The deny tier's BPF LSM `socket_sendmsg`: a send on a socket made outside the
    /// caller's cage, judged by its peer.
    LsmSendmsg = 9,
    /// The deny tier's BPF LSM `socket_recvmsg`: a receive on such a socket.
    LsmRecvmsg = 10,
}

impl Hook {
    /// The hook for a raw value from an event, if it is one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Connect4,
            2 => Self::Connect6,
            3 => Self::Sendmsg4,
            4 => Self::Sendmsg6,
            5 => Self::SockCreate,
            6 => Self::SkbEgress,
            7 => Self::LsmConnect,
            8 => Self::SkbIngress,
            9 => Self::LsmSendmsg,
            10 => Self::LsmRecvmsg,
            _ => return None,
        })
    }

    /// The section-style name, e.g. `connect4`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SockCreate => "sock_create",
            Self::SkbEgress => "skb_egress",
            Self::LsmConnect => "lsm_socket_connect",
            Self::SkbIngress => "skb_ingress",
            Self::LsmSendmsg => "lsm_socket_sendmsg",
            Self::LsmRecvmsg => "lsm_socket_recvmsg",
        }
    }
}

/// Data half of an IPv4 trie key: the policy slot (big-endian, matched in full) and the
/// address. The trie's prefix length is 32 + the CIDR's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key4 {
    /// Policy slot, big-endian so that it forms the key's leading bits.
    pub slot_be: [u8; 4],
    /// IPv4 address, network order.
    pub addr: [u8; 4],
}

/// Data half of an IPv6 trie key; see [`Key4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key6 {
    /// Policy slot, big-endian.
    pub slot_be: [u8; 4],
    /// IPv6 address, network order.
    pub addr: [u8; 16],
}

/// Bits of a trie key taken by the slot.
pub const SLOT_BITS: u32 = 32;

/// One port range and protocol set admitted for a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// Lowest admitted port (host order).
    pub port_lo: u16,
    /// Highest admitted port (host order).
    pub port_hi: u16,
    /// `PROTO_*` bits.
    pub protocols: u8,
    /// `RULE_F_*` bits.
    pub flags: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
    /// Index of the rule in the agent's `egress.allow` list; reported on events.
    pub rule_id: u32,
}

/// Trie value: every rule that applies to destinations under the entry's prefix.
///
/// A name grant (an address the cage's resolver handed out) is an entry of its own for that
/// one address (/32 or /128), holding the `host:` rules that admit the name
/// ([`RULE_F_NAMED`]) merged in list order with the rules of the CIDR entry covering the
/// address: one lookup and one scan decide, as for any address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRules {
    /// How many of `rules` are used.
    pub count: u32,
    /// For a name grant, the daemon's number for the allowed name that granted the address
    /// (reported on events as `dst_name`); 0 for a CIDR entry.
    pub name_id: u32,
    /// For a name grant, the `bpf_ktime_get_boot_ns()` from which its [`RULE_F_NAMED`] rules
    /// no longer count (checked at each decision, so an expired grant denies at once).
    pub expiry_ns: u64,
    /// The rules, first match wins.
    pub rules: [PortRule; MAX_PORT_RULES],
}

impl Default for PortRules {
    fn default() -> Self {
        Self {
            count: 0,
            name_id: 0,
            expiry_ns: 0,
            rules: [PortRule::default(); MAX_PORT_RULES],
        }
    }
}

/// One egress decision, as the kernel reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EgressEvent {
    /// Common fields.
    pub header: EventHeader,
    /// Destination address, network order; IPv4 (and IPv4-mapped IPv6 judged as IPv4) in the
    /// first four bytes.
    pub addr: [u8; 16],
    /// Index of the rule that decided, or one of the `RULE_*` constants.
    pub rule_id: u32,
    /// Destination port, host order (0 for sock_create).
    pub port: u16,
    /// Address family judged: `AF_INET` (2) or `AF_INET6` (10); for sock_create, the socket's.
    pub family: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...), or the socket's protocol for sock_create.
    pub protocol: u16,
    /// Socket type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_RAW` 3, ...).
    pub sock_type: u16,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// [`Hook`] as u8.
    pub hook: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
    /// The daemon's number for the allowed name whose resolution granted the address
    /// (see [`PortRules::name_id`]), or 0 when no name decided.
    pub name_id: u32,
    /// Padding, zero.
    pub _pad2: u32,
}
