//! The hold expirer, as a step and as the real `flashsale-workers` process.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::*;
use flashsale::{ids::SaleId, sales};
use fred::clients::Pool;

async fn stock(redis: &Pool, sale: SaleId) -> (i64, i64) {
    let live = sales::live(redis, sale).await.unwrap().unwrap();
    (live.stock[0].available, live.stock[0].held)
}

#[tokio::test]
async fn run_once_returns_the_tickets_of_every_passed_hold_exactly_once() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 10, 1).await;
    let users: Vec<String> = (0..3).map(|i| format!("exp-{sale}-{i}")).collect();
    admit(&redis, &scripts, sale, &users).await;
    hold_each(&redis, &scripts, sale, &users, "A", 2).await;
    assert_eq!(stock(&redis, sale).await, (4, 6));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Two expirers at once, as two worker replicas would run.
    let (a, b) = tokio::join!(
        flashsale_workers::expirer::run_once(&redis, &scripts),
        flashsale_workers::expirer::run_once(&redis, &scripts)
    );
    a.unwrap();
    b.unwrap();
    // Returned once, not twice (that would show 16 available).
    assert_eq!(stock(&redis, sale).await, (10, 0));
}

#[tokio::test]
async fn the_workers_process_expires_holds_and_stops_cleanly_on_sigterm() {
    // A Redis of its own: the process works on every sale it finds there.
    let private = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 10, 1).await;
    let users: Vec<String> = (0..2).map(|i| format!("u{i}")).collect();
    admit(&redis, &scripts, sale, &users).await;
    hold_each(&redis, &scripts, sale, &users, "A", 2).await;
    let mut workers = Workers::start(&private.url(), &db_url, &[("EXPIRE_INTERVAL_MS", "100")]);
    // Bounded wait: the holds last one second and the worker sweeps every
    // 100 ms, so this takes about a second.
    let mut returned = false;
    for _ in 0..100 {
        if stock(&redis, sale).await == (10, 0) {
            returned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(returned, "the worker process returned the expired holds");
    let status = workers.terminate();
    assert!(status.success(), "exit status {status}");
}
