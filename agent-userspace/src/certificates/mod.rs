//! Behavior certificates: a signed attestation per deployable agent configuration, a DSSE
//! envelope ([`dsse`]) around an in-toto Statement v1 ([`statement`]) binding the agent's
//! identity, models, tools and budgets, the canonical hash of its policy, and the results of
//! the tests it passed.
//!
//! `agentcage cert create` makes one (unsigned), `cert sign` signs it with the node key or a
//! key of the user's, `cert verify --against-policy` gates a deploy on it, and with
//! `certificate: required` the daemon runs the agent, and issues it credentials, only while a
//! valid certificate for the policy in force is installed.

pub mod dsse;
pub mod statement;

use std::{path::Path, time::Duration};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;

pub use dsse::{Envelope, EnvelopeSignature, SignatureProblem};
pub use statement::{
    FileRef, Predicate, Statement, Subject, TestResults, TestSummary, PAYLOAD_TYPE, PREDICATE_TYPE,
    STATEMENT_TYPE,
};

use crate::{identity::AgentIdentity, policy::Policy};

/// Why a certificate could not be made, read, or trusted.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a certificate.
    #[error("not a behavior certificate: {0}")]
    Malformed(String),
    /// The policy has no such agent.
    #[error("the policy {policy} defines no agent {agent:?} (and no default_agent)")]
    NoAgent {
        /// The agent.
        agent: String,
        /// The policy file.
        policy: String,
    },
    /// The test run's file gives no summary.
    #[error(
        "{0}: no test summary found; expected cargo test output (`test result:` lines), JUnit \
         XML or JSON {{\"passed\":N,\"failed\":N,\"skipped\":N}}"
    )]
    NoSummary(String),
    /// The test run failed: nothing to certify.
    #[error("{file}: {failed} test(s) failed; a certificate attests a passing run")]
    TestsFailed {
        /// The file.
        file: String,
        /// How many failed.
        failed: u64,
    },
    /// No signature at all.
    #[error("unsigned: sign it with `agentcage cert sign`")]
    Unsigned,
    /// Signed, but by no key trusted here.
    #[error("signed by unknown key(s) {0}; trusted are the node's keys and those given")]
    UnknownKey(String),
    /// A trusted key's signature does not match: the certificate was changed after signing.
    #[error(
        "the signature by key {0} does not match: the certificate was changed after it was signed"
    )]
    BadSignature(String),
    /// Past its expiry.
    #[error("expired at {0}")]
    Expired(String),
    /// Not valid yet (issued in the future).
    #[error("not valid before {0}")]
    NotYet(String),
    /// Made for another policy.
    #[error(
        "made for policy sha256 {certified}, but the policy is sha256 {policy}: the policy \
         changed since the agent was certified"
    )]
    PolicyHash {
        /// The hash the certificate binds.
        certified: String,
        /// The policy's.
        policy: String,
    },
    /// Made for another agent than the one it is used for.
    #[error("made for agent {certified:?}, not {agent:?}")]
    Agent {
        /// The certificate's agent.
        certified: String,
        /// The agent it was used for.
        agent: String,
    },
}

/// A certificate: its envelope, and the payload decoded.
#[derive(Clone, Debug)]
pub struct Certificate {
    envelope: Envelope,
    body: Vec<u8>,
}

/// What a valid certificate says, once verified.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verified {
    /// The certificate's id.
    pub id: String,
    /// The agent.
    pub agent: String,
    /// The key whose signature verified.
    pub signed_by: String,
    /// The policy hash it binds.
    pub policy_sha256: String,
    /// When it expires (RFC 3339).
    pub expires: String,
}

