//! The archiver: a closed sale whose holds are gone and whose stream is in
//! Postgres leaves Redis whole, and Postgres answers every read of it; and
//! the organizer's attendee list, from Postgres.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::*;
use flashsale::{ids::SaleId, inventory, keys::SaleKeys, live_sales};
use flashsale_workers::{
    archiver::{self, Step, Wait},
    reconciler::Reconciler,
    sink::Sink,
};
use fred::{
    clients::Pool,
    interfaces::{KeysInterface, SortedSetsInterface},
    types::scan::Scanner,
};
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every key under the sale's hash tag.
async fn keys_of(redis: &Pool, sale: SaleId) -> Vec<String> {
    let mut found = Vec::new();
    let mut scan = redis
        .next()
        .scan(format!("{{sale:{sale}}}*"), Some(1000), None);
    while let Some(mut page) = scan.try_next().await.unwrap() {
        if let Some(keys) = page.take_results() {
            found.extend(keys.into_iter().filter_map(|k| k.into_string()));
        }
    }
    found
}

async fn body(res: reqwest::Response) -> Value {
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.url().to_string());
    res.json().await.unwrap()
}

#[tokio::test]
async fn an_archived_sale_leaves_no_key_in_redis_and_postgres_answers_every_read() {
    let api = Api::spawn().await;
    let sale = api
        .sale_id(json!({"hold_ttl_seconds": 3, "release_rate": 1000, "admit_headroom_percent": 30}))
        .await;
    let path = format!("/v1/sales/{sale}");
    let org = api.organizer("org-1");

    // Alice buys two in A; Carol buys one in B and cancels it; Dave holds
    // one in A and lets it run out. (Names of their own: the machine's
    // Redis is shared, and a buyer's reservations span every live sale.)
    let [alice, carol, dave] = ["alice", "carol", "dave"].map(|n| format!("{n}-{sale}"));
    let res = api.hold(sale, &alice, "A", 2, None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let held: Value = res.json().await.unwrap();
    let alice_id = held["id"].as_str().unwrap().to_owned();
    let res = api
        .post(
            &format!("/v1/reservations/{alice_id}/confirm"),
            Some(&api.buyer(&alice)),
            json!({"payment_ref": "ref 1, \"card\""}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let held: Value = api
        .hold(sale, &carol, "B", 1, None)
        .await
        .json()
        .await
        .unwrap();
    let carol_id = held["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.confirm(&carol_id, &carol).await.status(),
        StatusCode::OK
    );
    assert_eq!(api.cancel(&carol_id, &carol).await.status(), StatusCode::OK);
    assert_eq!(
        api.hold(sale, &dave, "A", 1, None).await.status(),
        StatusCode::CREATED
    );
    let live_stats = body(api.get(&format!("{path}/stats"), Some(&org)).await).await;
    let admitted_total = live_stats["admitted_total"].as_i64().unwrap();
    assert_eq!(admitted_total, 3);

    // Still open: stays.
    assert_eq!(
        archiver::archive(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap(),
        Step::Waiting(Wait::Open)
    );
    let res = api
        .patch(&path, Some(&org), json!({"state": "closed"}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Closed, with Dave's hold still out: stays.
    assert_eq!(
        archiver::archive(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap(),
        Step::Waiting(Wait::Holds)
    );
    // The hold runs out as usual (the expirer's sweep; bounded wait).
    let deadlines = SaleKeys::new(sale).deadlines();
    for _ in 0..100 {
        inventory::expire_due(&api.redis, &api.scripts, sale, 100)
            .await
            .unwrap();
        let left: i64 = api.redis.zcard(&deadlines).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Holds gone, but the stream is not yet in Postgres: stays.
    assert_eq!(
        archiver::archive(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap(),
        Step::Waiting(Wait::Draining)
    );
    assert_eq!(
        api.get(&path, None).await.json::<Value>().await.unwrap()["archived_at"],
        Value::Null
    );
    Sink::new("archiver-test", 100, 30_000)
        .drain(&api.redis, &api.scripts, &api.db, sale)
        .await
        .unwrap();

    // Two archivers at once, as two worker replicas would run.
    let (a, b) = tokio::join!(
        archiver::archive(&api.redis, &api.scripts, &api.db, sale),
        archiver::archive(&api.redis, &api.scripts, &api.db, sale)
    );
    let steps = [a.unwrap(), b.unwrap()];
    assert!(steps.contains(&Step::Archived), "{steps:?}");

    // Nothing of it is left in Redis, and the workers no longer visit it.
    assert_eq!(keys_of(&api.redis, sale).await, Vec::<String>::new());
    let listed = live_sales::contains(&api.redis, sale).await.unwrap();
    assert!(!listed, "still in the workers' list of sales");
    let reports = Reconciler::default()
        .run_once(&api.redis, &api.scripts, &api.db)
        .await
        .unwrap();
    assert!(reports.iter().all(|r| r.sale != Some(sale)));

    // The sale, from Postgres.
    let read = body(api.get(&path, None).await).await;
    assert_eq!(read["state"], "closed");
    assert_eq!(read["waiting"], 0);
    assert!(read["archived_at"].is_string(), "{read}");
    assert_eq!(read["name"], "Test sale");
    assert_eq!(read["hold_ttl_seconds"], 3);
    assert_eq!(read["admit_idle_seconds"], 60);
    assert_eq!(read["admit_headroom_percent"], 30);
    assert_eq!(
        read["zones"],
        json!([
            {"code": "A", "name": "Floor", "capacity": 10, "price_cents": 5000, "available": 8},
            {"code": "B", "name": "Balcony", "capacity": 5, "price_cents": 9000, "available": 5}
        ])
    );
    let stats = body(api.get(&format!("{path}/stats"), Some(&org)).await).await;
    assert_eq!(stats["admitted_total"], admitted_total);
    assert_eq!(stats["waiting"], 0);
    assert_eq!(stats["active"], 0);
    assert_eq!(stats["drift"], 0);
    assert_eq!(
        stats["zones"],
        json!([
            {"code": "A", "capacity": 10, "available": 8, "held": 0, "confirmed": 2, "persisted": 2},
            {"code": "B", "capacity": 5, "available": 5, "held": 0, "confirmed": 0, "persisted": 0}
        ])
    );
    assert_problem(
        api.get(&format!("{path}/stats"), Some(&api.organizer("org-2")))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // The buyers' reservations, from Postgres.
    let mine = body(
        api.get(
            &format!("/v1/reservations/{alice_id}"),
            Some(&api.buyer(&alice)),
        )
        .await,
    )
    .await;
    assert_eq!(mine["status"], "confirmed");
    assert_eq!(mine["quantity"], 2);
    assert_eq!(mine["zone"], "A");
    assert_eq!(mine["sale_id"], sale.to_string());
    assert!(mine["confirmed_at"].is_string());
    let all = body(
        api.get("/v1/me/reservations", Some(&api.buyer(&alice)))
            .await,
    )
    .await;
    assert_eq!(all["reservations"], json!([mine]));
    let carols = body(
        api.get("/v1/me/reservations", Some(&api.buyer(&carol)))
            .await,
    )
    .await;
    assert_eq!(carols["reservations"].as_array().unwrap().len(), 1);
    assert_eq!(carols["reservations"][0]["status"], "cancelled");
    assert!(carols["reservations"][0]["cancelled_at"].is_string());
    // Another buyer's is not theirs to read.
    assert_problem(
        api.get(
            &format!("/v1/reservations/{alice_id}"),
            Some(&api.buyer(&carol)),
        )
        .await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    )
    .await;

    // The attendees, from Postgres: Alice only (Carol cancelled).
    let attendees = body(api.get(&format!("{path}/attendees"), Some(&org)).await).await;
    let list = attendees["attendees"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{attendees}");
    assert_eq!(list[0]["reservation_id"], alice_id.as_str());
    assert_eq!(list[0]["user_id"], alice.as_str());
    assert_eq!(list[0]["zone"], "A");
    assert_eq!(list[0]["quantity"], 2);
    assert_eq!(list[0]["payment_ref"], "ref 1, \"card\"");
    assert_eq!(list[0]["confirmed_at"], mine["confirmed_at"]);

    // It no longer changes, and says so.
    assert_problem(
        api.join(sale, "erin").await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
    assert_problem(
        api.cancel(&alice_id, &alice).await,
        StatusCode::CONFLICT,
        "sale_closed",
    )
    .await;
    assert_problem(
        api.patch(&path, Some(&org), json!({"release_rate": 5}))
            .await,
        StatusCode::CONFLICT,
        "sale_closed",
    )
    .await;
    let again = body(
        api.patch(&path, Some(&org), json!({"state": "closed"}))
            .await,
    )
    .await;
    assert_eq!(again, read);
    let closed = body(api.get("/v1/sales?state=closed", None).await).await;
    assert_eq!(closed["sales"], json!([read]));

    // Archiving again, or a restore, changes nothing and brings nothing back.
    archiver::run_once(&api.redis, &api.scripts, &api.db)
        .await
        .unwrap();
    let restored = flashsale::recovery::restore(
        &api.db,
        &api.redis,
        &api.scripts,
        sale,
        flashsale::recovery::Options::default(),
    )
    .await;
    assert!(
        format!("{:#}", restored.unwrap_err()).contains("archived"),
        "restore refused"
    );
    assert_eq!(keys_of(&api.redis, sale).await, Vec::<String>::new());
    assert_eq!(body(api.get(&path, None).await).await, read);
}

#[tokio::test]
async fn attendees_come_as_csv_when_asked_quoted_as_rfc_4180_says() {
    let api = Api::spawn().await;
    let sale = api.sale_id(json!({})).await;
    let org = api.organizer("org-1");
    let mut ids = Vec::new();
    for (buyer, payment_ref) in [("ann", "plain"), ("ben", "a,b \"c\""), ("cy", "=1+2")] {
        let held: Value = api
            .hold(sale, buyer, "A", 1, None)
            .await
            .json()
            .await
            .unwrap();
        let id = held["id"].as_str().unwrap().to_owned();
        let res = api
            .post(
                &format!("/v1/reservations/{id}/confirm"),
                Some(&api.buyer(buyer)),
                json!({"payment_ref": payment_ref}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        ids.push(id);
    }
    // Not yet in Postgres: not yet on the list.
    let before = body(
        api.get(&format!("/v1/sales/{sale}/attendees"), Some(&org))
            .await,
    )
    .await;
    assert_eq!(before, json!({"attendees": []}));
    Sink::new("attendees-test", 100, 30_000)
        .drain(&api.redis, &api.scripts, &api.db, sale)
        .await
        .unwrap();

    let res = api
        .http
        .get(api.url(&format!("/v1/sales/{sale}/attendees")))
        .bearer_auth(&org)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        res.headers()["content-disposition"],
        format!("attachment; filename=\"attendees-{sale}.csv\"").as_str()
    );
    let csv = res.text().await.unwrap();
    let json = body(
        api.get(&format!("/v1/sales/{sale}/attendees"), Some(&org))
            .await,
    )
    .await;
    let rows = json["attendees"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let mut expected =
        String::from("reservation_id,user_id,zone,quantity,confirmed_at,payment_ref\r\n");
    for r in rows {
        let payment = match r["payment_ref"].as_str().unwrap() {
            "plain" => "plain".to_owned(),
            "a,b \"c\"" => "\"a,b \"\"c\"\"\"".to_owned(),
            "=1+2" => "\"'=1+2\"".to_owned(),
            other => panic!("unexpected payment_ref {other}"),
        };
        expected.push_str(&format!(
            "{},{},A,1,{},{payment}\r\n",
            r["reservation_id"].as_str().unwrap(),
            r["user_id"].as_str().unwrap(),
            r["confirmed_at"].as_str().unwrap(),
        ));
    }
    assert_eq!(csv, expected);
    let mut listed: Vec<&str> = rows
        .iter()
        .map(|r| r["reservation_id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    ids.sort_unstable();
    assert_eq!(listed, ids);
}

/// The real `flashsale-workers` process archives a closed sale on its own
/// (its sink, expirer and archiver loops together), against a Redis of the
/// test's own.
#[tokio::test]
async fn the_workers_process_archives_a_closed_sale() {
    let private = PrivateRedis::start();
    let (_, db_url) = fresh_database().await;
    let api = Api::serve(&private.url(), &db_url).await;
    let sale = api.sale_id(json!({})).await;
    let held: Value = api
        .hold(sale, "ann", "A", 2, None)
        .await
        .json()
        .await
        .unwrap();
    let id = held["id"].as_str().unwrap();
    assert_eq!(api.confirm(id, "ann").await.status(), StatusCode::OK);
    let res = api
        .patch(
            &format!("/v1/sales/{sale}"),
            Some(&api.organizer("org-1")),
            json!({"state": "closed"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let _workers = Workers::start(
        &private.url(),
        &db_url,
        &[
            ("ARCHIVE_INTERVAL_SECONDS", "1"),
            ("SINK_INTERVAL_MS", "50"),
        ],
    );
    let mut archived = false;
    for _ in 0..150 {
        let read: Value = api
            .get(&format!("/v1/sales/{sale}"), None)
            .await
            .json()
            .await
            .unwrap();
        if read["archived_at"].is_string() && keys_of(&api.redis, sale).await.is_empty() {
            archived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(archived, "the sale was not archived within 15 s");
    let members = live_sales::all(&api.redis).await.unwrap();
    assert!(members.is_empty(), "{members:?}");
    let ann = body(
        api.get(&format!("/v1/reservations/{id}"), Some(&api.buyer("ann")))
            .await,
    )
    .await;
    assert_eq!(ann["status"], "confirmed");
    let exists: i64 = api
        .redis
        .exists(SaleKeys::new(sale).stream())
        .await
        .unwrap();
    assert_eq!(exists, 0);
}
