//! The cryptography under `jsonwebtoken`: exactly the two algorithms the
//! service uses, HS256 (access tokens, [`crate::tokens`]) and EdDSA over
//! Ed25519 (queue passes, [`crate::passes`]), on the RustCrypto crates it
//! already depends on.
//!
//! Invariants:
//! - Every other algorithm is refused with `InvalidAlgorithm`, whatever the
//!   key: signing, verifying, and the JWK helpers alike (the RSA and ECDSA
//!   ones refuse; nothing here ever panics for want of a backend).
//! - HS256 and EdDSA behave as jsonwebtoken's own `rust_crypto` backend does
//!   (same crates, same key formats: the secret's bytes for HMAC, PKCS#8 DER
//!   to sign with Ed25519, the 32 public key bytes to verify); the tests
//!   check both against the RFCs' examples.
//! - [`install`] makes this the process's provider, once; the constructors
//!   of [`crate::tokens::AccessTokens`] and [`crate::passes::PassKeys`] call
//!   it, so nothing signs or verifies a token before it is in place.
//!
//! Why not `rust_crypto`: it also brings RSA and ECDSA, which nothing here
//! accepts, and with them the `rsa` crate and its advisory
//! (RUSTSEC-2023-0071).

use ed25519_dalek::pkcs8::DecodePrivateKey;
use hmac::{Hmac, Mac};
use jsonwebtoken::{
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{new_error, ErrorKind, Result},
    jwk::{EllipticCurve, ThumbprintHash},
    signature::{self, Signer, Verifier},
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey,
};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Makes this module the provider `jsonwebtoken` signs and verifies with.
/// Idempotent, and cheap after the first call.
pub fn install() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Refused only if something installed another provider first, or
        // signed or verified before this ran (jsonwebtoken then settles on
        // its default, which panics on use).
        if PROVIDER.install_default().is_err() {
            tracing::error!("a JWT crypto provider was in place before flashsale's");
        }
    });
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(refused()),
        rsa_pub_components_from_public_key: |_| Err(refused()),
        ec_pub_components_from_private_key: |_, _| Err(refused()),
        ed_pub_components_from_private_key,
        compute_digest,
    },
};

fn refused() -> jsonwebtoken::errors::Error {
    new_error(ErrorKind::InvalidAlgorithm)
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    match algorithm {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.family(), key.as_bytes())?)),
        Algorithm::EdDSA => Ok(Box::new(EdDsaSigner::new(key)?)),
        _ => Err(refused()),
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match algorithm {
        Algorithm::HS256 => Ok(Box::new(Hs256::new(key.family(), key.try_get_as_bytes()?)?)),
        Algorithm::EdDSA => Ok(Box::new(EdDsaVerifier::new(key)?)),
        _ => Err(refused()),
    }
}

/// HMAC-SHA-256 keyed with the secret; signs and verifies.
struct Hs256(Hmac<Sha256>);

impl Hs256 {
    fn new(family: AlgorithmFamily, secret: &[u8]) -> Result<Self> {
        if family != AlgorithmFamily::Hmac {
            return Err(new_error(ErrorKind::InvalidKeyFormat));
        }
        Hmac::new_from_slice(secret)
            .map(Self)
            .map_err(|_| new_error(ErrorKind::InvalidKeyFormat))
    }
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        // In constant time.
        mac.verify_slice(signature)
            .map_err(signature::Error::from_source)
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

/// An Ed25519 private key, from the PKCS#8 DER an Ed `EncodingKey` holds.
struct EdDsaSigner(ed25519_dalek::SigningKey);

impl EdDsaSigner {
    fn new(key: &EncodingKey) -> Result<Self> {
        if key.family() != AlgorithmFamily::Ed {
            return Err(new_error(ErrorKind::InvalidKeyFormat));
        }
        ed25519_dalek::SigningKey::from_pkcs8_der(key.as_bytes())
            .map(Self)
            .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))
    }
}

impl Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// An Ed25519 public key, from the first 32 bytes an Ed `DecodingKey` holds.
struct EdDsaVerifier(ed25519_dalek::VerifyingKey);

