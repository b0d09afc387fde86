//! Who an agent is and what it may be given: the `identity:`, `credentials:` and
//! `certificate:` sections of an agent's policy and the top-level `users:` (see
//! docs/POLICY.md "Identity, credentials and certificates").
//!
//! Credentials are denied by default: a tool call's token is issued only for a tool, method
//! and resource one of the agent's `credentials` rules allows, and, on a user's behalf, only
//! inside that user's envelope too.

use std::{collections::BTreeMap, fmt, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::runtime::{check_name, Span};

/// The longest `max_ttl` a rule may give: a token outlives a key rotation by at most this.
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// The lifetime of a token whose request names none (never beyond the rule's `max_ttl`).
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(60);

/// What the agent is, declared by its owner: listed by `agentcage agents` and carried by its
/// behavior certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityPolicy {
    /// Who answers for the agent (a person or a team).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The classes of data it handles (e.g. `pii`, `payments`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_classes: Vec<String>,
    /// The tools it uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// The models it may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

impl IdentityPolicy {
    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether the agent needs a valid behavior certificate for the policy in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CertificateRequirement {
    /// A valid certificate is stamped on the agent's events when there is one.
    #[default]
    Optional,
    /// `agentcage run` refuses to start the agent, and no credential is issued to it, without
    /// a valid certificate for the policy in force.
    Required,
}

impl fmt::Display for CertificateRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Optional => "optional",
            Self::Required => "required",
        })
    }
}

/// A method name: 1-32 letters, digits, `_` or `-`, compared in upper case; `*` is any.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct Method(String);

impl Method {
    /// Checks and normalises a method (`post` is `POST`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self(s.to_owned()));
        }
        if s.is_empty()
            || s.len() > 32
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "invalid method {s:?}: expected 1-32 letters, digits, '_' or '-' (or * for any)"
            ));
        }
        Ok(Self(s.to_ascii_uppercase()))
    }

    /// Whether this (a rule's method) covers `method` (a request's, normalised).
    pub fn covers(&self, method: &str) -> bool {
        self.0 == "*" || self.0 == method
    }

    /// The method.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Method {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<Method> for String {
    fn from(m: Method) -> Self {
        m.0
    }
}

/// A resource glob: `*` matches within one `/`-separated segment, `**` across segments,
/// `?` one character, `[...]` a class.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct ResourcePattern {
    text: String,
    pattern: glob::Pattern,
}

impl PartialEq for ResourcePattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for ResourcePattern {}

impl ResourcePattern {
    /// Compiles a resource glob.
    pub fn parse(s: &str) -> Result<Self, String> {
        check_resource_text(s, "resource pattern")?;
        let pattern =
            glob::Pattern::new(s).map_err(|e| format!("invalid resource pattern {s:?}: {e}"))?;
        Ok(Self {
            text: s.to_owned(),
            pattern,
        })
    }

    /// Whether a request's (literal) resource matches.
    pub fn matches(&self, resource: &str) -> bool {
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.pattern.matches_with(resource, options)
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for ResourcePattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<ResourcePattern> for String {
    fn from(p: ResourcePattern) -> Self {
        p.text
    }
}

/// 1-1024 bytes, no whitespace or control characters (a token's scope is `METHOD RESOURCE`).
fn check_resource_text(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 1024 {
        return Err(format!("invalid {what} {s:?}: expected 1-1024 bytes"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid {what} {s:?}: {c:?} is not allowed (no whitespace or control characters)"
        ));
    }
    Ok(())
}

/// Checks a resource a request names: literal (no glob characters), and no `.` or `..`
/// segment or backslash, which a tool's backend could resolve to another resource than the
/// one the rule matched.
pub fn check_requested_resource(s: &str) -> Result<(), String> {
    check_resource_text(s, "resource")?;
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, '*' | '?' | '[' | ']' | '\\'))
    {
        return Err(format!(
            "invalid resource {s:?}: {c:?} is not allowed; a request names one resource"
        ));
    }
    if s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "invalid resource {s:?}: \".\" and \"..\" segments are not allowed"
        ));
    }
    Ok(())
}

