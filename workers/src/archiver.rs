//! The archiver: moves a finished sale out of Redis, so that Redis holds the
//! sales that are live and not every sale ever run. Postgres then answers
//! every read of it.
//!
//! A sale is finished when all of this holds:
//! - it has closed, by Redis's clock (the one the scripts refuse by);
//! - its holds are gone: its deadlines set is empty, each hold confirmed,
//!   cancelled or expired by the expirer;
//! - its stream is drained: every entry delivered to the sink and
//!   acknowledged (so in Postgres), and Postgres's high-water mark
//!   (`applied_seq`) is Redis's `seq` (Redis did not go back in time);
//! - it has no dead letters (entries Postgres refused wait for an operator);
//! - Postgres's tickets sold per zone equal Redis's confirmed ones.
//!
//! Then, in order:
//! 1. it is frozen (`frozen_reason` `archiving`), through the script that
//!    applies an organizer's settings, so only a sale Redis has and no one
//!    else froze: from here no cancellation can reach its stream;
//! 2. the stream is checked drained again (a cancellation made just before
//!    the freeze waits for the sink; the sale stays frozen and a later pass
//!    goes on from here);
//! 3. Postgres records it: `archived_at`, and `admitted_total` from Redis;
//! 4. its id leaves `live_sales` (the workers stop visiting it) and every
//!    key under its hash tag is deleted, meta last.
//!
//! Every step is safe to repeat, to cut short and to run in several replicas
//! at once: a sale frozen for archiving is taken up again at step 2, one
//! archived in Postgres at step 4. For a few minutes after, each pass
//! deletes again the few keys that a worker step already under way when the
//! sale left could still write (its stream, the reconciler's findings, its
//! meta), so that nothing of the sale stays behind.

use std::time::Duration;

use anyhow::Context;
use flashsale::{
    ids::SaleId,
    keys::{Counter, SaleKeys},
    outbox, recovery, sales,
    scripts::Scripts,
};
use fred::{
    clients::Pool,
    interfaces::{HashesInterface, KeysInterface, SortedSetsInterface, StreamsInterface},
    types::Value,
};
use sqlx::PgPool;

use crate::{each_sale, sales_in_redis};

/// How long after archiving a sale's stray keys are looked for: longer than
/// any worker step runs (`WORKER_STEP_TIMEOUT_SECONDS`, 60 by default).
pub const SWEEP_AFTER_ARCHIVING: Duration = Duration::from_secs(300);

/// What a pass did with one sale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The sale left Redis (or finished leaving) in this pass.
    Archived,
    /// Not yet: why.
    Waiting(Wait),
}

/// Why a closed sale is not archived yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Not closed by Redis's clock.
    Open,
    /// Holds are still out.
    Holds,
    /// Stream entries are not all in Postgres yet.
    Draining,
    /// Entries Postgres refused: an operator must look first.
    DeadLetters,
    /// Redis's confirmed tickets and Postgres's differ.
    Drift,
    /// Frozen for a restore, or with another epoch than Postgres's, or lost
    /// by Redis: that comes first.
    Frozen,
    /// Not a sale of this Postgres.
    Unknown,
}

impl Wait {
    fn as_str(self) -> &'static str {
        match self {
            Wait::Open => "open",
            Wait::Holds => "holds",
            Wait::Draining => "draining",
            Wait::DeadLetters => "dead_letters",
            Wait::Drift => "drift",
            Wait::Frozen => "frozen",
            Wait::Unknown => "unknown",
        }
    }
}

/// One pass: every live sale that has closed by Postgres's clock (or is
/// archived and not yet wiped) is archived if it is finished; then the
/// sales archived lately are swept of stray keys.
pub async fn run_once(
    redis: &Pool,
    scripts: &Scripts,
    db: &PgPool,
) -> anyhow::Result<Vec<(SaleId, Step)>> {
    let live = sales_in_redis(redis).await?;
    let ids: Vec<uuid::Uuid> = live.iter().map(|s| s.0).collect();
    // Only this Postgres's sales: several deployments (or test runs) may
    // share one Redis.
    let due = sqlx::query_scalar!(
        r#"SELECT id AS "id: SaleId" FROM sales
           WHERE id = ANY($1) AND (archived_at IS NOT NULL OR closes_at <= now())"#,
        &ids
    )
    .fetch_all(db)
    .await?;
    metrics::gauge!("flashsale_sales_live").set(live.len() as f64);
    let steps = each_sale(due, |sale| async move {
        let step = archive(redis, scripts, db, sale).await?;
        Ok((sale, step))
    })
    .await;
    sweep_recent(redis, db).await?;
    steps
}

