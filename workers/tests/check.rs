//! The post-run check's queue-order verdict, from the admissions ledger the
//! releaser keeps.

mod common;

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use common::*;
use flashsale::{
    ids::SaleId,
    keys::SaleKeys,
    queue,
    sales::{self, NewSale},
    scripts::Scripts,
};
use fred::{clients::Pool, interfaces::ListInterface};

/// A sale that admits about ten buyers a tick, so a line takes several.
async fn slow_sale(db: &sqlx::PgPool, redis: &Pool, scripts: &Scripts) -> SaleId {
    let new: NewSale = serde_json::from_value(serde_json::json!({
        "name": "queue order",
        "zones": [{"code": "A", "capacity": 1000}],
        "release_rate": 100,
        "release_interval_ms": 100
    }))
    .unwrap();
    let (mut def, release) = new.validate("org", Utc::now()).unwrap();
    sales::create(db, redis, scripts, &mut def, &release)
        .await
        .unwrap();
    def.id
}

async fn join(redis: &Pool, scripts: &Scripts, sale: SaleId, users: impl Iterator<Item = String>) {
    for u in users {
        queue::join(redis, scripts, sale, &u, b"seed")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_check_proves_queue_order_and_catches_a_tick_out_of_order() {
    let (db, _) = fresh_database().await;
    let redis = redis(&shared_redis_url()).await;
    let scripts = scripts();
    let sale = slow_sale(&db, &redis, &scripts).await;
    join(
        &redis,
        &scripts,
        sale,
        (0..30).map(|i| format!("order-{i}")),
    )
    .await;
    let mut admitted = 0;
    while admitted < 30 {
        match queue::release_tick(&redis, &scripts, sale, 300_000, 10_000)
            .await
            .unwrap()
        {
            Some(t) => admitted += t.admitted,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    join(
        &redis,
        &scripts,
        sale,
        (30..35).map(|i| format!("order-{i}")),
    )
    .await;

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

    // A tick that admitted places 1 and 2 again, after 30: out of order.
    let k = SaleKeys::new(sale);
    let now = Utc::now().timestamp_millis();
    let _: i64 = redis
        .rpush(k.admissions(), format!("{now}:1:2:2"))
        .await
        .unwrap();
    let v = flashsale_workers::check::run(&redis, &scripts, &db, sale, &none)
        .await
        .unwrap();
    assert_eq!(v.queue.out_of_order_ticks, 1);
    assert_eq!(v.broken.len(), 1, "{:?}", v.broken);

    // A tick that admitted place 40 while 31..35 still wait: they were
    // passed over.
    let _: i64 = redis
        .rpush(k.admissions(), format!("{now}:40:40:1"))
        .await
        .unwrap();
    let v = flashsale_workers::check::run(&redis, &scripts, &db, sale, &none)
        .await
        .unwrap();
    assert_eq!(v.queue.overtaken_waiting, 5);
    assert_eq!(v.broken.len(), 2, "{:?}", v.broken);
}
