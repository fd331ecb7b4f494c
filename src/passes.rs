//! Queue passes: EdDSA (Ed25519) JWTs handed to a buyer admitted from a
//! sale's virtual queue, naming the buyer (`sub`) and the sale (`sale`).
//!
//! Invariants:
//! - The algorithm is pinned to EdDSA; `none`, HS256 and every other
//!   algorithm are refused, whatever the header says.
//! - A pass names its key by `kid`, and only the current key or one of the
//!   configured previous keys is accepted. Previous keys only verify: passes
//!   they signed keep working until they expire, so a key can be rotated
//!   during a sale without sending admitted buyers back to the queue.
//! - `sub`, `sale`, `iat`, `exp` and `jti` are required; the clock leeway on
//!   `exp` is [`LEEWAY_SECONDS`].
//! - Successful verifications are cached under a keyed digest of the exact
//!   token string ([`crate::tokens::cache_key`]), as access tokens are (a
//!   pass is presented on every request of a checkout, and Ed25519
//!   verification is the costly part); a cache hit still checks `exp`.
//!   Failures are never cached, so a refused token costs the full check
//!   every time it comes.
//! - Signed passes are cached by their claims: an admitted buyer's polls
//!   all render the same claims, which sign to the same token (Ed25519 is
//!   deterministic), so each pass is signed once. A pass signed here also
//!   goes straight into the verified cache, so the buyer's first hold on
//!   this replica skips the signature check.
//! - Every replica of a deployment must share the keys: in production they
//!   come from the environment, in development a seed is shared through
//!   Redis.

use std::collections::HashMap;

use anyhow::{bail, Context};
use base64::{
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
    Engine,
};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use fred::{
    clients::Pool,
    interfaces::KeysInterface,
    types::{SetOptions, Value},
};
use jsonwebtoken::{
    decode, decode_header, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header,
    Validation,
};
use quick_cache::sync::Cache;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::PassSettings;
use crate::tokens::{cache_key, unix_now, CacheKey, MAX_USER_ID_LEN};

/// Clock leeway on `exp`, in seconds. Replicas run NTP; a pass lives minutes,
/// so a larger leeway would only stretch passes that should be over.
pub const LEEWAY_SECONDS: u64 = 2;

/// Verified passes remembered at once: about one per buyer in checkout across
/// the live sales of one replica.
const CACHE_CAPACITY: usize = 100_000;

/// Signed passes remembered at once: the buyers admitted in the last minutes
/// who still poll (about 10 MB when full).
const SIGNED_CAPACITY: usize = 20_000;

/// A pass is a few hundred bytes; anything far longer is refused before any
/// decoding work is spent on it.
const MAX_PASS_LEN: usize = 4096;

/// Longest `sale` and `jti` accepted: like user ids, they end up in Redis keys.
const MAX_ID_LEN: usize = 128;

/// Where development replicas agree on one signing seed.
const DEV_KEY: &str = "flashsale:dev:pass_signing_key";

const ENV_SIGNING_KEY: &str = "PASS_SIGNING_KEY";
const ENV_KEY_ID: &str = "PASS_KEY_ID";
const ENV_PREVIOUS_KEYS: &str = "PASS_PREVIOUS_KEYS";

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PassClaims {
    /// The buyer admitted.
    pub sub: String,
    /// The sale the buyer was admitted to.
    pub sale: String,
    pub iat: u64,
    pub exp: u64,
    /// Unique per pass, so a pass can be revoked or counted once.
    pub jti: String,
}

/// Why a pass is refused. `Invalid` carries a short reason fit for a client:
/// it never includes key material or the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    #[error("queue pass is invalid: {0}")]
    Invalid(String),
    #[error("queue pass has expired")]
    Expired,
}

fn invalid(reason: &str) -> PassError {
    PassError::Invalid(reason.to_owned())
}

/// An Ed25519 private key and the `kid` that names it.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// The key whose 32-byte seed (RFC 8032 secret key) is `seed`.
    pub fn from_seed(kid: impl Into<String>, seed: [u8; 32]) -> Self {
        Self {
            kid: kid.into(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// A fresh random key. `rand::rng()` is a CSPRNG seeded from the OS.
    pub fn generate(kid: impl Into<String>) -> Self {
        Self::from_seed(kid, random_seed())
    }

    /// The public half, under the same kid.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            kid: self.kid.clone(),
            key: self.key.verifying_key(),
        }
    }
}

