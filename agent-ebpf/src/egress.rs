//! Egress: cgroup sock_addr hooks (connect4/6, sendmsg4/6) and sock_create.
//!
//! Attached to agentcage's parent cgroup, so they run for sockets created in any cage. The
//! decision is one hash lookup (the cage) and one LPM-trie lookup (the destination), whatever
//! the size of the allow list.

use agent_common::{
    approval::ApprovalKey,
    cage::{CageConfig, CAGE_F_ALLOW_RAW, CAGE_F_APPROVAL_ALL, CAGE_F_THROTTLED},
    egress::{
        EgressEvent, Hook, Key4, Key6, PortRules, Verdict, MAX_PORT_RULES, PROTO_TCP, PROTO_UDP,
        RULE_BUDGET, RULE_DEFAULT_DENY, RULE_F_APPROVAL, RULE_F_NAMED, RULE_NO_CAGE,
        RULE_SOCKET_ALLOWED, RULE_SOCKET_KIND, SLOT_BITS,
    },
    event::EventKind,
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_current_cgroup_id, bpf_get_prandom_u32, bpf_ktime_get_boot_ns},
    macros::{cgroup_sock, cgroup_sock_addr},
    maps::lpm_trie::Key,
    programs::{SockAddrContext, SockContext},
};
use aya_log_ebpf::warn;

use crate::{
    dns,
    events::{count, header, header_without_task, Counter},
    maps::{APPROVALS, CAGES, EGRESS_V4, EGRESS_V6, EVENTS},
};

/// Return values of cgroup sock programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const AF_UNIX: u32 = 1;
pub(crate) const AF_INET: u32 = 2;
pub(crate) const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_IP: u32 = 0;
pub(crate) const IPPROTO_TCP: u32 = 6;
pub(crate) const IPPROTO_UDP: u32 = 17;
pub(crate) const IPPROTO_MPTCP: u32 = 262;

#[cgroup_sock_addr(connect4)]
pub fn agentcage_connect4(ctx: SockAddrContext) -> i32 {
    on_v4(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn agentcage_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_v4(&ctx, Hook::Sendmsg4)
}

#[cgroup_sock_addr(connect6)]
pub fn agentcage_connect6(ctx: SockAddrContext) -> i32 {
    on_v6(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn agentcage_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_v6(&ctx, Hook::Sendmsg6)
}

/// What is being judged, gathered from the hook's context.
pub(crate) struct Attempt {
    pub(crate) family: u16,
    pub(crate) addr: [u8; 16],
    pub(crate) port: u16,
    pub(crate) protocol: u32,
    pub(crate) sock_type: u32,
    pub(crate) hook: Hook,
}

impl Attempt {
    /// The attempt a sock_addr context describes, with the destination as judged.
    #[inline(always)]
    fn of(sa: &bpf_sock_addr, family: u16, addr: [u8; 16], hook: Hook) -> Self {
        Self {
            family,
            addr,
            port: u16::from_be(sa.user_port as u16),
            protocol: sa.protocol,
            sock_type: sa.type_,
            hook,
        }
    }
}

#[inline(always)]
fn on_v4(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &mut *ctx.sock_addr };
    // user_ip4 holds the address in network order; its in-memory bytes are the address.
    let dst = sa.user_ip4.to_ne_bytes();
    let reached = reached_v4(dst, source_v4(sa, hook));
    if reached != dst {
        // The kernel goes exactly where the decision looked.
        sa.user_ip4 = u32::from_ne_bytes(reached);
    }
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&reached);
    decide(ctx.sock_addr, &Attempt::of(sa, AF_INET as u16, addr, hook))
}

