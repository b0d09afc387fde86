//! The `egress:` section: the ordered allow list (CIDRs or DNS names, ports, protocols), raw
//! sockets and which allowed decisions are reported. Every value is checked in its own visitor, so an
//! error points at the offending text (see `schema`).

mod host;
mod ingress;

use std::{fmt, net::IpAddr};

use agent_common::egress::{PROTO_TCP, PROTO_UDP};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use schemars::JsonSchema;
use serde::{
    de::{self, Deserializer, SeqAccess, Visitor},
    Deserialize, Serialize,
};

pub use host::{normalize as normalize_name, HostPattern};

/// Outbound network access: default deny, plus an ordered allow list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    /// Allowed destinations; the first rule that matches decides (its index is the `rule_id`).
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Whether raw, packet and other non-TCP/UDP sockets may be created.
    #[serde(default)]
    pub raw_sockets: bool,
    /// Which allowed decisions emit events (denials always do).
    #[serde(default)]
    pub allow_events: AllowEvents,
}

impl EgressPolicy {
    /// `allow[N] ...` for the rule a kernel event names, if it is one of this policy's.
    pub fn describe_rule(&self, rule_id: u32) -> Option<String> {
        let index = usize::try_from(rule_id).ok()?;
        let rule = self.allow.get(index)?;
        Some(format!("allow[{index}] {}", rule.describe()))
    }
}

/// Which allowed decisions emit events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(with = "AllowEventsText")]
pub enum AllowEvents {
    /// Every allowed decision.
    #[default]
    All,
    /// None: only denials are reported.
    None,
    /// About one in N (N >= 2).
    Sample(u32),
}

/// The JSON Schema form of [`AllowEvents`].
#[derive(JsonSchema)]
#[schemars(
    description = "all, none, or sample:N (about one allowed decision in N is reported)",
    extend("pattern" = "^(all|none|sample:[0-9]+)$")
)]
#[expect(dead_code, reason = "only its schema is used")]
struct AllowEventsText(String);

impl AllowEvents {
    /// The kernel's sampling rate: 1 = every event, 0 = none, N = about one in N.
    pub fn sample_rate(&self) -> u32 {
        match *self {
            Self::All => 1,
            Self::None => 0,
            Self::Sample(n) => n,
        }
    }

    /// Parses `all`, `none` or `sample:N`.
    fn parse(s: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected all, none or sample:N (N >= 1)";
        match s {
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            _ => {
                let Some(n) = s.strip_prefix("sample:") else {
                    return Err(format!("invalid allow_events {s:?}; {EXPECTED}"));
                };
                match n.trim().parse::<u32>() {
                    Ok(0) => Err(format!(
                        "invalid allow_events {s:?}: sample:0 would never emit; use none, or \
                         {EXPECTED}"
                    )),
                    // One in one is every event; normalising keeps the hash and the kernel
                    // setting identical for both spellings.
                    Ok(1) => Ok(Self::All),
                    Ok(n) => Ok(Self::Sample(n)),
                    Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Err(format!(
                        "invalid allow_events {s:?}: {n} is larger than {}; {EXPECTED}",
                        u32::MAX
                    )),
                    Err(_) => Err(format!(
                        "invalid allow_events {s:?}: {n:?} is not a whole number; {EXPECTED}"
                    )),
                }
            }
        }
    }
}

impl fmt::Display for AllowEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::None => f.write_str("none"),
            Self::Sample(n) => write!(f, "sample:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for AllowEvents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AllowEvents;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("all, none or sample:N")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AllowEvents, E> {
                AllowEvents::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Where an allow rule admits traffic to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A network. IPv4-mapped IPv6 networks are stored as IPv4.
    Cidr(IpNet),
    /// The addresses the cage's resolver found for a name the pattern admits, while their
    /// answer's TTL lasts.
    Host(HostPattern),
}

impl Destination {
    /// The network, for a CIDR rule.
    pub fn cidr(&self) -> Option<IpNet> {
        match self {
            Self::Cidr(n) => Some(*n),
            Self::Host(_) => None,
        }
    }

    /// The name pattern, for a `host:` rule.
    pub fn host(&self) -> Option<&HostPattern> {
        match self {
            Self::Cidr(_) => None,
            Self::Host(h) => Some(h),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(n) => n.fmt(f),
            Self::Host(h) => h.fmt(f),
        }
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One allowed destination set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "RawAllowRule")]
#[schemars(with = "RawAllowRule")]
pub struct AllowRule {
    /// Destination: a network, or a DNS name pattern.
    pub dest: Destination,
    /// Destination port ranges; empty means every port.
    pub ports: Vec<PortRange>,
    /// `PROTO_TCP` / `PROTO_UDP` bits; never zero.
    pub protocols: u8,
    /// Free text from the policy author.
    pub comment: Option<String>,
    /// A name for the rule, used by assertions (`egress(NAME)`) and approval requests.
    pub name: Option<String>,
    /// The kernel allows a match only while a person's approval is in force; until then the
    /// verdict is `pending-approval`.
    pub requires_approval: bool,
    /// The rule stays in force in the read-only containment rung (every other rule is
    /// dropped there).
    pub read_only: bool,
}

