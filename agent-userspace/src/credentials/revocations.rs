//! Revoked tokens, by id, until they would have expired anyway; kept in the state directory
//! (`revoked.json`) so a restarted daemon's verify endpoint still refuses them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{write_file, CredentialError};

/// The revoked token ids and their expiries.
pub struct Revocations {
    path: PathBuf,
    revoked: BTreeMap<String, u64>,
}

impl Revocations {
    /// Loads `STATE_DIR/revoked.json` (absent: none), dropping entries expired by `now`.
    pub fn open(state_dir: &Path, now: u64) -> Result<Self, CredentialError> {
        let path = state_dir.join("revoked.json");
        let revoked = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| CredentialError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(CredentialError::io("reading", &path)(e)),
        };
        let mut r = Self { path, revoked };
        r.revoked.retain(|_, exp| *exp >= now);
        Ok(r)
    }

    /// Revokes the tokens `(jti, exp)`; saved before this returns.
    pub fn revoke(
        &mut self,
        tokens: impl IntoIterator<Item = (String, u64)>,
        now: u64,
    ) -> Result<(), CredentialError> {
        self.revoked.retain(|_, exp| *exp >= now);
        self.revoked.extend(tokens);
        let json = serde_json::to_vec(&self.revoked).map_err(CredentialError::Json)?;
        write_file(&self.path, &json, 0o600)
    }

    /// Whether token `jti` was revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_outlive_a_restart_until_the_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Revocations::open(dir.path(), 100).unwrap();
        r.revoke([("a".to_owned(), 160), ("b".to_owned(), 200)], 100)
            .unwrap();
        assert!(r.contains("a") && !r.contains("c"));
        let again = Revocations::open(dir.path(), 161).unwrap();
        assert!(!again.contains("a"), "expired: nothing to remember");
        assert!(again.contains("b"));
    }
}
