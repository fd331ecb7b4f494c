//! Replicated confirmations and Redis Sentinel, with real processes: a
//! primary, its replica and three sentinels (`redis-server --sentinel`), the
//! real workers binary and the real router.
//!
//! With `CONFIRM_WAIT_REPLICAS=1` a buyer hears `200` for a confirmation only
//! once a replica has it, so when the primary is killed (`kill -9`) and the
//! sentinels promote the replica, every confirmation a buyer was told of is
//! still there, and reaches Postgres. Buyers who heard `503` meanwhile retry,
//! as a client does with `Retry-After`.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]
#![allow(clippy::print_stderr, reason = "a fault test reports what it measured")]

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use flashsale::{ids::SaleId, keys::SaleKeys, scripts::Scripts};
use flashsale_workers::reconciler::Reconciler;
use fred::{clients::Pool, interfaces::StreamsInterface};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Admits `users` and gets each one's pass through the API's queue.
async fn passes(
    api: &TestApp,
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    users: &[String],
) -> Vec<String> {
    admit(redis, scripts, sale, users).await;
    let mut out = Vec::new();
    for u in users {
        let res = api
            .http
            .get(format!("{}/v1/sales/{sale}/queue", api.base))
            .bearer_auth(api.buyer(u))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["state"], "admitted", "{body}");
        out.push(body["pass"].as_str().unwrap().to_owned());
    }
    out
}

/// Joins the queue over HTTP and polls until the workers' releaser admits
/// the buyer; the pass (bounded).
async fn queued_pass(api: &TestApp, sale: SaleId, user: &str) -> String {
    let url = format!("{}/v1/sales/{sale}/queue", api.base);
    let token = api.buyer(user);
    let res = api
        .http
        .post(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    for _ in 0..300 {
        let res = api.http.get(&url).bearer_auth(&token).send().await.unwrap();
        let body: Value = res.json().await.unwrap();
        if let Some(pass) = body["pass"].as_str() {
            return pass.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user} was not admitted within 30 s");
}

/// Holds one ticket in zone A (with an idempotency key, so a retry after a
/// lost answer cannot hold twice).
async fn hold(
    api: &TestApp,
    sale: SaleId,
    user: &str,
    pass: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    api.http
        .post(format!("{}/v1/sales/{sale}/reservations", api.base))
        .bearer_auth(api.buyer(user))
        .header("x-queue-pass", pass)
        .header("idempotency-key", "failover-1")
        .json(&json!({"zone": "A", "quantity": 1}))
        .send()
        .await
}

async fn change(
    api: &TestApp,
    user: &str,
    id: &str,
    verb: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    api.http
        .post(format!("{}/v1/reservations/{id}/{verb}", api.base))
        .bearer_auth(api.buyer(user))
        .send()
        .await
}

/// A hold that must succeed; its reservation id.
async fn held(api: &TestApp, sale: SaleId, user: &str, pass: &str) -> String {
    let res = hold(api, sale, user, pass).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Asserts `res` is the 503 of a change not yet replicated.
async fn assert_not_replicated(res: reqwest::Response, what: &str) {
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "problem details"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(what) && detail.contains("not yet replicated"),
        "{detail}"
    );
}

/// Waits (up to 10 s) until a replica has everything `primary` wrote.
async fn wait_for_replica(primary: &PrivateRedis) {
    for _ in 0..200 {
        if primary.replicas_caught_up() >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no replica caught up with the primary within 10 s");
}

#[tokio::test]
async fn a_confirmation_no_replica_acknowledged_answers_503_until_a_replica_attaches() {
    let primary = PrivateRedis::start_primary();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&primary.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 10, 600).await;
    let api = TestApp::serve_replicated(&primary.url(), &db_url, 1, Duration::from_secs(1)).await;
    let pass = passes(&api, &redis, &scripts, sale, &["b".into()]).await;
    let id = held(&api, sale, "b", &pass[0]).await;

    let first = change(&api, "b", &id, "confirm").await.unwrap();
    assert_not_replicated(first, "confirmation").await;
    // The retry replays the confirmed reservation, and still waits.
    let retry = change(&api, "b", &id, "confirm").await.unwrap();
    assert_not_replicated(retry, "confirmation").await;

    let _replica = PrivateRedis::replica_of(primary.port);
    wait_for_replica(&primary).await;
    let res = change(&api, "b", &id, "confirm").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["id"].as_str(), body["status"].as_str()),
        (Some(id.as_str()), Some("confirmed"))
    );
    let entries: u64 = redis.xlen(SaleKeys::new(sale).stream()).await.unwrap();
    assert_eq!(entries, 1, "three answers, one confirmation in the record");
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "flashsale_confirm_replication_timeouts_total{change=\"confirm\"}",
        "flashsale_confirm_replication_wait_seconds_bucket{change=\"confirm\"",
    ] {
        assert!(metrics.contains(name), "/metrics shows {name}");
    }
}

