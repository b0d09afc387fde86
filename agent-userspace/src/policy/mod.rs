//! Policy files: parsing and validating YAML (schema v1), hashing, and compiling egress rules
//! into the kernel's trie entries. See `docs/POLICY.md` for the format.
//!
//! Every error reads `FILE:LINE:COLUMN: what is wrong; what is expected` when the position is
//! known. A policy that loads is also known to compile: [`Policy::from_yaml`] compiles every
//! agent once, so the daemon's later [`compile_egress`] calls cannot fail on it.

mod account;
pub mod assertions;
mod compile;
mod egress;
mod error;
mod exec;
mod grant;
mod hash;
mod identity;
mod inodes;
pub mod kernel;
mod limits;
mod loader;
mod locate;
mod runtime;
mod schema;

use std::{collections::BTreeMap, fs, path::Path};

pub use account::{Account, RunAs};
pub use compile::compile_read_only;
pub use compile::{compile_egress, CompiledEgress, CompiledHost};
pub use egress::{
    normalize_name, AllowEvents, AllowRule, Destination, EgressPolicy, HostPattern, PortRange,
};
pub use error::PolicyError;
pub use exec::{
    Access, Enforcement, ExecDefault, ExecMatch, ExecPolicy, FilePattern, FileRuleSpec,
    FilesPolicy, RuleList,
};
pub use grant::canonical;
pub use identity::{
    check_requested_resource, check_tool, check_user, CertificateRequirement, CredentialRule,
    Grantable, IdentityPolicy, Method, ResourcePattern, UserPolicy, Users, DEFAULT_CREDENTIAL_TTL,
    MAX_CREDENTIAL_TTL,
};
pub use inodes::{
    compile_exec, compile_files, kernel_dev, kernel_dev_of, CompiledExec, CompiledFiles,
};
pub use limits::{Cpu, Limits, Memory, Pids, CPU_PERIOD_US};
pub use loader::loaders;
pub use runtime::{
    ApprovalPolicy, Budgets, Collective, Collectives, ContainmentPolicy, DenyRate, Limit, LoopRule,
    Rung, Span, TimeLimit,
};
pub use schema::{json_schema, AgentPolicy, Record, SCHEMA_VERSION};

use locate::{locate, Step};
use schema::RawPolicy;

/// Everything the kernel needs for one agent: egress tries, exec and file rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledAgent {
    /// Egress trie entries.
    pub egress: CompiledEgress,
    /// Exec rules by inode and by digest.
    pub exec: CompiledExec,
    /// File rules by inode.
    pub files: CompiledFiles,
}

/// Longest agent name (it becomes a cgroup directory name).
pub const MAX_AGENT_NAME_LEN: usize = 64;

/// A loaded, validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Schema version (always [`SCHEMA_VERSION`]).
    pub version: u32,
    /// Named agents' policies.
    pub agents: BTreeMap<String, AgentPolicy>,
    /// The policy for agents not named in `agents`; `None` refuses them.
    pub default_agent: Option<AgentPolicy>,
    /// User groups and their shared budgets.
    pub groups: Collectives,
    /// Workflows and their shared budgets.
    pub workflows: Collectives,
    /// Users agents may act for, and what each may delegate.
    pub users: Users,
    source: String,
    hash: String,
}

