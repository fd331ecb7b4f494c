//! `/v1/sales`: organizers create sales, steer their release and close
//! them, and read their audit log and attendees; anyone lists sales and
//! reads a sale's live state.
//!
//! A live sale is read from Redis. An archived one (closed, drained, and
//! moved out of Redis by the workers' archiver) is read from Postgres, in the
//! same shape: state `closed`, nothing waiting or held.

use std::collections::HashMap;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use fred::interfaces::{HashesInterface, KeysInterface};
use serde::{Deserialize, Serialize};

use super::{or_frozen, AppState, Json, Organizer, Path, SALE_BODY_LIMIT};
use crate::error::Problem;
use crate::{
    error::{ApiError, ApiResult},
    ids::SaleId,
    keys::SaleKeys,
    sales::{self, bounds, from_millis, LiveSale, NewSale, Recorded, Release, SaleState, Window},
    tokens::Identity,
};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(
            OpenApiRouter::new()
                .routes(routes!(create_sale, list_sales))
                .layer(axum::extract::DefaultBodyLimit::max(SALE_BODY_LIMIT)),
        )
        .routes(routes!(organizer_sales))
        .routes(routes!(get_sale, patch_sale))
        .routes(routes!(stats))
        .routes(routes!(changes))
        .routes(routes!(attendees))
        .routes(routes!(seat_map))
}

/// A sale, with its live state and stock.
#[derive(Serialize, ToSchema)]
#[schema(as = Sale)]
pub struct SaleBody {
    #[schema(value_type = uuid::Uuid)]
    id: SaleId,
    name: String,
    state: SaleState,
    opens_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    closes_at: Option<DateTime<Utc>>,
    zones: Vec<ZoneBody>,
    release_rate: u32,
    release_interval_ms: u32,
    max_active: Option<u32>,
    paused: bool,
    pass_ttl_seconds: u32,
    hold_ttl_seconds: u32,
    per_user_limit: u32,
    /// Seconds an admitted buyer may hold nothing before losing the turn.
    admit_idle_seconds: u32,
    /// Buyers admitted and yet to hold never outnumber the available
    /// tickets plus this percent of them.
    admit_headroom_percent: u32,
    waiting: i64,
    created_at: DateTime<Utc>,
    /// SHA-256 of the pre-queue seed: fixed, and public, from creation.
    prequeue_seed_sha256: String,
    /// Present and true while the sale refuses holds because its live state
    /// is being restored from Postgres.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    frozen: bool,
    /// The seed itself, once the sale has opened, so anyone can recompute
    /// the pre-queue order from the organizer's export.
    #[serde(skip_serializing_if = "Option::is_none")]
    prequeue_seed: Option<String>,
    /// When the sale, closed and fully recorded, left Redis: from then on
    /// Postgres answers for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    archived_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Zone)]
struct ZoneBody {
    code: String,
    name: String,
    capacity: u32,
    price_cents: i64,
    available: i64,
    /// A seated zone's rows (absent for general admission).
    #[serde(skip_serializing_if = "Option::is_none")]
    seating: Option<sales::Seating>,
}

impl SaleBody {
    fn new(live: LiveSale) -> Self {
        let now = Utc::now();
        let state = live.state(now);
        let LiveSale {
            def,
            release,
            stock,
            waiting,
            seed,
            frozen,
            archived_at,
            ..
        } = live;
        let prequeue_seed = (now >= def.opens_at).then_some(seed);
        Self {
            id: def.id,
            name: def.name,
            state,
            opens_at: def.opens_at,
            closes_at: release.closes_at,
            zones: def
                .zones
                .into_iter()
                .zip(stock)
                .map(|(z, s)| ZoneBody {
                    code: z.code,
                    name: z.name,
                    capacity: z.capacity,
                    price_cents: z.price_cents,
                    available: s.available,
                    seating: z.seating,
                })
                .collect(),
            release_rate: release.release_rate,
            release_interval_ms: release.release_interval_ms,
            max_active: release.max_active,
            paused: release.paused,
            pass_ttl_seconds: def.pass_ttl_seconds,
            hold_ttl_seconds: def.hold_ttl_seconds,
            per_user_limit: def.per_user_limit,
            admit_idle_seconds: release.admit_idle_seconds,
            admit_headroom_percent: release.admit_headroom_percent,
            waiting,
            created_at: def.created_at,
            prequeue_seed_sha256: def.prequeue_seed_sha256,
            frozen,
            prequeue_seed,
            archived_at,
        }
    }
}

/// The sale wherever it lives: Redis while it is live, Postgres once it is
/// archived. A sale Postgres knows that is neither (Redis lost it) is `503
/// sale_frozen` until restored.
pub(super) async fn any_sale(state: &AppState, sale: SaleId) -> ApiResult<LiveSale> {
    if let Some(live) = sales::live(&state.redis, sale).await? {
        return Ok(live);
    }
    if state.known_sales.lookup(&state.db, sale).await? == Recorded::Archived {
        if let Some(archived) = state.known_sales.archived(&state.db, sale).await? {
            return Ok(archived.as_ref().clone());
        }
    }
    or_frozen(state, sale, Err(ApiError::SaleNotFound)).await
}

/// Create a sale (organizers).
#[utoipa::path(post, path = "/v1/sales", tag = "sales", request_body = NewSale,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = SaleBody),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an organizer", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (the detail names the field), `invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_sale(
    State(state): State<AppState>,
    Organizer(who): Organizer,
    Json(body): Json<NewSale, SALE_BODY_LIMIT>,
) -> ApiResult<Response> {
    let (mut def, release) = body.validate(&who.user_id, Utc::now())?;
    sales::create(&state.db, &state.redis, &state.scripts, &mut def, &release).await?;
    let live = sales::live(&state.redis, def.id).await?.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "sale missing from redis right after creation"
        ))
    })?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/sales/{}", def.id))],
        axum::Json(SaleBody::new(live)),
    )
        .into_response())
}