#[tokio::test]
async fn a_retried_confirmation_waits_again_even_on_a_connection_that_wrote_nothing_since() {
    let primary = PrivateRedis::start_primary();
    let replica = PrivateRedis::replica_of(primary.port);
    wait_for_replica(&primary).await;
    let (db, db_url) = fresh_database().await;
    let redis = redis(&primary.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 10, 600).await;
    // Two connections, taken in turn: the retry runs on the one the first
    // attempt did not use, which wrote nothing since (on Redis 7.2 and later
    // its WAIT alone would pass at once; the replay's PUBLISH prevents it).
    let api = TestApp::serve_replicated(&primary.url(), &db_url, 1, Duration::from_secs(1)).await;
    let pass = passes(&api, &redis, &scripts, sale, &["b".into()]).await;
    let id = held(&api, sale, "b", &pass[0]).await;

    let pid = replica.pid().unwrap() as i32;
    #[allow(unsafe_code, reason = "std cannot stop and continue a process")]
    unsafe {
        libc::kill(pid, libc::SIGSTOP)
    };
    let first = change(&api, "b", &id, "confirm").await.unwrap();
    let retry = change(&api, "b", &id, "confirm").await.unwrap();
    #[allow(unsafe_code, reason = "std cannot stop and continue a process")]
    unsafe {
        libc::kill(pid, libc::SIGCONT)
    };
    assert_not_replicated(first, "confirmation").await;
    assert_not_replicated(retry, "confirmation").await;

    let res = change(&api, "b", &id, "confirm").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn cancelling_a_confirmed_reservation_waits_for_the_replica_and_a_held_one_does_not() {
    let primary = PrivateRedis::start_primary();
    let mut replica = PrivateRedis::replica_of(primary.port);
    wait_for_replica(&primary).await;
    let (db, db_url) = fresh_database().await;
    let redis = redis(&primary.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 10, 600).await;
    let api = TestApp::serve_replicated(&primary.url(), &db_url, 1, Duration::from_secs(1)).await;
    let users = ["c".to_owned(), "h".to_owned()];
    let pass = passes(&api, &redis, &scripts, sale, &users).await;
    let confirmed = held(&api, sale, "c", &pass[0]).await;
    let res = change(&api, "c", &confirmed, "confirm").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let only_held = held(&api, sale, "h", &pass[1]).await;

    replica.kill();
    let res = change(&api, "h", &only_held, "cancel").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "a hold is not in the record");
    let first = change(&api, "c", &confirmed, "cancel").await.unwrap();
    assert_not_replicated(first, "cancellation").await;
    let retry = change(&api, "c", &confirmed, "cancel").await.unwrap();
    assert_not_replicated(retry, "cancellation").await;

    replica.launch();
    wait_for_replica(&primary).await;
    let res = change(&api, "c", &confirmed, "cancel").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "cancelled");
}

