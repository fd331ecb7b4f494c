//! Recovery: rebuilding a sale's live Redis state from Postgres.
//!
//! Postgres holds every confirmed reservation; Redis holds the live state.
//! When Redis loses a sale (flushed, restarted without its AOF, failed over
//! to an empty or older replica), the sale is frozen and `flashsale restore
//! --sale ID` rebuilds it: confirmed reservations stand, holds are gone and
//! their tickets return, the queue starts empty, and the sale gets the next
//! epoch. The sale stays frozen (refusing every write) until the rebuild is
//! whole.
//!
//! Restore works only on a frozen sale: every script that writes a sale
//! checks the flag first, so from the freeze on nothing new reaches the
//! stream. Only then does restore wait for the sink to bring the stream's
//! last entries into Postgres, read Postgres, and rebuild. `--freeze`
//! freezes a live sale first (buyers get `503 sale_frozen` meanwhile); a
//! confirmation made before the freeze is in Postgres before the read.
//!
//! [`wipe`], which deletes a sale's keys, is also how the workers' archiver
//! takes a closed, fully recorded sale out of Redis; restore refuses an
//! archived sale.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;

use chrono::{DateTime, Utc};
use fred::{
    clients::Pool,
    interfaces::{HashesInterface, KeysInterface},
    types::{scan::Scanner, Value},
};
use futures::TryStreamExt;
use sqlx::PgPool;

use crate::{
    ids::{ReservationId, SaleId},
    keys::{self, Counter, SaleKeys},
    outbox,
    sales::{self, Release, SaleDef, ZoneDef},
    scripts::Scripts,
};

/// What a restore rebuilt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub epoch: i32,
    pub reservations: usize,
    pub tickets: i64,
}

struct SaleRow {
    organizer_id: String,
    name: String,
    opens_at: DateTime<Utc>,
    closes_at: Option<DateTime<Utc>>,
    release_rate: i32,
    release_interval_ms: i32,
    max_active: Option<i32>,
    pass_ttl_seconds: i32,
    hold_ttl_seconds: i32,
    per_user_limit: i32,
    paused: bool,
    created_at: DateTime<Utc>,
    prequeue_seed: String,
    epoch: i32,
    admit_idle_seconds: i32,
    admit_headroom_percent: i32,
    archived_at: Option<DateTime<Utc>>,
}

struct ConfirmedRow {
    id: String,
    zone_code: String,
    user_id: String,
    quantity: i32,
    confirmed_at: DateTime<Utc>,
    payment_ref: Option<String>,
    /// A seated zone's seats, as Postgres records them.
    seats: Vec<String>,
}

/// How a restore is to go.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Freeze a sale that is not frozen (else it is refused).
    pub freeze: bool,
    /// How long to wait for the sink to bring the stream's last entries into
    /// Postgres.
    pub drain_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            freeze: false,
            drain_wait: Duration::from_secs(60),
        }
    }
}

