//! Whether a credential request may be granted under the policy: default deny; the first of
//! the agent's `credentials` rules that covers the tool, method and resource decides (its
//! `max_ttl`, its `requires_approval`); on a user's behalf the request must also lie inside
//! that user's envelope, so the grant is the intersection and never more.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{
    check_requested_resource, check_tool, check_user, AgentPolicy, Method, Span, Users,
    DEFAULT_CREDENTIAL_TTL,
};

/// A credential request as the application sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// The tool.
    pub tool: String,
    /// The method.
    pub method: String,
    /// The one resource.
    pub resource: String,
    /// How long the token should live (`60s` when absent; never beyond the rule's `max_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// The user the agent acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

/// A request whose values are checked and normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The tool.
    pub tool: String,
    /// The method, upper case.
    pub method: String,
    /// The resource, literal.
    pub resource: String,
    /// The lifetime asked for, if any.
    pub ttl: Option<Duration>,
    /// The user the agent acts for.
    pub on_behalf_of: Option<String>,
}

impl CredentialRequest {
    /// Checks every value; the message names the field.
    pub fn check(&self) -> Result<Ask, String> {
        let tool = check_tool(&self.tool)?;
        if self.method == "*" {
            return Err("method: a request names one method, not *".into());
        }
        let method = Method::parse(&self.method)?.as_str().to_owned();
        check_requested_resource(&self.resource)?;
        let ttl = match &self.ttl {
            None => None,
            Some(t) => {
                let d = Span::parse(t)?.0;
                if d < Duration::from_secs(1) {
                    return Err(format!("ttl {t:?}: expected at least 1s"));
                }
                Some(d)
            }
        };
        if let Some(u) = &self.on_behalf_of {
            check_user(u)?;
        }
        Ok(Ask {
            tool,
            method,
            resource: self.resource.clone(),
            ttl,
            on_behalf_of: self.on_behalf_of.clone(),
        })
    }
}

/// What the policy grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The rule's index in the agent's `credentials`.
    pub rule: usize,
    /// The token's lifetime.
    pub ttl: Duration,
    /// Whether a person must approve the request first.
    pub requires_approval: bool,
}

/// Why the policy refuses a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No rule of the agent covers the tool, method and resource.
    #[error("no credentials rule of agent {agent} allows {method} {resource} on tool {tool}")]
    NotAllowed {
        /// The agent.
        agent: String,
        /// The tool.
        tool: String,
        /// The method.
        method: String,
        /// The resource.
        resource: String,
    },
    /// The user is not under the policy's `users`.
    #[error("user {0:?} is not defined under the policy's users: nothing can be delegated")]
    UnknownUser(String),
    /// The request lies outside the user's envelope.
    #[error("{method} {resource} on tool {tool} is outside the envelope of user {user}")]
    Envelope {
        /// The user.
        user: String,
        /// The tool.
        tool: String,
        /// The method.
        method: String,
        /// The resource.
        resource: String,
    },
    /// The lifetime asked for is longer than the rule's `max_ttl`.
    #[error("ttl {asked} is longer than the rule's max_ttl ({max})")]
    Ttl {
        /// Asked.
        asked: Span,
        /// The rule's bound.
        max: Span,
    },
}

impl Refusal {
    /// The machine-readable reason (`not-allowed`, `unknown-user`, `envelope`, `ttl`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAllowed { .. } => "not-allowed",
            Self::UnknownUser(_) => "unknown-user",
            Self::Envelope { .. } => "envelope",
            Self::Ttl { .. } => "ttl",
        }
    }
}