impl AllowRule {
    /// Human form for events and logs, e.g. `127.0.0.1/32 tcp 8000-8099`.
    pub fn describe(&self) -> String {
        let protocols = protocol_names(self.protocols);
        let ports = if self.ports.is_empty() {
            "any port".to_owned()
        } else {
            self.ports
                .iter()
                .map(PortRange::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut text = match &self.comment {
            Some(c) => format!("{} {protocols} {ports} ({c})", self.dest),
            None => format!("{} {protocols} {ports}", self.dest),
        };
        if self.requires_approval {
            text.push_str(" [requires approval]");
        }
        text
    }
}

/// `tcp`, `udp` or `tcp+udp` for a set of `PROTO_*` bits.
pub(crate) fn protocol_names(bits: u8) -> &'static str {
    match (bits & PROTO_TCP != 0, bits & PROTO_UDP != 0) {
        (true, true) => "tcp+udp",
        (true, false) => "tcp",
        (false, true) => "udp",
        (false, false) => "none",
    }
}

/// What an allow rule looks like in YAML; each field validates itself as it is read.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["cidr"]}, {"required": ["host"]}]))]
struct RawAllowRule {
    /// Destination network: an IPv4 or IPv6 CIDR; a bare address means /32 or /128.
    /// Exactly one of `cidr` and `host`.
    #[serde(default)]
    #[schemars(with = "String")]
    cidr: Option<Cidr>,
    /// Destination by DNS name: `api.example.com` (that name only) or `"*.example.com"`
    /// (any name below it, not the name itself; never over a public suffix such as `*.com`).
    /// The addresses the cage's resolver finds for it are allowed until their TTL passes.
    #[serde(default)]
    #[schemars(with = "String")]
    host: Option<Host>,
    /// Destination ports (443) and inclusive ranges ("8000-8099"); omitted or [] means every
    /// port.
    #[serde(default)]
    #[schemars(with = "Option<Vec<PortRange>>")]
    ports: Option<Ports>,
    /// tcp and/or udp; omitted means both.
    #[serde(default)]
    #[schemars(with = "Option<Vec<ProtocolName>>", length(min = 1))]
    protocols: Option<Protocols>,
    /// Free text, shown with the rule in events and logs.
    #[serde(default)]
    comment: Option<String>,
    /// A name for assertions (`egress(NAME)`) and approval requests.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    name: Option<RuleName>,
    /// Allowed only while a person's approval is in force (verdict `pending-approval`
    /// until then).
    #[serde(default)]
    requires_approval: bool,
    /// Kept in the read-only containment rung.
    #[serde(default)]
    read_only: bool,
}

/// A transport protocol.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[expect(dead_code, reason = "only its schema is used")]
enum ProtocolName {
    Tcp,
    Udp,
}

impl TryFrom<RawAllowRule> for AllowRule {
    type Error = String;

