//! The HTTP API: the router, shared state and cross-cutting layers.
//!
//! Layers, outermost first, wrapped once around the whole router: a request
//! id (echoed or made), a trace span per request, CORS for the configured
//! origins (preflights are answered there), metrics by route and
//! status, a timeout, a body limit, and a catch for panics (answered 500 as
//! any internal error is). Each route only notes its template on the
//! response for them. Every error, including unknown routes, layer refusals
//! and panicking handlers, is problem+json.

mod auth;
mod docs;
mod events;
mod extract;
mod ops;
mod pages;
mod queue;
mod reservations;
mod sales;

use std::{
    any::Any,
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::HeaderName,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use fred::clients::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};

pub use crate::queue::Seeds;
pub use extract::{Admitted, AuthUser, ClientAddr, Json, Organizer, Path, SESSION_COOKIE};
use utoipa_axum::router::OpenApiRouter;

use crate::{
    config::Config,
    error::ApiError,
    limits::{LimitStore, Limits},
    passes::PassKeys,
    replication::Replication,
    scripts::Scripts,
    tokens::AccessTokens,
};

/// Largest JSON body accepted: every request of the API fits in a few hundred
/// bytes, and a sale with 100 zones in a few KiB.
pub const JSON_BODY_LIMIT: usize = 16 * 1024;

/// The body limit of `POST /v1/sales`: a sale's definition, up to 100 zones
/// whose seat maps may each list 200 rows with their missing seats.
pub const SALE_BODY_LIMIT: usize = 1024 * 1024;

/// How long one request may take before the client gets a 503.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler shares. One reference count to clone: axum clones
/// the state into each middleware and handler for every request.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    /// Connects to both stores and builds the API's shared state, as `main`
    /// and the tests do. Migrations are not run here: `flashsale migrate`
    /// (or the migration Job) does that.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let db = crate::db::connect(
            &config.database_url,
            config.database_max_connections,
            config.store_timeout,
        )
        .await?;
        let redis = crate::redis::connect_with_ca(
            &config.redis_url,
            config.redis_pool_size,
            config.store_timeout,
            config.redis_tls_ca.as_deref(),
        )
        .await?;
        let scripts = Arc::new(Scripts::new());
        if let Err(err) = scripts.load(&redis).await {
            // Not fatal: every call reloads a missing script on its own.
            tracing::warn!(error = %err, "could not preload Lua scripts");
        }
        let replication = Arc::new(Replication::connect(config).await?);
        let passes = Arc::new(PassKeys::from_settings(&redis, &config.passes).await?);
        let mut limits = Limits::new(&config.limits);
        if config.limits.store == LimitStore::Redis {
            let redis = match &config.limits.redis_url {
                Some(url) => {
                    crate::redis::connect_with_ca(
                        url,
                        config.redis_pool_size,
                        config.store_timeout,
                        config.redis_tls_ca.as_deref(),
                    )
                    .await?
                }
                None => redis.clone(),
            };
            if let Err(err) = scripts.load(&redis).await {
                tracing::warn!(error = %err, "could not preload Lua scripts in the rate limits' redis");
            }
            limits = limits.shared_in(redis, scripts.clone());
        }
        let limits = Arc::new(limits);
        {
            // Forget rate-limit keys back at full allowance, so memory
            // follows the active clients, not every client ever seen.
            let limits = Arc::downgrade(&limits);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    let Some(limits) = limits.upgrade() else {
                        break;
                    };
                    limits.shrink();
                    metrics::gauge!("flashsale_rate_limit_keys").set(limits.keys() as f64);
                }
            });
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        let push = crate::push::Push::new(
            redis.clone(),
            scripts.clone(),
            config.push_watch_interval,
            config.max_event_streams,
            shutdown.clone(),
        );
        Ok(Self::from(AppInner {
            db,
            redis,
            scripts,
            push,
            shutdown,
            tokens: Arc::new(AccessTokens::new(&config.jwt)),
            passes,
            limits,
            seeds: Arc::new(Seeds::default()),
            known_sales: Default::default(),
            seen_refresh_ms: (config.queue_idle_seconds * 100).min(5_000),
            access_token_ttl: config.access_token_ttl_seconds,
            max_poll_after_ms: (config.queue_idle_seconds * 1000 / 3).clamp(1_000, 60_000),
            replication,
            metrics: crate::telemetry::metrics(),
            cors_allowed_origins: config.cors_allowed_origins.clone(),
        }))
    }
}

