//! Sales: their definition (Postgres), their live copy (Redis), their state.
//!
//! A sale is created in one Postgres transaction and loaded into Redis before
//! that transaction commits, so a sale a client was told about always has its
//! stock in Redis. The definition never changes after creation; the release
//! settings (`release_rate`, `release_interval_ms`, `max_active`, `paused`)
//! change live, in Postgres (with an audit row) and in Redis.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use fred::{
    clients::Pool,
    interfaces::{HashesInterface, SetsInterface, SortedSetsInterface},
    types::Value,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    ids::SaleId,
    keys::{self, Counter, SaleKeys},
    scripts::Scripts,
    store::StoreError,
};

/// Bounds of the numbers an organizer may set, checked at the edge.
pub mod bounds {
    pub const ZONES: usize = 100;
    pub const CAPACITY: (i64, i64) = (1, 10_000_000);
    pub const PRICE_CENTS: (i64, i64) = (0, 10_000_000_000);
    pub const RELEASE_RATE: (i64, i64) = (1, 100_000);
    pub const RELEASE_INTERVAL_MS: (i64, i64) = (100, 60_000);
    pub const MAX_ACTIVE: (i64, i64) = (1, 10_000_000);
    pub const PASS_TTL_SECONDS: (i64, i64) = (1, 3_600);
    pub const HOLD_TTL_SECONDS: (i64, i64) = (1, 3_600);
    pub const PER_USER_LIMIT: (i64, i64) = (1, 100);
}

/// `POST /v1/sales` as the organizer sends it. Numbers are read wide so an
/// out-of-range value gets a message naming the field and its range rather
/// than a type error.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSale {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "\\S",
        example = "Summer Tour - Berlin"
    )]
    pub name: String,
    /// When holds may start (default: now). Buyers may queue before.
    #[serde(default)]
    pub opens_at: Option<DateTime<Utc>>,
    /// When holds stop; must be after `opens_at`.
    #[serde(default)]
    pub closes_at: Option<DateTime<Utc>>,
    #[schema(min_items = 1, max_items = 100)]
    pub zones: Vec<NewZone>,
    /// Buyers admitted per second (default 100).
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 1, maximum = 100000)]
    pub release_rate: Option<i64>,
    /// How often a batch is released (default 1000).
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 100, maximum = 60000)]
    pub release_interval_ms: Option<i64>,
    /// Cap on buyers admitted and not yet finished (default: none).
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 1, maximum = 10000000)]
    pub max_active: Option<i64>,
    /// Lifetime of a queue pass (default 300).
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 1, maximum = 3600)]
    pub pass_ttl_seconds: Option<i64>,
    /// Lifetime of a hold (default 600).
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 1, maximum = 3600)]
    pub hold_ttl_seconds: Option<i64>,
    /// Tickets one buyer may hold and buy in the sale (default 4).
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 1, maximum = 100)]
    pub per_user_limit: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewZone {
    /// Unique within the sale.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,32}$", example = "A")]
    pub code: String,
    /// Shown to buyers (default: the code).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub name: Option<String>,
    #[serde(deserialize_with = "crate::json::req_whole")]
    #[schema(minimum = 1, maximum = 10000000, example = 5000)]
    pub capacity: i64,
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 0, maximum = 10000000000_i64)]
    pub price_cents: Option<i64>,
}

/// A validated sale definition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SaleDef {
    pub id: SaleId,
    pub organizer_id: String,
    pub name: String,
    pub opens_at: DateTime<Utc>,
    pub closes_at: Option<DateTime<Utc>>,
    pub zones: Vec<ZoneDef>,
    pub pass_ttl_seconds: u32,
    pub hold_ttl_seconds: u32,
    pub per_user_limit: u32,
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the pre-queue seed, public from creation.
    pub prequeue_seed_sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ZoneDef {
    pub code: String,
    pub name: String,
    pub capacity: u32,
    pub price_cents: i64,
}

/// Why a sale could not be created, changed or read.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    /// A field is out of its bounds; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("sale not found")]
    NotFound,
    /// The sale's live state is being restored.
    #[error("the sale is frozen")]
    Frozen,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<fred::error::Error> for SaleError {
    fn from(err: fred::error::Error) -> Self {
        SaleError::Store(err.into())
    }
}

impl From<sqlx::Error> for SaleError {
    fn from(err: sqlx::Error) -> Self {
        SaleError::Store(err.into())
    }
}

/// The settings an organizer changes while the sale runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub release_rate: u32,
    pub release_interval_ms: u32,
    pub max_active: Option<u32>,
    pub paused: bool,
}

fn in_range(field: &str, value: i64, (lo, hi): (i64, i64)) -> Result<i64, SaleError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(SaleError::Invalid(format!(
            "{field} must be between {lo} and {hi}, got {value}"
        )))
    }
}