    fn try_from(raw: RawAllowRule) -> Result<Self, String> {
        let dest = match (raw.cidr, raw.host) {
            (Some(c), None) => Destination::Cidr(c.0),
            (None, Some(h)) => Destination::Host(h.0),
            (Some(_), Some(_)) => {
                return Err("a rule has either cidr or host, not both; write two rules".to_owned())
            }
            (None, None) => {
                return Err(
                    "a rule needs a destination: cidr (10.0.0.0/8) or host (api.example.com)"
                        .to_owned(),
                )
            }
        };
        Ok(Self {
            dest,
            ports: raw.ports.map(|p| p.0).unwrap_or_default(),
            protocols: raw.protocols.map_or(PROTO_TCP | PROTO_UDP, |p| p.0),
            comment: raw.comment,
            name: raw.name.map(|n| n.0),
            requires_approval: raw.requires_approval,
            read_only: raw.read_only,
        })
    }
}

/// A rule name: what assertions and approvals call it (`egress(payments)`).
struct RuleName(String);

impl<'de> Deserialize<'de> for RuleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RuleName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule name of letters, digits, '.', '_' and '-'")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RuleName, E> {
                super::runtime::check_name(s, "rule name")
                    .map(RuleName)
                    .map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// An inclusive destination port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(with = "PortText")]
pub struct PortRange {
    /// Lowest port.
    pub lo: u16,
    /// Highest port, >= `lo`.
    pub hi: u16,
}

/// The JSON Schema form of [`PortRange`]: a number or a `lo-hi` string.
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "only its schema is used")]
enum PortText {
    /// One port.
    Port(#[schemars(range(max = 65535))] u16),
    /// A port or an inclusive range, e.g. "8000-8099".
    Text(#[schemars(regex(pattern = r"^\s*[0-9]+\s*(-\s*[0-9]+\s*)?$"))] String),
}

impl PortRange {
    /// Every port.
    pub const ALL: Self = Self { lo: 0, hi: 65535 };

    /// Parses `443` or `8000-8099`.
    fn parse(s: &str) -> Result<Self, String> {
        let expected = "expected a port like 443 or a range like 8000-8099 (0-65535)";
        let port = |p: &str| -> Result<u16, String> {
            let p = p.trim();
            match p.parse::<u64>() {
                Ok(n) => u16::try_from(n)
                    .map_err(|_| format!("port {n} is larger than 65535; {expected}")),
                Err(_) => Err(format!("invalid port {s:?}; {expected}")),
            }
        };
        match s.split_once('-') {
            Some((lo, hi)) => Self::range(port(lo)?, port(hi)?)
                .map_err(|e| format!("invalid port range {s:?}: {e}")),
            None => {
                let p = port(s)?;
                Ok(Self { lo: p, hi: p })
            }
        }
    }

    fn range(lo: u16, hi: u16) -> Result<Self, String> {
        if lo > hi {
            return Err(format!(
                "the range runs backwards ({lo} > {hi}); write it low-high, e.g. {hi}-{lo}"
            ));
        }
        Ok(Self { lo, hi })
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port like 443 or a range like \"8000-8099\"")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortRange, E> {
                match u16::try_from(n) {
                    Ok(p) => Ok(PortRange { lo: p, hi: p }),
                    Err(_) => Err(E::custom(format!(
                        "port {n} is larger than 65535; expected a port like 443 or a range \
                         like 8000-8099 (0-65535)"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortRange, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "port {n} is negative; expected a port like 443 or a range like \
                         8000-8099 (0-65535)"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PortRange, E> {
                PortRange::parse(s).map_err(E::custom)
            }
        }
        // `any`, because a port may be written as an integer or as a string.
        d.deserialize_any(V)
    }
}

/// A port list; its own type only for a clearer "expected" when it is not a list.
struct Ports(Vec<PortRange>);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of ports, e.g. [443] or [8000-8099, 443]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ports, A::Error> {
                let mut ports = Vec::new();
                while let Some(p) = seq.next_element()? {
                    ports.push(p);
                }
                Ok(Ports(ports))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A validated, normalised CIDR.
struct Cidr(IpNet);

/// The form every CIDR error ends with.
const CIDR_EXPECTED: &str = "expected an address like 10.0.0.0/8 or 2001:db8::/32";

/// Parses `addr/len` or a bare address, refusing host bits and folding IPv4-mapped IPv6
/// networks into IPv4 (the kernel judges mapped destinations as IPv4).
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let bad = |why: String| format!("invalid CIDR {s:?}: {why}; {CIDR_EXPECTED}");
    let (addr_s, len_s) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr_s
        .trim()
        .parse()
        .map_err(|_| bad(format!("{addr_s:?} is not an IPv4 or IPv6 address")))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_s {
        None => max,
        Some(l) => {
            let n: u64 = l
                .trim()
                .parse()
                .map_err(|_| bad(format!("prefix length {l:?} is not a number")))?;
            match u8::try_from(n) {
                Ok(n) if n <= max => n,
                _ => return Err(bad(format!("prefix length {n} is longer than {max}"))),
            }
        }
    };
    let net = match addr {
        IpAddr::V4(a) => Ipv4Net::new(a, len).map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, len).map(IpNet::V6),
    }
    .map_err(|_| bad(format!("prefix length {len} is longer than {max}")))?;
    if net.addr() != net.network() {
        let network = net.trunc();
        return Err(format!(
            "invalid CIDR {s:?}: host bits are set (the address is not the first of its /{len} \
             network); write {network} for the network, or {addr}/{max} for the single address"
        ));
    }
    Ok(unmap(net))
}

/// `::ffff:a.b.c.d/n` (n >= 96) as `a.b.c.d/(n-96)`; anything else unchanged.
fn unmap(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.addr().to_ipv4_mapped() {
                if let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n);
                }
            }
        }
    }
    net
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CIDR like 10.0.0.0/8 or 2001:db8::/32")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Cidr, E> {
                parse_cidr(s).map(Cidr).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A validated `host:` pattern.
struct Host(HostPattern);

impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Host;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DNS name like api.example.com or \"*.example.com\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Host, E> {
                HostPattern::parse(s).map(Host).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A non-empty protocol list, as `PROTO_*` bits.
struct Protocols(u8);

impl<'de> Deserialize<'de> for Protocols {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Protocols;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of protocols, e.g. [tcp] or [tcp, udp]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Protocols, A::Error> {
                let mut bits = 0;
                while let Some(Protocol(b)) = seq.next_element()? {
                    bits |= b;
                }
                if bits == 0 {
                    // An empty list would allow nothing, which is surely not what was meant.
                    return Err(de::Error::custom(
                        "protocols is empty; list tcp and/or udp, or omit protocols to allow both",
                    ));
                }
                Ok(Protocols(bits))
            }
        }
        d.deserialize_seq(V)
    }
}

/// One protocol name, as its `PROTO_*` bit.
struct Protocol(u8);

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("tcp or udp")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Protocol, E> {
                match s {
                    "tcp" => Ok(Protocol(PROTO_TCP)),
                    "udp" => Ok(Protocol(PROTO_UDP)),
                    _ => Err(E::custom(format!(
                        "unknown protocol {s:?}; expected tcp or udp"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

pub use ingress::{IngressPolicy, IngressRule};

#[cfg(test)]
mod tests;