/// A sale with its live state and stock (public).
#[utoipa::path(get, path = "/v1/sales/{sale_id}", tag = "sales",
    params(("sale_id" = String, Path, description = "The sale's id")),
    responses(
        (status = 200, description = "The sale", body = SaleBody),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_sale(
    State(state): State<AppState>,
    Path(sale): Path<SaleId>,
) -> ApiResult<axum::Json<SaleBody>> {
    Ok(axum::Json(SaleBody::new(any_sale(&state, sale).await?)))
}

/// A seated zone's seats.
#[derive(Serialize, ToSchema)]
struct SeatMap {
    /// Every seat, rows front to back, each row by number.
    seats: Vec<SeatState>,
}

#[derive(Serialize, ToSchema)]
struct SeatState {
    #[schema(example = "A-7")]
    id: String,
    status: SeatStatus,
}

#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum SeatStatus {
    Free,
    Held,
    Sold,
}

/// Every seat of a seated zone, free, held or sold (public). Read in one
/// Redis read of the zone's part of the seat map (after one of its place).
#[utoipa::path(get, path = "/v1/sales/{sale_id}/zones/{code}/seats", tag = "sales",
    params(
        ("sale_id" = String, Path, description = "The sale's id"),
        ("code" = String, Path, description = "The zone's code"),
    ),
    responses(
        (status = 200, description = "The zone's seats", body = SeatMap),
        (status = 404, description = "`sale_not_found`, `zone_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`zone_not_seated`: a general-admission zone", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn seat_map(
    State(state): State<AppState>,
    axum::extract::Path((sale, code)): axum::extract::Path<(String, String)>,
) -> ApiResult<axum::Json<SeatMap>> {
    let sale: SaleId = sale.parse().map_err(|_| ApiError::SaleNotFound)?;
    let zone = crate::input::ZoneCode::parse(&code)
        .ok_or_else(|| ApiError::ZoneNotFound(code.chars().take(32).collect()))?;
    let zone = zone.as_str();
    // Where the zone's segment lies (the meta's `seated`) never changes
    // while the sale is in Redis: two plain reads, the second of the
    // segment alone.
    let keys = SaleKeys::new(sale);
    let seated: Option<String> = state.redis.hget(keys.meta(), "seated").await?;
    let segment: Option<String> = match seated.and_then(|s| crate::seatmap::span(&s, zone)) {
        Some((first, last)) => Some(
            state
                .redis
                .getrange(keys.seat_map(), first - 1, last - 1)
                .await?,
        ),
        None => None,
    };
    if let Some(segment) = segment {
        let seats = crate::seatmap::seats(&segment)
            .map(|seat| SeatState {
                id: seat.id(),
                status: match seat.state {
                    crate::seatmap::HELD => SeatStatus::Held,
                    crate::seatmap::SOLD => SeatStatus::Sold,
                    _ => SeatStatus::Free,
                },
            })
            .collect();
        return Ok(axum::Json(SeatMap { seats }));
    }
    // Not in Redis: a general-admission zone, or an archived sale.
    let live = any_sale(&state, sale).await?;
    let def = live
        .def
        .zones
        .into_iter()
        .find(|z| z.code == zone)
        .ok_or_else(|| ApiError::ZoneNotFound(zone.to_owned()))?;
    let Some(seating) = def.seating else {
        return Err(ApiError::ZoneNotSeated(zone.to_owned()));
    };
    // An archived sale: Postgres's record says which seats were sold.
    let sold: std::collections::HashSet<String> = sqlx::query_scalar!(
        "SELECT seat FROM reservation_seats
         WHERE sale_id = $1 AND zone_code = $2 AND status = 'confirmed'",
        sale.0,
        zone,
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .collect();
    let seats = seating
        .seat_ids()
        .map(|id| SeatState {
            status: if sold.contains(&id) {
                SeatStatus::Sold
            } else {
                SeatStatus::Free
            },
            id,
        })
        .collect();
    Ok(axum::Json(SeatMap { seats }))
}

/// `PATCH /v1/sales/{id}`: any of the live settings, and the sale's end.
/// `max_active: null` removes the cap; `closes_at: null` removes the close
/// (only before it has come); `state: "closed"` ends the sale now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SalePatch {
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 1, maximum = 100000)]
    release_rate: Option<i64>,
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 100, maximum = 60000)]
    release_interval_ms: Option<i64>,
    /// Absent: unchanged; `null`: no cap; a number: the new cap.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 10000000)]
    max_active: Option<Option<i64>>,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 5, maximum = 3600)]
    admit_idle_seconds: Option<i64>,
    #[serde(default, deserialize_with = "crate::json::opt_whole")]
    #[schema(minimum = 0, maximum = 1000)]
    admit_headroom_percent: Option<i64>,
    /// Absent: unchanged; `null`: no close; an RFC 3339 time after
    /// `opens_at` and still to come: the new close. A closed sale's close
    /// does not change.
    #[serde(default, deserialize_with = "present_value")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    closes_at: Option<Option<serde_json::Value>>,
    /// `closed` ends the sale now: no more joins, admissions or holds; holds
    /// already placed run out as usual and confirmations stand.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^closed$")]
    state: Option<serde_json::Value>,
}

