//! Sold seats in Postgres: the sink records each once, with its
//! reservation; no seat is sold twice there; the reconciler checks seats
//! against tickets; a restore rebuilds the seat map; an archived sale's seat
//! map comes from Postgres.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use flashsale::{ids::SaleId, keys::SaleKeys};
use flashsale_workers::{
    archiver::{self, Step},
    reconciler::Reconciler,
    sink::Sink,
};
use fred::interfaces::KeysInterface;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn held(api: &TestApp, sale: SaleId, buyer: &str, seats: &[&str]) -> String {
    let pass = api.pass_for(sale, buyer).await;
    let res = api
        .http
        .post(api.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(api.buyer(buyer))
        .header("x-queue-pass", pass)
        .json(&json!({"zone": "ST", "seats": seats}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn confirmed(api: &TestApp, sale: SaleId, buyer: &str, seats: &[&str]) -> String {
    let id = held(api, sale, buyer, seats).await;
    assert_eq!(api.confirm(&id, buyer).await.status(), StatusCode::OK);
    id
}

/// Postgres's seat rows of the sale: (reservation, seat, status), sorted.
async fn seat_rows(api: &TestApp, sale: SaleId) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT reservation_id, seat, status FROM reservation_seats WHERE sale_id = $1
         ORDER BY seat, status, reservation_id",
    )
    .bind(sale.0)
    .fetch_all(&api.db)
    .await
    .unwrap()
}

async fn statuses(api: &TestApp, sale: SaleId) -> HashMap<String, String> {
    let body: Value = api
        .get(&format!("/v1/sales/{sale}/zones/ST/seats"), None)
        .await
        .json()
        .await
        .unwrap();
    body["seats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] != "free")
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn sold_seats_reach_postgres_once_are_reconciled_and_a_restore_rebuilds_the_seat_map() {
    let api = TestApp::spawn().await;
    let sale: SaleId = api
        .sale_id(json!({"zones": [{"code": "ST", "seating": {"rows": [
            {"row": "A", "seats": 5}, {"row": "B", "seats": 5}]}}]}))
        .await;
    let first = confirmed(&api, sale, "pg-seat-1", &["A-3", "A-2"]).await;
    let cancelled = confirmed(&api, sale, "pg-seat-2", &["B-1"]).await;
    assert_eq!(
        api.cancel(&cancelled, "pg-seat-2").await.status(),
        StatusCode::OK
    );
    let resold = confirmed(&api, sale, "pg-seat-3", &["B-1"]).await;
    held(&api, sale, "pg-seat-4", &["A-5"]).await;

    let zone_report = |r: flashsale_workers::reconciler::SaleReport| {
        r.zones.into_iter().find(|z| z.zone == "ST").unwrap()
    };
    // Before the sink: the seats in flight are lag, not a gap.
    let checked = zone_report(
        Reconciler::default()
            .check(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap(),
    );
    assert_eq!(
        (checked.in_flight, checked.drift, checked.seat_gap),
        (3, 0, 0),
        "{checked:?}"
    );

    let sink = Sink::new("seats-test", 100, 30_000);
    sink.drain(&api.redis, &api.scripts, &api.db, sale)
        .await
        .unwrap();
    // Again: nothing twice.
    sink.drain(&api.redis, &api.scripts, &api.db, sale)
        .await
        .unwrap();
    let s = |r: &str, seat: &str, status: &str| (r.to_owned(), seat.to_owned(), status.to_owned());
    assert_eq!(
        seat_rows(&api, sale).await,
        vec![
            s(&first, "A-2", "confirmed"),
            s(&first, "A-3", "confirmed"),
            s(&cancelled, "B-1", "cancelled"),
            s(&resold, "B-1", "confirmed"),
        ]
    );

    // The reconciler finds seats and tickets in agreement...
    let checked = zone_report(
        Reconciler::default()
            .check(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap(),
    );
    assert_eq!((checked.drift, checked.seat_gap), (0, 0), "{checked:?}");
    // ...and the seats themselves, not only their number: one sold seat
    // moved in the map to another (A-1 sold, B-1 free) is two seats apart.
    let map_key = SaleKeys::new(sale).seat_map();
    let map: String = api.redis.get(&map_key).await.unwrap();
    assert_eq!(map, "|A:.##.*|B:#....|");
    let _: () = api
        .redis
        .set(&map_key, "|A:###.*|B:.....|", None, None, false)
        .await
        .unwrap();
    let checked = zone_report(
        Reconciler::default()
            .check(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap(),
    );
    assert_eq!((checked.drift, checked.seat_gap), (0, 2), "{checked:?}");

    // Postgres itself refuses a seat sold twice, whatever sends it.
    let mut tx = api.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO reservations (id, sale_id, zone_code, user_id, quantity, status, confirmed_at)
         VALUES ('bogus', $1, 'ST', 'bogus', 1, 'confirmed', now())",
    )
    .bind(sale.0)
    .execute(&mut *tx)
    .await
    .unwrap();
    let twice = sqlx::query(
        "INSERT INTO reservation_seats (reservation_id, sale_id, zone_code, seat, status)
         VALUES ('bogus', $1, 'ST', 'A-2', 'confirmed')",
    )
    .bind(sale.0)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    let constraint = twice
        .as_database_error()
        .and_then(|e| e.constraint())
        .map(str::to_owned);
    assert_eq!(constraint.as_deref(), Some("reservation_seats_sold_once"));
    tx.rollback().await.unwrap();

    // A restore from Postgres: the sold seats are sold, the hold is gone
    // (and the seats moved in the map are back where Postgres has them).
    let expected: HashMap<String, String> = [("A-2", "sold"), ("A-3", "sold"), ("B-1", "sold")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    let mut before = expected.clone();
    before.insert("A-5".into(), "held".into());
    before.insert("A-1".into(), "sold".into());
    before.remove("B-1");
    assert_eq!(statuses(&api, sale).await, before);
    api.restore(sale).await;
    assert_eq!(statuses(&api, sale).await, expected);
    assert_eq!(api.stock(sale, "ST").await, (7, 0, 3, 10));
    let r: Value = api
        .get(
            &format!("/v1/reservations/{first}"),
            Some(&api.buyer("pg-seat-1")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["seats"], json!(["A-2", "A-3"]));
    // A restored sold seat cannot be held again; a free one can.
    let pass = api.pass_for(sale, "pg-seat-5").await;
    let res = api
        .http
        .post(api.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(api.buyer("pg-seat-5"))
        .header("x-queue-pass", pass)
        .json(&json!({"zone": "ST", "seats": ["A-2", "A-4"]}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, StatusCode::CONFLICT, "seats_taken").await;
    assert_eq!(body["seats"], json!(["A-2"]));
    let last = held(&api, sale, "pg-seat-5", &["A-4"]).await;

    // Closed, its hold cancelled, recorded and archived: Postgres answers
    // the seat map.
    assert_eq!(
        api.cancel(&last, "pg-seat-5").await.status(),
        StatusCode::OK
    );
    let org = api.organizer("org-1");
    let res = api
        .patch(
            &format!("/v1/sales/{sale}"),
            Some(&org),
            json!({"state": "closed"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    sink.drain(&api.redis, &api.scripts, &api.db, sale)
        .await
        .unwrap();
    let mut archived = false;
    for _ in 0..50 {
        if archiver::archive(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap()
            == Step::Archived
        {
            archived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(archived, "the sale was not archived");
    assert_eq!(statuses(&api, sale).await, expected);
}
