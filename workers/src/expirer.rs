//! The hold expirer: returns the tickets of holds whose deadline has passed.
//!
//! For every sale, `due_holds.lua` reads the deadlines sorted set with
//! Redis's own clock, and `expire_holds.lua` ends those holds, checking each
//! one's status and deadline again in its atomic step: any number of
//! expirers (one per worker replica) may run at once, and each hold expires
//! exactly once. Replicas share the work this way, not by dividing it.

use anyhow::Context;
use flashsale::{inventory, scripts::Scripts};
use fred::clients::Pool;

use crate::{each_sale, sales_in_redis};

/// Holds expired per script call; a sale with more due is swept again at once.
const BATCH: u32 = 500;

/// Sweeps every sale once. Returns the holds and tickets returned.
pub async fn run_once(redis: &Pool, scripts: &Scripts) -> anyhow::Result<inventory::Swept> {
    let swept = each_sale(sales_in_redis(redis).await?, |sale| async move {
        let mut total = inventory::Swept::default();
        loop {
            let swept = inventory::expire_due(redis, scripts, sale, BATCH)
                .await
                .context("expire holds")?;
            total += swept;
            if swept.holds > 0 {
                tracing::info!(sale.id = %sale, holds = swept.holds, tickets = swept.tickets, "holds expired");
            }
            if swept.holds < u64::from(BATCH) {
                return Ok(total);
            }
        }
    })
    .await?;
    Ok(swept
        .into_iter()
        .fold(inventory::Swept::default(), |mut all, one| {
            all += one;
            all
        }))
}
