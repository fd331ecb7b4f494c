//! Reservations: a buyer holds tickets in a zone, then confirms or cancels.
//!
//! Each handler is one Lua script call: the checks and the change happen in
//! Redis, atomically. The handler only parses input and renders the result.
//!
//! Reservations of an archived sale (closed, recorded, and moved out of
//! Redis) are read from Postgres's record: confirmed or cancelled, for good.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use fred::interfaces::HashesInterface;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    extract::OptionalJson, or_frozen, Admitted, AppState, AuthUser, ClientAddr, Json, Path,
};
use crate::{
    error::{ApiError, ApiResult, Problem},
    ids::ReservationId,
    input::{Hold, PaymentRef, RawHold},
    inventory::{self, Acted, HoldRequest, Outcome, Pick, Refusal, Reservation, Status},
    keys::{self, SaleKeys},
    limits::Action,
    replication::Change,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(hold))
        .routes(routes!(get_reservation))
        .routes(routes!(confirm))
        .routes(routes!(cancel))
        .routes(routes!(my_reservations))
}

/// A hold request (the schema the OpenAPI document shows; the body is
/// parsed into [`crate::input::Hold`]).
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the body for the OpenAPI document")]
struct HoldBody {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,32}$", example = "A")]
    zone: String,
    /// How many tickets (or seats); not with `seats`.
    #[schema(minimum = 1, maximum = 100, example = 2)]
    quantity: Option<i64>,
    /// Seated zones: exactly these seats, all or none; not with `quantity`.
    #[schema(example = json!(["A-7", "A-8"]))]
    seats: Option<Vec<String>>,
    /// Seated zones, with `quantity`: the best seats side by side in one row.
    together: Option<bool>,
}

/// An Idempotency-Key: 1 to 255 visible ASCII characters.
fn parse_idempotency_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::InvalidIdempotencyKey(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        )
    };
    let key = raw.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key))
}

