//! Extractors: JSON bodies and path ids whose rejections are our
//! problem+json, and the caller's identity, so a handler's signature says
//! who may call it and what it works on.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, Method},
};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::{
    error::ApiError,
    passes::PassError,
    tokens::{Identity, Role},
};

/// A path id (`/v1/sales/{sale_id}`), parsed at the edge: a malformed id
/// names nothing, so it is answered as the id type's not-found problem.
pub struct Path<T>(pub T);

/// An id that a path can name, and the problem when it names nothing.
pub trait PathId: std::str::FromStr {
    fn not_found() -> ApiError;
}

impl PathId for crate::ids::SaleId {
    fn not_found() -> ApiError {
        ApiError::SaleNotFound
    }
}

impl PathId for crate::ids::ReservationId {
    fn not_found() -> ApiError {
        ApiError::ReservationNotFound
    }
}

impl<T: PathId + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| T::not_found())?;
        raw.parse().map(Path).map_err(|_| T::not_found())
    }
}

/// `axum::Json`, with bad input answered as our problem details.
pub struct Json<T, const LIMIT: usize = { super::JSON_BODY_LIMIT }>(pub T);

impl<T: DeserializeOwned, S: Send + Sync, const LIMIT: usize> FromRequest<S> for Json<T, LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == "application"
                    && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = read_body(req, state, LIMIT).await?;
        object_only(&bytes)?;
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(v)| Json(v))
            .map_err(json_rejection)
    }
}

/// An optional JSON object: an empty body (or only whitespace) is
/// `T::default()`; anything else is read as [`Json`] reads it, whatever its
/// content type (a confirmation's body is optional, and clients that send
/// none often send no content type either).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state, super::JSON_BODY_LIMIT).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        object_only(&bytes)?;
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(v)| OptionalJson(v))
            .map_err(json_rejection)
    }
}

/// The whole body, within the route's body limit (`limit`, as the route's
/// `DefaultBodyLimit` sets it: [`super::JSON_BODY_LIMIT`] unless the route
/// says otherwise).
async fn read_body<S: Send + Sync>(
    req: Request,
    state: &S,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::MalformedJson("the request body could not be read".into())
            }
        })
}

/// Refuses a body that is JSON but not an object (serde would fill a
/// struct from an array). Malformed JSON is left to the parser to describe.
pub fn object_only(body: &[u8]) -> Result<(), ApiError> {
    if crate::json::is_object(body)
        || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
    {
        return Ok(());
    }
    Err(ApiError::InvalidBody(
        "the body must be a JSON object".into(),
    ))
}

/// Maps axum's JSON rejections to precise client errors. serde's messages name
/// the field and what was expected; axum's own preamble is dropped.
pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::InvalidBody(strip_preamble(&e.body_text())),
        JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(format!(
            "body is not valid JSON: {}",
            strip_preamble(&e.body_text())
        )),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::PayloadTooLarge {
                limit: super::JSON_BODY_LIMIT,
            }
        }
        other => ApiError::MalformedJson(other.body_text()),
    }
}

/// serde's message without axum's preamble, and with JSON's words for the
/// types it expected rather than Rust's (`i64` means nothing to a caller).
fn strip_preamble(text: &str) -> String {
    let mut out = text.to_owned();
    for preamble in [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
    ] {
        if let Some(rest) = out.strip_prefix(preamble) {
            out = rest.to_owned();
        }
    }
    for (rust, json) in [
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("expected a borrowed string", "expected a string"),
        ("expected struct ", "expected an object "),
        ("expected a boolean", "expected true or false"),
    ] {
        out = out.replace(rust, json);
    }
    out
}

/// The client's address: the socket's peer, or, when that peer is a trusted
/// proxy, the right-most `X-Forwarded-For` entry that is not one. `None`
/// when the server was started without connection info.
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let trusted = parts
            .extensions
            .get::<TrustedProxies>()
            .map(|t| t.0.as_slice())
            .unwrap_or_default();
        let Some(peer) = peer.map(|p| p.to_canonical()) else {
            return Ok(ClientAddr(None));
        };
        let is_trusted = |a: &std::net::IpAddr| trusted.iter().any(|r| r.contains(*a));
        if !is_trusted(&peer) {
            if parts.headers.contains_key("x-forwarded-for") {
                untrusted_forwarded_for(peer);
            }
            return Ok(ClientAddr(Some(peer)));
        }
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .collect::<Vec<_>>();
        Ok(ClientAddr(Some(
            forwarded
                .into_iter()
                .rev()
                .find(|a| !is_trusted(a))
                .unwrap_or(peer),
        )))
    }
}

