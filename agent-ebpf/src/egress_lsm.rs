//! Egress in the deny tier, second line: the BPF LSM hook `socket_connect`.
//!
//! It runs before the cgroup connect hooks and judges the *caller's* cage with the same
//! maps, so a socket created outside a cage and passed in is judged too (the cgroup hooks
//! judge the socket's cgroup). It reports only refusals: allowed connects are reported by the
//! cgroup hooks, once.

use agent_common::egress::{Hook, Verdict, RULE_DNS_UNREDIRECTED};
use aya_ebpf::{helpers::generated::bpf_get_current_cgroup_id, macros::lsm, programs::LsmContext};

use crate::{
    dns::is_dns,
    egress::{cage_of, judge, reached_v4, report, Attempt, LOOPBACK_V4},
    kernel::{read, settings},
};

const EPERM: i32 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

/// `socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)`.
#[lsm(hook = "socket_connect")]
pub fn agentcage_socket_connect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    let s = settings();
    let sock: *const u8 = ctx.arg(0);
    let sa: *const u8 = ctx.arg(1);
    let family = read::<u16>(sa, 0).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let port = u16::from_be(read::<u16>(sa, 2).unwrap_or(0));
    // The socket's bound addresses: where the kernel sends a connect to the wildcard.
    let sk = read::<*const u8>(sock, s.socket_sk).unwrap_or_default();
    let bound_v4 = read::<[u8; 4]>(sk, s.sock_rcv_saddr).unwrap_or_default();
    let mut addr = [0u8; 16];
    let mut judged = family;
    if family == AF_INET {
        let dst = read::<[u8; 4]>(sa, 4).unwrap_or_default();
        addr[..4].copy_from_slice(&reached_v4(dst, bound_v4));
    } else {
        let a6 = read::<[u8; 16]>(sa, 8).unwrap_or_default();
        let is_mapped = |a: &[u8; 16]| a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff;
        if a6 == [0; 16] {
            // `::`, judged as the cgroup hook judges (and rewrites) it.
            let bound_v6 = read::<[u8; 16]>(sk, s.sock_v6_rcv_saddr).unwrap_or_default();
            if is_mapped(&bound_v6) {
                judged = AF_INET;
                addr[..4].copy_from_slice(&LOOPBACK_V4);
            } else {
                addr[15] = 1;
            }
        } else if is_mapped(&a6) {
            // ::ffff:a.b.c.d is judged as IPv4, as the cgroup hooks do.
            judged = AF_INET;
            let mut dst = [0u8; 4];
            dst.copy_from_slice(&a6[12..]);
            addr[..4].copy_from_slice(&reached_v4(dst, bound_v4));
        } else {
            addr = a6;
        }
    }
    let sock_type = read::<u16>(sock, s.socket_type).unwrap_or(0);
    let protocol = match sock_type {
        SOCK_STREAM => 6,
        SOCK_DGRAM => 17,
        _ => 0,
    };
    let attempt = Attempt {
        family: judged,
        addr,
        port,
        protocol,
        sock_type: u32::from(sock_type),
        hook: Hook::LsmConnect,
    };
    if is_dns(&attempt) {
        // The cgroup hook sends it to the cage's resolver, but only runs for sockets made
        // in a cage: DNS on any other socket would leave unjudged.
        let sock_cgroup = socket_cgroup_id(sock);
        if sock_cgroup != 0 && cage_of(sock_cgroup).is_some() {
            return 0;
        }
        report(
            &attempt,
            Some(&cage),
            cgroup_id,
            Verdict::Deny,
            RULE_DNS_UNREDIRECTED,
        );
        return -EPERM;
    }
    let (verdict, rule_id) = judge(&attempt, &cage, cgroup_id);
    if verdict == Verdict::Allow {
        return 0;
    }
    report(&attempt, Some(&cage), cgroup_id, verdict, rule_id);
    -EPERM
}

/// The cgroup v2 id of the cgroup a `struct socket` was created in (0 if unreadable).
#[inline(always)]
fn socket_cgroup_id(sock: *const u8) -> u64 {
    let s = settings();
    let sk = read::<*const u8>(sock, s.socket_sk).unwrap_or_default();
    let cgroup = read::<*const u8>(sk, s.sock_cgroup).unwrap_or_default();
    let kn = read::<*const u8>(cgroup, s.cgroup_kn).unwrap_or_default();
    read::<u64>(kn, s.kernfs_id).unwrap_or(0)
}