impl From<AppInner> for AppState {
    fn from(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

pub struct AppInner {
    pub db: PgPool,
    pub redis: Pool,
    pub scripts: Arc<Scripts>,
    /// Buyers' event streams and the watchers of the sales they follow.
    pub push: Arc<crate::push::Push>,
    /// Cancelled when the server begins to stop: open event streams end at
    /// once instead of holding the graceful shutdown up.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub tokens: Arc<AccessTokens>,
    pub passes: Arc<PassKeys>,
    pub limits: Arc<Limits>,
    pub seeds: Arc<Seeds>,
    /// Which sales Postgres knows, for sales Redis lost (cached per second).
    pub known_sales: Arc<crate::sales::KnownSales>,
    pub metrics: PrometheusHandle,
    /// How stale a waiting buyer's last-seen mark may get before a poll
    /// refreshes it: a tenth of the idle limit, at most five seconds, so most
    /// polls write nothing and nobody polling is ever taken for gone.
    pub seen_refresh_ms: u64,
    /// Lifetime of access tokens issued at login, in seconds.
    pub access_token_ttl: u64,
    /// The longest `poll_after_ms` a waiting buyer is given: a minute, and
    /// always well inside the idle limit that drops a silent buyer.
    pub max_poll_after_ms: u64,
    /// Replicas a confirmation waits for, and the connections it runs on.
    pub replication: Arc<Replication>,
    /// Origins whose pages may call the API (`CORS_ALLOWED_ORIGINS`).
    pub cors_allowed_origins: Vec<String>,
}

/// The OpenAPI 3.1 document's frame; the paths come from the handlers'
/// `#[utoipa::path]` as the routes are registered, so the two cannot drift.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "Flash-sale ticketing with a fair virtual queue. Errors are RFC 9457 problem details with a stable `code`; every response carries `x-request-id`. Clients send an access token as `Authorization: Bearer`; browser pages sign in with `POST /v1/auth/session` and are then identified by its cookie.",
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::error::Problem)),
    tags(
        (name = "sales", description = "Organizers create and steer sales; anyone reads them"),
        (name = "queue", description = "The virtual queue and its passes"),
        (name = "reservations", description = "Holds, confirmations, cancellations"),
        (name = "auth", description = "Accounts"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(
                            "An access token from `POST /v1/auth/login`, `flashsale token`, or an \
                             identity provider sharing the key.",
                        ))
                        .build(),
                ),
            );
    }
}

/// Wherever a Bearer token is accepted, so is the session cookie: the
/// document says so per operation (one alternative or the other), and
/// describes the cookie's CSRF rule once, in its scheme.
fn cookie_sessions(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "The browser session that `POST /v1/auth/session` sets (HttpOnly, SameSite=Strict). \
                 A request signed in by it whose method is not GET, HEAD or OPTIONS must also carry \
                 `x-flashsale-csrf: 1`, else `403 csrf_required`. A Bearer token, when sent, wins.",
            ))),
        );
    let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
    let session = SecurityRequirement::new("session", Vec::<String>::new());
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
        ];
        for op in operations.into_iter().flatten() {
            if let Some(security) = &mut op.security {
                if security.contains(&bearer) && !security.contains(&session) {
                    security.push(session.clone());
                }
            }
        }
    }
}

/// The API's routes with their documentation (the operations endpoints
/// apart: the in-flight cap does not cover them).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(auth::router())
        .merge(sales::router())
        .merge(queue::router())
        .merge(events::router())
        .merge(reservations::router())
}