/// Tells a field sent as `null` (Some(None)) from one not sent (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    crate::json::opt_whole(d).map(Some)
}

/// As [`present`], for a value read as it came.
fn present_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<serde_json::Value>>, D::Error> {
    Option::<serde_json::Value>::deserialize(d).map(Some)
}

/// What the sale is when a change is asked of it.
struct Standing {
    opens_at: DateTime<Utc>,
    /// The moment, by Redis's clock, the change is judged at (and the close
    /// of `state: "closed"`).
    now: DateTime<Utc>,
    archived: bool,
}

impl SalePatch {
    fn apply(&self, mut r: Release, sale: &Standing) -> ApiResult<Release> {
        let check = sales::bounded;
        let closed = sale.archived || r.closed_at(sale.now);
        let closed_at = r.closes_at;
        let reopening = || {
            ApiError::SaleClosed(format!(
                "the sale closed at {}: a closed sale cannot be reopened",
                closed_at.map_or_else(|| "its end".to_owned(), |t| t.to_rfc3339())
            ))
        };

        if let Some(v) = self.release_rate {
            r.release_rate = check("release_rate", v, bounds::RELEASE_RATE)?;
        }
        if let Some(v) = self.release_interval_ms {
            r.release_interval_ms = check("release_interval_ms", v, bounds::RELEASE_INTERVAL_MS)?;
        }
        if let Some(v) = self.max_active {
            r.max_active = v
                .map(|v| check("max_active", v, bounds::MAX_ACTIVE))
                .transpose()?;
        }
        if let Some(v) = self.paused {
            r.paused = v;
        }
        if let Some(v) = self.admit_idle_seconds {
            r.admit_idle_seconds = check("admit_idle_seconds", v, bounds::ADMIT_IDLE_SECONDS)?;
        }
        if let Some(v) = self.admit_headroom_percent {
            r.admit_headroom_percent =
                check("admit_headroom_percent", v, bounds::ADMIT_HEADROOM_PERCENT)?;
        }
        if self.state.is_some() && self.closes_at.is_some() {
            return Err(ApiError::Validation(
                "send either `state: \"closed\"` (close now) or `closes_at`, not both".into(),
            ));
        }
        match &self.state {
            None => {}
            // Closing a closed sale changes nothing.
            Some(serde_json::Value::String(s)) if s == "closed" && closed => {}
            Some(serde_json::Value::String(s)) if s == "closed" => r.closes_at = Some(sale.now),
            Some(_) => {
                return Err(ApiError::Validation(
                    "state can only be set to `closed` (to stop releasing buyers for a while, set `paused`)"
                        .into(),
                ))
            }
        }
        match &self.closes_at {
            None => {}
            Some(None) if closed => return Err(reopening()),
            Some(None) => r.closes_at = None,
            Some(Some(raw)) => {
                let at = raw
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc).trunc_subsecs(3))
                    .ok_or_else(|| {
                        ApiError::Validation(
                            "closes_at must be an RFC 3339 time (2026-12-01T22:00:00Z) or null"
                                .into(),
                        )
                    })?;
                if closed {
                    if r.closes_at != Some(at) {
                        return Err(reopening());
                    }
                } else if at <= sale.opens_at {
                    return Err(ApiError::Validation(format!(
                        "closes_at must be after opens_at ({})",
                        sale.opens_at.to_rfc3339()
                    )));
                } else if at <= sale.now {
                    return Err(ApiError::Validation(
                        "closes_at must be in the future; to end the sale now, send `{\"state\": \"closed\"}`"
                            .into(),
                    ));
                } else {
                    r.closes_at = Some(at);
                }
            }
        }
        Ok(r)
    }
}