pub async fn restore(
    db: &PgPool,
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    options: Options,
) -> anyhow::Result<Restored> {
    let k = SaleKeys::new(sale);
    let at = outbox::position(redis, scripts, sale).await?;
    // A sale Redis does not have at all refuses every write already.
    if at.epoch.is_some() && at.frozen.is_none() {
        anyhow::ensure!(
            options.freeze,
            "sale {sale} is not frozen: restore rebuilds only a frozen sale. Pass --freeze to freeze it first (buyers get 503 sale_frozen until the rebuild is done)"
        );
        let _: () = redis
            .hset(
                k.meta(),
                vec![("frozen", "1"), ("frozen_reason", "restoring")],
            )
            .await?;
        tracing::warn!(sale.id = %sale, "sale frozen for a restore");
    }

    // Frozen: nothing new reaches the stream. Confirmations already in it
    // exist only in Redis, and wiping them would lose them: wait until the
    // sink has brought every one into Postgres.
    let deadline = tokio::time::Instant::now() + options.drain_wait;
    loop {
        let at = outbox::position(redis, scripts, sale).await?;
        if at.drained() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "sale {sale}: stream entries are not yet in Postgres after {}s ({} pending, last delivered {:?}, last appended {}); is flashsale-workers running? The sale stays frozen: restore again once they are",
            options.drain_wait.as_secs(),
            at.pending,
            at.delivered,
            at.last_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The sale's row stays locked until the new epoch is committed, past
    // the rebuild: the reconciler reads the epoch under a key-share lock,
    // so it never pairs the old epoch in Postgres with the new one in Redis
    // (and freezes the sale again behind the restore's back).
    let mut tx = db.begin().await?;
    let row = sqlx::query_as!(
        SaleRow,
        "SELECT organizer_id, name, opens_at, closes_at, release_rate, release_interval_ms, max_active,
                pass_ttl_seconds, hold_ttl_seconds, per_user_limit, paused, created_at, prequeue_seed, epoch,
                admit_idle_seconds, admit_headroom_percent, archived_at
         FROM sales WHERE id = $1 FOR UPDATE",
        sale.0,
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| anyhow::anyhow!("sale {sale} is not in Postgres"))?;
    // An archived sale left Redis on purpose, closed and drained: Postgres
    // answers for it, and loading it back would only make it live again.
    if let Some(at) = row.archived_at {
        anyhow::bail!("sale {sale} was archived at {at}: Postgres answers for it, there is nothing to restore");
    }
    let zones = sqlx::query!(
        "SELECT code, name, capacity, price_cents, seating::text AS seating FROM zones
         WHERE sale_id = $1 ORDER BY position",
        sale.0,
    )
    .fetch_all(&mut *tx)
    .await?;
    let confirmed = sqlx::query_as!(
        ConfirmedRow,
        r#"SELECT id, zone_code, user_id, quantity, confirmed_at, payment_ref,
                  ARRAY(SELECT seat FROM reservation_seats s WHERE s.reservation_id = r.id) AS "seats!"
           FROM reservations r
           WHERE sale_id = $1 AND status = 'confirmed'"#,
        sale.0,
    )
    .fetch_all(&mut *tx)
    .await?;

    let def = SaleDef {
        id: sale,
        organizer_id: row.organizer_id,
        name: row.name,
        opens_at: row.opens_at,
        zones: zones
            .iter()
            .map(|z| -> anyhow::Result<ZoneDef> {
                Ok(ZoneDef {
                    code: z.code.clone(),
                    name: z.name.clone(),
                    capacity: z.capacity as u32,
                    price_cents: z.price_cents,
                    seating: z
                        .seating
                        .as_deref()
                        .map(serde_json::from_str)
                        .transpose()
                        .context("read a zone's seating")?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        pass_ttl_seconds: row.pass_ttl_seconds as u32,
        hold_ttl_seconds: row.hold_ttl_seconds as u32,
        per_user_limit: row.per_user_limit as u32,
        created_at: row.created_at,
        prequeue_seed_sha256: crate::queue::seed_commitment(&row.prequeue_seed),
    };
    let release = Release {
        release_rate: row.release_rate as u32,
        release_interval_ms: row.release_interval_ms as u32,
        max_active: row.max_active.map(|v| v as u32),
        paused: row.paused,
        admit_idle_seconds: row.admit_idle_seconds as u32,
        admit_headroom_percent: row.admit_headroom_percent as u32,
        closes_at: row.closes_at,
    };
    let (seed, epoch) = (row.prequeue_seed, row.epoch);
    // New entries are numbered past every number Postgres holds.
    let seq: i64 = sqlx::query_scalar!(
        r#"SELECT GREATEST(s.applied_seq, COALESCE(MAX(r.confirm_seq), 0), COALESCE(MAX(r.cancel_seq), 0)) AS "seq!"
         FROM sales s LEFT JOIN reservations r ON r.sale_id = s.id
         WHERE s.id = $1 GROUP BY s.applied_seq"#,
        sale.0,
    )
    .fetch_one(&mut *tx)
    .await?;
    let next_epoch = epoch + 1;

    // Each seated zone's seats, those Postgres records as sold marked so.
    let mut sold_seats: HashMap<&str, Vec<&str>> = HashMap::new();
    for row in &confirmed {
        sold_seats
            .entry(row.zone_code.as_str())
            .or_default()
            .extend(row.seats.iter().map(String::as_str));
    }
    let mut segments: HashMap<String, String> = HashMap::new();
    for z in &def.zones {
        if let Some(seating) = &z.seating {
            let sold = sold_seats
                .get(z.code.as_str())
                .map_or(&[][..], Vec::as_slice);
            let segment = crate::seatmap::painted(seating, sold).map_err(|seat| {
                anyhow::anyhow!(
                    "Postgres has seat {seat} sold in zone {}, which has no such seat",
                    z.code
                )
            })?;
            segments.insert(z.code.clone(), segment);
        }
    }

    // Freeze, wipe, rebuild frozen, then unfreeze.
    let _: () = redis.hset(k.meta(), ("frozen", "1")).await?;
    // Dead letters are kept: evidence for whoever investigates.
    wipe(redis, sale, &[k.dead_letters()]).await?;
    let loading = sales::Loading {
        epoch: next_epoch,
        frozen: true,
        seats: Some(&segments),
    };
    sales::load_into_redis(redis, scripts, &def, &release, &seed, loading)
        .await
        .context("load sale into redis")?;

    let mut sold: HashMap<&str, i64> = Default::default();
    let mut per_user: HashMap<&str, i64> = Default::default();
    let pipe = redis.next().pipeline();
    for ConfirmedRow {
        id,
        zone_code: zone,
        user_id: user,
        quantity: qty,
        confirmed_at: at,
        payment_ref: payment,
        seats,
    } in &confirmed
    {
        let rid: ReservationId = id
            .parse()
            .map_err(|_| anyhow::anyhow!("reservation id {id} in Postgres is malformed"))?;
        let at_ms = at.timestamp_millis();
        // The seats in map order, as the hold listed them.
        let seat_list = def
            .zones
            .iter()
            .find(|z| &z.code == zone)
            .and_then(|z| z.seating.as_ref())
            .map(|seating| seating.in_map_order(seats).join(","))
            .unwrap_or_default();
        let _: () = pipe
            .hset(
                k.reservation(&rid),
                vec![
                    ("user", user.clone()),
                    ("zone", zone.clone()),
                    ("qty", qty.to_string()),
                    ("status", "confirmed".to_owned()),
                    ("expires_ms", at_ms.to_string()),
                    ("created_ms", at_ms.to_string()),
                    ("confirmed_ms", at_ms.to_string()),
                    ("payment_ref", payment.clone().unwrap_or_default()),
                    ("fp", String::new()),
                    ("seats", seat_list),
                ],
            )
            .await?;
        let _: () = pipe.hset(k.buyer(user), (id.as_str(), "1")).await?;
        *sold.entry(zone).or_default() += i64::from(*qty);
        *per_user.entry(user).or_default() += i64::from(*qty);
    }
    for zone in &zones {
        let (code, capacity) = (&zone.code, zone.capacity);
        let s = sold.get(code.as_str()).copied().unwrap_or(0);
        let _: () = pipe
            .hset(
                k.zones(),
                vec![
                    (Counter::Confirmed.field(code), s.to_string()),
                    (
                        Counter::Available.field(code),
                        (i64::from(capacity) - s).to_string(),
                    ),
                ],
            )
            .await?;
    }
    for (user, tickets) in &per_user {
        let _: () = pipe
            .hset(k.buyer(user), (keys::BUYER_TICKETS, tickets.to_string()))
            .await?;
    }
    let _: () = pipe.hset(k.meta(), ("seq", seq.to_string())).await?;
    let _: Vec<Value> = pipe.all().await?;

    sqlx::query!(
        "UPDATE sales SET epoch = $2 WHERE id = $1",
        sale.0,
        next_epoch,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let _: () = redis.hset(k.meta(), ("frozen", "0")).await?;
    let _: i64 = redis.hdel(k.meta(), "frozen_reason").await?;
    crate::live_sales::add(redis, sale).await?;
    let tickets = sold.values().sum();
    tracing::info!(sale.id = %sale, epoch = next_epoch, reservations = confirmed.len(), tickets, "sale restored from Postgres");
    Ok(Restored {
        epoch: next_epoch,
        reservations: confirmed.len(),
        tickets,
    })
}

/// Keys deleted by one UNLINK, and asked for by one SCAN step.
const WIPE_BATCH: usize = 500;

/// Deletes every key under the sale's hash tag (`{sale:<id>}*`) but those in
/// `keep`, in batches: SCAN with the tagged pattern, UNLINK (freed off
/// Redis's main thread). The meta hash goes last, so a wipe cut short leaves
/// a sale Redis still knows, frozen as it was, rather than stock without
/// settings; running it again finishes it. Returns the keys deleted.
///
/// The tag puts every key of the sale in one Redis Cluster slot, so the
/// pattern's scan is answered by the one node that holds them.
pub async fn wipe(redis: &Pool, sale: SaleId, keep: &[String]) -> anyhow::Result<usize> {
    let meta = SaleKeys::new(sale).meta();
    let pattern = format!("{{sale:{sale}}}*");
    let mut doomed: Vec<String> = Vec::new();
    let mut deleted = 0;
    let mut scan = redis.next().scan(pattern, Some(WIPE_BATCH as u32), None);
    while let Some(mut page) = scan.try_next().await.context("scan the sale's keys")? {
        if let Some(found) = page.take_results() {
            doomed.extend(
                found
                    .into_iter()
                    .filter_map(|key| key.into_string())
                    .filter(|key| *key != meta && !keep.contains(key)),
            );
        }
        // Deleting while scanning is safe: SCAN returns every key present
        // throughout, and a deleted one is simply not seen again.
        while doomed.len() >= WIPE_BATCH {
            let batch: Vec<String> = doomed.drain(..WIPE_BATCH).collect();
            let n: i64 = redis
                .unlink(batch)
                .await
                .context("unlink the sale's keys")?;
            deleted += n as usize;
        }
    }
    if !doomed.is_empty() {
        let n: i64 = redis
            .unlink(doomed)
            .await
            .context("unlink the sale's keys")?;
        deleted += n as usize;
    }
    if !keep.contains(&meta) {
        let n: i64 = redis.unlink(meta).await.context("unlink the sale's meta")?;
        deleted += n as usize;
    }
    Ok(deleted)
}