#[inline(always)]
fn on_v6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // SAFETY: as in on_v4.
    let sa = unsafe { &mut *ctx.sock_addr };
    // The verifier allows only 4-byte loads of user_ip6, one word at a time.
    let words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let mut addr = [0u8; 16];
    let mut family = AF_INET6 as u16;
    let mapped = u32::from_be(0x0000_ffff);
    if words == [0; 4] {
        // `::` means this host. A socket bound to an IPv4-mapped address connects to
        // 127.0.0.1 (as IPv4); any other goes to ::1 (tcp_v6_connect, ip6_datagram_connect,
        // udpv6_sendmsg).
        if hook == Hook::Connect6 && bound_v4_mapped(sa) {
            family = AF_INET as u16;
            addr[..4].copy_from_slice(&LOOPBACK_V4);
            sa.user_ip6[2] = mapped;
            sa.user_ip6[3] = u32::from_ne_bytes(LOOPBACK_V4);
        } else {
            addr[15] = 1;
            sa.user_ip6[3] = u32::from_be(1);
        }
    } else if words[0] == 0 && words[1] == 0 && words[2] == mapped {
        // ::ffff:a.b.c.d is an IPv4 destination: judge it by the IPv4 list, with 0.0.0.0
        // resolved as the IPv4 stack resolves it.
        family = AF_INET as u16;
        let dst = words[3].to_ne_bytes();
        let reached = reached_v4(dst, source_v4(sa, hook));
        if reached != dst {
            sa.user_ip6[3] = u32::from_ne_bytes(reached);
        }
        addr[..4].copy_from_slice(&reached);
    } else {
        addr[0..4].copy_from_slice(&words[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&words[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&words[2].to_ne_bytes());
        addr[12..16].copy_from_slice(&words[3].to_ne_bytes());
    }
    decide(ctx.sock_addr, &Attempt::of(sa, family, addr, hook))
}

/// 127.0.0.1, network order.
pub(crate) const LOOPBACK_V4: [u8; 4] = [127, 0, 0, 1];

/// Where a connect or send to the IPv4 destination `dst` goes. The kernel sends one for
/// 0.0.0.0 to the socket's own source address, or to 127.0.0.1 when it has none
/// (`ip_route_output_key_hash_rcu`), so that is the address judged: an allow rule that
/// covers 0.0.0.0 must not reach the local host's servers.
#[inline(always)]
pub(crate) fn reached_v4(dst: [u8; 4], source: [u8; 4]) -> [u8; 4] {
    if dst != [0; 4] {
        dst
    } else if source != [0; 4] {
        source
    } else {
        LOOPBACK_V4
    }
}

/// The source address the IPv4 stack will use: for a send, the one `IP_PKTINFO` or the bound
/// address gives (`msg_src_ip4`); for a connect, the bound address.
#[inline(always)]
fn source_v4(sa: &bpf_sock_addr, hook: Hook) -> [u8; 4] {
    if hook == Hook::Sendmsg4 {
        return sa.msg_src_ip4.to_ne_bytes();
    }
    // SAFETY: sock_addr programs always get the socket (PTR_TO_SOCKET, never null).
    unsafe { (*sa.__bindgen_anon_1.sk).src_ip4 }.to_ne_bytes()
}

/// Whether the socket is bound to an IPv4-mapped IPv6 address.
#[inline(always)]
fn bound_v4_mapped(sa: &bpf_sock_addr) -> bool {
    // SAFETY: as in source_v4.
    let sk = unsafe { &*sa.__bindgen_anon_1.sk };
    sk.src_ip6[0] == 0 && sk.src_ip6[1] == 0 && sk.src_ip6[2] == u32::from_be(0x0000_ffff)
}

/// Looks the destination up in the caller's cage policy and reports the decision; DNS goes
/// to the cage's resolver instead (`sa` is rewritten). The wildcard was already resolved to
/// what it reaches, so a query to 0.0.0.0:53 is redirected like one to 127.0.0.1:53.
#[inline(always)]
fn decide(sa: *mut bpf_sock_addr, attempt: &Attempt) -> i32 {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        // The socket belongs to a cage (else this program would not run) but the caller is in
        // none the daemon knows: fail closed.
        report(attempt, None, cgroup_id, Verdict::Deny, RULE_NO_CAGE);
        return DENY;
    };
    if dns::is_dns(attempt) {
        return dns::redirect(sa, attempt, &cage, cgroup_id);
    }
    let (verdict, rule_id, name_id) = judge_named(attempt, &cage, cgroup_id);
    report_named(attempt, Some(&cage), cgroup_id, verdict, rule_id, name_id);
    if verdict == Verdict::Allow {
        ALLOW
    } else {
        DENY
    }
}

/// The cage policy's verdict on an attempt, and the deciding rule: see [`judge_named`].
#[inline(always)]
pub(crate) fn judge(attempt: &Attempt, cage: &CageConfig, cgroup_id: u64) -> (Verdict, u32) {
    let (verdict, rule_id, _) = judge_named(attempt, cage, cgroup_id);
    (verdict, rule_id)
}

