//! Sales: their definition (Postgres), their live copy (Redis), their state.
//!
//! A sale is created in one Postgres transaction and loaded into Redis before
//! that transaction commits, so a sale a client was told about always has its
//! stock in Redis. The definition never changes after creation; the settings
//! of [`Release`] (the release rate and interval, `max_active`, `paused`,
//! `admit_idle_seconds`, `admit_headroom_percent`, `closes_at`) change live, in Postgres (with an audit
//! row) and in Redis.
//!
//! Once a sale has closed and the workers' archiver has moved it out of Redis
//! (`sales.archived_at`), Postgres alone answers for it: [`archived`] reads it
//! back in the same shape as [`live`], with nothing waiting or held.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use fred::{
    clients::Pool,
    interfaces::{HashesInterface, SortedSetsInterface},
    types::Value,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    ids::SaleId,
    keys::{Counter, SaleKeys},
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
    pub const ADMIT_IDLE_SECONDS: (i64, i64) = (5, 3_600);
    pub const ADMIT_HEADROOM_PERCENT: (i64, i64) = (0, 1_000);
    /// Rows of a seated zone.
    pub const SEAT_ROWS: usize = 200;
    /// Seats in one row.
    pub const SEATS_PER_ROW: (i64, i64) = (1, 1_000);
    /// Seats in a seated zone: its seat map is one Redis string, read whole
    /// by every look at the map and every hold in the zone.
    pub const ZONE_SEATS: u32 = 20_000;
}

/// An admitted buyer who holds nothing for this long loses the turn, unless
/// the sale says otherwise.
pub const DEFAULT_ADMIT_IDLE_SECONDS: u32 = 60;

/// Buyers admitted and yet to hold never outnumber the available tickets
/// plus this percent of them, unless the sale says otherwise. At the end of
/// a sale, admitted buyers who walk away keep tickets from the next buyers
/// until their turn runs out: with 40 tickets left, 400 buyers waiting and
/// the first 40 admitted walking away, the last tickets sold after 61 s with
/// no headroom and in 0.28 s with 100% (`examples/tail.rs`). The cost: near
/// the very end, up to this percent more buyers than tickets left are
/// admitted, and those who find nothing to hold are told `sold_out`.
pub const DEFAULT_ADMIT_HEADROOM_PERCENT: u32 = 100;

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
    /// Seconds an admitted buyer may hold nothing before losing the turn
    /// (default 60).
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 5, maximum = 3600)]
    pub admit_idle_seconds: Option<i64>,
    /// Buyers admitted and yet to hold never outnumber the available
    /// tickets plus this percent of them (default 100), so that buyers who
    /// are admitted and walk away do not keep the last tickets waiting.
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 0, maximum = 1000)]
    pub admit_headroom_percent: Option<i64>,
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
    /// Required unless the zone is seated; a seated zone's is its number
    /// of seats.
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 1, maximum = 10000000, example = 5000)]
    pub capacity: Option<i64>,
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 0, maximum = 10000000000_i64)]
    pub price_cents: Option<i64>,
    /// Makes the zone seated: buyers hold seats `<row>-<number>`.
    #[serde(default)]
    pub seating: Option<NewSeating>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSeating {
    /// Front to back.
    #[schema(min_items = 1, max_items = 200)]
    pub rows: Vec<NewSeatRow>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSeatRow {
    /// Unique within the zone.
    #[schema(pattern = "^[A-Za-z0-9]{1,4}$", example = "A")]
    pub row: String,
    /// Seats numbered 1 to this.
    #[serde(deserialize_with = "crate::json::req_whole")]
    #[schema(minimum = 1, maximum = 1000, example = 20)]
    pub seats: i64,
    /// Numbers in 1..=`seats` that are no seat (an aisle gap, a blocked
    /// view): never sold, and they part the seats either side of them.
    #[serde(default)]
    #[schema(example = json!([11, 12]))]
    pub missing: Vec<i64>,
}

/// The seats of a seated zone: rows front to back, each numbered from 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Seating {
    pub rows: Vec<SeatRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeatRow {
    pub row: String,
    pub seats: u32,
    /// Numbers that are no seat, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<u32>,
}

impl SeatRow {
    /// Whether seat `number` exists.
    pub fn has(&self, number: u32) -> bool {
        (1..=self.seats).contains(&number) && self.missing.binary_search(&number).is_err()
    }
}

impl Seating {
    /// Every seat.
    pub fn count(&self) -> u32 {
        self.rows
            .iter()
            .map(|r| r.seats - r.missing.len() as u32)
            .sum()
    }

    /// `ids` (`A-7`) sorted in map order: by row from the front, then by
    /// number (ids of no row last).
    pub fn in_map_order<'a>(&self, ids: &'a [String]) -> Vec<&'a str> {
        let key = |id: &str| {
            let (row, n) = id.split_once('-').unwrap_or((id, ""));
            let row = self.rows.iter().position(|r| r.row == row);
            (row.is_none(), row, n.parse::<u32>().unwrap_or(0))
        };
        let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
        sorted.sort_by_key(|id| key(id));
        sorted
    }

    /// Seat ids in map order.
    pub fn seat_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.rows.iter().flat_map(|r| {
            (1..=r.seats)
                .filter(|&n| r.has(n))
                .map(move |n| format!("{}-{n}", r.row))
        })
    }
}

