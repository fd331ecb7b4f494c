//! The stream sink: records each sale's confirmations and cancellations in
//! Postgres.
//!
//! It reads every sale's stream through the consumer group `sink`, writes a
//! batch in one transaction (cancellations, then confirmations, each one
//! `INSERT ... SELECT FROM UNNEST ... ON CONFLICT` statement that also moves
//! the zones' `sold` counters, then the sale's high-water mark) and
//! acknowledges the entries only after the commit. A replayed entry changes
//! nothing, so a crash between commit and acknowledgement is harmless.
//! Entries left pending by a consumer that died are claimed (XAUTOCLAIM).
//!
//! Order does not matter to the record, so any number of replicas may run:
//! - a cancellation that arrives before its confirmation (the confirmation
//!   sits with a slow or dead replica) leaves a `cancelled` tombstone row,
//!   and the late confirmation changes nothing; `sold` moves only on a real
//!   transition (a new confirmed row, or a confirmed row cancelled);
//! - a confirmation refused by the capacity check may be waiting for a
//!   cancellation another replica holds: it stays pending and is retried
//!   with backoff, and is dead-lettered only after `max_deliveries` tries.
//!
//! Only an entry that can never apply (malformed, an unknown zone) goes to
//! the sale's dead-letter stream at once, with an error and a metric, so one
//! bad entry never blocks a sale; a Postgres that is down just leaves the
//! entries pending until it is back.
//!
//! Each entry carries the sale's stream sequence number; Postgres keeps the
//! numbers and refuses one reused for another entry, of either kind (a
//! confirmation's number on a cancellation too). That refusal means Redis
//! went back in time (restarted from an older file, a lagging replica
//! promoted): the sink freezes the sale (`frozen_reason` `rollback`). The
//! entries of a frozen sale are still recorded (buyers were told of them),
//! without their numbers, so that `flashsale restore` finds them in Postgres.
//! The stream is trimmed only below what the group has acknowledged.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeZone, Utc};
use flashsale::{ids::SaleId, keys::SaleKeys, outbox::fields, scripts::Scripts};
use fred::{
    clients::Pool,
    interfaces::{HashesInterface, StreamsInterface},
    types::{streams::XID, Value},
};
use sqlx::PgPool;

/// The consumer group every sink replica joins.
pub const GROUP: &str = flashsale::outbox::SINK_GROUP;

pub struct Sink {
    /// This replica's consumer name (unique per process).
    pub consumer: String,
    /// Entries per batch.
    pub batch: u64,
    /// Pending entries idle this long are claimed from their consumer,
    /// presumed dead.
    pub claim_idle_ms: u64,
    /// Tries of an entry refused by the capacity check before it is
    /// dead-lettered as poison. A valid confirmation is refused only while a
    /// cancellation that freed its ticket is still with another replica, so
    /// the tries (with backoff up to [`MAX_BACKOFF`]) span minutes, longer
    /// than a dead replica's entries take to be claimed.
    pub max_deliveries: u32,
    /// Tries so far of each entry refused by the capacity check, and when
    /// its sale's pending entries may be tried again.
    retries: Mutex<Retries>,
}

/// The longest wait between two tries of an entry refused by the capacity
/// check.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Retries {
    tries: HashMap<String, u32>,
    not_before: HashMap<SaleId, Instant>,
}

/// What one pass recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub confirmed: u64,
    pub cancelled: u64,
    pub dead_lettered: u64,
    /// Entries left pending to be tried again (refused by the capacity
    /// check while a cancellation may be in flight).
    pub retrying: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, o: Self) {
        self.confirmed += o.confirmed;
        self.cancelled += o.cancelled;
        self.dead_lettered += o.dead_lettered;
        self.retrying += o.retrying;
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
    /// When the entry was written: the confirmation's or the cancellation's
    /// time.
    at: DateTime<Utc>,
    /// A cancellation's confirmation time (for a tombstone row).
    confirmed_at: DateTime<Utc>,
    payment_ref: Option<String>,
    /// The sale's stream sequence number; absent in entries written before
    /// the stream carried one.
    seq: Option<i64>,
    /// A seated zone's seats (`A-7`); none for general admission.
    seats: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Confirmed,
    Cancelled,
}

