//! Just-in-time credentials: a request from inside a cage is counted against the tool-call
//! budget, refused unless the agent is on `observe`, unthrottled, certified when its policy
//! requires it, allowed by its `credentials` rules (inside its user's envelope) and approved
//! when the rule asks; then the node key signs a token. Every grant, refusal and revocation
//! is an event. Moving above `observe`, a session's end and a policy that no longer allows a
//! grant revoke the agent's live tokens.

use std::{collections::HashMap, path::PathBuf};

use ed25519_dalek::VerifyingKey;
use jsonwebtoken::jwk::JwkSet;
use tracing::{error, info, warn};

use super::super::{State, StateError};
use crate::{
    certificates::{Certificate, EnvelopeSignature},
    control::credential::{CredentialReply, KeyInfo, LiveCredential},
    credentials::{
        self, decide, Actor, Ask, Claims, CredentialError, CredentialRequest, Expected, Invalid,
        KeyRing, Revocations,
    },
    events::{CredentialAction, CredentialDetail, EventDetail},
    identity::{AgentIdentity, SpiffeId, TrustDomain},
    policy::{CertificateRequirement, Policy},
    runtime::{approvals::Subject, budgets::Metric, Rung},
};

/// How many live tokens an agent may hold at once.
const MAX_LIVE: usize = 1024;

/// What the daemon needs to issue and check credentials and certificates.
pub struct CredentialSetup {
    /// The state directory (keys, JWKS, revocations).
    pub state_dir: PathBuf,
    /// Where agents' certificates are installed (`NAME.json`).
    pub certificate_dir: PathBuf,
    /// The trust domain of SPIFFE IDs.
    pub trust_domain: TrustDomain,
    /// Public keys trusted for certificate signatures besides the node's.
    pub trusted_keys: Vec<(String, VerifyingKey)>,
    /// The node's id (its tokens' issuer, and part of session trace ids).
    pub node: String,
}

/// A token handed out and not yet expired.
#[derive(Clone, Debug)]
struct Live {
    jti: String,
    exp: u64,
    ask: Ask,
}

/// The node's keys, the revocations, and each agent's live tokens.
pub(crate) struct CredentialState {
    keys: KeyRing,
    revoked: Revocations,
    live: HashMap<String, Vec<Live>>,
    pub(in crate::daemon::state) trust_domain: TrustDomain,
    issuer: SpiffeId,
    node: String,
    pub(super) certificate_dir: PathBuf,
    pub(super) trusted_keys: Vec<(String, VerifyingKey)>,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    crate::clock::now_unix_nano() / 1_000_000_000
}

impl CredentialState {
    /// Opens the key ring and the revocations under the state directory (making the first
    /// key on a first start).
    pub(crate) fn open(setup: CredentialSetup) -> Result<Self, StateError> {
        let now = unix_now();
        let issuer = setup
            .trust_domain
            .node(&setup.node)
            .map_err(|e| StateError::Usage(e.to_string()))?;
        Ok(Self {
            keys: KeyRing::open(&setup.state_dir, now)?,
            revoked: Revocations::open(&setup.state_dir, now)?,
            live: HashMap::new(),
            trust_domain: setup.trust_domain,
            issuer,
            node: setup.node,
            certificate_dir: setup.certificate_dir,
            trusted_keys: setup.trusted_keys,
        })
    }

    /// The public keys tokens and certificates may be signed with: the node's, then the
    /// configured ones.
    pub(super) fn verifying_keys(&self, now: u64) -> Vec<(String, VerifyingKey)> {
        let mut keys: Vec<_> = self
            .keys
            .keys(now)
            .into_iter()
            .filter_map(|k| Some((k.kid.clone(), k.verifying_key().ok()?)))
            .collect();
        keys.extend(self.trusted_keys.iter().cloned());
        keys
    }

    /// The agent's live tokens, expired ones dropped.
    fn live_of(&mut self, agent: &str, now: u64) -> &mut Vec<Live> {
        let live = self.live.entry(agent.to_owned()).or_default();
        live.retain(|t| t.exp >= now);
        live
    }
}

impl From<CredentialError> for StateError {
    fn from(e: CredentialError) -> Self {
        Self::Credential(e)
    }
}

