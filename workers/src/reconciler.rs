//! The reconciler: checks, every few seconds, that Redis and Postgres agree.
//!
//! Per sale and zone it reads, in one atomic Redis step, the counters and the
//! stream entries not yet acknowledged by the sink, then Postgres's confirmed
//! tickets, and checks:
//! - conservation inside Redis: capacity = available + held + confirmed;
//! - nothing oversold, in Redis or in Postgres;
//! - drift: Redis's confirmed, less what is still in flight, against
//!   Postgres's. An in-flight entry reads as lag, never as drift.
//!
//! It also checks the sale's epoch: Redis without the sale (flushed,
//! restarted without its AOF) or with another epoch than Postgres (an older
//! replica after a restore) freezes the sale until `flashsale restore`.
//!
//! It exports the figures as metrics and stores the last result for the
//! sale's stats. A drift that persists over three runs is logged as an error
//! naming the sale, the zone, the direction and the size. It never rewrites
//! stock: a disagreement is for a person to look at.

use std::{collections::HashMap, sync::Mutex};

use flashsale::{ids::SaleId, keys::SaleKeys, scripts::Scripts};
use fred::{clients::Pool, interfaces::HashesInterface, types::Value};
use sqlx::PgPool;

use crate::sink::GROUP;

/// Consecutive runs a drift must last before it is logged as an error.
pub const PERSISTENT_RUNS: u32 = 3;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZoneReport {
    pub zone: String,
    pub capacity: i64,
    pub available: i64,
    pub held: i64,
    pub confirmed: i64,
    /// Net tickets in stream entries the sink has not acknowledged.
    pub in_flight: i64,
    /// Confirmed tickets recorded in Postgres.
    pub persisted: i64,
    /// (confirmed - in_flight) - persisted: positive when Redis is ahead.
    pub drift: i64,
    /// Tickets confirmed beyond capacity, in Redis or Postgres.
    pub oversold: i64,
    /// capacity - (available + held + confirmed): must be 0.
    pub conservation_gap: i64,
}

#[derive(Clone, Debug, Default)]
pub struct SaleReport {
    pub sale: Option<SaleId>,
    pub zones: Vec<ZoneReport>,
    /// Stream entries not yet acknowledged by the sink.
    pub lag_entries: i64,
    /// Why the sale is frozen, if it is: `missing` from Redis, `epoch`
    /// mismatch, or `restoring`.
    pub frozen: Option<&'static str>,
}

#[derive(Default)]
pub struct Reconciler {
    /// Consecutive runs each (sale, zone) has shown a drift.
    streaks: Mutex<HashMap<(SaleId, String), u32>>,
}

impl Reconciler {
    /// Checks every sale Postgres knows, once: a Redis that lost its data
    /// has also lost its list of sales.
    pub async fn run_once(
        &self,
        redis: &Pool,
        scripts: &Scripts,
        db: &PgPool,
    ) -> anyhow::Result<Vec<SaleReport>> {
        let sales: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM sales ORDER BY created_at")
            .fetch_all(db)
            .await?;
        crate::each_sale(sales.into_iter().map(SaleId), |sale| {
            self.check(redis, scripts, db, sale)
        })
        .await
    }

