//! Just-in-time credentials: short-lived tokens, one per tool call, that the daemon signs for
//! a caged agent when its policy allows the tool, method and resource (default deny).
//!
//! - [`keys`]: the node's Ed25519 keys under the state directory, rotation, the JWKS;
//! - [`token`]: the JWT (EdDSA) and its verification against public keys;
//! - [`grant`]: what the policy grants a request (a rule, a user's envelope, the lifetime);
//! - [`revocations`]: revoked token ids, kept until the tokens would have expired.
//!
//! The daemon glues these to the application socket, approvals, budgets and containment
//! (`daemon::state::enforce::credential`).

pub mod grant;
pub mod keys;
mod provider;
pub mod revocations;
pub mod token;

pub use grant::{decide, Ask, CredentialRequest, Decided, Refusal};
pub use keys::{key_id, read_private_key, read_public_key, KeyRecord, KeyRing};
pub use revocations::Revocations;
pub use token::{issue, verify, Actor, Claims, Expected, Invalid};

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Why keys, tokens or their files could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not what this build wrote.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// JSON could not be written.
    #[error("encoding JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A private key file may be read by others than its owner.
    #[error("{}: mode {mode:04o} lets others read a private key; expected 0600", path.display())]
    KeyMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file holds no key of the expected kind.
    #[error("{}: expected {expected}", path.display())]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
    },
    /// A key of the ring does not match its id, or cannot be encoded.
    #[error("node key {kid}: damaged (its public key does not match its id)")]
    BadKey {
        /// The key's id.
        kid: String,
    },
    /// The kernel's random generator failed.
    #[error("reading random bytes: {0}")]
    Random(#[source] getrandom::Error),
    /// Signing failed.
    #[error("signing the token: {0}")]
    Jwt(#[source] jsonwebtoken::errors::Error),
}

impl CredentialError {
    /// An [`CredentialError::Io`] for `op` on `path`.
    pub fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// 32 bytes from the kernel's generator.
pub(crate) fn random() -> Result<[u8; 32], CredentialError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(CredentialError::Random)?;
    Ok(bytes)
}

/// A fresh token id: 128 random bits, hex.
pub fn new_jti() -> Result<String, CredentialError> {
    Ok(hex::encode(&random()?[..16]))
}

/// Writes `bytes` to `path` through a temporary file (created with `mode`), synced and
/// renamed into place, so a reader never sees half a file and a crash leaves the old one.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CredentialError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(CredentialError::io("creating", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(CredentialError::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(CredentialError::io("replacing", path))
}