/// The OpenAPI document of the API, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().into_openapi();
    doc.merge(ops::router().into_openapi());
    cookie_sessions(&mut doc);
    doc
}

pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] with `extra` routes served beside the API's, under the same
/// layers: how tests reach what no real route does on purpose, such as a
/// handler that panics.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (api, mut doc) = api_routes().split_for_parts();
    // The in-flight cap covers the API, not the operations endpoints, which
    // must answer most when the service is busiest: the API's route
    // templates, as its own OpenAPI document lists them.
    let api_templates: Arc<HashSet<String>> = Arc::new(doc.paths.paths.keys().cloned().collect());
    let (ops, ops_doc) = ops::router().split_for_parts();
    doc.merge(ops_doc);
    cookie_sessions(&mut doc);
    let json = Arc::new(doc.to_json().unwrap_or_default());
    let docs = docs::router(&json);
    let routes = Router::new()
        .merge(api)
        .merge(ops)
        .merge(extra)
        .merge(pages::router())
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let json = json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        json.as_ref().clone(),
                    )
                }
            }),
        )
        .merge(docs)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            (state.clone(), api_templates),
            guard_route,
        ))
        .with_state(state.clone());
    // Everything else wraps the router once. Layers given to `Router::layer`
    // are copied onto every route and cloned with it on every request, a
    // measurable share of a poll (load/RESULTS.md).
    let cors = cors(&state.cors_allowed_origins);
    let outer = tower::ServiceBuilder::new()
        .layer(axum::Extension(extract::TrustedProxies(Arc::new(
            state.limits.trusted_proxies.clone(),
        ))))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(
            // One log line per request (JSON with LOG_FORMAT=json): request
            // id, method, route template, path, status and latency. Headers
            // are never logged, so neither tokens nor passes are.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        request_id = id,
                        method = %req.method(),
                        route = tracing::field::Empty,
                        path = %req.uri().path()
                    )
                })
                .on_request(())
                .on_response(|res: &Response, latency: Duration, span: &tracing::Span| {
                    if let Some(route) = res.extensions().get::<MatchedPath>() {
                        span.record("route", route.as_str());
                    }
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_us = latency.as_micros() as u64,
                        "finished processing request"
                    );
                }),
        )
        // Answers preflights itself (every OPTIONS, then), only when some
        // origin is allowed: without one, nothing changes.
        .option_layer(cors)
        .layer(middleware::from_fn(time_and_count))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        // Innermost, so a panic's 500 is logged, counted and carries the
        // request id like any other answer.
        .layer(CatchPanicLayer::custom(panic_response))
        .service(routes);
    Router::new().fallback_service(outer)
}

