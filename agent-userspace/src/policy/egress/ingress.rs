//! The `ingress:` section: who may connect to the agent's listeners (and send datagrams to
//! its UDP sockets). Nothing may unless a rule says so.

use agent_common::egress::{PROTO_TCP, PROTO_UDP};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    AllowRule, Cidr, Destination, EgressPolicy, PortRange, Ports, ProtocolName, Protocols,
};

/// Inbound connections: default deny, plus an ordered allow list of peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressPolicy {
    /// Peers that may reach the agent, and on which of its ports; the first rule that matches
    /// decides (its index is reported).
    #[serde(default)]
    pub allow: Vec<IngressRule>,
}

impl IngressPolicy {
    /// The list as egress-style rules, which the same trie compiler handles: the CIDR is the
    /// peer's network, the ports the agent's own.
    pub fn as_rules(&self) -> EgressPolicy {
        EgressPolicy {
            allow: self.allow.iter().map(|r| r.0.clone()).collect(),
            ..EgressPolicy::default()
        }
    }
}

/// Peers allowed to reach some of the agent's ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(from = "RawIngressRule")]
#[schemars(with = "RawIngressRule")]
pub struct IngressRule(pub AllowRule);

impl IngressRule {
    /// Human form for events and logs, e.g. `127.0.0.1/32 tcp 8080`.
    pub fn describe(&self) -> String {
        self.0.describe()
    }
}

/// What an ingress rule looks like in YAML.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawIngressRule {
    /// The peers' network: an IPv4 or IPv6 CIDR; a bare address means /32 or /128.
    #[schemars(with = "String")]
    cidr: Cidr,
    /// The agent's ports they may reach (443, "8000-8099"); omitted or [] means every port.
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
}

impl From<RawIngressRule> for IngressRule {
    fn from(raw: RawIngressRule) -> Self {
        Self(AllowRule {
            dest: Destination::Cidr(raw.cidr.0),
            ports: raw.ports.map(|p| p.0).unwrap_or_default(),
            protocols: raw.protocols.map_or(PROTO_TCP | PROTO_UDP, |p| p.0),
            comment: raw.comment,
            name: None,
            requires_approval: false,
            read_only: false,
        })
    }
}