/// Change a sale's live settings, or close it (its organizer). Release
/// settings apply at the next release tick, a close at once; every change
/// is recorded.
#[utoipa::path(patch, path = "/v1/sales/{sale_id}", tag = "sales", request_body = SalePatch,
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The sale as changed", body = SaleBody),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not this sale's organizer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sale_closed`: the sale has closed (it cannot be reopened) or been archived (its settings no longer change)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn patch_sale(
    State(state): State<AppState>,
    Organizer(who): Organizer,
    Path(sale): Path<SaleId>,
    Json(patch): Json<SalePatch>,
) -> ApiResult<axum::Json<SaleBody>> {
    let id = sale;
    let mut tx = state.db.begin().await?;
    // Lock the row so two concurrent changes are recorded in the order
    // applied, and the archiver waits for this one.
    let row = sqlx::query!(
        r#"SELECT organizer_id, release_rate, release_interval_ms, max_active, paused,
                  admit_idle_seconds, admit_headroom_percent, closes_at, opens_at, created_at,
                  archived_at IS NOT NULL AS "archived!"
           FROM sales WHERE id = $1 FOR UPDATE"#,
        id.0
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::SaleNotFound)?;
    if row.organizer_id != who.user_id {
        return Err(ApiError::Forbidden(
            "only the sale's organizer may change it".into(),
        ));
    }
    let before = Release {
        release_rate: row.release_rate as u32,
        release_interval_ms: row.release_interval_ms as u32,
        max_active: row.max_active.map(|v| v as u32),
        paused: row.paused,
        admit_idle_seconds: row.admit_idle_seconds as u32,
        admit_headroom_percent: row.admit_headroom_percent as u32,
        closes_at: row.closes_at,
    };
    let archived = row.archived;
    // Closes are judged by Redis's clock, which the scripts refuse by (never
    // before the sale's creation, whatever the skew between the clocks).
    let now = if archived {
        Utc::now()
    } else {
        sales::redis_now(&state.redis, id).await?
    };
    let standing = Standing {
        opens_at: row.opens_at,
        now: now.trunc_subsecs(3).max(row.created_at),
        archived,
    };
    let after = patch.apply(before, &standing)?;
    if archived {
        if after != before {
            return Err(ApiError::SaleClosed(
                "the sale is archived: its settings no longer change".into(),
            ));
        }
        tx.commit().await?;
        return Ok(axum::Json(SaleBody::new(any_sale(&state, id).await?)));
    }
    if after != before {
        sqlx::query!(
            "UPDATE sales SET release_rate = $2, release_interval_ms = $3, max_active = $4, paused = $5
             WHERE id = $1",
            id.0,
            after.release_rate as i32,
            after.release_interval_ms as i32,
            after.max_active.map(|v| v as i32),
            after.paused,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "UPDATE sales SET admit_idle_seconds = $2, admit_headroom_percent = $3, closes_at = $4
             WHERE id = $1",
            id.0,
            after.admit_idle_seconds as i32,
            after.admit_headroom_percent as i32,
            after.closes_at
        )
        .execute(&mut *tx)
        .await?;
        // `as _`: the macro checks a jsonb parameter against serde_json::Value
        // only; the Json wrappers are bound as they are.
        sqlx::query!(
            "INSERT INTO sale_changes (sale_id, actor, before, after) VALUES ($1, $2, $3, $4)",
            id.0,
            &who.user_id,
            sqlx::types::Json(before) as _,
            sqlx::types::Json(after) as _,
        )
        .execute(&mut *tx)
        .await?;
    }
    // Redis first, then commit: a failure in between leaves Postgres as it
    // was, and a retry of the same PATCH converges both.
    or_frozen(
        &state,
        id,
        sales::apply_release(&state.redis, &state.scripts, id, &after).await,
    )
    .await?;
    tx.commit().await?;
    if after != before {
        tracing::info!(sale.id = %id, actor = %who.user_id, ?before, ?after, "sale settings changed");
    }
    let live = sales::live(&state.redis, id)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    Ok(axum::Json(SaleBody::new(live)))
}