type Entry = (String, HashMap<String, String>);

/// Why Postgres refused a write.
enum Refused {
    /// The capacity check: a cancellation that frees the ticket may still be
    /// with another replica. Try again later.
    Capacity,
    /// A sequence number Postgres holds for another entry: Redis went back
    /// in time.
    Rollback,
    /// The entry can never apply (an unknown zone, a value out of range).
    Poison(String),
    /// Postgres is unreachable or failed: leave everything pending.
    Store(sqlx::Error),
}

impl From<sqlx::Error> for Refused {
    fn from(err: sqlx::Error) -> Self {
        let sqlx::Error::Database(db) = &err else {
            return Refused::Store(err);
        };
        match (db.code().as_deref(), db.constraint()) {
            // The check that keeps `sold` within capacity, the only one on
            // `zones` a write here can break. Told by its table, not its
            // name: Postgres named it `zones_check` (a column's check that
            // reads another column is named after the table alone).
            (Some("23514"), _) if db.table() == Some("zones") => Refused::Capacity,
            // A seat still sold to another reservation: its cancellation may
            // be with another replica, as for the capacity check.
            (Some("23505"), Some("reservation_seats_sold_once")) => Refused::Capacity,
            (Some("23505"), Some("reservations_confirm_seq" | "reservations_cancel_seq")) => {
                Refused::Rollback
            }
            (Some(code), _) if code.starts_with("22") || code.starts_with("23") => {
                Refused::Poison(err.to_string())
            }
            _ => Refused::Store(err),
        }
    }
}

impl Sink {
    pub fn new(consumer: impl Into<String>, batch: u64, claim_idle_ms: u64) -> Self {
        Self {
            consumer: consumer.into(),
            batch,
            claim_idle_ms,
            max_deliveries: 60,
            retries: Mutex::default(),
        }
    }

    /// With this many tries of an entry refused by the capacity check.
    pub fn max_deliveries(self, max_deliveries: u32) -> Self {
        Self {
            max_deliveries,
            ..self
        }
    }

    /// With entries pending this long claimed from their consumer.
    pub fn claim_idle_ms(self, claim_idle_ms: u64) -> Self {
        Self {
            claim_idle_ms,
            ..self
        }
    }

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
    /// failed write, once its backoff has passed), then entries stale in
    /// dead consumers, then new ones.
    pub async fn drain(
        &self,
        redis: &Pool,
        scripts: &Scripts,
        db: &PgPool,
        sale: SaleId,
    ) -> anyhow::Result<Written> {
        let k = SaleKeys::new(sale);
        let stream = k.stream();
        if !ensure_group(redis, &stream).await? {
            // No stream: nothing confirmed or cancelled yet, so nothing to
            // record. Not made here either: a sale archived (its keys
            // deleted) while this pass ran must not get a key back.
            return Ok(Written::default());
        }
        let mut written = Written::default();

        if self.due(sale) {
            let mine = self.read(redis, &stream, "0").await?;
            written += self.record(redis, db, sale, mine).await?;
        }

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
        let _: i64 = scripts
            .trim_stream
            .run(redis, vec![stream, k.meta()], vec![])
            .await?;
        Ok(written)
    }

    /// Whether the sale's own pending entries may be tried again.
    fn due(&self, sale: SaleId) -> bool {
        let retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        retries
            .not_before
            .get(&sale)
            .is_none_or(|t| Instant::now() >= *t)
    }

    /// Counts one more try of `stream_id`; the backoff doubles from 100 ms
    /// up to [`MAX_BACKOFF`]. Returns the tries so far.
    fn retry_later(&self, sale: SaleId, stream_id: &str) -> u32 {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        let tries = retries.tries.entry(stream_id.to_owned()).or_insert(0);
        *tries += 1;
        let n = *tries;
        let wait = Duration::from_millis(100u64 << (n - 1).min(6)).min(MAX_BACKOFF);
        retries.not_before.insert(sale, Instant::now() + wait);
        n
    }

