//! Operations endpoints: liveness, readiness and Prometheus metrics.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use fred::interfaces::ClientLike;
use serde_json::json;

use super::AppState;
use crate::error::{ApiError, Problem};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// How long a readiness probe waits for each store.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// 200 when Redis answers: a buyer's whole path (queue, holds,
/// confirmations) runs on Redis alone, and confirmations wait in the stream
/// while Postgres is away. Taking every replica out of its load balancer
/// during a Postgres failover would turn a store's hiccup into an outage, so
/// Postgres is reported (in the body and as `flashsale_store_up`, which an
/// alert watches) but does not decide readiness.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\", \"redis\": \"ok\", \"postgres\": \"ok\" | \"down\"}`", body = Object),
        (status = 503, description = "`unavailable`: Redis does not answer; `redis` and `postgres` each `ok` or `down`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn ready(State(state): State<AppState>) -> Response {
    let redis = async {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, state.redis.next().ping::<String>(None)).await,
            Ok(Ok(_))
        )
    };
    let postgres = async {
        matches!(
            tokio::time::timeout(
                PROBE_TIMEOUT,
                sqlx::query_scalar!(r#"SELECT 1 AS "one!""#).fetch_one(&state.db)
            )
            .await,
            Ok(Ok(1))
        )
    };
    let (redis_ok, postgres_ok) = tokio::join!(redis, postgres);
    for (store, up) in [("redis", redis_ok), ("postgres", postgres_ok)] {
        metrics::gauge!("flashsale_store_up", "store" => store).set(f64::from(u8::from(up)));
    }
    let word = |ok: bool| if ok { "ok" } else { "down" };
    if redis_ok {
        return axum::Json(
            json!({"status": "ready", "redis": "ok", "postgres": word(postgres_ok)}),
        )
        .into_response();
    }
    let mut res = ApiError::Unavailable { what: "redis" }.into_response();
    *res.body_mut() = axum::body::Body::from(
        json!({
            "type": "/problems/unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "not ready: redis does not answer",
            "code": "unavailable",
            "redis": "down",
            "postgres": word(postgres_ok),
        })
        .to_string(),
    );
    res
}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