/// The sale, if `who` is its organizer.
pub(super) async fn own_sale(
    state: &AppState,
    sale: SaleId,
    who: &Identity,
) -> ApiResult<LiveSale> {
    let live = any_sale(state, sale).await?;
    if live.def.organizer_id != who.user_id {
        return Err(ApiError::Forbidden(
            "only the sale's organizer may read this".into(),
        ));
    }
    Ok(live)
}

/// A sale's figures for its organizer.
#[derive(Serialize, ToSchema)]
struct Stats {
    waiting: i64,
    admitted_total: i64,
    active: i64,
    /// Buyers admitted per second, measured over the last release ticks
    /// (up to 20): the rate queue ETAs come from, next to the configured
    /// `release_rate`. 0 before the first tick and once archived; it falls
    /// towards 0 as ticks admit nobody (paused, closed, nobody waiting).
    measured_rate: f64,
    zones: Vec<ZoneStats>,
    /// When the reconciler last compared Redis with Postgres.
    reconciled_at: Option<DateTime<Utc>>,
    /// Redis's confirmed tickets, less those still on their way, minus
    /// Postgres's, over all zones at that moment (0 when they agree).
    drift: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct ZoneStats {
    code: String,
    capacity: i64,
    available: i64,
    held: i64,
    confirmed: i64,
    /// Confirmed tickets recorded in Postgres.
    persisted: i64,
}

/// The sale's figures: queue, admissions, stock by zone, and what
/// Postgres has recorded (its organizer).
#[utoipa::path(get, path = "/v1/sales/{sale_id}/stats", tag = "sales",
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The figures", body = Stats),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not this sale's organizer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn stats(
    State(state): State<AppState>,
    Organizer(who): Organizer,
    Path(sale): Path<SaleId>,
) -> ApiResult<axum::Json<Stats>> {
    let live = own_sale(&state, sale, &who).await?;
    let persisted: HashMap<String, i64> = sqlx::query!(
        r#"SELECT zone_code, COALESCE(SUM(quantity), 0)::bigint AS "sold!" FROM reservations
         WHERE sale_id = $1 AND status = 'confirmed' GROUP BY zone_code"#,
        live.def.id.0,
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| (r.zone_code, r.sold))
    .collect();
    let persisted_in = |code: &str| persisted.get(code).copied().unwrap_or(0);
    let (active, measured_rate, reconciled_at, drift) = if let Some(archived_at) = live.archived_at
    {
        // Archived only once Postgres held everything Redis did: its stock
        // is Postgres's (nothing waiting or held), and nothing is active.
        (0, 0.0, Some(archived_at), Some(0))
    } else {
        use fred::interfaces::SortedSetsInterface;
        let k = SaleKeys::new(live.def.id);
        let active: i64 = state.redis.zcard(k.admitted()).await?;
        let measured: Option<String> = state.redis.hget(k.meta(), "measured_rate").await?;
        let recon: HashMap<String, String> = state.redis.hgetall(k.reconciliation()).await?;
        (
            active,
            measured
                .and_then(|r| r.parse::<f64>().ok())
                .filter(|r| r.is_finite())
                .unwrap_or(0.0),
            recon
                .get("at_ms")
                .and_then(|ms| ms.parse().ok())
                .and_then(from_millis),
            recon.get("drift").and_then(|d| d.parse().ok()),
        )
    };
    Ok(axum::Json(Stats {
        waiting: live.waiting,
        admitted_total: live.admitted_total,
        active,
        measured_rate,
        zones: live
            .def
            .zones
            .iter()
            .zip(&live.stock)
            .map(|(z, s)| ZoneStats {
                code: z.code.clone(),
                capacity: s.capacity,
                available: s.available,
                held: s.held,
                confirmed: s.confirmed,
                persisted: persisted_in(&z.code),
            })
            .collect(),
        reconciled_at,
        drift,
    }))
}