impl Policy {
    /// Parses and validates policy YAML; `source` names it in errors (usually its path).
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, PolicyError> {
        if is_blank(text) {
            return Err(PolicyError::InvalidUnlocated {
                file: source.to_owned(),
                message: format!(
                    "the policy is empty; expected a mapping starting with version: \
                     {SCHEMA_VERSION}"
                ),
            });
        }
        let raw: RawPolicy = serde_norway::from_str(text).map_err(|e| yaml_error(source, &e))?;
        let RawPolicy {
            version,
            agents,
            default_agent,
            groups,
            workflows,
            users,
        } = raw;
        let (version, agents) = (version.0, agents.0);
        check_memberships(source, &agents, default_agent.as_ref(), &groups, &workflows)?;
        check_run_time(source, &agents, default_agent.as_ref())?;
        identity::check_values("", &[], Some(&users)).map_err(|message| {
            PolicyError::InvalidUnlocated {
                file: source.to_owned(),
                message,
            }
        })?;

        // Compile now, so that a policy the kernel cannot hold is refused when it is loaded,
        // with a position, rather than when an agent starts.
        let mut entries = (0, 0);
        let mut add = |(v4, v6): (usize, usize)| {
            entries.0 += v4;
            entries.1 += v6;
        };
        for (name, agent) in &agents {
            let path = [Step::Key("agents"), Step::Key(name)];
            add(check_compiles(
                text,
                source,
                &format!("agents.{name}.egress"),
                &path,
                agent,
            )?);
        }
        if let Some(agent) = &default_agent {
            let path = [Step::Key("default_agent")];
            add(check_compiles(
                text,
                source,
                "default_agent.egress",
                &path,
                agent,
            )?);
        }
        // A reload holds the old and the new policy in the maps side by side: a policy may
        // take half of each.
        let room = (agent_common::maps::MAX_EGRESS_ENTRIES / 2) as usize;
        for (family, needed) in [("IPv4", entries.0), ("IPv6", entries.1)] {
            if needed > room {
                return Err(PolicyError::InvalidUnlocated {
                    file: source.to_owned(),
                    message: format!(
                        "the policy needs {needed} {family} allow-list entries in the kernel \
                         (one per distinct CIDR per agent), more than the {room} that fit \
                         (half the map, so a reload can hold old and new side by side); \
                         merge CIDRs into wider prefixes"
                    ),
                });
            }
        }

        let canonical = hash::canonical_form(
            version,
            &agents,
            default_agent.as_ref(),
            (&groups, &workflows),
            &users,
        );
        Ok(Self {
            version,
            agents,
            default_agent,
            groups,
            workflows,
            users,
            source: source.to_owned(),
            hash: hash::sha256_hex(&canonical),
        })
    }

    /// Reads and parses a policy file; errors name the path.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The agent's policy: its own entry, else `default_agent`, else `None` (refused).
    pub fn agent(&self, name: &str) -> Option<&AgentPolicy> {
        self.agents.get(name).or(self.default_agent.as_ref())
    }

    /// Whether any agent (or the default agent) has file rules.
    pub fn has_file_rules(&self) -> bool {
        self.agents
            .values()
            .chain(self.default_agent.as_ref())
            .any(|a| !a.files.is_empty())
    }

    /// Lowercase hex SHA-256 of the canonical form: the same for files that differ only in
    /// key order, whitespace, comments or quoting.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Where the policy came from, as given to [`Policy::from_yaml`] or [`Policy::load`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The canonical text form the hash is taken of: one line per setting, stable across
    /// key order, whitespace and comments (what `agentcage policy diff` compares).
    pub fn canonical(&self) -> String {
        hash::canonical_form(
            self.version,
            &self.agents,
            self.default_agent.as_ref(),
            (&self.groups, &self.workflows),
            &self.users,
        )
    }
}

/// Values of the run-time sections that serde cannot check alone; and assertions over
/// egress, which see allowed connections through their events (with sampled or no allow
/// events they would miss some, and silently pass).
fn check_run_time(
    source: &str,
    agents: &BTreeMap<String, AgentPolicy>,
    default_agent: Option<&AgentPolicy>,
) -> Result<(), PolicyError> {
    use assertions::PatternKind;
    let all = agents
        .iter()
        .map(|(n, a)| (format!("agents.{n}"), a))
        .chain(default_agent.map(|a| ("default_agent".to_owned(), a)));
    for (path, agent) in all {
        runtime::check_values(&path, &agent.budgets, &agent.containment, &agent.approvals)
            .and_then(|()| identity::check_values(&path, &agent.credentials, None))
            .map_err(|message| PolicyError::InvalidUnlocated {
                file: source.to_owned(),
                message,
            })?;
        let on_egress = agent
            .assertions
            .iter()
            .find(|a| a.patterns().iter().any(|p| p.kind == PatternKind::Egress));
        if let (Some(a), false) = (on_egress, agent.egress.allow_events == AllowEvents::All) {
            return Err(PolicyError::InvalidUnlocated {
                file: source.to_owned(),
                message: format!(
                    "{path}.assertions: `{a}` watches egress, but {path}.egress.allow_events is \
                     {}; the assertion would miss unreported connections: set allow_events: all",
                    agent.egress.allow_events
                ),
            });
        }
    }
    Ok(())
}