impl NewSeating {
    fn validate(self, zone: usize) -> Result<Seating, SaleError> {
        let field = format!("zones[{zone}].seating.rows");
        if self.rows.is_empty() || self.rows.len() > bounds::SEAT_ROWS {
            return Err(SaleError::Invalid(format!(
                "{field} must list 1 to {} rows",
                bounds::SEAT_ROWS
            )));
        }
        let mut rows: Vec<SeatRow> = Vec::with_capacity(self.rows.len());
        for (i, r) in self.rows.into_iter().enumerate() {
            let name_ok =
                (1..=4).contains(&r.row.len()) && r.row.bytes().all(|b| b.is_ascii_alphanumeric());
            if !name_ok {
                return Err(SaleError::Invalid(format!(
                    "{field}[{i}].row must be 1 to 4 letters or digits"
                )));
            }
            if rows.iter().any(|seen| seen.row == r.row) {
                return Err(SaleError::Invalid(format!(
                    "{field}[{i}].row `{}` appears twice",
                    r.row
                )));
            }
            let seats = bounded(
                &format!("{field}[{i}].seats"),
                r.seats,
                bounds::SEATS_PER_ROW,
            )?;
            let mut missing = Vec::with_capacity(r.missing.len());
            for n in r.missing {
                if !(1..=i64::from(seats)).contains(&n) {
                    return Err(SaleError::Invalid(format!(
                        "{field}[{i}].missing must list seat numbers from 1 to {seats}, not {n}"
                    )));
                }
                missing.push(n as u32);
            }
            missing.sort_unstable();
            if missing.windows(2).any(|w| w[0] == w[1]) {
                return Err(SaleError::Invalid(format!(
                    "{field}[{i}].missing lists a number twice"
                )));
            }
            if missing.len() == seats as usize {
                return Err(SaleError::Invalid(format!(
                    "{field}[{i}].missing leaves the row without seats"
                )));
            }
            rows.push(SeatRow {
                row: r.row,
                seats,
                missing,
            });
        }
        let seating = Seating { rows };
        if seating.count() > bounds::ZONE_SEATS {
            return Err(SaleError::Invalid(format!(
                "zones[{zone}].seating has {} seats, at most {} are allowed",
                seating.count(),
                bounds::ZONE_SEATS
            )));
        }
        Ok(seating)
    }
}

/// A validated sale definition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SaleDef {
    pub id: SaleId,
    pub organizer_id: String,
    pub name: String,
    pub opens_at: DateTime<Utc>,
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
    /// A seated zone's seats (its capacity is their number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seating: Option<Seating>,
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

/// The settings an organizer changes while the sale runs: how it releases
/// buyers, and when it ends. An audit row records each change as the JSON of
/// this struct, before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub release_rate: u32,
    pub release_interval_ms: u32,
    pub max_active: Option<u32>,
    pub paused: bool,
    pub admit_idle_seconds: u32,
    /// Buyers admitted and yet to hold never outnumber the available
    /// tickets plus this percent of them.
    pub admit_headroom_percent: u32,
    /// When holds stop (`None`: the sale runs until closed). A sale past it
    /// is closed for good.
    pub closes_at: Option<DateTime<Utc>>,
}