/// An `X-Forwarded-For` from a peer that is not a trusted proxy is ignored
/// (a client could write any address there). Behind a proxy left out of
/// `TRUSTED_PROXIES`, every request says so: counted, and warned about at
/// most once a minute, since the per-address limits then count the proxy as
/// one client.
fn untrusted_forwarded_for(peer: std::net::IpAddr) {
    static WARNING: crate::telemetry::Rarely =
        crate::telemetry::Rarely::every(std::time::Duration::from_secs(60));
    metrics::counter!("flashsale_untrusted_forwarded_for_total").increment(1);
    if WARNING.now() {
        tracing::warn!(
            peer = %peer,
            "X-Forwarded-For from a peer not in TRUSTED_PROXIES: ignored, the peer is taken \
             for the client; if this peer is your proxy or load balancer, list it in \
             TRUSTED_PROXIES, or every client behind it shares one rate limit"
        );
    }
}

/// The trusted proxies, put in each request's extensions by the router.
#[derive(Clone, Default)]
pub struct TrustedProxies(pub std::sync::Arc<Vec<crate::limits::IpRange>>);

/// The cookie a browser session is kept in (`POST /v1/auth/session`): an
/// access token, as a Bearer client would send it.
pub const SESSION_COOKIE: &str = "flashsale_session";

/// The header that a request signed in by the session cookie must carry to
/// change anything. A page of another site cannot set a custom header on a
/// cross-site request without a CORS preflight, which this service answers
/// only for the configured origins, and then without credentials.
pub const CSRF_HEADER: &str = "x-flashsale-csrf";

/// Whether the request carries `x-flashsale-csrf: 1`.
pub fn has_csrf_header(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}

/// The session cookie's value, if the request carries one (in any of its
/// `Cookie` headers: HTTP/2 clients may send several).
fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Any caller with a valid access token: sent as `Authorization: Bearer`
/// (which wins when both are sent), or as the session cookie. A request
/// signed in by the cookie that is not a read (GET, HEAD, OPTIONS) must also
/// carry [`CSRF_HEADER`], or it is refused before anything is done.
pub struct AuthUser(pub Identity);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(header) = parts.headers.get(header::AUTHORIZATION) else {
            let token = session_cookie(&parts.headers).ok_or_else(|| {
                ApiError::Unauthenticated(
                    "missing `Authorization: Bearer <token>` (or a session cookie)".into(),
                )
            })?;
            let who = state
                .tokens
                .verify(token)
                .map_err(|why| ApiError::Unauthenticated(format!("session: {why}")))?;
            let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
            if !reads.contains(&parts.method) && !has_csrf_header(&parts.headers) {
                return Err(ApiError::CsrfRequired);
            }
            return Ok(AuthUser(who));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated("expected `Authorization: Bearer <token>`".into())
            })?;
        state
            .tokens
            .verify(token)
            .map(AuthUser)
            .map_err(ApiError::Unauthenticated)
    }
}

/// An admitted buyer: the caller, and the sale the path names, for which the
/// caller's queue pass (`X-Queue-Pass`) is valid. The pass is checked by its
/// signature here, with no Redis trip; the hold script checks again that the
/// buyer is still admitted, so a revoked pass is refused there.
pub struct Admitted {
    pub who: Identity,
    pub sale: crate::ids::SaleId,
}

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(who) = AuthUser::from_request_parts(parts, state).await?;
        let Path(sale) = Path::<crate::ids::SaleId>::from_request_parts(parts, state).await?;
        let refuse = |reason: &'static str, err: ApiError| {
            metrics::counter!("flashsale_pass_refusals_total", "reason" => reason).increment(1);
            Err(err)
        };
        let Some(raw) = parts.headers.get("x-queue-pass") else {
            return refuse("missing", ApiError::PassRequired);
        };
        let Ok(token) = raw.to_str() else {
            return refuse(
                "malformed",
                ApiError::PassInvalid("the queue pass is malformed".into()),
            );
        };
        match state.passes.verify(token.trim()) {
            Err(PassError::Expired) => refuse("expired", ApiError::PassExpired),
            Err(PassError::Invalid(why)) => refuse(
                "invalid",
                ApiError::PassInvalid(format!("the queue pass is invalid: {why}")),
            ),
            Ok(claims) if claims.sub != who.user_id => refuse(
                "other_buyer",
                ApiError::PassInvalid("the queue pass was issued to another account".into()),
            ),
            Ok(claims) if claims.sale != sale.to_string() => refuse(
                "other_sale",
                ApiError::PassInvalid("the queue pass is for another sale".into()),
            ),
            Ok(_) => Ok(Admitted { who, sale }),
        }
    }
}

/// A caller whose token carries the `organizer` role.
pub struct Organizer(pub Identity);

impl FromRequestParts<AppState> for Organizer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(id) = AuthUser::from_request_parts(parts, state).await?;
        if id.role != Role::Organizer {
            return Err(ApiError::Forbidden(
                "this needs an organizer account".into(),
            ));
        }
        Ok(Organizer(id))
    }
}