/// `value` for `field`, checked against one of the `limits` ranges (every
/// one of them fits in u32).
pub fn bounded(field: &str, value: i64, range: (i64, i64)) -> Result<u32, SaleError> {
    Ok(in_range(field, value, range)? as u32)
}

fn setting(
    field: &str,
    value: Option<i64>,
    default: i64,
    range: (i64, i64),
) -> Result<u32, SaleError> {
    bounded(field, value.unwrap_or(default), range)
}

impl NewSale {
    /// Checks every field and fills the defaults.
    pub fn validate(
        self,
        organizer_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(SaleDef, Release), SaleError> {
        // Milliseconds, as Redis keeps times: both stores then agree exactly.
        let now = now.trunc_subsecs(3);
        let name = self.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(SaleError::Invalid(
                "name must be 1 to 200 characters, without control characters".into(),
            ));
        }
        if self.zones.is_empty() || self.zones.len() > bounds::ZONES {
            return Err(SaleError::Invalid(format!(
                "zones must list 1 to {} zones",
                bounds::ZONES
            )));
        }
        let mut zones = Vec::with_capacity(self.zones.len());
        for (i, z) in self.zones.into_iter().enumerate() {
            if crate::input::ZoneCode::parse(&z.code).is_none() {
                return Err(SaleError::Invalid(format!(
                    "zones[{i}].code must be 1 to 32 letters, digits, `_` or `-`"
                )));
            }
            if zones.iter().any(|seen: &ZoneDef| seen.code == z.code) {
                return Err(SaleError::Invalid(format!(
                    "zones[{i}].code `{}` appears twice",
                    z.code
                )));
            }
            let zone_name = z
                .name
                .map(|n| n.trim().to_owned())
                .unwrap_or_else(|| z.code.clone());
            if zone_name.is_empty()
                || zone_name.chars().count() > 100
                || zone_name.chars().any(char::is_control)
            {
                return Err(SaleError::Invalid(format!(
                    "zones[{i}].name must be 1 to 100 characters, without control characters"
                )));
            }
            zones.push(ZoneDef {
                capacity: bounded(
                    &format!("zones[{i}].capacity"),
                    z.capacity,
                    bounds::CAPACITY,
                )?,
                price_cents: in_range(
                    &format!("zones[{i}].price_cents"),
                    z.price_cents.unwrap_or(0),
                    bounds::PRICE_CENTS,
                )?,
                code: z.code,
                name: zone_name,
            });
        }
        let opens_at = self.opens_at.unwrap_or(now).trunc_subsecs(3);
        let closes_at = self.closes_at.map(|t| t.trunc_subsecs(3));
        if let Some(closes_at) = closes_at {
            if closes_at <= opens_at {
                return Err(SaleError::Invalid(
                    "closes_at must be after opens_at".into(),
                ));
            }
        }
        let release = Release {
            release_rate: setting("release_rate", self.release_rate, 100, bounds::RELEASE_RATE)?,
            release_interval_ms: setting(
                "release_interval_ms",
                self.release_interval_ms,
                1000,
                bounds::RELEASE_INTERVAL_MS,
            )?,
            max_active: self
                .max_active
                .map(|v| bounded("max_active", v, bounds::MAX_ACTIVE))
                .transpose()?,
            paused: false,
        };
        let def = SaleDef {
            id: SaleId::new(),
            organizer_id: organizer_id.to_owned(),
            name,
            opens_at,
            closes_at,
            zones,
            pass_ttl_seconds: setting(
                "pass_ttl_seconds",
                self.pass_ttl_seconds,
                300,
                bounds::PASS_TTL_SECONDS,
            )?,
            hold_ttl_seconds: setting(
                "hold_ttl_seconds",
                self.hold_ttl_seconds,
                600,
                bounds::HOLD_TTL_SECONDS,
            )?,
            per_user_limit: setting(
                "per_user_limit",
                self.per_user_limit,
                4,
                bounds::PER_USER_LIMIT,
            )?,
            created_at: now,
            prequeue_seed_sha256: String::new(),
        };
        Ok((def, release))
    }
}

