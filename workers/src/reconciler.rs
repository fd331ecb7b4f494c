//! The reconciler: checks, every few seconds, that Redis and Postgres agree.
//!
//! Per sale it reads Postgres's high-water mark and epoch first, then, in one
//! small atomic Redis step, the zone counters and where the stream stands
//! (the counters are as of stream sequence number `seq`), then pages through
//! the stream's entries up to that point, then asks Postgres what it held as
//! of `seq`. No Redis command it sends grows with the backlog. It checks:
//! - conservation inside Redis: capacity = available + held + confirmed;
//! - a seated zone's seats: its seat map's sold and held seats are its
//!   confirmed and held tickets, and Postgres's sold seats its recorded
//!   tickets (with drift 0, sold seats in Redis and Postgres agree);
//! - nothing oversold, in Redis or in Postgres;
//! - drift: Redis's confirmed, less what is still in flight, against what
//!   Postgres held as of the same sequence number. An in-flight entry reads
//!   as lag, never as drift, and an entry applied after the Redis read is
//!   not counted against it.
//!
//! It also fences the sale: Redis without the sale (flushed, restarted
//! without its AOF), with another epoch than Postgres (an older replica after
//! a restore), or with a sequence number below Postgres's high-water mark
//! (Redis went back in time: a restart from an older file, a lagging replica
//! promoted) freezes the sale until `flashsale restore`.
//!
//! It exports the figures as metrics and stores the last result for the
//! sale's stats. It also keeps each live sale's stock per zone (available,
//! held, confirmed) for `/metrics`: rendered from its own table rather than
//! through the metrics recorder, which cannot forget a series, so a sale's
//! series leave once the sale is archived and their number stays bounded by
//! the live sales. A drift that persists over three runs is logged as an error
//! naming the sale, the zone, the direction and the size. It never rewrites
//! stock: a disagreement is for a person to look at.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write,
    sync::Mutex,
};

use flashsale::{
    ids::SaleId,
    keys::{Counter, SaleKeys},
    outbox::{self, Position},
    scripts::Scripts,
};
use fred::{clients::Pool, interfaces::HashesInterface};
use sqlx::PgPool;

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
    /// A seated zone's seats that disagree with its tickets: sold seats in
    /// Redis's seat map against its confirmed tickets, held seats against
    /// its held tickets, and seats Postgres records as sold against its
    /// confirmed tickets, each difference counted: must be 0 (always 0 for
    /// general admission).
    pub seat_gap: i64,
}

#[derive(Clone, Debug, Default)]
pub struct SaleReport {
    pub sale: Option<SaleId>,
    pub zones: Vec<ZoneReport>,
    /// Stream entries not yet acknowledged by the sink.
    pub lag_entries: i64,
    /// Why the sale is frozen, if it is: `missing` from Redis, `epoch`
    /// mismatch, `rollback`, `restoring`, or `archiving` (on its way out of
    /// Redis, not checked).
    pub frozen: Option<&'static str>,
}

#[derive(Default)]
pub struct Reconciler {
    /// Consecutive runs each (sale, zone) has shown a drift.
    streaks: Mutex<HashMap<(SaleId, String), u32>>,
    /// Each live sale's zones: available, held, confirmed, as last read.
    stock: Mutex<BTreeMap<(uuid::Uuid, String), [i64; 3]>>,
}

/// The stock gauges, in the order of [`Reconciler`]'s `stock` entries.
const STOCK_GAUGES: [&str; 3] = [
    "flashsale_stock_available",
    "flashsale_stock_held",
    "flashsale_stock_confirmed",
];

impl Reconciler {
    /// Checks every live sale Postgres knows, once: a Redis that lost its
    /// data has also lost its list of sales.
    pub async fn run_once(
        &self,
        redis: &Pool,
        scripts: &Scripts,
        db: &PgPool,
    ) -> anyhow::Result<Vec<SaleReport>> {
        // Archived sales left Redis on purpose; Postgres alone holds them.
        let sales: Vec<uuid::Uuid> = sqlx::query_scalar!(
            "SELECT id FROM sales WHERE archived_at IS NULL ORDER BY created_at"
        )
        .fetch_all(db)
        .await?;
        if let Ok(mut stock) = self.stock.lock() {
            stock.retain(|(sale, _), _| sales.contains(sale));
        }
        crate::each_sale(sales.into_iter().map(SaleId), |sale| {
            self.check(redis, scripts, db, sale)
        })
        .await
    }

