//! Faults with real processes: Redis killed with kill -9 mid-sale, Redis
//! flushed (sale frozen, then restored), Postgres stopped for ten seconds.
//! After each, every confirmation a client was told of is in Postgres
//! exactly once, no zone is above capacity, and drift is back to 0.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use flashsale::{
    ids::{ReservationId, SaleId},
    inventory::{self, HoldRequest, Refusal},
    keys::SaleKeys,
    recovery,
};
use flashsale_workers::{reconciler::Reconciler, sink::Sink};
use fred::{clients::Pool, interfaces::ClientLike};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

fn sink() -> Sink {
    Sink::new(
        format!("test-{}", uuid::Uuid::new_v4().simple()),
        200,
        1_000,
    )
}

/// Sends until the answer is not a 503 or a broken connection (a store is
/// down): what a well-behaved client does with `Retry-After`. Bounded.
async fn persist<F, Fut>(what: &str, send: F) -> reqwest::Response
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<reqwest::Response, reqwest::Error>>,
{
    for _ in 0..300 {
        match send().await {
            Ok(res) if res.status() != StatusCode::SERVICE_UNAVAILABLE => return res,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{what}: still unavailable after 30 s");
}

/// One buyer: hold one ticket (with an idempotency key, so a retry after a
/// lost answer cannot hold twice), then confirm. Returns the reservation id
/// once the client has been told it is confirmed. A hold placed in the last
/// second before Redis was killed may be gone with the unsynced end of the
/// AOF (`appendfsync everysec`): its confirmation answers 404, and the buyer
/// holds again, as a client would. Confirmations are never lost that way.
async fn buy(api: &TestApp, sale: SaleId, user: &str, pass: &str) -> Option<String> {
    let token = api.buyer(user);
    for attempt in 0..3 {
        let url = format!("{}/v1/sales/{sale}/reservations", api.base);
        let key = format!("buy-{attempt}");
        let res = persist("hold", || {
            api.http
                .post(&url)
                .bearer_auth(&token)
                .header("x-queue-pass", pass)
                .header("idempotency-key", &key)
                .json(&json!({"zone": "A", "quantity": 1}))
                .send()
        })
        .await;
        if res.status() != StatusCode::CREATED {
            return None;
        }
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = format!("{}/v1/reservations/{id}/confirm", api.base);
        let res = persist("confirm", || api.http.post(&url).bearer_auth(&token).send()).await;
        if res.status() == StatusCode::NOT_FOUND {
            continue;
        }
        assert_eq!(res.status(), StatusCode::OK, "confirm of {id}");
        return Some(id);
    }
    panic!("{user}'s hold was lost three times");
}

/// Admits `n` buyers and gets each one's pass through the API's queue.
async fn admitted_buyers(
    api: &TestApp,
    redis: &Pool,
    scripts: &flashsale::scripts::Scripts,
    sale: SaleId,
    prefix: &str,
    n: usize,
) -> Vec<(String, String)> {
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    admit(redis, scripts, sale, &users).await;
    let mut out = Vec::new();
    for u in users {
        let res = api
            .http
            .get(format!("{}/v1/sales/{sale}/queue", api.base))
            .bearer_auth(api.buyer(&u))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["state"], "admitted", "{body}");
        out.push((u, body["pass"].as_str().unwrap().to_owned()));
    }
    out
}

/// Drains the sale into Postgres until nothing is in flight (bounded).
async fn drain(redis: &Pool, scripts: &flashsale::scripts::Scripts, db: &PgPool, sale: SaleId) {
    let s = sink();
    for _ in 0..100 {
        let _ = s.drain(redis, scripts, db, sale).await;
        let r = Reconciler::default()
            .check(redis, scripts, db, sale)
            .await
            .unwrap();
        if r.lag_entries == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the stream did not drain");
}

async fn assert_recorded_exactly(db: &PgPool, sale: SaleId, told: &[String]) {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM reservations WHERE sale_id = $1")
            .bind(sale.0)
            .fetch_all(db)
            .await
            .unwrap();
    let in_pg: HashSet<&str> = rows
        .iter()
        .filter(|(_, s)| s == "confirmed")
        .map(|(id, _)| id.as_str())
        .collect();
    let told_set: HashSet<&str> = told.iter().map(String::as_str).collect();
    assert_eq!(
        told.len(),
        told_set.len(),
        "no reservation was confirmed twice"
    );
    assert_eq!(
        in_pg, told_set,
        "Postgres holds exactly the confirmations clients were told of"
    );
    let over: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM zones WHERE sale_id = $1 AND sold > capacity")
            .bind(sale.0)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(over, 0);
}

async fn assert_no_drift(
    redis: &Pool,
    scripts: &flashsale::scripts::Scripts,
    db: &PgPool,
    sale: SaleId,
) {
    let report = Reconciler::default()
        .check(redis, scripts, db, sale)
        .await
        .unwrap();
    assert_eq!(report.frozen, None);
    for z in &report.zones {
        assert_eq!(
            (z.drift, z.oversold, z.conservation_gap),
            (0, 0, 0),
            "{z:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_with_kill_9_mid_sale_loses_no_confirmation() {
    let mut private = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 1000, 600).await;
    let api = Arc::new(TestApp::serve(&private.url(), &db_url).await);
    let buyers = admitted_buyers(&api, &redis, &scripts, sale, "kill", 200).await;

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, (user, pass)) in buyers.into_iter().enumerate() {
        let (api, done) = (api.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i as u64 % 40) * 25)).await;
            let id = buy(&api, sale, &user, &pass).await;
            done.fetch_add(1, Ordering::Relaxed);
            id
        }));
    }
    // Kill Redis mid-sale (no shutdown, no final save), then bring it back
    // on the same AOF.
    while done.load(Ordering::Relaxed) < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    private.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    private.launch();
    let mut told = Vec::new();
    for t in tasks {
        told.extend(t.await.unwrap());
    }
    assert_eq!(
        told.len(),
        200,
        "every buyer bought, retrying through the outage"
    );
    assert!(done.load(Ordering::Relaxed) == 200);

    drain(&redis, &scripts, &db, sale).await;
    assert_recorded_exactly(&db, sale, &told).await;
    let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
    assert_eq!(live.stock[0].confirmed, 200);
    assert_no_drift(&redis, &scripts, &db, sale).await;
}