// By hand, so the secret can never reach a log through `{:?}`.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("x", &self.verifying_key().x())
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key and the `kid` that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    pub kid: String,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifyingKey {
    /// The key whose JWK `x` (base64url of the 32 public key bytes) is `x`.
    pub fn from_x(kid: impl Into<String>, x: &str) -> anyhow::Result<Self> {
        let bytes: [u8; 32] = decode_b64(x)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("Ed25519 public key must be the base64url of 32 bytes")?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .ok()
            .context("Ed25519 public key is not a valid curve point")?;
        // A small-order key lets anyone forge signatures that it "verifies".
        if key.is_weak() {
            bail!("Ed25519 public key is of small order");
        }
        Ok(Self {
            kid: kid.into(),
            key,
        })
    }

    /// The JWK `x`: base64url, no padding, of the 32 public key bytes.
    pub fn x(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.as_bytes())
    }
}

pub struct PassKeys {
    current_kid: String,
    encoding: EncodingKey,
    /// Every key accepted, current and previous, by kid.
    decoding: HashMap<String, DecodingKey>,
    /// Built once: the key set does not change for the life of a `PassKeys`.
    jwks: serde_json::Value,
    validation: Validation,
    /// Verified passes by the digest of the token. Per instance, so a
    /// rotation (a new `PassKeys`) never serves a pass signed by a key it
    /// dropped.
    cache: Cache<CacheKey, PassClaims>,
    /// Passes signed by the current key, by their claims.
    signed: Cache<PassClaims, String>,
}

impl PassKeys {
    /// Keys as configured (`PASS_SIGNING_KEY`, `PASS_KEY_ID`,
    /// `PASS_PREVIOUS_KEYS`, read into [`PassSettings`]); when no signing key
    /// is set, a development key shared through Redis.
    pub async fn from_settings(redis: &Pool, settings: &PassSettings) -> anyhow::Result<Self> {
        let PassSettings {
            signing_key,
            key_id,
            previous_keys,
        } = settings.clone();
        let secret = match signing_key {
            Some(value) => parse_signing_key(&value)
                .with_context(|| format!("{ENV_SIGNING_KEY} is malformed"))?,
            None => {
                tracing::warn!(
                    redis_key = DEV_KEY,
                    "{ENV_SIGNING_KEY} is unset: signing queue passes with a development key \
                     shared through Redis; set it in production"
                );
                dev_signing_key(redis).await?
            }
        };
        let kid = match key_id {
            Some(kid) if kid.trim().is_empty() => bail!("{ENV_KEY_ID} is set but empty"),
            Some(kid) => kid.trim().to_owned(),
            None => default_kid(&secret.verifying_key()),
        };
        let previous = match previous_keys {
            Some(list) => parse_previous_keys(&list)
                .with_context(|| format!("{ENV_PREVIOUS_KEYS} is malformed"))?,
            None => Vec::new(),
        };
        Self::new(SigningKey { kid, key: secret }, previous)
    }

    /// Build from explicit material (used by tests and by `from_settings`).
    /// Kids must be non-empty and distinct: a kid naming two keys would make
    /// which one verifies a pass a matter of chance.
    pub fn new(current: SigningKey, previous: Vec<VerifyingKey>) -> anyhow::Result<Self> {
        crate::jwt_crypto::install();
        let der = current
            .key
            .to_pkcs8_der()
            .ok()
            .context("encode the pass signing key as PKCS#8")?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());

        let mut decoding = HashMap::with_capacity(previous.len() + 1);
        let mut jwk_list = Vec::with_capacity(previous.len() + 1);
        for key in std::iter::once(current.verifying_key()).chain(previous) {
            if key.kid.is_empty() {
                bail!("a queue pass key has an empty kid");
            }
            if decoding.contains_key(&key.kid) {
                bail!("queue pass kid `{}` names more than one key", key.kid);
            }
            jwk_list.push(jwk(&key));
            // The raw 32 bytes: what `jwt_crypto` reads for Ed.
            decoding.insert(
                key.kid.clone(),
                DecodingKey::from_ed_der(key.key.as_bytes()),
            );
        }

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Passes carry no `aud`; one that does was not minted here.
        validation.validate_aud = false;

