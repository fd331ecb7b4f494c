//! flashsale's background workers. Each exposes a `run_once` step that tests
//! drive directly, and a loop that `flashsale-workers` runs.
//!
//! Every worker is idempotent and safe to run in several replicas at once:
//! its step is a Lua script that decides, inside Redis, what is due.

/// The post-run check of a load test.
pub mod check;
/// Sweeps passed hold deadlines and returns their tickets.
pub mod expirer;
/// Checks Redis against itself and against Postgres, every few seconds.
pub mod reconciler;
/// Admits waiting buyers in queue order, one batch per release interval.
pub mod releaser;
/// Records each sale's stream of confirmations and cancellations in Postgres.
pub mod sink;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `step` every `every` until `stop` is cancelled. A step in progress
/// when the signal comes finishes first.
pub async fn every<F, Fut>(
    name: &'static str,
    every: Duration,
    stop: CancellationToken,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(err) = step().await {
            metrics::counter!("flashsale_worker_errors_total", "worker" => name).increment(1);
            tracing::warn!(worker = name, error = %format!("{err:#}"), "worker step failed; retrying next tick");
        }
    }
    tracing::info!(worker = name, "worker stopped");
}