/// Hold tickets in a zone (an admitted buyer, with the queue pass).
#[utoipa::path(post, path = "/v1/sales/{sale_id}/reservations", tag = "reservations", request_body = HoldBody,
    params(
        ("sale_id" = String, Path, description = "The sale's id"),
        ("X-Queue-Pass" = Option<String>, Header, description = "The queue pass the queue gave this buyer"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; a retry with the same key and body replays the first answer"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Held (or replayed: header `idempotent-replayed: true`)", body = Reservation),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`pass_required`, `pass_invalid`, `pass_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sale_not_found`, `zone_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sold_out` (the detail says how many are left), `seats_taken` (member `seats` names them), `limit_exceeded`, `sale_not_open`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_quantity`, `zone_not_seated`, `unknown_seat`, `invalid_seats`, `idempotency_key_reused`, `invalid_idempotency_key`, `invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`, `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn hold(
    State(state): State<AppState>,
    Admitted { who, sale }: Admitted,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    Json(body): Json<RawHold>,
) -> ApiResult<Response> {
    state
        .limits
        .check(Action::Hold, Some(&who.user_id), addr)
        .await?;
    let idempotency_key = parse_idempotency_key(&headers)?;
    let Hold {
        zone,
        quantity,
        pick,
    } = body.try_into()?;
    let (zone, quantity) = (zone.as_str(), quantity.get());
    // With a key, the id is drawn from (user, key), so a retry finds its
    // hold; without one it is 128 random bits, which no other hold shares.
    let (id, fingerprint) = match idempotency_key {
        Some(key) => (
            ReservationId::for_idempotency_key(sale, &who.user_id, key),
            Some(fingerprint(zone, quantity, &pick)),
        ),
        None => (ReservationId::random(sale), None),
    };
    let req = HoldRequest {
        sale,
        user: &who.user_id,
        zone,
        quantity,
        id,
        fingerprint,
        pick,
    };
    let outcome = inventory::hold(&state.redis, &state.scripts, req).await?;
    match outcome {
        Ok(acted) => {
            let location = format!("/v1/reservations/{}", acted.reservation.id);
            let mut res = render(StatusCode::CREATED, acted);
            if let Ok(v) = HeaderValue::from_str(&location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            if tracing::enabled!(tracing::Level::DEBUG) {
                tracing::debug!(sale.id = %sale, zone, quantity, "hold placed");
            }
            Ok(res)
        }
        Err(refusal) => or_frozen(&state, sale, Err(refused(refusal, zone))).await,
    }
}

/// Checks the `X-Queue-Pass` by signature (cached after the first check), and
/// that it names this buyer and this sale. The hold script then checks the
/// buyer is still admitted, so a revoked pass fails there.
/// What distinguishes one hold request from another under the same key.
fn fingerprint(zone: &str, quantity: u32, pick: &Pick) -> String {
    let digest = match pick {
        // As before seats: a key's fingerprint does not change.
        Pick::Any => Sha256::digest(format!("{zone}\0{quantity}")),
        Pick::Together => Sha256::digest(format!("{zone}\0{quantity}\0together")),
        Pick::Exact(seats) => {
            // The same seats in another order are the same request.
            let mut seats = seats.clone();
            seats.sort();
            Sha256::digest(format!("{zone}\0{quantity}\0{}", seats.join(",")))
        }
    };
    hex::encode(&digest[..16])
}

/// Optional body of a confirmation.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    #[serde(default)]
    payment_ref: Option<String>,
}

/// Confirm a held reservation (its buyer). Confirming twice answers the same.
#[utoipa::path(post, path = "/v1/reservations/{id}/confirm", tag = "reservations",
    request_body(content = Option<ConfirmBody>, description = "Optional"),
    params(("id" = String, Path, description = "The reservation's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Confirmed", body = Reservation),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`reservation_not_found` (also another user's)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`reservation_cancelled`; `sale_closed`: the sale is archived", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`hold_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` (also: not yet acknowledged by the replicas `CONFIRM_WAIT_REPLICAS` asks for; retrying is safe)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn confirm(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<ReservationId>,
    OptionalJson(body): OptionalJson<ConfirmBody>,
) -> ApiResult<Response> {
    let payment_ref = PaymentRef::parse(body.payment_ref.as_deref().unwrap_or_default())?;
    // The script and the wait for replicas go on one connection: WAIT covers
    // only that connection's writes.
    let redis = state.replication.connection(&state.redis);
    let outcome = inventory::confirm(
        redis,
        &state.scripts,
        &id,
        &who.user_id,
        payment_ref.as_str(),
    )
    .await?;
    if let Ok(acted) = &outcome {
        state
            .replication
            .acknowledged(redis, id.sale, Change::Confirmation, acted.replayed)
            .await?;
    }
    respond(when_archived(&state, &id, &who.user_id, outcome).await?)
}

/// Cancel a held or confirmed reservation (its buyer); its tickets go back
/// on sale.
#[utoipa::path(post, path = "/v1/reservations/{id}/cancel", tag = "reservations",
    params(("id" = String, Path, description = "The reservation's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled", body = Reservation),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`reservation_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sale_closed`: the sale is archived", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`hold_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` (also: a confirmed reservation's cancellation not yet acknowledged by the replicas `CONFIRM_WAIT_REPLICAS` asks for; retrying is safe)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<ReservationId>,
) -> ApiResult<Response> {
    let redis = state.replication.connection(&state.redis);
    let outcome = inventory::cancel(redis, &state.scripts, &id, &who.user_id).await?;
    // Only a confirmed reservation's cancellation goes to the record (the
    // stream): a held one's tickets just go back, as a lost hold's would.
    if let Ok(acted) = &outcome {
        if acted.reservation.confirmed_at.is_some() {
            state
                .replication
                .acknowledged(redis, id.sale, Change::Cancellation, acted.replayed)
                .await?;
        }
    }
    respond(when_archived(&state, &id, &who.user_id, outcome).await?)
}

/// A reservation Redis does not have may belong to an archived sale: then
/// it no longer changes (`409 sale_closed`) rather than being unknown.
async fn when_archived(
    state: &AppState,
    id: &ReservationId,
    user: &str,
    outcome: Outcome,
) -> ApiResult<Outcome> {
    if outcome.as_ref().err() == Some(&Refusal::ReservationNotFound)
        && archived_reservation(state, id, user).await?.is_some()
    {
        return Err(ApiError::SaleClosed(
            "the sale has closed and been archived: its reservations no longer change".into(),
        ));
    }
    Ok(outcome)
}

/// One of the caller's reservations: from Redis while its sale is live,
/// from Postgres once the sale is archived.
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations",
    params(("id" = String, Path, description = "The reservation's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The reservation", body = Reservation),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`reservation_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_reservation(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<ReservationId>,
) -> ApiResult<axum::Json<Reservation>> {
    if let Some(r) = inventory::get(&state.redis, &id, &who.user_id).await? {
        return Ok(axum::Json(r));
    }
    archived_reservation(&state, &id, &who.user_id)
        .await?
        .map(axum::Json)
        .ok_or(ApiError::ReservationNotFound)
}

/// The caller's reservations in every sale, newest first: those of live
/// sales from Redis (one buyer hash per live sale, read in one pipeline),
/// those of archived sales from Postgres (one query by user). The work
/// grows with the sales that are live, not with every sale ever run.
#[utoipa::path(get, path = "/v1/me/reservations", tag = "reservations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's reservations", body = MyReservations),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn my_reservations(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> ApiResult<axum::Json<MyReservations>> {
    let sales = crate::live_sales::all(&state.redis).await?;
    let pipe = state.redis.next().pipeline();
    for sale in &sales {
        let _: () = pipe.hkeys(SaleKeys::new(*sale).buyer(&who.user_id)).await?;
    }
    let per_sale: Vec<Vec<String>> = if sales.is_empty() {
        Vec::new()
    } else {
        pipe.all().await?
    };
    let ids: Vec<ReservationId> = per_sale
        .into_iter()
        .flatten()
        .filter(|field| field != keys::BUYER_TICKETS)
        .filter_map(|id| id.parse().ok())
        .collect();
    let live = futures::future::try_join_all(
        ids.iter()
            .map(|id| inventory::get(&state.redis, id, &who.user_id)),
    )
    .await?;
    let mut out: Vec<Reservation> = live.into_iter().flatten().collect();
    // A sale archived a moment ago may still have keys in Redis: each
    // reservation once.
    let seen: std::collections::HashSet<ReservationId> = out.iter().map(|r| r.id.clone()).collect();
    let archived = sqlx::query_as!(
        RecordedReservation,
        "SELECT r.id, r.sale_id, r.zone_code, r.quantity, r.status, r.confirmed_at, r.cancelled_at
         FROM reservations r JOIN sales s ON s.id = r.sale_id
         WHERE r.user_id = $1 AND s.archived_at IS NOT NULL",
        who.user_id
    )
    .fetch_all(&state.db)
    .await?;
    out.extend(
        archived
            .into_iter()
            .filter_map(RecordedReservation::into_reservation)
            .filter(|r| !seen.contains(&r.id)),
    );
    out.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    Ok(axum::Json(MyReservations { reservations: out }))
}

/// A reservation row of Postgres's record.
struct RecordedReservation {
    id: String,
    sale_id: uuid::Uuid,
    zone_code: String,
    quantity: i32,
    status: String,
    confirmed_at: DateTime<Utc>,
    cancelled_at: Option<DateTime<Utc>>,
}

impl RecordedReservation {
    /// As the API shows a reservation. The record keeps no hold times: a
    /// recorded reservation was created and stopped expiring when it was
    /// confirmed, as `flashsale restore` rebuilds it too. `None` for a row
    /// the API could not have made (logged: it needs a look).
    fn into_reservation(self) -> Option<Reservation> {
        let id: ReservationId = self.id.parse().ok().filter(|id: &ReservationId| id.sale.0 == self.sale_id)
            .or_else(|| {
                tracing::warn!(reservation = %self.id, "a reservation id in Postgres does not parse");
                None
            })?;
        let status = match self.status.as_str() {
            "confirmed" => Status::Confirmed,
            "cancelled" => Status::Cancelled,
            other => {
                tracing::warn!(reservation = %self.id, status = other, "a reservation in Postgres has an unknown status");
                return None;
            }
        };
        Some(Reservation {
            sale_id: id.sale,
            id,
            zone: self.zone_code,
            quantity: i64::from(self.quantity),
            status,
            expires_at: self.confirmed_at,
            created_at: self.confirmed_at,
            confirmed_at: Some(self.confirmed_at),
            cancelled_at: self.cancelled_at,
            seats: Vec::new(),
        })
    }
}

/// The caller's reservation in an archived sale, as Postgres records it.
async fn archived_reservation(
    state: &AppState,
    id: &ReservationId,
    user: &str,
) -> ApiResult<Option<Reservation>> {
    let row = sqlx::query_as!(
        RecordedReservation,
        "SELECT r.id, r.sale_id, r.zone_code, r.quantity, r.status, r.confirmed_at, r.cancelled_at
         FROM reservations r JOIN sales s ON s.id = r.sale_id
         WHERE r.id = $1 AND r.user_id = $2 AND s.archived_at IS NOT NULL",
        id.to_string(),
        user
    )
    .fetch_optional(&state.db)
    .await?;
    Ok(row.and_then(RecordedReservation::into_reservation))
}

#[derive(Serialize, ToSchema)]
struct MyReservations {
    reservations: Vec<Reservation>,
}

fn respond(outcome: Outcome) -> ApiResult<Response> {
    match outcome {
        Ok(acted) => Ok(render(StatusCode::OK, acted)),
        Err(refusal) => Err(refused(refusal, "")),
    }
}

fn render(status: StatusCode, acted: Acted) -> Response {
    let mut res = (status, axum::Json(acted.reservation)).into_response();
    if acted.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

fn refused(refusal: Refusal, zone: &str) -> ApiError {
    match refusal {
        Refusal::SaleNotFound => ApiError::SaleNotFound,
        Refusal::Frozen => ApiError::SaleFrozen,
        Refusal::NotYetOpen => ApiError::SaleNotOpen("the sale has not opened yet".into()),
        Refusal::Closed => ApiError::SaleNotOpen("the sale has closed".into()),
        Refusal::ZoneNotFound => ApiError::ZoneNotFound(zone.to_owned()),
        Refusal::InvalidQuantity => ApiError::InvalidQuantity("quantity must be at least 1".into()),
        Refusal::LimitExceeded { remaining } => ApiError::LimitExceeded { remaining },
        Refusal::SoldOut { left } => ApiError::SoldOut {
            zone: zone.to_owned(),
            left,
        },
        Refusal::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
        Refusal::PassRevoked => pass_refused_in_script(
            "revoked",
            ApiError::PassInvalid(
                "the queue pass is no longer valid: a confirmation spent it, or you left or were dropped from the queue".into(),
            ),
        ),
        Refusal::PassExpired => pass_refused_in_script("expired", ApiError::PassExpired),
        Refusal::IdTaken => ApiError::internal(anyhow::anyhow!("reservation id collided")),
        Refusal::ReservationNotFound => ApiError::ReservationNotFound,
        Refusal::HoldExpired { .. } => ApiError::HoldExpired,
        Refusal::Cancelled => ApiError::ReservationCancelled,
        Refusal::ZoneNotSeated => ApiError::ZoneNotSeated(zone.to_owned()),
        Refusal::UnknownSeat { seat } => ApiError::UnknownSeat(seat),
        Refusal::SeatsTaken { seats } => ApiError::SeatsTaken { seats },
    }
}

fn pass_refused_in_script(reason: &'static str, err: ApiError) -> ApiError {
    metrics::counter!("flashsale_pass_refusals_total", "reason" => reason).increment(1);
    err
}
