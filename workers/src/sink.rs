//! The stream sink: records each sale's confirmations and cancellations in
//! Postgres.
//!
//! It reads every sale's stream through the consumer group `sink`, writes a
//! batch in one transaction (confirmations with `INSERT ... SELECT FROM
//! UNNEST ... ON CONFLICT DO NOTHING`, then cancellations, keeping each
//! zone's `sold` counter in the same transaction) and acknowledges the
//! entries only after the commit. A replayed entry changes nothing, so a
//! crash between commit and acknowledgement is harmless. Entries left pending
//! by a consumer that died are claimed (XAUTOCLAIM). An entry Postgres
//! refuses as data (a constraint) goes to the sale's dead-letter stream, so
//! one bad entry never blocks a sale; a Postgres that is down just leaves
//! the entries pending until it is back. The stream is trimmed only below
//! what the group has acknowledged.

use std::{collections::HashMap, time::Instant};

use chrono::{DateTime, TimeZone, Utc};
use flashsale::{ids::SaleId, keys::SaleKeys, scripts::Scripts};
use fred::{
    clients::Pool,
    interfaces::StreamsInterface,
    types::{streams::XID, Value},
};
use sqlx::PgPool;

/// The consumer group every sink replica joins.
pub const GROUP: &str = "sink";

pub struct Sink {
    /// This replica's consumer name (unique per process).
    pub consumer: String,
    /// Entries per batch.
    pub batch: u64,
    /// Pending entries idle this long are claimed from their consumer,
    /// presumed dead.
    pub claim_idle_ms: u64,
}

/// What one pass recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub confirmed: u64,
    pub cancelled: u64,
    pub dead_lettered: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, o: Self) {
        self.confirmed += o.confirmed;
        self.cancelled += o.cancelled;
        self.dead_lettered += o.dead_lettered;
    }
}

/// One stream entry, parsed.
#[derive(Clone, Debug)]
struct Event {
    stream_id: String,
    kind: Kind,
    id: String,
    sale: SaleId,
    zone: String,
    user: String,
    qty: i32,
    at: DateTime<Utc>,
    payment_ref: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Confirmed,
    Cancelled,
}

type Entry = (String, HashMap<String, String>);

impl Sink {
    /// Drains every sale's stream once.
    pub async fn run_once(
        &self,
        redis: &Pool,
        scripts: &Scripts,
        db: &PgPool,
    ) -> anyhow::Result<Written> {
        let written = crate::each_sale(crate::sales_in_redis(redis).await?, |sale| {
            self.drain(redis, scripts, db, sale)
        })
        .await?;
        Ok(written
            .into_iter()
            .fold(Written::default(), |mut all, one| {
                all += one;
                all
            }))
    }

    /// Drains one sale: its own pending entries first (a retry after a
    /// failed write), then entries stale in dead consumers, then new ones.
    pub async fn drain(
        &self,
        redis: &Pool,
        scripts: &Scripts,
        db: &PgPool,
        sale: SaleId,
    ) -> anyhow::Result<Written> {
        let k = SaleKeys::new(sale);
        let stream = k.stream();
        ensure_group(redis, &stream).await?;
        let mut written = Written::default();

        let mine = self.read(redis, &stream, "0").await?;
        written += self.record(redis, db, sale, mine).await?;

        let claimed = self.claim(redis, &stream).await?;
        if !claimed.is_empty() {
            tracing::info!(sale.id = %sale, entries = claimed.len(), "claimed entries left pending by another consumer");
        }
        written += self.record(redis, db, sale, claimed).await?;

        loop {
            let fresh = self.read(redis, &stream, ">").await?;
            let n = fresh.len() as u64;
            written += self.record(redis, db, sale, fresh).await?;
            if n < self.batch {
                break;
            }
        }
        let _: i64 = scripts.trim_stream.run(redis, vec![stream], vec![]).await?;
        Ok(written)
    }

    async fn read(&self, redis: &Pool, stream: &str, from: &str) -> anyhow::Result<Vec<Entry>> {
        // nil when there is nothing, else [[stream, [[id, [field, value, ...]], ...]]].
        let reply: Value = redis
            .xreadgroup(
                GROUP,
                self.consumer.as_str(),
                Some(self.batch),
                None,
                false,
                stream,
                from,
            )
            .await?;
        let per_stream = reply.into_array().into_iter().next().unwrap_or(Value::Null);
        Ok(parse_entries(
            per_stream
                .into_array()
                .into_iter()
                .nth(1)
                .unwrap_or(Value::Null),
        ))
    }