/// The query of a listing. Every parameter is read as text and parsed here,
/// so a bad one gets a problem that names it.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `scheduled` (not yet open), `open` (opened and not closed; such a
    /// sale may read `paused` or `sold_out`) or `closed`. Absent: every sale.
    #[param(value_type = Option<String>, pattern = "^(scheduled|open|closed)$")]
    state: Option<String>,
    /// Sales on a page, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the page before, as it came.
    cursor: Option<String>,
}

/// Sales per page unless `limit` says otherwise, and at most.
const PAGE_DEFAULT: u32 = 20;
const PAGE_MAX: u32 = 100;

/// A page of sales, newest first.
#[derive(Serialize, ToSchema)]
struct SalePage {
    sales: Vec<SaleBody>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// A query string that does not parse at all (bad percent-encoding, a
/// parameter given twice).
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::Validation(format!(
        "the query string is malformed: {}",
        rejection.body_text()
    ))
}

/// `limit` of a paged read: a whole number in 1..=`max`.
fn page_limit(raw: Option<&str>, default: u32, max: u32) -> ApiResult<u32> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::Validation(format!(
                "limit must be a whole number from 1 to {max}, got `{}`",
                raw.chars().take(40).collect::<String>()
            ))
        })
}

/// Cursors are opaque to clients: the base64url of the last item's keyset
/// position, which only this service reads back.
fn encode_cursor(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor<const N: usize>(raw: &str) -> ApiResult<[u8; N]> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw.trim())
        .ok()
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or_else(|| {
            ApiError::InvalidCursor(
                "cursor is not one this service gave: pass `next_cursor` from the page before, unchanged"
                    .into(),
            )
        })
}

/// A sale's position in the listing, newest first: its creation time (in
/// microseconds, as Postgres keeps it) and id.
fn sale_cursor(sale: &LiveSale) -> String {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&sale.def.created_at.timestamp_micros().to_be_bytes());
    bytes[8..].copy_from_slice(sale.def.id.0.as_bytes());
    encode_cursor(&bytes)
}

fn parse_sale_cursor(raw: &str) -> ApiResult<(DateTime<Utc>, SaleId)> {
    let bytes = decode_cursor::<24>(raw)?;
    let (micros, id) = bytes.split_at(8);
    let micros = i64::from_be_bytes(micros.try_into().unwrap_or_default());
    let at = DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| ApiError::InvalidCursor("cursor is not one this service gave".into()))?;
    let id = uuid::Uuid::from_slice(id)
        .map_err(|_| ApiError::InvalidCursor("cursor is not one this service gave".into()))?;
    Ok((at, SaleId(id)))
}

/// A page of sales: Postgres picks them; each live one's state and stock
/// come from Redis (read concurrently), each archived one's from Postgres.
async fn sale_page(
    state: &AppState,
    organizer: Option<String>,
    query: ListQuery,
) -> ApiResult<axum::Json<SalePage>> {
    let window = query
        .state
        .as_deref()
        .map(|s| {
            Window::parse(s.trim()).ok_or_else(|| {
                ApiError::Validation(format!(
                    "state must be `scheduled`, `open` or `closed`, got `{}`",
                    s.chars().take(40).collect::<String>()
                ))
            })
        })
        .transpose()?;
    let limit = page_limit(query.limit.as_deref(), PAGE_DEFAULT, PAGE_MAX)?;
    let before = query.cursor.as_deref().map(parse_sale_cursor).transpose()?;
    let mut found = sales::list(
        &state.db,
        &sales::Listing {
            organizer,
            window,
            // One more than asked: whether there is a next page.
            limit: limit + 1,
            before,
            now: Utc::now(),
        },
    )
    .await?;
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let next_cursor = more.then(|| found.last().map(sale_cursor)).flatten();
    let reads = found.into_iter().map(|recorded| async move {
        if recorded.archived_at.is_some() {
            return Ok::<_, ApiError>(recorded);
        }
        Ok(match sales::live(&state.redis, recorded.def.id).await? {
            Some(live) => live,
            // Postgres has it, Redis lost it: listed as Postgres has it,
            // frozen until restored (as a read of the sale alone says).
            None => LiveSale {
                frozen: true,
                ..recorded
            },
        })
    });
    let sales = futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .map(SaleBody::new)
        .collect();
    Ok(axum::Json(SalePage { sales, next_cursor }))
}

