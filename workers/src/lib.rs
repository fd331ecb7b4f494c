//! flashsale's background workers. Each exposes a `run_once` step that tests
//! drive directly, and a loop that `flashsale-workers` runs.
//!
//! Every worker is idempotent and safe to run in several replicas at once:
//! its step is a Lua script that decides, inside Redis, what is due.

/// Moves closed, fully recorded sales out of Redis.
pub mod archiver;
/// The post-run check of a load test.
pub mod check;
/// Sweeps passed hold deadlines and returns their tickets.
pub mod expirer;
/// When each worker loop last finished a step, for `GET /live`.
pub mod liveness;
/// Checks Redis against itself and against Postgres, every few seconds.
pub mod reconciler;
/// Admits waiting buyers in queue order, one batch per release interval.
pub mod releaser;
/// Records each sale's stream of confirmations and cancellations in Postgres.
pub mod sink;

use std::{future::Future, time::Duration};

use flashsale::ids::SaleId;
use tokio_util::sync::CancellationToken;

/// Runs `step` for each sale in turn. A sale whose step fails (a store that
/// timed out, a damaged key that makes its script fail) is skipped, so it
/// cannot hold back the sales after it: one broken sale must not stop every
/// other sale's queue, sweep or sink. Once every sale has had its turn, the
/// pass fails if any sale failed, naming each with its error.
///
/// Each pass starts one sale further along the list than the one before, so
/// that a pass cut short (abandoned after `WORKER_STEP_TIMEOUT_SECONDS`, or
/// a reconciler with very many sales) cannot leave the same sales at the end
/// of the list unvisited for good.
pub async fn each_sale<T, F, Fut>(
    sales: impl IntoIterator<Item = SaleId>,
    mut step: F,
) -> anyhow::Result<Vec<T>>
where
    F: FnMut(SaleId) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    static PASSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut sales: Vec<SaleId> = sales.into_iter().collect();
    if !sales.is_empty() {
        let start = PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % sales.len();
        sales.rotate_left(start);
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for sale in sales {
        match step(sale).await {
            Ok(t) => done.push(t),
            Err(err) => failed.push(format!("sale {sale}: {err:#}")),
        }
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(anyhow::anyhow!(
            "{} of {} sales failed ({}); the others were done",
            failed.len(),
            failed.len() + done.len(),
            failed.join("; ")
        ))
    }
}

/// The sales Redis knows ([`flashsale::live_sales`]), on every shard of a
/// cluster.
pub async fn sales_in_redis(redis: &fred::clients::Pool) -> anyhow::Result<Vec<SaleId>> {
    flashsale::live_sales::adopt_legacy(redis).await?;
    Ok(flashsale::live_sales::all(redis).await?)
}