        Ok(Self {
            current_kid: current.kid,
            encoding,
            decoding,
            jwks: serde_json::json!({ "keys": jwk_list }),
            validation,
            cache: Cache::new(CACHE_CAPACITY),
            signed: Cache::new(SIGNED_CAPACITY),
        })
    }

    /// Signs `claims` with the current key (header: alg EdDSA, typ JWT, kid).
    /// Claims that `verify` would refuse are refused here, so no unusable pass
    /// is ever handed out.
    pub fn sign(&self, claims: &PassClaims) -> anyhow::Result<String> {
        check_claims(claims).map_err(|e| anyhow::anyhow!("cannot sign queue pass: {e}"))?;
        if let Some(token) = self.signed.get(claims) {
            return Ok(token);
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current_kid.clone());
        let token = encode(&header, claims, &self.encoding).context("sign queue pass")?;
        self.signed.insert(claims.clone(), token.clone());
        // Signed just now with the current key, from checked claims: exactly
        // what `verify` would accept, until `exp`.
        if !is_expired(claims.exp, unix_now()) {
            self.cache.insert(cache_key(&token), claims.clone());
        }
        Ok(token)
    }

    /// Verifies a pass, returning its claims or why it is refused.
    pub fn verify(&self, token: &str) -> Result<PassClaims, PassError> {
        if token.len() > MAX_PASS_LEN {
            return Err(invalid("queue pass is too long"));
        }
        let now = unix_now();
        let cached_as = cache_key(token);
        if let Some(claims) = self.cache.get(&cached_as) {
            if is_expired(claims.exp, now) {
                // It can never verify again; free its slot for a live pass.
                self.cache.remove(&cached_as);
                return Err(PassError::Expired);
            }
            return Ok(claims);
        }

        let header = decode_header(token).map_err(|_| invalid("queue pass is malformed"))?;
        // `decode` checks this too; refusing first keeps the kid lookup and
        // the key family out of it.
        if header.alg != Algorithm::EdDSA {
            return Err(invalid("queue pass uses an algorithm that is not accepted"));
        }
        // RFC 7515: a `crit` extension we do not understand must be refused,
        // and we understand none.
        if header.crit.is_some() {
            return Err(invalid("queue pass has critical header extensions"));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("queue pass has no key id"))?;
        let key = self
            .decoding
            .get(&kid)
            .ok_or_else(|| invalid("queue pass is signed by an unknown key"))?;

        let claims = decode::<PassClaims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => PassError::Expired,
                ErrorKind::InvalidSignature => invalid("queue pass signature is invalid"),
                ErrorKind::InvalidAlgorithm => {
                    invalid("queue pass uses an algorithm that is not accepted")
                }
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                    invalid("queue pass lacks a required claim or has a malformed one")
                }
                _ => invalid("queue pass is malformed"),
            })?
            .claims;
        check_claims(&claims).map_err(PassError::Invalid)?;
        // `decode` judged `exp` by its own reading of the clock; judge it by
        // ours too, so the cache never holds a pass that a hit would refuse
        // the same second.
        if is_expired(claims.exp, now) {
            return Err(PassError::Expired);
        }

        self.cache.insert(cached_as, claims.clone());
        Ok(claims)
    }

    /// The public keys, current first, as a JWK Set for other services that
    /// check passes.
    pub fn jwks(&self) -> serde_json::Value {
        self.jwks.clone()
    }

    pub fn current_kid(&self) -> &str {
        &self.current_kid
    }
}

// By hand: the encoding key is secret, and the cache is noise.
impl std::fmt::Debug for PassKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.decoding.keys().collect();
        kids.sort();
        f.debug_struct("PassKeys")
            .field("current_kid", &self.current_kid)
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

fn is_expired(exp: u64, now: u64) -> bool {
    exp.saturating_add(LEEWAY_SECONDS) < now
}

