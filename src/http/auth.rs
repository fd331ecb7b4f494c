//! `/v1/auth`: buyers register and log in; login returns an access token.

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::post, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AppState, ClientAddr, Json};
use crate::{
    accounts::{self, Email, Password},
    error::ApiResult,
    limits::Action,
    tokens::Role,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(register))
        .route("/v1/auth/login", post(login))
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

/// New accounts are buyers; organizers come from `flashsale add-user`.
async fn register(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;
    let id = accounts::register(&state.db, &email, password, Role::Buyer).await?;
    tracing::info!(user.id = %id, "account registered");
    Ok((StatusCode::CREATED, axum::Json(json!({ "user_id": id }))))
}

#[derive(Serialize)]
struct Login {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

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