/// Stores a new sale in Postgres and loads it into Redis, committing only
/// once Redis has it. Draws the sale's secret pre-queue seed and records its
/// SHA-256 in `def`.
pub async fn create(
    db: &PgPool,
    redis: &Pool,
    scripts: &Scripts,
    def: &mut SaleDef,
    release: &Release,
) -> Result<(), SaleError> {
    let seed = crate::queue::new_seed();
    def.prequeue_seed_sha256 = crate::queue::seed_commitment(&seed);
    let mut tx = db.begin().await?;
    sqlx::query!(
        "INSERT INTO sales (id, organizer_id, name, opens_at, closes_at, release_rate,
             release_interval_ms, max_active, pass_ttl_seconds, hold_ttl_seconds,
             per_user_limit, paused, created_at, prequeue_seed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        def.id.0,
        &def.organizer_id,
        &def.name,
        def.opens_at,
        def.closes_at,
        release.release_rate as i32,
        release.release_interval_ms as i32,
        release.max_active.map(|v| v as i32),
        def.pass_ttl_seconds as i32,
        def.hold_ttl_seconds as i32,
        def.per_user_limit as i32,
        release.paused,
        def.created_at,
        &seed,
    )
    .execute(&mut *tx)
    .await?;
    let codes: Vec<&str> = def.zones.iter().map(|z| z.code.as_str()).collect();
    let names: Vec<&str> = def.zones.iter().map(|z| z.name.as_str()).collect();
    let capacities: Vec<i32> = def.zones.iter().map(|z| z.capacity as i32).collect();
    let prices: Vec<i64> = def.zones.iter().map(|z| z.price_cents).collect();
    // `as _`: the macro checks a text[] parameter against `&[String]` only;
    // the borrowed strings are bound as they are.
    sqlx::query!(
        "INSERT INTO zones (sale_id, code, name, capacity, price_cents, position)
         SELECT $1, code, name, capacity, price, pos - 1
         FROM UNNEST($2::text[], $3::text[], $4::int[], $5::bigint[])
              WITH ORDINALITY AS z(code, name, capacity, price, pos)",
        def.id.0,
        &codes as _,
        &names as _,
        &capacities,
        &prices,
    )
    .execute(&mut *tx)
    .await?;
    load_into_redis(redis, scripts, def, release, &seed, 1, false).await?;
    tx.commit().await?;
    tracing::info!(sale.id = %def.id, zones = def.zones.len(), "sale created");
    Ok(())
}

/// Puts a sale into Redis (a no-op if it is already there), under `epoch`;
/// `frozen` keeps it refusing holds (a restore unfreezes it when done).
pub async fn load_into_redis(
    redis: &Pool,
    scripts: &Scripts,
    def: &SaleDef,
    release: &Release,
    seed: &str,
    epoch: i32,
    frozen: bool,
) -> Result<(), SaleError> {
    let keys = SaleKeys::new(def.id);
    let def_json = serde_json::to_string(def).map_err(StoreError::corrupt)?;
    let mut meta: Vec<(&str, String)> = vec![
        ("def", def_json),
        ("opens_at_ms", def.opens_at.timestamp_millis().to_string()),
        (
            "closes_at_ms",
            def.closes_at
                .map_or(0, |t| t.timestamp_millis())
                .to_string(),
        ),
        ("per_user_limit", def.per_user_limit.to_string()),
        (
            "hold_ttl_ms",
            (u64::from(def.hold_ttl_seconds) * 1000).to_string(),
        ),
        ("pass_ttl_seconds", def.pass_ttl_seconds.to_string()),
        ("seed", seed.to_owned()),
        ("epoch", epoch.to_string()),
        ("frozen", u8::from(frozen).to_string()),
    ];
    meta.extend(release_fields(release));
    let mut args: Vec<Value> = Vec::with_capacity(1 + meta.len() * 2 + def.zones.len() * 2);
    args.push(Value::from(meta.len() as i64));
    for (k, v) in meta {
        args.push(Value::from(k));
        args.push(Value::from(v));
    }
    for z in &def.zones {
        args.push(Value::from(z.code.as_str()));
        args.push(Value::from(i64::from(z.capacity)));
    }
    let _: i64 = scripts
        .load_sale
        .run(redis, vec![keys.meta(), keys.zones()], args)
        .await?;
    let _: i64 = redis.sadd(keys::SALES, def.id.to_string()).await?;
    Ok(())
}

/// The release settings as Redis meta fields (`max_active` 0 means no cap).
fn release_fields(r: &Release) -> Vec<(&'static str, String)> {
    vec![
        ("release_rate", r.release_rate.to_string()),
        ("release_interval_ms", r.release_interval_ms.to_string()),
        ("max_active", r.max_active.unwrap_or(0).to_string()),
        ("paused", u8::from(r.paused).to_string()),
    ]
}