/// The inputs of [`Certificate::create`] besides the policy.
pub struct Evidence<'a> {
    /// The test run's file, by name and content.
    pub tests: Option<(&'a str, &'a [u8])>,
    /// Sample traces, by name and content.
    pub traces: Vec<(&'a str, &'a [u8])>,
    /// When it is made, seconds since the Unix epoch.
    pub now: u64,
    /// How long it is valid.
    pub valid_for: Duration,
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn unix_of(text: &str) -> Result<u64, CertError> {
    let t = humantime::parse_rfc3339(text)
        .map_err(|e| CertError::Malformed(format!("time {text:?}: {e}")))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

impl Certificate {
    /// An unsigned certificate for `agent` under `policy`.
    pub fn create(
        policy: &Policy,
        agent: &str,
        evidence: &Evidence<'_>,
    ) -> Result<Self, CertError> {
        crate::policy::validate_agent_name(agent)
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        let p = policy.agent(agent).ok_or_else(|| CertError::NoAgent {
            agent: agent.to_owned(),
            policy: policy.source().to_owned(),
        })?;
        let policy_ref = statement::PolicyRef {
            sha256: policy.hash().to_owned(),
            source: policy.source().to_owned(),
        };
        let mut predicate = Predicate::of_agent(agent, p, policy_ref);
        if let Some((name, bytes)) = evidence.tests {
            let text = String::from_utf8_lossy(bytes);
            let summary =
                statement::summarize(&text).ok_or_else(|| CertError::NoSummary(name.to_owned()))?;
            if summary.failed > 0 {
                return Err(CertError::TestsFailed {
                    file: name.to_owned(),
                    failed: summary.failed,
                });
            }
            predicate.tests = Some(TestResults {
                file: file_ref(name, bytes),
                summary,
            });
        }
        predicate.traces = evidence
            .traces
            .iter()
            .map(|(name, bytes)| file_ref(name, bytes))
            .collect();
        predicate.issued = rfc3339(evidence.now);
        predicate.expires = rfc3339(evidence.now.saturating_add(evidence.valid_for.as_secs()));
        let statement = Statement {
            statement_type: STATEMENT_TYPE.to_owned(),
            subject: vec![Subject {
                name: AgentIdentity::for_agent(agent).to_string(),
                digest: std::collections::BTreeMap::from([(
                    "sha256".to_owned(),
                    policy.hash().to_owned(),
                )]),
            }],
            predicate_type: PREDICATE_TYPE.to_owned(),
            predicate,
        };
        let body =
            serde_json::to_vec(&statement).map_err(|e| CertError::Malformed(e.to_string()))?;
        Ok(Self {
            envelope: Envelope::new(PAYLOAD_TYPE, &body),
            body,
        })
    }

    /// Reads a certificate from its JSON (a DSSE envelope).
    pub fn parse(text: &[u8]) -> Result<Self, CertError> {
        let envelope: Envelope = serde_json::from_slice(text)
            .map_err(|e| CertError::Malformed(format!("not a DSSE envelope: {e}")))?;
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(CertError::Malformed(format!(
                "payloadType is {:?}, expected {PAYLOAD_TYPE:?}",
                envelope.payload_type
            )));
        }
        let body = dsse::decode(&envelope.payload)
            .ok_or_else(|| CertError::Malformed("the payload is not base64".into()))?;
        Ok(Self { envelope, body })
    }

    /// Reads a certificate file.
    pub fn load(path: &Path) -> Result<Self, CertError> {
        let bytes = std::fs::read(path).map_err(|source| CertError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Writes the certificate (its envelope, as JSON) to `path`.
    pub fn save(&self, path: &Path) -> Result<(), CertError> {
        let mut text = serde_json::to_vec_pretty(&self.envelope)
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        text.push(b'\n');
        std::fs::write(path, text).map_err(|source| CertError::Io {
            what: "writing",
            path: path.to_owned(),
            source,
        })
    }

    /// Its id: `sha256:` and the digest of the signed payload, the same before and after
    /// signing.
    pub fn id(&self) -> String {
        format!("sha256:{}", statement::sha256(&self.body)["sha256"])
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The payload, as signed.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The statement (read from the payload).
    pub fn statement(&self) -> Result<Statement, CertError> {
        let s: Statement = serde_json::from_slice(&self.body)
            .map_err(|e| CertError::Malformed(format!("the payload is not a statement: {e}")))?;
        if s.statement_type != STATEMENT_TYPE || s.predicate_type != PREDICATE_TYPE {
            return Err(CertError::Malformed(format!(
                "statement {:?} with predicate {:?}, expected {STATEMENT_TYPE:?} with \
                 {PREDICATE_TYPE:?}",
                s.statement_type, s.predicate_type
            )));
        }
        Ok(s)
    }

    /// Signs with `key` (id `keyid`), replacing an earlier signature by the same key.
    pub fn sign(&mut self, key: &SigningKey, keyid: &str) {
        self.envelope.sign(&self.body, key, keyid);
    }

    /// Adds a signature made elsewhere (by the daemon's node key).
    pub fn add_signature(&mut self, signature: EnvelopeSignature) {
        self.envelope.add(signature);
    }

    /// Verifies the certificate for `agent` (None: the one it names) under `policy` at
    /// `now`, trusting `keys`: signed by one of them over this very payload, unexpired, and
    /// made for the policy's hash.
    pub fn verify(
        &self,
        policy: &Policy,
        agent: Option<&str>,
        keys: &[(String, VerifyingKey)],
        now: u64,
    ) -> Result<Verified, CertError> {
        // The signature first: nothing a changed payload says is believed.
        let signed_by = self
            .envelope
            .verified_by(&self.body, keys)
            .map_err(|p| match p {
                SignatureProblem::Unsigned => CertError::Unsigned,
                SignatureProblem::Bad(kid) => CertError::BadSignature(kid),
                SignatureProblem::UnknownKeys(kids) => CertError::UnknownKey(kids.join(", ")),
            })?;
        let s = self.statement()?;
        let p = &s.predicate;
        if unix_of(&p.issued)? > now.saturating_add(300) {
            return Err(CertError::NotYet(p.issued.clone()));
        }
        if now > unix_of(&p.expires)? {
            return Err(CertError::Expired(p.expires.clone()));
        }
        if let Some(agent) = agent.filter(|a| *a != p.agent) {
            return Err(CertError::Agent {
                certified: p.agent.clone(),
                agent: agent.to_owned(),
            });
        }
        let bound_by_subject = s.subject.iter().any(|sub| {
            sub.name == AgentIdentity::for_agent(&p.agent).as_str()
                && sub.digest.get("sha256") == Some(&p.policy.sha256)
        });
        if !bound_by_subject {
            return Err(CertError::Malformed(
                "the subject does not name the agent and the policy hash of the predicate".into(),
            ));
        }
        if p.policy.sha256 != policy.hash() {
            return Err(CertError::PolicyHash {
                certified: p.policy.sha256.clone(),
                policy: policy.hash().to_owned(),
            });
        }
        if policy.agent(&p.agent).is_none() {
            return Err(CertError::NoAgent {
                agent: p.agent.clone(),
                policy: policy.source().to_owned(),
            });
        }
        Ok(Verified {
            id: self.id(),
            agent: p.agent.clone(),
            signed_by,
            policy_sha256: p.policy.sha256.clone(),
            expires: p.expires.clone(),
        })
    }
}

fn file_ref(name: &str, bytes: &[u8]) -> FileRef {
    FileRef {
        name: name.to_owned(),
        digest: statement::sha256(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: 1\nagents:\n  payer:\n    identity:\n      owner: team-pay\n      models: [m-large]\n    credentials:\n      - tool: payments\n        methods: [POST]\n        resources: [\"/payouts/*\"]\n    certificate: required\n";

    fn made(now: u64) -> (Policy, Certificate) {
        let policy = Policy::from_yaml(POLICY, "p.yaml").unwrap();
        let cert = Certificate::create(
            &policy,
            "payer",
            &Evidence {
                tests: Some((
                    "results.txt",
                    b"test result: ok. 5 passed; 0 failed; 0 ignored",
                )),
                traces: vec![("t1.jsonl", b"{}")],
                now,
                valid_for: Duration::from_secs(3600),
            },
        )
        .unwrap();
        (policy, cert)
    }

    #[test]
    fn a_signed_certificate_verifies_for_its_policy_only() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let keys = vec![("k".to_owned(), key.verifying_key())];
        let (policy, mut cert) = made(1_000);
        assert!(matches!(
            cert.verify(&policy, None, &keys, 1_000),
            Err(CertError::Unsigned)
        ));
        let id = cert.id();
        cert.sign(&key, "k");
        assert_eq!(cert.id(), id, "signing does not change the id");
        let v = cert.verify(&policy, Some("payer"), &keys, 1_000).unwrap();
        assert_eq!((v.agent.as_str(), v.signed_by.as_str()), ("payer", "k"));
        let s = cert.statement().unwrap();
        assert_eq!(s.predicate.tools, vec!["payments".to_owned()]);
        assert_eq!(s.predicate.models, vec!["m-large".to_owned()]);
        assert_eq!(s.predicate.tests.unwrap().summary.passed, 5);
        assert!(matches!(
            cert.verify(&policy, None, &keys, 1_000 + 3601),
            Err(CertError::Expired(_))
        ));
        assert!(matches!(
            cert.verify(&policy, Some("other"), &keys, 1_000),
            Err(CertError::Agent { .. })
        ));
        assert!(matches!(
            cert.verify(&policy, None, &[], 1_000),
            Err(CertError::UnknownKey(_))
        ));
        let changed = Policy::from_yaml(&POLICY.replace("team-pay", "team-x"), "p.yaml").unwrap();
        assert!(matches!(
            cert.verify(&changed, None, &keys, 1_000),
            Err(CertError::PolicyHash { .. })
        ));
        // Round trip through the file form.
        let json = serde_json::to_vec(cert.envelope()).unwrap();
        let back = Certificate::parse(&json).unwrap();
        assert!(back.verify(&policy, None, &keys, 1_000).is_ok());
        // One byte of the payload changed.
        let mut body = cert.body().to_vec();
        let at = body.len() / 2;
        body[at] ^= 1;
        let mut envelope = cert.envelope().clone();
        envelope.payload = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&body)
        };
        let tampered = Certificate::parse(&serde_json::to_vec(&envelope).unwrap()).unwrap();
        assert!(matches!(
            tampered.verify(&policy, None, &keys, 1_000),
            Err(CertError::BadSignature(_))
        ));
    }

    #[test]
    fn failing_runs_are_not_certified() {
        let policy = Policy::from_yaml(POLICY, "p.yaml").unwrap();
        let e = Certificate::create(
            &policy,
            "payer",
            &Evidence {
                tests: Some((
                    "r.txt",
                    b"test result: FAILED. 4 passed; 1 failed; 0 ignored",
                )),
                traces: Vec::new(),
                now: 0,
                valid_for: Duration::from_secs(1),
            },
        )
        .unwrap_err();
        assert!(matches!(e, CertError::TestsFailed { failed: 1, .. }), "{e}");
    }
}
