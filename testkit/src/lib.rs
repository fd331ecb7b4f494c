//! The one test harness of flashsale's workspace, used by the API's tests
//! (`tests/`) and the workers' tests (`workers/tests/`): the real API built
//! from a configuration as `flashsale serve` builds it, a fresh Postgres
//! database per test, and Redis and Postgres servers of a test's own for
//! the tests that kill, stop, replicate or fail them over.

#![allow(
    clippy::unwrap_used,
    reason = "a test harness: a failed unwrap is a failed test"
)]

mod app;
pub mod pki;
mod postgres_server;
mod process;
mod redis_server;
mod sales;
mod stores;

pub use app::{assert_problem, TestApp};
pub use postgres_server::PrivatePostgres;
pub use process::lines_until;
pub use redis_server::{redis_cli, replica_args, PrivateRedis, RedisCluster, Sentinels};
pub use sales::*;
pub use stores::*;
