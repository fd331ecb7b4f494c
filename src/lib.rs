//! flashsale: Redis-first flash-sale ticketing with a fair virtual queue.
//!
//! Live inventory, holds and the queue live in Redis and change only through
//! Lua scripts (`lua/`), so no ticket is ever sold twice. Confirmed
//! reservations flow through each sale's Redis stream into Postgres.

/// Accounts: registration, argon2id passwords, login.
pub mod accounts;
/// Typed configuration from the environment.
pub mod config;
/// Postgres pool and migrations.
pub mod db;
/// The API error type and its problem+json rendering.
pub mod error;
/// Hand-written versions of hot-path routines, each with its equivalence test.
pub mod fast;
/// The HTTP API: router, extractors, one module per resource.
pub mod http;
/// Sale and reservation identifiers.
pub mod ids;
/// Buyers' values parsed at the edge: zone codes, quantities, hold requests.
pub mod input;
/// Holds, confirmations, cancellations and expiry, through Lua scripts.
pub mod inventory;
/// JSON input as JSON Schema reads it.
pub mod json;
/// The JWT algorithms the service signs and verifies with, HS256 and EdDSA.
pub mod jwt_crypto;
/// Redis key names, all under the sale's hash tag.
pub mod keys;
/// Rate limits and the in-flight cap.
pub mod limits;
/// The list of the sales Redis holds, spread over a cluster's slots.
pub mod live_sales;
/// The sale's stream (the outbox to Postgres): its fields, position, pages.
pub mod outbox;
/// Queue passes: EdDSA JWTs bound to a buyer and a sale, with a JWKS.
pub mod passes;
/// Push: buyers' event streams, and one watcher per followed sale.
pub mod push;
/// The virtual queue: join, status, leave, release ticks, pre-queue draws.
pub mod queue;
/// Rebuilding a sale's Redis state from Postgres.
pub mod recovery;
/// The Redis client pool.
pub mod redis;
/// Waiting for replicas before a confirmation is answered (Redis WAIT).
pub mod replication;
/// Sale definitions, their live Redis copy and state.
pub mod sales;
/// The Lua scripts, loaded once and called by SHA.
pub mod scripts;
/// The seat map's segments, as Redis keeps them.
pub mod seatmap;
/// The HTTP server loop: header and keep-alive timeouts, connection cap,
/// graceful shutdown.
pub mod server;
/// Store failures as the domain modules report them.
pub mod store;
/// Tracing and Prometheus setup.
pub mod telemetry;
/// Access tokens (HS256 JWT).
pub mod tokens;

/// Resolves on SIGTERM or Ctrl-C: the moment a process stops taking new work
/// and finishes what it has in hand.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received, finishing work in hand");
}
