//! Packets of caged sockets, in both directions.
//!
//! Leaving: a second line behind the sock_addr hooks. A packet whose headers can send it
//! somewhere other than the address that was judged (IPv4 options such as a source route, an
//! IPv6 routing header) is dropped, and the sender gets EPERM.
//!
//! Arriving: who may reach the agent. The sock_addr hooks judge what the agent starts; a
//! connection to one of its listeners starts elsewhere. Every packet addressed to a caged
//! listening socket (the SYN, the handshake's last ACK, a SYN cookie's ACK) is judged by its
//! source against `ingress.allow`, so a refused peer's connection never exists: no byte of it
//! reaches the agent or leaves it. A datagram for a caged UDP socket passes if its source is
//! one the agent may send to (a reply), the cage's own resolver, or one `ingress.allow`
//! admits.

use agent_common::{
    cage::{CageConfig, CAGE_F_THROTTLED},
    dns::{RESOLVER_V4, RESOLVER_V6},
    egress::{
        Hook, Key4, Key6, Verdict, PROTO_TCP, PROTO_UDP, RULE_BUDGET, RULE_DEFAULT_DENY,
        RULE_IP_OPTIONS, RULE_NO_CAGE, RULE_ROUTING_HEADER, SLOT_BITS,
    },
};
use aya_ebpf::{
    bindings::BPF_TCP_LISTEN,
    helpers::generated::{bpf_sk_fullsock, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    maps::{lpm_trie::Key, LpmTrie},
    programs::SkBuffContext,
};

use crate::{
    egress::{cage_of, matching_rule, report, Attempt},
    maps::{DNS_TARGETS, EGRESS_V4, EGRESS_V6, INGRESS_V4, INGRESS_V6},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

pub(crate) const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers looked through before the routing header; more is not legitimate.
const MAX_EXT_HEADERS: usize = 4;

#[cgroup_skb(egress)]
pub fn agentcage_skb_egress(ctx: SkBuffContext) -> i32 {
    // cgroup_skb data starts at the network header.
    let protocol = u32::from(u16::from_be(ctx.skb.protocol() as u16));
    match protocol {
        ETH_P_IP => match ctx.load::<u8>(0) {
            // IHL above 5 words: options follow the fixed header.
            Ok(b) if b & 0x0f > 5 => refuse(&ctx, 2, RULE_IP_OPTIONS),
            Ok(_) => PASS,
            Err(_) => refuse(&ctx, 2, RULE_IP_OPTIONS),
        },
        ETH_P_IPV6 => {
            if has_routing_header(&ctx) {
                refuse(&ctx, 10, RULE_ROUTING_HEADER)
            } else {
                PASS
            }
        }
        _ => PASS,
    }
}

#[cgroup_skb(ingress)]
pub fn agentcage_skb_ingress(ctx: SkBuffContext) -> i32 {
    let Some(packet) = Packet::parse(&ctx) else {
        return PASS;
    };
    let listening = packet.protocol == IPPROTO_TCP && listening(&ctx);
    if packet.protocol != IPPROTO_UDP && !listening {
        // Replies on the agent's own connections and on connections already accepted.
        return PASS;
    }
    // SAFETY: the context's skb pointer is valid for the program's run.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let attempt = Attempt {
        family: packet.family,
        addr: packet.source,
        port: packet.dst_port,
        protocol: u32::from(packet.protocol),
        sock_type: if listening { 1 } else { 2 },
        hook: Hook::SkbIngress,
    };
    let Some(cage) = cage_of(cgroup_id) else {
        // A socket below the cages' parent in no known cage: fail closed.
        report(&attempt, None, cgroup_id, Verdict::Deny, RULE_NO_CAGE);
        return DROP;
    };
    if cage.flags & CAGE_F_THROTTLED != 0 {
        report(
            &attempt,
            Some(&cage),
            cgroup_id,
            Verdict::Budget,
            RULE_BUDGET,
        );
        return DROP;
    }
    let proto_bit = if listening { PROTO_TCP } else { PROTO_UDP };
    let (family, source) = (packet.family, &packet.source);
    let rule_id = lookup(
        &cage,
        family,
        source,
        Direction::In,
        packet.dst_port,
        proto_bit,
    );
    if rule_id != RULE_DEFAULT_DENY {
        // A new connection is reported (as the cage samples allows); each datagram is not.
        if listening && packet.syn_only {
            report(&attempt, Some(&cage), cgroup_id, Verdict::Allow, rule_id);
        }
        return PASS;
    }
    if !listening
        && (lookup(
            &cage,
            family,
            source,
            Direction::Out,
            packet.src_port,
            proto_bit,
        ) != RULE_DEFAULT_DENY
            || from_own_resolver(cgroup_id, family, source, packet.src_port))
    {
        // From a destination the agent may send to, or the cage's resolver, to which its
        // DNS was redirected: a reply.
        return PASS;
    }
    // Refused: every retransmitted SYN is reported too, so the peer's persistence shows.
    report(
        &attempt,
        Some(&cage),
        cgroup_id,
        Verdict::Deny,
        RULE_DEFAULT_DENY,
    );
    DROP
}

/// Whether a datagram comes from the cage's own resolver endpoint (its answers to the
/// queries the connect/sendmsg hooks sent there).
#[inline(always)]
fn from_own_resolver(cgroup_id: u64, family: u16, source: &[u8; 16], port: u16) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(target) = DNS_TARGETS.get_ptr(cgroup_id).map(|t| unsafe { *t }) else {
        return false;
    };
    if family == AF_INET {
        port != 0 && port == target.port4 && source[..4] == RESOLVER_V4
    } else {
        port != 0 && port == target.port6 && *source == RESOLVER_V6
    }
}