/// Checks a tool name (as the `aud` of a token).
pub fn check_tool(s: &str) -> Result<String, String> {
    check_name(s, "tool name")
}

/// A tool, the methods on it and the resources: what a credentials rule allows, and what a
/// user may delegate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grantable {
    /// The tool (a token's audience).
    #[serde(deserialize_with = "tool_name")]
    pub tool: String,
    /// The methods (`GET`, `POST`, ...; `*` for any).
    #[schemars(length(min = 1))]
    pub methods: Vec<Method>,
    /// Resource globs (`/payouts/*`).
    #[schemars(length(min = 1))]
    pub resources: Vec<ResourcePattern>,
}

fn tool_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_tool(&s).map_err(serde::de::Error::custom)
}

impl Grantable {
    /// Whether a (checked, normalised) request for `tool`, `method` and `resource` lies inside.
    pub fn covers(&self, tool: &str, method: &str, resource: &str) -> bool {
        covers(
            &self.tool,
            &self.methods,
            &self.resources,
            (tool, method, resource),
        )
    }
}

fn covers(
    tool: &str,
    methods: &[Method],
    resources: &[ResourcePattern],
    (t, m, r): (&str, &str, &str),
) -> bool {
    tool == t && methods.iter().any(|x| x.covers(m)) && resources.iter().any(|x| x.matches(r))
}

/// One `credentials:` rule of an agent: a tool, the methods on it and the resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRule {
    /// The tool (a token's audience).
    #[serde(deserialize_with = "tool_name")]
    pub tool: String,
    /// The methods (`GET`, `POST`, ...; `*` for any).
    #[schemars(length(min = 1))]
    pub methods: Vec<Method>,
    /// Resource globs (`/payouts/*`).
    #[schemars(length(min = 1))]
    pub resources: Vec<ResourcePattern>,
    /// The longest a token may live (at most 24h); requests ask for 60s unless they say.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Span,
    /// Each request waits for a person's `agentcage approve` (the request is refused with
    /// `pending-approval` until then).
    #[serde(default)]
    pub requires_approval: bool,
}

impl CredentialRule {
    /// Whether a (checked, normalised) request for `tool`, `method` and `resource` matches.
    pub fn covers(&self, tool: &str, method: &str, resource: &str) -> bool {
        covers(
            &self.tool,
            &self.methods,
            &self.resources,
            (tool, method, resource),
        )
    }
}

fn default_max_ttl() -> Span {
    Span(DEFAULT_CREDENTIAL_TTL)
}

/// A user on whose behalf agents may ask for credentials: what the user may delegate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPolicy {
    /// The tools, methods and resources the user may delegate; a grant on the user's behalf
    /// lies inside both this and the agent's own rule.
    #[serde(default)]
    pub envelope: Vec<Grantable>,
}

/// The top-level `users:` map.
pub type Users = BTreeMap<String, UserPolicy>;

