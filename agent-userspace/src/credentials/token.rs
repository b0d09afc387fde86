//! The tokens: JWTs signed with EdDSA by the node key, one tool, one method and one resource
//! each, and their verification against a set of public keys (a JWKS document).

use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{keys::KeyRing, CredentialError};

/// Who a token was issued on behalf of (RFC 8693 `act`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The user's name, as the policy's `users:` knows it.
    pub sub: String,
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuing node, `spiffe://TRUST_DOMAIN/node/NODE`.
    pub iss: String,
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The tool.
    pub aud: String,
    /// `METHOD RESOURCE`: the one method and resource the token is good for.
    pub scope: String,
    /// The user the agent acts for, when it asked on one's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expiry.
    pub exp: u64,
    /// The token's id (what a revocation names).
    pub jti: String,
    /// The trace id of the agent's session (hex), linking the token to its telemetry.
    pub trace_id: String,
    /// The behavior certificate in force for the agent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
}

impl Claims {
    /// The scope of a method and a resource.
    pub fn scope_of(method: &str, resource: &str) -> String {
        format!("{method} {resource}")
    }
}

/// Signs `claims` with the ring's current key; records the expiry first.
pub fn issue(ring: &mut KeyRing, claims: &Claims, now: u64) -> Result<String, CredentialError> {
    super::provider::install();
    ring.signed_until(claims.exp, now)?;
    let der = ring
        .signing()
        .to_pkcs8_der()
        .map_err(|_| CredentialError::BadKey {
            kid: ring.current().to_owned(),
        })?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(ring.current().to_owned());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
        .map_err(CredentialError::Jwt)
}

/// What a token must be good for.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The tool (the audience).
    pub tool: &'a str,
    /// The method.
    pub method: &'a str,
    /// The resource.
    pub resource: &'a str,
}

/// Why a token does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// Not a JWT, or not one of ours (algorithm, header).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Its `kid` names no key of the set (unknown, or a rotated key whose tokens all expired).
    #[error("signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("bad signature")]
    Signature,
    /// Past its expiry.
    #[error("expired at {exp} (now {now})")]
    Expired {
        /// Its expiry.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
    /// Not valid yet.
    #[error("not valid before {0}")]
    NotYet(u64),
    /// For another tool.
    #[error("issued for tool {got:?}, not {want:?}")]
    Tool {
        /// What the token says.
        got: String,
        /// What was asked.
        want: String,
    },
    /// For another method or resource.
    #[error("scope is {got:?}, not {want:?}")]
    Scope {
        /// What the token says.
        got: String,
        /// What was asked.
        want: String,
    },
    /// Revoked (the daemon's verify endpoint only).
    #[error("revoked")]
    Revoked,
}

/// Checks `token` against `keys`: signature, expiry at `now`, tool, method and resource.
pub fn verify(token: &str, keys: &JwkSet, want: Expected<'_>, now: u64) -> Result<Claims, Invalid> {
    super::provider::install();
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| Invalid::Malformed(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(Invalid::Malformed(format!(
            "algorithm {:?}; expected EdDSA",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| Invalid::Malformed("no kid in the header".into()))?;
    let jwk = keys.find(&kid).ok_or(Invalid::UnknownKey(kid))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| Invalid::Malformed(e.to_string()))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Time and audience are checked below, against `now` and with the reason named.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "sub", "iss"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => Invalid::Signature,
            _ => Invalid::Malformed(e.to_string()),
        })?;
    let c = data.claims;
    if now > c.exp {
        return Err(Invalid::Expired { exp: c.exp, now });
    }
    if now < c.nbf {
        return Err(Invalid::NotYet(c.nbf));
    }
    if c.aud != want.tool {
        return Err(Invalid::Tool {
            got: c.aud,
            want: want.tool.to_owned(),
        });
    }
    let scope = Claims::scope_of(&want.method.to_ascii_uppercase(), want.resource);
    if c.scope != scope {
        return Err(Invalid::Scope {
            got: c.scope,
            want: scope,
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> Claims {
        Claims {
            iss: "spiffe://t/node/n".into(),
            sub: "spiffe://t/agent/payer".into(),
            aud: "payments".into(),
            scope: "POST /payouts/42".into(),
            act: Some(Actor {
                sub: "alice".into(),
            }),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: "j1".into(),
            trace_id: "00".repeat(16),
            cert: None,
        }
    }

    const WANT: Expected<'static> = Expected {
        tool: "payments",
        method: "post",
        resource: "/payouts/42",
    };

    #[test]
    fn a_token_is_good_for_one_tool_method_and_resource_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::open(dir.path(), 1_000).unwrap();
        let token = issue(&mut ring, &claims(1_000), 1_000).unwrap();
        let keys = ring.jwks(1_000);
        let c = verify(&token, &keys, WANT, 1_030).unwrap();
        assert_eq!(c.act.unwrap().sub, "alice");
        let other = |tool, method, resource| {
            verify(
                &token,
                &keys,
                Expected {
                    tool,
                    method,
                    resource,
                },
                1_030,
            )
            .unwrap_err()
        };
        assert!(matches!(
            other("ledger", "POST", "/payouts/42"),
            Invalid::Tool { .. }
        ));
        assert!(matches!(
            other("payments", "GET", "/payouts/42"),
            Invalid::Scope { .. }
        ));
        assert!(matches!(
            other("payments", "POST", "/payouts/43"),
            Invalid::Scope { .. }
        ));
        assert!(
            verify(&token, &keys, WANT, 1_060).is_ok(),
            "valid through exp"
        );
        assert_eq!(
            verify(&token, &keys, WANT, 1_061).unwrap_err(),
            Invalid::Expired {
                exp: 1_060,
                now: 1_061
            }
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_fail() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::open(dir.path(), 1_000).unwrap();
        let token = issue(&mut ring, &claims(1_000), 1_000).unwrap();
        let keys = ring.jwks(1_000);
        // Another tool in the payload, the signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = payload.replace("payments", "ledgerxx");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged),
            parts[2]
        );
        let want = Expected {
            tool: "ledgerxx",
            ..WANT
        };
        assert_eq!(
            verify(&forged, &keys, want, 1_001).unwrap_err(),
            Invalid::Signature
        );
        // Another node's key.
        let other = tempfile::tempdir().unwrap();
        let other_keys = KeyRing::open(other.path(), 1_000).unwrap().jwks(1_000);
        assert!(matches!(
            verify(&token, &other_keys, WANT, 1_001).unwrap_err(),
            Invalid::UnknownKey(_)
        ));
        // An unsigned token.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(matches!(
            verify(&none, &keys, WANT, 1_001).unwrap_err(),
            Invalid::Malformed(_)
        ));
    }
}
