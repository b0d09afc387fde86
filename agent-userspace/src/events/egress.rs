//! Egress decisions: the kernel's record, its typed fields, and the event made of it.

use std::net::IpAddr;

use agent_common::egress::{
    EgressEvent, Hook, RULE_BUDGET, RULE_DEFAULT_DENY, RULE_DNS_UNREDIRECTED, RULE_IP_OPTIONS,
    RULE_NO_CAGE, RULE_ROUTING_HEADER, RULE_SOCKET_ALLOWED, RULE_SOCKET_KIND,
};
use serde::{Deserialize, Serialize};

use super::{
    decision::{RuleRef, Verdict},
    named::named_enum,
};
use crate::policy::AgentPolicy;

named_enum! {
    /// The hook that decided.
    pub enum EgressHook ("egress hook", numeric) {
        /// cgroup/connect4.
        Connect4 = "connect4",
        /// cgroup/connect6.
        Connect6 = "connect6",
        /// cgroup/sendmsg4.
        Sendmsg4 = "sendmsg4",
        /// cgroup/sendmsg6.
        Sendmsg6 = "sendmsg6",
        /// cgroup/sock_create.
        SockCreate = "sock_create",
        /// cgroup_skb/egress.
        SkbEgress = "skb_egress",
        /// BPF LSM socket_connect (the deny tier's second line).
        LsmConnect = "lsm_socket_connect",
        /// cgroup_skb/ingress: a peer reaching the agent.
        SkbIngress = "skb_ingress",
        /// BPF LSM socket_sendmsg: a send on a socket made outside the cage.
        LsmSendmsg = "lsm_socket_sendmsg",
        /// BPF LSM socket_recvmsg: a receive on a socket made outside the cage.
        LsmRecvmsg = "lsm_socket_recvmsg",
    }
}

impl EgressHook {
    /// The hook of a raw kernel value.
    pub fn from_raw(v: u8) -> Self {
        match Hook::from_u8(v) {
            Some(Hook::Connect4) => Self::Connect4,
            Some(Hook::Connect6) => Self::Connect6,
            Some(Hook::Sendmsg4) => Self::Sendmsg4,
            Some(Hook::Sendmsg6) => Self::Sendmsg6,
            Some(Hook::SockCreate) => Self::SockCreate,
            Some(Hook::SkbEgress) => Self::SkbEgress,
            Some(Hook::LsmConnect) => Self::LsmConnect,
            Some(Hook::SkbIngress) => Self::SkbIngress,
            Some(Hook::LsmSendmsg) => Self::LsmSendmsg,
            Some(Hook::LsmRecvmsg) => Self::LsmRecvmsg,
            None => Self::Other(u16::from(v)),
        }
    }
}

named_enum! {
    /// The address family judged (IPv4-mapped IPv6 is judged as IPv4).
    pub enum Family ("family", numeric) {
        /// AF_INET.
        Ipv4 = "ipv4",
        /// AF_INET6.
        Ipv6 = "ipv6",
    }
}

impl Family {
    /// The family of a raw `AF_*` value.
    pub fn from_raw(v: u16) -> Self {
        match v {
            2 => Self::Ipv4,
            10 => Self::Ipv6,
            n => Self::Other(n),
        }
    }
}

named_enum! {
    /// The transport protocol.
    pub enum Protocol ("protocol", numeric) {
        /// IPPROTO_TCP.
        Tcp = "tcp",
        /// IPPROTO_UDP.
        Udp = "udp",
    }
}

impl Protocol {
    /// The protocol of a raw `IPPROTO_*` value.
    pub fn from_raw(v: u16) -> Self {
        match v {
            6 => Self::Tcp,
            17 => Self::Udp,
            n => Self::Other(n),
        }
    }
}

named_enum! {
    /// The socket type.
    pub enum SockType ("socket type", numeric) {
        /// SOCK_STREAM.
        Stream = "stream",
        /// SOCK_DGRAM.
        Dgram = "dgram",
        /// SOCK_RAW.
        Raw = "raw",
    }
}

impl SockType {
    /// The type of a raw `SOCK_*` value.
    pub fn from_raw(v: u16) -> Self {
        match v {
            1 => Self::Stream,
            2 => Self::Dgram,
            3 => Self::Raw,
            n => Self::Other(n),
        }
    }
}

/// An egress decision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EgressDetail {
    /// The hook that decided.
    pub hook: EgressHook,
    /// The family judged, or the socket family number for sock_create of other families.
    pub family: Family,
    /// The transport protocol.
    pub protocol: Protocol,
    /// The socket type.
    pub sock_type: SockType,
    /// Destination address (none for sock_create, and for a peer reaching the agent).
    pub dst_addr: Option<IpAddr>,
    /// The allowed name whose resolution by the cage's resolver granted `dst_addr`, when
    /// a `host:` rule decided.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dst_name: Option<String>,
    /// Destination port (0 for sock_create; the agent's own port for a peer reaching it).
    pub dst_port: u16,
    /// The peer that tried to reach the agent (`skb_ingress` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub src_addr: Option<IpAddr>,
    /// `allow`, `deny`, `pending-approval` or `budget`.
    pub verdict: Verdict,
    /// The rule that decided.
    pub rule: RuleRef,
    /// The rule's text, for allow-list rules.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
}

