//! The virtual queue over HTTP: buyers join, poll and leave; admitted buyers
//! receive a signed queue pass; organizers export the pre-queue and read the
//! sale's figures; anyone reads the passes' public keys (JWKS).

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{or_frozen, sales::own_sale, AppState, AuthUser, ClientAddr, Organizer, Path};
use crate::{
    error::{ApiError, ApiResult, Problem},
    ids::SaleId,
    limits::Action,
    passes::PassClaims,
    queue::{self, Standing},
    sales::from_millis,
    tokens::Identity,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status, join, leave))
        .routes(routes!(export_prequeue))
        .routes(routes!(jwks))
}

/// Where a buyer stands in a sale's queue.
#[derive(Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(super) enum QueueStatus {
    Waiting {
        position: u64,
        eta_seconds: Option<u64>,
        /// When to poll next, in ms: chosen from the position and the
        /// admission rate.
        poll_after_ms: u64,
        /// Present and true while the organizer has paused the release.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        paused: bool,
    },
    /// Every ticket is held or sold; held ones may come back, and go to the
    /// waitlist in queue order.
    Waitlisted {
        position: u64,
        /// When to poll next, in ms.
        poll_after_ms: u64,
    },
    Admitted {
        pass: String,
        #[serde(serialize_with = "crate::json::rfc3339")]
        pass_expires_at: DateTime<Utc>,
    },
    SoldOut,
    Expired,
}

pub(super) fn render(
    state: &AppState,
    sale: SaleId,
    who: &Identity,
    standing: Standing,
) -> ApiResult<QueueStatus> {
    let now = Utc::now();
    Ok(match standing {
        Standing::Waiting {
            position, paused, ..
        } => QueueStatus::Waiting {
            position,
            eta_seconds: standing.eta_seconds(now),
            poll_after_ms: standing
                .poll_after_ms(now, state.max_poll_after_ms)
                .unwrap_or(state.max_poll_after_ms),
            paused,
        },
        Standing::Admitted {
            deadline_ms,
            pass_ttl_seconds,
        } => {
            let claims = PassClaims {
                sub: who.user_id.clone(),
                sale: sale.to_string(),
                iat: ((deadline_ms / 1000) - pass_ttl_seconds).max(0) as u64,
                exp: (deadline_ms / 1000) as u64,
                jti: queue::pass_id(sale, &who.user_id, deadline_ms),
            };
            QueueStatus::Admitted {
                pass: state.passes.sign(&claims).map_err(ApiError::internal)?,
                pass_expires_at: from_millis(deadline_ms).unwrap_or(now),
            }
        }
        Standing::Waitlisted { position, .. } => QueueStatus::Waitlisted {
            position,
            poll_after_ms: standing
                .poll_after_ms(now, state.max_poll_after_ms)
                .unwrap_or(state.max_poll_after_ms),
        },
        Standing::SoldOut => QueueStatus::SoldOut,
        Standing::Expired => QueueStatus::Expired,
        Standing::NotInQueue => return Err(ApiError::NotInQueue),
    })
}

/// Join a sale's queue. Joining twice keeps the place; before opening, the
/// place is in the shuffled pre-queue.
#[utoipa::path(post, path = "/v1/sales/{sale_id}/queue", tag = "queue",
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "In the queue (or admitted, sold out)", body = QueueStatus),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sale_not_open`: the sale has closed", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn join(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ClientAddr(addr): ClientAddr,
    Path(sale): Path<SaleId>,
) -> ApiResult<Response> {
    state
        .limits
        .check(Action::Join, Some(&who.user_id), addr)
        .await?;
    let seed = or_frozen(&state, sale, state.seeds.get(&state.redis, sale).await).await?;
    let joined = queue::join(&state.redis, &state.scripts, sale, &who.user_id, &seed).await;
    let standing = or_frozen(&state, sale, joined).await?;
    metrics::counter!("flashsale_queue_joins_total").increment(1);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(render(&state, sale, &who, standing)?),
    )
        .into_response())
}

/// Where the buyer stands: position and ETA, or the queue pass once admitted.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/queue", tag = "queue",
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The buyer's standing", body = QueueStatus),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_in_queue`, `sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn status(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ClientAddr(addr): ClientAddr,
    Path(sale): Path<SaleId>,
) -> ApiResult<axum::Json<QueueStatus>> {
    state
        .limits
        .check(Action::Poll, Some(&who.user_id), addr)
        .await?;
    let polled = queue::status(
        &state.redis,
        &state.scripts,
        sale,
        &who.user_id,
        state.seen_refresh_ms,
    )
    .await;
    let standing = or_frozen(&state, sale, polled).await?;
    Ok(axum::Json(render(&state, sale, &who, standing)?))
}

/// Give up the place, or the queue pass (revoking it).
#[utoipa::path(delete, path = "/v1/sales/{sale_id}/queue", tag = "queue",
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Gone from the queue"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn leave(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(sale): Path<SaleId>,
) -> ApiResult<StatusCode> {
    queue::leave(&state.redis, &state.scripts, sale, &who.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The pre-queue's buyers and the seed that ordered them.
#[derive(Serialize, ToSchema)]
struct PrequeueExport {
    #[schema(value_type = uuid::Uuid)]
    sale_id: SaleId,
    seed: String,
    seed_sha256: String,
    /// Everyone who joined before opening, sorted by id (not by place: the
    /// order is for the auditor to recompute).
    buyers: Vec<String>,
}

/// The pre-queue's buyers and seed, once the sale has opened (the seed is
/// secret until then). `flashsale prequeue-order` recomputes the order.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/prequeue", tag = "queue",
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The early buyers and the seed", body = PrequeueExport),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not this sale's organizer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sale_not_open`: the seed is secret until the sale opens", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn export_prequeue(
    State(state): State<AppState>,
    Organizer(who): Organizer,
    Path(sale): Path<SaleId>,
) -> ApiResult<axum::Json<PrequeueExport>> {
    let live = own_sale(&state, sale, &who).await?;
    if Utc::now() < live.def.opens_at {
        return Err(ApiError::SaleNotOpen(
            "the pre-queue can be exported once the sale has opened; its seed is secret until then"
                .into(),
        ));
    }
    Ok(axum::Json(PrequeueExport {
        sale_id: live.def.id,
        buyers: queue::early_buyers(&state.redis, live.def.id).await?,
        seed_sha256: live.def.prequeue_seed_sha256,
        seed: live.seed,
    }))
}

/// The public keys that verify queue passes (JWKS).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "queue",
    responses((status = 200, description = "`{\"keys\": [...]}`", body = Object)))]
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(state.passes.jwks()),
    )
}
