//! DNS: every query of a caged process goes to the cage's own resolver.
//!
//! The connect/sendmsg hooks call [`is_dns`] and [`redirect`]: UDP and TCP to port 53 at any
//! address, or to any agentcage resolver endpoint, are rewritten to the cage's endpoint on
//! loopback. The recvmsg hooks below make the resolver's UDP answers appear to come from the
//! address the process asked. The addresses the resolver hands out are entries of the
//! cage's allow list (see `agent_common::egress::PortRules`), judged like any other.

use agent_common::{
    cage::{CageConfig, CAGE_F_THROTTLED},
    dns::{DnsEndpoint, RevNat, DNS_PORT, RESOLVER_V4, RESOLVER_V6},
    egress::{Hook, Verdict, RULE_BUDGET, RULE_DNS_UNREDIRECTED},
};
use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{
    egress::{report, Attempt, AF_INET, AF_INET6, IPPROTO_MPTCP, IPPROTO_TCP, IPPROTO_UDP},
    maps::{DNS_ENDPOINTS, DNS_REVNAT, DNS_TARGETS},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Whether an attempt is DNS that must go to agentcage's resolver: TCP or UDP to port 53
/// anywhere, or to any resolver endpoint (another cage's included).
#[inline(always)]
pub(crate) fn is_dns(attempt: &Attempt) -> bool {
    if !matches!(attempt.protocol, IPPROTO_TCP | IPPROTO_MPTCP | IPPROTO_UDP) {
        return false;
    }
    attempt.port == DNS_PORT || is_endpoint(attempt.family, &attempt.addr, attempt.port)
}

/// Whether `addr:port` is one of agentcage's resolver endpoints.
#[inline(always)]
fn is_endpoint(family: u16, addr: &[u8; 16], port: u16) -> bool {
    let resolver = if family == AF_INET as u16 {
        addr[..4] == RESOLVER_V4
    } else {
        *addr == RESOLVER_V6
    };
    resolver
        && DNS_ENDPOINTS
            .get_ptr(DnsEndpoint { family, port })
            .is_some()
}

/// Sends a DNS attempt to the cage's resolver: rewrites the destination in `sa` (of a socket
/// of family `sock_family`) and remembers what was asked for the answer. No event: the
/// resolver reports the query. A throttled cage, or one without a resolver of the socket's
/// family, is refused.
#[inline(always)]
pub(crate) fn redirect(
    sa: *mut bpf_sock_addr,
    attempt: &Attempt,
    cage: &CageConfig,
    cgroup_id: u64,
) -> i32 {
    if cage.flags & CAGE_F_THROTTLED != 0 {
        report(attempt, Some(cage), cgroup_id, Verdict::Budget, RULE_BUDGET);
        return DENY;
    }
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let ctx = unsafe { &mut *sa };
    // From the hook, a constant in each program: a v4 program may not touch user_ip6.
    let v6 = matches!(attempt.hook, Hook::Connect6 | Hook::Sendmsg6);
    // SAFETY: the value is copied out at once.
    let port = DNS_TARGETS.get_ptr(cgroup_id).map_or(0, |t| unsafe {
        if v6 {
            (*t).port6
        } else {
            (*t).port4
        }
    });
    if port == 0 {
        report(
            attempt,
            Some(cage),
            cgroup_id,
            Verdict::Deny,
            RULE_DNS_UNREDIRECTED,
        );
        return DENY;
    }
    let mut asked = RevNat {
        addr: [0; 16],
        port: attempt.port,
        family: if v6 { AF_INET6 as u16 } else { AF_INET as u16 },
        _pad: 0,
    };
    if v6 {
        let w = [
            ctx.user_ip6[0],
            ctx.user_ip6[1],
            ctx.user_ip6[2],
            ctx.user_ip6[3],
        ];
        asked.addr[0..4].copy_from_slice(&w[0].to_ne_bytes());
        asked.addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
        asked.addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
        asked.addr[12..16].copy_from_slice(&w[3].to_ne_bytes());
    } else {
        asked.addr[..4].copy_from_slice(&ctx.user_ip4.to_ne_bytes());
    }
    // SAFETY: a helper that takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // A full LRU map evicts; an answer then keeps the resolver's address as its source,
    // which a stub may ignore, but the query itself still goes to the resolver.
    let _ = DNS_REVNAT.insert(cookie, asked, 0);
    if v6 {
        set_ip6(ctx, &RESOLVER_V6);
    } else {
        ctx.user_ip4 = u32::from_ne_bytes(RESOLVER_V4);
    }
    ctx.user_port = u32::from(port.to_be());
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn agentcage_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn agentcage_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}

/// A redirected TCP (or connected UDP) socket names the address it asked as its peer.
#[cgroup_sock_addr(getpeername4)]
pub fn agentcage_getpeername4(ctx: SockAddrContext) -> i32 {
    restore4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn agentcage_getpeername6(ctx: SockAddrContext) -> i32 {
    restore6(&ctx)
}

/// Puts back the address a redirected socket asked where the kernel shows the resolver's
/// (the source of a datagram, the peer of a socket).
#[inline(always)]
fn restore4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    let mut from = [0u8; 16];
    from[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    let port = u16::from_be(sa.user_port as u16);
    if !is_endpoint(AF_INET as u16, &from, port) {
        return ALLOW;
    }
    // SAFETY: a helper that takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if let Some(asked) = DNS_REVNAT.get_ptr(cookie) {
        // SAFETY: copied out at once.
        let asked = unsafe { *asked };
        if asked.family == AF_INET as u16 {
            sa.user_ip4 =
                u32::from_ne_bytes([asked.addr[0], asked.addr[1], asked.addr[2], asked.addr[3]]);
            sa.user_port = u32::from(asked.port.to_be());
        }
    }
    // recvmsg and getpeername programs must return 1.
    ALLOW
}

/// As [`restore4`], for IPv6 sockets.
#[inline(always)]
fn restore6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    let w = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let mut from = [0u8; 16];
    from[0..4].copy_from_slice(&w[0].to_ne_bytes());
    from[4..8].copy_from_slice(&w[1].to_ne_bytes());
    from[8..12].copy_from_slice(&w[2].to_ne_bytes());
    from[12..16].copy_from_slice(&w[3].to_ne_bytes());
    let port = u16::from_be(sa.user_port as u16);
    if !is_endpoint(AF_INET6 as u16, &from, port) {
        return ALLOW;
    }
    // SAFETY: a helper that takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if let Some(asked) = DNS_REVNAT.get_ptr(cookie) {
        // SAFETY: copied out at once.
        let asked = unsafe { *asked };
        if asked.family == AF_INET6 as u16 {
            set_ip6(sa, &asked.addr);
            sa.user_port = u32::from(asked.port.to_be());
        }
    }
    ALLOW
}

/// Writes an IPv6 address into `user_ip6`. The verifier takes only 4-byte stores there, and
/// LLVM would merge plain ones into 8-byte stores: each word is written volatile.
#[inline(always)]
fn set_ip6(sa: &mut bpf_sock_addr, a: &[u8; 16]) {
    let words = [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ];
    for (i, w) in words.into_iter().enumerate() {
        // SAFETY: an in-bounds field of the context the kernel handed the program.
        unsafe { core::ptr::write_volatile(&raw mut sa.user_ip6[i], w) };
    }
}
