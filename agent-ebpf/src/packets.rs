//! A second line behind the sock_addr hooks, on packets leaving caged sockets: a packet whose
//! headers can send it somewhere other than the address that was judged (IPv4 options such
//! as a source route, an IPv6 routing header) is dropped, and the sender gets EPERM.

use agent_common::egress::{Hook, Verdict, RULE_IP_OPTIONS, RULE_ROUTING_HEADER};
use aya_ebpf::{
    helpers::generated::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext,
};

use crate::egress::{cage_of, report, Attempt};

const PASS: i32 = 1;
const DROP: i32 = 0;

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
