//! Accounts: registration, password checks and login.
//!
//! Passwords are hashed with argon2id (the crate's default parameters: 19 MiB,
//! 2 passes) on a blocking thread, never on the async runtime. Emails are
//! unique ignoring case, enforced by a unique index so two concurrent
//! registrations cannot both win. A login for an unknown email still
//! verifies a hash, so response times do not tell which emails exist.

use std::sync::OnceLock;

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{store::StoreError, tokens::Role};

/// An email address, checked for shape (not deliverability).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, AccountError> {
        let email = raw.trim();
        let bad = || {
            AccountError::InvalidEmail(format!(
                "`{}` is not an email address",
                email.chars().take(64).collect::<String>()
            ))
        };
        if email.len() < 3
            || email.len() > 254
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || local.len() > 64
            || local.contains('@')
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(bad());
        }
        Ok(Self(email.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the policy: 10 to 256 characters, not one
/// character repeated, not one of the most common passwords.
pub struct Password(String);

const COMMON: &[&str] = &[
    "1234567890",
    "12345678910",
    "0123456789",
    "qwertyuiop",
    "password12",
    "password123",
    "iloveyou12",
    "1q2w3e4r5t",
    "qwerty1234",
    "letmein123",
    "welcome123",
    "abcdefghij",
];

impl Password {
    pub fn parse(raw: &str) -> Result<Self, AccountError> {
        let n = raw.chars().count();
        if n < 10 {
            return Err(AccountError::WeakPassword(
                "the password must have at least 10 characters".into(),
            ));
        }
        if n > 256 {
            return Err(AccountError::WeakPassword(
                "the password must have at most 256 characters".into(),
            ));
        }
        let first = raw.chars().next();
        if raw.chars().all(|c| Some(c) == first) || COMMON.contains(&raw.to_lowercase().as_str()) {
            return Err(AccountError::WeakPassword(
                "this password is too easy to guess".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// Why registration or login was refused, or could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    InvalidEmail(String),
    #[error("{0}")]
    WeakPassword(String),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("the email or the password is wrong")]
    InvalidCredentials,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing or verifying a password failed (a thread panicked, or argon2
    /// refused its own parameters): a bug, never the caller's fault.
    #[error("{0:#}")]
    Hashing(anyhow::Error),
}

impl AccountError {
    fn hashing(err: impl Into<anyhow::Error>) -> Self {
        AccountError::Hashing(err.into())
    }
}

impl From<sqlx::Error> for AccountError {
    fn from(err: sqlx::Error) -> Self {
        AccountError::Store(err.into())
    }
}

/// Password hashes computed at once: each takes ~19 MiB and a core for tens
/// of milliseconds, so a login flood must queue here, not exhaust memory.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Hashes on a blocking thread: argon2 is deliberately slow.
async fn hash(password: Password) -> Result<String, AccountError> {
    let _slot = HASHING.acquire().await.map_err(AccountError::hashing)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.0.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(AccountError::hashing)?
    .map_err(|e| AccountError::hashing(anyhow::anyhow!("hash password: {e}")))
}

/// Verifies on a blocking thread. `stored` None: an unknown email, checked
/// against a fixed hash so the time taken is the same.
async fn verify(password: String, stored: Option<String>) -> Result<bool, AccountError> {
    let _slot = HASHING.acquire().await.map_err(AccountError::hashing)?;
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = PasswordHash::new(&phc)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        known && ok
    })
    .await
    .map_err(AccountError::hashing)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"not a real password, only for timing", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Creates an account; `EmailTaken` if the email is in use in any case.
pub async fn register(
    db: &PgPool,
    email: &Email,
    password: Password,
    role: Role,
) -> Result<Uuid, AccountError> {
    let hashed = hash(password).await?;
    let id = Uuid::new_v4();
    let role = match role {
        Role::Buyer => "buyer",
        Role::Organizer => "organizer",
    };
    let inserted = sqlx::query!(
        "INSERT INTO users (id, email, password_hash, role) VALUES ($1, $2, $3, $4)",
        id,
        email.as_str(),
        hashed,
        role,
    )
    .execute(db)
    .await;
    match inserted {
        Ok(_) => Ok(id),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(AccountError::EmailTaken),
        Err(e) => Err(StoreError::from(e).into()),
    }
}

/// Makes sure an account with this email exists with this password and
/// role: creates it, or resets an existing one's (any case of the email).
/// For accounts whose password is handed out, such as the demo's.
pub async fn ensure(
    db: &PgPool,
    email: &Email,
    password: Password,
    role: Role,
) -> Result<Uuid, AccountError> {
    let hashed = hash(password).await?;
    let role = match role {
        Role::Buyer => "buyer",
        Role::Organizer => "organizer",
    };
    let id = sqlx::query_scalar!(
        "INSERT INTO users (id, email, password_hash, role) VALUES ($1, $2, $3, $4)
         ON CONFLICT ((lower(email))) DO UPDATE
            SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role
         RETURNING id",
        Uuid::new_v4(),
        email.as_str(),
        hashed,
        role,
    )
    .fetch_one(db)
    .await?;
    Ok(id)
}

/// The account's id and role when the password is right.
pub async fn login(
    db: &PgPool,
    email: &str,
    password: String,
) -> Result<(Uuid, Role), AccountError> {
    // No stored email has control characters (registration refuses them),
    // and Postgres text cannot even hold a NUL.
    if email.chars().any(char::is_control) || email.len() > 254 {
        let _ = verify(password, None).await?;
        return Err(AccountError::InvalidCredentials);
    }
    let row = sqlx::query!(
        "SELECT id, password_hash, role FROM users WHERE lower(email) = lower($1)",
        email.trim(),
    )
    .fetch_optional(db)
    .await?;
    let (id, stored, role) = match row {
        Some(row) => (Some(row.id), Some(row.password_hash), row.role),
        None => (None, None, String::new()),
    };
    if !verify(password, stored).await? {
        return Err(AccountError::InvalidCredentials);
    }
    let id = id.ok_or(AccountError::InvalidCredentials)?;
    let role = role
        .parse()
        .map_err(|e: String| StoreError::corrupt(anyhow::anyhow!(e)))?;
    Ok((id, role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_for_shape() {
        for ok in ["a@b.co", "Someone.Else+tag@example.com"] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b..co", "a b@c.de", "a@b.co.", "a@@b.co",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weak_passwords_are_refused() {
        for bad in ["short", "aaaaaaaaaaaa", "Password123", "1234567890"] {
            assert!(Password::parse(bad).is_err(), "{bad}");
        }
        assert!(Password::parse("correct horse battery").is_ok());
    }
}
