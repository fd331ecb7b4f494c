//! The one API error type, rendered as RFC 9457 problem details.
//!
//! Each variant is a thing a client can act on, and carries the stable
//! snake_case `code` that docs/API.md (Problem codes) promises. 5xx bodies are opaque: their cause
//! is logged once, here, and never sent to the client.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    /// A change asked for with the session cookie but without the
    /// `x-flashsale-csrf: 1` header that only same-site script can send.
    #[error(
        "a request signed in with the session cookie must carry the header `x-flashsale-csrf: 1`"
    )]
    CsrfRequired,
    #[error("this needs a queue pass: join the sale's queue and send the pass you are given as `X-Queue-Pass`")]
    PassRequired,
    #[error("{0}")]
    PassInvalid(String),
    #[error("the queue pass has expired; join the queue again")]
    PassExpired,
    #[error("you are not in this sale's queue")]
    NotInQueue,
    #[error("the email or the password is wrong")]
    InvalidCredentials,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("{0}")]
    InvalidEmail(String),
    #[error("{0}")]
    WeakPassword(String),
    #[error("sale not found")]
    SaleNotFound,
    #[error("this sale is paused while its live state is restored; retry shortly")]
    SaleFrozen,
    #[error("zone `{0}` is not part of this sale")]
    ZoneNotFound(String),
    #[error("reservation not found")]
    ReservationNotFound,
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    SaleNotOpen(String),
    /// An organizer's change that a closed (or archived) sale no longer takes.
    #[error("{0}")]
    SaleClosed(String),
    #[error("not enough tickets left in zone {zone}: {left} left")]
    SoldOut { zone: String, left: i64 },
    #[error("these seats are not free: {}", seats.join(", "))]
    SeatsTaken { seats: Vec<String> },
    #[error("zone `{0}` is general admission: it has no seats to choose")]
    ZoneNotSeated(String),
    #[error("seat `{0}` is not part of this zone")]
    UnknownSeat(String),
    #[error("{0}")]
    InvalidSeats(String),
    #[error("the per-user limit allows {remaining} more ticket(s) in this sale")]
    LimitExceeded { remaining: i64 },
    #[error("the hold expired before it was confirmed; its tickets went back on sale")]
    HoldExpired,
    #[error("the reservation was cancelled")]
    ReservationCancelled,
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    #[error("{0}")]
    InvalidQuantity(String),
    /// A field failed validation; the detail names the field.
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidBody(String),
    /// A paging cursor this service did not give.
    #[error("{0}")]
    InvalidCursor(String),
    #[error("expected `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("too many requests; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// A store did not answer in time. `what` names it for the logs.
    #[error("{what} is unavailable; retry shortly")]
    Unavailable { what: &'static str },
    /// Done on the Redis primary, but not yet acknowledged by as many
    /// replicas as `CONFIRM_WAIT_REPLICAS` asks: losing the primary now could
    /// lose it, so the buyer is not told it is done. The code is
    /// `unavailable`: a client retries it like any other 503.
    #[error(
        "the {what} is not yet replicated; retry the same request shortly (repeating it is safe)"
    )]
    NotReplicated { what: &'static str },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// An RFC 9457 problem: every error the API returns has this shape, with
/// the content type `application/problem+json`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "/problems/sold_out")]
    pub kind: String,
    #[schema(example = "Conflict")]
    pub title: String,
    #[schema(example = 409)]
    pub status: u16,
    /// What went wrong, for a person.
    #[schema(example = "not enough tickets left in zone A: 1 left")]
    pub detail: String,
    /// The stable machine code.
    #[schema(example = "sold_out")]
    pub code: String,
    /// `seats_taken`: the seats asked for that are not free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seats: Option<Vec<String>>,
}