/// The shape rules a pass's claims follow beyond being present: ids that can
/// safely end a Redis key or fill a column.
fn check_claims(claims: &PassClaims) -> Result<(), String> {
    fn usable(id: &str, max: usize) -> bool {
        !id.is_empty() && id.len() <= max && !id.chars().any(char::is_control)
    }
    if !usable(&claims.sub, MAX_USER_ID_LEN) {
        return Err("queue pass has an unusable `sub`".into());
    }
    if !usable(&claims.sale, MAX_ID_LEN) {
        return Err("queue pass has an unusable `sale`".into());
    }
    if !usable(&claims.jti, MAX_ID_LEN) {
        return Err("queue pass has an unusable `jti`".into());
    }
    Ok(())
}

fn jwk(key: &VerifyingKey) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": key.x(),
        "kid": key.kid,
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// First 16 hex characters of SHA-256 of the public key: stable for a key,
/// so replicas sharing a key agree on its kid without being told.
fn default_kid(key: &ed25519_dalek::VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    seed
}

/// Base64 in either alphabet, padded or not: keys are pasted into
/// environments by hand, and both forms circulate.
fn decode_b64(value: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let trimmed = value.trim().trim_end_matches('=');
    if trimmed.contains(['+', '/']) {
        STANDARD_NO_PAD.decode(trimmed)
    } else {
        URL_SAFE_NO_PAD.decode(trimmed)
    }
}

/// A PKCS#8 PEM private key, or the base64 of a 32-byte seed. Errors never
/// quote the value: it is a secret.
fn parse_signing_key(value: &str) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let value = value.trim();
    if value.starts_with("-----BEGIN") {
        // Environments often carry a PEM on one line with `\n` escapes.
        let pem = value.replace("\\n", "\n");
        return ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .ok()
            .context("expected an Ed25519 PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)");
    }
    let seed: [u8; 32] = decode_b64(value)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("expected a PKCS#8 PEM or the base64 of a 32-byte Ed25519 seed")?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// `kid=x` pairs separated by commas; empty entries (a trailing comma) are
/// skipped.
fn parse_previous_keys(list: &str) -> anyhow::Result<Vec<VerifyingKey>> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (kid, x) = entry
                .split_once('=')
                .context("expected comma-separated `kid=x` pairs")?;
            let kid = kid.trim();
            if kid.is_empty() {
                bail!("an entry has an empty kid");
            }
            VerifyingKey::from_x(kid, x.trim()).with_context(|| format!("key `{kid}`"))
        })
        .collect()
}

