//! DNS queries a cage's resolver answered or refused (`kind: dns`). The daemon raises them
//! itself: the kernel only redirects the queries.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    decision::{RuleRef, Verdict},
    egress::Protocol,
};

/// One query to a cage's resolver.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DnsDetail {
    /// The name asked (lower case, without the trailing dot).
    pub name: String,
    /// The query type (`A`, `AAAA`, `TXT`, ...).
    pub qtype: String,
    /// How the query came: `udp` or `tcp`.
    pub transport: Protocol,
    /// `allow` (forwarded and answered), `deny` (refused, never sent upstream) or `budget`.
    pub verdict: Verdict,
    /// The `host:` rule that allowed it, or why it was refused (`dns-name-not-allowed`,
    /// `dns-query-type`, `budget`).
    pub rule: RuleRef,
    /// The rule's text, for allow-list rules.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
    /// The addresses granted to the cage (those of the answer's chain from the name asked).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub answers: Vec<IpAddr>,
    /// How long the grants last, in seconds (the answer's TTL within the daemon's bounds).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ttl_s: Option<u32>,
    /// Why an allowed query got no answer (the upstream failed); the agent got SERVFAIL.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Answered from the cage's resolver's cache (an earlier answer within its TTL), not
    /// asked upstream again; its grants were checked before the answer left.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub cached: bool,
}
