//! The cryptography jsonwebtoken uses here: EdDSA (Ed25519) only, over ed25519-dalek.
//! jsonwebtoken's own `rust_crypto` backend would bring RSA and ECDSA with it; a token of
//! any other algorithm is refused before any key is consulted.

use std::sync::Once;

use ed25519_dalek::{pkcs8::DecodePrivateKey as _, Signature, SigningKey, VerifyingKey};
use jsonwebtoken::{
    crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier},
    errors::{Error, ErrorKind},
    jwk::ThumbprintHash,
    Algorithm, DecodingKey, EncodingKey,
};
use sha2::Digest as _;

struct EdSigner(SigningKey);

impl signature::Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(ed25519_dalek::Signer::sign(&self.0, msg)
            .to_bytes()
            .to_vec())
    }
}

impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdVerifier(VerifyingKey);

impl signature::Verifier<Vec<u8>> for EdVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        // Strict: no malleable signatures, no small-order keys.
        self.0.verify_strict(msg, &Signature::from_slice(sig)?)
    }
}

impl JwtVerifier for EdVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

fn only_eddsa(algorithm: &Algorithm) -> Result<(), Error> {
    if *algorithm == Algorithm::EdDSA {
        Ok(())
    } else {
        Err(ErrorKind::InvalidAlgorithm.into())
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    only_eddsa(algorithm)?;
    let key = SigningKey::from_pkcs8_der(key.inner()).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(EdSigner(key)))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    only_eddsa(algorithm)?;
    let bytes: &[u8; 32] = key
        .as_bytes()
        .try_into()
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(EdVerifier(key)))
}

fn digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    match hash {
        ThumbprintHash::SHA256 => sha2::Sha256::digest(data).to_vec(),
        ThumbprintHash::SHA384 => sha2::Sha384::digest(data).to_vec(),
        ThumbprintHash::SHA512 => sha2::Sha512::digest(data).to_vec(),
    }
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: |_| Err(ErrorKind::InvalidKeyFormat.into()),
        extract_ec_public_key_coordinates: |_, _| Err(ErrorKind::InvalidKeyFormat.into()),
        compute_digest: digest,
    },
};

/// Makes this the process's provider; every use of jsonwebtoken goes through here first.
pub(super) fn install() {
    static ONCE: Once = Once::new();
    // Nothing else in the process installs one, so this cannot fail.
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}