/// Every organizer's sales, newest first (public).
#[utoipa::path(get, path = "/v1/sales", tag = "sales", params(ListQuery),
    responses(
        (status = 200, description = "A page of sales", body = SalePage),
        (status = 400, description = "`invalid_cursor`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: `state` or `limit` (the detail names it)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_sales(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<axum::Json<SalePage>> {
    let Query(query) = query.map_err(bad_query)?;
    sale_page(&state, None, query).await
}

/// The caller's own sales, newest first (organizers).
#[utoipa::path(get, path = "/v1/organizer/sales", tag = "sales", params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of the caller's sales", body = SalePage),
        (status = 400, description = "`invalid_cursor`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not an organizer", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: `state` or `limit` (the detail names it)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn organizer_sales(
    State(state): State<AppState>,
    Organizer(who): Organizer,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<axum::Json<SalePage>> {
    let Query(query) = query.map_err(bad_query)?;
    sale_page(&state, Some(who.user_id), query).await
}

/// 404 for an unknown sale, 403 for anyone but its organizer; from
/// Postgres, so it holds for live and archived sales alike.
async fn check_organizer(state: &AppState, sale: SaleId, who: &Identity) -> ApiResult<()> {
    let owner = sqlx::query_scalar!("SELECT organizer_id FROM sales WHERE id = $1", sale.0)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::SaleNotFound)?;
    if owner != who.user_id {
        return Err(ApiError::Forbidden(
            "only the sale's organizer may read this".into(),
        ));
    }
    Ok(())
}

/// The query of the audit log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ChangesQuery {
    /// Changes on a page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the page before, as it came.
    cursor: Option<String>,
}

/// One change of a sale's settings.
#[derive(Serialize, ToSchema)]
struct Change {
    at: DateTime<Utc>,
    /// The organizer who made it (their user id).
    actor: String,
    /// The live settings before and after: `release_rate`,
    /// `release_interval_ms`, `max_active`, `paused`, `admit_idle_seconds`,
    /// `admit_headroom_percent`, `closes_at` (a change recorded before a setting existed lacks it).
    #[schema(value_type = Object)]
    before: serde_json::Value,
    #[schema(value_type = Object)]
    after: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
struct Changes {
    /// Oldest first, in the order they were applied.
    changes: Vec<Change>,
    /// The `cursor` of the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// A sale's audit log: every change of its settings, who made it and when,
/// oldest first (its organizer).
#[utoipa::path(get, path = "/v1/sales/{sale_id}/changes", tag = "sales",
    params(("sale_id" = String, Path, description = "The sale's id"), ChangesQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changes", body = Changes),
        (status = 400, description = "`invalid_cursor`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not this sale's organizer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: `limit`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn changes(
    State(state): State<AppState>,
    Organizer(who): Organizer,
    Path(sale): Path<SaleId>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Changes>> {
    let Query(query) = query.map_err(bad_query)?;
    let limit = page_limit(query.limit.as_deref(), 100, 1000)?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| decode_cursor::<8>(c).map(i64::from_be_bytes))
        .transpose()?
        .unwrap_or(0);
    check_organizer(&state, sale, &who).await?;
    let mut rows = sqlx::query!(
        "SELECT id, changed_at, actor, before, after FROM sale_changes
         WHERE sale_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        sale.0,
        after,
        i64::from(limit) + 1
    )
    .fetch_all(&state.db)
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(&r.id.to_be_bytes())))
        .flatten();
    Ok(axum::Json(Changes {
        changes: rows
            .into_iter()
            .map(|r| Change {
                at: r.changed_at,
                actor: r.actor,
                before: r.before,
                after: r.after,
            })
            .collect(),
        next_cursor,
    }))
}

/// One confirmed reservation of a sale.
#[derive(Serialize, ToSchema)]
struct Attendee {
    reservation_id: String,
    user_id: String,
    zone: String,
    quantity: i32,
    confirmed_at: DateTime<Utc>,
    payment_ref: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Attendees {
    /// By confirmation time.
    attendees: Vec<Attendee>,
}

/// A sale's confirmed reservations as Postgres records them, by
/// confirmation time (its organizer): JSON, or CSV with `Accept: text/csv`
/// (a header row, RFC 4180 quoting, CRLF line ends; a field that a
/// spreadsheet would run as a formula, one starting with `=`, `+`, `-` or
/// `@`, is written with a leading `'`). A confirmation still on its way from
/// Redis (see `/stats`, `persisted`) is listed once recorded.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/attendees", tag = "sales",
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The attendees", content(
            (Attendees = "application/json"),
            (String = "text/csv", example = "reservation_id,user_id,zone,quantity,confirmed_at,payment_ref\r\n"),
        )),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not this sale's organizer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn attendees(
    State(state): State<AppState>,
    Organizer(who): Organizer,
    Path(sale): Path<SaleId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_organizer(&state, sale, &who).await?;
    let rows = sqlx::query_as!(
        Attendee,
        r#"SELECT id AS reservation_id, user_id, zone_code AS zone, quantity, confirmed_at, payment_ref
           FROM reservations WHERE sale_id = $1 AND status = 'confirmed'
           ORDER BY confirmed_at, id"#,
        sale.0
    )
    .fetch_all(&state.db)
    .await?;
    if !wants_csv(&headers) {
        return Ok(axum::Json(Attendees { attendees: rows }).into_response());
    }
    let mut csv = String::with_capacity(64 + rows.len() * 128);
    csv.push_str("reservation_id,user_id,zone,quantity,confirmed_at,payment_ref\r\n");
    for r in &rows {
        let quantity = r.quantity.to_string();
        let confirmed_at = r
            .confirmed_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let fields = [
            r.reservation_id.as_str(),
            r.user_id.as_str(),
            r.zone.as_str(),
            quantity.as_str(),
            confirmed_at.as_str(),
            r.payment_ref.as_deref().unwrap_or(""),
        ];
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                csv.push(',');
            }
            push_csv_field(&mut csv, field);
        }
        csv.push_str("\r\n");
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"attendees-{sale}.csv\""),
            ),
        ],
        csv,
    )
        .into_response())
}

