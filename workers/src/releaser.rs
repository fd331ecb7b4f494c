//! The releaser: admits waiting buyers in queue order, batch by batch.
//!
//! It calls `release_batch.lua` for every sale as often as it likes; the
//! script decides from Redis's clock whether the sale's release interval has
//! passed, so two or more releasers never admit twice and a rate change or
//! pause applies at the next tick on every replica.

use anyhow::Context;
use flashsale::{queue, scripts::Scripts};
use fred::clients::Pool;

use crate::{each_sale, sales_in_redis};

/// Most buyers admitted by one script call, bounding its run time in Redis.
pub const MAX_BATCH: u32 = 5_000;

/// One pass over every sale. Returns how many buyers were admitted.
pub async fn run_once(redis: &Pool, scripts: &Scripts, idle_ms: u64) -> anyhow::Result<u64> {
    let admitted = each_sale(sales_in_redis(redis).await?, |sale| async move {
        let Some(tick) = queue::release_tick(redis, scripts, sale, idle_ms, MAX_BATCH)
            .await
            .context("release tick")?
        else {
            return Ok(0);
        };
        let label = sale.to_string();
        metrics::gauge!("flashsale_queue_waiting", "sale" => label.clone())
            .set(tick.waiting as f64);
        metrics::gauge!("flashsale_queue_active", "sale" => label.clone()).set(tick.active as f64);
        metrics::counter!("flashsale_queue_admitted_total", "sale" => label.clone())
            .increment(tick.admitted);
        metrics::counter!("flashsale_queue_abandoned_total", "sale" => label.clone())
            .increment(tick.abandoned);
        metrics::counter!("flashsale_queue_passes_lapsed_total", "sale" => label.clone())
            .increment(tick.lapsed);
        let wait = metrics::histogram!("flashsale_queue_wait_seconds", "sale" => label);
        for ms in &tick.waits_ms {
            wait.record(*ms as f64 / 1000.0);
        }
        if tick.admitted > 0 || tick.abandoned > 0 || tick.lapsed > 0 {
            tracing::debug!(sale.id = %sale, admitted = tick.admitted, abandoned = tick.abandoned,
                lapsed = tick.lapsed, waiting = tick.waiting, sold_out = tick.sold_out, "release tick");
        }
        Ok(tick.admitted)
    })
    .await?;
    Ok(admitted.iter().sum())
}