impl Release {
    /// Whether the sale has closed by `now`.
    pub fn closed_at(&self, now: DateTime<Utc>) -> bool {
        self.closes_at.is_some_and(|c| now >= c)
    }
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
            let seating = z.seating.map(|s| s.validate(i)).transpose()?;
            let capacity = match (&seating, z.capacity) {
                (Some(seating), Some(c)) if c != i64::from(seating.count()) => {
                    return Err(SaleError::Invalid(format!(
                        "zones[{i}].capacity is {c} but the zone has {} seats: leave it out",
                        seating.count()
                    )))
                }
                (Some(seating), _) => i64::from(seating.count()),
                (None, Some(c)) => c,
                (None, None) => {
                    return Err(SaleError::Invalid(format!(
                        "zones[{i}].capacity is required for a zone without seating"
                    )))
                }
            };
            zones.push(ZoneDef {
                seating,
                capacity: bounded(&format!("zones[{i}].capacity"), capacity, bounds::CAPACITY)?,
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
            admit_idle_seconds: setting(
                "admit_idle_seconds",
                self.admit_idle_seconds,
                i64::from(DEFAULT_ADMIT_IDLE_SECONDS),
                bounds::ADMIT_IDLE_SECONDS,
            )?,
            admit_headroom_percent: setting(
                "admit_headroom_percent",
                self.admit_headroom_percent,
                i64::from(DEFAULT_ADMIT_HEADROOM_PERCENT),
                bounds::ADMIT_HEADROOM_PERCENT,
            )?,
            closes_at,
        };
        let def = SaleDef {
            id: SaleId::new(),
            organizer_id: organizer_id.to_owned(),
            name,
            opens_at,
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
             per_user_limit, paused, created_at, prequeue_seed, admit_idle_seconds,
             admit_headroom_percent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        def.id.0,
        &def.organizer_id,
        &def.name,
        def.opens_at,
        release.closes_at,
        release.release_rate as i32,
        release.release_interval_ms as i32,
        release.max_active.map(|v| v as i32),
        def.pass_ttl_seconds as i32,
        def.hold_ttl_seconds as i32,
        def.per_user_limit as i32,
        release.paused,
        def.created_at,
        &seed,
        release.admit_idle_seconds as i32,
        release.admit_headroom_percent as i32,
    )
    .execute(&mut *tx)
    .await?;
    let codes: Vec<&str> = def.zones.iter().map(|z| z.code.as_str()).collect();
    let names: Vec<&str> = def.zones.iter().map(|z| z.name.as_str()).collect();
    let capacities: Vec<i32> = def.zones.iter().map(|z| z.capacity as i32).collect();
    let prices: Vec<i64> = def.zones.iter().map(|z| z.price_cents).collect();
    let seatings: Vec<Option<String>> = def
        .zones
        .iter()
        .map(|z| z.seating.as_ref().map(serde_json::to_string).transpose())
        .collect::<Result<_, _>>()
        .map_err(StoreError::corrupt)?;
    // `as _`: the macro checks a text[] parameter against `&[String]` only;
    // the borrowed strings are bound as they are.
    sqlx::query!(
        "INSERT INTO zones (sale_id, code, name, capacity, price_cents, position, seating)
         SELECT $1, code, name, capacity, price, pos - 1, seating::jsonb
         FROM UNNEST($2::text[], $3::text[], $4::int[], $5::bigint[], $6::text[])
              WITH ORDINALITY AS z(code, name, capacity, price, seating, pos)",
        def.id.0,
        &codes as _,
        &names as _,
        &capacities,
        &prices,
        &seatings as _,
    )
    .execute(&mut *tx)
    .await?;
    let fresh = Loading {
        epoch: 1,
        frozen: false,
        seats: None,
    };
    load_into_redis(redis, scripts, def, release, &seed, fresh).await?;
    tx.commit().await?;
    tracing::info!(sale.id = %def.id, zones = def.zones.len(), "sale created");
    Ok(())
}

/// How a sale goes into Redis.
pub struct Loading<'a> {
    /// The epoch it is loaded under.
    pub epoch: i32,
    /// Refusing holds (a restore unfreezes it when done).
    pub frozen: bool,
    /// Seated zones' segments of the seat map as a restore rebuilt them
    /// ([`crate::seatmap::painted`]); a zone not here starts with every
    /// seat free.
    pub seats: Option<&'a HashMap<String, String>>,
}