/// Writes changed release settings to Redis; the next release tick reads
/// them. `SaleNotFound` when Redis does not have the sale.
pub async fn apply_release(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    r: &Release,
) -> Result<(), SaleError> {
    let args: Vec<Value> = release_fields(r)
        .into_iter()
        .flat_map(|(k, v)| [Value::from(k), Value::from(v)])
        .collect();
    let applied: i64 = scripts
        .set_release
        .run(redis, vec![SaleKeys::new(sale).meta()], args)
        .await?;
    match applied {
        1 => Ok(()),
        -1 => Err(SaleError::Frozen),
        _ => Err(SaleError::NotFound),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleState {
    Scheduled,
    Open,
    Paused,
    SoldOut,
    Closed,
}

/// A zone's live counters, read in one HGETALL (so they are consistent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ZoneStock {
    pub capacity: i64,
    pub available: i64,
    pub held: i64,
    pub confirmed: i64,
}

/// A sale as Redis sees it right now.
#[derive(Clone, Debug)]
pub struct LiveSale {
    pub def: SaleDef,
    pub release: Release,
    /// Stock per zone, in the order of `def.zones`.
    pub stock: Vec<ZoneStock>,
    pub waiting: i64,
    /// The pre-queue seed (hex). Secret until the sale opens.
    pub seed: String,
    /// Buyers admitted from the queue so far.
    pub admitted_total: i64,
    /// Refusing holds while its state is restored.
    pub frozen: bool,
}

impl LiveSale {
    pub fn state(&self, now: DateTime<Utc>) -> SaleState {
        if self.def.closes_at.is_some_and(|c| now >= c) {
            SaleState::Closed
        } else if self.stock.iter().all(|s| s.available == 0 && s.held == 0) {
            SaleState::SoldOut
        } else if now < self.def.opens_at {
            SaleState::Scheduled
        } else if self.release.paused {
            SaleState::Paused
        } else {
            SaleState::Open
        }
    }
}

/// Reads a sale's definition, settings and stock from Redis in one round
/// trip. `None` when Redis does not know the sale.
pub async fn live(redis: &Pool, sale: SaleId) -> Result<Option<LiveSale>, StoreError> {
    let keys = SaleKeys::new(sale);
    let pipe = redis.next().pipeline();
    let _: () = pipe.hgetall(keys.meta()).await?;
    let _: () = pipe.hgetall(keys.zones()).await?;
    let _: () = pipe.zcard(keys.waiting()).await?;
    let (meta, zones, waiting): (HashMap<String, String>, HashMap<String, i64>, i64) =
        pipe.all().await?;
    let Some(def_json) = meta.get("def") else {
        return Ok(None);
    };
    let def: SaleDef = serde_json::from_str(def_json).map_err(StoreError::corrupt)?;
    let num = |k: &str| meta.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    let release = Release {
        release_rate: num("release_rate"),
        release_interval_ms: num("release_interval_ms"),
        max_active: Some(num("max_active")).filter(|v| *v > 0),
        paused: num("paused") == 1,
    };
    let stock = def
        .zones
        .iter()
        .map(|z| {
            let get = |c: Counter| zones.get(&c.field(&z.code)).copied().unwrap_or(0);
            ZoneStock {
                capacity: get(Counter::Capacity),
                available: get(Counter::Available),
                held: get(Counter::Held),
                confirmed: get(Counter::Confirmed),
            }
        })
        .collect();
    Ok(Some(LiveSale {
        seed: meta.get("seed").cloned().unwrap_or_default(),
        frozen: meta.get("frozen").is_some_and(|f| f == "1"),
        admitted_total: meta
            .get("admitted_total")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        def,
        release,
        stock,
        waiting,
    }))
}

/// Milliseconds since the epoch as a UTC time.
pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// Whether Postgres knows a sale, remembered for a second per sale.
///
/// A sale Redis does not have is either unknown or lost by Redis (flushed,
/// restarted without its AOF, an empty replica). Telling the two apart takes
/// a Postgres query, and with a lost sale every buyer's poll asks: 100,000
/// buyers polling would be a query storm on Postgres at the worst moment.
/// The answer is cached under (sale, current second), and concurrent askers
/// of the same key wait for one query, so Postgres sees at most one query per
/// sale per second.
pub struct KnownSales {
    answers: quick_cache::sync::Cache<(SaleId, i64), bool>,
}

impl Default for KnownSales {
    fn default() -> Self {
        Self {
            answers: quick_cache::sync::Cache::new(10_000),
        }
    }
}

impl KnownSales {
    pub async fn in_postgres(&self, db: &PgPool, sale: SaleId) -> Result<bool, sqlx::Error> {
        let second = Utc::now().timestamp();
        self.answers
            .get_or_insert_async(&(sale, second), async {
                metrics::counter!("flashsale_lost_sale_lookups_total").increment(1);
                let known: Option<i32> =
                    sqlx::query_scalar!(r#"SELECT 1 AS "known!" FROM sales WHERE id = $1"#, sale.0)
                        .fetch_optional(db)
                        .await?;
                Ok(known.is_some())
            })
            .await
    }
}