    /// Compares the sale in Redis with Postgres's epoch and high-water mark
    /// (read before Redis, so that anything Postgres applied is already in
    /// a Redis that did not go back); freezes it on a mismatch. `Some(reason)`
    /// when the sale is frozen.
    async fn fence(
        &self,
        redis: &Pool,
        sale: SaleId,
        known: Option<(i32, i64)>,
        at: &Position,
    ) -> anyhow::Result<Option<&'static str>> {
        let Some((epoch, applied_seq)) = known else {
            return Ok(None);
        };
        let k = SaleKeys::new(sale);
        let label = sale.to_string();
        let reason = match at.epoch {
            // Logged by the caller, once it knows the sale was not archived.
            None => Some("missing"),
            Some(e) if e != epoch => {
                let _: () = redis
                    .hset(k.meta(), vec![("frozen", "1"), ("frozen_reason", "epoch")])
                    .await?;
                tracing::error!(sale.id = %sale, redis_epoch = e, postgres_epoch = epoch,
                    "Redis holds another epoch of this sale (an older state): frozen; run `flashsale restore --sale {sale}`");
                Some("epoch")
            }
            Some(_) if at.seq < applied_seq => {
                let _: () = redis
                    .hset(
                        k.meta(),
                        vec![("frozen", "1"), ("frozen_reason", "rollback")],
                    )
                    .await?;
                tracing::error!(sale.id = %sale, redis_seq = at.seq, postgres_seq = applied_seq,
                    "Redis is behind what Postgres already holds (restarted from an older file, or a lagging replica promoted): frozen; run `flashsale restore --sale {sale}`");
                Some("rollback")
            }
            Some(_) => match at.frozen.as_deref() {
                Some("rollback") => Some("rollback"),
                Some("epoch") => Some("epoch"),
                Some("archiving") => Some("archiving"),
                Some(_) => Some("restoring"),
                None => None,
            },
        };
        // A sale frozen for archiving is closed and recorded, on its way out
        // of Redis: nothing for anyone to restore.
        let needs_restore = reason.is_some_and(|r| r != "archiving");
        metrics::gauge!("flashsale_sale_frozen", "sale" => label).set(if needs_restore {
            1.0
        } else {
            0.0
        });
        Ok(reason)
    }

    /// The stock gauges of every live sale in the Prometheus text format,
    /// with their `# HELP` lines; empty when there is no live sale.
    pub fn render_stock(&self) -> String {
        let Ok(stock) = self.stock.lock() else {
            return String::new();
        };
        let mut out = String::new();
        if stock.is_empty() {
            return out;
        }
        for (i, name) in STOCK_GAUGES.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {}", flashsale::telemetry::help(name));
            let _ = writeln!(out, "# TYPE {name} gauge");
            for ((sale, zone), values) in stock.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{sale=\"{}\",zone=\"{}\"}} {}",
                    SaleId(*sale),
                    escape_label(zone),
                    values[i]
                );
            }
            out.push('\n');
        }
        out
    }

    fn forget_stock(&self, sale: SaleId) {
        if let Ok(mut stock) = self.stock.lock() {
            stock.retain(|(s, _), _| *s != sale.0);
        }
    }

    pub async fn check(
        &self,
        redis: &Pool,
        scripts: &Scripts,
        db: &PgPool,
        sale: SaleId,
    ) -> anyhow::Result<SaleReport> {
        let k = SaleKeys::new(sale);
        // Postgres's mark first: whatever it has applied by now was in Redis
        // before the Redis read below. The row stays key-share locked until
        // the fence is written: `flashsale restore` holds it for update
        // while it rebuilds Redis under the next epoch and commits that
        // epoch, so a check never pairs Postgres's old epoch with Redis's new
        // one and freezes (for good) a sale the restore has just unfrozen.
        // The sink's and the organizer's updates of the row take a lock this
        // one does not wait for.
        let mut locked = db.begin().await?;
        let known: Option<(i32, i64)> = sqlx::query!(
            "SELECT epoch, applied_seq FROM sales WHERE id = $1 FOR KEY SHARE",
            sale.0,
        )
        .fetch_optional(&mut *locked)
        .await?
        .map(|r| (r.epoch, r.applied_seq));
        let at = outbox::position(redis, scripts, sale).await?;
        let frozen = self.fence(redis, sale, known, &at).await?;
        locked.commit().await?;
        if frozen == Some("missing") {
            // Gone from Redis: lost, or archived since this pass listed it.
            let archived = sqlx::query_scalar!(
                r#"SELECT archived_at IS NOT NULL AS "archived!" FROM sales WHERE id = $1"#,
                sale.0
            )
            .fetch_optional(db)
            .await?
            .unwrap_or(false);
            if archived {
                self.forget_stock(sale);
                metrics::gauge!("flashsale_sale_frozen", "sale" => sale.to_string()).set(0.0);
                return Ok(SaleReport {
                    sale: Some(sale),
                    ..SaleReport::default()
                });
            }
            tracing::error!(sale.id = %sale, "sale is missing from Redis: holds refused; run `flashsale restore --sale {sale} --freeze`");
        }
        // Missing: nothing to compare. Archiving: its keys are about to go,
        // and the books were found equal before it was frozen; writing the
        // findings now could leave a key behind the archiver's sweep.
        if matches!(frozen, Some("missing" | "archiving")) {
            self.forget_stock(sale);
            return Ok(SaleReport {
                sale: Some(sale),
                frozen,
                ..SaleReport::default()
            });
        }
        let Unapplied {
            net: in_flight,
            entries: lag_entries,
            seats: seats_in_flight,
        } = unapplied(redis, db, sale, &at.last_id).await?;

        // What Postgres held as of `seq`: confirmations numbered up to it
        // (or recorded without a number: before numbering, or while frozen),
        // less cancellations numbered up to it.
        let persisted: HashMap<String, i64> = sqlx::query!(
            r#"SELECT zone_code, SUM(quantity)::bigint AS "sold!" FROM reservations
             WHERE sale_id = $1
               AND (confirm_seq <= $2 OR (confirm_seq IS NULL AND (status = 'confirmed' OR cancel_seq IS NULL)))
               AND NOT (status = 'cancelled' AND COALESCE(cancel_seq, 0) <= $2)
             GROUP BY zone_code"#,
            sale.0,
            at.seq,
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| (r.zone_code, r.sold))
        .collect();

        // The seats sold as of `seq` (seated zones only).
        let mut persisted_seats: HashMap<String, HashSet<String>> = HashMap::new();
        for r in sqlx::query!(
            r#"SELECT r.zone_code, s.seat
             FROM reservations r JOIN reservation_seats s ON s.reservation_id = r.id
             WHERE r.sale_id = $1
               AND (r.confirm_seq <= $2 OR (r.confirm_seq IS NULL AND (r.status = 'confirmed' OR r.cancel_seq IS NULL)))
               AND NOT (r.status = 'cancelled' AND COALESCE(r.cancel_seq, 0) <= $2)"#,
            sale.0,
            at.seq,
        )
        .fetch_all(db)
        .await?
        {
            persisted_seats.entry(r.zone_code).or_default().insert(r.seat);
        }

        let counters = &at.counters;
        let zones = Counter::zones(counters.keys());
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
            let get = |c: Counter| counters.get(&c.field(&zone)).copied().unwrap_or(0);
            let (capacity, available, held, confirmed) = (
                get(Counter::Capacity),
                get(Counter::Available),
                get(Counter::Held),
                get(Counter::Confirmed),
            );
            let in_flight = in_flight.get(&zone).copied().unwrap_or(0);
            let persisted = persisted.get(&zone).copied().unwrap_or(0);
            let seat_gap = match at.seats.get(&zone) {
                Some(segment) => {
                    let recorded = persisted_seats.remove(&zone).unwrap_or_default();
                    let gap = seat_gap(
                        segment,
                        confirmed,
                        held,
                        persisted,
                        &recorded,
                        seats_in_flight.get(&zone),
                    );
                    if !gap.differing.is_empty() {
                        tracing::error!(sale.id = %sale, zone = %zone, seats = %gap.differing.join(","),
                            "seats sold in Redis and in Postgres differ (at most 20 named)");
                    }
                    gap.total
                }
                None => 0,
            };
            let z = ZoneReport {
                seat_gap,
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
            metrics::gauge!("flashsale_seat_gap", "sale" => label.clone(), "zone" => zl.clone())
                .set(z.seat_gap as f64);
            if z.seat_gap != 0 {
                tracing::error!(sale.id = %sale, zone = %z.zone, gap = z.seat_gap,
                    "a seated zone's seats disagree with its tickets");
            }
            if z.conservation_gap != 0 {
                tracing::error!(sale.id = %sale, zone = %z.zone, gap = z.conservation_gap,
                    "capacity != available + held + confirmed in Redis");
            }
            self.track_drift(sale, &z);
            if let Ok(mut stock) = self.stock.lock() {
                stock.insert((sale.0, z.zone.clone()), [z.available, z.held, z.confirmed]);
            }
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

/// Net tickets per zone of the stream's entries up to `last_id` whose
/// effect is not yet in Postgres, and how many such entries there are. Read
/// a page at a time. The sink acknowledges after it commits, so an entry can
/// be both pending and applied: Postgres says which are applied (a
/// confirmation whose row exists, even as a tombstone; a cancellation whose
/// row is cancelled).
/// What the stream carries that Postgres has not applied.
struct Unapplied {
    /// Net tickets per zone.
    net: HashMap<String, i64>,
    /// Entries.
    entries: i64,
    /// Per seated zone, per seat: +1 for each cancellation, -1 for each
    /// confirmation: what Postgres is yet to learn of the seat.
    seats: HashMap<String, HashMap<String, i64>>,
}

async fn unapplied(
    redis: &Pool,
    db: &PgPool,
    sale: SaleId,
    last_id: &str,
) -> anyhow::Result<Unapplied> {
    let mut out = Unapplied {
        net: HashMap::new(),
        entries: 0,
        seats: HashMap::new(),
    };
    let mut pages = outbox::Pages::new(sale, last_id);
    while let Some(page) = pages.next(redis).await? {
        if page.is_empty() {
            continue;
        }
        let ids: Vec<&str> = page.iter().map(|e| e.reservation.as_str()).collect();
        // `as _`: the macro checks a text[] parameter against `&[String]` only.
        let recorded: HashMap<String, String> = sqlx::query!(
            "SELECT id, status FROM reservations WHERE id = ANY($1)",
            &ids as _,
        )
        .fetch_all(db)
        .await?
        .into_iter()
        .map(|r| (r.id, r.status))
        .collect();
        for e in &page {
            let applied = if e.cancelled {
                recorded
                    .get(&e.reservation)
                    .is_some_and(|s| s == "cancelled")
            } else {
                recorded.contains_key(&e.reservation)
            };
            if !applied {
                out.entries += 1;
                let sign = if e.cancelled { -1 } else { 1 };
                *out.net.entry(e.zone.clone()).or_default() += sign * e.qty;
                let seats = out.seats.entry(e.zone.clone()).or_default();
                for seat in &e.seats {
                    *seats.entry(seat.clone()).or_default() -= sign;
                }
            }
        }
    }
    Ok(out)
}

/// How far a seated zone's seats are from its tickets.
#[derive(Debug, Default, PartialEq, Eq)]
struct SeatGap {
    /// Every difference counted (see [`ZoneReport::seat_gap`]).
    total: i64,
    /// The first seats (at most 20) Postgres should hold as sold and does
    /// not, or holds and should not.
    differing: Vec<String>,
}

/// Compares a seated zone's seat map (`segment`, as of the counters) with
/// its tickets in Redis, and its sold seats, less those still in flight,
/// with the seats Postgres records as sold (`recorded`, as of the same
/// point).
fn seat_gap(
    segment: &str,
    confirmed: i64,
    held: i64,
    persisted: i64,
    recorded: &HashSet<String>,
    in_flight: Option<&HashMap<String, i64>>,
) -> SeatGap {
    let (mut sold, mut seats_held) = (0, 0);
    // What Postgres should say of each seat: 1 sold, 0 not.
    let mut expected: HashMap<String, i64> = HashMap::new();
    for seat in flashsale::seatmap::seats(segment) {
        match seat.state {
            flashsale::seatmap::SOLD => {
                sold += 1;
                expected.insert(seat.id(), 1);
            }
            flashsale::seatmap::HELD => seats_held += 1,
            _ => {}
        }
    }
    for (seat, delta) in in_flight.into_iter().flatten() {
        *expected.entry(seat.clone()).or_default() += delta;
    }
    for seat in recorded {
        expected.entry(seat.clone()).or_default();
    }
    let mut differing: Vec<&String> = expected
        .iter()
        .filter(|(seat, &want)| want != i64::from(recorded.contains(*seat)))
        .map(|(seat, _)| seat)
        .collect();
    differing.sort();
    SeatGap {
        total: (sold - confirmed).abs()
            + (seats_held - held).abs()
            + (recorded.len() as i64 - persisted).abs()
            + differing.len() as i64,
        differing: differing.into_iter().take(20).cloned().collect(),
    }
}

/// A label value as the Prometheus text format writes it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod seat_gap_tests {
    use super::*;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn seats_in_flight_are_lag_and_moved_seats_are_named() {
        // A-1 sold and recorded; A-2 sold, its confirmation in flight; A-3
        // cancelled in Redis, the cancellation in flight (Postgres still has
        // it sold); A-4 confirmed and cancelled, both in flight.
        let in_flight: HashMap<String, i64> = [("A-2", -1), ("A-3", 1), ("A-4", 0)]
            .into_iter()
            .map(|(s, d)| (s.to_owned(), d))
            .collect();
        let agree = seat_gap(
            "|A:##..*|",
            2,
            1,
            2,
            &set(&["A-1", "A-3"]),
            Some(&in_flight),
        );
        assert_eq!(agree, SeatGap::default());
        // The same tickets, but Redis has B-1 sold where Postgres has A-1.
        let moved = seat_gap(
            "|A:.#..*|B:#|",
            2,
            1,
            2,
            &set(&["A-1", "A-3"]),
            Some(&in_flight),
        );
        assert_eq!(
            moved,
            SeatGap {
                total: 2,
                differing: vec!["A-1".into(), "B-1".into()],
            }
        );
    }
}
