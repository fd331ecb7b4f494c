//! The post-run check of a load test: once the sale is quiet, are all the
//! invariants true?
//!
//! - the stream drains into Postgres (nothing stays in flight);
//! - per zone: nothing oversold, capacity = available + held + confirmed in
//!   Redis, and Redis's confirmed equals Postgres's (drift 0);
//! - no hold is left past its deadline (the expirer swept them all);
//! - every confirmation the load generator was told of is in Postgres;
//! - the queue was served in order: each release tick admitted places above
//!   every place admitted before it, and everyone still waiting holds a place
//!   above every place ever admitted.

use std::{collections::HashSet, time::Duration};

use flashsale::{ids::SaleId, keys::SaleKeys, scripts::Scripts};
use fred::{
    clients::Pool,
    interfaces::{ListInterface, SortedSetsInterface},
};
use sqlx::PgPool;

use crate::reconciler::{Reconciler, SaleReport};

/// What the check found; `broken` lists every invariant that does not hold.
#[derive(Debug, Default)]
pub struct Verdict {
    pub report: SaleReport,
    pub told_confirmed: usize,
    pub missing_in_postgres: usize,
    pub holds_past_deadline: u64,
    pub queue: QueueOrder,
    pub broken: Vec<String>,
}

/// What the admissions ledger says about the queue's order.
#[derive(Debug, Default)]
pub struct QueueOrder {
    pub ticks: usize,
    pub admitted: u64,
    /// Ticks that admitted a place at or below one admitted earlier.
    pub out_of_order_ticks: usize,
    /// Buyers still waiting with a place at or below one already admitted.
    pub overtaken_waiting: u64,
}

/// Reads the admissions ledger ("ms:lowest:highest:count" per tick) and the
/// waiting line.
async fn queue_order(redis: &Pool, k: &SaleKeys) -> anyhow::Result<QueueOrder> {
    let ledger: Vec<String> = redis.lrange(k.admissions(), 0, -1).await?;
    let mut q = QueueOrder {
        ticks: ledger.len(),
        ..QueueOrder::default()
    };
    let mut highest = f64::NEG_INFINITY;
    for entry in &ledger {
        let parts: Vec<&str> = entry.split(':').collect();
        let [_, low, high, count] = parts[..] else {
            anyhow::bail!("malformed admissions entry {entry:?}");
        };
        let (low, high): (f64, f64) = (low.parse()?, high.parse()?);
        if low <= highest || high < low {
            q.out_of_order_ticks += 1;
        }
        highest = highest.max(high);
        q.admitted += count.parse::<u64>()?;
    }
    if highest.is_finite() {
        // Waiting places at or below the highest admitted: scores below the
        // next place's first (a score is place * SEEN_SLOTS + last seen).
        let below = (highest + 1.0) * flashsale::queue::SEEN_SLOTS - 0.5;
        q.overtaken_waiting = redis.zcount(k.waiting(), f64::NEG_INFINITY, below).await?;
    }
    Ok(q)
}

/// Waits (bounded) for the sale's stream to drain and its holds to expire,
/// then checks. `told` are the reservation ids clients were told are confirmed.
pub async fn run(
    redis: &Pool,
    scripts: &Scripts,
    db: &PgPool,
    sale: SaleId,
    told: &HashSet<String>,
) -> anyhow::Result<Verdict> {
    let reconciler = Reconciler::default();
    let k = SaleKeys::new(sale);
    let grace_ms = 2_000;
    let mut report = reconciler.check(redis, scripts, db, sale).await?;
    let mut overdue = 0;
    for _ in 0..120 {
        let now_ms = chrono::Utc::now().timestamp_millis();
        overdue = redis
            .zcount(k.deadlines(), f64::NEG_INFINITY, (now_ms - grace_ms) as f64)
            .await?;
        report = reconciler.check(redis, scripts, db, sale).await?;
        if report.lag_entries == 0 && overdue == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut v = Verdict {
        told_confirmed: told.len(),
        holds_past_deadline: overdue,
        ..Verdict::default()
    };
    if report.lag_entries > 0 {
        v.broken.push(format!(
            "{} stream entries never reached Postgres",
            report.lag_entries
        ));
    }
    if overdue > 0 {
        v.broken.push(format!(
            "{overdue} holds are still held past their deadline"
        ));
    }
    if let Some(why) = report.frozen {
        v.broken.push(format!("the sale is frozen ({why})"));
    }
    for z in &report.zones {
        if z.oversold > 0 {
            v.broken
                .push(format!("zone {} oversold by {}", z.zone, z.oversold));
        }
        if z.conservation_gap != 0 {
            v.broken.push(format!(
                "zone {}: capacity != available + held + confirmed (gap {})",
                z.zone, z.conservation_gap
            ));
        }
        if z.drift != 0 {
            v.broken.push(format!(
                "zone {}: Redis and Postgres differ by {}",
                z.zone, z.drift
            ));
        }
    }
    v.queue = queue_order(redis, &k).await?;
    if v.queue.out_of_order_ticks > 0 {
        v.broken.push(format!(
            "{} release ticks admitted places out of queue order",
            v.queue.out_of_order_ticks
        ));
    }
    if v.queue.overtaken_waiting > 0 {
        v.broken.push(format!(
            "{} buyers still waiting were passed over: later places were admitted",
            v.queue.overtaken_waiting
        ));
    }
    let ids: Vec<&str> = told.iter().map(String::as_str).collect();
    // `as _`: the macro checks a text[] parameter against `&[String]` only.
    let found: i64 = sqlx::query_scalar!(
        r#"SELECT COUNT(*) AS "found!" FROM reservations WHERE id = ANY($1) AND status = 'confirmed'"#,
        &ids as _,
    )
    .fetch_one(db)
    .await?;
    v.missing_in_postgres = told.len() - found as usize;
    if v.missing_in_postgres > 0 {
        v.broken.push(format!(
            "{} confirmations clients were told of are not confirmed in Postgres",
            v.missing_in_postgres
        ));
    }
    v.report = report;
    Ok(v)
}
