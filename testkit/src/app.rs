//! The API under test: the real router on 127.0.0.1:0, built from a
//! [`Config`] by [`AppState::build`] as `flashsale serve` builds it, and the
//! requests a browser or a client would make of it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use flashsale::{
    config::Config,
    http::AppState,
    ids::SaleId,
    limits::LimitsConfig,
    passes::{PassClaims, PassKeys},
    queue,
    scripts::Scripts,
    tokens::{AccessTokens, Role},
};
use fred::clients::Pool;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::stores::{config, fresh_database, redis_url};

pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The app's database.
    pub db_url: String,
    /// A client whose requests give up after ten seconds.
    pub http: reqwest::Client,
    pub db: PgPool,
    pub redis: Pool,
    pub scripts: Arc<Scripts>,
    pub tokens: Arc<AccessTokens>,
    pub passes: Arc<PassKeys>,
    /// The API's shared state (its event streams, its shutdown token).
    pub state: AppState,
    /// Queue passes already obtained, by (sale, buyer).
    held_passes: std::sync::Mutex<std::collections::HashMap<(SaleId, String), String>>,
}

impl TestApp {
    /// The API on a fresh database and the machine's Redis.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// An app with these rate limits (the others run without any).
    pub async fn spawn_with_limits(limits: LimitsConfig) -> Self {
        Self::spawn_with(|c| c.limits = limits).await
    }

    /// An app whose Redis is `redis_url` (e.g. a closed port, to see how it
    /// behaves when Redis is down).
    pub async fn spawn_with_redis(redis_url: &str) -> Self {
        Self::spawn_with(|c| c.redis_url = redis_url.into()).await
    }

    /// An app whose Redis is the TLS server at `redis_url` (`rediss://`),
    /// trusting the CA certificates in the PEM file `ca`.
    pub async fn spawn_with_tls_redis(redis_url: &str, ca: &std::path::Path) -> Self {
        Self::spawn_with(|c| {
            c.redis_url = redis_url.into();
            c.redis_tls_ca = Some(ca.into());
        })
        .await
    }

    /// An app that also serves `extra` routes, under the service's layers
    /// (for what no real route does on purpose, such as panicking).
    pub async fn spawn_with_routes(extra: axum::Router<AppState>) -> Self {
        let (_, db_url) = fresh_database().await;
        Self::start(config(&db_url, &redis_url()), extra).await
    }

    /// An app on a fresh database whose configuration `change` adjusts.
    pub async fn spawn_with(change: impl FnOnce(&mut Config)) -> Self {
        let (_, db_url) = fresh_database().await;
        let mut config = config(&db_url, &redis_url());
        change(&mut config);
        Self::start(config, axum::Router::new()).await
    }

    /// An API on these stores (a private Redis, the test's database).
    pub async fn serve(redis_url: &str, db_url: &str) -> Self {
        Self::start(config(db_url, redis_url), axum::Router::new()).await
    }

