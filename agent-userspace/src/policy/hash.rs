//! The policy's identity: SHA-256 of a canonical text form of the *parsed* policy.
//!
//! Hashing the parsed form rather than the file makes the hash independent of key order,
//! whitespace, comments and YAML quoting. The canonical form is written out by hand (not by
//! a serializer) so that it can only change when this file does.

use std::{collections::BTreeMap, fmt::Write as _};

use sha2::{Digest, Sha256};

use super::{
    account::RunAs,
    egress::{protocol_names, AllowRule},
    exec::Enforcement,
    identity::{CertificateRequirement, Users},
    runtime::{ApprovalPolicy, Collectives, ContainmentPolicy},
    schema::{AgentPolicy, Record},
};

/// First line of the canonical form; bump it if the form ever changes meaning.
const HEADER: &str = "agentcage-policy canonical-form 1";

/// The canonical text form. Agents come in name order (the map is sorted), rules in list order.
pub(crate) fn canonical_form(
    version: u32,
    agents: &BTreeMap<String, AgentPolicy>,
    default_agent: Option<&AgentPolicy>,
    (groups, workflows): (&Collectives, &Collectives),
    users: &Users,
) -> String {
    let mut out = String::new();
    out.push_str(HEADER);
    out.push('\n');
    // `write!` to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "version {version}");
    for (name, agent) in agents {
        // Agent names are restricted to [A-Za-z0-9._-], so they need no quoting.
        let _ = writeln!(out, "agent {name}");
        write_agent(&mut out, agent);
    }
    match default_agent {
        Some(agent) => {
            out.push_str("default_agent\n");
            write_agent(&mut out, agent);
        }
        None => out.push_str("default_agent refuse\n"),
    }
    // Only written when present, so policies without them keep the hash they had.
    for (what, map) in [("group", groups), ("workflow", workflows)] {
        for (name, c) in map {
            let _ = writeln!(out, "{what} {name} budgets={}", json(&c.budgets));
        }
    }
    for (name, u) in users {
        let _ = writeln!(out, "user {name} envelope={}", json(&u.envelope));
    }
    out
}

/// Compact JSON of a parsed value: fields in declaration order, maps sorted, so the text
/// depends only on the values.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn write_agent(out: &mut String, agent: &AgentPolicy) {
    // Sections at their defaults write nothing, so policies without them keep their hash.
    if agent.enforcement != Enforcement::Any {
        let _ = writeln!(out, "  enforcement {}", agent.enforcement);
    }
    if !agent.exec.is_empty() {
        let x = &agent.exec;
        let _ = writeln!(out, "  exec default={:?}", x.default);
        for m in &x.allow {
            let _ = writeln!(out, "    allow {m}");
        }
        for m in &x.deny {
            let _ = writeln!(out, "    deny {m}");
        }
    }
    if !agent.files.is_empty() {
        out.push_str("  files\n");
        for r in &agent.files.protect {
            let _ = writeln!(out, "    protect {} {}", r.access, r.path);
        }
        for r in &agent.files.watch {
            let _ = writeln!(out, "    watch {} {}", r.access, r.path);
        }
    }
    let e = &agent.egress;
    let _ = writeln!(
        out,
        "  egress raw_sockets={} allow_events={}",
        e.raw_sockets, e.allow_events
    );
    for rule in &e.allow {
        write_rule(out, "allow", rule);
    }
    // Only written when present, so policies without them keep the hash they had.
    for rule in &agent.ingress.allow {
        write_rule(out, "ingress", &rule.0);
    }
    if let Some(unix) = &agent.unix {
        out.push_str("  unix\n");
        for entry in &unix.allow {
            out.push_str("    allow ");
            quote(out, entry.as_str());
            out.push('\n');
        }
    }
    // The run-time sections, each only when it differs from its default (so policies
    // without them keep the hash they had).
    if !agent.groups.is_empty() {
        let _ = writeln!(out, "  groups {}", json(&agent.groups));
    }
    if !agent.workflows.is_empty() {
        let _ = writeln!(out, "  workflows {}", json(&agent.workflows));
    }
    if agent.approvals != ApprovalPolicy::default() {
        let _ = writeln!(out, "  approvals {}", json(&agent.approvals));
    }
    if !agent.budgets.is_empty() {
        let _ = writeln!(out, "  budgets {}", json(&agent.budgets));
    }
    for a in &agent.assertions {
        let _ = writeln!(out, "  assert {}", json(&a.to_string()));
    }
    if agent.containment != ContainmentPolicy::default() {
        let _ = writeln!(out, "  containment {}", json(&agent.containment));
    }
    if agent.record != Record::Optional {
        let _ = writeln!(out, "  record {}", agent.record);
    }
    if !agent.identity.is_empty() {
        let _ = writeln!(out, "  identity {}", json(&agent.identity));
    }
    if !agent.credentials.is_empty() {
        let _ = writeln!(out, "  credentials {}", json(&agent.credentials));
    }
    if agent.certificate != CertificateRequirement::Optional {
        let _ = writeln!(out, "  certificate {}", agent.certificate);
    }
    if agent.run_as != RunAs::default() {
        let _ = writeln!(out, "  run_as {}", agent.run_as);
    }
    if !agent.limits.is_empty() {
        let _ = writeln!(out, "  limits {}", json(&agent.limits));
    }
}