/// Runs `step` every `every` until `stop` is cancelled. A step in progress
/// when the signal comes finishes first. `beat` records each step that
/// finishes, succeeded or failed (see [`liveness`]).
///
/// A step that has not finished after `limit` is abandoned, logged as an
/// error and counted as failed, and the next tick runs a fresh one: a store
/// that stops answering mid-step (a Postgres query waits on no timeout of its
/// own) must not stop the worker for good. Every step is safe to abandon:
/// what it did is either done in Redis or done again by the next step.
pub async fn every<F, Fut>(
    name: &'static str,
    every: Duration,
    limit: Duration,
    stop: CancellationToken,
    beat: std::sync::Arc<liveness::Heartbeat>,
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
        match tokio::time::timeout(limit, step()).await {
            Ok(Ok(())) => beat.beat(),
            Ok(Err(err)) => {
                beat.beat();
                metrics::counter!("flashsale_worker_errors_total", "worker" => name).increment(1);
                tracing::warn!(worker = name, error = %format!("{err:#}"), "worker step failed; retrying next tick");
            }
            Err(_) => {
                metrics::counter!("flashsale_worker_errors_total", "worker" => name).increment(1);
                metrics::counter!("flashsale_worker_step_timeouts_total", "worker" => name)
                    .increment(1);
                tracing::error!(
                    worker = name,
                    limit_ms = limit.as_millis() as u64,
                    "worker step did not finish in time; abandoned, retrying next tick"
                );
            }
        }
    }
    tracing::info!(worker = name, "worker stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    use super::*;

    /// Consecutive passes start at different sales, so every sale is first
    /// in some pass; and a failing sale does not keep the others from
    /// their turn.
    #[tokio::test]
    async fn passes_start_one_sale_further_along_and_a_failing_sale_fails_alone() {
        let sales: Vec<SaleId> = (0..3).map(|_| SaleId(uuid::Uuid::new_v4())).collect();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..3 {
            let mut seen = Vec::new();
            let err = each_sale(sales.clone(), |sale| {
                seen.push(sale);
                let fail = sale == sales[1];
                async move {
                    if fail {
                        anyhow::bail!("damaged")
                    }
                    Ok(sale)
                }
            })
            .await
            .unwrap_err();
            assert_eq!(seen.len(), 3, "every sale had its turn");
            let err = format!("{err:#}");
            assert!(err.starts_with("1 of 3 sales failed"), "{err}");
            assert!(
                err.contains(&format!("sale {}: damaged", sales[1])),
                "{err}"
            );
            firsts.insert(seen[0]);
        }
        assert_eq!(
            firsts.len(),
            3,
            "each sale came first in one of three passes"
        );
    }

    /// A step that hangs is abandoned after the limit and the worker goes
    /// on: later steps run, and stop still stops it.
    #[tokio::test(start_paused = true)]
    async fn a_hung_step_is_abandoned_and_the_next_tick_runs_a_fresh_one() {
        let calls = Arc::new(AtomicU32::new(0));
        let finished = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let beats = liveness::Heartbeats::default();
        let worker = tokio::spawn(every(
            "test",
            Duration::from_millis(100),
            Duration::from_secs(5),
            stop.clone(),
            beats.add("test", Duration::from_millis(100), Duration::from_secs(5)),
            {
                let (calls, finished) = (calls.clone(), finished.clone());
                move || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let finished = finished.clone();
                    async move {
                        if n == 0 {
                            // The first step never finishes.
                            std::future::pending::<()>().await;
                        }
                        finished.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }
            },
        ));
        // Paused time jumps ahead whenever every task waits on a timer.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the hung step holds its tick"
        );
        assert!(beats.stalled().is_empty(), "not yet past the limit");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            finished.load(Ordering::SeqCst) >= 5,
            "after the limit the worker runs fresh steps again: {} finished",
            finished.load(Ordering::SeqCst)
        );
        assert!(beats.stalled().is_empty(), "its steps finish again");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), worker)
            .await
            .expect("the worker stops when asked")
            .unwrap();
    }

    /// A loop whose every step hangs is named stalled once two intervals
    /// and the step limit have passed without a step finishing; a loop
    /// whose steps fail is not.
    #[tokio::test(start_paused = true)]
    async fn a_loop_that_finishes_no_step_is_stalled_and_a_failing_one_is_not() {
        let stop = CancellationToken::new();
        let beats = liveness::Heartbeats::default();
        let (every_, limit) = (Duration::from_millis(100), Duration::from_secs(1));
        let hung = tokio::spawn(every(
            "hung",
            every_,
            limit,
            stop.clone(),
            beats.add("hung", every_, limit),
            std::future::pending::<anyhow::Result<()>>,
        ));
        let failing = tokio::spawn(every(
            "failing",
            every_,
            limit,
            stop.clone(),
            beats.add("failing", every_, limit),
            || async { anyhow::bail!("store unavailable") },
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            beats.stalled().is_empty(),
            "within two intervals and the limit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stalled: Vec<_> = beats.stalled().into_iter().map(|s| s.worker).collect();
        assert_eq!(stalled, ["hung"]);
        let res = beats.response();
        assert_eq!(res.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        stop.cancel();
        let _ = tokio::join!(hung, failing);
    }
}
