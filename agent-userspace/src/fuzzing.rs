//! What the outside world can hand the daemon, as functions of arbitrary bytes: a policy
//! file, control-socket lines, application-socket lines and ring-buffer records. Each must
//! neither panic nor allocate without bound, whatever the bytes; what it returns is not the
//! point. The cargo-fuzz targets in `fuzz/` (run by `cargo xtask fuzz`) and the property
//! tests below (a few thousand inputs per target, in every test run) call the same functions.

use std::{collections::HashMap, sync::Arc};

use crate::{
    control::{app::AppMessage, credential::CredentialMessage, Request},
    events::{self, InodePaths, Lookups},
    identity::{AgentIdentity, SpiffeId, TrustDomain},
    policy::{kernel::compile_agent, Policy},
    runtime::Rung,
    spool::{Entry, Record},
    telemetry::records::describe,
};

/// A policy file: parsed, hashed, and each agent compiled for the kernel.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_yaml(text, "fuzz.yaml") else {
        return;
    };
    let _ = policy.hash();
    // Every named agent, and one the default applies to.
    for name in policy
        .agents
        .keys()
        .map(String::as_str)
        .chain(["not-named"])
    {
        let _ = compile_agent(&policy, name, Rung::Observe, None);
    }
}

/// Control-socket lines, one request each.
pub fn control(data: &[u8]) {
    for line in lines(data) {
        let _ = serde_json::from_str::<Request>(line);
    }
}

/// Application-socket lines: credential requests, or events checked as the daemon checks
/// them before it records anything.
pub fn app(data: &[u8]) {
    for line in lines(data) {
        if CredentialMessage::parse(line).is_some() {
            continue;
        }
        if let Ok(m) = serde_json::from_str::<AppMessage>(line) {
            let _ = m.event.validate();
        }
    }
}

/// A ring-buffer record: decoded, turned into an event, written as the spool writes it and
/// described as the exporters describe it.
pub fn event(data: &[u8]) {
    let Ok(raw) = events::decode(data) else {
        return;
    };
    let mut lookups = Fixed::new();
    let event = events::enrich(&raw, &mut lookups);
    let _ = serde_json::to_string(&event);
    let record = Record {
        seq: 1,
        entry: Entry::Event(Arc::new(event)),
    };
    let _ = describe(&record, "fuzz-node");
}

fn lines(data: &[u8]) -> impl Iterator<Item = &str> {
    data.split(|b| *b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
}

/// Lookups as a daemon with one agent (`a`, number 1) under a small policy would answer.
struct Fixed {
    policy: Arc<Policy>,
    domain: TrustDomain,
    seqs: HashMap<u32, u64>,
}

impl Fixed {
    fn new() -> Self {
        let policy = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [80]\n",
            "fuzz.yaml",
        )
        .unwrap_or_else(|e| panic!("the fuzzing policy parses: {e}"));
        Self {
            policy: Arc::new(policy),
            domain: TrustDomain::new("fuzz.test").unwrap_or_else(|e| panic!("{e}")),
            seqs: HashMap::new(),
        }
    }
}

impl Lookups for Fixed {
    fn agent_name(&self, agent_id: u32) -> Option<&str> {
        (agent_id == 1).then_some("a")
    }
    fn identity(&self, agent: &AgentIdentity) -> (SpiffeId, Option<String>) {
        (self.domain.agent(agent), None)
    }
    fn slot_policy(&self, _: u32) -> Arc<Policy> {
        Arc::clone(&self.policy)
    }
    fn slot_paths(&self, _: u32) -> Option<Arc<InodePaths>> {
        None
    }
    fn next_seq(&mut self, agent_id: u32) -> u64 {
        let s = self.seqs.entry(agent_id).or_default();
        *s += 1;
        *s
    }
    fn boot_to_wall_ns(&self) -> i128 {
        1_000_000_000
    }
    fn host_name(&self, name_id: u32) -> Option<String> {
        (name_id == 1).then(|| "allowed.test".to_owned())
    }
}

#[cfg(test)]
mod tests {
    //! The seeds are the committed corpora of the cargo-fuzz targets; each case is a seed
    //! with a few random byte edits, or random bytes.

    use proptest::prelude::*;

    use super::*;

    /// Cases per target: enough to shake each parser in every test run, few enough for CI.
    const CASES: u32 = 2_000;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no seeds in {}", dir.display());
        out
    }

    /// A seed with up to 16 edits (replace, insert or delete one byte), or random bytes.
    fn inputs(target: &str) -> impl Strategy<Value = Vec<u8>> {
        let seeds = seeds(target);
        let n = seeds.len();
        let edited = (
            0..n,
            prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..16),
        )
            .prop_map(move |(i, edits)| {
                let mut v = seeds[i].clone();
                for (at, byte, op) in edits {
                    let at = if v.is_empty() { 0 } else { at % v.len() };
                    match op {
                        0 if !v.is_empty() => v[at] = byte,
                        1 => v.insert(at, byte),
                        _ if !v.is_empty() => {
                            v.remove(at);
                        }
                        _ => v.push(byte),
                    }
                }
                v
            });
        prop_oneof![4 => edited, 1 => prop::collection::vec(any::<u8>(), 0..512)]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: CASES,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_policy_file_is_parsed_or_refused_without_a_panic(data in inputs("policy")) {
            policy(&data);
        }

        #[test]
        fn any_control_line_is_read_or_refused_without_a_panic(data in inputs("control")) {
            control(&data);
        }

        #[test]
        fn any_application_line_is_read_or_refused_without_a_panic(data in inputs("app")) {
            app(&data);
        }

        #[test]
        fn any_ring_buffer_record_is_decoded_or_refused_without_a_panic(data in inputs("event")) {
            event(&data);
        }
    }

    /// The seeds themselves are what they say: each target reaches its deepest step on some.
    #[test]
    fn the_seeds_reach_past_the_parsers() {
        assert!(seeds("policy").iter().any(|s| Policy::from_yaml(
            std::str::from_utf8(s).unwrap_or(""),
            "s"
        )
        .is_ok()));
        assert!(seeds("control")
            .iter()
            .any(|s| lines(s).any(|l| serde_json::from_str::<Request>(l).is_ok())));
        assert!(seeds("app")
            .iter()
            .any(|s| lines(s).any(|l| serde_json::from_str::<AppMessage>(l).is_ok())));
        assert!(seeds("event").iter().any(|s| events::decode(s).is_ok()));
    }
}