/// Puts a sale into Redis (a no-op if it is already there).
pub async fn load_into_redis(
    redis: &Pool,
    scripts: &Scripts,
    def: &SaleDef,
    release: &Release,
    seed: &str,
    Loading {
        epoch,
        frozen,
        seats,
    }: Loading<'_>,
) -> Result<(), SaleError> {
    let keys = SaleKeys::new(def.id);
    let def_json = serde_json::to_string(def).map_err(StoreError::corrupt)?;
    let mut meta: Vec<(&str, String)> = vec![
        ("def", def_json),
        ("opens_at_ms", def.opens_at.timestamp_millis().to_string()),
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
    let mut args: Vec<Value> = Vec::with_capacity(1 + meta.len() * 2 + def.zones.len() * 3);
    args.push(Value::from(meta.len() as i64));
    for (k, v) in meta {
        args.push(Value::from(k));
        args.push(Value::from(v));
    }
    for z in &def.zones {
        args.push(Value::from(z.code.as_str()));
        args.push(Value::from(i64::from(z.capacity)));
        args.push(Value::from(
            z.seating
                .as_ref()
                .map(|seating| {
                    seats
                        .and_then(|painted| painted.get(&z.code).cloned())
                        .unwrap_or_else(|| crate::seatmap::segment(seating))
                })
                .unwrap_or_default(),
        ));
    }
    let _: i64 = scripts
        .load_sale
        .run(
            redis,
            vec![keys.meta(), keys.zones(), keys.seats(), keys.seat_map()],
            args,
        )
        .await?;
    crate::live_sales::add(redis, def.id).await?;
    Ok(())
}

/// The live settings as Redis meta fields, as the scripts read them
/// (`max_active` 0: no cap; `closes_at_ms` 0: no close).
fn release_fields(r: &Release) -> Vec<(&'static str, String)> {
    vec![
        ("release_rate", r.release_rate.to_string()),
        ("release_interval_ms", r.release_interval_ms.to_string()),
        ("max_active", r.max_active.unwrap_or(0).to_string()),
        ("paused", u8::from(r.paused).to_string()),
        (
            "admit_idle_ms",
            (u64::from(r.admit_idle_seconds) * 1000).to_string(),
        ),
        (
            "admit_headroom_percent",
            r.admit_headroom_percent.to_string(),
        ),
        (
            "closes_at_ms",
            r.closes_at.map_or(0, |t| t.timestamp_millis()).to_string(),
        ),
    ]
}

/// Writes changed live settings to Redis (one script call: all or none);
/// the next release tick and every script after it read them. A
/// `closes_at_ms` in the past ends the sale there and then: the scripts
/// refuse joins, admissions and holds from that moment. `SaleNotFound` when
/// Redis does not have the sale.
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
    /// When it left Redis: then this is Postgres's record of the sale (see
    /// [`archived`]), with nothing waiting or held.
    pub archived_at: Option<DateTime<Utc>>,
}

