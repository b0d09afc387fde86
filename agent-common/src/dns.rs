//! Egress by name: the kernel side of agentcage's resolver.
//!
//! Every DNS query of a caged process (UDP or TCP, port 53, any address) is redirected by the
//! connect/sendmsg hooks to the cage's own resolver endpoint, which the daemon serves on
//! loopback ([`RESOLVER_V4`], [`RESOLVER_V6`]) at the ports in [`DnsTarget`]. The resolver
//! answers only names the cage's policy allows and writes each answer's addresses into the
//! cage's allow list (an entry per address in its policy slot's trie, see
//! [`PortRules`](crate::egress::PortRules)) before it replies; the recvmsg hooks make the
//! answer appear to come from the address the process asked ([`RevNat`]).

/// The port DNS uses, over UDP and TCP.
pub const DNS_PORT: u16 = 53;

/// The resolver's IPv4 address (127.0.0.1), network order.
pub const RESOLVER_V4: [u8; 4] = [127, 0, 0, 1];

/// The resolver's IPv6 address (::1), network order.
pub const RESOLVER_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Where a cage's DNS goes: its own resolver endpoint on [`RESOLVER_V4`] and
/// [`RESOLVER_V6`], UDP and TCP on the same port. A port of 0 means none (queries of that
/// family are refused with EPERM: fail closed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsTarget {
    /// The port on 127.0.0.1, host order.
    pub port4: u16,
    /// The port on ::1, host order.
    pub port6: u16,
    /// Padding, zero.
    pub _pad: u32,
}

/// Key of the endpoints map: a resolver endpoint (family, port) → the cgroup id of the cage
/// it serves. A caged process addressing any resolver endpoint directly is sent to its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsEndpoint {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// The port, host order.
    pub port: u16,
}

/// What a redirected socket last asked for, keyed by its socket cookie: the recvmsg hooks
/// put it back as the source of the resolver's answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat {
    /// The address asked, network order (for IPv4, the first four bytes).
    pub addr: [u8; 16],
    /// The port asked, host order.
    pub port: u16,
    /// The family of the socket address, `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Padding, zero.
    pub _pad: u32,
}