/// Which allow list an address is looked up in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `ingress.allow`: the peer may reach the agent's port.
    In,
    /// `egress.allow`: the agent may send to the peer's port.
    Out,
}

/// The first rule of the cage's `dir` list that admits `addr` (IPv4 in the first four bytes
/// when `family` is `AF_INET`) on `port` over `proto_bit`, or `RULE_DEFAULT_DENY`. A plain
/// lookup: no approvals, no throttle (the callers decide those).
#[inline(always)]
pub(crate) fn lookup(
    cage: &CageConfig,
    family: u16,
    addr: &[u8; 16],
    dir: Direction,
    port: u16,
    proto_bit: u8,
) -> u32 {
    let slot_be = cage.policy_slot.to_be_bytes();
    let rules = if family == AF_INET {
        let mut a = [0u8; 4];
        a.copy_from_slice(&addr[..4]);
        let key = Key::new(SLOT_BITS + 32, Key4 { slot_be, addr: a });
        trie4(dir).get(&key)
    } else {
        let key = Key::new(
            SLOT_BITS + 128,
            Key6 {
                slot_be,
                addr: *addr,
            },
        );
        trie6(dir).get(&key)
    };
    rules.map_or(RULE_DEFAULT_DENY, |r| matching_rule(r, port, proto_bit).0)
}

#[inline(always)]
fn trie4(dir: Direction) -> &'static LpmTrie<Key4, agent_common::egress::PortRules> {
    match dir {
        Direction::In => &INGRESS_V4,
        Direction::Out => &EGRESS_V4,
    }
}

#[inline(always)]
fn trie6(dir: Direction) -> &'static LpmTrie<Key6, agent_common::egress::PortRules> {
    match dir {
        Direction::In => &INGRESS_V6,
        Direction::Out => &EGRESS_V6,
    }
}

/// Whether the packet is addressed to a listening socket. The kernel hands the filter the
/// listener for every packet of a connection being set up, the handshake's last ACK included.
#[inline(always)]
fn listening(ctx: &SkBuffContext) -> bool {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the context holds, not null.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a full socket the helper returned, valid for the program's run.
    unsafe { (*sk).state == BPF_TCP_LISTEN }
}

/// The parts of an arriving TCP or UDP packet the decision needs.
struct Packet {
    family: u16,
    protocol: u8,
    /// The sender's address, network order (IPv4 in the first four bytes).
    source: [u8; 16],
    src_port: u16,
    dst_port: u16,
    /// A TCP SYN without ACK: a new connection's first packet.
    syn_only: bool,
}

