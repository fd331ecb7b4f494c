//! The stores a test runs against: the machine's Postgres (a fresh database
//! per test) and Redis (each sale has its own keys), and the service's
//! configuration pointed at them.

use std::{sync::Arc, time::Duration};

use flashsale::{
    config::{Config, JwtConfig, Vars},
    scripts::Scripts,
};
use fred::clients::Pool;
use sqlx::PgPool;

/// The secret the tests' access tokens are signed with.
pub const JWT_SECRET: &str = "test-secret-that-is-long-enough-for-hs256-0123456789";

/// A variable of the test's environment, or `default`.
pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The machine's Postgres, as scripts/test exports it.
pub fn database_url() -> String {
    env(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/flashsale",
    )
}

/// The machine's Redis, shared by tests that touch only their own sales.
pub fn redis_url() -> String {
    env("REDIS_URL", "redis://127.0.0.1:6379")
}

/// Creates an empty, migrated database of its own for one test; returns the
/// pool and its URL. scripts/test drops those of earlier runs.
pub async fn fresh_database() -> (PgPool, String) {
    let base = database_url();
    let admin = PgPool::connect(&base)
        .await
        .expect("connect to DATABASE_URL");
    let name = format!("fs_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let url = match base.rfind('/') {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => panic!("DATABASE_URL has no database name"),
    };
    let db = PgPool::connect(&url)
        .await
        .expect("connect to test database");
    flashsale::db::migrate(&db)
        .await
        .expect("migrate test database");
    (db, url)
}

/// A pool of two connections to the Redis at `url`.
pub async fn redis(url: &str) -> Pool {
    flashsale::redis::connect(url, 2, Duration::from_secs(2))
        .await
        .expect("redis pool")
}

pub fn scripts() -> Arc<Scripts> {
    Arc::new(Scripts::new())
}

pub fn jwt() -> JwtConfig {
    JwtConfig {
        secret: JWT_SECRET.into(),
        issuer: None,
        audience: None,
        leeway_seconds: 2,
    }
}

/// The API's configuration for a test, read as `flashsale serve` reads its
/// environment: these stores, the tests' secret, no rate limits, a queue
/// pass key of its own, and a waiting buyer's last-seen mark refreshed
/// every 100 ms.
pub fn config(database_url: &str, redis_url: &str) -> Config {
    let seed: [u8; 32] = rand::random();
    let key = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, seed);
    Config::from_vars(&Vars::from_pairs([
        ("FLASHSALE_ENV", "development"),
        ("DATABASE_URL", database_url),
        ("REDIS_URL", redis_url),
        ("JWT_SECRET", JWT_SECRET),
        ("JWT_LEEWAY_SECONDS", "2"),
        ("RATE_LIMITS", "off"),
        ("REDIS_POOL_SIZE", "2"),
        ("QUEUE_IDLE_SECONDS", "1"),
        ("PASS_SIGNING_KEY", &key),
        ("PASS_KEY_ID", "test-key"),
    ]))
    .expect("the tests' configuration is valid")
}