/// A refusal: the reason code, the message, the approval to decide.
type Refused = (&'static str, String, Option<u64>);

impl State {
    /// A credential request from a process (pid) inside `agent`'s cage.
    pub fn on_credential_request(
        &mut self,
        agent: &str,
        pid: u32,
        request: &CredentialRequest,
    ) -> CredentialReply {
        let ask = match request.check() {
            Ok(a) => a,
            Err(message) => return CredentialReply::Error { message },
        };
        if !self.containment.has(agent) {
            return CredentialReply::Error {
                message: format!("agent {agent:?} has no cage this daemon manages"),
            };
        }
        // Every request counts, granted or not.
        let breaches = self.meter(agent, Metric::ToolCalls, 1.0);
        self.breaches(agent, breaches);
        let detail = |action| CredentialDetail {
            action,
            tool: ask.tool.clone(),
            method: ask.method.clone(),
            resource: ask.resource.clone(),
            on_behalf_of: ask.on_behalf_of.clone(),
            jti: None,
            expires_unix_nano: None,
            rule: None,
            reason: None,
            approval_id: None,
        };
        let rule = match self.credential_refusal(agent, &ask) {
            Ok(rule) => rule,
            Err((reason, message, approval_id)) => {
                info!(
                    agent,
                    tool = ask.tool,
                    reason,
                    "credential refused: {message}"
                );
                let refused = CredentialDetail {
                    reason: Some(reason.to_owned()),
                    approval_id,
                    ..detail(CredentialAction::Refused)
                };
                self.publish(agent, pid, EventDetail::Credential(refused));
                return CredentialReply::Refused {
                    reason: reason.to_owned(),
                    message,
                    approval_id,
                };
            }
        };
        match self.sign_credential(agent, &ask, rule.1) {
            Ok((token, claims)) => {
                info!(
                    agent,
                    tool = ask.tool,
                    scope = claims.scope,
                    jti = claims.jti,
                    "credential granted"
                );
                let granted = CredentialDetail {
                    jti: Some(claims.jti.clone()),
                    expires_unix_nano: Some(claims.exp.saturating_mul(1_000_000_000)),
                    rule: Some(format!("credentials[{}]", rule.0)),
                    ..detail(CredentialAction::Granted)
                };
                self.publish(agent, pid, EventDetail::Credential(granted));
                CredentialReply::Granted {
                    token,
                    jti: claims.jti,
                    scope: claims.scope,
                    expires_unix: claims.exp,
                }
            }
            Err(e) => {
                error!(agent, error = %e, "credential could not be signed");
                CredentialReply::Error {
                    message: format!("the credential could not be issued: {e}"),
                }
            }
        }
    }

    /// Why `ask` may not be granted now, or the granting rule's index and the lifetime.
    fn credential_refusal(
        &mut self,
        agent: &str,
        ask: &Ask,
    ) -> Result<(usize, std::time::Duration), Refused> {
        let rung = self.containment.rung(agent);
        if rung != Rung::Observe {
            return Err((
                "contained",
                format!(
                    "agent {agent} is on the {rung} rung; credentials are issued on observe only"
                ),
                None,
            ));
        }
        if self.budgets.throttled(agent) {
            return Err((
                "budget",
                format!("agent {agent} is over a hard budget"),
                None,
            ));
        }
        let policy = std::sync::Arc::clone(&self.policy);
        let agent_policy = policy.agent(agent);
        if agent_policy.is_some_and(|p| p.certificate == CertificateRequirement::Required) {
            if let Err(why) = self.certificate_valid(agent) {
                return Err(("certificate", why, None));
            }
        }
        let decided = decide(agent, agent_policy, &policy.users, ask)
            .map_err(|r| (r.reason(), r.to_string(), None))?;
        let now = unix_now();
        if self.credentials.live_of(agent, now).len() >= MAX_LIVE {
            return Err((
                "limit",
                format!("agent {agent} holds {MAX_LIVE} live credentials already"),
                None,
            ));
        }
        if decided.requires_approval {
            let subject = Subject::Credential {
                tool: ask.tool.clone(),
                scope: Claims::scope_of(&ask.method, &ask.resource),
                on_behalf_of: ask.on_behalf_of.clone(),
            };
            if !self.is_approved(agent, &subject) {
                let id = self.request_approval(agent, subject);
                return Err((
                    "pending-approval",
                    format!(
                        "credentials[{}] requires approval: agentcage approve {}",
                        decided.rule,
                        id.map_or_else(|| "ID".to_owned(), |i| i.to_string())
                    ),
                    id,
                ));
            }
        }
        Ok((decided.rule, decided.ttl))
    }

    /// Signs the token (its expiry recorded by the key ring first) and keeps it as live.
    fn sign_credential(
        &mut self,
        agent: &str,
        ask: &Ask,
        ttl: std::time::Duration,
    ) -> Result<(String, Claims), CredentialError> {
        let now = unix_now();
        let identity = AgentIdentity::for_agent(agent);
        let cgroup_id = self.registry.get(agent).map_or(0, |c| c.cgroup_id);
        let (trace_id, _) = crate::telemetry::records::session_ids(
            &self.credentials.node,
            Some(identity.as_str()),
            cgroup_id,
        );
        let claims = Claims {
            iss: self.credentials.issuer.to_string(),
            sub: self.credentials.trust_domain.agent(&identity).to_string(),
            aud: ask.tool.clone(),
            scope: Claims::scope_of(&ask.method, &ask.resource),
            act: ask.on_behalf_of.clone().map(|sub| Actor { sub }),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs_f64().ceil() as u64),
            jti: credentials::new_jti()?,
            trace_id: trace_id.to_string(),
            cert: self.registry.get(agent).and_then(|c| c.certificate.clone()),
        };
        let token = credentials::issue(&mut self.credentials.keys, &claims, now)?;
        self.credentials.live_of(agent, now).push(Live {
            jti: claims.jti.clone(),
            exp: claims.exp,
            ask: ask.clone(),
        });
        Ok((token, claims))
    }

    /// Revokes every live token of `agent`, each reported as an event.
    pub(in crate::daemon::state) fn revoke_live(&mut self, agent: &str, reason: &str) {
        let now = unix_now();
        let tokens = std::mem::take(self.credentials.live_of(agent, now));
        self.revoke_tokens(agent, tokens, reason, now);
    }

    fn revoke_tokens(&mut self, agent: &str, tokens: Vec<Live>, reason: &str, now: u64) {
        if tokens.is_empty() {
            return;
        }
        // Held in memory even if the file cannot be written: the verify endpoint refuses them.
        if let Err(e) = self
            .credentials
            .revoked
            .revoke(tokens.iter().map(|t| (t.jti.clone(), t.exp)), now)
        {
            error!(agent, error = %e, "revocations not saved; a restarted daemon would not know them");
        }
        warn!(agent, count = tokens.len(), reason, "credentials revoked");
        for t in tokens {
            let detail = CredentialDetail {
                action: CredentialAction::Revoked,
                tool: t.ask.tool,
                method: t.ask.method,
                resource: t.ask.resource,
                on_behalf_of: t.ask.on_behalf_of,
                jti: Some(t.jti),
                expires_unix_nano: Some(t.exp.saturating_mul(1_000_000_000)),
                rule: None,
                reason: Some(reason.to_owned()),
                approval_id: None,
            };
            self.publish(agent, 0, EventDetail::Credential(detail));
        }
    }

    /// Revokes one live token (by id) or every live token of an agent (`agentcage cred
    /// revoke`); returns what was revoked.
    pub fn revoke_credentials(
        &mut self,
        jti: Option<&str>,
        agent: Option<&str>,
        who: &str,
    ) -> Result<Vec<LiveCredential>, StateError> {
        let now = unix_now();
        let reason = format!("revoked by {who}");
        let mut out = Vec::new();
        let agents: Vec<String> = match agent {
            Some(a) => vec![a.to_owned()],
            None => self.credentials.live.keys().cloned().collect(),
        };
        for a in agents {
            let live = self.credentials.live_of(&a, now);
            let (taken, kept): (Vec<Live>, Vec<Live>) = std::mem::take(live)
                .into_iter()
                .partition(|t| jti.is_none_or(|j| t.jti == j));
            *live = kept;
            out.extend(taken.iter().map(|t| live_credential(&a, t)));
            self.revoke_tokens(&a, taken, &reason, now);
        }
        if out.is_empty() {
            return Err(StateError::Usage(match (jti, agent) {
                (Some(j), _) => format!("no live credential {j}; `agentcage cred list` lists them"),
                (None, Some(a)) => format!("agent {a} holds no live credential"),
                (None, None) => "name a credential (JTI) or --agent".to_owned(),
            }));
        }
        Ok(out)
    }

    /// Every live credential.
    pub fn live_credentials(&mut self) -> Vec<LiveCredential> {
        let now = unix_now();
        let agents: Vec<String> = self.credentials.live.keys().cloned().collect();
        let mut out = Vec::new();
        for a in agents {
            out.extend(
                self.credentials
                    .live_of(&a, now)
                    .iter()
                    .map(|t| live_credential(&a, t)),
            );
        }
        out
    }

    /// After a policy change: live tokens the new policy would not grant are revoked.
    pub(super) fn revalidate_credentials(&mut self, policy: &Policy) {
        let now = unix_now();
        let agents: Vec<String> = self.credentials.live.keys().cloned().collect();
        for agent in agents {
            let certified = self.certificate_valid(&agent).is_ok();
            let p = policy.agent(&agent);
            let needs_cert = p.is_some_and(|p| p.certificate == CertificateRequirement::Required);
            let live = self.credentials.live_of(&agent, now);
            let (kept, lapsed): (Vec<Live>, Vec<Live>) =
                std::mem::take(live).into_iter().partition(|t| {
                    (certified || !needs_cert) && decide(&agent, p, &policy.users, &t.ask).is_ok()
                });
            *live = kept;
            self.revoke_tokens(&agent, lapsed, "the policy no longer grants it", now);
        }
    }

    /// Verifies a token as a tool's backend asks (the HTTP endpoint): signature, expiry,
    /// tool, method, resource, and revocation.
    pub fn verify_credential(&self, token: &str, want: Expected<'_>) -> Result<Claims, Invalid> {
        let now = unix_now();
        let claims = credentials::verify(token, &self.credentials.keys.jwks(now), want, now)?;
        if self.credentials.revoked.contains(&claims.jti) {
            return Err(Invalid::Revoked);
        }
        Ok(claims)
    }

    /// The node's public keys as a JWKS document.
    pub fn jwks(&self) -> JwkSet {
        self.credentials.keys.jwks(unix_now())
    }

    /// The node's keys, for `agentcage keys show`.
    pub fn keys(&self) -> (String, Vec<KeyInfo>) {
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey as _};
        let rfc3339 = |s: u64| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        };
        let keys = self
            .credentials
            .keys
            .keys(unix_now())
            .into_iter()
            .map(|k| KeyInfo {
                current: k.kid == self.credentials.keys.current(),
                created: rfc3339(k.created_unix),
                retired: k.retired_unix.map(rfc3339),
                kept_until: k.kept_until().map(rfc3339),
                public_key_pem: k
                    .verifying_key()
                    .ok()
                    .and_then(|v| v.to_public_key_pem(LineEnding::LF).ok())
                    .unwrap_or_default(),
                kid: k.kid,
            })
            .collect();
        (self.credentials.keys.current().to_owned(), keys)
    }

    /// Makes a new signing key; returns its id.
    pub fn rotate_keys(&mut self) -> Result<String, StateError> {
        let kid = self.credentials.keys.rotate(unix_now())?;
        warn!(kid, "node signing key rotated");
        Ok(kid)
    }

    /// The node key's signature over a behavior certificate (`agentcage cert sign`).
    pub fn sign_certificate(&self, text: &str) -> Result<EnvelopeSignature, StateError> {
        let mut cert =
            Certificate::parse(text.as_bytes()).map_err(|e| StateError::Usage(e.to_string()))?;
        // Only certificates: the node key signs nothing it cannot read as one.
        let statement = cert
            .statement()
            .map_err(|e| StateError::Usage(e.to_string()))?;
        let kid = self.credentials.keys.current().to_owned();
        cert.sign(self.credentials.keys.signing(), &kid);
        info!(
            agent = statement.predicate.agent,
            id = cert.id(),
            kid,
            "behavior certificate signed"
        );
        cert.envelope()
            .signatures
            .iter()
            .find(|s| s.keyid == kid)
            .cloned()
            .ok_or_else(|| StateError::Usage("signing failed".into()))
    }
}

fn live_credential(agent: &str, t: &Live) -> LiveCredential {
    LiveCredential {
        agent: agent.to_owned(),
        jti: t.jti.clone(),
        tool: t.ask.tool.clone(),
        scope: Claims::scope_of(&t.ask.method, &t.ask.resource),
        on_behalf_of: t.ask.on_behalf_of.clone(),
        expires_unix: t.exp,
    }
}
