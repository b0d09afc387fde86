//! Agent identities: every agent is a first-class identity, separate from the human user and
//! the host application.

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
