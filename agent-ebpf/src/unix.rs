//! Unix sockets: connects and sends from a cage whose policy confines them (`unix:`) reach
//! only the addresses its allow list names, or listeners in the same cage.
//!
//! Two tiers, one automaton (`UNIX_DFA`, see `agent_common::unix`):
//! - deny tier, BPF LSM `unix_stream_connect` and `unix_may_send`: they see the peer socket,
//!   so a listener in the caller's own cage passes, and the address judged is the one the
//!   listener bound (a symlink or another name for the same socket changes nothing);
//! - kill tier on kernels with the cgroup Unix hooks (6.7 and later), `cgroup/connect_unix`
//!   and `cgroup/sendmsg_unix`: they run before the kernel looks the address up, so they
//!   judge the address the caller gave. aya cannot load them (it knows no Unix attach type),
//!   so user space loads these two functions itself (`bpf::unix`); they are compiled into
//!   the `cgroup/connect4` section only to be in this object.

use agent_common::{
    cage::{CageConfig, CAGE_F_UNIX},
    egress::{RULE_DEFAULT_DENY, RULE_NO_CAGE},
    event::EventKind,
    unix::{
        DfaKey, UnixEvent, UnixHook, Verdict, ACCEPT_APP_SOCKET, DFA_START, RULE_APP_SOCKET,
        RULE_UNNAMED, UNIX_PATH_MAX,
    },
};
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::{bpf_get_current_cgroup_id, bpf_get_prandom_u32},
    },
    macros::{cgroup_sock_addr, lsm},
    programs::{LsmContext, SockAddrContext},
};

use crate::{
    egress::cage_of,
    events::{count, header, Counter},
    kernel::{read, settings},
    maps::{EVENTS, UNIX_CLASSES, UNIX_DFA},
};

const EPERM: i32 = 1;
/// Return values of cgroup sock programs.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH: u32 = 2;

/// Reads the `sun_path` of the `sockaddr_un` at `sa` into `addr`; returns how many of its
/// bytes the caller gave (`addr_len` counts `sun_family` too). A path ends earlier, at its
/// first NUL; the walk below stops there, and user space cuts it there for events.
#[inline(always)]
fn read_address(addr: &mut [u8; UNIX_PATH_MAX], sa: *const u8, addr_len: u32) -> usize {
    // SAFETY: the helper checks the source address and zero-fills on failure.
    let read = unsafe { bpf_probe_read_kernel_buf(sa.wrapping_add(SUN_PATH as usize), addr) };
    if sa.is_null() || read.is_err() {
        return 0;
    }
    (addr_len.saturating_sub(SUN_PATH) as usize).min(UNIX_PATH_MAX)
}

/// The first `unix.allow` rule of `slot` matching the address in the first `given` bytes of
/// `addr` (a path up to its first NUL, or a NUL byte and an abstract name), or
/// `RULE_DEFAULT_DENY`: one map lookup per byte, whatever the allow list holds. Every way
/// out of the loop leaves it for good (the end, a path's NUL, a missing transition), so the
/// verifier walks it once, not once per length.
#[inline(always)]
fn allowed_by(slot: u32, addr: &[u8; UNIX_PATH_MAX], given: usize) -> u32 {
    let Some(classes) = UNIX_CLASSES.get_ptr(slot) else {
        return RULE_DEFAULT_DENY;
    };
    let path = addr[0] != 0;
    let mut state = DFA_START;
    let mut accept = 0u16;
    let mut walked = 0;
    for (i, byte) in addr.iter().enumerate() {
        if i >= given || (path && *byte == 0) {
            break;
        }
        // SAFETY: a live map value; a u8 index is inside its 256 entries.
        let class = unsafe { (*classes).class[usize::from(*byte)] };
        let key = DfaKey {
            slot,
            state,
            class: u16::from(class),
        };
        let Some(next) = UNIX_DFA.get_ptr(key) else {
            return RULE_DEFAULT_DENY;
        };
        // SAFETY: a live map value, copied out at once.
        let next = unsafe { *next };
        state = next.next;
        accept = next.accept;
        walked = i + 1;
    }
    match accept {
        _ if walked == 0 => RULE_DEFAULT_DENY,
        0 => RULE_DEFAULT_DENY,
        ACCEPT_APP_SOCKET => RULE_APP_SOCKET,
        n => u32::from(n - 1),
    }
}

