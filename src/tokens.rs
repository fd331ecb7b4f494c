//! Access tokens: HS256 JWTs naming a user and a role.
//!
//! The algorithm is pinned (a token claiming `none` or any other algorithm is
//! refused), `exp` is required, the clock leeway is a few seconds, and `iss`
//! and `aud` are checked when configured. The same keys verify tokens minted
//! by `flashsale token` and by an outside identity provider sharing the
//! secret.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use crate::config::JwtConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl AccessTokens {
    pub fn new(cfg: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.leeway_seconds;
        validation.set_required_spec_claims(&["exp", "sub"]);
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

    /// Verifies a token, returning who it names or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
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
        Ok(Identity {
            user_id: sub,
            role: data.claims.role,
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
