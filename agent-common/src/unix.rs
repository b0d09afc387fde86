//! Unix sockets: the per-slot automaton that matches socket addresses against `unix.allow`,
//! and the decision event.
//!
//! An address is matched as bytes: a path as written (`/run/docker.sock`), an abstract name
//! as a NUL byte followed by the name (the kernel's own encoding, so it can never collide
//! with a path). User space compiles the allow list's paths, globs and `@names` into one
//! deterministic automaton per policy slot; the kernel walks it one byte at a time, one map
//! lookup per byte, so a decision costs the same whatever the list holds. Bytes the lists
//! treat alike share a class (the slot's [`ByteClasses`]), so a state needs one transition
//! per class, not per byte; a transition that is not in the map leads nowhere (deny).

use crate::event::EventHeader;
pub use crate::event::Verdict;

/// Bytes of `sockaddr_un.sun_path`.
pub const UNIX_PATH_MAX: usize = 108;

/// The automaton's start state.
pub const DFA_START: u16 = 0;

/// `rule_id` of a connect or send to a socket with no address (a socket pair made outside
/// the cage and passed in): nothing in the allow list can name it.
pub const RULE_UNNAMED: u32 = u32::MAX - 8;
/// `rule_id` of a connect to the daemon's application socket, which every cage may reach
/// (agents report tool and model calls there).
pub const RULE_APP_SOCKET: u32 = u32::MAX - 9;
/// [`DfaNext::accept`] of an address that matches only the daemon's application socket.
pub const ACCEPT_APP_SOCKET: u16 = u16::MAX;

/// One transition of a slot's automaton.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DfaKey {
    /// Policy slot.
    pub slot: u32,
    /// The state the byte is read in.
    pub state: u16,
    /// The byte's class ([`ByteClasses`]).
    pub class: u16,
}

/// Where a transition leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DfaNext {
    /// The next state.
    pub next: u16,
    /// 0 if an address ending in `next` matches no rule, else the index of the first rule it
    /// matches, plus one.
    pub accept: u16,
}

/// A slot's byte classes: `class[b]` is the class of byte `b`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteClasses {
    /// The class of each byte.
    pub class: [u8; 256],
}

/// Which hook decided.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnixHook {
    /// cgroup/connect_unix (kernel 6.7 and later): judges the address the caller gave.
    Connect = 1,
    /// cgroup/sendmsg_unix: a datagram sent with an address.
    Sendmsg = 2,
    /// BPF LSM `unix_stream_connect`: judges the listener's own address.
    LsmStreamConnect = 3,
    /// BPF LSM `unix_may_send`: every datagram, connected or not.
    LsmMaySend = 4,
}

impl UnixHook {
    /// The hook for a raw value from an event, if it is one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Connect,
            2 => Self::Sendmsg,
            3 => Self::LsmStreamConnect,
            4 => Self::LsmMaySend,
            _ => return None,
        })
    }
}

/// One Unix-socket decision, as the kernel reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixEvent {
    /// Common fields.
    pub header: EventHeader,
    /// The address judged: a path, or a NUL byte and an abstract name.
    pub addr: [u8; UNIX_PATH_MAX],
    /// How many bytes of `addr` were given (0: the peer has no address); a path ends
    /// earlier, at its first NUL.
    pub len: u16,
    /// Socket type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_SEQPACKET` 5).
    pub sock_type: u16,
    /// Index of the `unix.allow` rule that decided, or one of the `RULE_*` constants.
    pub rule_id: u32,
    /// [`Verdict`] as u8.
    pub verdict: u8,
    /// [`UnixHook`] as u8.
    pub hook: u8,
    /// Padding, zero.
    pub _pad: [u8; 6],
}
