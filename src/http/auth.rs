//! `/v1/auth`: buyers register and log in; login returns an access token.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, ClientAddr, Json};
use crate::{
    accounts::{self, Email, Password},
    error::{ApiResult, Problem},
    limits::Action,
    tokens::Role,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
}

#[derive(Deserialize, ToSchema)]
struct Credentials {
    #[schema(example = "fan@example.com", format = Email, max_length = 254)]
    email: String,
    /// Register: 10 to 256 characters, not a common password.
    #[schema(min_length = 10, max_length = 256)]
    password: String,
}

/// Create a buyer account (organizers come from `flashsale add-user`).
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = Credentials,
    responses(
        (status = 201, description = "Created: `{{\"user_id\"}}`", body = Registered),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_email`, `weak_password`, `invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn register(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;
    let id = accounts::register(&state.db, &email, password, Role::Buyer).await?;
    tracing::info!(user.id = %id, "account registered");
    Ok((StatusCode::CREATED, axum::Json(Registered { user_id: id })))
}

#[derive(Serialize, ToSchema)]
struct Registered {
    user_id: uuid::Uuid,
}

#[derive(Serialize, ToSchema)]
struct Login {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// Log in: an access token for `Authorization: Bearer`.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = Login),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_credentials`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(body): Json<Credentials>,
) -> ApiResult<axum::Json<Login>> {
    state.limits.check(Action::Login, None, addr)?;
    let (id, role) = accounts::login(&state.db, &body.email, body.password).await?;
    let access_token = state
        .tokens
        .issue(&id.to_string(), role, state.access_token_ttl)
        .map_err(crate::error::ApiError::internal)?;
    Ok(axum::Json(Login {
        access_token,
        token_type: "Bearer",
        expires_in: state.access_token_ttl,
    }))
}
