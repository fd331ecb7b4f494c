//! Invariants under load: hundreds of concurrent buyers against a few dozen
//! tickets, with cancels, expiries and retries mixed in, and Redis's script
//! cache flushed while they run.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

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

/// The two tests here each load the machine fully; they take turns so that
/// neither measures the other's load (both would answer 503 under it).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LIMIT: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_buyers_never_oversell_two_zones_with_cancels_and_expiries_mixed_in() {
    let _turn = HEAVY.lock().await;
    let app = Arc::new(TestApp::spawn().await);
    let caps = [("A", 30i64), ("B", 12i64)];
    // One-second passes and holds: admission cycles through the crowd, and
    // buyers who walk away give their tickets back while others still buy.
    let sale = app
        .sale_id(json!({
            "zones": [{"code": "A", "capacity": caps[0].1}, {"code": "B", "capacity": caps[1].1}],
            "per_user_limit": LIMIT,
            "hold_ttl_seconds": 1,
            "pass_ttl_seconds": 1,
            "release_rate": 200
        }))
        .await;
    let run = uuid::Uuid::new_v4().simple().to_string();

    // The releaser and the sweeper run all along, as the workers would.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                flashsale::queue::release_tick(&app.redis, &app.scripts, sale, 300_000, 5000)
                    .await
                    .unwrap();
                flashsale::inventory::expire_due(&app.redis, &app.scripts, sale, 100)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut tasks = Vec::new();
    for i in 0..BUYERS {
        let app = app.clone();
        let buyer = format!("buyer-{run}-{i}");
        tasks.push(tokio::spawn(async move {
            one_buyer(&app, sale, &buyer, i).await
        }));
    }
    let mut confirmed_by_client: Vec<(String, String, i64)> = Vec::new();
    let mut sold_out_told = 0;
    for t in tasks {
        let (confirmed, told_sold_out) = t.await.unwrap();
        confirmed_by_client.extend(confirmed);
        sold_out_told += usize::from(told_sold_out);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    background.await.unwrap();

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
    assert_eq!(
        confirmed_total,
        caps.iter().map(|c| c.1).sum::<i64>(),
        "the sale sold out"
    );
    assert!(
        sold_out_told > 0,
        "waiting buyers were told the sale sold out"
    );

    // Nobody above the per-user limit.
    let mut per_user: HashMap<&str, i64> = HashMap::new();
    for (user, _, q) in &confirmed_by_client {
        *per_user.entry(user).or_default() += q;
    }
    assert!(per_user.values().all(|q| *q <= LIMIT), "{per_user:?}");
    for i in 0..BUYERS {
        let user = format!("buyer-{run}-{i}");
        let counted: Option<i64> = app
            .redis
            .hget(
                SaleKeys::new(sale).buyer(&user),
                flashsale::keys::BUYER_TICKETS,
            )
            .await
            .unwrap();
        assert_eq!(
            counted.unwrap_or(0),
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

/// One buyer's journey: join the queue and poll until admitted (or told the
/// sale is sold out); hold with an idempotency key and retry it (same
/// answer); then confirm, cancel, or walk away and let the hold expire.
/// Returns what the client was told is confirmed (user, zone, quantity) and
/// whether it was told `sold_out` by the queue.
async fn one_buyer(
    app: &TestApp,
    sale: SaleId,
    buyer: &str,
    i: usize,
) -> (Vec<(String, String, i64)>, bool) {
    let zone = if i.is_multiple_of(3) { "B" } else { "A" };
    let qty = (i % 3) as i64 + 1;
    assert_eq!(app.join(sale, buyer).await.status(), StatusCode::ACCEPTED);
    let mut last_position = u64::MAX;
    let pass = loop {
        let status: Value = app.poll(sale, buyer).await.json().await.unwrap();
        match status["state"].as_str().unwrap() {
            "admitted" => break status["pass"].as_str().unwrap().to_owned(),
            "sold_out" => return (vec![], true),
            // The one-second pass lapsed before this buyer polled: queue again.
            "expired" => {
                app.join(sale, buyer).await;
                // A new place, at the back: position counts anew from there.
                last_position = u64::MAX;
            }
            // Every ticket held: waitlisted, in the same line.
            "waiting" | "waitlisted" => {
                let position = status["position"].as_u64().unwrap();
                assert!(position <= last_position, "{buyer} moved back in the queue");
                last_position = position;
            }
            other => panic!("unexpected queue state {other}"),
        }
        // A browser polls every few seconds; a quarter second keeps the
        // test short without flooding a debug build.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut key = format!("k-{i}");
    let mut qty = qty;
    let mut res = app
        .hold_with_pass(sale, buyer, &pass, zone, qty, Some(&key))
        .await;
    if res.status() == StatusCode::CONFLICT && qty > 1 {
        // Fewer left than wanted: take one, as a real buyer would.
        let body: Value = res.json().await.unwrap();
        assert!(
            ["sold_out", "limit_exceeded"].contains(&body["code"].as_str().unwrap()),
            "{body}"
        );
        (key, qty) = (format!("k-{i}-one"), 1);
        res = app
            .hold_with_pass(sale, buyer, &pass, zone, qty, Some(&key))
            .await;
    }
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    if status != StatusCode::CREATED {
        let code = body["code"].as_str().unwrap();
        assert!(
            ["sold_out", "limit_exceeded", "pass_expired", "pass_invalid"].contains(&code),
            "{body}"
        );
        return (vec![], false);
    }
    let retry = app
        .hold_with_pass(sale, buyer, &pass, zone, qty, Some(&key))
        .await;
    if retry.status() == StatusCode::CREATED {
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        let retry: Value = retry.json().await.unwrap();
        assert_eq!(
            retry["id"], body["id"],
            "an idempotent retry answers the same reservation"
        );
    } else {
        // Only the one-second pass may have run out between the two calls.
        assert_eq!(retry.status(), StatusCode::FORBIDDEN);
    }

    let id = body["id"].as_str().unwrap();
    let confirmed = match i % 4 {
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
    };
    (confirmed, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushing_redis_script_cache_mid_run_is_invisible_to_clients() {
    let _turn = HEAVY.lock().await;
    let app = Arc::new(TestApp::spawn().await);
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 100000}], "per_user_limit": 1}))
        .await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let buyers: Vec<String> = (0..400).map(|i| format!("flush-{run}-{i}")).collect();
    app.admit_all(sale, &buyers).await;
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
    app.admit_all(sale, &[format!("flush-{run}-late")]).await;
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