/// Every group and workflow an agent names must be defined at the top level, so that a typo
/// never silently leaves an agent outside a shared budget.
fn check_memberships(
    source: &str,
    agents: &BTreeMap<String, AgentPolicy>,
    default_agent: Option<&AgentPolicy>,
    groups: &Collectives,
    workflows: &Collectives,
) -> Result<(), PolicyError> {
    let all = agents
        .iter()
        .map(|(n, a)| (format!("agents.{n}"), a))
        .chain(default_agent.map(|a| ("default_agent".to_owned(), a)));
    for (path, agent) in all {
        for (what, names, defined) in [
            ("groups", &agent.groups, groups),
            ("workflows", &agent.workflows, workflows),
        ] {
            if let Some(missing) = names.iter().find(|n| !defined.contains_key(*n)) {
                return Err(PolicyError::InvalidUnlocated {
                    file: source.to_owned(),
                    message: format!(
                        "{path}.{what}: {missing:?} is not defined; expected one of the names \
                         under the top-level {what}: ({})",
                        defined.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Checks that `name` can be an agent's name: 1-64 characters of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` or `-` (it becomes a cgroup directory name and a command-line value).
pub fn validate_agent_name(name: &str) -> Result<(), PolicyError> {
    let reason = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(format!("character {c:?} is not allowed"))
    } else if name.len() > MAX_AGENT_NAME_LEN {
        // All ASCII by now, so bytes are characters.
        Some(format!(
            "it is {} characters long, more than {MAX_AGENT_NAME_LEN}",
            name.len()
        ))
    } else if name.starts_with("cgroup.") {
        // Cages are directories beside the parent cgroup's own cgroup.* files.
        Some("names starting with \"cgroup.\" are the kernel's cgroup files".to_owned())
    } else if name.starts_with('.') || name.starts_with('-') {
        Some(format!(
            "it starts with {:?}",
            name.chars().next().unwrap_or('.')
        ))
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(PolicyError::AgentName {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// Whether the text holds no YAML at all (only whitespace and comments).
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// A YAML error as `FILE:LINE:COLUMN: path: message`.
fn yaml_error(file: &str, err: &serde_norway::Error) -> PolicyError {
    let mut message = err.to_string();
    let Some(loc) = err.location() else {
        return PolicyError::InvalidUnlocated {
            file: file.to_owned(),
            message,
        };
    };
    // serde_norway appends the position in words; it goes in front instead.
    let suffix = format!(" at line {} column {}", loc.line(), loc.column());
    if let Some(at) = message.find(&suffix) {
        message.replace_range(at..at + suffix.len(), "");
    }
    PolicyError::Invalid {
        file: file.to_owned(),
        line: loc.line(),
        column: loc.column(),
        message,
    }
}

/// Compiles one agent's egress policy, placing any error at the rule (or list) it names;
/// returns how many IPv4 and IPv6 trie entries it takes.
fn check_compiles(
    text: &str,
    file: &str,
    label: &str,
    agent_path: &[Step<'_>],
    agent: &AgentPolicy,
) -> Result<(usize, usize), PolicyError> {
    let err = match compile::compile_at(label, &agent.egress, false) {
        Ok(c) => return Ok((c.v4.len(), c.v6.len())),
        Err(e) => e,
    };
    let mut path = agent_path.to_vec();
    path.extend([Step::Key("egress"), Step::Key("allow")]);
    if let PolicyError::TooManyPortRules { rule, .. } = &err {
        path.push(Step::Index(*rule));
    }
    let message = err.to_string();
    Err(match locate(text, &path) {
        Some((line, column)) => PolicyError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        },
        None => PolicyError::InvalidUnlocated {
            file: file.to_owned(),
            message,
        },
    })
}

#[cfg(test)]
mod tests;
