//! The stream sink and the reconciler: every confirmation a client was told
//! of lands in Postgres exactly once, whatever runs twice, dies or lies.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::*;
use flashsale::{inventory, keys::SaleKeys};
use flashsale_workers::{
    reconciler::Reconciler,
    sink::{Sink, Written, GROUP},
};
use fred::{interfaces::StreamsInterface, types::streams::XReadResponse};

fn sink(consumer: &str) -> Sink {
    Sink::new(consumer, 100, 30_000)
}

#[tokio::test]
async fn the_sink_records_confirmations_and_cancellations_once_however_often_it_runs() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    let sold = confirmations(&redis, &scripts, sale, &format!("s-{sale}"), 20, "A", 2).await;
    for (user, id) in &sold[..3] {
        inventory::cancel(redis.next(), &scripts, id, user)
            .await
            .unwrap()
            .expect("cancelled");
    }
    let s = sink("one");
    let first = s.drain(&redis, &scripts, &db, sale).await.unwrap();
    assert_eq!(
        first,
        Written {
            confirmed: 20,
            cancelled: 3,
            dead_lettered: 0,
            retrying: 0
        }
    );
    assert_eq!(persisted(&db, sale).await, (17, 34, 34));
    let cancelled: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM reservations WHERE sale_id = $1 AND status = 'cancelled' AND cancelled_at IS NOT NULL",
    )
    .bind(sale.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(cancelled, 3);
    // The rows carry what docs/API.md (Durable record) promises auditors.
    let (id, zone, user, qty): (String, String, String, i32) =
        sqlx::query_as("SELECT id, zone_code, user_id, quantity FROM reservations WHERE id = $1")
            .bind(sold[5].1.to_string())
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        (id, zone.as_str(), user, qty),
        (sold[5].1.to_string(), "A", sold[5].0.clone(), 2)
    );

    // Again: nothing new, nothing twice.
    assert_eq!(
        s.drain(&redis, &scripts, &db, sale).await.unwrap(),
        Written::default()
    );
    assert_eq!(persisted(&db, sale).await, (17, 34, 34));
    // Acknowledged entries are trimmed away.
    let len: u64 = redis.xlen(SaleKeys::new(sale).stream()).await.unwrap();
    assert_eq!(len, 0);

    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    let a = &report.zones[0];
    assert_eq!(
        (
            a.zone.as_str(),
            a.confirmed,
            a.persisted,
            a.drift,
            a.oversold,
            a.conservation_gap
        ),
        ("A", 34, 34, 0, 0, 0)
    );
    assert_eq!(report.lag_entries, 0);
}

#[tokio::test]
async fn in_flight_entries_read_as_lag_and_a_lost_row_as_drift() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    confirmations(&redis, &scripts, sale, &format!("l-{sale}"), 5, "B", 2).await;
    let reconciler = Reconciler::default();

    let before = reconciler.check(&redis, &scripts, &db, sale).await.unwrap();
    let b = before.zones.iter().find(|z| z.zone == "B").unwrap();
    assert_eq!(
        (b.confirmed, b.in_flight, b.persisted, b.drift),
        (10, 10, 0, 0),
        "in flight is lag, not drift"
    );
    assert_eq!(before.lag_entries, 5);

    sink("one")
        .drain(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    let after = reconciler.check(&redis, &scripts, &db, sale).await.unwrap();
    let b = after.zones.iter().find(|z| z.zone == "B").unwrap();
    assert_eq!((b.in_flight, b.persisted, b.drift), (0, 10, 0));
    assert_eq!(after.lag_entries, 0);

    // A row vanishes from Postgres: drift, Redis ahead by its tickets.
    sqlx::query("DELETE FROM reservations WHERE id = (SELECT id FROM reservations WHERE sale_id = $1 LIMIT 1)")
        .bind(sale.0)
        .execute(&db)
        .await
        .unwrap();
    for _ in 0..3 {
        let r = reconciler.check(&redis, &scripts, &db, sale).await.unwrap();
        let b = r.zones.iter().find(|z| z.zone == "B").unwrap();
        assert_eq!(b.drift, 2);
    }
    // The reconciler reports; it never rewrites stock.
    assert_eq!(
        flashsale::sales::live(&redis, sale)
            .await
            .unwrap()
            .unwrap()
            .stock[1]
            .confirmed,
        10
    );
}