/// Archives one sale if it is finished (see the module's documentation).
pub async fn archive(
    redis: &Pool,
    scripts: &Scripts,
    db: &PgPool,
    sale: SaleId,
) -> anyhow::Result<Step> {
    let waiting = |why: Wait| {
        tracing::debug!(sale.id = %sale, waiting_for = why.as_str(), "sale closed, not archived yet");
        Ok(Step::Waiting(why))
    };
    let Some(row) = sqlx::query!(
        r#"SELECT epoch, applied_seq, archived_at IS NOT NULL AS "archived!" FROM sales WHERE id = $1"#,
        sale.0
    )
    .fetch_optional(db)
    .await?
    else {
        return waiting(Wait::Unknown);
    };
    if row.archived {
        leave_redis(redis, sale).await?;
        return Ok(Step::Archived);
    }
    let k = SaleKeys::new(sale);
    let at = outbox::position(redis, scripts, sale).await?;
    if at.epoch != Some(row.epoch) {
        return waiting(Wait::Frozen);
    }
    let archiving = match at.frozen.as_deref() {
        None => false,
        Some("archiving") => true,
        Some(_) => return waiting(Wait::Frozen),
    };
    let closes_at_ms: Option<i64> = redis.hget(k.meta(), "closes_at_ms").await?;
    let now = sales::redis_now(redis, sale).await?;
    if !closes_at_ms.is_some_and(|c| c > 0 && now.timestamp_millis() >= c) {
        return waiting(Wait::Open);
    }
    let holds: i64 = redis.zcard(k.deadlines()).await?;
    if holds > 0 {
        return waiting(Wait::Holds);
    }
    let dead_letters: i64 = redis.xlen(k.dead_letters()).await?;
    if dead_letters > 0 {
        return waiting(Wait::DeadLetters);
    }
    if !archiving {
        if !at.drained() || at.seq != row.applied_seq {
            return waiting(Wait::Draining);
        }
        if !books_agree(db, sale, &at).await? {
            return waiting(Wait::Drift);
        }
        let froze: i64 = scripts
            .set_release
            .run(
                redis,
                vec![k.meta()],
                vec![
                    Value::from("frozen"),
                    Value::from("1"),
                    Value::from("frozen_reason"),
                    Value::from("archiving"),
                ],
            )
            .await
            .context("freeze the sale for archiving")?;
        if froze != 1 {
            return waiting(Wait::Frozen);
        }
        tracing::info!(sale.id = %sale, "sale closed and recorded: frozen for archiving");
    }
    // Frozen: nothing new reaches the stream. What reached it before the
    // freeze must be in Postgres first (the sink records a frozen sale's
    // entries too).
    let at = outbox::position(redis, scripts, sale).await?;
    if !at.drained() {
        return waiting(Wait::Draining);
    }
    if !books_agree(db, sale, &at).await? {
        return waiting(Wait::Drift);
    }
    let admitted_total: Option<i64> = redis.hget(k.meta(), "admitted_total").await?;
    // Only under the epoch read above: a restore that rebuilt the sale
    // since (it holds the row while it does) made it live again.
    let recorded = sqlx::query!(
        "UPDATE sales SET archived_at = now(), admitted_total = $2
         WHERE id = $1 AND archived_at IS NULL AND epoch = $3",
        sale.0,
        admitted_total.unwrap_or(0).max(0),
        row.epoch
    )
    .execute(db)
    .await?
    .rows_affected();
    if recorded == 0 {
        let archived = sqlx::query_scalar!(
            r#"SELECT archived_at IS NOT NULL AS "archived!" FROM sales WHERE id = $1"#,
            sale.0
        )
        .fetch_one(db)
        .await?;
        if !archived {
            return waiting(Wait::Frozen);
        }
    }
    leave_redis(redis, sale).await?;
    Ok(Step::Archived)
}

/// Whether Postgres's tickets sold equal Redis's confirmed ones in every
/// zone (logged when they do not: the reconciler's drift alert says more).
async fn books_agree(db: &PgPool, sale: SaleId, at: &outbox::Position) -> anyhow::Result<bool> {
    let zones = sqlx::query!("SELECT code, sold FROM zones WHERE sale_id = $1", sale.0)
        .fetch_all(db)
        .await?;
    for z in &zones {
        let redis_confirmed = at
            .counters
            .get(&Counter::Confirmed.field(&z.code))
            .copied()
            .unwrap_or(0);
        if redis_confirmed != i64::from(z.sold) {
            tracing::warn!(sale.id = %sale, zone = %z.code, redis_confirmed, postgres_sold = z.sold,
                "closed sale not archived: Redis and Postgres disagree on its confirmed tickets");
            return Ok(false);
        }
    }
    Ok(true)
}

/// The last step, for a sale Postgres records as archived: off the workers'
/// list, then every key deleted (meta last).
async fn leave_redis(redis: &Pool, sale: SaleId) -> anyhow::Result<()> {
    flashsale::live_sales::remove(redis, sale).await?;
    let deleted = recovery::wipe(redis, sale, &[])
        .await
        .context("delete the sale's keys")?;
    metrics::counter!("flashsale_sales_archived_total").increment(1);
    tracing::info!(sale.id = %sale, keys = deleted, "sale archived: Postgres answers for it, its Redis keys are gone");
    Ok(())
}

/// Deletes, for each sale archived lately, the keys a worker step already
/// under way when it left could have written since: a few known keys, not a
/// scan.
async fn sweep_recent(redis: &Pool, db: &PgPool) -> anyhow::Result<()> {
    let recent = sqlx::query_scalar!(
        r#"SELECT id AS "id: SaleId" FROM sales
           WHERE archived_at > now() - make_interval(secs => $1)"#,
        SWEEP_AFTER_ARCHIVING.as_secs_f64()
    )
    .fetch_all(db)
    .await?;
    for sale in recent {
        let k = SaleKeys::new(sale);
        let _: i64 = redis
            .unlink(vec![k.stream(), k.reconciliation(), k.ticks(), k.meta()])
            .await?;
    }
    Ok(())
}