/// Decides `ask` for `agent` (with its policy, None for an agent the policy refuses).
pub fn decide(
    agent: &str,
    policy: Option<&AgentPolicy>,
    users: &Users,
    ask: &Ask,
) -> Result<Decided, Refusal> {
    let (tool, method, resource) = (ask.tool.as_str(), ask.method.as_str(), &ask.resource);
    let not_allowed = || Refusal::NotAllowed {
        agent: agent.to_owned(),
        tool: tool.to_owned(),
        method: method.to_owned(),
        resource: resource.clone(),
    };
    let (index, rule) = policy
        .into_iter()
        .flat_map(|p| p.credentials.iter().enumerate())
        .find(|(_, r)| r.covers(tool, method, resource))
        .ok_or_else(not_allowed)?;
    if let Some(user) = &ask.on_behalf_of {
        let envelope = users
            .get(user)
            .ok_or_else(|| Refusal::UnknownUser(user.clone()))?;
        if !envelope
            .envelope
            .iter()
            .any(|g| g.covers(tool, method, resource))
        {
            return Err(Refusal::Envelope {
                user: user.clone(),
                tool: tool.to_owned(),
                method: method.to_owned(),
                resource: resource.clone(),
            });
        }
    }
    let ttl = match ask.ttl {
        Some(asked) if asked > rule.max_ttl.0 => {
            return Err(Refusal::Ttl {
                asked: Span(asked),
                max: rule.max_ttl,
            })
        }
        Some(asked) => asked,
        None => DEFAULT_CREDENTIAL_TTL.min(rule.max_ttl.0),
    };
    Ok(Decided {
        rule: index,
        ttl,
        requires_approval: rule.requires_approval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    const POLICY: &str = r#"
version: 1
users:
  alice:
    envelope:
      - tool: payments
        methods: [POST]
        resources: ["/payouts/4*"]
agents:
  payer:
    credentials:
      - tool: payments
        methods: [POST, GET]
        resources: ["/payouts/*"]
        max_ttl: 2m
      - tool: payments
        methods: ["*"]
        resources: ["/refunds/**"]
        requires_approval: true
"#;

    fn ask(method: &str, resource: &str, ttl: Option<&str>, user: Option<&str>) -> Ask {
        CredentialRequest {
            tool: "payments".into(),
            method: method.into(),
            resource: resource.into(),
            ttl: ttl.map(Into::into),
            on_behalf_of: user.map(Into::into),
        }
        .check()
        .unwrap()
    }

    fn decide_in(a: &Ask) -> Result<Decided, Refusal> {
        let p = Policy::from_yaml(POLICY, "p.yaml").unwrap();
        decide("payer", p.agent("payer"), &p.users, a)
    }

    #[test]
    fn default_deny_first_rule_decides_and_ttl_is_bounded() {
        let d = decide_in(&ask("post", "/payouts/42", None, None)).unwrap();
        assert_eq!(
            (d.rule, d.ttl, d.requires_approval),
            (0, DEFAULT_CREDENTIAL_TTL, false)
        );
        let d = decide_in(&ask("POST", "/payouts/42", Some("90s"), None)).unwrap();
        assert_eq!(d.ttl, Duration::from_secs(90));
        assert_eq!(
            decide_in(&ask("POST", "/payouts/42", Some("3m"), None))
                .unwrap_err()
                .reason(),
            "ttl"
        );
        assert_eq!(
            decide_in(&ask("DELETE", "/payouts/42", None, None))
                .unwrap_err()
                .reason(),
            "not-allowed"
        );
        let r = decide_in(&ask("DELETE", "/refunds/1/x", None, None)).unwrap();
        assert!(r.requires_approval);
        let p = Policy::from_yaml(POLICY, "p.yaml").unwrap();
        let other = decide(
            "other",
            p.agent("other"),
            &p.users,
            &ask("GET", "/payouts/1", None, None),
        );
        assert_eq!(
            other.unwrap_err().reason(),
            "not-allowed",
            "no policy, nothing granted"
        );
    }

    #[test]
    fn on_a_users_behalf_the_grant_is_the_intersection() {
        assert!(decide_in(&ask("POST", "/payouts/42", None, Some("alice"))).is_ok());
        // The agent may, alice may not delegate it.
        let e = decide_in(&ask("POST", "/payouts/52", None, Some("alice"))).unwrap_err();
        assert_eq!(e.reason(), "envelope");
        let e = decide_in(&ask("GET", "/payouts/42", None, Some("alice"))).unwrap_err();
        assert_eq!(e.reason(), "envelope");
        let e = decide_in(&ask("POST", "/payouts/42", None, Some("mallory"))).unwrap_err();
        assert_eq!(e.reason(), "unknown-user");
    }

    #[test]
    fn requests_are_checked() {
        let bad = |m: &str, r: &str, t: Option<&str>| {
            CredentialRequest {
                tool: "payments".into(),
                method: m.into(),
                resource: r.into(),
                ttl: t.map(Into::into),
                on_behalf_of: None,
            }
            .check()
            .unwrap_err()
        };
        assert!(bad("*", "/a", None).contains("one method"));
        assert!(bad("POST", "/payouts/*", None).contains("one resource"));
        assert!(bad("POST", "/a", Some("500ms")).contains("at least 1s"));
        assert!(bad("POST", "/a", Some("soon")).contains("invalid duration"));
    }
}
