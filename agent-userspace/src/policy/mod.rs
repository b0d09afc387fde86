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
mod unix;

use std::{collections::BTreeMap, fs, path::Path};

pub use account::{Account, RunAs};
pub use compile::compile_read_only;
pub use compile::{compile_egress, CompiledEgress, CompiledHost};
pub use egress::{
    normalize_name, AllowEvents, AllowRule, Destination, EgressPolicy, HostPattern, IngressPolicy,
    IngressRule, PortRange,
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
pub use unix::{compile_unix, CompiledUnix, UnixPattern, UnixPolicy};

use locate::{locate, Step};
use schema::RawPolicy;

/// Everything the kernel needs for one agent: egress and ingress tries, the Unix-socket
/// automaton, exec and file rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledAgent {
    /// Egress trie entries.
    pub egress: CompiledEgress,
    /// Ingress trie entries (the peers' networks, the agent's ports).
    pub ingress: CompiledEgress,
    /// The Unix-socket automaton.
    pub unix: CompiledUnix,
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
        let mut needed = [0usize; KERNEL_TABLES.len()];
        let all = agents
            .iter()
            .map(|(name, agent)| {
                (
                    format!("agents.{name}"),
                    vec![Step::Key("agents"), Step::Key(name)],
                    agent,
                )
            })
            .chain(default_agent.iter().map(|a| {
                (
                    "default_agent".to_owned(),
                    vec![Step::Key("default_agent")],
                    a,
                )
            }));
        for (at, path, agent) in all {
            let entries = check_compiles(text, source, &at, &path, agent)?;
            for (total, n) in needed.iter_mut().zip(entries) {
                *total += n;
            }
        }
        // A reload holds the old and the new policy in the maps side by side: a policy may
        // take half of each.
        for ((what, capacity, advice), needed) in KERNEL_TABLES.into_iter().zip(needed) {
            let room = (capacity / 2) as usize;
            if needed > room {
                return Err(PolicyError::InvalidUnlocated {
                    file: source.to_owned(),
                    message: format!(
                        "the policy needs {needed} {what} in the kernel, more than the {room} \
                         that fit (half the map, so a reload can hold old and new side by \
                         side); {advice}"
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

    /// Whether any agent (or the default agent) confines Unix sockets (`unix:`).
    pub fn has_unix_rules(&self) -> bool {
        self.agents
            .values()
            .chain(self.default_agent.as_ref())
            .any(|a| a.unix.is_some())
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

/// The kernel tables a policy fills: what their entries are, the map's size, and what to do
/// when a policy needs too many.
const KERNEL_TABLES: [(&str, u32, &str); 5] = {
    use agent_common::maps::{MAX_EGRESS_ENTRIES, MAX_INGRESS_ENTRIES, MAX_UNIX_DFA_ENTRIES};
    const MERGE: &str = "merge CIDRs into wider prefixes";
    [
        (
            "IPv4 allow-list entries (one per distinct CIDR per agent)",
            MAX_EGRESS_ENTRIES,
            MERGE,
        ),
        (
            "IPv6 allow-list entries (one per distinct CIDR per agent)",
            MAX_EGRESS_ENTRIES,
            MERGE,
        ),
        (
            "IPv4 ingress entries (one per distinct CIDR per agent)",
            MAX_INGRESS_ENTRIES,
            MERGE,
        ),
        (
            "IPv6 ingress entries (one per distinct CIDR per agent)",
            MAX_INGRESS_ENTRIES,
            MERGE,
        ),
        (
            "Unix-socket automaton transitions",
            MAX_UNIX_DFA_ENTRIES,
            "use fewer or simpler unix.allow globs",
        ),
    ]
};

/// Compiles one agent's egress, ingress and Unix-socket sections (`at` names the agent:
/// `agents.NAME` or `default_agent`), placing any error at the rule (or list) it names;
/// returns how many entries of each of [`KERNEL_TABLES`] it takes.
fn check_compiles(
    text: &str,
    file: &str,
    at: &str,
    agent_path: &[Step<'_>],
    agent: &AgentPolicy,
) -> Result<[usize; KERNEL_TABLES.len()], PolicyError> {
    let placed = |section: &'static str, rule: Option<usize>, message: String| {
        let mut path = agent_path.to_vec();
        path.extend([Step::Key(section), Step::Key("allow")]);
        path.extend(rule.map(Step::Index));
        match locate(text, &path) {
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
        }
    };
    let mut tries = [(0, 0); 2];
    for (slot, (section, rules)) in tries.iter_mut().zip([
        ("egress", agent.egress.clone()),
        ("ingress", agent.ingress.as_rules()),
    ]) {
        match compile::compile_at(&format!("{at}.{section}"), &rules, false) {
            Ok(c) => *slot = (c.v4.len(), c.v6.len()),
            Err(e) => {
                let rule = match &e {
                    PolicyError::TooManyPortRules { rule, .. } => Some(*rule),
                    _ => None,
                };
                return Err(placed(section, rule, e.to_string()));
            }
        }
    }
    let unix = compile_unix(&format!("{at}.unix"), agent.unix.as_ref(), None)
        .map_err(|message| placed("unix", None, message))?;
    Ok([
        tries[0].0,
        tries[0].1,
        tries[1].0,
        tries[1].1,
        unix.transitions.len(),
    ])
}

#[cfg(test)]
mod tests;
