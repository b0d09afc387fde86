//! The node's signing keys: Ed25519, made at the daemon's first start, kept under its state
//! directory.
//!
//! ```text
//! STATE_DIR/keys/          0700
//!   ring.json              0600  every public key still needed, which one signs
//!   KID.pem                0600  the current private key (PKCS#8); only the current one exists
//! STATE_DIR/jwks.json      0644  the public keys as a JWKS document (`cred verify` reads it)
//! ```
//!
//! A rotation makes a new key the signer and deletes the old private key at once; the old
//! public key stays in the ring (and the JWKS) until the last token it signed has expired,
//! which the ring records per key before each token is handed out.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ed25519_dalek::{
    pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey as _, EncodePrivateKey as _},
    SigningKey, VerifyingKey,
};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use serde::{Deserialize, Serialize};

use super::{write_file, CredentialError};

/// One key of the ring, public part and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Its id: the RFC 7638 thumbprint of its public JWK (what tokens name in `kid`).
    pub kid: String,
    /// The public key, base64url (the JWK's `x`).
    pub x: String,
    /// When it was made, seconds since the Unix epoch.
    pub created_unix: u64,
    /// When a newer key replaced it; None for the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_unix: Option<u64>,
    /// The latest expiry of a token it signed (0: none yet).
    #[serde(default)]
    pub last_exp_unix: u64,
}

impl KeyRecord {
    /// Whether it is still needed at `now`: the current key, or a retired one whose tokens
    /// have not all expired.
    pub fn needed(&self, now: u64) -> bool {
        self.retired_unix.is_none() || self.last_exp_unix >= now
    }

    /// Until when it stays in the ring (None: while it is the current key).
    pub fn kept_until(&self) -> Option<u64> {
        self.retired_unix.map(|r| r.max(self.last_exp_unix))
    }

    /// The public key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, CredentialError> {
        public_key(&self.x).ok_or_else(|| CredentialError::BadKey {
            kid: self.kid.clone(),
        })
    }

    /// The public JWK.
    pub fn jwk(&self) -> Jwk {
        okp_jwk(&self.x, Some(self.kid.clone()))
    }
}

/// A public key from its base64url form.
pub fn public_key(x: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(x).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The public JWK of an Ed25519 key (`x` base64url), for EdDSA signatures.
fn okp_jwk(x: &str, kid: Option<String>) -> Jwk {
    Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            key_id: kid,
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: x.to_owned(),
        }),
    }
}

/// The key id of a public key: its RFC 7638 JWK thumbprint (SHA-256, base64url).
pub fn key_id(key: &VerifyingKey) -> String {
    super::provider::install();
    okp_jwk(&URL_SAFE_NO_PAD.encode(key.as_bytes()), None).thumbprint(ThumbprintHash::SHA256)
}

#[derive(Serialize, Deserialize)]
struct RingFile {
    /// The signing key's id.
    current: String,
    keys: Vec<KeyRecord>,
}

/// The node's keys, loaded from (and kept in step with) the state directory.
pub struct KeyRing {
    dir: PathBuf,
    jwks_path: PathBuf,
    signing: SigningKey,
    current: String,
    keys: Vec<KeyRecord>,
}

