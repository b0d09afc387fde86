//! DSSE (Dead Simple Signing Envelope) v1: a payload, its type, and signatures over the
//! pre-authentication encoding `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, so a
//! signature can never be taken for one over another type or another framing.

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE},
    Engine as _,
};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// One signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's id (an RFC 7638 thumbprint).
    pub keyid: String,
    /// The Ed25519 signature, base64.
    pub sig: String,
}

/// An envelope as stored (`{payload, payloadType, signatures}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The payload, base64.
    pub payload: String,
    /// Its media type.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The signatures (none until signed).
    #[serde(default)]
    pub signatures: Vec<EnvelopeSignature>,
}

/// The pre-authentication encoding of a payload.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Standard or URL-safe base64, as the DSSE specification allows either.
pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

impl Envelope {
    /// An unsigned envelope around `body`.
    pub fn new(payload_type: &str, body: &[u8]) -> Self {
        Self {
            payload: STANDARD.encode(body),
            payload_type: payload_type.to_owned(),
            signatures: Vec::new(),
        }
    }

    /// Adds (or replaces) the signature of `key` with id `keyid` over `body` (the payload
    /// decoded).
    pub fn sign(&mut self, body: &[u8], key: &SigningKey, keyid: &str) {
        let sig = key.sign(&pae(&self.payload_type, body));
        self.add(EnvelopeSignature {
            keyid: keyid.to_owned(),
            sig: STANDARD.encode(sig.to_bytes()),
        });
    }

    /// Adds a signature made elsewhere (replacing one by the same key).
    pub fn add(&mut self, signature: EnvelopeSignature) {
        self.signatures.retain(|s| s.keyid != signature.keyid);
        self.signatures.push(signature);
    }

    /// The key id of the first signature over `body` by one of `keys` that verifies, or why
    /// none does.
    pub fn verified_by(
        &self,
        body: &[u8],
        keys: &[(String, VerifyingKey)],
    ) -> Result<String, SignatureProblem> {
        if self.signatures.is_empty() {
            return Err(SignatureProblem::Unsigned);
        }
        let message = pae(&self.payload_type, body);
        let mut unknown = Vec::new();
        let mut bad = None;
        for s in &self.signatures {
            let Some((kid, key)) = keys.iter().find(|(kid, _)| *kid == s.keyid) else {
                unknown.push(s.keyid.clone());
                continue;
            };
            let good = decode(&s.sig)
                .and_then(|b| Signature::from_slice(&b).ok())
                .is_some_and(|sig| key.verify_strict(&message, &sig).is_ok());
            if good {
                return Ok(kid.clone());
            }
            bad.get_or_insert_with(|| kid.clone());
        }
        if let Some(kid) = bad {
            return Err(SignatureProblem::Bad(kid));
        }
        Err(SignatureProblem::UnknownKeys(unknown))
    }
}

/// Why no signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureProblem {
    /// There is none.
    Unsigned,
    /// A known key's signature does not match (the payload or the signature was changed).
    Bad(String),
    /// Every signature is by a key not among the trusted ones.
    UnknownKeys(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_specification() {
        // The DSSE specification's example.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn signatures_bind_the_payload_and_its_type() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let keys = vec![("k".to_owned(), key.verifying_key())];
        let mut e = Envelope::new("t", b"body");
        assert_eq!(
            e.verified_by(b"body", &keys),
            Err(SignatureProblem::Unsigned)
        );
        e.sign(b"body", &key, "k");
        e.sign(b"body", &key, "k");
        assert_eq!(e.signatures.len(), 1, "one signature per key");
        assert_eq!(e.verified_by(b"body", &keys).unwrap(), "k");
        assert_eq!(
            e.verified_by(b"bodY", &keys),
            Err(SignatureProblem::Bad("k".into()))
        );
        let mut retyped = e.clone();
        retyped.payload_type = "u".into();
        assert!(retyped.verified_by(b"body", &keys).is_err());
        assert_eq!(
            e.verified_by(b"body", &[]),
            Err(SignatureProblem::UnknownKeys(vec!["k".into()]))
        );
    }
}