impl EdDsaVerifier {
    fn new(key: &DecodingKey) -> Result<Self> {
        if key.family() != AlgorithmFamily::Ed {
            return Err(new_error(ErrorKind::InvalidKeyFormat));
        }
        let bytes: &[u8; 32] = key
            .try_get_as_bytes()?
            .get(..32)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| new_error(ErrorKind::InvalidEddsaKey))?;
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))
    }
}

impl Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        self.0
            .verify(msg, &ed25519_dalek::Signature::from_slice(signature)?)
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// The public key (`x`) of an Ed25519 private key in PKCS#8 DER, for a JWK.
fn ed_pub_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => Ok(ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?
            .verifying_key()
            .as_bytes()
            .to_vec()),
        _ => Err(refused()),
    }
}

/// A JWK thumbprint's hash (RFC 7638).
fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    match hash {
        ThumbprintHash::SHA256 => Ok(Sha256::digest(data).to_vec()),
        ThumbprintHash::SHA384 => Ok(Sha384::digest(data).to_vec()),
        ThumbprintHash::SHA512 => Ok(Sha512::digest(data).to_vec()),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{crypto, decode, encode, Header, Validation};

    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// `signing input.signature`, split where the signature starts.
    fn split(jws: &str) -> (&str, &str) {
        jws.rsplit_once('.').unwrap()
    }

    #[test]
    fn hs256_signs_and_verifies_the_example_of_rfc_7515() {
        install();
        // RFC 7515, appendix A.1.
        let key = b64("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow");
        let jws = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let (input, signature) = split(jws);
        let signed = crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(&key),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(signed, signature);
        let verifies = |key: &[u8], signature: &str| {
            crypto::verify(
                signature,
                input.as_bytes(),
                &DecodingKey::from_secret(key),
                Algorithm::HS256,
            )
            .unwrap()
        };
        assert!(verifies(&key, signature));
        assert!(!verifies(b"another key", signature));
        assert!(!verifies(&key, &format!("e{}", &signature[1..])));
    }

    #[test]
    fn eddsa_signs_and_verifies_the_example_of_rfc_8037() {
        install();
        // RFC 8037, appendix A.4 (Ed25519 signatures are deterministic).
        let seed: [u8; 32] = b64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .try_into()
            .unwrap();
        let public = b64("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let jws = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        let (input, signature) = split(jws);
        let der = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_der()
            .unwrap();
        let signed = crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_ed_der(der.as_bytes()),
            Algorithm::EdDSA,
        )
        .unwrap();
        assert_eq!(signed, signature);
        let verifies = |signature: &str| {
            crypto::verify(
                signature,
                input.as_bytes(),
                &DecodingKey::from_ed_der(&public),
                Algorithm::EdDSA,
            )
            .unwrap()
        };
        assert!(verifies(signature));
        assert!(!verifies(&format!("g{}", &signature[1..])));
        assert_eq!(
            ed_pub_components_from_private_key(der.as_bytes(), &EllipticCurve::Ed25519).unwrap(),
            public
        );
    }

    #[test]
    fn every_other_algorithm_is_refused() {
        install();
        let others = [
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ];
        let secret = EncodingKey::from_secret(b"secret");
        for alg in others {
            let err = crypto::sign(b"message", &secret, alg).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm, "{alg:?}");
        }

        // A token whose header says RS256, checked by a validation that
        // would accept RS256 with an RSA key: refused all the same.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"fan-1","exp":4102444800}"#);
        let token = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode([7u8; 256]));
        let rsa_key = DecodingKey::from_rsa_raw_components(&[0xc5; 256], &[1, 0, 1]);
        let err = decode::<serde_json::Value>(&token, &rsa_key, &Validation::new(Algorithm::RS256))
            .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm);

        // Nor can one be made.
        let rsa_key = EncodingKey::from_rsa_der(&[0x30; 64]);
        let err = encode(&Header::new(Algorithm::RS256), &"claims", &rsa_key).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm);
    }

    #[test]
    fn a_key_of_the_wrong_family_or_length_is_refused() {
        install();
        let secret = EncodingKey::from_secret(b"secret");
        let err = crypto::sign(b"message", &secret, Algorithm::EdDSA).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidKeyFormat);
        let short = DecodingKey::from_ed_der(&[1; 16]);
        let err = crypto::verify("AA", b"message", &short, Algorithm::EdDSA).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidEddsaKey);
    }
}