/// The cage policy's verdict on an attempt, the deciding rule and the name whose grant
/// decided (0 for none): the budget throttle, then the allow list (one trie lookup: the
/// address's name grant if the cage's resolver handed it out, else its CIDR entry), then
/// approvals.
#[inline(always)]
pub(crate) fn judge_named(
    attempt: &Attempt,
    cage: &CageConfig,
    cgroup_id: u64,
) -> (Verdict, u32, u32) {
    // Over a hard budget: no new egress at all, whatever the allow list says.
    if cage.flags & CAGE_F_THROTTLED != 0 {
        return (Verdict::Budget, RULE_BUDGET, 0);
    }
    let proto_bit = match attempt.protocol {
        IPPROTO_TCP | IPPROTO_MPTCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => 0,
    };
    let rules = if attempt.family == AF_INET as u16 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&attempt.addr[..4]);
        let key = Key::new(
            SLOT_BITS + 32,
            Key4 {
                slot_be: cage.policy_slot.to_be_bytes(),
                addr: a,
            },
        );
        EGRESS_V4.get(&key)
    } else {
        let key = Key::new(
            SLOT_BITS + 128,
            Key6 {
                slot_be: cage.policy_slot.to_be_bytes(),
                addr: attempt.addr,
            },
        );
        EGRESS_V6.get(&key)
    };
    let (rule_id, rule_flags, name_id) = rules.map_or((RULE_DEFAULT_DENY, 0, 0), |r| {
        matching_rule(r, attempt.port, proto_bit)
    });
    let verdict = if rule_id == RULE_DEFAULT_DENY {
        if cage.flags & CAGE_F_APPROVAL_ALL != 0 {
            // The approval-required rung: a destination a person approved passes.
            let key = ApprovalKey {
                cgroup_id,
                rule_id,
                port: attempt.port,
                family: attempt.family,
                addr: attempt.addr,
            };
            if approved(&key) {
                Verdict::Allow
            } else {
                Verdict::PendingApproval
            }
        } else {
            Verdict::Deny
        }
    } else if rule_flags & RULE_F_APPROVAL != 0 {
        let key = ApprovalKey {
            cgroup_id,
            rule_id,
            ..ApprovalKey::default()
        };
        if approved(&key) {
            Verdict::Allow
        } else {
            Verdict::PendingApproval
        }
    } else {
        Verdict::Allow
    };
    (verdict, rule_id, name_id)
}

/// Whether a person's grant for `key` exists and has not expired. The expiry is checked here,
/// at the decision, so a lapsed grant denies even before user space removes it.
#[inline(always)]
pub(crate) fn approved(key: &ApprovalKey) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(expiry) = APPROVALS.get_ptr(key).map(|p| unsafe { *p }) else {
        return false;
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    now < expiry
}

/// The first rule admitting `port` over `proto_bit`, its `RULE_F_*` flags and the name it
/// was granted for (0 unless a name grant's rule), or `RULE_DEFAULT_DENY`. A name grant's
/// own rules lapse at its expiry; the CIDR rules merged into its entry do not.
#[inline(always)]
pub(crate) fn matching_rule(rules: &PortRules, port: u16, proto_bit: u8) -> (u32, u8, u32) {
    // SAFETY: a helper without preconditions.
    let lapsed = rules.name_id != 0 && unsafe { bpf_ktime_get_boot_ns() } >= rules.expiry_ns;
    let count = rules.count as usize;
    for i in 0..MAX_PORT_RULES {
        if i >= count {
            break;
        }
        let r = &rules.rules[i];
        let named = r.flags & RULE_F_NAMED != 0;
        if r.protocols & proto_bit != 0
            && port >= r.port_lo
            && port <= r.port_hi
            && !(named && lapsed)
        {
            return (r.rule_id, r.flags, if named { rules.name_id } else { 0 });
        }
    }
    (RULE_DEFAULT_DENY, 0, 0)
}

#[inline(always)]
pub(crate) fn cage_of(cgroup_id: u64) -> Option<CageConfig> {
    // SAFETY: the value is copied out at once; user space replaces values whole.
    CAGES.get_ptr(cgroup_id).map(|p| unsafe { *p })
}