    /// An API on these stores whose confirmations wait for `replicas`
    /// replicas, at most `timeout` (CONFIRM_WAIT_REPLICAS and _TIMEOUT_MS).
    pub async fn serve_replicated(
        redis_url: &str,
        db_url: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Self {
        let mut config = config(db_url, redis_url);
        config.confirm_wait_replicas = replicas;
        config.confirm_wait_timeout = timeout;
        Self::start(config, axum::Router::new()).await
    }

    /// The API `config` describes, serving `extra` routes too.
    pub async fn start(config: Config, extra: axum::Router<AppState>) -> Self {
        let state = AppState::build(&config).await.expect("the API's state");
        let listener =
            flashsale::server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config.server.backlog)
                .expect("a free port");
        let addr = listener.local_addr().expect("a bound port");
        let app = flashsale::http::router_with(state.clone(), extra);
        tokio::spawn(flashsale::server::serve(
            listener,
            app,
            config.server,
            std::future::pending(),
        ));
        Self {
            addr,
            base: format!("http://{addr}"),
            db_url: config.database_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            db: state.db.clone(),
            redis: state.redis.clone(),
            scripts: state.scripts.clone(),
            tokens: state.tokens.clone(),
            passes: state.passes.clone(),
            state,
            held_passes: Default::default(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A queue pass for `user`, signed with this API's key as its queue
    /// would sign it, without going through the queue.
    pub fn pass(&self, sale: SaleId, user: &str) -> String {
        let now = flashsale::tokens::unix_now();
        self.passes
            .sign(&PassClaims {
                sub: user.into(),
                sale: sale.to_string(),
                iat: now,
                exp: now + 600,
                jti: format!("{user}-pass"),
            })
            .unwrap()
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        self.tokens.issue(sub, role, 3600).unwrap()
    }

    pub fn buyer(&self, sub: &str) -> String {
        self.token(sub, Role::Buyer)
    }

    pub fn organizer(&self, sub: &str) -> String {
        self.token(sub, Role::Organizer)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        let mut req = self.http.patch(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    /// Creates a sale as `organizer` and returns its body. `overrides` are
    /// merged into a default body with zones A (10) and B (5).
    pub async fn create_sale(&self, organizer: &str, overrides: Value) -> Value {
        let mut body = json!({
            "name": "Test sale",
            "release_rate": 1000,
            "release_interval_ms": 100,
            "pass_ttl_seconds": 600,
            "zones": [
                {"code": "A", "name": "Floor", "capacity": 10, "price_cents": 5000},
                {"code": "B", "name": "Balcony", "capacity": 5, "price_cents": 9000}
            ],
            "per_user_limit": 4,
            "hold_ttl_seconds": 600
        });
        if let (Some(b), Some(o)) = (body.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                b.insert(k.clone(), v.clone());
            }
        }
        let res = self
            .post("/v1/sales", Some(&self.organizer(organizer)), body)
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "create sale");
        res.json().await.unwrap()
    }

    pub async fn sale_id(&self, overrides: Value) -> SaleId {
        let sale = self.create_sale("org-1", overrides).await;
        sale["id"].as_str().unwrap().parse().unwrap()
    }

    /// Joins the queue as `buyer`.
    pub async fn join(&self, sale: SaleId, buyer: &str) -> Response {
        self.post(
            &format!("/v1/sales/{sale}/queue"),
            Some(&self.buyer(buyer)),
            json!({}),
        )
        .await
    }

    /// Polls the queue as `buyer`.
    pub async fn poll(&self, sale: SaleId, buyer: &str) -> Response {
        self.get(&format!("/v1/sales/{sale}/queue"), Some(&self.buyer(buyer)))
            .await
    }

    /// Runs release ticks (as the releaser worker does) until one is due and
    /// has run; returns it. Bounded: gives up after five seconds.
    pub async fn tick(&self, sale: SaleId, idle_ms: u64) -> queue::Tick {
        for _ in 0..500 {
            if let Some(tick) = queue::release_tick(&self.redis, &self.scripts, sale, idle_ms, 5000)
                .await
                .unwrap()
            {
                return tick;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no release tick came due within five seconds");
    }

    /// The buyer's queue pass for the sale: joins, lets the releaser admit,
    /// and polls, as a browser would.
    pub async fn pass_for(&self, sale: SaleId, buyer: &str) -> String {
        if let Some(p) = self
            .held_passes
            .lock()
            .unwrap()
            .get(&(sale, buyer.to_owned()))
        {
            return p.clone();
        }
        let res = self.join(sale, buyer).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "join");
        for _ in 0..500 {
            let body: Value = self.poll(sale, buyer).await.json().await.unwrap();
            match body["state"].as_str() {
                Some("admitted") => {
                    let pass = body["pass"].as_str().unwrap().to_owned();
                    self.held_passes
                        .lock()
                        .unwrap()
                        .insert((sale, buyer.to_owned()), pass.clone());
                    return pass;
                }
                Some("waiting") => {
                    let _ = queue::release_tick(&self.redis, &self.scripts, sale, 300_000, 5000)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => panic!("{buyer} cannot be admitted: {body}"),
            }
        }
        panic!("{buyer} was not admitted within five seconds");
    }

    /// Queues every buyer, runs release ticks until all are admitted (the
    /// sale's rate and stock must allow it), and collects their passes.
    pub async fn admit_all(&self, sale: SaleId, buyers: &[String]) -> Vec<String> {
        for chunk in buyers.chunks(50) {
            let joins = chunk.iter().map(|b| self.join(sale, b));
            for res in futures::future::join_all(joins).await {
                assert_eq!(res.status(), StatusCode::ACCEPTED, "join");
            }
        }
        let mut admitted = 0;
        while admitted < buyers.len() as u64 {
            let tick = self.tick(sale, 300_000).await;
            assert!(
                tick.admitted > 0 || tick.waiting == 0,
                "admission stalled: {tick:?}"
            );
            admitted += tick.admitted;
        }
        let mut passes = Vec::with_capacity(buyers.len());
        for b in buyers {
            let body: Value = self.poll(sale, b).await.json().await.unwrap();
            assert_eq!(body["state"], "admitted", "{body}");
            let pass = body["pass"].as_str().unwrap().to_owned();
            self.held_passes
                .lock()
                .unwrap()
                .insert((sale, b.clone()), pass.clone());
            passes.push(pass);
        }
        passes
    }

    /// Places a hold as `buyer`, with a queue pass obtained through the queue.
    pub async fn hold(
        &self,
        sale: SaleId,
        buyer: &str,
        zone: &str,
        qty: i64,
        key: Option<&str>,
    ) -> Response {
        let pass = self.pass_for(sale, buyer).await;
        self.hold_with_pass(sale, buyer, &pass, zone, qty, key)
            .await
    }

    pub async fn hold_with_pass(
        &self,
        sale: SaleId,
        buyer: &str,
        pass: &str,
        zone: &str,
        qty: i64,
        key: Option<&str>,
    ) -> Response {
        let mut req = self
            .http
            .post(self.url(&format!("/v1/sales/{sale}/reservations")))
            .bearer_auth(self.buyer(buyer))
            .header("x-queue-pass", pass)
            .json(&json!({"zone": zone, "quantity": qty}));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.expect("request")
    }

    /// Confirms as `buyer`. A confirmation spends the buyer's queue pass,
    /// so their next hold goes through the queue again, as in a browser.
    pub async fn confirm(&self, id: &str, buyer: &str) -> Response {
        let res = self
            .post(
                &format!("/v1/reservations/{id}/confirm"),
                Some(&self.buyer(buyer)),
                json!({}),
            )
            .await;
        if res.status() == StatusCode::OK {
            self.held_passes
                .lock()
                .unwrap()
                .retain(|(_, b), _| b != buyer);
        }
        res
    }

    pub async fn cancel(&self, id: &str, buyer: &str) -> Response {
        self.post(
            &format!("/v1/reservations/{id}/cancel"),
            Some(&self.buyer(buyer)),
            json!({}),
        )
        .await
    }

    /// Rebuilds the sale's Redis state from Postgres, freezing it first
    /// (as `flashsale restore --freeze` does), waiting up to 10 s for the
    /// stream to drain.
    pub async fn restore(&self, sale: SaleId) -> flashsale::recovery::Restored {
        flashsale::recovery::restore(
            &self.db,
            &self.redis,
            &self.scripts,
            sale,
            flashsale::recovery::Options {
                freeze: true,
                drain_wait: Duration::from_secs(10),
            },
        )
        .await
        .expect("the sale restored")
    }

    /// The zone's (available, held, confirmed, capacity) straight from Redis.
    pub async fn stock(&self, sale: SaleId, zone: &str) -> (i64, i64, i64, i64) {
        let live = flashsale::sales::live(&self.redis, sale)
            .await
            .unwrap()
            .unwrap();
        let i = live.def.zones.iter().position(|z| z.code == zone).unwrap();
        let s = live.stock[i];
        (s.available, s.held, s.confirmed, s.capacity)
    }
}

/// Asserts a problem+json response with `status` and `code`; returns the body.
pub async fn assert_problem(res: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(res.status(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(ct, "application/problem+json", "content type");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], code, "code in {body}");
    assert_eq!(body["status"], status.as_u16(), "status in {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "detail in {body}"
    );
    assert!(
        body["title"].is_string() && body["type"].is_string(),
        "{body}"
    );
    body
}