impl LiveSale {
    pub fn state(&self, now: DateTime<Utc>) -> SaleState {
        if self.archived_at.is_some() || self.release.closed_at(now) {
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
    let parsed = |k: &str| meta.get(k).and_then(|v| v.parse::<i64>().ok());
    let num = |k: &str| parsed(k).and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    let release = Release {
        release_rate: num("release_rate"),
        release_interval_ms: num("release_interval_ms"),
        max_active: Some(num("max_active")).filter(|v| *v > 0),
        paused: num("paused") == 1,
        // Sales loaded before the setting existed run with the default.
        admit_idle_seconds: parsed("admit_idle_ms")
            .and_then(|ms| u32::try_from(ms / 1000).ok())
            .unwrap_or(DEFAULT_ADMIT_IDLE_SECONDS),
        // The same, as the releaser does.
        admit_headroom_percent: parsed("admit_headroom_percent")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(DEFAULT_ADMIT_HEADROOM_PERCENT),
        closes_at: parsed("closes_at_ms")
            .filter(|ms| *ms > 0)
            .and_then(from_millis),
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
        // Frozen on its way out of Redis (archiving) is not a sale waiting
        // for a restore: it has closed, and reads as closed.
        frozen: meta.get("frozen").is_some_and(|f| f == "1")
            && meta.get("frozen_reason").is_none_or(|r| r != "archiving"),
        admitted_total: meta
            .get("admitted_total")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        def,
        release,
        stock,
        waiting,
        archived_at: None,
    }))
}

/// Milliseconds since the epoch as a UTC time.
pub fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// What Postgres says of a sale Redis does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// No such sale.
    Unknown,
    /// A live sale Redis lost: it waits for `flashsale restore`.
    Lost,
    /// Archived: it left Redis on purpose, and Postgres answers for it.
    Archived,
}

/// What Postgres says of sales Redis does not have, remembered for a second
/// per sale.
///
/// A sale Redis does not have is unknown, archived, or lost by Redis
/// (flushed, restarted without its AOF, an empty replica). Telling them apart
/// takes a Postgres query, and with a lost sale every buyer's poll asks:
/// 100,000 buyers polling would be a query storm on Postgres at the worst
/// moment. The answer is cached under (sale, current second), and concurrent
/// askers of the same key wait for one query, so Postgres sees at most one
/// query per sale per second. An archived sale never changes again, so its
/// record is kept as read, for the many reads a finished sale's page gets.
pub struct KnownSales {
    answers: quick_cache::sync::Cache<(SaleId, i64), Recorded>,
    archived: quick_cache::sync::Cache<SaleId, std::sync::Arc<LiveSale>>,
}

impl Default for KnownSales {
    fn default() -> Self {
        Self {
            answers: quick_cache::sync::Cache::new(10_000),
            archived: quick_cache::sync::Cache::new(1_000),
        }
    }
}

impl KnownSales {
    /// Whether Postgres knows the sale at all.
    pub async fn in_postgres(&self, db: &PgPool, sale: SaleId) -> Result<bool, sqlx::Error> {
        Ok(self.lookup(db, sale).await? != Recorded::Unknown)
    }

    /// What Postgres says of a sale Redis does not have.
    pub async fn lookup(&self, db: &PgPool, sale: SaleId) -> Result<Recorded, sqlx::Error> {
        if self.archived.get(&sale).is_some() {
            return Ok(Recorded::Archived);
        }
        let second = Utc::now().timestamp();
        self.answers
            .get_or_insert_async(&(sale, second), async {
                metrics::counter!("flashsale_lost_sale_lookups_total").increment(1);
                let archived = sqlx::query_scalar!(
                    r#"SELECT archived_at IS NOT NULL AS "archived!" FROM sales WHERE id = $1"#,
                    sale.0
                )
                .fetch_optional(db)
                .await?;
                Ok(match archived {
                    None => Recorded::Unknown,
                    Some(false) => Recorded::Lost,
                    Some(true) => Recorded::Archived,
                })
            })
            .await
    }

    /// The archived sale as Postgres records it; `None` when it is not
    /// archived (unknown, or live).
    pub async fn archived(
        &self,
        db: &PgPool,
        sale: SaleId,
    ) -> Result<Option<std::sync::Arc<LiveSale>>, StoreError> {
        if let Some(found) = self.archived.get(&sale) {
            return Ok(Some(found));
        }
        let Some(found) = archived(db, sale).await? else {
            return Ok(None);
        };
        let found = std::sync::Arc::new(found);
        self.archived.insert(sale, found.clone());
        Ok(Some(found))
    }
}

