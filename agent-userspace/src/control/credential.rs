//! Credentials and identities on the daemon's sockets.
//!
//! On the application socket a caged process asks for a token; the daemon knows who asks from
//! the caller's cage, as for application events:
//!
//! ```text
//! → {"credential":{"tool":"payments","method":"POST","resource":"/payouts/42","ttl":"60s","on_behalf_of":"alice"}}
//! ← {"type":"granted","token":"eyJ...","jti":"9f86...","scope":"POST /payouts/42","expires_unix":1700000060}
//! ← {"type":"refused","reason":"pending-approval","message":"...","approval_id":3}
//! ← {"type":"error","message":"..."}
//! ```
//!
//! On the control socket, what `agentcage agents`, `keys`, `cred list|revoke` and
//! `cert sign` exchange.

use serde::{Deserialize, Serialize};

use crate::{credentials::CredentialRequest, policy::IdentityPolicy};

/// A credential request on the application socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialMessage {
    /// The agent the sender speaks for; its own cage's agent when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The request.
    pub credential: CredentialRequest,
}

impl CredentialMessage {
    /// The message of a line that is a credential request (a JSON object with a
    /// `credential` key), `None` for any other line (an application event).
    pub fn parse(line: &str) -> Option<Result<Self, String>> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        value.get("credential")?;
        Some(
            serde_json::from_value(value).map_err(|e| format!("malformed credential request: {e}")),
        )
    }
}

/// The daemon's answer to a credential request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CredentialReply {
    /// Issued.
    Granted {
        /// The JWT.
        token: String,
        /// Its id (what a revocation names).
        jti: String,
        /// `METHOD RESOURCE`.
        scope: String,
        /// Its expiry, seconds since the Unix epoch.
        expires_unix: u64,
    },
    /// Not issued; the request was recorded (an event) and counted.
    Refused {
        /// `not-allowed`, `envelope`, `unknown-user`, `ttl`, `certificate`, `contained`,
        /// `budget`, `pending-approval`, `limit`.
        reason: String,
        /// For a person.
        message: String,
        /// The approval request to decide, for `pending-approval`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<u64>,
    },
    /// Malformed, or from a process that may not ask; nothing was recorded.
    Error {
        /// Why.
        message: String,
    },
}

/// A live token, for `agentcage cred list` and `cred revoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCredential {
    /// The agent it was issued to.
    pub agent: String,
    /// Its id.
    pub jti: String,
    /// The tool.
    pub tool: String,
    /// `METHOD RESOURCE`.
    pub scope: String,
    /// The user it acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Its expiry, seconds since the Unix epoch.
    pub expires_unix: u64,
}

/// Where an agent's behavior certificate stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateState {
    /// `certificate: required` in its policy.
    pub required: bool,
    /// `valid`, `missing` or `invalid`.
    pub state: String,
    /// The certificate's id, when valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why it is missing or invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One agent of `agentcage agents`: every agent the policy defines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInventory {
    /// Its name.
    pub name: String,
    /// `agent:NAME`.
    pub id: String,
    /// `spiffe://TRUST_DOMAIN/agent/NAME`.
    pub spiffe_id: String,
    /// What the policy declares it is.
    pub identity: IdentityPolicy,
    /// The tier it is enforced with here (`deny`, `kill`), or why it cannot start.
    pub tier: String,
    /// Its behavior certificate.
    pub certificate: CertificateState,
    /// Whether it has a cage now.
    pub running: bool,
    /// Its containment rung, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung: Option<String>,
}

/// One node key, for `agentcage keys show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Its id (`kid` in tokens, `keyid` in certificate signatures).
    pub kid: String,
    /// Whether it signs now.
    pub current: bool,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When a newer key replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<String>,
    /// Until when a retired key stays for verification (its last token's expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_until: Option<String>,
    /// The public key (SPKI PEM).
    pub public_key_pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_lines_are_told_from_events() {
        let line = r#"{"credential":{"tool":"payments","method":"POST","resource":"/payouts/42","ttl":"60s","on_behalf_of":"alice"}}"#;
        let m = CredentialMessage::parse(line).unwrap().unwrap();
        assert_eq!(m.credential.on_behalf_of.as_deref(), Some("alice"));
        assert!(CredentialMessage::parse(r#"{"event":{"app":"plan"}}"#).is_none());
        assert!(CredentialMessage::parse("not json").is_none());
        let e = CredentialMessage::parse(r#"{"credential":{"tool":"t"},"x":1}"#)
            .unwrap()
            .unwrap_err();
        assert!(e.contains("malformed credential request"), "{e}");
        let r = serde_json::to_string(&CredentialReply::Refused {
            reason: "pending-approval".into(),
            message: "m".into(),
            approval_id: Some(3),
        })
        .unwrap();
        assert_eq!(
            r,
            r#"{"type":"refused","reason":"pending-approval","message":"m","approval_id":3}"#
        );
    }
}
