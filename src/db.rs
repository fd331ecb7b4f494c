//! Postgres: the pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::{postgres::PgPoolOptions, PgPool};

/// The schema in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pool that gives up on a connection after `timeout`, so a Postgres that
/// is down turns into a quick `503` rather than a hung request.
pub async fn connect(url: &str, max_connections: u32, timeout: Duration) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .connect_lazy(url)
        .context("parse DATABASE_URL")
}

pub async fn migrate(db: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(db).await.context("apply migrations")
}
