//! Deny tier: sends and receives on sockets made outside the caller's cage (inherited, or
//! passed in over a Unix socket). The cgroup hooks judge a socket by the cgroup it was made
//! in, so they never run for these; these LSM hooks judge the *caller*, by the socket's peer.
//!
//! An IP socket's peer (the address a send names, else the connected peer) must be one the
//! caller's egress list admits, or one its ingress list admits on the socket's own port; a
//! receive on a socket with no peer (anyone may send to it) is refused, and so is DNS, which
//! only sockets made in the cage can have redirected to its resolver. Sockets made in the
//! caller's own cage pass at once: the cgroup hooks judged them. Unix sockets are left to
//! the Unix hooks: datagrams are judged on every send (`unix_may_send`); a connected stream
//! passed in (the standard streams sshd or journald hand a service) is not judged.

use agent_common::egress::{
    Hook, Verdict, PROTO_TCP, PROTO_UDP, RULE_DEFAULT_DENY, RULE_DNS_UNREDIRECTED,
};
use aya_ebpf::{helpers::generated::bpf_get_current_cgroup_id, macros::lsm, programs::LsmContext};

use crate::{
    dns::is_dns,
    egress::{cage_of, judge, reached_v4, report, Attempt},
    kernel::{read, settings},
    packets::{lookup, Direction, AF_INET},
    unix::sock_cgroup_id,
};

const EPERM: i32 = 1;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;

/// `socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)`.
#[lsm(hook = "socket_sendmsg")]
pub fn agentcage_socket_sendmsg(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    on_data(ctx.arg(0), ctx.arg(1), Hook::LsmSendmsg)
}

/// `socket_recvmsg(struct socket *sock, struct msghdr *msg, int size, int flags)`.
#[lsm(hook = "socket_recvmsg")]
pub fn agentcage_socket_recvmsg(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    on_data(ctx.arg(0), ctx.arg(1), Hook::LsmRecvmsg)
}

#[inline(always)]
fn on_data(sock: *const u8, msg: *const u8, hook: Hook) -> i32 {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    let s = settings();
    let sk = read::<*const u8>(sock, s.socket_sk).unwrap_or_default();
    if sock_cgroup_id(sk) == cgroup_id {
        return 0;
    }
    let family = read::<u16>(sk, s.sock_family).unwrap_or(0);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let sock_type = read::<u16>(sk, s.sock_type).unwrap_or(0);
    let protocol = read::<u16>(sk, s.sock_protocol).unwrap_or(0);
    let proto_bit = match protocol {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => 0,
    };
    let local_port = read::<u16>(sk, s.sock_num).unwrap_or(0);
    let (judged, addr, port) = peer(sk, msg, family, hook);
    let attempt = Attempt {
        family: judged,
        addr,
        port,
        protocol: u32::from(protocol),
        sock_type: u32::from(sock_type),
        hook,
    };
    // One report site for every refusal: each inlined copy of `report` is verified again.
    let (verdict, rule_id) = if addr == [0; 16] {
        // No peer: a send without one fails anyway; a receive would take anyone's data.
        if hook == Hook::LsmSendmsg {
            return 0;
        }
        (Verdict::Deny, RULE_DEFAULT_DENY)
    } else if is_dns(&attempt) {
        // Only a socket made in the cage is redirected to the cage's resolver: DNS on this one
        // would reach another resolver (as `socket_connect` refuses it too).
        (Verdict::Deny, RULE_DNS_UNREDIRECTED)
    } else {
        let (verdict, rule_id) = judge(&attempt, &cage, cgroup_id);
        if verdict == Verdict::Allow {
            return 0;
        }
        // A peer that may reach the agent's own port (an accepted connection passed in).
        if verdict == Verdict::Deny
            && lookup(&cage, judged, &addr, Direction::In, local_port, proto_bit)
                != RULE_DEFAULT_DENY
        {
            return 0;
        }
        (verdict, rule_id)
    };
    report(&attempt, Some(&cage), cgroup_id, verdict, rule_id);
    -EPERM
}

/// The peer of a send or receive on IP socket `sk`: the address `msg` names for a send that
/// names one, else the connected peer; as (family judged, address, port). IPv4-mapped
/// addresses are judged as IPv4, 0.0.0.0 as the address it reaches; all zeros: no peer.
#[inline(always)]
fn peer(sk: *const u8, msg: *const u8, family: u16, hook: Hook) -> (u16, [u8; 16], u16) {
    let s = settings();
    let mut addr = [0u8; 16];
    let name = read::<*const u8>(msg, s.msg_name).unwrap_or_default();
    let name_len = read::<i32>(msg, s.msg_namelen).unwrap_or(0);
    let (given_family, port, a6) = if hook == Hook::LsmSendmsg && !name.is_null() && name_len > 0 {
        let f = read::<u16>(name, 0).unwrap_or(0);
        let port = u16::from_be(read::<u16>(name, 2).unwrap_or(0));
        let a6 = if f == AF_INET {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&read::<[u8; 4]>(name, 4).unwrap_or_default());
            a
        } else {
            read::<[u8; 16]>(name, 8).unwrap_or_default()
        };
        (f, port, a6)
    } else {
        let port = u16::from_be(read::<u16>(sk, s.sock_dport).unwrap_or(0));
        let a6 = if family == AF_INET {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&read::<[u8; 4]>(sk, s.sock_daddr).unwrap_or_default());
            a
        } else {
            read::<[u8; 16]>(sk, s.sock_v6_daddr).unwrap_or_default()
        };
        (family, port, a6)
    };
    let bound = read::<[u8; 4]>(sk, s.sock_rcv_saddr).unwrap_or_default();
    if given_family == AF_INET {
        let mut v4 = [0u8; 4];
        v4.copy_from_slice(&a6[..4]);
        addr[..4].copy_from_slice(&reached_v4(v4, bound));
        return (AF_INET, addr, port);
    }
    if a6[..10] == [0; 10] && a6[10] == 0xff && a6[11] == 0xff {
        let mut v4 = [0u8; 4];
        v4.copy_from_slice(&a6[12..]);
        addr[..4].copy_from_slice(&reached_v4(v4, bound));
        return (AF_INET, addr, port);
    }
    if a6 == [0; 16] && port != 0 && hook == Hook::LsmSendmsg {
        // `::` names this host: ::1.
        addr[15] = 1;
        return (AF_INET6, addr, port);
    }
    (AF_INET6, a6, port)
}