/// What is judged, besides the address.
struct Attempt {
    /// The caller's cage (zeroes when `known` is false).
    cage: CageConfig,
    /// Whether the caller is in a cage the daemon knows; if not, it is denied. Not an
    /// `Option`: copying one copies its unset payload, which the verifier refuses to read.
    known: bool,
    cgroup_id: u64,
    sock_type: u16,
    hook: UnixHook,
}

/// Judges reaching the address in the `sockaddr_un` at `sa` (null: the peer has none) and
/// reports the decision (denials always, counted; allows as the cage samples them: they are
/// not egress, so they do not count as allowed connections). The address is read straight
/// into the event's ring-buffer record, which the decision then reads: nothing is copied on
/// the stack, and no other program can change it meanwhile. A full ring buffer denies.
#[inline(always)]
fn decide(attempt: &Attempt, sa: *const u8, addr_len: u32) -> bool {
    let cgroup_id = attempt.cgroup_id;
    let Some(mut entry) = EVENTS.reserve::<UnixEvent>(0) else {
        count(cgroup_id, Counter::Lost(EventKind::Unix));
        count(cgroup_id, Counter::Denied);
        return false;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is this program's reservation, valid until it is submitted or
    // discarded; every field is written before submit.
    let (len, rule_id) = unsafe {
        let len = if sa.is_null() {
            (*event).addr = [0; UNIX_PATH_MAX];
            0
        } else {
            read_address(&mut (*event).addr, sa, addr_len)
        };
        let rule_id = if !attempt.known {
            RULE_NO_CAGE
        } else if sa.is_null() {
            RULE_UNNAMED
        } else {
            allowed_by(attempt.cage.policy_slot, &(*event).addr, len)
        };
        (len, rule_id)
    };
    let allowed = !matches!(rule_id, RULE_DEFAULT_DENY | RULE_NO_CAGE | RULE_UNNAMED);
    let cage = &attempt.cage;
    if allowed {
        let emit = match cage.allow_sample {
            0 => false,
            1 => true,
            // SAFETY: a helper without preconditions.
            n => (unsafe { bpf_get_prandom_u32() }) % n == 0,
        };
        if !emit {
            entry.discard(0);
            return true;
        }
    } else {
        count(cgroup_id, Counter::Denied);
    }
    // SAFETY: as above.
    unsafe {
        (*event).header = header(EventKind::Unix, cage.agent_id, cage.policy_slot, cgroup_id);
        (*event).len = len as u16;
        (*event).sock_type = attempt.sock_type;
        (*event).rule_id = rule_id;
        (*event).verdict = if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        } as u8;
        (*event).hook = attempt.hook as u8;
        (*event)._pad = [0; 6];
    }
    entry.submit(0);
    allowed
}

// --- kill tier: the cgroup Unix socket-address hooks -------------------------------------

#[cgroup_sock_addr(connect4)]
pub fn agentcage_connect_unix(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, UnixHook::Connect)
}

#[cgroup_sock_addr(connect4)]
pub fn agentcage_sendmsg_unix(ctx: SockAddrContext) -> i32 {
    on_sock_addr(&ctx, UnixHook::Sendmsg)
}