/// Cross-origin use of the API by the pages of `origins` (contract: CORS).
/// No credentials: a front end on another site sends a Bearer token, never
/// the session cookie, which is SameSite=Strict anyway. A preflight is good
/// for ten minutes, so a buyer polling with a token is not asked twice.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    use axum::http::{header, HeaderValue, Method};
    if origins.is_empty() {
        return None;
    }
    let origins = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect::<Vec<_>>();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-queue-pass"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static(extract::CSRF_HEADER),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
                HeaderName::from_static("idempotent-replayed"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// A handler that panicked: the client gets the opaque 500 of any internal
/// error, and the panic's message is logged once, there, with the request's
/// span. Without this the connection would be dropped with no answer.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    ApiError::internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

/// Around every route, in one layer (each layer costs every request a boxed
/// future and a cloned service): sheds an API request with 503 when
/// `MAX_IN_FLIGHT` requests are being served, since past that queueing only
/// makes every client wait longer; and hands the matched route template to
/// the layers outside the router (the access log and the request metrics) on
/// the response.
async fn guard_route(
    axum::extract::State((state, api)): axum::extract::State<(AppState, Arc<HashSet<String>>)>,
    req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut res = if route.as_ref().is_some_and(|r| api.contains(r.as_str())) {
        match state.limits.admit() {
            // The permit is held until the response is made.
            Some(_permit) => next.run(req).await,
            None => {
                metrics::counter!("flashsale_shed_total").increment(1);
                ApiError::Unavailable {
                    what: "the service (overloaded)",
                }
                .into_response()
            }
        }
    } else {
        next.run(req).await
    };
    if let Some(route) = route {
        res.extensions_mut().insert(route);
    }
    res
}

/// Redis does not know `sale`. If Postgres does, either the sale was
/// archived (closed and recorded, then moved out of Redis on purpose: `409
/// sale_not_open`, as for any closed sale), or Redis lost it (flushed,
/// restarted without its AOF, an empty replica): the sale is frozen until
/// `flashsale restore` rebuilds it, rather than unknown. Never sells from an
/// empty Redis. Postgres is asked at most once a second per sale
/// ([`crate::sales::KnownSales`]).
pub(crate) async fn or_frozen<T, E: Into<ApiError>>(
    state: &AppState,
    sale: crate::ids::SaleId,
    result: Result<T, E>,
) -> Result<T, ApiError> {
    use crate::sales::Recorded;
    match result.map_err(Into::into) {
        Err(ApiError::SaleNotFound) => {
            Err(match state.known_sales.lookup(&state.db, sale).await? {
                Recorded::Unknown => ApiError::SaleNotFound,
                Recorded::Archived => ApiError::SaleNotOpen("the sale has closed".into()),
                Recorded::Lost => {
                    tracing::warn!(sale.id = %sale, "sale is in Postgres but not in Redis: frozen until restored");
                    ApiError::SaleFrozen
                }
            })
        }
        other => other,
    }
}

/// Answers 503 when a request runs past `REQUEST_TIMEOUT`, so a client is
/// never left hanging on a store that stopped answering; and counts and times
/// every request, labelled by route template (never the raw path, so ids do
/// not explode the label space), method and status. One layer for both.
async fn time_and_count(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let start = Instant::now();
    let res = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::Unavailable {
            what: "the service",
        }
        .into_response(),
    };
    let elapsed = start.elapsed().as_secs_f64();
    let route = res
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    REQUEST_METRICS.record(route, method_label(&method), res.status().as_u16(), elapsed);
    res
}

static REQUEST_METRICS: std::sync::LazyLock<RequestMetrics> =
    std::sync::LazyLock::new(RequestMetrics::default);

/// The request metrics' handles, made once per route, method and status, so
/// the hot path neither builds label strings nor looks the registry up.
#[derive(Default)]
struct RequestMetrics {
    /// By route template; a route answers a handful of methods and statuses.
    routes: std::sync::RwLock<std::collections::HashMap<String, Vec<Handles>>>,
}

struct Handles {
    method: &'static str,
    status: u16,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl Handles {
    fn record(&self, seconds: f64) {
        self.requests.increment(1);
        self.duration.record(seconds);
    }
}

impl RequestMetrics {
    fn record(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        let same = |h: &&Handles| h.method == method && h.status == status;
        if let Ok(routes) = self.routes.read() {
            if let Some(h) = routes.get(route).and_then(|hs| hs.iter().find(same)) {
                return h.record(seconds);
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let handles = routes.entry(route.to_owned()).or_default();
        if let Some(h) = handles.iter().find(same) {
            return h.record(seconds);
        }
        let made = Handles {
            method,
            status,
            requests: metrics::counter!("flashsale_http_requests_total", "route" => route.to_owned(), "method" => method, "status" => status.to_string()),
            duration: metrics::histogram!("flashsale_http_request_duration_seconds", "route" => route.to_owned(), "method" => method),
        };
        made.record(seconds);
        handles.push(made);
    }
}

/// The method as a label: the standard ones by name, anything else as
/// `OTHER`, so a client inventing methods cannot grow the label space.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
