//! The policy's types and their YAML form (schema version 1).
//!
//! Every value is checked inside its own `Deserialize` visitor rather than after the fact:
//! serde_norway only knows the line, column and dotted path of the value it is deserializing,
//! so an error raised there points at the offending text. Conversions that run after a value
//! was read (`#[serde(try_from)]`) would point at the enclosing mapping instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use agent_common::egress::{PROTO_TCP, PROTO_UDP};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use schemars::JsonSchema;
use serde::{
    de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor},
    Deserialize, Serialize,
};

use super::{
    exec::{Enforcement, ExecPolicy, FilesPolicy},
    runtime::{ApprovalPolicy, Budgets, Collectives, ContainmentPolicy},
    validate_agent_name,
};
use crate::runtime::assertions::Assertion;

/// The only schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// What one agent may do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPolicy {
    /// Outbound network access.
    #[serde(default)]
    pub egress: EgressPolicy,
    /// The kernel tier the agent needs: `any` (default) or `deny`.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Which programs may run.
    #[serde(default)]
    pub exec: ExecPolicy,
    /// Which files may not be opened, and which opens are reported.
    #[serde(default)]
    pub files: FilesPolicy,
    /// The user groups the agent belongs to (names under the top-level `groups`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The workflows the agent belongs to (names under the top-level `workflows`).
    #[serde(default)]
    pub workflows: Vec<String>,
    /// Actions that wait for a person's approval.
    #[serde(default)]
    pub approvals: ApprovalPolicy,
    /// The agent's own budgets.
    #[serde(default)]
    pub budgets: Budgets,
    /// Temporal assertions over the agent's events, checked online per session.
    #[serde(default)]
    pub assertions: Vec<Assertion>,
    /// Which containment rung applies when something goes wrong.
    #[serde(default)]
    pub containment: ContainmentPolicy,
    /// Whether `agentcage run` must record the agent's terminal.
    #[serde(default)]
    pub record: Record,
}

/// Whether sessions of an agent are recorded (asciicast files).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// The operator decides (`agentcage run --record FILE`).
    #[default]
    Optional,
    /// Every `agentcage run` of the agent is recorded into the daemon's recording directory;
    /// runs that cannot be recorded (`--no-pty` on a terminal) and `adopt` are refused.
    Always,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Optional => "optional",
            Self::Always => "always",
        })
    }
}

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