/// Seconds a client should wait before retrying while a store is down.
const UNAVAILABLE_RETRY_AFTER: u64 = 1;
/// A restore takes an operator: ask clients to come back later.
const FROZEN_RETRY_AFTER: u64 = 30;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Unauthenticated(_) | InvalidCredentials => StatusCode::UNAUTHORIZED,
            EmailTaken => StatusCode::CONFLICT,
            InvalidEmail(_) | WeakPassword(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Forbidden(_) | CsrfRequired | PassRequired | PassInvalid(_) | PassExpired => {
                StatusCode::FORBIDDEN
            }
            SaleNotFound | ZoneNotFound(_) | ReservationNotFound | NotFound | NotInQueue => {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            SaleNotOpen(_)
            | SaleClosed(_)
            | SoldOut { .. }
            | SeatsTaken { .. }
            | LimitExceeded { .. }
            | ReservationCancelled => StatusCode::CONFLICT,
            HoldExpired => StatusCode::GONE,
            IdempotencyKeyReused
            | InvalidIdempotencyKey(_)
            | InvalidQuantity(_)
            | ZoneNotSeated(_)
            | UnknownSeat(_)
            | InvalidSeats(_)
            | Validation(_)
            | InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            MalformedJson(_) | InvalidCursor(_) => StatusCode::BAD_REQUEST,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Unavailable { .. } | NotReplicated { .. } | SaleFrozen => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine code of docs/API.md.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthenticated(_) => "unauthenticated",
            InvalidCredentials => "invalid_credentials",
            EmailTaken => "email_taken",
            InvalidEmail(_) => "invalid_email",
            WeakPassword(_) => "weak_password",
            Forbidden(_) => "forbidden",
            CsrfRequired => "csrf_required",
            PassRequired => "pass_required",
            PassInvalid(_) => "pass_invalid",
            PassExpired => "pass_expired",
            NotInQueue => "not_in_queue",
            SaleNotFound => "sale_not_found",
            SaleFrozen => "sale_frozen",
            ZoneNotFound(_) => "zone_not_found",
            ReservationNotFound => "reservation_not_found",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            SaleNotOpen(_) => "sale_not_open",
            SaleClosed(_) => "sale_closed",
            SoldOut { .. } => "sold_out",
            SeatsTaken { .. } => "seats_taken",
            ZoneNotSeated(_) => "zone_not_seated",
            UnknownSeat(_) => "unknown_seat",
            InvalidSeats(_) => "invalid_seats",
            LimitExceeded { .. } => "limit_exceeded",
            HoldExpired => "hold_expired",
            ReservationCancelled => "reservation_cancelled",
            IdempotencyKeyReused => "idempotency_key_reused",
            InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            InvalidQuantity(_) => "invalid_quantity",
            Validation(_) => "validation_failed",
            MalformedJson(_) => "malformed_json",
            InvalidBody(_) => "invalid_body",
            InvalidCursor(_) => "invalid_cursor",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge { .. } => "payload_too_large",
            RateLimited { .. } => "rate_limited",
            Unavailable { .. } | NotReplicated { .. } => "unavailable",
            Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            ApiError::Unavailable { .. } | ApiError::NotReplicated { .. } => {
                Some(UNAVAILABLE_RETRY_AFTER)
            }
            ApiError::SaleFrozen => Some(FROZEN_RETRY_AFTER),
            _ => None,
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(err) => tracing::error!(error = ?err, "request failed"),
            ApiError::Unavailable { what } => tracing::warn!(store = what, "store unavailable"),
            _ => {}
        }
        let code = self.code();
        let problem = Problem {
            kind: format!("/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_owned(),
            seats: match &self {
                ApiError::SeatsTaken { seats } => Some(seats.clone()),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names the scheme that would be accepted.
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<fred::error::Error> for ApiError {
    fn from(err: fred::error::Error) -> Self {
        if redis_is_unavailable(&err) {
            metrics::counter!("flashsale_store_errors_total", "store" => "redis").increment(1);
            tracing::warn!(error = %err, "redis call failed");
            ApiError::Unavailable { what: "redis" }
        } else {
            ApiError::Internal(anyhow::Error::new(err).context("redis call"))
        }
    }
}

/// Whether a Redis error means "Redis cannot answer right now" (so the
/// client should retry) rather than a bug: a lost or refused connection, a
/// timeout, and Redis's own refusals while it replays its AOF (LOADING),
/// fails over (READONLY, MASTERDOWN), reshards (TRYAGAIN, CLUSTERDOWN), is
/// out of memory (OOM: `maxmemory` reached under `noeviction`, which refuses
/// writes, and reads still work) or cannot persist (MISCONF: a failed
/// snapshot with `stop-writes-on-bgsave-error`). The last two last until an
/// operator acts, but nothing was written and a retry is safe, so the client
/// is told to come back rather than that the service broke. Inside a script
/// the refusal comes wrapped in the script's error, hence `contains`.
pub fn redis_is_unavailable(err: &fred::error::Error) -> bool {
    use fred::error::ErrorKind::*;
    if matches!(
        err.kind(),
        IO | Timeout | Canceled | Cluster | Backpressure | Routing
    ) {
        return true;
    }
    let details = err.details();
    [
        "Failed to route",
        "LOADING",
        "READONLY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "OOM command not allowed",
        "MISCONF",
        "onnection",
    ]
    .iter()
    .any(|marker| details.contains(marker))
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                metrics::counter!("flashsale_store_errors_total", "store" => "postgres")
                    .increment(1);
                tracing::warn!(error = %err, "postgres call failed");
                ApiError::Unavailable { what: "postgres" }
            }
            other => ApiError::Internal(anyhow::Error::new(other).context("postgres query")),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::Redis(e) => e.into(),
            StoreError::Postgres(e) => e.into(),
            StoreError::Corrupt(e) => ApiError::Internal(e),
        }
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(err: crate::queue::QueueError) -> Self {
        use crate::queue::QueueError;
        match err {
            QueueError::SaleNotFound => ApiError::SaleNotFound,
            QueueError::SaleFrozen => ApiError::SaleFrozen,
            QueueError::SaleClosed => ApiError::SaleNotOpen("the sale has closed".into()),
            QueueError::Store(e) => e.into(),
        }
    }
}

impl From<crate::sales::SaleError> for ApiError {
    fn from(err: crate::sales::SaleError) -> Self {
        use crate::sales::SaleError;
        match err {
            SaleError::Invalid(detail) => ApiError::Validation(detail),
            SaleError::NotFound => ApiError::SaleNotFound,
            SaleError::Frozen => ApiError::SaleFrozen,
            SaleError::Store(e) => e.into(),
        }
    }
}

impl From<crate::accounts::AccountError> for ApiError {
    fn from(err: crate::accounts::AccountError) -> Self {
        use crate::accounts::AccountError;
        match err {
            AccountError::InvalidEmail(detail) => ApiError::InvalidEmail(detail),
            AccountError::WeakPassword(detail) => ApiError::WeakPassword(detail),
            AccountError::EmailTaken => ApiError::EmailTaken,
            AccountError::InvalidCredentials => ApiError::InvalidCredentials,
            AccountError::Store(e) => e.into(),
            AccountError::Hashing(e) => ApiError::Internal(e),
        }
    }
}

impl From<crate::limits::RateLimited> for ApiError {
    fn from(err: crate::limits::RateLimited) -> Self {
        ApiError::RateLimited {
            retry_after: err.retry_after,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
