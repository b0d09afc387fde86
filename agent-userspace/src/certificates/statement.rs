//! The in-toto Statement v1 a behavior certificate signs, and its predicate: what was tested
//! (the agent's identity, models, tools, budgets, the policy by its canonical hash) and with
//! what result (the test run's file by digest and summary, sample traces by digest).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::policy::{AgentPolicy, Budgets, CredentialRule, IdentityPolicy};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The predicate type of a behavior certificate.
pub const PREDICATE_TYPE: &str = "https://agentcage.dev/behavior-certificate/v1";

/// Digests by algorithm (`{"sha256": HEX}`).
pub type DigestSet = BTreeMap<String, String>;

/// The SHA-256 digest set of `bytes`.
pub fn sha256(bytes: &[u8]) -> DigestSet {
    BTreeMap::from([("sha256".to_owned(), hex::encode(Sha256::digest(bytes)))])
}

/// What a statement is about: the agent's configuration, by the policy's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// `agent:NAME`.
    pub name: String,
    /// `{"sha256": POLICY_HASH}`.
    pub digest: DigestSet,
}

/// An in-toto Statement v1 with a behavior-certificate predicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The agent configuration.
    pub subject: Vec<Subject>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// What was tested and how it went.
    pub predicate: Predicate,
}

/// The policy a certificate is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Its canonical hash (`agentcage policy check` prints it; events carry it).
    pub sha256: String,
    /// The file it was read from when the certificate was made.
    pub source: String,
}

/// A file by name and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Its name (the path given, as given).
    pub name: String,
    /// Its digest.
    pub digest: DigestSet,
}

/// The counts of a test run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSummary {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests skipped or ignored.
    pub skipped: u64,
}

/// The test run's results: its file by digest, and what it says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResults {
    /// The file.
    #[serde(flatten)]
    pub file: FileRef,
    /// Its counts.
    pub summary: TestSummary,
}

/// A behavior certificate's predicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Predicate {
    /// The agent's name.
    pub agent: String,
    /// What the policy says the agent is.
    pub identity: IdentityPolicy,
    /// The models it may call (the identity's `models`).
    pub models: Vec<String>,
    /// The tools it may use: the identity's `tools` and every tool its credentials name.
    pub tools: Vec<String>,
    /// The policy, by canonical hash.
    pub policy: PolicyRef,
    /// The agent's budgets.
    pub budgets: Budgets,
    /// The credentials it may ask for.
    pub credentials: Vec<CredentialRule>,
    /// The test run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestResults>,
    /// Sample traces.
    #[serde(default)]
    pub traces: Vec<FileRef>,
    /// When it was made (RFC 3339).
    pub issued: String,
    /// When it stops being valid (RFC 3339).
    pub expires: String,
}

impl Predicate {
    /// The predicate of `agent` with policy `p`.
    pub fn of_agent(agent: &str, p: &AgentPolicy, policy: PolicyRef) -> Self {
        let tools: BTreeSet<String> = p
            .identity
            .tools
            .iter()
            .cloned()
            .chain(p.credentials.iter().map(|c| c.tool.clone()))
            .collect();
        Self {
            agent: agent.to_owned(),
            identity: p.identity.clone(),
            models: p.identity.models.clone(),
            tools: tools.into_iter().collect(),
            policy,
            budgets: p.budgets.clone(),
            credentials: p.credentials.clone(),
            tests: None,
            traces: Vec::new(),
            issued: String::new(),
            expires: String::new(),
        }
    }
}

/// Reads the counts from a test run's output: libtest's `test result:` lines (cargo test),
/// JUnit XML `<testsuite>` attributes, or JSON `{"passed":N,"failed":N,"skipped":N}`.
pub fn summarize(text: &str) -> Option<TestSummary> {
    if let Ok(s) = serde_json::from_str::<TestSummary>(text) {
        return Some(s);
    }
    let mut total: Option<TestSummary> = None;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let t = total.get_or_insert_with(TestSummary::default);
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => t.passed += n,
                "failed" => t.failed += n,
                "ignored" => t.skipped += n,
                _ => {}
            }
        }
    }
    total.or_else(|| junit(text))
}

/// Sums the `<testsuite>` elements of JUnit XML (not `<testsuites>`, which repeats them).
fn junit(text: &str) -> Option<TestSummary> {
    let mut total: Option<TestSummary> = None;
    for element in text.split("<testsuite").skip(1) {
        if element.starts_with('s') {
            continue;
        }
        let head = element.split('>').next().unwrap_or_default();
        let attr = |name: &str| -> u64 {
            head.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches(|c| c == '"' || c == '\'' || c == '/'))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (tests, failures, errors, skipped) = (
            attr("tests"),
            attr("failures"),
            attr("errors"),
            attr("skipped"),
        );
        let t = total.get_or_insert_with(TestSummary::default);
        t.failed += failures + errors;
        t.skipped += skipped;
        t.passed += tests.saturating_sub(failures + errors + skipped);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_libtest_junit_and_json() {
        let cargo = "running 3 tests\n...\ntest result: ok. 3 passed; 0 failed; 1 ignored; \
                     0 measured; 2 filtered out; finished in 0.01s\n\ntest result: FAILED. 1 \
                     passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            summarize(cargo),
            Some(TestSummary {
                passed: 4,
                failed: 2,
                skipped: 1
            })
        );
        let xml = r#"<?xml version="1.0"?><testsuites tests="9"><testsuite name="a" tests="5" failures="1" errors="0" skipped="1"><testcase/></testsuite><testsuite name="b" tests="4" failures="0"/></testsuites>"#;
        assert_eq!(
            summarize(xml),
            Some(TestSummary {
                passed: 7,
                failed: 1,
                skipped: 1
            })
        );
        assert_eq!(
            summarize(r#"{"passed":2,"failed":0,"skipped":0}"#)
                .unwrap()
                .passed,
            2
        );
        assert_eq!(summarize("hello"), None);
    }
}
