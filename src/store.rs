//! What can go wrong with a store, as the domain modules report it.
//!
//! Domain modules (`inventory`, `queue`, `sales`, `accounts`) return their
//! own errors, whose store failures are a [`StoreError`]; the HTTP edge turns
//! them into problem details once (`crate::error`): an unreachable store is
//! `503 unavailable`, anything else a logged `500`.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A store answered with what the code cannot read (a damaged key, a
    /// script's unexpected reply): a bug or a damaged store, never the
    /// caller's fault.
    #[error("{0:#}")]
    Corrupt(anyhow::Error),
}

impl StoreError {
    pub fn corrupt(err: impl Into<anyhow::Error>) -> Self {
        StoreError::Corrupt(err.into())
    }
}
