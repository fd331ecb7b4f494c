//! The post-run check's queue-order verdict, from the admissions ledger the
//! releaser keeps.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::collections::HashSet;

use chrono::Utc;
use common::*;
use flashsale::keys::SaleKeys;
use fred::interfaces::ListInterface;

#[tokio::test]
async fn the_check_proves_queue_order_and_catches_a_tick_out_of_order() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    // About ten buyers a tick, so the line takes several.
    let sale = create_sale(
        &db,
        &redis,
        &scripts,
        serde_json::json!({
            "name": "queue order",
            "zones": [{"code": "A", "capacity": 1000}],
            "release_rate": 100,
            "release_interval_ms": 100
        }),
    )
    .await;
    let buyers: Vec<String> = (0..35).map(|i| format!("order-{i}")).collect();
    join_all(&redis, &scripts, sale, &buyers[..30]).await;
    release_until(&redis, &scripts, sale, 30).await;
    join_all(&redis, &scripts, sale, &buyers[30..]).await;

    let none = HashSet::new();
    let v = flashsale_workers::check::run(&redis, &scripts, &db, sale, &none)
        .await
        .unwrap();
    assert_eq!(v.queue.admitted, 30);
    assert!(v.queue.ticks >= 3, "several ticks: {}", v.queue.ticks);
    assert_eq!(
        (v.queue.out_of_order_ticks, v.queue.overtaken_waiting),
        (0, 0)
    );
    assert!(v.broken.is_empty(), "{:?}", v.broken);

    // A tick that admitted the first and second arrivals' places again,
    // after the 30th: out of order.
    let k = SaleKeys::new(sale);
    let now = Utc::now().timestamp_millis();
    let place = |arrival: f64| flashsale::queue::AFTER_OPENING + arrival;
    let _: i64 = redis
        .rpush(
            k.admissions(),
            format!("{now}:{}:{}:2", place(1.0), place(2.0)),
        )
        .await
        .unwrap();
    let v = flashsale_workers::check::run(&redis, &scripts, &db, sale, &none)
        .await
        .unwrap();
    assert_eq!(v.queue.out_of_order_ticks, 1);
    assert_eq!(v.broken.len(), 1, "{:?}", v.broken);

    // A tick that admitted the 40th arrival while the 31st to 35th still
    // wait: they were passed over.
    let _: i64 = redis
        .rpush(
            k.admissions(),
            format!("{now}:{}:{}:1", place(40.0), place(40.0)),
        )
        .await
        .unwrap();
    let v = flashsale_workers::check::run(&redis, &scripts, &db, sale, &none)
        .await
        .unwrap();
    assert_eq!(v.queue.overtaken_waiting, 5);
    assert_eq!(v.broken.len(), 2, "{:?}", v.broken);
}