impl Packet {
    /// Parses the network and transport headers; `None` for anything but TCP and UDP (or a
    /// packet too short to hold them, which the stack drops anyway).
    #[inline(always)]
    fn parse(ctx: &SkBuffContext) -> Option<Self> {
        let protocol = u32::from(u16::from_be(ctx.skb.protocol() as u16));
        let mut source = [0u8; 16];
        let (family, l4, next) = match protocol {
            ETH_P_IP => {
                let ihl = usize::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4;
                // A fragment past the first carries no transport header: judged with its
                // first fragment, which the stack must see before reassembly completes.
                let frag = u16::from_be(ctx.load::<u16>(6).ok()?);
                if frag & 0x1fff != 0 {
                    return None;
                }
                source[..4].copy_from_slice(&ctx.load::<[u8; 4]>(12).ok()?);
                (AF_INET, ihl, ctx.load::<u8>(9).ok()?)
            }
            ETH_P_IPV6 => {
                source = ctx.load::<[u8; 16]>(8).ok()?;
                let (offset, next) = transport_v6(ctx)?;
                (AF_INET6, offset, next)
            }
            _ => return None,
        };
        if next != IPPROTO_TCP && next != IPPROTO_UDP {
            return None;
        }
        let src_port = u16::from_be(ctx.load::<u16>(l4).ok()?);
        let dst_port = u16::from_be(ctx.load::<u16>(l4 + 2).ok()?);
        let syn_only = next == IPPROTO_TCP && ctx.load::<u8>(l4 + 13).ok()? & 0x12 == 0x02;
        Some(Self {
            family,
            protocol: next,
            source,
            src_port,
            dst_port,
            syn_only,
        })
    }
}

/// The offset and protocol of an IPv6 packet's transport header, past hop-by-hop and
/// destination-options headers.
#[inline(always)]
fn transport_v6(ctx: &SkBuffContext) -> Option<(usize, u8)> {
    let mut next = ctx.load::<u8>(6).ok()?;
    let mut offset = 40usize;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_DEST => {
                let n = ctx.load::<u8>(offset).ok()?;
                let len = ctx.load::<u8>(offset + 1).ok()?;
                next = n;
                offset += (usize::from(len) + 1) * 8;
            }
            _ => return Some((offset, next)),
        }
    }
    Some((offset, next))
}

/// Walks hop-by-hop and destination-options headers looking for a routing header. A header
/// chain that cannot be read counts as having one (fail closed).
#[inline(always)]
fn has_routing_header(ctx: &SkBuffContext) -> bool {
    let Ok(mut next) = ctx.load::<u8>(6) else {
        return true;
    };
    let mut offset = 40usize;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXTHDR_ROUTING => return true,
            NEXTHDR_HOP | NEXTHDR_DEST => {
                let (Ok(n), Ok(len)) = (ctx.load::<u8>(offset), ctx.load::<u8>(offset + 1)) else {
                    return true;
                };
                next = n;
                offset += (usize::from(len) + 1) * 8;
            }
            _ => return false,
        }
    }
    // Still in extension headers after the limit: treat as suspect.
    matches!(next, NEXTHDR_ROUTING | NEXTHDR_HOP | NEXTHDR_DEST)
}

/// Reports the drop against the sending socket's cage, with the packet's destination.
#[inline(always)]
fn refuse(ctx: &SkBuffContext, family: u16, rule_id: u32) -> i32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // Fixed-size loads: the verifier refuses a length that could be zero.
    let mut addr = [0u8; 16];
    if family == 2 {
        if let Ok(v4) = ctx.load::<[u8; 4]>(16) {
            addr[..4].copy_from_slice(&v4);
        }
    } else if let Ok(v6) = ctx.load::<[u8; 16]>(24) {
        addr = v6;
    }
    let attempt = Attempt {
        family,
        addr,
        port: 0,
        protocol: 0,
        sock_type: 0,
        hook: Hook::SkbEgress,
    };
    report(
        &attempt,
        cage_of(cgroup_id).as_ref(),
        cgroup_id,
        Verdict::Deny,
        rule_id,
    );
    DROP
}
