//! Credential events: every grant, refusal and revocation of a just-in-time credential, so a
//! review connects what an agent was allowed to do with what it did.

use serde::{Deserialize, Serialize};

use super::named::named_enum;

named_enum! {
    /// What happened to a credential.
    pub enum CredentialAction ("credential action") {
        /// A token was issued.
        Granted = "granted",
        /// A request was refused (`reason` says why; `pending-approval` with an approval id).
        Refused = "refused",
        /// A live token was revoked.
        Revoked = "revoked",
    }
}

/// A credential granted, refused or revoked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CredentialDetail {
    /// Granted, refused or revoked.
    pub action: CredentialAction,
    /// The tool (the token's audience).
    pub tool: String,
    /// The method.
    pub method: String,
    /// The resource.
    pub resource: String,
    /// The user the agent asked on behalf of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The token's id (granted, revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// When the token expires, ns since the Unix epoch (granted, revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_nano: Option<u64>,
    /// The rule that granted it (`credentials[N]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused or revoked: `not-allowed`, `envelope`, `unknown-user`, `ttl`,
    /// `certificate`, `contained`, `budget`, `pending-approval`, `limit`; for a revocation
    /// what revoked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The approval request to decide, for `pending-approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<u64>,
}