/// Whether the client asks for CSV: `text/csv` weighs more in its `Accept`
/// header than `application/json` (the first of the two on a tie), and is
/// not refused (`q=0`). Anything else gets JSON.
fn wants_csv(headers: &HeaderMap) -> bool {
    let mut best: Option<(f32, bool)> = None;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for range in ranges {
        let mut parts = range.split(';').map(str::trim);
        let csv = match parts.next().map(str::to_ascii_lowercase).as_deref() {
            Some("text/csv") => true,
            Some("application/json") => false,
            _ => continue,
        };
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .map_or(Some(1.0), |q| q.parse::<f32>().ok())
            .unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(best_q, _)| q > best_q) {
            best = Some((q, csv));
        }
    }
    best.is_some_and(|(_, csv)| csv)
}

/// One CSV field, quoted as RFC 4180 says when it holds a comma, a quote or
/// a line break; one that a spreadsheet would take for a formula is
/// prefixed with `'` (OWASP's advice for CSV exports).
fn push_csv_field(out: &mut String, field: &str) {
    let formula = field.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = formula || field.contains([',', '"', '\r', '\n']);
    if quoted {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in field.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quoted {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_says_and_formulas_are_defused() {
        let mut out = String::new();
        for field in ["plain", "a,b", "say \"hi\"", "two\r\nlines", "=SUM(A1)", ""] {
            push_csv_field(&mut out, field);
            out.push('|');
        }
        assert_eq!(
            out,
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\r\nlines\"|\"'=SUM(A1)\"||"
        );
    }

    #[test]
    fn csv_is_chosen_by_the_accept_header() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            wants_csv(&h)
        };
        assert!(accept("text/csv"));
        assert!(accept("text/csv;q=0.9, application/json;q=0.5"));
        assert!(accept("application/json;q=0.1, text/csv"));
        assert!(!accept("application/json, text/csv"));
        assert!(!accept("text/csv;q=0"));
        assert!(!accept("*/*"));
        assert!(!wants_csv(&HeaderMap::new()));
    }

    #[test]
    fn a_sale_cursor_reads_back_as_the_position_it_was_made_from() {
        let at = DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap();
        let id = SaleId::new();
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&at.timestamp_micros().to_be_bytes());
        bytes[8..].copy_from_slice(id.0.as_bytes());
        assert_eq!(parse_sale_cursor(&encode_cursor(&bytes)).unwrap(), (at, id));
        assert!(parse_sale_cursor("not-a-cursor").is_err());
    }
}
