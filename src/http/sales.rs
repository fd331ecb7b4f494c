//! `/v1/sales`: organizers create sales and steer their release; anyone
//! reads a sale's live state.

use std::collections::HashMap;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use fred::interfaces::HashesInterface;
use serde::{Deserialize, Serialize};

use super::{or_frozen, AppState, Json, Organizer, Path};
use crate::error::Problem;
use crate::{
    error::{ApiError, ApiResult},
    ids::SaleId,
    keys::SaleKeys,
    sales::{self, bounds, from_millis, LiveSale, NewSale, Release, SaleState},
    tokens::Identity,
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_sale))
        .routes(routes!(get_sale, patch_sale))
        .routes(routes!(stats))
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
}

#[derive(Serialize, ToSchema)]
#[schema(as = Zone)]
struct ZoneBody {
    code: String,
    name: String,
    capacity: u32,
    price_cents: i64,
    available: i64,
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
            ..
        } = live;
        let prequeue_seed = (now >= def.opens_at).then_some(seed);
        Self {
            id: def.id,
            name: def.name,
            state,
            opens_at: def.opens_at,
            closes_at: def.closes_at,
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
                })
                .collect(),
            release_rate: release.release_rate,
            release_interval_ms: release.release_interval_ms,
            max_active: release.max_active,
            paused: release.paused,
            pass_ttl_seconds: def.pass_ttl_seconds,
            hold_ttl_seconds: def.hold_ttl_seconds,
            per_user_limit: def.per_user_limit,
            waiting,
            created_at: def.created_at,
            prequeue_seed_sha256: def.prequeue_seed_sha256,
            frozen,
            prequeue_seed,
        }
    }
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
    Json(body): Json<NewSale>,
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
    let id = sale;
    let live = sales::live(&state.redis, id)
        .await?
        .ok_or(ApiError::SaleNotFound);
    Ok(axum::Json(SaleBody::new(
        or_frozen(&state, id, live).await?,
    )))
}

/// `PATCH /v1/sales/{id}`: any of the release settings. `max_active: null`
/// removes the cap.
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
}

/// Tells a field sent as `null` (Some(None)) from one not sent (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    crate::json::opt_whole(d).map(Some)
}

impl SalePatch {
    fn apply(&self, mut r: Release) -> ApiResult<Release> {
        let check = sales::bounded;

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
        Ok(r)
    }
}

/// Change a sale's release settings live (its organizer). Applied at the
/// next release tick; every change is recorded.
#[utoipa::path(patch, path = "/v1/sales/{sale_id}", tag = "sales", request_body = SalePatch,
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The sale as changed", body = SaleBody),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not this sale's organizer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
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
    // Lock the row so two concurrent changes are recorded in the order applied.
    let row = sqlx::query!(
        "SELECT organizer_id, release_rate, release_interval_ms, max_active, paused
         FROM sales WHERE id = $1 FOR UPDATE",
        id.0,
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
    };
    let after = patch.apply(before)?;
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
    let live = sales::live(&state.redis, sale)
        .await?
        .ok_or(ApiError::SaleNotFound);
    let live = or_frozen(state, sale, live).await?;
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
    let active: i64 = {
        use fred::interfaces::SortedSetsInterface;
        state
            .redis
            .zcard(SaleKeys::new(live.def.id).admitted())
            .await?
    };
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
    let recon: HashMap<String, String> = state
        .redis
        .hgetall(SaleKeys::new(live.def.id).reconciliation())
        .await?;
    Ok(axum::Json(Stats {
        waiting: live.waiting,
        admitted_total: live.admitted_total,
        active,
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
                persisted: persisted.get(&z.code).copied().unwrap_or(0),
            })
            .collect(),
        reconciled_at: recon
            .get("at_ms")
            .and_then(|ms| ms.parse().ok())
            .and_then(from_millis),
        drift: recon.get("drift").and_then(|d| d.parse().ok()),
    }))
}
