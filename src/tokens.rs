//! Access tokens: HS256 JWTs naming a user and a role.
//!
//! The algorithm is pinned (a token claiming `none` or any other algorithm is
//! refused), `exp` is required, the clock leeway is a few seconds, and `iss`
//! and `aud`, when configured, are required and checked. The same keys verify tokens minted
//! by `flashsale token` and by an outside identity provider sharing the
//! secret.
//!
//! A buyer in the queue presents the same token every second or so, so
//! verified tokens are cached under a digest of their exact string (a hit
//! still checks `exp`); refusals are never cached. See [`cache_key`].

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::config::JwtConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Buyer,
    Organizer,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "buyer" => Ok(Role::Buyer),
            "organizer" => Ok(Role::Organizer),
            other => Err(format!(
                "role must be `buyer` or `organizer`, not `{other}`"
            )),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// A verified caller.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user_id: String,
    pub role: Role,
}

/// Longest user id accepted: ids end Redis keys and fill Postgres columns.
pub const MAX_USER_ID_LEN: usize = 128;

/// Verified tokens kept: enough for every buyer of a large sale polling at
/// once (about 150 bytes each).
const CACHE_CAPACITY: usize = 200_000;

pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    /// Verified tokens: who they name and until when.
    cache: Cache<CacheKey, (Identity, u64)>,
}

impl AccessTokens {
    pub fn new(cfg: &JwtConfig) -> Self {
        crate::jwt_crypto::install();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.leeway_seconds;
        // jsonwebtoken checks `iss` and `aud` only when a token carries
        // them: configured, they must be required too, or a token without
        // them passes.
        let mut required = vec!["exp", "sub"];
        if cfg.issuer.is_some() {
            required.push("iss");
        }
        if cfg.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &cfg.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &cfg.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Self {
            encoding: EncodingKey::from_secret(cfg.secret.as_bytes()),
            decoding: DecodingKey::from_secret(cfg.secret.as_bytes()),
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_seconds,
            cache: Cache::new(CACHE_CAPACITY),
        }
    }

    /// Signs a token for `sub` with `role`, valid for `ttl_seconds`.
    pub fn issue(&self, sub: &str, role: Role, ttl_seconds: u64) -> anyhow::Result<String> {
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp: now + ttl_seconds,
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        Ok(encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// `exp` judged as `decode` judges it: past, beyond the leeway.
    fn expired(&self, exp: u64, now: u64) -> bool {
        exp.saturating_add(self.leeway) < now
    }

    /// Verifies a token, returning who it names or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let now = unix_now();
        let key = cache_key(token);
        if let Some((identity, exp)) = self.cache.get(&key) {
            if self.expired(exp, now) {
                self.cache.remove(&key);
                return Err("access token expired".into());
            }
            return Ok(identity);
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => "access token expired",
                ErrorKind::InvalidIssuer => "access token has the wrong issuer",
                ErrorKind::InvalidAudience => "access token has the wrong audience",
                ErrorKind::MissingRequiredClaim(_) => "access token lacks a required claim",
                ErrorKind::InvalidAlgorithm => {
                    "access token uses an algorithm that is not accepted"
                }
                ErrorKind::InvalidSignature => "access token signature is invalid",
                _ => "access token is malformed",
            }
            .to_owned()
        })?;
        let sub = data.claims.sub;
        if sub.is_empty() || sub.len() > MAX_USER_ID_LEN || sub.chars().any(char::is_control) {
            return Err("access token has an unusable `sub`".into());
        }
        let identity = Identity {
            user_id: sub,
            role: data.claims.role,
        };
        // Judged by our clock too, so a hit never accepts what `decode`
        // would have refused the same second.
        if self.expired(data.claims.exp, now) {
            return Err("access token expired".into());
        }
        self.cache.insert(key, (identity.clone(), data.claims.exp));
        Ok(identity)
    }
}

/// What a verified token or pass is cached under (see [`crate::fast`]).
pub use crate::fast::{cache_key, CacheKey};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AccessTokens {
        AccessTokens::new(&JwtConfig {
            secret: "unit-test-secret-unit-test-secret-0123".into(),
            leeway_seconds: 5,
            issuer: None,
            audience: None,
        })
    }

    #[test]
    fn a_verified_token_is_served_from_the_cache() {
        let t = tokens();
        let token = t.issue("fan-1", Role::Buyer, 60).unwrap();
        assert_eq!(t.verify(&token).unwrap().user_id, "fan-1");
        assert_eq!(t.cache.len(), 1);
        assert_eq!(t.verify(&token).unwrap().user_id, "fan-1");
    }

    #[test]
    fn an_expired_token_found_in_the_cache_is_refused_and_dropped() {
        let t = tokens();
        let token = t.issue("fan-1", Role::Buyer, 60).unwrap();
        let identity = t.verify(&token).unwrap();
        t.cache
            .insert(cache_key(&token), (identity, unix_now() - 10));
        assert_eq!(t.verify(&token).unwrap_err(), "access token expired");
        assert_eq!(t.cache.len(), 0);
    }

    #[test]
    fn a_cached_token_does_not_vouch_for_an_altered_copy() {
        let t = tokens();
        let token = t.issue("fan-1", Role::Buyer, 60).unwrap();
        t.verify(&token).unwrap();
        // Each copy differs from the cached token by one character, in the
        // payload, then in the signature (not a final character, whose low
        // bits base64 may not use).
        let signature_at = token.rfind('.').unwrap() + 1;
        for at in [signature_at - 6, signature_at + 5] {
            let mut altered = token.clone().into_bytes();
            altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            assert_ne!(cache_key(&altered), cache_key(&token));
            assert!(t.verify(&altered).is_err(), "{altered} was accepted");
        }
        assert_eq!(t.cache.len(), 1);
    }

    #[test]
    fn a_refused_token_is_not_cached() {
        let t = tokens();
        let mut token = t.issue("fan-1", Role::Buyer, 60).unwrap();
        token.push('x');
        assert!(t.verify(&token).is_err());
        assert_eq!(t.cache.len(), 0);
    }
}