    async fn claim(&self, redis: &Pool, stream: &str) -> anyhow::Result<Vec<Entry>> {
        // Redis 7 answers [next-id, entries, deleted-ids]; parsed by hand.
        let reply: Value = redis
            .xautoclaim(
                stream,
                GROUP,
                self.consumer.as_str(),
                self.claim_idle_ms,
                XID::Manual("0-0".into()),
                Some(self.batch),
                false,
            )
            .await?;
        Ok(parse_entries(
            reply.into_array().into_iter().nth(1).unwrap_or(Value::Null),
        ))
    }

    /// Writes a batch and acknowledges it; bad entries go to dead letters.
    async fn record(
        &self,
        redis: &Pool,
        db: &PgPool,
        sale: SaleId,
        entries: Vec<Entry>,
    ) -> anyhow::Result<Written> {
        if entries.is_empty() {
            return Ok(Written::default());
        }
        let k = SaleKeys::new(sale);
        let mut written = Written::default();
        let mut events = Vec::with_capacity(entries.len());
        for (stream_id, fields) in &entries {
            match parse_event(stream_id, fields) {
                Ok(ev) => events.push(ev),
                Err(why) => {
                    dead_letter(redis, &k, sale, stream_id, fields, &why).await?;
                    written.dead_lettered += 1;
                }
            }
        }
        let started = Instant::now();
        match write(db, &events).await {
            Ok(w) => {
                written.confirmed += w.confirmed;
                written.cancelled += w.cancelled;
            }
            Err(err) if is_data_error(&err) => {
                // One entry spoils the batch: write them one by one, and
                // dead-letter those Postgres refuses.
                tracing::warn!(sale.id = %sale, error = %err, "batch refused by Postgres; writing its entries one by one");
                for ev in &events {
                    match write(db, std::slice::from_ref(ev)).await {
                        Ok(w) => {
                            written.confirmed += w.confirmed;
                            written.cancelled += w.cancelled;
                        }
                        Err(err) if is_data_error(&err) => {
                            dead_letter(
                                redis,
                                &k,
                                sale,
                                &ev.stream_id,
                                &entry_fields(&entries, &ev.stream_id),
                                &err.to_string(),
                            )
                            .await?;
                            written.dead_lettered += 1;
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            // Postgres unreachable: leave the entries pending and retry later.
            Err(err) => return Err(anyhow::Error::new(err).context("write batch to postgres")),
        }
        metrics::histogram!("flashsale_sink_batch_size").record(entries.len() as f64);
        metrics::histogram!("flashsale_sink_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("flashsale_sink_rows_total", "kind" => "confirmed")
            .increment(written.confirmed);
        metrics::counter!("flashsale_sink_rows_total", "kind" => "cancelled")
            .increment(written.cancelled);
        // Acknowledge only now, after the commit.
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        let _: i64 = redis.xack(k.stream(), GROUP, ids).await?;
        Ok(written)
    }
}

async fn ensure_group(redis: &Pool, stream: &str) -> anyhow::Result<()> {
    let created: Result<Value, fred::error::Error> =
        redis.xgroup_create(stream, GROUP, "0", true).await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn entry_fields(entries: &[Entry], id: &str) -> HashMap<String, String> {
    entries
        .iter()
        .find(|(i, _)| i == id)
        .map(|(_, f)| f.clone())
        .unwrap_or_default()
}

async fn dead_letter(
    redis: &Pool,
    k: &SaleKeys,
    sale: SaleId,
    stream_id: &str,
    fields: &HashMap<String, String>,
    why: &str,
) -> anyhow::Result<()> {
    let mut record: Vec<(String, String)> =
        fields.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
    record.push(("original_id".into(), stream_id.to_owned()));
    record.push(("error".into(), why.to_owned()));
    let _: String = redis
        .xadd(k.dead_letters(), false, None, "*", record)
        .await?;
    let _: i64 = redis.xack(k.stream(), GROUP, stream_id).await?;
    metrics::counter!("flashsale_sink_dead_letters_total", "sale" => sale.to_string()).increment(1);
    tracing::error!(sale.id = %sale, stream_id, error = why, "stream entry moved to the dead-letter stream");
    Ok(())
}

fn parse_event(stream_id: &str, f: &HashMap<String, String>) -> Result<Event, String> {
    let get = |k: &str| {
        f.get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("field `{k}` is missing"))
    };
    let kind = match get("type")? {
        "confirmed" => Kind::Confirmed,
        "cancelled" => Kind::Cancelled,
        other => return Err(format!("unknown type `{other}`")),
    };
    let qty: i32 = get("qty")?
        .parse()
        .map_err(|_| "qty is not a number".to_owned())?;
    let at_ms: i64 = get("at_ms")?
        .parse()
        .map_err(|_| "at_ms is not a number".to_owned())?;
    Ok(Event {
        stream_id: stream_id.to_owned(),
        kind,
        id: get("id")?.to_owned(),
        sale: get("sale")?
            .parse()
            .map_err(|_| "sale is not a sale id".to_owned())?,
        zone: get("zone")?.to_owned(),
        user: get("user")?.to_owned(),
        qty,
        at: Utc
            .timestamp_millis_opt(at_ms)
            .single()
            .ok_or("at_ms is out of range")?,
        payment_ref: f.get("payment_ref").filter(|p| !p.is_empty()).cloned(),
    })
}

/// Parses `[[id, [field, value, ...]], ...]`.
fn parse_entries(v: Value) -> Vec<Entry> {
    v.into_array()
        .into_iter()
        .filter_map(|e| {
            let mut parts = e.into_array().into_iter();
            let id = parts.next()?.as_string()?;
            let flat = parts.next()?.into_array();
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.as_string()?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

/// A constraint or data error: the entry itself is at fault, retrying it
/// cannot help.
fn is_data_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("23") || c.starts_with("22")),
        _ => false,
    }
}

/// Writes events in one transaction: confirmations, then cancellations,
/// each one statement that also moves the zones' `sold` counters.
async fn write(db: &PgPool, events: &[Event]) -> Result<Written, sqlx::Error> {
    let confirmed: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == Kind::Confirmed)
        .collect();
    let cancelled: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == Kind::Cancelled)
        .collect();
    let mut tx = db.begin().await?;
    let mut written = Written::default();
    if !confirmed.is_empty() {
        let inserted: i64 = sqlx::query_scalar(
            "WITH ins AS (
                 INSERT INTO reservations (id, sale_id, zone_code, user_id, quantity, status, confirmed_at, payment_ref)
                 SELECT id, sale_id, zone_code, user_id, quantity, 'confirmed', confirmed_at, payment_ref
                 FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], $7::text[])
                      AS u(id, sale_id, zone_code, user_id, quantity, confirmed_at, payment_ref)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING sale_id, zone_code, quantity),
             sold AS (
                 UPDATE zones z SET sold = z.sold + s.q
                 FROM (SELECT sale_id, zone_code, SUM(quantity)::int AS q FROM ins GROUP BY 1, 2) s
                 WHERE z.sale_id = s.sale_id AND z.code = s.zone_code
                 RETURNING 1)
             SELECT COUNT(*) FROM ins",
        )
        .bind(confirmed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
        .bind(confirmed.iter().map(|e| e.sale.0).collect::<Vec<_>>())
        .bind(confirmed.iter().map(|e| e.zone.as_str()).collect::<Vec<_>>())
        .bind(confirmed.iter().map(|e| e.user.as_str()).collect::<Vec<_>>())
        .bind(confirmed.iter().map(|e| e.qty).collect::<Vec<_>>())
        .bind(confirmed.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(confirmed.iter().map(|e| e.payment_ref.as_deref()).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
        written.confirmed = inserted as u64;
    }
    if !cancelled.is_empty() {
        let updated: i64 = sqlx::query_scalar(
            "WITH c AS (
                 UPDATE reservations r SET status = 'cancelled', cancelled_at = u.at
                 FROM UNNEST($1::text[], $2::timestamptz[]) AS u(id, at)
                 WHERE r.id = u.id AND r.status = 'confirmed'
                 RETURNING r.sale_id, r.zone_code, r.quantity),
             sold AS (
                 UPDATE zones z SET sold = z.sold - s.q
                 FROM (SELECT sale_id, zone_code, SUM(quantity)::int AS q FROM c GROUP BY 1, 2) s
                 WHERE z.sale_id = s.sale_id AND z.code = s.zone_code
                 RETURNING 1)
             SELECT COUNT(*) FROM c",
        )
        .bind(cancelled.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
        .bind(cancelled.iter().map(|e| e.at).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
        written.cancelled = updated as u64;
    }
    tx.commit().await?;
    Ok(written)
}
