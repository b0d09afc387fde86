//! Policy errors. Each one reads `WHERE: what is wrong; what is expected`, where WHERE is
//! `file:line:column` whenever the position is known.

use std::{io, path::PathBuf};

use agent_common::egress::MAX_PORT_RULES;
use ipnet::IpNet;
use thiserror::Error;

/// Why a policy could not be loaded, validated or compiled.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The policy file could not be read (missing, unreadable, or not UTF-8).
    #[error("{}: cannot read policy: {source}", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The text is not valid YAML, or breaks schema v1, at a known position.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// Where the policy came from (a path, or a name such as `<stdin>`).
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column of the offending value.
        column: usize,
        /// The dotted path to the value (when known), what is wrong, and what is expected.
        message: String,
    },

    /// As [`PolicyError::Invalid`], for an error the YAML parser could not place.
    #[error("{file}: {message}")]
    InvalidUnlocated {
        /// Where the policy came from.
        file: String,
        /// What is wrong and what is expected.
        message: String,
    },

    /// A name that cannot be an agent's (it becomes a cgroup directory name).
    #[error(
        "invalid agent name {name:?}: {reason}; expected 1-64 characters of A-Z, a-z, 0-9, \
         '.', '_' or '-', not starting with '.' or '-'"
    )]
    AgentName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// More port rules apply to one prefix than one kernel trie entry holds.
    #[error(
        "{path}.allow[{rule}] ({cidr}): more than {MAX_PORT_RULES} port rules apply to \
         destinations in {cidr} (from {}), which is more than one kernel entry holds; \
         merge port ranges, or drop rules that a broader rule listed earlier already allows",
        rule_list(.rules)
    )]
    TooManyPortRules {
        /// Dotted path of the egress policy, e.g. `agents.demo.egress`.
        path: String,
        /// Index of the first rule whose CIDR is exactly `cidr`.
        rule: usize,
        /// The prefix whose entry overflowed.
        cidr: IpNet,
        /// The rules that contribute port rules to the entry, in allow-list order, up to and
        /// including the first one that does not fit.
        rules: Vec<usize>,
    },

    /// A `host:` rule lists more port ranges than one kernel grant holds.
    #[error(
        "{path}.allow[{rule}] ({host}): more than {MAX_PORT_RULES} port ranges, which is more \
         than one kernel grant holds; merge port ranges"
    )]
    TooManyHostPorts {
        /// Dotted path of the egress policy.
        path: String,
        /// Index of the rule.
        rule: usize,
        /// The rule's name pattern.
        host: String,
    },

    /// The allow list is longer than rule ids can number.
    #[error("{path}.allow: {count} rules is too many; at most {max} are supported")]
    TooManyRules {
        /// Dotted path of the egress policy.
        path: String,
        /// How many rules there are.
        count: usize,
        /// The most there may be.
        max: usize,
    },
}

/// `allow[0], allow[3]` for a list of rule indices.
fn rule_list(rules: &[usize]) -> String {
    rules
        .iter()
        .map(|r| format!("allow[{r}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_the_path() {
        let e = PolicyError::Io {
            path: PathBuf::from("/etc/agentcage/policy.yaml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string()
                .starts_with("/etc/agentcage/policy.yaml: cannot read policy: "),
            "{e}"
        );
    }

    #[test]
    fn located_error_format() {
        let e = PolicyError::Invalid {
            file: "policies/x.yaml".into(),
            line: 7,
            column: 15,
            message: "agents.demo.egress.allow[0].cidr: bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "policies/x.yaml:7:15: agents.demo.egress.allow[0].cidr: bad"
        );
    }

    #[test]
    fn too_many_port_rules_lists_contributors() {
        let e = PolicyError::TooManyPortRules {
            path: "agents.demo.egress".into(),
            rule: 3,
            cidr: "10.0.0.0/8".parse().unwrap(),
            rules: vec![0, 3],
        };
        let s = e.to_string();
        assert!(
            s.starts_with("agents.demo.egress.allow[3] (10.0.0.0/8): more than 16 port rules"),
            "{s}"
        );
        assert!(s.contains("(from allow[0], allow[3])"), "{s}");
        assert!(s.contains("more than one kernel entry holds"), "{s}");
    }
}