#[inline(always)]
fn on_sock_addr(ctx: &SockAddrContext, hook: UnixHook) -> i32 {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // The socket belongs to a cage (else this program would not run); a caller in no cage
    // the daemon knows is denied (fail closed).
    let (cage, known) = match cage_of(cgroup_id) {
        Some(c) if c.flags & CAGE_F_UNIX == 0 => return ALLOW,
        Some(c) => (c, true),
        None => (CageConfig::default(), false),
    };
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sock_type = unsafe { (*ctx.sock_addr).type_ } as u16;
    let s = settings();
    // The context is a `bpf_sock_addr_kern` underneath; the address it carries is not among
    // the fields the verifier lets a program read directly for the Unix hooks. (Read without
    // `read`'s null check: the context is never null, and a check would let the compiler
    // fold field loads on the "null" path into loads from small constant addresses.)
    let kern = ctx.sock_addr as *const u8;
    // SAFETY: the helper checks the address and fails instead of faulting.
    let (uaddr, addr_len) = unsafe {
        (
            bpf_probe_read_kernel(kern.wrapping_add(s.sock_addr_uaddr as usize) as *const *const u8)
                .unwrap_or_default(),
            bpf_probe_read_kernel(kern.wrapping_add(s.sock_addr_uaddrlen as usize) as *const u32)
                .unwrap_or(0),
        )
    };
    let attempt = Attempt {
        cage,
        known,
        cgroup_id,
        sock_type,
        hook,
    };
    if uaddr.is_null() {
        // Nothing to judge it by: refuse rather than guess.
        decide(&attempt, core::ptr::null(), 0);
        return DENY;
    }
    if decide(&attempt, uaddr, addr_len) {
        ALLOW
    } else {
        DENY
    }
}

// --- deny tier: BPF LSM ------------------------------------------------------------------

/// `unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)`.
#[lsm(hook = "unix_stream_connect")]
pub fn agentcage_unix_stream_connect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let sock: *const u8 = ctx.arg(0);
    let other: *const u8 = ctx.arg(1);
    on_peer(sock, other, UnixHook::LsmStreamConnect)
}

/// `unix_may_send(struct socket *sock, struct socket *other)`: every datagram.
#[lsm(hook = "unix_may_send")]
pub fn agentcage_unix_may_send(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let s = settings();
    let sock: *const u8 = ctx.arg(0);
    let other: *const u8 = ctx.arg(1);
    let sk = read::<*const u8>(sock, s.socket_sk).unwrap_or_default();
    let other_sk = read::<*const u8>(other, s.socket_sk).unwrap_or_default();
    on_peer(sk, other_sk, UnixHook::LsmMaySend)
}

/// Judges the caller reaching the Unix socket `other` from its socket `sk` (both `struct
/// sock *`): allowed if the caller's cage does not confine Unix sockets, if `other` was
/// made in the same cage, or if the address `other` is bound to is allowed.
#[inline(always)]
fn on_peer(sk: *const u8, other: *const u8, hook: UnixHook) -> i32 {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    if cage.flags & CAGE_F_UNIX == 0 || sock_cgroup_id(other) == cgroup_id {
        return 0;
    }
    let s = settings();
    let attempt = Attempt {
        cage,
        known: true,
        cgroup_id,
        sock_type: read::<u16>(sk, s.sock_type).unwrap_or(0),
        hook,
    };
    let bound = read::<*const u8>(other, s.unix_addr).unwrap_or_default();
    let (name, addr_len) = if bound.is_null() {
        (core::ptr::null(), 0)
    } else {
        let len = read::<i32>(bound, s.unix_addr_len).unwrap_or(0);
        (
            bound.wrapping_add(s.unix_addr_name as usize),
            len.max(0) as u32,
        )
    };
    if decide(&attempt, name, addr_len) {
        0
    } else {
        -EPERM
    }
}

/// The id of the cgroup a socket (`struct sock *`) was made in; 0 if it cannot be read.
#[inline(always)]
pub(crate) fn sock_cgroup_id(sk: *const u8) -> u64 {
    let s = settings();
    let cgroup = read::<*const u8>(sk, s.sock_cgroup).unwrap_or_default();
    let kn = read::<*const u8>(cgroup, s.cgroup_kn).unwrap_or_default();
    read::<u64>(kn, s.kernfs_id).unwrap_or(0)
}