#[tokio::test]
async fn a_flushed_redis_freezes_the_sale_until_it_is_restored_from_postgres() {
    let private = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    let api = TestApp::serve(&private.url(), &db_url).await;
    // A setting changed live, which the restore must bring back.
    let res = api
        .patch(
            &format!("/v1/sales/{sale}"),
            Some(&api.organizer("org")),
            json!({"admit_headroom_percent": 40}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let bought = confirmations(&redis, &scripts, sale, "f", 5, "A", 2).await;
    let holders: Vec<String> = (0..3).map(|i| format!("h-{i}")).collect();
    admit(&redis, &scripts, sale, &holders).await;
    hold_each(&redis, &scripts, sale, &holders, "A", 1).await;
    drain(&redis, &scripts, &db, sale).await;

    let _: () = redis.flushall(false).await.unwrap();

    // Frozen, not unknown, and certainly not selling from an empty Redis.
    let res = api
        .http
        .get(format!("{}/v1/sales/{sale}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "sale_frozen");
    let res = api
        .http
        .post(format!("{}/v1/sales/{sale}/reservations", api.base))
        .bearer_auth(api.buyer("late"))
        .header("x-queue-pass", api.pass(sale, "late"))
        .json(&json!({"zone": "A", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "sale_frozen");
    let res = api
        .http
        .post(format!("{}/v1/sales/{sale}/queue", api.base))
        .bearer_auth(api.buyer("late"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "sale_frozen");
    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert_eq!(report.frozen, Some("missing"));

    let restored = recovery::restore(&db, &redis, &scripts, sale, Default::default())
        .await
        .unwrap();
    assert_eq!(
        (restored.epoch, restored.reservations, restored.tickets),
        (2, 5, 10)
    );
    // Confirmed reservations stand; the three holds are gone, their tickets back.
    let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
    assert!(!live.frozen);
    assert_eq!(live.release.admit_headroom_percent, 40);
    assert_eq!(
        (
            live.stock[0].available,
            live.stock[0].held,
            live.stock[0].confirmed
        ),
        (90, 0, 10)
    );
    let (user, id) = &bought[0];
    let res = api
        .http
        .get(format!("{}/v1/reservations/{id}", api.base))
        .bearer_auth(api.buyer(user))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "confirmed");
    let mine: Value = api
        .http
        .get(format!("{}/v1/me/reservations", api.base))
        .bearer_auth(api.buyer(user))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = mine["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id.to_string()]);
    assert_no_drift(&redis, &scripts, &db, sale).await;

    // The buyer's confirmed tickets still count against the per-user limit
    // (10): they may hold 8 more, not 9.
    admit(&redis, &scripts, sale, std::slice::from_ref(user)).await;
    let over = inventory::hold(
        &redis,
        &scripts,
        HoldRequest {
            sale,
            user,
            zone: "A",
            quantity: 9,
            id: ReservationId::random(sale),
            fingerprint: None,
            pick: flashsale::inventory::Pick::Any,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        over.map(|_| ()),
        Err(Refusal::LimitExceeded { remaining: 8 })
    );

    // The sale sells again, through the queue.
    let again = admitted_buyers(&api, &redis, &scripts, sale, "after", 1).await;
    assert!(buy(&api, sale, &again[0].0, &again[0].1).await.is_some());

    // A Redis that comes back with an older epoch is fenced off.
    let _: () =
        fred::interfaces::HashesInterface::hset(&redis, SaleKeys::new(sale).meta(), ("epoch", "1"))
            .await
            .unwrap();
    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert_eq!(report.frozen, Some("epoch"));
    let pass = api.pass(sale, &again[0].0);
    let res = api
        .http
        .post(format!("{}/v1/sales/{sale}/reservations", api.base))
        .bearer_auth(api.buyer(&again[0].0))
        .header("x-queue-pass", pass)
        .json(&json!({"zone": "A", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "sale_frozen");
}

#[tokio::test]
async fn restore_refuses_a_sale_that_is_not_frozen() {
    let private = PrivateRedis::start();
    let (db, _) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    confirmations(&redis, &scripts, sale, "r", 2, "A", 1).await;
    drain(&redis, &scripts, &db, sale).await;
    let err = recovery::restore(&db, &redis, &scripts, sale, Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not frozen"), "{err}");
    // Nothing was touched: the sale still sells.
    let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
    assert!(!live.frozen);
    assert_eq!(live.stock[0].confirmed, 2);
    confirmations(&redis, &scripts, sale, "r2", 1, "A", 1).await;
}

#[tokio::test]
async fn restore_with_freeze_waits_until_every_confirmation_is_in_postgres() {
    let private = PrivateRedis::start();
    let (db, _) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    let sold = confirmations(&redis, &scripts, sale, "w", 2, "A", 1).await;
    let quick = recovery::Options {
        freeze: true,
        drain_wait: Duration::from_millis(500),
    };
    // No sink runs: the two confirmations exist only in the stream.
    let err = recovery::restore(&db, &redis, &scripts, sale, quick)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not yet in Postgres"), "{err}");
    // The sale is frozen now, and its stock untouched.
    let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
    assert!(live.frozen);
    assert_eq!(live.stock[0].confirmed, 2);
    let (user, id) = &sold[0];
    assert!(
        matches!(
            inventory::cancel(redis.next(), &scripts, id, user)
                .await
                .unwrap(),
            Err(inventory::Refusal::Frozen)
        ),
        "a frozen sale takes no cancellation"
    );

    // Once the sink has drained the stream, the restore goes through and
    // every confirmation stands.
    drain(&redis, &scripts, &db, sale).await;
    let restored = recovery::restore(&db, &redis, &scripts, sale, Default::default())
        .await
        .unwrap();
    assert_eq!((restored.reservations, restored.tickets), (2, 2));
    let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
    assert!(!live.frozen);
    assert_eq!(live.stock[0].confirmed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_for_a_minute_under_steady_load_loses_nothing_and_the_api_stays_ready() {
    let pg = PrivatePostgres::start();
    let admin = PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE fs")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let db_url = pg.url("fs");
    let db = flashsale::db::connect(&db_url, 4, Duration::from_secs(2))
        .await
        .unwrap();
    flashsale::db::migrate(&db).await.unwrap();
    let private = PrivateRedis::start();
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 1000, 600).await;
    let api = Arc::new(TestApp::serve(&private.url(), &db_url).await);
    let buyers = admitted_buyers(&api, &redis, &scripts, sale, "pg", 240).await;

    // The sink runs all along, as the worker would.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sinking = {
        let (redis, scripts, db, stop) = (redis.clone(), scripts.clone(), db.clone(), stop.clone());
        tokio::spawn(async move {
            let s = sink();
            while !stop.load(Ordering::Relaxed) {
                let _ = s.drain(&redis, &scripts, &db, sale).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut told = Vec::new();
    for (user, pass) in &buyers[..40] {
        told.extend(buy(&api, sale, user, pass).await);
    }
    pg.stop();
    let down_at = Instant::now();
    // For a minute, buyers keep buying at a steady pace: holds and
    // confirmations need only Redis, and the API stays ready (a Postgres
    // failover must not take every replica out of its load balancer).
    let ready = || async {
        let res = api
            .http
            .get(format!("{}/ready", api.base))
            .send()
            .await
            .unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    let mut readiness_checks = 0;
    for (i, (user, pass)) in buyers[40..].iter().enumerate() {
        told.extend(buy(&api, sale, user, pass).await);
        if i % 20 == 0 {
            let (status, body) = ready().await;
            assert_eq!(
                status,
                StatusCode::OK,
                "ready while Postgres is down: {body}"
            );
            assert_eq!(body["redis"], "ok");
            assert_eq!(body["postgres"], "down");
            readiness_checks += 1;
        }
        // 200 buyers spread over the minute.
        let due = Duration::from_millis(300 * (i as u64 + 1));
        if let Some(wait) = due.checked_sub(down_at.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    assert_eq!(readiness_checks, 10);
    // What needs Postgres fails fast with 503.
    let started = Instant::now();
    let res = api
        .http
        .get(format!("{}/v1/sales/{sale}/stats", api.base))
        .bearer_auth(
            api.tokens
                .issue("org", flashsale::tokens::Role::Organizer, 60)
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().get("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 came quickly"
    );

    while down_at.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg.launch();
    // The sink catches up by itself.
    let mut caught_up = false;
    for _ in 0..300 {
        let n: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM reservations WHERE sale_id = $1")
                .bind(sale.0)
                .fetch_one(&db)
                .await;
        if n.ok() == Some(240) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    sinking.await.unwrap();
    assert!(
        caught_up,
        "every confirmation reached Postgres once it was back"
    );
    assert_eq!(told.len(), 240);
    assert_recorded_exactly(&db, sale, &told).await;
    assert_no_drift(&redis, &scripts, &db, sale).await;
}