#[tokio::test]
async fn a_bad_entry_is_dead_lettered_and_never_blocks_the_sale() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    let k = SaleKeys::new(sale);
    confirmations(&redis, &scripts, sale, &format!("d1-{sale}"), 3, "A", 1).await;
    // Two entries no confirmation script would write: a malformed one, and
    // one for a zone Postgres does not know (refused by a constraint).
    let sid = sale.to_string();
    let _: String = redis
        .xadd(
            k.stream(),
            false,
            None,
            "*",
            vec![
                ("type", "confirmed"),
                ("id", "x1"),
                ("sale", sid.as_str()),
                ("qty", "lots"),
            ],
        )
        .await
        .unwrap();
    let _: String = redis
        .xadd(
            k.stream(),
            false,
            None,
            "*",
            vec![
                ("type", "confirmed"),
                ("id", "x2"),
                ("sale", sid.as_str()),
                ("zone", "NOPE"),
                ("user", "u"),
                ("qty", "1"),
                ("at_ms", "1700000000000"),
                ("payment_ref", ""),
            ],
        )
        .await
        .unwrap();
    confirmations(&redis, &scripts, sale, &format!("d2-{sale}"), 3, "A", 1).await;

    let written = sink("one")
        .drain(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert_eq!(
        written,
        Written {
            confirmed: 6,
            cancelled: 0,
            dead_lettered: 2,
            retrying: 0
        }
    );
    assert_eq!(persisted(&db, sale).await, (6, 6, 6));
    let dead: u64 = redis.xlen(k.dead_letters()).await.unwrap();
    assert_eq!(dead, 2);
    let pending: fred::types::Value = redis.xpending(k.stream(), GROUP, ()).await.unwrap();
    assert_eq!(
        pending.into_array().first().and_then(|v| v.as_i64()),
        Some(0),
        "nothing left pending"
    );
}

#[tokio::test]
async fn two_sinks_at_once_write_every_entry_exactly_once() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 1000, 600).await;
    confirmations(&redis, &scripts, sale, &format!("t-{sale}"), 300, "A", 3).await;
    let (a, b) = (sink("a"), sink("b"));
    let (wa, wb) = tokio::join!(
        a.drain(&redis, &scripts, &db, sale),
        b.drain(&redis, &scripts, &db, sale)
    );
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    assert_eq!(wa.confirmed + wb.confirmed, 300);
    assert_eq!(persisted(&db, sale).await, (300, 900, 900));
}

#[tokio::test]
async fn entries_left_pending_by_a_dead_consumer_are_claimed() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    let k = SaleKeys::new(sale);
    confirmations(&redis, &scripts, sale, &format!("c-{sale}"), 10, "A", 1).await;
    // A consumer takes the entries and dies before writing them.
    let _: Result<fred::types::Value, _> = redis.xgroup_create(k.stream(), GROUP, "0", true).await;
    let taken: XReadResponse<String, String, String, String> = redis
        .xreadgroup_map(GROUP, "dead", Some(100), None, false, k.stream(), ">")
        .await
        .unwrap();
    assert_eq!(taken[&k.stream()].len(), 10);

    // Not yet stale: a live sink leaves them to their owner.
    assert_eq!(
        sink("alive")
            .drain(&redis, &scripts, &db, sale)
            .await
            .unwrap(),
        Written::default()
    );
    // Stale: claimed and written.
    let claimer = sink("alive").claim_idle_ms(0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let written = claimer.drain(&redis, &scripts, &db, sale).await.unwrap();
    assert_eq!(written.confirmed, 10);
    assert_eq!(persisted(&db, sale).await, (10, 10, 10));
}

#[tokio::test]
async fn the_sink_process_killed_mid_batch_loses_and_duplicates_nothing() {
    let private = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 5000, 600).await;
    let sold = confirmations(&redis, &scripts, sale, "k", 3000, "A", 1).await;
    assert_eq!(sold.len(), 3000);

    let slow = [
        ("SINK_BATCH", "20"),
        ("SINK_INTERVAL_MS", "20"),
        ("SINK_CLAIM_IDLE_MS", "500"),
    ];
    let mut first = Workers::start(&private.url(), &db_url, &slow);
    // Kill it once it has written some, but not all.
    let mut seen = 0;
    for _ in 0..600 {
        seen = persisted(&db, sale).await.0;
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill_9();
    let at_kill = persisted(&db, sale).await.0;
    assert!(
        seen > 0 && at_kill < 3000,
        "killed mid-run ({at_kill} of 3000 written)"
    );

    // A new process (a new consumer) finishes the job, claiming what the
    // dead one left pending.
    let mut second = Workers::start(&private.url(), &db_url, &slow);
    let mut done = false;
    for _ in 0..600 {
        if persisted(&db, sale).await.0 == 3000 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "every confirmation reached Postgres");
    assert_eq!(persisted(&db, sale).await, (3000, 3000, 3000));
    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert!(
        report
            .zones
            .iter()
            .all(|z| z.drift == 0 && z.oversold == 0 && z.conservation_gap == 0),
        "{report:?}"
    );
    assert!(second.terminate().success());
}
