//! Agent identities: every agent is a first-class identity, separate from the human user and
//! the host application. An agent has two names: `agent:NAME`, local to this host's policy,
//! and its SPIFFE ID, `spiffe://TRUST_DOMAIN/agent/NAME`, which a tool can check in the
//! credentials the daemon issues (see `crate::credentials`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable identity string of an agent, carried on every event: `agent:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentIdentity(String);

/// What every identity string begins with.
const PREFIX: &str = "agent:";

impl AgentIdentity {
    /// The identity of the agent named `name` (already validated by the policy rules).
    pub fn for_agent(name: &str) -> Self {
        Self(format!("{PREFIX}{name}"))
    }

    /// The agent's name (the identity without its `agent:` prefix).
    pub fn name(&self) -> &str {
        self.0.strip_prefix(PREFIX).unwrap_or(&self.0)
    }

    /// The identity as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a trust domain or a SPIFFE path segment was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The trust domain breaks the SPIFFE ID rules.
    #[error(
        "invalid trust domain {domain:?}: {reason}; expected 1-255 characters of a-z, 0-9, '.', \
         '-' or '_' (set identity.trust_domain in the daemon's configuration file)"
    )]
    TrustDomain {
        /// The refused value.
        domain: String,
        /// What is wrong.
        reason: String,
    },
    /// A path segment breaks the SPIFFE ID rules.
    #[error("{what} {segment:?} cannot be part of a SPIFFE ID: {reason}")]
    Segment {
        /// What the segment names (an agent, the node).
        what: &'static str,
        /// The refused value.
        segment: String,
        /// What is wrong.
        reason: String,
    },
}

/// A SPIFFE trust domain: `identity.trust_domain` in the daemon's configuration file, the
/// host name by default.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks `domain` against the SPIFFE rules (lowercase letters, digits, `.`, `-`, `_`).
    pub fn new(domain: &str) -> Result<Self, IdentityError> {
        let refuse = |reason: String| IdentityError::TrustDomain {
            domain: domain.to_owned(),
            reason,
        };
        if domain.is_empty() || domain.len() > 255 {
            return Err(refuse(format!("it is {} characters long", domain.len())));
        }
        if let Some(c) = domain.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(refuse(format!("character {c:?} is not allowed")));
        }
        Ok(Self(domain.to_owned()))
    }

    /// The host's name (from the kernel) as the default trust domain, made fit for one
    /// (see [`host_domain`]).
    pub fn of_host() -> Result<Self, IdentityError> {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Self::new(&host_domain(&name))
    }

    /// The domain.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of `agent` in this domain: `spiffe://DOMAIN/agent/NAME`.
    pub fn agent(&self, agent: &AgentIdentity) -> SpiffeId {
        // Agent names ([A-Za-z0-9._-], never "." or "..") are valid path segments as they are.
        SpiffeId(format!("spiffe://{}/agent/{}", self.0, agent.name()))
    }

    /// The SPIFFE ID of this node's daemon, the issuer of its credentials:
    /// `spiffe://DOMAIN/node/NODE`.
    pub fn node(&self, node: &str) -> Result<SpiffeId, IdentityError> {
        check_segment("the node id", node)?;
        Ok(SpiffeId(format!("spiffe://{}/node/{node}", self.0)))
    }
}

/// A host name as a trust domain: lowercased, every character SPIFFE does not allow made
/// `-`; a host without a name (the kernel's `(none)`, as in an initramfs or a fresh
/// container) is `localhost`, so that the daemon starts there and says which domain it uses.
pub fn host_domain(name: &str) -> String {
    let name = name.trim();
    if name.is_empty() || name == "(none)" {
        return "localhost".to_owned();
    }
    let domain: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .take(255)
        .collect();
    let domain = domain.trim_matches('-');
    if domain.is_empty() {
        "localhost".to_owned()
    } else {
        domain.to_owned()
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<TrustDomain> for String {
    fn from(t: TrustDomain) -> Self {
        t.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE path segment: letters, digits, `.`, `-`, `_`, and neither `.` nor `..`.
fn check_segment(what: &'static str, s: &str) -> Result<(), IdentityError> {
    let refuse = |reason: &str| IdentityError::Segment {
        what,
        segment: s.to_owned(),
        reason: reason.to_owned(),
    };
    if s.is_empty() || s == "." || s == ".." {
        return Err(refuse("it is empty, \".\" or \"..\""));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(refuse("only A-Z, a-z, 0-9, '.', '-' and '_' are allowed"));
    }
    Ok(())
}

/// A SPIFFE ID, `spiffe://TRUST_DOMAIN/PATH`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpiffeId(String);

impl SpiffeId {
    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_agents_and_nodes() {
        let td = TrustDomain::new("prod.example").unwrap();
        let id = td.agent(&AgentIdentity::for_agent("payer-1.b_c"));
        assert_eq!(id.as_str(), "spiffe://prod.example/agent/payer-1.b_c");
        assert_eq!(
            td.node("node-7").unwrap().as_str(),
            "spiffe://prod.example/node/node-7"
        );
        assert!(td.node("..").is_err());
        assert!(td.node("a/b").is_err());
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://prod.example/agent/payer-1.b_c\""
        );
    }

    #[test]
    fn trust_domains_follow_the_spiffe_rules() {
        for bad in ["", "Prod", "a b", "a/b", "a:1"] {
            let e = TrustDomain::new(bad).unwrap_err().to_string();
            assert!(e.contains("identity.trust_domain"), "{e}");
        }
        assert!(TrustDomain::new("a-b_c.d9").is_ok());
        assert!(
            TrustDomain::of_host().is_ok(),
            "the host name makes a trust domain"
        );
        assert_eq!(host_domain("(none)\n"), "localhost");
        assert_eq!(host_domain(""), "localhost");
        assert_eq!(host_domain("Build Host 7"), "build-host-7");
        assert_eq!(host_domain("node-1.example"), "node-1.example");
        let e = serde_json::from_str::<TrustDomain>("\"UPPER\"").unwrap_err();
        assert!(e.to_string().contains("'U'"), "{e}");
    }
}
