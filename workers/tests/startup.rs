//! What `flashsale-workers` says at start.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::*;

/// The workers say at start when Redis may evict keys (a sale's stock,
/// holds or queue), and say nothing when it may not.
#[tokio::test]
async fn the_workers_warn_at_start_unless_redis_refuses_to_evict() {
    let (_, db_url) = fresh_database().await;
    for (policy, warns) in [("volatile-lru", true), ("noeviction", false)] {
        let redis = PrivateRedis::start_with(&["--maxmemory-policy", policy]);
        let mut workers = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale-workers"))
            .env("REDIS_URL", redis.url())
            .env("DATABASE_URL", &db_url)
            .env("WORKERS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn,flashsale_workers=info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_until(
            &mut workers,
            "flashsale workers running",
            Duration::from_secs(20),
        );
        let _ = workers.kill();
        let _ = workers.wait();
        let warned = lines
            .iter()
            .any(|l| l.contains("maxmemory-policy is not noeviction"));
        assert_eq!(warned, warns, "{policy}: {lines:#?}");
    }
}