impl KeyRing {
    /// Loads the ring under `state_dir`, or makes the first key there.
    pub fn open(state_dir: &Path, now: u64) -> Result<Self, CredentialError> {
        let dir = state_dir.join("keys");
        let jwks_path = state_dir.join("jwks.json");
        fs::create_dir_all(&dir).map_err(CredentialError::io("creating", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(CredentialError::io("setting the mode of", &dir))?;
        let ring_path = dir.join("ring.json");
        let mut ring = match fs::read(&ring_path) {
            Ok(bytes) => {
                let file: RingFile =
                    serde_json::from_slice(&bytes).map_err(|source| CredentialError::Parse {
                        path: ring_path.clone(),
                        source,
                    })?;
                let pem = dir.join(format!("{}.pem", file.current));
                let signing = read_private_key(&pem)?;
                if key_id(&signing.verifying_key()) != file.current {
                    return Err(CredentialError::BadKey { kid: file.current });
                }
                Self {
                    dir,
                    jwks_path,
                    signing,
                    current: file.current,
                    keys: file.keys,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signing = SigningKey::from_bytes(&super::random()?);
                let (record, current) = new_record(&signing, now);
                let ring = Self {
                    dir,
                    jwks_path,
                    signing,
                    current,
                    keys: vec![record],
                };
                ring.write_private_key()?;
                ring
            }
            Err(e) => return Err(CredentialError::io("reading", &ring_path)(e)),
        };
        ring.keys.retain(|k| k.needed(now));
        ring.save(now)?;
        Ok(ring)
    }

    /// The current key's id.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// The signing key (the current one).
    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// Every key still needed at `now`, current first.
    pub fn keys(&self, now: u64) -> Vec<KeyRecord> {
        let mut out: Vec<_> = self
            .keys
            .iter()
            .filter(|k| k.needed(now))
            .cloned()
            .collect();
        out.sort_by_key(|k| (k.retired_unix.is_some(), std::cmp::Reverse(k.created_unix)));
        out
    }

    /// The public keys as a JWKS document.
    pub fn jwks(&self, now: u64) -> JwkSet {
        JwkSet {
            keys: self.keys(now).iter().map(KeyRecord::jwk).collect(),
        }
    }

    /// Records that the current key signed a token expiring at `exp` (before it is handed
    /// out, so a rotation keeps the key as long as the token lives).
    pub fn signed_until(&mut self, exp: u64, now: u64) -> Result<(), CredentialError> {
        let current = self.current.clone();
        if let Some(k) = self.keys.iter_mut().find(|k| k.kid == current) {
            if exp <= k.last_exp_unix {
                return Ok(());
            }
            k.last_exp_unix = exp;
        }
        self.save(now)
    }

    /// Makes a new signing key; the old one's private key is deleted and its public key kept
    /// until its last token has expired. Returns the new key's id.
    pub fn rotate(&mut self, now: u64) -> Result<String, CredentialError> {
        let signing = SigningKey::from_bytes(&super::random()?);
        let (record, kid) = new_record(&signing, now);
        let old = std::mem::replace(&mut self.current, kid.clone());
        let old_signing = std::mem::replace(&mut self.signing, signing);
        self.write_private_key().inspect_err(|_| {
            self.current = old.clone();
            self.signing = old_signing;
        })?;
        for k in &mut self.keys {
            if k.kid == old {
                k.retired_unix = Some(now);
            }
        }
        self.keys.push(record);
        self.keys.retain(|k| k.needed(now));
        // The ring names the new key before the old private key goes: a crash in between
        // leaves an unused file, never a ring without its signer.
        self.save(now)?;
        let old_pem = self.dir.join(format!("{old}.pem"));
        fs::remove_file(&old_pem).map_err(CredentialError::io("removing", &old_pem))?;
        Ok(kid)
    }

    fn write_private_key(&self) -> Result<(), CredentialError> {
        let path = self.dir.join(format!("{}.pem", self.current));
        let pem =
            self.signing
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| CredentialError::BadKey {
                    kid: self.current.clone(),
                })?;
        write_file(&path, pem.as_bytes(), 0o600)
    }

    fn save(&self, now: u64) -> Result<(), CredentialError> {
        let ring = RingFile {
            current: self.current.clone(),
            keys: self.keys.clone(),
        };
        let json = serde_json::to_vec_pretty(&ring).map_err(CredentialError::Json)?;
        write_file(&self.dir.join("ring.json"), &json, 0o600)?;
        let jwks = serde_json::to_vec_pretty(&self.jwks(now)).map_err(CredentialError::Json)?;
        write_file(&self.jwks_path, &jwks, 0o644)
    }
}

fn new_record(signing: &SigningKey, now: u64) -> (KeyRecord, String) {
    let public = signing.verifying_key();
    let kid = key_id(&public);
    let record = KeyRecord {
        kid: kid.clone(),
        x: URL_SAFE_NO_PAD.encode(public.as_bytes()),
        created_unix: now,
        retired_unix: None,
        last_exp_unix: 0,
    };
    (record, kid)
}

/// Reads an Ed25519 public key from a PEM file (SubjectPublicKeyInfo, as
/// `openssl pkey -pubout` writes it); returns it with its key id.
pub fn read_public_key(path: &Path) -> Result<(String, VerifyingKey), CredentialError> {
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let text = fs::read_to_string(path).map_err(CredentialError::io("reading", path))?;
    let key = VerifyingKey::from_public_key_pem(&text).map_err(|_| CredentialError::KeyFile {
        path: path.to_owned(),
        expected: "an Ed25519 public key in PEM (`openssl pkey -in KEY -pubout`)",
    })?;
    Ok((key_id(&key), key))
}

/// Reads a PKCS#8 PEM private key, refusing one that others than its owner may read.
pub fn read_private_key(path: &Path) -> Result<SigningKey, CredentialError> {
    let meta = fs::metadata(path).map_err(CredentialError::io("reading", path))?;
    if meta.mode() & 0o077 != 0 {
        return Err(CredentialError::KeyMode {
            path: path.to_owned(),
            mode: meta.mode() & 0o777,
        });
    }
    let text = fs::read_to_string(path).map_err(CredentialError::io("reading", path))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|_| CredentialError::KeyFile {
        path: path.to_owned(),
        expected: "an Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_makes_a_private_key_only_root_reads() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), 1_000).unwrap();
        let pem = dir
            .path()
            .join("keys")
            .join(format!("{}.pem", ring.current()));
        assert_eq!(fs::metadata(&pem).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.path().join("keys")).unwrap().mode() & 0o777,
            0o700
        );
        let again = KeyRing::open(dir.path(), 1_001).unwrap();
        assert_eq!(
            again.current(),
            ring.current(),
            "the same key after a restart"
        );
        fs::set_permissions(&pem, fs::Permissions::from_mode(0o640)).unwrap();
        let e = KeyRing::open(dir.path(), 1_002).err().unwrap().to_string();
        assert!(e.contains("0640"), "{e}");
    }

    #[test]
    fn rotation_keeps_the_old_public_key_until_its_last_token_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::open(dir.path(), 1_000).unwrap();
        let old = ring.current().to_owned();
        ring.signed_until(1_060, 1_001).unwrap();
        let new = ring.rotate(1_010).unwrap();
        assert_ne!(new, old);
        assert!(!dir.path().join("keys").join(format!("{old}.pem")).exists());
        let kids = |r: &KeyRing, now| r.keys(now).into_iter().map(|k| k.kid).collect::<Vec<_>>();
        assert_eq!(kids(&ring, 1_060), vec![new.clone(), old.clone()]);
        assert_eq!(kids(&ring, 1_061), vec![new.clone()]);
        // A key that signed nothing goes at once.
        let newer = ring.rotate(1_020).unwrap();
        assert_eq!(kids(&ring, 1_020), vec![newer.clone(), old.clone()]);
        let reopened = KeyRing::open(dir.path(), 1_061).unwrap();
        assert_eq!(kids(&reopened, 1_061), vec![newer]);
        let jwks: JwkSet =
            serde_json::from_slice(&fs::read(dir.path().join("jwks.json")).unwrap()).unwrap();
        assert_eq!(jwks.keys.len(), 1);
    }

    #[test]
    fn key_ids_are_rfc7638_thumbprints() {
        // RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(
            key_id(&public_key(x).unwrap()),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