/// The time by Redis's clock, which every script goes by (read on the node
/// that holds `sale`).
pub async fn redis_now(redis: &Pool, sale: SaleId) -> Result<DateTime<Utc>, StoreError> {
    use fred::{interfaces::ClientLike, types::CustomCommand};
    let meta = SaleKeys::new(sale).meta();
    let cmd = CustomCommand::new_static("TIME", meta.as_str(), false);
    let (secs, micros): (i64, i64) = redis.custom(cmd, Vec::<Value>::new()).await?;
    from_millis(secs * 1000 + micros / 1000)
        .ok_or_else(|| StoreError::corrupt(anyhow::anyhow!("redis TIME out of range: {secs}")))
}

/// A sale's row, as the reads from Postgres need it.
struct SaleRecord {
    id: SaleId,
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
    admit_idle_seconds: i32,
    admit_headroom_percent: i32,
    admitted_total: i64,
    archived_at: Option<DateTime<Utc>>,
}

struct ZoneRecord {
    sale_id: SaleId,
    code: String,
    name: String,
    capacity: i32,
    price_cents: i64,
    sold: i32,
    seating: Option<String>,
}

/// Sales as Postgres records them, each with its zones (`sold` standing for
/// confirmed), nothing waiting and nothing held: what an archived sale is,
/// and the best Postgres can say of a live one.
async fn with_zones(db: &PgPool, rows: Vec<SaleRecord>) -> Result<Vec<LiveSale>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id.0).collect();
    let zones = sqlx::query_as!(
        ZoneRecord,
        r#"SELECT sale_id AS "sale_id: SaleId", code, name, capacity, price_cents, sold,
                  seating::text AS seating
           FROM zones WHERE sale_id = ANY($1) ORDER BY sale_id, position"#,
        &ids
    )
    .fetch_all(db)
    .await?;
    let mut by_sale: HashMap<SaleId, Vec<ZoneRecord>> = HashMap::new();
    for z in zones {
        by_sale.entry(z.sale_id).or_default().push(z);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let zones = by_sale.remove(&r.id).unwrap_or_default();
            let positive = |v: i32| u32::try_from(v).unwrap_or(0);
            LiveSale {
                stock: zones
                    .iter()
                    .map(|z| ZoneStock {
                        capacity: i64::from(z.capacity),
                        available: i64::from(z.capacity - z.sold),
                        held: 0,
                        confirmed: i64::from(z.sold),
                    })
                    .collect(),
                def: SaleDef {
                    id: r.id,
                    organizer_id: r.organizer_id,
                    name: r.name,
                    opens_at: r.opens_at,
                    zones: zones
                        .into_iter()
                        .map(|z| ZoneDef {
                            code: z.code,
                            name: z.name,
                            capacity: positive(z.capacity),
                            price_cents: z.price_cents,
                            seating: z.seating.and_then(|s| serde_json::from_str(&s).ok()),
                        })
                        .collect(),
                    pass_ttl_seconds: positive(r.pass_ttl_seconds),
                    hold_ttl_seconds: positive(r.hold_ttl_seconds),
                    per_user_limit: positive(r.per_user_limit),
                    created_at: r.created_at,
                    prequeue_seed_sha256: crate::queue::seed_commitment(&r.prequeue_seed),
                },
                release: Release {
                    release_rate: positive(r.release_rate),
                    release_interval_ms: positive(r.release_interval_ms),
                    max_active: r.max_active.map(positive),
                    paused: r.paused,
                    admit_idle_seconds: positive(r.admit_idle_seconds),
                    admit_headroom_percent: positive(r.admit_headroom_percent),
                    closes_at: r.closes_at,
                },
                waiting: 0,
                seed: r.prequeue_seed,
                admitted_total: r.admitted_total,
                frozen: false,
                archived_at: r.archived_at,
            }
        })
        .collect())
}

/// An archived sale as Postgres records it; `None` when the sale is unknown
/// or still live.
pub async fn archived(db: &PgPool, sale: SaleId) -> Result<Option<LiveSale>, StoreError> {
    let rows = sqlx::query_as!(
        SaleRecord,
        r#"SELECT id AS "id: SaleId", organizer_id, name, opens_at, closes_at, release_rate,
                  release_interval_ms, max_active, pass_ttl_seconds, hold_ttl_seconds,
                  per_user_limit, paused, created_at, prequeue_seed, admit_idle_seconds,
                  admit_headroom_percent, admitted_total, archived_at
           FROM sales WHERE id = $1 AND archived_at IS NOT NULL"#,
        sale.0
    )
    .fetch_all(db)
    .await?;
    Ok(with_zones(db, rows).await?.pop())
}

