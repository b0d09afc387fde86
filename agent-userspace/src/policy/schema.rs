//! The policy's types and their YAML form (schema version 1).
//!
//! Every value is checked inside its own `Deserialize` visitor rather than after the fact:
//! serde_norway only knows the line, column and dotted path of the value it is deserializing,
//! so an error raised there points at the offending text. Conversions that run after a value
//! was read (`#[serde(try_from)]`) would point at the enclosing mapping instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use schemars::JsonSchema;
use serde::{
    de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor},
    Deserialize, Serialize,
};

use super::assertions::Assertion;
use super::{
    account::RunAs,
    egress::{EgressPolicy, IngressPolicy},
    exec::{Enforcement, ExecPolicy, FilesPolicy},
    identity::{CertificateRequirement, CredentialRule, IdentityPolicy, Users},
    limits::Limits,
    runtime::{ApprovalPolicy, Budgets, Collectives, ContainmentPolicy},
    unix::UnixPolicy,
    validate_agent_name,
};

/// The only schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// What one agent may do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPolicy {
    /// Outbound network access.
    #[serde(default)]
    pub egress: EgressPolicy,
    /// Who may connect to the agent's listeners; nobody unless a rule says so.
    #[serde(default)]
    pub ingress: IngressPolicy,
    /// Unix sockets: present, only the listed addresses (and listeners in the agent's own
    /// cage) may be reached; absent, Unix sockets are not confined.
    #[serde(default)]
    pub unix: Option<UnixPolicy>,
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
    /// Who the agent is: owner, purpose, data classes, tools, models.
    #[serde(default)]
    pub identity: IdentityPolicy,
    /// The credentials the agent may ask for, one rule per tool (none: every request is
    /// refused).
    #[serde(default)]
    pub credentials: Vec<CredentialRule>,
    /// Whether the agent needs a valid behavior certificate for the policy in force.
    #[serde(default)]
    pub certificate: CertificateRequirement,
    /// The account the agent's processes run under: `dynamic` (default: a uid of its own),
    /// `root`, `caller`, an account name, or a list (`agentcage run --user` picks one).
    #[serde(default)]
    pub run_as: RunAs,
    /// Resource limits of the agent's cage (cgroup v2 controllers).
    #[serde(default)]
    pub limits: Limits,
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
    /// Users agents may ask for credentials on behalf of, each with what they may delegate.
    #[serde(default)]
    pub(crate) users: Users,
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