/// Repeats of one egress decision, counted instead of reported one by one (see
/// [`super::coalesce`]): the decision as the last repeat's record says it, and how many.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EgressSummary {
    /// The decision that was repeated.
    #[serde(flatten)]
    pub decision: EgressDetail,
    /// How many decisions this summary stands for. None of them was reported on its own, so
    /// the `egress` events plus the summaries' counts are exactly the decisions the kernel
    /// reported.
    pub count: u64,
    /// Wall-clock time of the first of them, ns since the Unix epoch.
    pub first_unix_nano: u64,
    /// Wall-clock time of the last of them (the event's own time).
    pub last_unix_nano: u64,
}

#[cfg(test)]
impl EgressDetail {
    /// A TCP connect to `addr:port` denied by default, for tests.
    pub(crate) fn denied(addr: IpAddr, port: u16) -> Self {
        Self {
            hook: EgressHook::Connect4,
            family: Family::Ipv4,
            protocol: Protocol::Tcp,
            sock_type: SockType::Stream,
            dst_addr: Some(addr),
            dst_name: None,
            dst_port: port,
            src_addr: None,
            verdict: Verdict::Deny,
            rule: RuleRef::DefaultDeny,
            rule_text: None,
        }
    }
}

/// The rule a kernel rule id names.
pub fn rule_ref(rule_id: u32) -> RuleRef {
    match rule_id {
        RULE_DEFAULT_DENY => RuleRef::DefaultDeny,
        RULE_SOCKET_KIND => RuleRef::SocketKind,
        RULE_SOCKET_ALLOWED => RuleRef::RawSocketsAllowed,
        RULE_NO_CAGE => RuleRef::NoCage,
        RULE_IP_OPTIONS => RuleRef::IpOptions,
        RULE_ROUTING_HEADER => RuleRef::RoutingHeader,
        RULE_BUDGET => RuleRef::Budget,
        RULE_DNS_UNREDIRECTED => RuleRef::DnsUnredirected,
        n => RuleRef::EgressAllow(n),
    }
}

/// The event detail of a kernel record, with the rule's text from the policy that decided
/// and the name behind a granted address (`name`, looked up by the record's name id).
pub fn detail(e: &EgressEvent, policy: Option<&AgentPolicy>, name: Option<String>) -> EgressDetail {
    let hook = EgressHook::from_raw(e.hook);
    let ingress = hook == EgressHook::SkbIngress;
    let rule = match rule_ref(e.rule_id) {
        // The ingress hook's rule ids index the ingress list.
        RuleRef::EgressAllow(i) if ingress => RuleRef::IngressAllow(i),
        r => r,
    };
    let rule_text = match rule {
        RuleRef::EgressAllow(i) => policy
            .and_then(|p| p.egress.allow.get(i as usize))
            .map(|r| r.describe()),
        RuleRef::IngressAllow(i) => policy
            .and_then(|p| p.ingress.allow.get(i as usize))
            .map(|r| r.describe()),
        _ => None,
    };
    let addr = match (hook, e.family) {
        (EgressHook::SockCreate, _) => None,
        (_, 2) => Some(IpAddr::from([e.addr[0], e.addr[1], e.addr[2], e.addr[3]])),
        (_, _) => Some(IpAddr::from(e.addr)),
    };
    let (dst_addr, src_addr) = if ingress { (None, addr) } else { (addr, None) };
    EgressDetail {
        hook,
        family: Family::from_raw(e.family),
        protocol: Protocol::from_raw(e.protocol),
        sock_type: SockType::from_raw(e.sock_type),
        dst_addr,
        dst_name: name,
        dst_port: e.port,
        src_addr,
        verdict: Verdict::from_raw(e.verdict),
        rule,
        rule_text,
    }
}

#[cfg(test)]
mod tests {
    use agent_common::event::{EventHeader, EventKind};

    use super::*;
    use crate::policy::Policy;

    fn raw(hook: u8, family: u16, rule_id: u32) -> EgressEvent {
        EgressEvent {
            header: EventHeader {
                kind: EventKind::Egress as u32,
                agent_id: 1,
                policy_slot: 1,
                _pad: 0,
                ts_ns: 1,
                cgroup_id: 1,
                pid: 1,
                tgid: 1,
                comm: [0; 16],
            },
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            rule_id,
            port: 443,
            family,
            protocol: 6,
            sock_type: 1,
            verdict: 1,
            hook,
            _pad: [0; 2],
            name_id: 0,
            _pad2: 0,
        }
    }

    #[test]
    fn allow_rules_carry_their_text_and_sock_create_has_no_address() {
        let policy = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: ::1/128\n          ports: [443]\n",
            "t.yaml",
        )
        .unwrap();
        let d = detail(&raw(2, 10, 0), policy.agent("a"), None);
        assert_eq!(d.rule, RuleRef::EgressAllow(0));
        assert_eq!(d.dst_addr, Some("::1".parse().unwrap()));
        assert_eq!(d.rule_text.as_deref(), Some("::1/128 tcp+udp 443"));
        let d = detail(&raw(5, 10, RULE_SOCKET_KIND), None, None);
        assert_eq!(
            (d.hook, d.dst_addr, d.rule),
            (EgressHook::SockCreate, None, RuleRef::SocketKind)
        );
        assert_eq!(
            detail(&raw(1, 2, 7), None, None).rule_text,
            None,
            "no policy, no text"
        );
    }
}