/// The development seed every replica of a local run shares: the first
/// replica to start stores one, the others (and later runs) read it back.
async fn dev_signing_key(redis: &Pool) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let candidate = STANDARD_NO_PAD.encode(random_seed());
    let _: Value = redis
        .set(DEV_KEY, candidate, None, Some(SetOptions::NX), false)
        .await
        .with_context(|| format!("store the development pass key at {DEV_KEY}"))?;
    // Read back rather than trust our own candidate: another replica may have
    // won the race, and its key is the one everyone must use.
    let stored: Option<String> = redis
        .get(DEV_KEY)
        .await
        .with_context(|| format!("read the development pass key at {DEV_KEY}"))?;
    let stored =
        stored.with_context(|| format!("the development pass key at {DEV_KEY} vanished; retry"))?;
    parse_signing_key(&stored)
        .with_context(|| format!("the development pass key at {DEV_KEY} is malformed"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

    use super::*;

    fn key(kid: &str, byte: u8) -> SigningKey {
        SigningKey::from_seed(kid, [byte; 32])
    }

    fn keys() -> PassKeys {
        PassKeys::new(key("k1", 1), Vec::new()).expect("valid keys")
    }

    fn claims_expiring_in(seconds: i64) -> PassClaims {
        let now = unix_now();
        PassClaims {
            sub: "buyer-1".into(),
            sale: "0b9d2c36-7a1e-4f4e-9a57-3c2f1d7e8a90".into(),
            iat: now.saturating_sub(60),
            exp: now.saturating_add_signed(seconds),
            jti: "pass-1".into(),
        }
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    fn header_of(token: &str) -> serde_json::Value {
        let part = token.split('.').next().expect("token has a header");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url header"))
            .expect("JSON header")
    }

    /// Refused as `Invalid`, for a reason mentioning `why`.
    fn assert_invalid(result: Result<PassClaims, PassError>, why: &str) {
        assert!(
            matches!(&result, Err(PassError::Invalid(reason)) if reason.contains(why)),
            "expected Invalid({why}), got {result:?}"
        );
    }

    #[test]
    fn a_signed_pass_verifies_to_the_same_claims() {
        let keys = keys();
        let claims = claims_expiring_in(300);
        let token = keys.sign(&claims).expect("sign");
        assert_eq!(keys.verify(&token), Ok(claims.clone()));
        // Again, now from the cache.
        assert_eq!(keys.verify(&token), Ok(claims));
    }

    #[test]
    fn a_signed_pass_has_an_eddsa_header_naming_the_current_kid() {
        let keys = keys();
        let token = keys.sign(&claims_expiring_in(300)).expect("sign");
        let header = header_of(&token);
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], keys.current_kid());
    }

    #[test]
    fn an_expired_pass_is_expired() {
        let keys = keys();
        let token = keys.sign(&claims_expiring_in(-10)).expect("sign");
        assert_eq!(keys.verify(&token), Err(PassError::Expired));
    }

    #[test]
    fn a_pass_expired_within_the_leeway_still_verifies() {
        let keys = keys();
        let token = keys.sign(&claims_expiring_in(-1)).expect("sign");
        assert!(keys.verify(&token).is_ok());
    }

    #[test]
    fn an_expired_pass_found_in_the_cache_is_expired_and_dropped() {
        let keys = keys();
        let token = keys.sign(&claims_expiring_in(-10)).expect("sign");
        // As if it had been verified while still live.
        keys.cache
            .insert(cache_key(&token), claims_expiring_in(-10));
        assert_eq!(keys.verify(&token), Err(PassError::Expired));
        assert!(keys.cache.get(&cache_key(&token)).is_none());
    }

    #[test]
    fn the_same_claims_are_signed_once_to_the_same_pass() {
        let keys = keys();
        let claims = claims_expiring_in(300);
        let first = keys.sign(&claims).expect("sign");
        assert_eq!(keys.sign(&claims).expect("sign again"), first);
        assert_eq!(keys.signed.len(), 1);
        // Other claims, another pass.
        let other = PassClaims {
            jti: "pass-2".into(),
            ..claims
        };
        assert_ne!(keys.sign(&other).expect("sign other"), first);
        assert_eq!(keys.signed.len(), 2);
    }

    #[test]
    fn a_pass_signed_here_is_already_verified_and_an_expired_one_is_not() {
        let keys = keys();
        let claims = claims_expiring_in(300);
        let token = keys.sign(&claims).expect("sign");
        assert_eq!(keys.cache.get(&cache_key(&token)), Some(claims));
        let expired = keys.sign(&claims_expiring_in(-10)).expect("sign");
        assert!(keys.cache.get(&cache_key(&expired)).is_none());
        assert_eq!(keys.verify(&expired), Err(PassError::Expired));
    }

    #[test]
    fn a_verified_pass_is_served_from_the_cache() {
        // Signed by another replica with the same key.
        let token = keys().sign(&claims_expiring_in(300)).expect("sign");
        let keys = keys();
        assert_eq!(keys.cache.len(), 0);
        keys.verify(&token).expect("verifies");
        assert_eq!(keys.cache.len(), 1);
    }

    #[test]
    fn a_refused_pass_is_not_cached() {
        let token = keys().sign(&claims_expiring_in(-10)).expect("sign");
        let keys = keys();
        let _ = keys.verify(&token);
        let _ = keys.verify("not.a.pass");
        assert_eq!(keys.cache.len(), 0);
    }

    #[test]
    fn an_alg_none_pass_is_invalid() {
        let keys = keys();
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": keys.current_kid()});
        let payload = serde_json::to_value(claims_expiring_in(300)).expect("claims");
        let token = format!("{}.{}.", b64(&header), b64(&payload));
        assert_invalid(keys.verify(&token), "malformed");
    }

    #[test]
    fn an_hs256_pass_with_the_current_kid_is_invalid() {
        let keys = keys();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.current_kid().to_owned());
        // The classic confusion: HMAC keyed with the public key's bytes.
        let public = key("k1", 1).verifying_key();
        let secret = EncodingKey::from_secret(public.key.as_bytes());
        let token = encode(&header, &claims_expiring_in(300), &secret).expect("sign HS256");
        assert_invalid(keys.verify(&token), "algorithm");
    }

    #[test]
    fn a_pass_signed_by_another_key_under_the_current_kid_is_invalid() {
        let keys = keys();
        let impostor = PassKeys::new(key("k1", 2), Vec::new()).expect("valid keys");
        let token = impostor.sign(&claims_expiring_in(300)).expect("sign");
        assert_invalid(keys.verify(&token), "signature");
    }

    #[test]
    fn a_pass_with_a_tampered_payload_is_invalid() {
        let keys = keys();
        let token = keys.sign(&claims_expiring_in(300)).expect("sign");
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims_expiring_in(300);
        forged.sub = "someone-else".into();
        let payload = b64(&serde_json::to_value(forged).expect("claims"));
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_invalid(keys.verify(&tampered), "signature");
    }

    #[test]
    fn a_pass_with_an_unknown_kid_is_invalid() {
        let keys = keys();
        let stranger = PassKeys::new(key("k9", 1), Vec::new()).expect("valid keys");
        let token = stranger.sign(&claims_expiring_in(300)).expect("sign");
        assert_invalid(keys.verify(&token), "unknown key");
    }

    #[test]
    fn a_pass_without_a_kid_is_invalid() {
        let keys = keys();
        let der = key("k1", 1).key.to_pkcs8_der().expect("pkcs8");
        let token = encode(
            &Header::new(Algorithm::EdDSA),
            &claims_expiring_in(300),
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .expect("sign");
        assert_invalid(keys.verify(&token), "no key id");
    }

    #[test]
    fn a_pass_lacking_a_required_claim_is_invalid() {
        let keys = keys();
        let der = key("k1", 1).key.to_pkcs8_der().expect("pkcs8");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.current_kid().to_owned());
        let mut payload = serde_json::to_value(claims_expiring_in(300)).expect("claims");
        payload
            .as_object_mut()
            .expect("claims are an object")
            .remove("jti");
        let token =
            encode(&header, &payload, &EncodingKey::from_ed_der(der.as_bytes())).expect("sign");
        assert_invalid(keys.verify(&token), "required claim");
    }

    #[test]
    fn garbage_is_invalid() {
        let keys = keys();
        for token in ["", "abc", "a.b.c", "..", &"x".repeat(MAX_PASS_LEN + 1)] {
            assert_invalid(keys.verify(token), "");
        }
    }

    #[test]
    fn claims_that_would_not_verify_are_not_signed() {
        let keys = keys();
        let mut claims = claims_expiring_in(300);
        claims.sale = String::new();
        assert!(keys.sign(&claims).is_err());
    }

    #[test]
    fn a_pass_signed_by_a_rotated_key_still_verifies_and_the_jwks_lists_both_keys() {
        let old = key("old", 1);
        let before = PassKeys::new(old.clone(), Vec::new()).expect("valid keys");
        // One set of claims: two calls a second apart would differ in `exp`.
        let claims = claims_expiring_in(300);
        let token = before.sign(&claims).expect("sign");

        let after = PassKeys::new(key("new", 2), vec![old.verifying_key()]).expect("valid keys");
        assert_eq!(after.current_kid(), "new");
        assert_eq!(after.verify(&token), Ok(claims));

        let fresh = after.sign(&claims_expiring_in(300)).expect("sign");
        assert_eq!(header_of(&fresh)["kid"], "new");
        // The old key only verifies: the old instance cannot check new passes.
        assert_invalid(before.verify(&fresh), "unknown key");

        let jwks = after.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid"))
            .collect();
        assert_eq!(kids, ["new", "old"]);
    }

    #[test]
    fn the_jwks_x_decodes_to_the_32_byte_public_key() {
        let keys = keys();
        let jwks = keys.jwks();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        let x = jwk["x"].as_str().expect("x is a string");
        assert!(!x.contains('='), "x must not be padded");
        let bytes = URL_SAFE_NO_PAD.decode(x).expect("base64url x");
        assert_eq!(bytes.len(), 32);
        assert_eq!(
            VerifyingKey::from_x("k1", x).expect("x parses"),
            key("k1", 1).verifying_key()
        );
    }

    #[test]
    fn two_keys_under_one_kid_are_refused() {
        let result = PassKeys::new(key("k1", 1), vec![key("k1", 2).verifying_key()]);
        assert!(result.is_err());
    }

    #[test]
    fn a_malformed_public_key_is_refused() {
        assert!(VerifyingKey::from_x("k", "c2hvcnQ").is_err());
        assert!(VerifyingKey::from_x("k", "not base64!").is_err());
        // The identity point: of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(VerifyingKey::from_x("k", &URL_SAFE_NO_PAD.encode(identity)).is_err());
    }

    #[test]
    fn a_signing_key_parses_from_a_seed_in_either_base64_alphabet_or_a_pem() {
        let seed = [0xfb; 32];
        let expected = ed25519_dalek::SigningKey::from_bytes(&seed);
        let standard = base64::engine::general_purpose::STANDARD.encode(seed);
        let url_safe = URL_SAFE_NO_PAD.encode(seed);
        assert!(standard.contains(['+', '/']) && url_safe.contains(['-', '_']));
        let pem = expected.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let escaped = pem.replace('\n', "\\n");
        for value in [standard.as_str(), url_safe.as_str(), pem.as_str(), &escaped] {
            let parsed = parse_signing_key(value).expect("parses");
            assert_eq!(parsed.to_bytes(), expected.to_bytes());
        }
    }

    #[tokio::test]
    async fn a_malformed_setting_is_an_error_naming_its_variable() {
        // Never reaches Redis: every case fails on parsing, or succeeds
        // without the development path.
        let redis = crate::redis::connect(&redis_url(), 1, Duration::from_secs(2))
            .await
            .expect("redis pool");
        let seed = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let cases = [
            (Some("c2hvcnQ".to_owned()), None, None, ENV_SIGNING_KEY),
            (Some(String::new()), None, None, ENV_SIGNING_KEY),
            (Some(seed.clone()), Some(" ".to_owned()), None, ENV_KEY_ID),
            (
                Some(seed.clone()),
                None,
                Some("nokid".into()),
                ENV_PREVIOUS_KEYS,
            ),
            (
                Some(seed.clone()),
                None,
                Some("a=xyz".into()),
                ENV_PREVIOUS_KEYS,
            ),
        ];
        for (signing, kid, previous, var) in cases {
            let err = PassKeys::from_settings(
                &redis,
                &PassSettings {
                    signing_key: signing,
                    key_id: kid,
                    previous_keys: previous,
                },
            )
            .await
            .expect_err("malformed setting");
            assert!(format!("{err:#}").contains(var), "{err:#} names {var}");
        }

        let previous = format!("old={},", key("old", 3).verifying_key().x());
        let keys = PassKeys::from_settings(
            &redis,
            &PassSettings {
                signing_key: Some(seed),
                key_id: None,
                previous_keys: Some(previous),
            },
        )
        .await
        .expect("valid settings");
        let kid = keys.current_kid();
        assert_eq!(kid.len(), 16);
        assert!(kid.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(keys.jwks()["keys"][1]["kid"], "old");
    }

    fn redis_url() -> String {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    #[tokio::test]
    async fn development_replicas_share_one_key_through_redis() {
        let redis = crate::redis::connect(&redis_url(), 2, Duration::from_secs(2))
            .await
            .expect("redis pool");
        // Two replicas starting at once: whichever wins the SET NX, both end
        // up with the same key.
        let (a, b) = tokio::join!(
            PassKeys::from_settings(
                &redis,
                &PassSettings {
                    signing_key: None,
                    key_id: None,
                    previous_keys: None,
                },
            ),
            PassKeys::from_settings(
                &redis,
                &PassSettings {
                    signing_key: None,
                    key_id: None,
                    previous_keys: None,
                },
            ),
        );
        let (a, b) = (a.expect("replica a"), b.expect("replica b"));
        assert_eq!(a.current_kid(), b.current_kid());
        let token = a.sign(&claims_expiring_in(300)).expect("sign");
        assert!(b.verify(&token).is_ok());
    }

    #[test]
    fn pass_keys_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<PassKeys>();
    }
}