/// Checks a user name: 1-128 letters, digits, `.`, `_`, `-` or `@`.
pub fn check_user(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(format!(
            "invalid user name {s:?}: expected 1-128 letters, digits, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

/// Values serde does not check: non-empty lists, the `max_ttl` bound, user names.
pub(crate) fn check_values(
    path: &str,
    credentials: &[CredentialRule],
    users: Option<&Users>,
) -> Result<(), String> {
    let lists = |at: &str, methods: &[Method], resources: &[ResourcePattern]| {
        if methods.is_empty() || resources.is_empty() {
            Err(format!(
                "{at}: methods and resources must each list at least one entry (use \"*\" for \
                 any method, \"/**\" for any resource)"
            ))
        } else {
            Ok(())
        }
    };
    for (i, rule) in credentials.iter().enumerate() {
        let at = format!("{path}.credentials[{i}]");
        lists(&at, &rule.methods, &rule.resources)?;
        if rule.max_ttl.0 > MAX_CREDENTIAL_TTL {
            return Err(format!(
                "{at}.max_ttl: {} is longer than 24h, the longest a credential may live",
                rule.max_ttl
            ));
        }
    }
    for (name, user) in users.into_iter().flatten() {
        check_user(name).map_err(|e| format!("users: {e}"))?;
        for (i, g) in user.envelope.iter().enumerate() {
            lists(
                &format!("users.{name}.envelope[{i}]"),
                &g.methods,
                &g.resources,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(tool: &str, methods: &[&str], resources: &[&str]) -> Grantable {
        Grantable {
            tool: tool.into(),
            methods: methods.iter().map(|m| Method::parse(m).unwrap()).collect(),
            resources: resources
                .iter()
                .map(|r| ResourcePattern::parse(r).unwrap())
                .collect(),
        }
    }

    #[test]
    fn globs_stay_within_segments_unless_doubled() {
        let g = grant("payments", &["post"], &["/payouts/*"]);
        assert!(g.covers("payments", "POST", "/payouts/42"));
        assert!(!g.covers("payments", "POST", "/payouts/42/refund"));
        assert!(!g.covers("payments", "GET", "/payouts/42"));
        assert!(!g.covers("ledger", "POST", "/payouts/42"));
        let deep = grant("payments", &["*"], &["/payouts/**"]);
        assert!(deep.covers("payments", "DELETE", "/payouts/42/refund"));
        assert!(!deep.covers("payments", "GET", "/payoutsX"));
    }

    #[test]
    fn requested_resources_are_literal_and_without_dot_segments() {
        assert!(check_requested_resource("/payouts/42").is_ok());
        for bad in [
            "/payouts/*",
            "/payouts/../admin",
            "/a/./b",
            "a b",
            "",
            "/x\\y",
            "/\u{7}",
        ] {
            assert!(check_requested_resource(bad).is_err(), "{bad:?}");
        }
        assert!(Method::parse("GET /").is_err());
        assert_eq!(Method::parse("patch").unwrap().as_str(), "PATCH");
    }

    #[test]
    fn the_sections_parse_are_checked_and_hash_only_when_set() {
        use crate::policy::Policy;
        let load = |y: &str| Policy::from_yaml(y, "p.yaml");
        let plain = "version: 1\nagents:\n  a: {}\n";
        let hash = load(plain).unwrap().hash().to_owned();
        let empty = "version: 1\nusers: {}\nagents:\n  a:\n    identity: {}\n    credentials: []\n    certificate: optional\n";
        assert_eq!(load(empty).unwrap().hash(), hash, "defaults add nothing");
        let full = "version: 1\nusers:\n  bob@x:\n    envelope:\n      - {tool: t, methods: [get], resources: [\"/a/*\"]}\nagents:\n  a:\n    identity: {owner: me, models: [m]}\n    credentials:\n      - {tool: t, methods: [GET], resources: [\"/a/*\"], max_ttl: 5m, requires_approval: true}\n    certificate: required\n";
        let p = load(full).unwrap();
        assert_ne!(p.hash(), hash);
        let form = p.canonical();
        for line in [
            "  identity {",
            "  credentials [",
            "  certificate required",
            "user bob@x envelope=",
        ] {
            assert!(form.contains(line), "{line} in {form}");
        }
        assert_eq!(p.agents["a"].certificate, CertificateRequirement::Required);
        assert_eq!(p.users["bob@x"].envelope[0].methods[0].as_str(), "GET");
        for (bad, says) in [
            (
                full.replace("max_ttl: 5m", "max_ttl: 25h"),
                "longer than 24h",
            ),
            (
                full.replace("methods: [GET]", "methods: []"),
                "at least one entry",
            ),
            (full.replace("bob@x", "bob x"), "invalid user name"),
            (
                full.replace("methods: [GET]", "methods: [\"G T\"]"),
                "invalid method",
            ),
            (
                full.replace("tool: t, methods: [GET]", "tool: \"t t\", methods: [GET]"),
                "tool name",
            ),
            (
                full.replace("certificate: required", "certificate: maybe"),
                "optional",
            ),
            (
                full.replace("owner: me", "ownr: me"),
                "unknown field `ownr`",
            ),
        ] {
            let e = load(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{says:?} in {e}");
        }
    }
}