    fn forget(&self, sale: SaleId, stream_ids: &[String]) {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        for id in stream_ids {
            retries.tries.remove(id);
        }
        if retries.tries.is_empty() {
            retries.not_before.remove(&sale);
        }
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

    /// Writes a batch and acknowledges what was recorded or dead-lettered;
    /// entries refused by the capacity check stay pending for a later try.
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
        let mut done: Vec<String> = Vec::with_capacity(entries.len());
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
        // A frozen sale's entries are recorded without their sequence
        // numbers: after a rollback they may reuse numbers Postgres holds,
        // and they are real all the same (buyers were told of them).
        let frozen: Option<String> = redis.hget(k.meta(), "frozen").await?;
        let numbered = frozen.as_deref() != Some("1");
        let started = Instant::now();
        match write(db, sale, &events, numbered).await {
            Ok(w) => {
                written.confirmed += w.confirmed;
                written.cancelled += w.cancelled;
                done.extend(events.iter().map(|e| e.stream_id.clone()));
            }
            Err(Refused::Store(err)) => {
                // Postgres unreachable: leave the entries pending, retry later.
                return Err(anyhow::Error::new(err).context("write batch to postgres"));
            }
            Err(Refused::Rollback) => {
                freeze_for_rollback(redis, &k, sale).await?;
                anyhow::bail!("sale {sale}: Redis reused stream numbers Postgres holds; frozen");
            }
            Err(_) => {
                // One entry spoils the batch: write them one by one.
                tracing::info!(sale.id = %sale, "batch refused by Postgres; writing its entries one by one");
                for ev in &events {
                    match write(db, sale, std::slice::from_ref(ev), numbered).await {
                        Ok(w) => {
                            written.confirmed += w.confirmed;
                            written.cancelled += w.cancelled;
                            done.push(ev.stream_id.clone());
                        }
                        Err(Refused::Capacity) => {
                            let tries = self.retry_later(sale, &ev.stream_id);
                            if tries >= self.max_deliveries {
                                let why = format!("refused by the capacity check {tries} times");
                                dead_letter(
                                    redis,
                                    &k,
                                    sale,
                                    &ev.stream_id,
                                    &entry_fields(&entries, &ev.stream_id),
                                    &why,
                                )
                                .await?;
                                self.forget(sale, std::slice::from_ref(&ev.stream_id));
                                written.dead_lettered += 1;
                            } else {
                                metrics::counter!("flashsale_sink_retries_total").increment(1);
                                tracing::info!(sale.id = %sale, stream_id = %ev.stream_id, tries,
                                    "confirmation refused by the capacity check; a cancellation may be in flight, trying again later");
                                written.retrying += 1;
                            }
                        }
                        Err(Refused::Poison(why)) => {
                            dead_letter(
                                redis,
                                &k,
                                sale,
                                &ev.stream_id,
                                &entry_fields(&entries, &ev.stream_id),
                                &why,
                            )
                            .await?;
                            written.dead_lettered += 1;
                        }
                        Err(Refused::Rollback) => {
                            freeze_for_rollback(redis, &k, sale).await?;
                            break;
                        }
                        Err(Refused::Store(err)) => {
                            if !done.is_empty() {
                                let _: i64 = redis.xack(k.stream(), GROUP, done.clone()).await?;
                            }
                            return Err(anyhow::Error::new(err).context("write entry to postgres"));
                        }
                    }
                }
            }
        }
        metrics::histogram!("flashsale_sink_batch_size").record(entries.len() as f64);
        metrics::histogram!("flashsale_sink_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("flashsale_sink_rows_total", "kind" => "confirmed")
            .increment(written.confirmed);
        metrics::counter!("flashsale_sink_rows_total", "kind" => "cancelled")
            .increment(written.cancelled);
        // Acknowledge only now, after the commit.
        if !done.is_empty() {
            self.forget(sale, &done);
            let _: i64 = redis.xack(k.stream(), GROUP, done).await?;
        }
        Ok(written)
    }
}

/// Marks the sale frozen because Redis went back in time: it refuses every
/// write until `flashsale restore` rebuilds it from Postgres.
async fn freeze_for_rollback(redis: &Pool, k: &SaleKeys, sale: SaleId) -> anyhow::Result<()> {
    let _: () = redis
        .hset(
            k.meta(),
            vec![("frozen", "1"), ("frozen_reason", "rollback")],
        )
        .await?;
    metrics::gauge!("flashsale_sale_frozen", "sale" => sale.to_string()).set(1.0);
    tracing::error!(sale.id = %sale,
        "Redis reused stream numbers Postgres already holds: it went back in time (an older file, a lagging replica); sale frozen, run `flashsale restore --sale {sale}`");
    Ok(())
}

/// Makes the group on the sale's stream if it is not there yet, from the
/// stream's first entry. `false` when there is no stream (no entry was ever
/// appended, or the sale was archived).
async fn ensure_group(redis: &Pool, stream: &str) -> anyhow::Result<bool> {
    let created: Result<Value, fred::error::Error> =
        redis.xgroup_create(stream, GROUP, "0", false).await;
    match created {
        Ok(_) => Ok(true),
        Err(e) if e.details().contains("BUSYGROUP") => Ok(true),
        Err(e) if e.details().contains("requires the key to exist") => Ok(false),
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
    let millis = |k: &str| -> Result<DateTime<Utc>, String> {
        let ms: i64 = get(k)?
            .parse()
            .map_err(|_| format!("{k} is not a number"))?;
        Utc.timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| format!("{k} is out of range"))
    };
    let kind = match get(fields::TYPE)? {
        "confirmed" => Kind::Confirmed,
        "cancelled" => Kind::Cancelled,
        other => return Err(format!("unknown type `{other}`")),
    };
    let qty: i32 = get(fields::QTY)?
        .parse()
        .map_err(|_| "qty is not a number".to_owned())?;
    let at = millis(fields::AT_MS)?;
    let seq = match f.get(fields::SEQ) {
        None => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or("seq is not a positive number")?,
        ),
    };
    Ok(Event {
        stream_id: stream_id.to_owned(),
        kind,
        id: get(fields::ID)?.to_owned(),
        sale: get(fields::SALE)?
            .parse()
            .map_err(|_| "sale is not a sale id".to_owned())?,
        zone: get(fields::ZONE)?.to_owned(),
        user: get(fields::USER)?.to_owned(),
        qty,
        at,
        // Entries written before cancellations carried it: the cancellation's
        // own time stands in (the row exists already in that case).
        confirmed_at: if f.contains_key(fields::CONFIRMED_MS) {
            millis(fields::CONFIRMED_MS)?
        } else {
            at
        },
        payment_ref: f
            .get(fields::PAYMENT_REF)
            .filter(|p| !p.is_empty())
            .cloned(),
        seq,
        seats: f
            .get(fields::SEATS)
            .map(|list| {
                list.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
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

/// Writes events in one transaction: cancellations first (a cancellation
/// only frees tickets, so a confirmation in the same batch that needs them
/// finds them), then confirmations, each one statement that also moves the
/// zones' `sold` counters, then the sale's high-water mark. `numbered`:
/// record the entries' sequence numbers.
async fn write(
    db: &PgPool,
    sale: SaleId,
    events: &[Event],
    numbered: bool,
) -> Result<Written, Refused> {
    // One entry per reservation and kind: a statement may not touch a row
    // twice (a confirmation can be appended twice after a rollback).
    let mut seen = HashSet::new();
    let (mut cancelled, mut confirmed): (Vec<&Event>, Vec<&Event>) = events
        .iter()
        .filter(|e| seen.insert((e.kind == Kind::Confirmed, e.id.as_str())))
        .partition(|e| e.kind == Kind::Cancelled);
    cancelled.sort_by(|a, b| a.id.cmp(&b.id));
    confirmed.sort_by(|a, b| a.id.cmp(&b.id));
    let seq = |e: &&Event| if numbered { e.seq } else { None };
    let mut tx = db.begin().await?;
    let mut written = Written::default();
    if numbered {
        // One numbering for both kinds of entry. The unique indexes catch a
        // number that comes back on an entry of the same kind; a number
        // Postgres holds for another reservation's confirmation that comes
        // back on a cancellation (or the other way round) is caught here. A
        // Redis gone back in time whose next entries were all cancellations
        // would otherwise go unnoticed, its numbers soon past the mark.
        // (`as _` here and below: the macros check an array parameter against
        // a slice of plain values, `&[String]` or `&[i64]`; vectors of
        // borrowed strings or of optional numbers are bound as they are.)
        let reused: bool = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM UNNEST($2::text[], $3::bigint[]) AS u(id, seq)
                            JOIN reservations r ON r.sale_id = $1 AND r.confirm_seq = u.seq
                            WHERE r.id <> u.id)
                 OR EXISTS (SELECT 1 FROM UNNEST($4::text[], $5::bigint[]) AS u(id, seq)
                            JOIN reservations r ON r.sale_id = $1 AND r.cancel_seq = u.seq
                            WHERE r.id <> u.id) AS "reused!""#,
            sale.0,
            cancelled.iter().map(|e| e.id.as_str()).collect::<Vec<_>>() as _,
            cancelled.iter().map(seq).collect::<Vec<_>>() as _,
            confirmed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>() as _,
            confirmed.iter().map(seq).collect::<Vec<_>>() as _,
        )
        .fetch_one(&mut *tx)
        .await?;
        if reused {
            return Err(Refused::Rollback);
        }
    }
    if !cancelled.is_empty() {
        // A new row is a tombstone (its confirmation has not arrived); a
        // confirmed row becomes cancelled and gives its tickets back. Rows
        // inserted have xmax 0; rows updated through ON CONFLICT do not.
        let changed: i64 = sqlx::query_scalar!(
            r#"WITH c AS (
                 INSERT INTO reservations AS r (id, sale_id, zone_code, user_id, quantity, status,
                                                confirmed_at, cancelled_at, cancel_seq)
                 SELECT id, sale_id, zone_code, user_id, quantity, 'cancelled', confirmed_at, cancelled_at, seq
                 FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::int[],
                             $6::timestamptz[], $7::timestamptz[], $8::bigint[])
                      AS u(id, sale_id, zone_code, user_id, quantity, confirmed_at, cancelled_at, seq)
                 ON CONFLICT (id) DO UPDATE
                     SET status = 'cancelled', cancelled_at = EXCLUDED.cancelled_at,
                         cancel_seq = EXCLUDED.cancel_seq
                     WHERE r.status = 'confirmed'
                 RETURNING r.sale_id, r.zone_code, r.quantity, r.xmax <> 0 AS was_confirmed),
             sold AS (
                 UPDATE zones z SET sold = z.sold - s.q
                 FROM (SELECT sale_id, zone_code, SUM(quantity)::int AS q FROM c
                       WHERE was_confirmed GROUP BY 1, 2) s
                 WHERE z.sale_id = s.sale_id AND z.code = s.zone_code
                 RETURNING 1)
             SELECT COUNT(*) AS "changed!" FROM c"#,
            cancelled.iter().map(|e| e.id.as_str()).collect::<Vec<_>>() as _,
            &cancelled.iter().map(|e| e.sale.0).collect::<Vec<_>>(),
            cancelled.iter().map(|e| e.zone.as_str()).collect::<Vec<_>>() as _,
            cancelled.iter().map(|e| e.user.as_str()).collect::<Vec<_>>() as _,
            &cancelled.iter().map(|e| e.qty).collect::<Vec<_>>(),
            &cancelled.iter().map(|e| e.confirmed_at).collect::<Vec<_>>(),
            &cancelled.iter().map(|e| e.at).collect::<Vec<_>>(),
            cancelled.iter().map(seq).collect::<Vec<_>>() as _,
        )
        .fetch_one(&mut *tx)
        .await?;
        written.cancelled = changed as u64;
    }
    if !confirmed.is_empty() {
        // A new row is a confirmation. An existing row (a replay, or a
        // tombstone left by its cancellation) only learns the confirmation's
        // sequence number, once: the confirmations recorded are the rows
        // returned, and only new rows move `sold`.
        let inserted: i64 = sqlx::query_scalar!(
            r#"WITH ins AS (
                 INSERT INTO reservations AS r (id, sale_id, zone_code, user_id, quantity, status,
                                                confirmed_at, payment_ref, confirm_seq)
                 SELECT id, sale_id, zone_code, user_id, quantity, 'confirmed', confirmed_at, payment_ref, seq
                 FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::int[],
                             $6::timestamptz[], $7::text[], $8::bigint[])
                      AS u(id, sale_id, zone_code, user_id, quantity, confirmed_at, payment_ref, seq)
                 ON CONFLICT (id) DO UPDATE
                     SET confirm_seq = EXCLUDED.confirm_seq,
                         payment_ref = COALESCE(r.payment_ref, EXCLUDED.payment_ref)
                     WHERE r.confirm_seq IS NULL AND EXCLUDED.confirm_seq IS NOT NULL
                 RETURNING r.sale_id, r.zone_code, r.quantity, r.xmax = 0 AS fresh),
             sold AS (
                 UPDATE zones z SET sold = z.sold + s.q
                 FROM (SELECT sale_id, zone_code, SUM(quantity)::int AS q FROM ins
                       WHERE fresh GROUP BY 1, 2) s
                 WHERE z.sale_id = s.sale_id AND z.code = s.zone_code
                 RETURNING 1)
             SELECT COUNT(*) AS "inserted!" FROM ins"#,
            confirmed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>() as _,
            &confirmed.iter().map(|e| e.sale.0).collect::<Vec<_>>(),
            confirmed.iter().map(|e| e.zone.as_str()).collect::<Vec<_>>() as _,
            confirmed.iter().map(|e| e.user.as_str()).collect::<Vec<_>>() as _,
            &confirmed.iter().map(|e| e.qty).collect::<Vec<_>>(),
            &confirmed.iter().map(|e| e.at).collect::<Vec<_>>(),
            confirmed.iter().map(|e| e.payment_ref.as_deref()).collect::<Vec<_>>() as _,
            confirmed.iter().map(seq).collect::<Vec<_>>() as _,
        )
        .fetch_one(&mut *tx)
        .await?;
        written.confirmed = inserted as u64;
    }
    // The seats, with their reservation's status as it now stands:
    // cancellations first, so a seat they free may be sold again in the
    // same batch.
    for batch in [&cancelled, &confirmed] {
        let (ids, seats): (Vec<&str>, Vec<&str>) = batch
            .iter()
            .flat_map(|e| e.seats.iter().map(|seat| (e.id.as_str(), seat.as_str())))
            .unzip();
        if ids.is_empty() {
            continue;
        }
        sqlx::query!(
            "INSERT INTO reservation_seats AS s (reservation_id, sale_id, zone_code, seat, status)
             SELECT u.id, r.sale_id, r.zone_code, u.seat, r.status
             FROM UNNEST($1::text[], $2::text[]) AS u(id, seat)
             JOIN reservations r ON r.id = u.id
             ON CONFLICT (reservation_id, seat) DO UPDATE SET status = EXCLUDED.status
                 WHERE s.status <> EXCLUDED.status",
            ids as _,
            seats as _,
        )
        .execute(&mut *tx)
        .await?;
    }
    let high = events.iter().filter_map(|e| e.seq).max();
    if let (true, Some(high)) = (numbered, high) {
        sqlx::query!(
            "UPDATE sales SET applied_seq = GREATEST(applied_seq, $2) WHERE id = $1",
            sale.0,
            high,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(written)
}