    /// Compares the sale's epoch in Redis with Postgres's; freezes it on a
    /// mismatch. `Some(reason)` when the sale is frozen.
    async fn fence(
        &self,
        redis: &Pool,
        db: &PgPool,
        sale: SaleId,
    ) -> anyhow::Result<Option<&'static str>> {
        let k = SaleKeys::new(sale);
        let (epoch, frozen): (Option<i32>, Option<String>) =
            redis.hmget(k.meta(), vec!["epoch", "frozen"]).await?;
        let known: Option<i32> = sqlx::query_scalar("SELECT epoch FROM sales WHERE id = $1")
            .bind(sale.0)
            .fetch_optional(db)
            .await?;
        let Some(known) = known else {
            return Ok(None);
        };
        let label = sale.to_string();
        let reason = match epoch {
            None => {
                tracing::error!(sale.id = %sale, "sale is missing from Redis: holds refused; run `flashsale restore --sale {sale}`");
                Some("missing")
            }
            Some(e) if e != known => {
                let _: () = redis.hset(k.meta(), ("frozen", "1")).await?;
                tracing::error!(sale.id = %sale, redis_epoch = e, postgres_epoch = known,
                    "Redis holds another epoch of this sale (an older state): frozen; run `flashsale restore --sale {sale}`");
                Some("epoch")
            }
            Some(_) if frozen.as_deref() == Some("1") => Some("restoring"),
            Some(_) => None,
        };
        metrics::gauge!("flashsale_sale_frozen", "sale" => label).set(if reason.is_some() {
            1.0
        } else {
            0.0
        });
        Ok(reason)
    }

    pub async fn check(
        &self,
        redis: &Pool,
        scripts: &Scripts,
        db: &PgPool,
        sale: SaleId,
    ) -> anyhow::Result<SaleReport> {
        let k = SaleKeys::new(sale);
        let frozen = self.fence(redis, db, sale).await?;
        if frozen == Some("missing") {
            return Ok(SaleReport {
                sale: Some(sale),
                frozen,
                ..SaleReport::default()
            });
        }
        // Redis first, then Postgres: anything the sink acknowledged before
        // the Redis read was committed before it, so it is in Postgres too.
        let reply: Value = scripts
            .reconcile_read
            .run(redis, vec![k.zones(), k.stream()], vec![Value::from(GROUP)])
            .await?;
        let mut parts = reply.into_array().into_iter();
        let counters = pairs(parts.next().unwrap_or(Value::Null));
        let entries: Vec<String> = parts
            .next()
            .unwrap_or(Value::Null)
            .into_array()
            .into_iter()
            .filter_map(|v| v.as_string())
            .collect();
        let lag_entries = parts.next().and_then(|v| v.as_i64()).unwrap_or(0);
        let in_flight = unapplied(db, &entries).await?;

        let persisted: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT zone_code, SUM(quantity)::bigint FROM reservations
             WHERE sale_id = $1 AND status = 'confirmed' GROUP BY zone_code",
        )
        .bind(sale.0)
        .fetch_all(db)
        .await?
        .into_iter()
        .collect();

        let mut zones: Vec<String> = counters
            .keys()
            .filter_map(|f| f.strip_suffix(":cap").map(str::to_owned))
            .collect();
        zones.sort();
        let label = sale.to_string();
        let mut report = SaleReport {
            sale: Some(sale),
            zones: Vec::with_capacity(zones.len()),
            lag_entries,
            frozen,
        };
        let mut stored: Vec<(String, String)> = Vec::new();
        let mut total_drift = 0;
        for zone in zones {
            let get = |what: &str| {
                counters
                    .get(&format!("{zone}:{what}"))
                    .copied()
                    .unwrap_or(0)
            };
            let (capacity, available, held, confirmed) =
                (get("cap"), get("avail"), get("held"), get("conf"));
            let in_flight = in_flight.get(&zone).copied().unwrap_or(0);
            let persisted = persisted.get(&zone).copied().unwrap_or(0);
            let z = ZoneReport {
                capacity,
                available,
                held,
                confirmed,
                in_flight,
                persisted,
                drift: confirmed - in_flight - persisted,
                oversold: (confirmed - capacity).max(persisted - capacity).max(0),
                conservation_gap: capacity - (available + held + confirmed),
                zone,
            };
            let zl = z.zone.clone();
            metrics::gauge!("flashsale_reconcile_drift", "sale" => label.clone(), "zone" => zl.clone()).set(z.drift as f64);
            metrics::gauge!("flashsale_oversold", "sale" => label.clone(), "zone" => zl.clone())
                .set(z.oversold as f64);
            metrics::gauge!("flashsale_conservation_gap", "sale" => label.clone(), "zone" => zl.clone())
                .set(z.conservation_gap as f64);
            if z.oversold > 0 {
                tracing::error!(sale.id = %sale, zone = %z.zone, oversold = z.oversold, "zone sold beyond capacity");
            }
            if z.conservation_gap != 0 {
                tracing::error!(sale.id = %sale, zone = %z.zone, gap = z.conservation_gap,
                    "capacity != available + held + confirmed in Redis");
            }
            self.track_drift(sale, &z);
            total_drift += z.drift;
            stored.push((format!("drift:{}", z.zone), z.drift.to_string()));
            report.zones.push(z);
        }
        metrics::gauge!("flashsale_stream_lag_entries", "sale" => label).set(lag_entries as f64);
        stored.push(("drift".into(), total_drift.to_string()));
        stored.push((
            "at_ms".into(),
            chrono::Utc::now().timestamp_millis().to_string(),
        ));
        let _: () = redis.hset(k.reconciliation(), stored).await?;
        Ok(report)
    }

    fn track_drift(&self, sale: SaleId, z: &ZoneReport) {
        let Ok(mut streaks) = self.streaks.lock() else {
            return;
        };
        let key = (sale, z.zone.clone());
        if z.drift == 0 {
            streaks.remove(&key);
            return;
        }
        let runs = streaks.entry(key).or_insert(0);
        *runs += 1;
        if *runs >= PERSISTENT_RUNS {
            tracing::error!(
                sale.id = %sale,
                zone = %z.zone,
                direction = if z.drift > 0 { "redis_ahead_of_postgres" } else { "postgres_ahead_of_redis" },
                size = z.drift.abs(),
                runs = *runs,
                "drift between Redis and Postgres persists"
            );
        }
    }
}

/// Net tickets per zone of the in-flight entries (`type, id, zone, qty`
/// quadruples) whose effect is not yet in Postgres. The sink acknowledges
/// after it commits, so an entry can be both pending and applied; counting
/// it as in flight would show a drift that is not there.
async fn unapplied(db: &PgPool, flat: &[String]) -> anyhow::Result<HashMap<String, i64>> {
    let entries: Vec<&[String]> = flat.chunks_exact(4).collect();
    let ids: Vec<&str> = entries.iter().map(|e| e[1].as_str()).collect();
    let recorded: HashMap<String, String> = if ids.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, String)>(
            "SELECT id, status FROM reservations WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(db)
        .await?
        .into_iter()
        .collect()
    };
    let mut net: HashMap<String, i64> = HashMap::new();
    for e in entries {
        let (kind, id, zone, qty) = (&e[0], &e[1], &e[2], e[3].parse::<i64>().unwrap_or(0));
        let applied = match kind.as_str() {
            "cancelled" => recorded.get(id).is_some_and(|s| s == "cancelled"),
            _ => recorded.contains_key(id),
        };
        if !applied {
            *net.entry(zone.clone()).or_default() += if kind == "cancelled" { -qty } else { qty };
        }
    }
    Ok(net)
}

/// A flat `[k, v, k, v, ...]` reply as a map of numbers.
fn pairs(v: Value) -> HashMap<String, i64> {
    let flat = v.into_array();
    flat.chunks(2)
        .filter_map(|kv| {
            let k = kv.first()?.as_string()?;
            let v = kv.get(1)?.as_string()?.parse().ok()?;
            Some((k, v))
        })
        .collect()
}