/// One allowed destination set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(from = "RawAllowRule")]
#[schemars(with = "RawAllowRule")]
pub struct AllowRule {
    /// Destination network. IPv4-mapped IPv6 networks are stored as IPv4.
    pub cidr: IpNet,
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
            Some(c) => format!("{} {protocols} {ports} ({c})", self.cidr),
            None => format!("{} {protocols} {ports}", self.cidr),
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
struct RawAllowRule {
    /// Destination network: an IPv4 or IPv6 CIDR; a bare address means /32 or /128.
    #[schemars(with = "String")]
    cidr: Cidr,
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

impl From<RawAllowRule> for AllowRule {
    fn from(raw: RawAllowRule) -> Self {
        Self {
            cidr: raw.cidr.0,
            ports: raw.ports.map(|p| p.0).unwrap_or_default(),
            protocols: raw.protocols.map_or(PROTO_TCP | PROTO_UDP, |p| p.0),
            comment: raw.comment,
            name: raw.name.map(|n| n.0),
            requires_approval: raw.requires_approval,
            read_only: raw.read_only,
        }
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

/// The `version` field: must be [`SCHEMA_VERSION`].
pub(crate) struct Version(pub(crate) u32);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "the schema version, {SCHEMA_VERSION}")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Version, E> {
                if n == u64::from(SCHEMA_VERSION) {
                    Ok(Version(SCHEMA_VERSION))
                } else {
                    Err(E::custom(format!(
                        "unsupported policy version {n}; this agentcage understands \
                         version: {SCHEMA_VERSION}"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Version, E> {
                Err(E::custom(format!(
                    "unsupported policy version {n}; this agentcage understands \
                     version: {SCHEMA_VERSION}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// An agentcage policy file: the agents, what each may do, and what happens when something
/// goes wrong (see docs/POLICY.md).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "agentcage policy, schema version 1")]
pub(crate) struct RawPolicy {
    /// Schema version; must be 1.
    #[schemars(with = "VersionOne")]
    pub(crate) version: Version,
    /// Agent name → what the agent may do.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, AgentPolicy>")]
    pub(crate) agents: Agents,
    /// The policy for agents not named under `agents`; absent refuses them.
    #[serde(default)]
    pub(crate) default_agent: Option<AgentPolicy>,
    /// User groups: budgets shared by their member agents.
    #[serde(default)]
    pub(crate) groups: Collectives,
    /// Workflows: budgets shared by their member agents.
    #[serde(default)]
    pub(crate) workflows: Collectives,
}

/// The JSON Schema form of the version: the constant 1.
#[derive(JsonSchema)]
#[schemars(extend("const" = 1))]
#[expect(dead_code, reason = "only its schema is used")]
struct VersionOne(u32);

/// The JSON Schema of a policy file (schema version 1), as published in
/// `policies/schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawPolicy);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// The `agents` map; names are validated, and duplicates refused, as each key is read.
#[derive(Default)]
pub(crate) struct Agents(pub(crate) BTreeMap<String, AgentPolicy>);

impl<'de> Deserialize<'de> for Agents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Agents;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from agent name to agent policy")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Agents, A::Error> {
                let mut agents = BTreeMap::new();
                let mut seen = BTreeSet::new();
                while let Some(name) = map.next_key_seed(AgentKey { seen: &mut seen })? {
                    let policy: AgentPolicy = map.next_value()?;
                    agents.insert(name, policy);
                }
                Ok(Agents(agents))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads one agent name, so that a bad or repeated name is reported at the key itself.
struct AgentKey<'a> {
    seen: &'a mut BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for AgentKey<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for AgentKey<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an agent name")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        validate_agent_name(s).map_err(E::custom)?;
        if !self.seen.insert(s.to_owned()) {
            return Err(E::custom(format!(
                "agent {s:?} is listed twice; expected each agent once"
            )));
        }
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_forms() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_cidr("::/0").unwrap().to_string(), "::/0");
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr("::ffff:127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(
            parse_cidr("::ffff:0:0/96").unwrap().to_string(),
            "0.0.0.0/0"
        );
        // Shorter than /96 it covers more than the mapped range, so it stays IPv6.
        assert_eq!(
            parse_cidr("::ffff:0:0/95").unwrap_err(),
            "invalid CIDR \"::ffff:0:0/95\": host bits are set (the address is not the first \
             of its /95 network); write ::fffe:0:0/95 for the network, or ::ffff:0.0.0.0/128 \
             for the single address"
        );
        assert_eq!(parse_cidr("::/80").unwrap().to_string(), "::/80");
    }

    #[test]
    fn cidr_errors() {
        assert_eq!(
            parse_cidr("127.0.0.1/33").unwrap_err(),
            "invalid CIDR \"127.0.0.1/33\": prefix length 33 is longer than 32; expected an \
             address like 10.0.0.0/8 or 2001:db8::/32"
        );
        assert_eq!(
            parse_cidr("::/129").unwrap_err(),
            "invalid CIDR \"::/129\": prefix length 129 is longer than 128; expected an \
             address like 10.0.0.0/8 or 2001:db8::/32"
        );
        assert_eq!(
            parse_cidr("127.0.0.1/8").unwrap_err(),
            "invalid CIDR \"127.0.0.1/8\": host bits are set (the address is not the first of \
             its /8 network); write 127.0.0.0/8 for the network, or 127.0.0.1/32 for the \
             single address"
        );
        assert!(parse_cidr("example.com")
            .unwrap_err()
            .contains("\"example.com\" is not an IPv4 or IPv6 address"));
        assert!(parse_cidr("10.0.0.0/x")
            .unwrap_err()
            .contains("prefix length \"x\" is not a number"));
        assert!(parse_cidr("10.0.0.0/99999999999999999999").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(
            PortRange::parse("443").unwrap(),
            PortRange { lo: 443, hi: 443 }
        );
        assert_eq!(
            PortRange::parse("8000-8099").unwrap(),
            PortRange { lo: 8000, hi: 8099 }
        );
        assert_eq!(PortRange::parse("0 - 65535").unwrap(), PortRange::ALL);
        assert_eq!(
            PortRange::parse("9000-8000").unwrap_err(),
            "invalid port range \"9000-8000\": the range runs backwards (9000 > 8000); write \
             it low-high, e.g. 8000-9000"
        );
        assert!(PortRange::parse("65536")
            .unwrap_err()
            .starts_with("port 65536 is larger than 65535"));
        assert!(PortRange::parse("http")
            .unwrap_err()
            .starts_with("invalid port \"http\""));
        assert!(PortRange::parse("1-2-3").is_err());
        assert_eq!(PortRange { lo: 1, hi: 1 }.to_string(), "1");
        assert_eq!(PortRange { lo: 1, hi: 2 }.to_string(), "1-2");
    }

    #[test]
    fn allow_events() {
        assert_eq!(AllowEvents::parse("all").unwrap(), AllowEvents::All);
        assert_eq!(AllowEvents::parse("none").unwrap(), AllowEvents::None);
        assert_eq!(AllowEvents::parse("sample:1").unwrap(), AllowEvents::All);
        assert_eq!(
            AllowEvents::parse("sample:10").unwrap(),
            AllowEvents::Sample(10)
        );
        assert!(AllowEvents::parse("sample:0").is_err());
        assert!(AllowEvents::parse("sample:x").is_err());
        assert!(AllowEvents::parse("some").is_err());
        assert_eq!(AllowEvents::All.sample_rate(), 1);
        assert_eq!(AllowEvents::None.sample_rate(), 0);
        assert_eq!(AllowEvents::Sample(7).sample_rate(), 7);
        assert_eq!(AllowEvents::Sample(7).to_string(), "sample:7");
    }

    #[test]
    fn describe() {
        let rule = AllowRule {
            cidr: "127.0.0.1/32".parse().unwrap(),
            ports: vec![
                PortRange { lo: 8000, hi: 8099 },
                PortRange { lo: 443, hi: 443 },
            ],
            protocols: PROTO_TCP,
            comment: None,
            name: None,
            requires_approval: false,
            read_only: false,
        };
        assert_eq!(rule.describe(), "127.0.0.1/32 tcp 8000-8099,443");
        let egress = EgressPolicy {
            allow: vec![rule],
            ..EgressPolicy::default()
        };
        assert_eq!(
            egress.describe_rule(0).unwrap(),
            "allow[0] 127.0.0.1/32 tcp 8000-8099,443"
        );
        assert_eq!(egress.describe_rule(1), None);
        let any = AllowRule {
            cidr: "::/0".parse().unwrap(),
            ports: vec![],
            protocols: PROTO_TCP | PROTO_UDP,
            comment: Some("everything".into()),
            name: None,
            requires_approval: false,
            read_only: false,
        };
        assert_eq!(any.describe(), "::/0 tcp+udp any port (everything)");
    }
}
