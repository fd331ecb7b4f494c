//! Rate limits and load shedding through HTTP.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::{assert_problem, lines_until, redis_url, PrivateRedis, TestApp, JWT_SECRET};
use flashsale::limits::{LimitStore, LimitsConfig, Rate};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn only(f: impl FnOnce(&mut LimitsConfig)) -> LimitsConfig {
    let mut cfg = LimitsConfig::unlimited();
    f(&mut cfg);
    cfg
}

#[tokio::test]
async fn a_flooding_buyer_gets_429_with_retry_after_and_others_are_unaffected() {
    let app = TestApp::spawn_with_limits(only(|c| {
        c.poll = Rate {
            per_minute: 60,
            burst: 3,
        }
    }))
    .await;
    let sale = app.sale_id(json!({})).await;
    app.join(sale, "flooder").await;
    app.join(sale, "patient").await;
    let mut limited = 0;
    for _ in 0..10 {
        let res = app.poll(sale, "flooder").await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                (1..=2).contains(&retry),
                "Retry-After {retry} for one a second"
            );
            assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            limited += 1;
        } else {
            assert_eq!(res.status(), StatusCode::OK);
        }
    }
    assert!(
        limited >= 6,
        "the burst of 3 let through at most 4 of 10, {limited} refused"
    );
    assert_eq!(
        app.poll(sale, "patient").await.status(),
        StatusCode::OK,
        "others are unaffected"
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("flashsale_rate_limited_total{limit=\"poll\"}"));
}

