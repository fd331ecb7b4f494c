//! Sales and buyers made straight through the domain modules (as the API
//! would make them), for tests of the workers and of the stores.

use std::time::Duration;

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

/// A sale opening now with zones A and B of `capacity` each, that admits
/// up to 10,000 buyers a tick.
pub async fn sale(
    db: &PgPool,
    redis: &Pool,
    scripts: &Scripts,
    capacity: u32,
    hold_ttl: u32,
) -> SaleId {
    create_sale(
        db,
        redis,
        scripts,
        serde_json::json!({
            "name": "workers test",
            "zones": [{"code": "A", "capacity": capacity}, {"code": "B", "capacity": capacity}],
            "hold_ttl_seconds": hold_ttl,
            "per_user_limit": 10,
            "release_rate": 100000,
            "release_interval_ms": 100
        }),
    )
    .await
}

/// Creates the sale `body` describes (as `POST /v1/sales` would).
pub async fn create_sale(
    db: &PgPool,
    redis: &Pool,
    scripts: &Scripts,
    body: serde_json::Value,
) -> SaleId {
    let new: NewSale = serde_json::from_value(body).unwrap();
    let (mut def, release) = new.validate("org", Utc::now()).unwrap();
    sales::create(db, redis, scripts, &mut def, &release)
        .await
        .unwrap();
    def.id
}

/// Queues `users` and lets them all through the queue.
pub async fn admit(redis: &Pool, scripts: &Scripts, sale: SaleId, users: &[String]) {
    join_all(redis, scripts, sale, users).await;
    release_until(redis, scripts, sale, users.len() as u64).await;
}

/// Puts `users` in the sale's queue, in order.
pub async fn join_all(redis: &Pool, scripts: &Scripts, sale: SaleId, users: &[String]) {
    for u in users {
        queue::join(redis, scripts, sale, u, b"seed").await.unwrap();
    }
}

/// Runs release ticks until `count` buyers have been admitted.
pub async fn release_until(redis: &Pool, scripts: &Scripts, sale: SaleId, count: u64) {
    let mut admitted = 0;
    while admitted < count {
        match queue::release_tick(redis, scripts, sale, 300_000, 10_000)
            .await
            .unwrap()
        {
            Some(t) => admitted += t.admitted,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Holds `qty` in `zone` for each user; returns the reservation ids.
pub async fn hold_each(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    users: &[String],
    zone: &str,
    qty: u32,
) -> Vec<ReservationId> {
    let mut ids = Vec::new();
    for u in users {
        let id = ReservationId::random(sale);
        let req = HoldRequest {
            sale,
            user: u,
            zone,
            quantity: qty,
            id: id.clone(),
            fingerprint: None,
            pick: flashsale::inventory::Pick::Any,
        };
        inventory::hold(redis, scripts, req)
            .await
            .unwrap()
            .expect("hold placed");
        ids.push(id);
    }
    ids
}

/// `n` buyers each confirm `qty` tickets in `zone`; returns (user, id).
pub async fn confirmations(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    prefix: &str,
    n: usize,
    zone: &str,
    qty: u32,
) -> Vec<(String, ReservationId)> {
    let users: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    admit(redis, scripts, sale, &users).await;
    let ids = hold_each(redis, scripts, sale, &users, zone, qty).await;
    for (u, id) in users.iter().zip(&ids) {
        inventory::confirm(redis.next(), scripts, id, u, "")
            .await
            .unwrap()
            .expect("confirmed");
    }
    users.into_iter().zip(ids).collect()
}

/// Confirmed rows and tickets in Postgres for a sale, and the zones' `sold`.
pub async fn persisted(db: &PgPool, sale: SaleId) -> (i64, i64, i64) {
    let (rows, tickets): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(quantity), 0)::bigint FROM reservations WHERE sale_id = $1 AND status = 'confirmed'",
    )
    .bind(sale.0)
    .fetch_one(db)
    .await
    .unwrap();
    let sold: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(sold), 0)::bigint FROM zones WHERE sale_id = $1")
            .bind(sale.0)
            .fetch_one(db)
            .await
            .unwrap();
    (rows, tickets, sold)
}

/// Queues `users` and waits until each is admitted, with or without a
/// releaser running elsewhere (a `Workers` process): ticks are run here too,
/// and the script decides which are due. Joins refused while the sale is
/// frozen are tried again. Bounded: panics after 30 s.
pub async fn admit_alongside_workers(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    users: &[String],
) {
    use fred::interfaces::SortedSetsInterface;
    let admitted = flashsale::keys::SaleKeys::new(sale).admitted();
    let mut joined = vec![false; users.len()];
    for _ in 0..600 {
        for (u, j) in users.iter().zip(joined.iter_mut()) {
            if !*j {
                *j = queue::join(redis, scripts, sale, u, b"seed").await.is_ok();
            }
        }
        let _ = queue::release_tick(redis, scripts, sale, 300_000, 10_000).await;
        // One score per buyer, nil for one not (yet) admitted.
        let scores: Option<fred::types::Value> =
            redis.zmscore(&admitted, users.to_vec()).await.ok();
        let all_in = scores.is_some_and(|v| {
            let v = v.into_array();
            v.len() == users.len() && v.iter().all(|s| !s.is_null())
        });
        if joined.iter().all(|j| *j) && all_in {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("buyers were not admitted within 30 s");
}