/// Counts the decision and sends its event (allows subject to the cage's sampling).
#[inline(always)]
pub(crate) fn report(
    attempt: &Attempt,
    cage: Option<&CageConfig>,
    cgroup_id: u64,
    verdict: Verdict,
    rule_id: u32,
) {
    report_named(attempt, cage, cgroup_id, verdict, rule_id, 0);
}

/// As [`report`], for a decision a name's grant made (`name_id`, or 0).
#[inline(always)]
pub(crate) fn report_named(
    attempt: &Attempt,
    cage: Option<&CageConfig>,
    cgroup_id: u64,
    verdict: Verdict,
    rule_id: u32,
    name_id: u32,
) {
    let emit = match verdict {
        Verdict::Deny | Verdict::PendingApproval | Verdict::Budget => {
            count(cgroup_id, Counter::Denied);
            true
        }
        Verdict::Killed | Verdict::Observed | Verdict::KillFailed => true,
        Verdict::Allow => {
            // An accepted connection is not new egress (the budgets meter this counter).
            if attempt.hook != Hook::SkbIngress {
                count(cgroup_id, Counter::Allowed);
            }
            match cage.map_or(1, |c| c.allow_sample) {
                0 => false,
                1 => true,
                // SAFETY: a helper without preconditions.
                n => (unsafe { bpf_get_prandom_u32() }) % n == 0,
            }
        }
    };
    if !emit {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<EgressEvent>(0) else {
        count(cgroup_id, Counter::Lost(EventKind::Egress));
        return;
    };
    entry.write(EgressEvent {
        // A constant per call site once inlined, so a packet program never contains the
        // task helpers.
        header: if matches!(attempt.hook, Hook::SkbEgress | Hook::SkbIngress) {
            header_without_task(
                EventKind::Egress,
                cage.map_or(0, |c| c.agent_id),
                cage.map_or(0, |c| c.policy_slot),
                cgroup_id,
            )
        } else {
            header(
                EventKind::Egress,
                cage.map_or(0, |c| c.agent_id),
                cage.map_or(0, |c| c.policy_slot),
                cgroup_id,
            )
        },
        addr: attempt.addr,
        rule_id,
        port: attempt.port,
        family: attempt.family,
        protocol: attempt.protocol as u16,
        sock_type: attempt.sock_type as u16,
        verdict: verdict as u8,
        hook: attempt.hook as u8,
        _pad: [0; 2],
        name_id,
        _pad2: 0,
    });
    entry.submit(0);
}

/// Refuses raw, packet and other non-TCP/UDP network sockets unless the cage allows them.
/// Local IPC (unix, netlink) is not egress and always passes.
#[cgroup_sock(sock_create)]
pub fn agentcage_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands every cgroup sock program a valid context.
    let sk = unsafe { &*ctx.sock };
    let (family, sock_type, protocol) = (sk.family, sk.type_, sk.protocol);
    let plain_ip = (family == AF_INET || family == AF_INET6)
        && match sock_type {
            SOCK_STREAM => matches!(protocol, IPPROTO_IP | IPPROTO_TCP | IPPROTO_MPTCP),
            SOCK_DGRAM => matches!(protocol, IPPROTO_IP | IPPROTO_UDP),
            _ => false,
        };
    if plain_ip || family == AF_UNIX || family == AF_NETLINK {
        return ALLOW;
    }
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let cage = cage_of(cgroup_id);
    let (verdict, rule_id) = match cage {
        Some(c) if c.flags & CAGE_F_ALLOW_RAW != 0 => (Verdict::Allow, RULE_SOCKET_ALLOWED),
        Some(_) => (Verdict::Deny, RULE_SOCKET_KIND),
        None => {
            warn!(
                &ctx,
                "agentcage: socket from unknown cgroup {} refused", cgroup_id
            );
            (Verdict::Deny, RULE_NO_CAGE)
        }
    };
    let attempt = Attempt {
        family: family as u16,
        addr: [0; 16],
        port: 0,
        protocol,
        sock_type,
        hook: Hook::SockCreate,
    };
    report(&attempt, cage.as_ref(), cgroup_id, verdict, rule_id);
    if verdict == Verdict::Allow {
        ALLOW
    } else {
        DENY
    }
}
