//! `/v1/auth` and `/v1/me`: buyers register and log in. A client that keeps
//! its own token logs in for an access token (`Authorization: Bearer`); a
//! browser page logs in for a session cookie holding the same kind of
//! token, which script cannot read (`HttpOnly`), other sites' requests do
//! not carry (`SameSite=Strict`), and that is only sent over TLS (`Secure`)
//! unless the service is reached on a loopback address. No token is ever
//! put in a URL.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode, Uri},
    response::IntoResponse,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    extract::{has_csrf_header, SESSION_COOKIE},
    AppState, AuthUser, ClientAddr, Json,
};
use crate::{
    accounts::{self, Email, Password},
    error::{ApiError, ApiResult, Problem},
    limits::Action,
    tokens::Role,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(start_session, end_session))
        .routes(routes!(me))
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
        (status = 429, description = "`rate_limited`: too many registrations from this address", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn register(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Json(body): Json<Credentials>,
) -> ApiResult<impl IntoResponse> {
    // Before anything is parsed or hashed: the limit also bounds how fast
    // one address can probe which e-mails have accounts (`email_taken`).
    state.limits.check(Action::Register, None, addr).await?;
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
        (status = 200, description = "Logged in (`Cache-Control: no-store`)", body = Login),
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
) -> ApiResult<impl IntoResponse> {
    state.limits.check(Action::Login, None, addr).await?;
    let (id, role) = accounts::login(&state.db, &body.email, body.password).await?;
    let access_token = state
        .tokens
        .issue(&id.to_string(), role, state.access_token_ttl)
        .map_err(crate::error::ApiError::internal)?;
    // A token is a credential: no cache on the way may keep it.
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(Login {
            access_token,
            token_type: "Bearer",
            expires_in: state.access_token_ttl,
        }),
    ))
}

#[derive(Serialize, ToSchema)]
struct Session {
    user_id: uuid::Uuid,
    role: Role,
    /// Seconds the session lasts (the cookie's `Max-Age`).
    expires_in: u64,
}

/// Sign a browser in with a session cookie.
///
/// The access token is set as the `flashsale_session` cookie
/// (`HttpOnly; SameSite=Strict; Path=/`, and `Secure` unless the service is
/// reached on a loopback address), never returned in the body. Requests
/// signed in by the cookie that change anything must carry
/// `x-flashsale-csrf: 1`; so must this one.
#[utoipa::path(post, path = "/v1/auth/session", tag = "auth", request_body = Credentials,
    params(("x-flashsale-csrf" = String, Header, pattern = "^1$", example = "1",
        description = "`1`: a header that pages of other sites cannot send")),
    responses(
        (status = 200, description = "Signed in; `Set-Cookie: flashsale_session=...`", body = Session),
        (status = 400, description = "`malformed_json`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`invalid_credentials`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`csrf_required`: the `x-flashsale-csrf: 1` header is missing", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_body`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn start_session(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<Credentials>,
) -> ApiResult<impl IntoResponse> {
    // Login CSRF: another site's form must not sign a browser in to an
    // account of the attacker's.
    if !has_csrf_header(&headers) {
        return Err(ApiError::CsrfRequired);
    }
    state.limits.check(Action::Login, None, addr).await?;
    let (id, role) = accounts::login(&state.db, &body.email, body.password).await?;
    let token = state
        .tokens
        .issue(&id.to_string(), role, state.access_token_ttl)
        .map_err(ApiError::internal)?;
    let cookie = set_session_cookie(&token, state.access_token_ttl, &uri, &headers)?;
    tracing::info!(user.id = %id, "session started");
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::Json(Session {
            user_id: id,
            role,
            expires_in: state.access_token_ttl,
        }),
    ))
}

/// Sign a browser out.
///
/// The session cookie is expired, with or without a valid session. The
/// token itself stays valid until its `exp`, as any access token does; the
/// browser no longer has it.
#[utoipa::path(delete, path = "/v1/auth/session", tag = "auth",
    responses((status = 204, description = "Signed out; `Set-Cookie` expires `flashsale_session`")))]
async fn end_session(uri: Uri, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    let cookie = set_session_cookie("", 0, &uri, &headers)?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]))
}

#[derive(Serialize, ToSchema)]
struct Me {
    user_id: String,
    role: Role,
}

/// Who the caller is (a page asks this to know whether it is signed in).
#[utoipa::path(get, path = "/v1/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn me(AuthUser(who): AuthUser) -> axum::Json<Me> {
    axum::Json(Me {
        user_id: who.user_id,
        role: who.role,
    })
}

/// The `Set-Cookie` value that stores `token` for `max_age` seconds (0
/// expires it). `Secure` unless the request reached the service by a
/// loopback name, where browsers are served over plain HTTP in development.
fn set_session_cookie(
    token: &str,
    max_age: u64,
    uri: &Uri,
    headers: &HeaderMap,
) -> ApiResult<HeaderValue> {
    let secure = if loopback_host(uri, headers) {
        ""
    } else {
        "; Secure"
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .map_err(ApiError::internal)
}

/// Whether the host the request was sent to (`Host`, or HTTP/2's
/// `:authority`, which arrives in the URI) is `localhost`, an IPv4 address
/// in 127.0.0.0/8 or `[::1]`, with or without a port. No host at all counts
/// as not loopback.
fn loopback_host(uri: &Uri, headers: &HeaderMap) -> bool {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .is_some_and(is_loopback)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => {
                return v6
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok_and(|a| a.is_loopback())
            }
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "example.com",
            "localhost.example.com:8080",
            "10.0.0.1:8080",
            "[::2]:80",
            "[::1",
            "128.0.0.1",
            "",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
