//! The hold expirer, as a step and as the real `flashsale-workers` process.

use std::{process::Stdio, sync::Arc, time::Duration};

use chrono::Utc;
use flashsale::{
    ids::{ReservationId, SaleId},
    inventory::{self, HoldRequest},
    queue,
    sales::{self, NewSale},
    scripts::Scripts,
};
use fred::clients::Pool;
use sqlx::PgPool;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn stores() -> (PgPool, Pool, Arc<Scripts>) {
    let base = env(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/flashsale",
    );
    let admin = PgPool::connect(&base).await.unwrap();
    let name = format!("fs_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let db = PgPool::connect(&format!("{}/{name}", &base[..base.rfind('/').unwrap()]))
        .await
        .unwrap();
    flashsale::db::migrate(&db).await.unwrap();
    let redis = flashsale::redis::connect(
        &env("REDIS_URL", "redis://127.0.0.1:6379"),
        1,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    (db, redis, Arc::new(Scripts::new()))
}

/// A sale with one zone of 10 and one-second holds, and `holds` holds of 2.
async fn sale_with_holds(db: &PgPool, redis: &Pool, scripts: &Scripts, holds: usize) -> SaleId {
    let new: NewSale = serde_json::from_value(serde_json::json!({
        "name": "expiry", "zones": [{"code": "A", "capacity": 10}], "hold_ttl_seconds": 1
    }))
    .unwrap();
    let (mut def, release) = new.validate("org", Utc::now()).unwrap();
    sales::create(db, redis, scripts, &mut def, &release)
        .await
        .unwrap();
    // Holds need admitted buyers: queue them and run one release tick.
    for i in 0..holds {
        queue::join(redis, scripts, def.id, &format!("u{i}"), b"seed")
            .await
            .unwrap();
    }
    let tick = queue::release_tick(redis, scripts, def.id, 300_000, 100)
        .await
        .unwrap()
        .expect("the first tick of a sale is due");
    assert_eq!(tick.admitted, holds as u64);
    for i in 0..holds {
        let user = format!("u{i}");
        let outcome = inventory::hold(
            redis,
            scripts,
            HoldRequest {
                sale: def.id,
                user: &user,
                zone: "A",
                quantity: 2,
                id: ReservationId::random(def.id),
                fingerprint: None,
            },
        )
        .await
        .unwrap();
        assert!(outcome.is_ok());
    }
    def.id
}

async fn available(redis: &Pool, sale: SaleId) -> (i64, i64) {
    let live = sales::live(redis, sale).await.unwrap().unwrap();
    (live.stock[0].available, live.stock[0].held)
}

#[tokio::test]
async fn run_once_returns_the_tickets_of_every_passed_hold_exactly_once() {
    let (db, redis, scripts) = stores().await;
    let sale = sale_with_holds(&db, &redis, &scripts, 3).await;
    assert_eq!(available(&redis, sale).await, (4, 6));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Two expirers at once, as two worker replicas would run.
    let (a, b) = tokio::join!(
        flashsale_workers::expirer::run_once(&redis, &scripts),
        flashsale_workers::expirer::run_once(&redis, &scripts)
    );
    a.unwrap();
    b.unwrap();
    // Returned once, not twice (that would show 16 available). Another
    // sweeper (the sibling test's worker process) may have done the work;
    // the stock must come out the same whoever did.
    assert_eq!(available(&redis, sale).await, (10, 0));
}

#[tokio::test]
async fn the_workers_process_expires_holds_and_stops_cleanly_on_sigterm() {
    let (db, redis, scripts) = stores().await;
    let sale = sale_with_holds(&db, &redis, &scripts, 2).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale-workers"))
        .env("EXPIRE_INTERVAL_MS", "100")
        .env("WORKERS_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start flashsale-workers");
    // Bounded wait: the holds last one second and the worker sweeps every
    // 100 ms, so this takes about a second.
    let mut returned = false;
    for _ in 0..100 {
        if available(&redis, sale).await == (10, 0) {
            returned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(returned, "the worker process returned the expired holds");
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("workers exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
