//! Invariants under load: hundreds of concurrent buyers against a few dozen
//! tickets, with cancels, expiries and retries mixed in, and Redis's script
//! cache flushed while they run.

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use common::TestApp;
use flashsale::{ids::SaleId, keys::SaleKeys};
use fred::{
    interfaces::{HashesInterface, LuaInterface, StreamsInterface},
    types::streams::XReadValue,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

const BUYERS: usize = 300;
const LIMIT: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_buyers_never_oversell_two_zones_with_cancels_and_expiries_mixed_in() {
    let app = Arc::new(TestApp::spawn().await);
    let caps = [("A", 30i64), ("B", 12i64)];
    let sale = app
        .sale_id(json!({
            "zones": [{"code": "A", "capacity": caps[0].1}, {"code": "B", "capacity": caps[1].1}],
            "per_user_limit": LIMIT,
            "hold_ttl_seconds": 1
        }))
        .await;
    let run = uuid::Uuid::new_v4().simple().to_string();

    // The sweeper runs all along, as the worker would.
    let sweeping = {
        let app = app.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                flashsale::inventory::expire_due(&app.redis, &app.scripts, sale, 100)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut tasks = Vec::new();
    for i in 0..BUYERS {
        let app = app.clone();
        let buyer = format!("buyer-{run}-{}", i % 200); // some buyers come twice
        tasks.push(tokio::spawn(async move {
            one_buyer(&app, sale, &buyer, i).await
        }));
    }
    let mut confirmed_by_client: Vec<(String, String, i64)> = Vec::new();
    for t in tasks {
        confirmed_by_client.extend(t.await.unwrap());
    }
    sweeping.await.unwrap();

    // Let every remaining hold pass its deadline, then sweep.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    flashsale::inventory::expire_due(&app.redis, &app.scripts, sale, 10_000)
        .await
        .unwrap();

    let mut confirmed_total = 0;
    for (zone, cap) in caps {
        let (available, held, confirmed, capacity) = app.stock(sale, zone).await;
        assert_eq!(capacity, cap);
        assert_eq!(
            available + held + confirmed,
            capacity,
            "conservation in zone {zone}"
        );
        assert!(confirmed <= capacity, "zone {zone} oversold");
        assert_eq!(held, 0, "every hold was confirmed, cancelled or expired");
        assert!(available >= 0);
        let told: i64 = confirmed_by_client
            .iter()
            .filter(|(_, z, _)| z == zone)
            .map(|(_, _, q)| q)
            .sum();
        assert_eq!(
            confirmed, told,
            "zone {zone}: Redis's confirmed equals what clients were told"
        );
        confirmed_total += confirmed;
    }
    assert!(confirmed_total > 0, "the test sold something");

    // Nobody above the per-user limit.
    let mut per_user: HashMap<&str, i64> = HashMap::new();
    for (user, _, q) in &confirmed_by_client {
        *per_user.entry(user).or_default() += q;
    }
    assert!(per_user.values().all(|q| *q <= LIMIT), "{per_user:?}");
    let counted: HashMap<String, i64> = app
        .redis
        .hgetall(SaleKeys::new(sale).users())
        .await
        .unwrap();
    for (user, q) in &counted {
        assert_eq!(
            *q,
            per_user.get(user.as_str()).copied().unwrap_or(0),
            "limit counter of {user}"
        );
    }

    // The outbox holds each confirmation exactly once.
    let entries: Vec<XReadValue<String, String, String>> = app
        .redis
        .xrange(SaleKeys::new(sale).stream(), "-", "+", None)
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut stream_total = 0;
    for (_, fields) in &entries {
        assert_eq!(fields["type"], "confirmed");
        assert!(
            seen.insert(fields["id"].clone()),
            "duplicate stream entry for {}",
            fields["id"]
        );
        stream_total += fields["qty"].parse::<i64>().unwrap();
    }
    assert_eq!(stream_total, confirmed_total);
}

/// One buyer's journey: hold with an idempotency key, retry it (same answer),
/// then confirm, cancel, or walk away and let the hold expire. Returns what
/// the client was told is confirmed (user, zone, quantity).
async fn one_buyer(
    app: &TestApp,
    sale: SaleId,
    buyer: &str,
    i: usize,
) -> Vec<(String, String, i64)> {
    let zone = if i.is_multiple_of(3) { "B" } else { "A" };
    let qty = (i % 3) as i64 + 1;
    let key = format!("k-{i}");
    let res = app.hold(sale, buyer, zone, qty, Some(&key)).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    if status != StatusCode::CREATED {
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            ["sold_out", "limit_exceeded"].contains(&body["code"].as_str().unwrap()),
            "{body}"
        );
        return vec![];
    }
    let retry = app.hold(sale, buyer, zone, qty, Some(&key)).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(
        retry["id"], body["id"],
        "an idempotent retry answers the same reservation"
    );

    let id = body["id"].as_str().unwrap();
    match i % 4 {
        0 | 1 => {
            let res = app.confirm(id, buyer).await;
            match res.status() {
                StatusCode::OK => vec![(buyer.to_owned(), zone.to_owned(), qty)],
                // The one-second hold may pass its deadline under load.
                StatusCode::GONE => vec![],
                other => panic!("confirm answered {other}"),
            }
        }
        2 => {
            let res = app.cancel(id, buyer).await;
            assert!([StatusCode::OK, StatusCode::GONE].contains(&res.status()));
            vec![]
        }
        _ => vec![], // walks away: the hold expires
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushing_redis_script_cache_mid_run_is_invisible_to_clients() {
    let app = Arc::new(TestApp::spawn().await);
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 100000}], "per_user_limit": 1}))
        .await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let a = app.clone();
        let buyer = format!("flush-{run}-{i}");
        tasks.push(tokio::spawn(async move {
            let res = a.hold(sale, &buyer, "A", 1, None).await;
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            assert_eq!(status, StatusCode::CREATED, "hold {i}: {body}");
            let res = a.confirm(body["id"].as_str().unwrap(), &buyer).await;
            assert_eq!(res.status(), StatusCode::OK, "confirm {i}");
        }));
        if i % 100 == 50 {
            // Every script vanishes from Redis's cache while requests run.
            let _: () = app.redis.script_flush(false).await.unwrap();
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _: () = app.redis.script_flush(false).await.unwrap();
    assert_eq!(
        app.hold(sale, &format!("flush-{run}-late"), "A", 1, None)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(app.stock(sale, "A").await, (100000 - 401, 1, 400, 100000));
    // The flushes really hit calls in flight: scripts were reloaded.
    let metrics = flashsale::telemetry::metrics().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("flashsale_script_reloads_total") && !l.ends_with(" 0")),
        "no script was reloaded"
    );
}