/// One `cidr`/`ports`/`protocols` rule, as the line `  WHAT cidr=... protocols=... ports=...`.
fn write_rule(out: &mut String, what: &str, rule: &AllowRule) {
    let ports = if rule.ports.is_empty() {
        "*".to_owned()
    } else {
        rule.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    // CIDR rules keep the form they always had, so their policies keep their hash.
    let dest = match &rule.dest {
        crate::policy::Destination::Cidr(n) => format!("cidr={n}"),
        crate::policy::Destination::Host(h) => format!("host={h}"),
    };
    let _ = write!(
        out,
        "  {what} {dest} protocols={} ports={ports}",
        protocol_names(rule.protocols)
    );
    if let Some(c) = &rule.comment {
        out.push_str(" comment=");
        quote(out, c);
    }
    if let Some(n) = &rule.name {
        let _ = write!(out, " name={n}");
    }
    if rule.requires_approval {
        out.push_str(" requires_approval");
    }
    if rule.read_only {
        out.push_str(" read_only");
    }
    out.push('\n');
}

/// `"..."` with every character outside printable ASCII (and `"`, `\`) as `\u{hex}`, so that
/// the form stays one line per rule and never depends on a library's escaping rules.
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    out.push('"');
}

/// Lowercase hex SHA-256 of `canonical`.
pub(crate) fn sha256_hex(canonical: &str) -> String {
    let digest = Sha256::digest(canonical.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::*;

    fn hash_of(yaml: &str) -> String {
        Policy::from_yaml(yaml, "test.yaml")
            .unwrap()
            .hash()
            .to_owned()
    }

    const A: &str = "\
version: 1
agents:
  demo:
    egress:
      allow:
        - cidr: 127.0.0.1/32
          ports: [8000-8099]
          protocols: [tcp]
      allow_events: all
  other:
    egress:
      raw_sockets: true
default_agent:
  egress:
    allow: []
";

    // Same policy: keys reordered, different whitespace, comments, quoting, flow style.
    const B: &str = "\
# a comment
default_agent: {egress: {allow: []}}
agents:
  other: {egress: {raw_sockets: true}}   # trailing comment
  demo:
    egress:
      allow_events: \"all\"
      allow:
      - protocols: [ tcp ]
        ports:
        - \"8000-8099\"
        cidr: '127.0.0.1/32'
version: 1
";

    #[test]
    fn hash_ignores_order_whitespace_comments() {
        let a = hash_of(A);
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(a, hash_of(B));
    }

    #[test]
    fn hash_changes_with_content() {
        let a = hash_of(A);
        assert_ne!(a, hash_of(&A.replace("8099", "8098")));
        assert_ne!(a, hash_of(&A.replace("[tcp]", "[udp]")));
        assert_ne!(
            a,
            hash_of(&A.replace("raw_sockets: true", "raw_sockets: false"))
        );
        assert_ne!(
            a,
            hash_of(&A.replace("allow_events: all", "allow_events: none"))
        );
        assert_ne!(a, hash_of(&A.replace("other:", "other2:")));
        let no_default = A.split("default_agent").next().unwrap();
        assert_ne!(a, hash_of(no_default));
    }

    #[test]
    fn rule_order_matters() {
        let one = "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: 10.0.0.0/8\n        - cidr: 10.0.0.0/16\n";
        let two = "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: 10.0.0.0/16\n        - cidr: 10.0.0.0/8\n";
        assert_ne!(hash_of(one), hash_of(two));
    }

    #[test]
    fn canonical_form_is_readable_and_escaped() {
        let yaml = "version: 1\nagents:\n  demo:\n    egress:\n      allow:\n        - cidr: ::ffff:127.0.0.1\n          comment: \"say \\\"hi\\\"\\n\u{e9}\"\n";
        let p = Policy::from_yaml(yaml, "t").unwrap();
        let form = p.canonical();
        assert_eq!(
            form,
            "agentcage-policy canonical-form 1\nversion 1\nagent demo\n  egress \
             raw_sockets=false allow_events=all\n  allow cidr=127.0.0.1/32 protocols=tcp+udp \
             ports=* comment=\"say \\u{22}hi\\u{22}\\u{a}\\u{e9}\"\ndefault_agent refuse\n"
        );
        assert_eq!(p.hash(), sha256_hex(&form));
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
