//! Policy files: parsing and validating YAML (schema v1), hashing, and compiling egress rules
//! into the kernel's trie entries. See `docs/POLICY.md` for the format.
//!
//! Every error reads `FILE:LINE:COLUMN: what is wrong; what is expected` when the position is
//! known. A policy that loads is also known to compile: [`Policy::from_yaml`] compiles every
//! agent once, so the daemon's later [`compile_egress`] calls cannot fail on it.

mod compile;
mod error;
mod exec;
mod hash;
mod inodes;
mod locate;
mod runtime;
mod schema;

use std::{collections::BTreeMap, fs, path::Path};

pub use compile::compile_read_only;
pub use compile::{compile_egress, CompiledEgress};
pub use error::PolicyError;
pub use exec::{
    Access, Enforcement, ExecDefault, ExecMatch, ExecPolicy, FilePattern, FileRuleSpec, FilesPolicy,
};
pub use inodes::{
    compile_exec, compile_files, kernel_dev, kernel_dev_of, CompiledExec, CompiledFiles,
};
pub use runtime::{
    ApprovalPolicy, Budgets, Collective, Collectives, ContainmentPolicy, DenyRate, Limit, LoopRule,
    Rung, Span, TimeLimit,
};
pub use schema::{
    json_schema, AgentPolicy, AllowEvents, AllowRule, EgressPolicy, PortRange, Record,
    SCHEMA_VERSION,
};

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
        } = raw;
        let (version, agents) = (version.0, agents.0);
        check_memberships(source, &agents, default_agent.as_ref(), &groups, &workflows)?;
        check_run_time(source, &agents, default_agent.as_ref())?;

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
        );
        Ok(Self {
            version,
            agents,
            default_agent,
            groups,
            workflows,
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
    use crate::runtime::assertions::PatternKind;
    let all = agents
        .iter()
        .map(|(n, a)| (format!("agents.{n}"), a))
        .chain(default_agent.map(|a| ("default_agent".to_owned(), a)));
    for (path, agent) in all {
        runtime::check_values(&path, &agent.budgets, &agent.containment, &agent.approvals)
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
mod tests {
    use agent_common::egress::{PROTO_TCP, PROTO_UDP};

    use super::*;

    fn err(yaml: &str) -> String {
        match Policy::from_yaml(yaml, "policies/x.yaml") {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn run_time_sections_parse_and_are_checked() {
        let p = Policy::from_yaml(
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/examples/payments.yaml"
            )),
            "payments.yaml",
        )
        .unwrap();
        let payer = &p.agents["payer"];
        assert!(payer.egress.allow[1].requires_approval);
        assert!(payer.egress.allow[0].read_only);
        assert_eq!(payer.egress.allow[1].name.as_deref(), Some("payments"));
        assert_eq!(payer.approvals.default_for.0.as_secs(), 600);
        assert_eq!(payer.budgets.tokens.unwrap().hard, Some(500_000.0));
        assert_eq!(payer.containment.on_assertion, Rung::Killed);
        assert_eq!(payer.assertions.len(), 2);
        assert!(p.canonical().contains("requires_approval"));

        let e = err("version: 1\nagents:\n  a:\n    groups: [finanse]\ngroups:\n  finance: {}\n");
        assert!(
            e.contains("agents.a.groups: \"finanse\" is not defined"),
            "{e}"
        );
        let e = err("version: 1\nagents:\n  a:\n    egress:\n      allow_events: none\n    assertions: [plan precedes egress(x)]\n");
        assert!(e.contains("set allow_events: all"), "{e}");
        let e = err("version: 1\nagents:\n  a:\n    containment:\n      on_budget: frozen\n");
        assert!(e.starts_with("policies/x.yaml:5:18:"), "{e}");
        let e = err("version: 1\nagents:\n  a:\n    budgets:\n      tokens: {soft: 5, hard: 1}\n");
        assert!(
            e.contains("agents.a.budgets.tokens: the soft limit 5 is above"),
            "{e}"
        );
        let e = err("version: 1\nagents:\n  a:\n    budgets:\n      wall_clock: {hard: soon}\n");
        assert!(e.contains("invalid duration \"soon\""), "{e}");
        // Key order and layout do not change the hash of the run-time sections either.
        let one = "version: 1\nagents:\n  a:\n    budgets: {tokens: {soft: 1, hard: 2}}\n";
        let two = "version: 1\nagents:\n  a:\n    budgets:\n      tokens:\n        hard: 2\n        soft: 1\n";
        let h = |y| Policy::from_yaml(y, "t").unwrap().hash().to_owned();
        assert_eq!(h(one), h(two));
        assert_ne!(h(one), h(&one.replace("hard: 2", "hard: 3")));
    }

    #[test]
    fn record_always_parses_hashes_and_misspellings_are_located() {
        let plain = "version: 1\nagents:\n  a: {}\n";
        let always = "version: 1\nagents:\n  a:\n    record: always\n";
        let p = Policy::from_yaml(always, "t").unwrap();
        assert_eq!(p.agents["a"].record, Record::Always);
        assert!(p.canonical().contains("  record always\n"));
        let h = |y| Policy::from_yaml(y, "t").unwrap().hash().to_owned();
        assert_ne!(h(plain), h(always));
        // The default writes nothing: policies without the field keep their hash.
        assert_eq!(h(plain), h(&plain.replace("{}", "{record: optional}")));
        let e = err("version: 1\nagents:\n  a:\n    record: sometimes\n");
        assert!(e.starts_with("policies/x.yaml:4:13:"), "{e}");
        assert!(e.contains("optional") && e.contains("always"), "{e}");
    }

    #[test]
    fn the_published_schema_is_the_generated_one() {
        let committed = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/schema.json"
        ));
        assert!(
            committed == json_schema(),
            "policies/schema.json is stale: regenerate it with \
             `agentcage policy schema > policies/schema.json`"
        );
    }

    #[test]
    fn policies_larger_than_the_kernel_maps_are_refused_at_load() {
        let mut yaml = String::from("version: 1\nagents:\n  big:\n    egress:\n      allow:\n");
        for i in 0..40_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            yaml.push_str(&format!("        - cidr: {a}/32\n"));
        }
        let e = err(&yaml);
        assert!(
            e.starts_with("policies/x.yaml: the policy needs 40000 IPv4 allow-list entries"),
            "{e}"
        );
    }

    const DEMO: &str = "\
version: 1
agents:
  demo:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [8000-8099, 443]
          protocols: [tcp]
          comment: local dev server
      raw_sockets: false
      allow_events: sample:10
default_agent:
  egress:
    allow: []
";

    #[test]
    fn parses_the_documented_example() {
        let p = Policy::from_yaml(DEMO, "policies/x.yaml").unwrap();
        assert_eq!(p.version, 1);
        assert_eq!(p.source(), "policies/x.yaml");
        let demo = &p.agents["demo"].egress;
        assert_eq!(
            demo.allow,
            vec![AllowRule {
                cidr: "127.0.0.1/32".parse().unwrap(),
                ports: vec![
                    PortRange { lo: 8000, hi: 8099 },
                    PortRange { lo: 443, hi: 443 }
                ],
                protocols: PROTO_TCP,
                comment: Some("local dev server".into()),
                name: None,
                requires_approval: false,
                read_only: false,
            }]
        );
        assert!(!demo.raw_sockets);
        assert_eq!(demo.allow_events, AllowEvents::Sample(10));
        let d = p.default_agent.as_ref().unwrap();
        assert!(d.egress.allow.is_empty());
        assert_eq!(d.egress.allow_events, AllowEvents::All);
        assert_eq!(p.agent("demo"), Some(&p.agents["demo"]));
        assert_eq!(p.agent("someone-else"), Some(d));
    }

    #[test]
    fn defaults() {
        let p = Policy::from_yaml(
            "version: 1\nagents:\n  a: {}\n  b:\n    egress:\n      allow:\n        - cidr: ::1\n",
            "t",
        )
        .unwrap();
        assert_eq!(p.agents["a"], AgentPolicy::default());
        let b = &p.agents["b"].egress;
        assert_eq!(b.allow[0].protocols, PROTO_TCP | PROTO_UDP);
        assert!(b.allow[0].ports.is_empty());
        assert_eq!(b.allow_events, AllowEvents::All);
        assert!(!b.raw_sockets);
        // No default_agent: unknown agents are refused.
        assert_eq!(p.agent("c"), None);
        let only_version = Policy::from_yaml("version: 1\n", "t").unwrap();
        assert!(only_version.agents.is_empty());
    }

    #[test]
    fn ports_as_ints_or_strings_and_empty_lists() {
        let p = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: 10.0.0.0/8\n          ports: [\"443\", 0x50, '1000-2000', 3000 - 3001]\n        - cidr: 10.0.0.0/8\n          ports: []\n        - cidr: 10.0.0.0/8\n          ports:\n",
            "t",
        )
        .unwrap();
        let a = &p.agents["a"].egress.allow;
        assert_eq!(
            a[0].ports,
            vec![
                PortRange { lo: 443, hi: 443 },
                PortRange { lo: 80, hi: 80 },
                PortRange { lo: 1000, hi: 2000 },
                PortRange { lo: 3000, hi: 3001 },
            ]
        );
        assert!(a[1].ports.is_empty());
        assert!(a[2].ports.is_empty());
    }

    #[test]
    fn mapped_ipv6_is_normalised() {
        let p = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: '::ffff:10.0.0.0/104'\n          protocols: [udp, udp]\n",
            "t",
        )
        .unwrap();
        let r = &p.agents["a"].egress.allow[0];
        assert_eq!(r.cidr.to_string(), "10.0.0.0/8");
        assert_eq!(r.protocols, PROTO_UDP);
    }

    #[test]
    fn bad_cidr_points_at_the_value() {
        let yaml = DEMO.replace("127.0.0.1/32", "127.0.0.1/33");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:6:17: agents.demo.egress.allow[0].cidr: invalid CIDR \
             \"127.0.0.1/33\": prefix length 33 is longer than 32; expected an address like \
             10.0.0.0/8 or 2001:db8::/32"
        );
    }

    #[test]
    fn host_bits_point_at_the_value() {
        let yaml = DEMO.replace("127.0.0.1/32", "127.0.0.1/8");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:6:17: agents.demo.egress.allow[0].cidr: invalid CIDR \
             \"127.0.0.1/8\": host bits are set (the address is not the first of its /8 \
             network); write 127.0.0.0/8 for the network, or 127.0.0.1/32 for the single \
             address"
        );
    }

    #[test]
    fn bad_port_range_points_at_the_value() {
        let yaml = DEMO.replace("8000-8099, 443", "443, 8099-8000");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:7:24: agents.demo.egress.allow[0].ports[1]: invalid port range \
             \"8099-8000\": the range runs backwards (8099 > 8000); write it low-high, e.g. \
             8000-8099"
        );
        let yaml = DEMO.replace("8000-8099, 443", "8000-8099, 65536");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:7:30: agents.demo.egress.allow[0].ports[1]: port 65536 is larger \
             than 65535; expected a port like 443 or a range like 8000-8099 (0-65535)"
        );
        let yaml = DEMO.replace("8000-8099, 443", "-1");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:7:19: agents.demo.egress.allow[0].ports[0]: port -1 is negative; \
             expected a port like 443 or a range like 8000-8099 (0-65535)"
        );
    }

    #[test]
    fn unknown_field_points_at_the_key() {
        let yaml = DEMO.replace("      raw_sockets: false", "      raw_socket: false");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:10:7: agents.demo.egress: unknown field `raw_socket`, expected one \
             of `allow`, `raw_sockets`, `allow_events`"
        );
        let yaml = DEMO.replace("          comment:", "          coment:");
        assert!(
            err(&yaml).starts_with(
                "policies/x.yaml:9:11: agents.demo.egress.allow[0]: unknown field `coment`"
            ),
            "{}",
            err(&yaml)
        );
        let yaml = format!("{DEMO}extra: 1\n");
        assert!(
            err(&yaml).starts_with("policies/x.yaml:15:1: unknown field `extra`"),
            "{}",
            err(&yaml)
        );
    }

    #[test]
    fn wrong_version_points_at_the_value() {
        let yaml = DEMO.replace("version: 1", "version: 2");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:1:10: version: unsupported policy version 2; this agentcage \
             understands version: 1"
        );
        let yaml = DEMO.replace("version: 1", "version: one");
        assert!(
            err(&yaml).starts_with("policies/x.yaml:1:10: version: invalid type"),
            "{}",
            err(&yaml)
        );
        let yaml = DEMO.replace("version: 1\n", "");
        assert!(
            err(&yaml).starts_with("policies/x.yaml:1:1: missing field `version`"),
            "{}",
            err(&yaml)
        );
    }

    #[test]
    fn yaml_syntax_error_is_located() {
        let yaml = DEMO.replace("raw_sockets: false", "raw_sockets: false: x");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:10:25: mapping values are not allowed in this context"
        );
        let yaml = DEMO.replace("ports: [8000-8099, 443]", "ports: [8000-8099, 443]]");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:7:34: did not find expected key, while parsing a block mapping at \
             line 6 column 11"
        );
        let yaml = DEMO.replace("          ports:", "\tports:");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:7:1: found a tab character that violates indentation, while \
             scanning a plain scalar at line 6 column 17"
        );
    }

    #[test]
    fn bad_agent_name_points_at_the_key() {
        let yaml = DEMO.replace("  demo:", "  ../etc:");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:3:3: agents: invalid agent name \"../etc\": character '/' is not \
             allowed; expected 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', not starting \
             with '.' or '-'"
        );
        let yaml = format!("{DEMO}agents:\n  x: {{}}\n");
        assert!(
            err(&yaml).contains("duplicate field `agents`"),
            "{}",
            err(&yaml)
        );
    }

    #[test]
    fn duplicate_agent_points_at_the_second_key() {
        let yaml = "version: 1\nagents:\n  demo: {}\n  other: {}\n  demo: {}\n";
        assert_eq!(
            err(yaml),
            "policies/x.yaml:5:3: agents: agent \"demo\" is listed twice; expected each agent \
             once"
        );
    }

    #[test]
    fn other_value_errors() {
        let yaml = DEMO.replace("protocols: [tcp]", "protocols: [tcp, icmp]");
        assert!(
            err(&yaml).starts_with(
                "policies/x.yaml:8:28: agents.demo.egress.allow[0].protocols[1]: unknown \
                 protocol \"icmp\"; expected tcp or udp"
            ),
            "{}",
            err(&yaml)
        );
        let yaml = DEMO.replace("protocols: [tcp]", "protocols: []");
        assert!(
            err(&yaml).starts_with(
                "policies/x.yaml:8:22: agents.demo.egress.allow[0].protocols: protocols is empty"
            ),
            "{}",
            err(&yaml)
        );
        let yaml = DEMO.replace("sample:10", "sample:0");
        assert!(
            err(&yaml).starts_with(
                "policies/x.yaml:11:21: agents.demo.egress.allow_events: invalid allow_events \
                 \"sample:0\""
            ),
            "{}",
            err(&yaml)
        );
        let yaml = DEMO.replace("sample:10", "sample:4294967296");
        assert!(
            err(&yaml).contains("4294967296 is larger than 4294967295"),
            "{}",
            err(&yaml)
        );
        let yaml = DEMO.replace("ports: [8000-8099, 443]", "ports: 443");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:7:18: agents.demo.egress.allow[0].ports: invalid type: integer \
             `443`, expected a list of ports, e.g. [443] or [8000-8099, 443]"
        );
        let yaml = DEMO.replace("cidr: 127.0.0.1/32", "cidr: example.com");
        assert_eq!(
            err(&yaml),
            "policies/x.yaml:6:17: agents.demo.egress.allow[0].cidr: invalid CIDR \
             \"example.com\": \"example.com\" is not an IPv4 or IPv6 address; expected an \
             address like 10.0.0.0/8 or 2001:db8::/32"
        );
        let yaml = DEMO.replace("raw_sockets: false", "raw_sockets: maybe");
        assert!(
            err(&yaml).starts_with("policies/x.yaml:10:20: agents.demo.egress.raw_sockets: "),
            "{}",
            err(&yaml)
        );
        let yaml = DEMO.replace("          ports: [8000-8099, 443]\n", "");
        let yaml = yaml.replace("- cidr: 127.0.0.1/32\n          protocols", "- protocols");
        assert!(
            err(&yaml).contains("agents.demo.egress.allow[0]: missing field `cidr`"),
            "{}",
            err(&yaml)
        );
    }

    #[test]
    fn empty_policy() {
        assert_eq!(
            err("# nothing here\n\n"),
            "policies/x.yaml: the policy is empty; expected a mapping starting with version: 1"
        );
        assert!(
            err("[]").starts_with("policies/x.yaml:1:1: invalid type"),
            "{}",
            err("[]")
        );
    }

    #[test]
    fn compile_errors_point_at_the_rule() {
        let mut yaml = String::from("version: 1\nagents:\n  demo:\n    egress:\n      allow:\n");
        yaml.push_str(
            "        - cidr: 0.0.0.0/0\n          ports: [53]\n          protocols: [udp]\n",
        );
        for i in 0..16 {
            yaml.push_str(&format!(
                "        - {{cidr: 10.0.0.0/8, ports: [{}], protocols: [tcp]}}\n",
                1000 + 2 * i
            ));
        }
        let e = err(&yaml);
        assert!(
            e.starts_with(
                "policies/x.yaml:9:11: agents.demo.egress.allow[1] (10.0.0.0/8): more than 16 port rules"
            ),
            "{e}"
        );
        let d = yaml.replace("agents:\n  demo:\n", "default_agent:\n");
        let d = d.replace("\n    ", "\n  ");
        let e = err(&d);
        assert!(
            e.starts_with(
                "policies/x.yaml:8:9: default_agent.egress.allow[1] (10.0.0.0/8): more than 16 port rules"
            ),
            "{e}"
        );
    }

    #[test]
    fn load_reads_files_and_names_them() {
        let dir =
            std::env::temp_dir().join(format!("agentcage-policy-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.yaml");
        fs::write(&file, DEMO).unwrap();
        let p = Policy::load(&file).unwrap();
        assert_eq!(p.source(), file.display().to_string());
        assert_eq!(
            p.hash(),
            Policy::from_yaml(DEMO, "elsewhere").unwrap().hash()
        );

        fs::write(&file, DEMO.replace("version: 1", "version: 3")).unwrap();
        let e = Policy::load(&file).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:1:10: version: ", file.display())),
            "{e}"
        );

        let missing = dir.join("missing.yaml");
        let e = Policy::load(&missing).unwrap_err();
        assert!(matches!(e, PolicyError::Io { .. }));
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read policy: ", missing.display())),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn agent_names() {
        for ok in ["demo", "a", "A.b_c-9", "x.", &"a".repeat(64)] {
            assert!(validate_agent_name(ok).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            ("", "it is empty"),
            (".hidden", "it starts with '.'"),
            ("..", "it starts with '.'"),
            ("-x", "it starts with '-'"),
            ("a/b", "character '/' is not allowed"),
            ("a b", "character ' ' is not allowed"),
            ("é", "character 'é' is not allowed"),
            ("a\nb", "character '\\n' is not allowed"),
            ("cgroup.procs", "the kernel's cgroup files"),
        ] {
            let e = validate_agent_name(bad).unwrap_err().to_string();
            assert!(e.contains(reason), "{bad:?}: {e}");
        }
        let e = validate_agent_name(&"a".repeat(65))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is 65 characters long, more than 64"), "{e}");
    }

    #[test]
    fn shipped_policies_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let p = Policy::load(&dir.join("default.yaml")).unwrap();
        // The README walkthrough: 127.0.0.1:8080 allowed by allow[0]; 127.0.0.2 has no entry.
        let demo = compile_egress("demo", &p.agents["demo"].egress).unwrap();
        assert!(demo.v6.is_empty());
        assert_eq!(demo.v4.len(), 1);
        let (addr, len, rules) = &demo.v4[0];
        assert_eq!((*addr, *len, rules.count), ([127, 0, 0, 1], 32, 1));
        let r = rules.rules[0];
        assert_eq!(
            (r.port_lo, r.port_hi, r.protocols, r.rule_id),
            (8000, 8099, PROTO_TCP, 0)
        );
        assert!(p.default_agent.as_ref().unwrap().egress.allow.is_empty());
        let examples = dir.join("examples");
        for entry in fs::read_dir(&examples).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Policy::load(&path).unwrap();
            }
        }
    }
}