#[tokio::test]
async fn one_address_is_limited_whatever_x_forwarded_for_claims() {
    let app = TestApp::spawn_with_limits(only(|c| {
        c.per_address = Rate {
            per_minute: 60,
            burst: 5,
        }
    }))
    .await;
    let sale = app.sale_id(json!({})).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let res = app
            .http
            .post(app.url(&format!("/v1/sales/{sale}/queue")))
            .bearer_auth(app.buyer(&format!("user-{i}")))
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status());
    }
    assert!(
        statuses[..5].iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    assert!(
        statuses[6..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_allowance() {
    let app = TestApp::spawn_with_limits(only(|c| {
        c.per_address = Rate {
            per_minute: 60,
            burst: 2,
        };
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    }))
    .await;
    let sale = app.sale_id(json!({})).await;
    let join = |client: &'static str, user: &str| {
        app.http
            .post(app.url(&format!("/v1/sales/{sale}/queue")))
            .bearer_auth(app.buyer(user))
            // A client-supplied first entry, then what the proxy appended.
            .header("x-forwarded-for", format!("6.6.6.6, {client}"))
            .send()
    };
    for i in 0..2 {
        assert_eq!(
            join("203.0.113.1", &format!("a{i}"))
                .await
                .unwrap()
                .status(),
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        join("203.0.113.1", "a9").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        join("203.0.113.2", "b0").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn login_attempts_are_limited_per_address() {
    let app = TestApp::spawn_with_limits(only(|c| {
        c.login = Rate {
            per_minute: 1,
            burst: 2,
        }
    }))
    .await;
    let attempt = || {
        app.post(
            "/v1/auth/login",
            None,
            json!({"email": "x@example.com", "password": "wrong password here"}),
        )
    };
    assert_eq!(attempt().await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(attempt().await.status(), StatusCode::UNAUTHORIZED);
    assert_problem(
        attempt().await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_are_shed_with_503_and_ops_still_answer() {
    let app = TestApp::spawn_with_limits(only(|c| c.max_in_flight = 1)).await;
    let sale = app.sale_id(json!({})).await;
    // One request that never finishes sending its body holds the only slot.
    let mut stuck = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/sales HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        app.organizer("slow")
    );
    stuck.write_all(head.as_bytes()).await.unwrap();
    let mut shed = false;
    for _ in 0..100 {
        let res = app.get(&format!("/v1/sales/{sale}"), None).await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(res.headers().get("retry-after").is_some());
            assert_problem(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
            shed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shed, "a second request was shed");
    assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    drop(stuck);
}

/// `flashsale serve` as its own process, killed when dropped.
struct Serve {
    child: std::process::Child,
    base: String,
}

impl Serve {
    /// The API on `db_url` and the machine's Redis, keeping its rate limits
    /// in `store`, allowing each buyer 5 joins at once and one a minute after.
    fn start(db_url: &str, store: &str) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .arg("serve")
            .env("FLASHSALE_ENV", "development")
            .env("REDIS_URL", redis_url())
            .env("DATABASE_URL", db_url)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("JWT_SECRET", JWT_SECRET)
            .env("JWT_LEEWAY_SECONDS", "2")
            .env("RATE_LIMIT_STORE", store)
            .env("RATE_JOIN_PER_MINUTE", "1")
            .env("RATE_JOIN_BURST", "5")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,flashsale=info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_until(
            &mut child,
            "flashsale API listening",
            Duration::from_secs(30),
        );
        let line: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        let base = format!("http://{}", line["addr"].as_str().unwrap());
        Self { child, base }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two replicas of the API with `RATE_LIMIT_STORE=redis` hold a buyer to
/// one limit between them: requests alternating between the two get the
/// burst of 5 in all, not 5 from each, as they do with the limits in memory.
#[tokio::test]
async fn two_api_processes_with_shared_limits_enforce_one_limit_between_them() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    for (store, allowed) in [("redis", 5), ("memory", 10)] {
        let replicas = [
            Serve::start(&app.db_url, store),
            Serve::start(&app.db_url, store),
        ];
        let buyer = app.buyer(&format!("buyer-{}", uuid::Uuid::new_v4().simple()));
        let mut accepted = 0;
        for i in 0..12 {
            let replica = &replicas[i % 2];
            let res = app
                .http
                .post(format!("{}/v1/sales/{sale}/queue", replica.base))
                .bearer_auth(&buyer)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                let retry: u64 = res.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    (1..=60).contains(&retry),
                    "{store}: Retry-After {retry} for one a minute"
                );
                assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            } else {
                assert!(res.status().is_success(), "{store}: {}", res.status());
                assert_eq!(
                    i, accepted,
                    "{store}: every refusal comes after the allowance"
                );
                accepted += 1;
            }
        }
        assert_eq!(
            accepted, allowed,
            "{store}: joins accepted over both replicas"
        );
    }
}

/// When the shared limits' Redis stops answering, requests are still
/// served on the in-memory limit, and the failures are counted.
#[tokio::test]
async fn a_dead_shared_limit_store_lets_requests_through() {
    let mut limits_redis = PrivateRedis::start();
    let url = limits_redis.url();
    let app = TestApp::spawn_with(|c| {
        c.limits = only(|l| {
            l.join = Rate {
                per_minute: 1,
                burst: 3,
            };
            l.store = LimitStore::Redis;
            l.redis_url = Some(url);
        })
    })
    .await;
    let sale = app.sale_id(json!({})).await;
    // The shared limit is in force: another process spent this buyer's
    // allowance in the shared store, so even the first join is refused.
    let limits_pool = common::redis(&limits_redis.url()).await;
    let scripts = common::scripts();
    for _ in 0..3 {
        let allowed: Vec<i64> = scripts
            .check_rate_limit
            .run(
                &limits_pool,
                vec![flashsale::keys::rate_limit("join", "spent")],
                vec![60_000_000i64.into(), 3i64.into()],
            )
            .await
            .unwrap();
        assert_eq!(allowed, [1, 0]);
    }
    assert_problem(
        app.join(sale, "spent").await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    assert!(app.join(sale, "buyer").await.status().is_success());
    limits_redis.kill();
    for _ in 0..2 {
        let res = app.join(sale, "buyer").await;
        assert!(
            res.status().is_success(),
            "served without the shared store: {}",
            res.status()
        );
    }
    // The in-memory limit still holds: the fourth join is refused.
    assert_problem(
        app.join(sale, "buyer").await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("flashsale_shared_rate_limit_errors_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_sixth_registration_from_one_address_is_429_and_creates_nothing() {
    let app = TestApp::spawn_with_limits(only(|c| {
        c.register = Rate {
            per_minute: 5,
            burst: 5,
        };
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    }))
    .await;
    let register = |client: &'static str, n: usize| {
        app.http
            .post(app.url("/v1/auth/register"))
            .header("x-forwarded-for", client)
            .json(&json!({
                "email": format!("fan-{client}-{n}@example.com"),
                "password": "correct horse battery",
            }))
            .send()
    };
    for n in 0..5 {
        assert_eq!(
            register("203.0.113.1", n).await.unwrap().status(),
            StatusCode::CREATED
        );
    }
    let res = register("203.0.113.1", 5).await.unwrap();
    assert!(res.headers().get("retry-after").is_some());
    assert_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let refused: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE email = $1")
        .bind("fan-203.0.113.1-5@example.com")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(refused, 0, "the refused registration created no account");
    assert_eq!(
        register("203.0.113.2", 0).await.unwrap().status(),
        StatusCode::CREATED,
        "another address is unaffected"
    );
    let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(accounts, 6);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("flashsale_rate_limited_total{limit=\"register\"}"));
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored_and_counted() {
    let app = TestApp::spawn_with_limits(only(|c| {
        c.per_address = Rate {
            per_minute: 60,
            burst: 1,
        }
    }))
    .await;
    let sale = app.sale_id(json!({})).await;
    let join = |user: &'static str, client: &'static str| {
        app.http
            .post(app.url(&format!("/v1/sales/{sale}/queue")))
            .bearer_auth(app.buyer(user))
            .header("x-forwarded-for", client)
            .send()
    };
    assert_eq!(
        join("a", "203.0.113.1").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    // Another claimed address, the same peer: the same allowance.
    assert_eq!(
        join("b", "203.0.113.2").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("flashsale_untrusted_forwarded_for_total"),
        "{metrics}"
    );
}