/// What became of one buyer.
#[derive(Debug)]
enum Bought {
    /// Told `200` for this reservation.
    Confirmed(String),
    /// A final answer other than 200 (the hold or the confirmation was lost
    /// with the primary, say): the buyer was not told they have tickets.
    Refused(&'static str, StatusCode),
    /// Still 503 or unreachable after every retry.
    GaveUp(&'static str),
}

/// Retries `send` while the answer is a 503 or a transport error, at most
/// `TRIES` times, half a second apart (a client honouring `Retry-After`).
/// Counts the 503s in `unavailable`.
async fn retrying<F, Fut>(send: F, unavailable: &AtomicUsize) -> Option<reqwest::Response>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<reqwest::Response, reqwest::Error>>,
{
    const TRIES: usize = 80;
    for _ in 0..TRIES {
        match send().await {
            Ok(res) if res.status() != StatusCode::SERVICE_UNAVAILABLE => return Some(res),
            Ok(_) => {
                unavailable.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

async fn buy(
    api: &TestApp,
    sale: SaleId,
    user: &str,
    pass: &str,
    paying: Duration,
    confirm_503s: &AtomicUsize,
    hold_503s: &AtomicUsize,
) -> Bought {
    let Some(res) = retrying(|| hold(api, sale, user, pass), hold_503s).await else {
        return Bought::GaveUp("hold");
    };
    if res.status() != StatusCode::CREATED {
        return Bought::Refused("hold", res.status());
    }
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(paying).await;
    let Some(res) = retrying(|| change(api, user, &id, "confirm"), confirm_503s).await else {
        return Bought::GaveUp("confirm");
    };
    if res.status() != StatusCode::OK {
        return Bought::Refused("confirm", res.status());
    }
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "confirmed");
    Bought::Confirmed(id)
}

/// Waits until the workers have written every stream entry of the sale to
/// Postgres (bounded).
async fn drained(redis: &Pool, scripts: &Scripts, db: &PgPool, sale: SaleId) {
    for _ in 0..300 {
        if let Ok(report) = Reconciler::default().check(redis, scripts, db, sale).await {
            if report.lag_entries == 0 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the workers did not drain the stream into Postgres within 30 s");
}

async fn statuses(db: &PgPool, sale: SaleId) -> HashMap<String, String> {
    sqlx::query_as::<_, (String, String)>("SELECT id, status FROM reservations WHERE sale_id = $1")
        .bind(sale.0)
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_primary_mid_sale_loses_no_confirmation_a_buyer_was_told_of() {
    const BUYERS: usize = 300;
    let mut primary = PrivateRedis::start_primary();
    let replica = PrivateRedis::replica_of(primary.port);
    let sentinels = Sentinels::start(primary.port, 3);
    sentinels.wait_until_watching(1).await;
    let url = sentinels.url();

    let (db, db_url) = fresh_database().await;
    let redis = redis(&url).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 1000, 600).await;
    let api = Arc::new(TestApp::serve_replicated(&url, &db_url, 1, Duration::from_secs(1)).await);
    let users: Vec<String> = (0..BUYERS).map(|i| format!("fo-{i}")).collect();
    let buyers = passes(&api, &redis, &scripts, sale, &users).await;
    // Started once the buyers are admitted: the test's release ticks count
    // the buyers they admit, and the workers' releaser would take some.
    let _workers = Workers::start(&url, &db_url, &[("SINK_INTERVAL_MS", "50")]);

    let done = Arc::new(AtomicUsize::new(0));
    let confirm_503s = Arc::new(AtomicUsize::new(0));
    let hold_503s = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, (user, pass)) in users.into_iter().zip(buyers).enumerate() {
        let (api, done) = (api.clone(), done.clone());
        let (confirm_503s, hold_503s) = (confirm_503s.clone(), hold_503s.clone());
        tasks.push(tokio::spawn(async move {
            // Arrivals spread over three seconds, and up to two seconds
            // between hold and confirm (paying), so the kill lands among
            // holds and confirmations alike.
            tokio::time::sleep(Duration::from_millis((i as u64 % 60) * 50)).await;
            let paying = Duration::from_millis((i as u64 * 7 % 40) * 50);
            let bought = buy(&api, sale, &user, &pass, paying, &confirm_503s, &hold_503s).await;
            done.fetch_add(1, Ordering::Relaxed);
            (user, bought)
        }));
    }

    while done.load(Ordering::Relaxed) < BUYERS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let old = primary.port;
    primary.kill();
    let mut promoted = None;
    for _ in 0..300 {
        promoted = sentinels.primary_port().filter(|&p| p != old);
        if promoted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        promoted,
        Some(replica.port),
        "the sentinels promoted the replica"
    );
    // The old primary comes back as the new one's replica, as a restarted
    // pod does (a few seconds later) after asking the sentinels who the
    // primary is; until then no replica acknowledges and confirmations
    // answer 503.
    tokio::time::sleep(Duration::from_secs(2)).await;
    primary.launch_with(&replica_args(replica.port));

    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    drained(&redis, &scripts, &db, sale).await;

    let recorded = statuses(&db, sale).await;
    let mut told = 0;
    let mut refused: HashMap<String, usize> = HashMap::new();
    for (user, bought) in &outcomes {
        match bought {
            Bought::Confirmed(id) => {
                told += 1;
                assert_eq!(
                    recorded.get(id).map(String::as_str),
                    Some("confirmed"),
                    "{user} was told {id} is confirmed: Postgres must say so"
                );
            }
            Bought::Refused(step, status) => {
                *refused.entry(format!("{step} {status}")).or_default() += 1
            }
            Bought::GaveUp(step) => *refused.entry(format!("{step} gave up")).or_default() += 1,
        }
    }
    eprintln!(
        "failover: {told} of {BUYERS} buyers told confirmed (every one in Postgres); \
         {} confirm and {} hold answers were 503 while the primary was gone; other ends: {refused:?}",
        confirm_503s.load(Ordering::Relaxed),
        hold_503s.load(Ordering::Relaxed),
    );
    assert!(told > 0, "some buyers confirmed");

    // The service now runs on the promoted replica: a new buyer holds and
    // confirms there, with the scripts loaded again where they were missing.
    assert_eq!(sentinels.primary_port(), Some(replica.port));
    // The workers keep writing, so the replica is online, not caught up.
    for _ in 0..200 {
        if replica.replicas_online() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pass = queued_pass(&api, sale, "after-failover").await;
    let unavailable = AtomicUsize::new(0);
    let bought = buy(
        &api,
        sale,
        "after-failover",
        &pass,
        Duration::ZERO,
        &unavailable,
        &unavailable,
    )
    .await;
    let Bought::Confirmed(id) = bought else {
        panic!("a buyer after the failover: {bought:?}");
    };
    let exists = replica.cli(&["SCRIPT", "EXISTS", scripts.confirm.sha()]);
    assert_eq!(
        exists.trim(),
        "1",
        "the confirm script is cached on the new primary"
    );
    drained(&redis, &scripts, &db, sale).await;
    assert_eq!(
        statuses(&db, sale).await.get(&id).map(String::as_str),
        Some("confirmed")
    );
}