/// The part of a sale's life a listing shows, by its times alone: a sale
/// that is `Open` may read `paused` or `sold_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Not yet open, not closed.
    Scheduled,
    /// Opened and not closed.
    Open,
    /// Past its close.
    Closed,
}

impl Window {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scheduled" => Window::Scheduled,
            "open" => Window::Open,
            "closed" => Window::Closed,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Window::Scheduled => "scheduled",
            Window::Open => "open",
            Window::Closed => "closed",
        }
    }
}

/// One page of a listing of sales, newest first.
#[derive(Clone, Debug)]
pub struct Listing {
    /// Only this organizer's sales.
    pub organizer: Option<String>,
    pub window: Option<Window>,
    /// Sales on the page, at most.
    pub limit: u32,
    /// Only sales created before this one (its `created_at` and id): the
    /// page after the one that ended there.
    pub before: Option<(DateTime<Utc>, SaleId)>,
    /// The moment the windows are judged at.
    pub now: DateTime<Utc>,
}

/// A page of sales as Postgres records them (see [`with_zones`]; the caller
/// reads the live ones' state from Redis), newest first by (`created_at`,
/// id).
pub async fn list(db: &PgPool, l: &Listing) -> Result<Vec<LiveSale>, StoreError> {
    let window = l.window.map(Window::as_str);
    let (before_at, before_id) = l
        .before
        .map_or((None, None), |(at, id)| (Some(at), Some(id.0)));
    let limit = i64::from(l.limit);
    // Two statements rather than one with `organizer_id = $1 OR $1 IS NULL`,
    // so each has a plan on its own index.
    let rows = match &l.organizer {
        Some(organizer) => {
            sqlx::query_as!(
                SaleRecord,
                r#"SELECT id AS "id: SaleId", organizer_id, name, opens_at, closes_at, release_rate,
                          release_interval_ms, max_active, pass_ttl_seconds, hold_ttl_seconds,
                          per_user_limit, paused, created_at, prequeue_seed, admit_idle_seconds,
                          admit_headroom_percent, admitted_total, archived_at
                   FROM sales
                   WHERE organizer_id = $1
                     AND CASE $2::text
                           WHEN 'scheduled' THEN opens_at > $3 AND (closes_at IS NULL OR closes_at > $3)
                           WHEN 'open' THEN opens_at <= $3 AND (closes_at IS NULL OR closes_at > $3)
                           WHEN 'closed' THEN closes_at <= $3
                           ELSE true
                         END
                     AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
                   ORDER BY created_at DESC, id DESC
                   LIMIT $6"#,
                organizer,
                window,
                l.now,
                before_at,
                before_id,
                limit
            )
            .fetch_all(db)
            .await?
        }
        None => {
            sqlx::query_as!(
                SaleRecord,
                r#"SELECT id AS "id: SaleId", organizer_id, name, opens_at, closes_at, release_rate,
                          release_interval_ms, max_active, pass_ttl_seconds, hold_ttl_seconds,
                          per_user_limit, paused, created_at, prequeue_seed, admit_idle_seconds,
                          admit_headroom_percent, admitted_total, archived_at
                   FROM sales
                   WHERE CASE $1::text
                           WHEN 'scheduled' THEN opens_at > $2 AND (closes_at IS NULL OR closes_at > $2)
                           WHEN 'open' THEN opens_at <= $2 AND (closes_at IS NULL OR closes_at > $2)
                           WHEN 'closed' THEN closes_at <= $2
                           ELSE true
                         END
                     AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                   ORDER BY created_at DESC, id DESC
                   LIMIT $5"#,
                window,
                l.now,
                before_at,
                before_id,
                limit
            )
            .fetch_all(db)
            .await?
        }
    };
    with_zones(db, rows).await
}
