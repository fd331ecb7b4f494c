//! Sales through HTTP: creation, validation, live reads, organizer changes.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use common::{assert_problem, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A queue pass for `buyer`, signed by the service's own key, as if the
/// buyer had been admitted (the queue cannot admit anyone here).
fn signed_pass(app: &TestApp, sale: &str, buyer: &str) -> String {
    let now = flashsale::tokens::unix_now();
    app.passes
        .sign(&flashsale::passes::PassClaims {
            sub: buyer.into(),
            sale: sale.into(),
            iat: now,
            exp: now + 300,
            jti: "t".into(),
        })
        .unwrap()
}

#[tokio::test]
async fn organizer_creates_a_sale_and_anyone_reads_its_live_stock() {
    let app = TestApp::spawn().await;
    let res = app
        .post(
            "/v1/sales",
            Some(&app.organizer("org-1")),
            json!({
                "name": "Summer Tour - Berlin",
                "opens_at": "2026-01-01T10:00:00Z",
                "zones": [{"code": "A", "name": "Floor", "capacity": 5000, "price_cents": 12000}],
                "release_rate": 500, "release_interval_ms": 1000, "max_active": 20000,
                "pass_ttl_seconds": 300, "hold_ttl_seconds": 600, "per_user_limit": 4
            }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/sales/{id}"));
    assert_eq!(created["name"], "Summer Tour - Berlin");
    assert_eq!(created["state"], "open");
    assert_eq!(created["opens_at"], "2026-01-01T10:00:00Z");
    assert_eq!(created["release_rate"], 500);
    assert_eq!(created["max_active"], 20000);
    assert_eq!(created["per_user_limit"], 4);
    assert_eq!(created["waiting"], 0);
    assert_eq!(
        created["zones"],
        json!([{"code": "A", "name": "Floor", "capacity": 5000, "price_cents": 12000, "available": 5000}])
    );

    // Public read, no token, reflects a hold at once.
    let sale = id.parse().unwrap();
    assert_eq!(
        app.hold(sale, "buyer-1", "A", 3, None).await.status(),
        StatusCode::CREATED
    );
    let read: Value = app.get(&location, None).await.json().await.unwrap();
    assert_eq!(read["zones"][0]["available"], 4997);
    assert_eq!(read["id"], created["id"]);

    // Postgres has the definition.
    let (name, capacity): (String, i32) = sqlx::query_as(
        "SELECT s.name, z.capacity FROM sales s JOIN zones z ON z.sale_id = s.id WHERE s.id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((name.as_str(), capacity), ("Summer Tour - Berlin", 5000));
}

#[tokio::test]
async fn only_name_and_zones_are_required_and_the_rest_defaults() {
    let app = TestApp::spawn().await;
    let res = app
        .post(
            "/v1/sales",
            Some(&app.organizer("org-1")),
            json!({"name": "Minimal", "zones": [{"code": "GA", "capacity": 10}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let sale: Value = res.json().await.unwrap();
    assert_eq!(sale["state"], "open");
    assert_eq!(sale["release_rate"], 100);
    assert_eq!(sale["release_interval_ms"], 1000);
    assert_eq!(sale["max_active"], Value::Null);
    assert_eq!(sale["pass_ttl_seconds"], 300);
    assert_eq!(sale["hold_ttl_seconds"], 600);
    assert_eq!(sale["per_user_limit"], 4);
    assert_eq!(sale["zones"][0]["name"], "GA");
    assert_eq!(sale["zones"][0]["price_cents"], 0);
}

#[tokio::test]
async fn a_sale_that_opens_later_is_scheduled_and_refuses_holds() {
    let app = TestApp::spawn().await;
    let sale = app
        .create_sale("org-1", json!({"opens_at": "2099-01-01T00:00:00Z"}))
        .await;
    assert_eq!(sale["state"], "scheduled");
    let id = sale["id"].as_str().unwrap().parse().unwrap();
    // Buyers may queue early, but nobody is admitted before opening.
    assert_eq!(app.join(id, "b").await.status(), StatusCode::ACCEPTED);
    assert_eq!(app.tick(id, 300_000).await.admitted, 0);
    let pass = signed_pass(&app, sale["id"].as_str().unwrap(), "b");
    let body = assert_problem(
        app.hold_with_pass(id, "b", &pass, "A", 1, None).await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("not opened"));
    assert_eq!(app.stock(id, "A").await, (10, 0, 0, 10));
}

#[tokio::test]
async fn a_closed_sale_refuses_holds() {
    let app = TestApp::spawn().await;
    let sale = app
        .create_sale(
            "org-1",
            json!({"opens_at": "2020-01-01T00:00:00Z", "closes_at": "2020-01-02T00:00:00Z"}),
        )
        .await;
    assert_eq!(sale["state"], "closed");
    let id = sale["id"].as_str().unwrap().parse().unwrap();
    assert_problem(
        app.join(id, "b").await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
    let pass = signed_pass(&app, sale["id"].as_str().unwrap(), "b");
    assert_problem(
        app.hold_with_pass(id, "b", &pass, "A", 1, None).await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
}

#[tokio::test]
async fn creating_a_sale_needs_an_organizer_token() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "x", "zones": [{"code": "A", "capacity": 1}]});
    assert_problem(
        app.post("/v1/sales", None, body.clone()).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    assert_problem(
        app.post("/v1/sales", Some(&app.buyer("b")), body).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sales")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn invalid_sales_are_refused_with_the_field_named() {
    let app = TestApp::spawn().await;
    let org = app.organizer("org-1");
    let zone = json!([{"code": "A", "capacity": 10}]);
    let cases = [
        (json!({"name": "", "zones": zone}), "name"),
        (json!({"name": "x", "zones": []}), "zones"),
        (
            json!({"name": "x", "zones": [{"code": "A", "capacity": 0}]}),
            "zones[0].capacity",
        ),
        (
            json!({"name": "x", "zones": [{"code": "A", "capacity": -5}]}),
            "zones[0].capacity",
        ),
        (
            json!({"name": "x", "zones": [{"code": "A:B", "capacity": 5}]}),
            "zones[0].code",
        ),
        (
            json!({"name": "x", "zones": [{"code": "A", "capacity": 5}, {"code": "A", "capacity": 5}]}),
            "zones[1].code",
        ),
        (
            json!({"name": "x", "zones": zone, "release_rate": 0}),
            "release_rate",
        ),
        (
            json!({"name": "x", "zones": zone, "release_interval_ms": 5}),
            "release_interval_ms",
        ),
        (
            json!({"name": "x", "zones": zone, "per_user_limit": 1000}),
            "per_user_limit",
        ),
        (
            json!({"name": "x", "zones": zone, "hold_ttl_seconds": -1}),
            "hold_ttl_seconds",
        ),
        (
            json!({"name": "x", "zones": zone, "opens_at": "2030-01-02T00:00:00Z", "closes_at": "2030-01-01T00:00:00Z"}),
            "closes_at",
        ),
    ];
    for (body, field) in cases {
        let res = app.post("/v1/sales", Some(&org), body.clone()).await;
        let problem =
            assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: detail {} should name {field}",
            problem["detail"]
        );
    }
    // Wrong types and unknown fields are refused with the path in the detail.
    let res = app
        .post(
            "/v1/sales",
            Some(&org),
            json!({"name": "x", "zones": [{"code": "A", "capacity": "ten"}]}),
        )
        .await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("zones[0].capacity"),
        "{problem}"
    );
    let res = app
        .post(
            "/v1/sales",
            Some(&org),
            json!({"name": "x", "zones": zone, "relase_rate": 5}),
        )
        .await;
    let problem = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("relase_rate"),
        "{problem}"
    );

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sales")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0, "no invalid sale was stored");
}

#[tokio::test]
async fn malformed_oversized_and_untyped_bodies_are_problems() {
    let app = TestApp::spawn().await;
    let org = app.organizer("org-1");
    let send = |body: Vec<u8>, ct: Option<&'static str>| {
        let mut req = app
            .http
            .post(app.url("/v1/sales"))
            .bearer_auth(&org)
            .body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    assert_problem(
        send(b"{\"name\": ".to_vec(), Some("application/json"))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert_problem(
        send(b"{}".to_vec(), Some("text/plain")).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    // Past the 1 MiB a sale's definition may take.
    let huge = format!("{{\"name\": \"{}\", \"zones\": []}}", "x".repeat(1_100_000));
    assert_problem(
        send(huge.into_bytes(), Some("application/json"))
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn unknown_sales_are_404_sale_not_found() {
    let app = TestApp::spawn().await;
    for path in [
        format!("/v1/sales/{}", uuid::Uuid::new_v4()),
        "/v1/sales/not-a-uuid".into(),
        "/v1/sales/1%27%20OR%20%271%27%3D%271".into(),
    ] {
        assert_problem(
            app.get(&path, None).await,
            StatusCode::NOT_FOUND,
            "sale_not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn organizer_changes_release_settings_and_each_change_is_recorded() {
    let app = TestApp::spawn().await;
    let sale = app
        .create_sale("org-1", json!({"release_rate": 100, "max_active": 50}))
        .await;
    let path = format!("/v1/sales/{}", sale["id"].as_str().unwrap());
    let org = app.organizer("org-1");
    let patch = |body: Value| {
        app.http
            .patch(app.url(&path))
            .bearer_auth(&org)
            .json(&body)
            .send()
    };

    let res = patch(json!({"release_rate": 250, "paused": true}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["release_rate"], 250);
    assert_eq!(body["paused"], true);
    assert_eq!(body["state"], "paused");
    assert_eq!(body["max_active"], 50);

    let body: Value =
        patch(json!({"max_active": null, "release_interval_ms": 500, "paused": false}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(body["max_active"], Value::Null);
    assert_eq!(body["release_interval_ms"], 500);
    assert_eq!(body["state"], "open");

    // A public read sees the live values.
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["release_rate"], 250);
    assert_eq!(read["release_interval_ms"], 500);

    let changes: Vec<(String, Value, Value)> =
        sqlx::query_as("SELECT actor, before, after FROM sale_changes ORDER BY id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].0, "org-1");
    assert_eq!(changes[0].1["release_rate"], 100);
    assert_eq!(changes[0].2["release_rate"], 250);
    assert_eq!(changes[0].2["paused"], true);
    assert_eq!(changes[1].1["max_active"], 50);
    assert_eq!(changes[1].2["max_active"], Value::Null);

    // Out of range: refused, nothing changes.
    let res = patch(json!({"release_rate": 0})).await.unwrap();
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = patch(json!({"paused": "yes"})).await.unwrap();
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["release_rate"], 250);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sale_changes")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn only_the_sales_own_organizer_may_change_it() {
    let app = TestApp::spawn().await;
    let sale = app.create_sale("org-1", json!({})).await;
    let path = format!("/v1/sales/{}", sale["id"].as_str().unwrap());
    for token in [app.organizer("org-2"), app.buyer("org-1")] {
        let res = app
            .http
            .patch(app.url(&path))
            .bearer_auth(token)
            .json(&json!({"paused": true}))
            .send()
            .await
            .unwrap();
        assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let res = app
        .http
        .patch(app.url(&path))
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["paused"], false);
    let res = app
        .http
        .patch(app.url(&format!("/v1/sales/{}", uuid::Uuid::new_v4())))
        .bearer_auth(app.organizer("org-1"))
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::NOT_FOUND, "sale_not_found").await;
}

/// A sale Redis lost is told apart from an unknown one by asking Postgres;
/// with every buyer of a lost sale polling, the answer is remembered so that
/// Postgres is asked at most once a second per sale.
#[tokio::test]
async fn a_lost_sale_is_looked_up_in_postgres_at_most_once_a_second() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let unknown = flashsale::ids::SaleId::new();
    let known = flashsale::sales::KnownSales::default();
    // Start early in a second, so the checks below fall in the same one.
    let ms = chrono::Utc::now().timestamp_subsec_millis();
    tokio::time::sleep(std::time::Duration::from_millis(u64::from(1_010 - ms))).await;
    let second = chrono::Utc::now().timestamp();
    let answers = futures::future::join_all(
        (0..200).map(|i| known.in_postgres(&app.db, if i % 2 == 0 { sale } else { unknown })),
    )
    .await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), i % 2 == 0);
    }
    // Postgres is gone for this cache: within the same second it answers
    // from memory, and asks again (and fails) only in the next.
    app.db.close().await;
    let again = known.in_postgres(&app.db, sale).await;
    if chrono::Utc::now().timestamp() == second {
        assert!(again.unwrap(), "answered from memory");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert!(
        known.in_postgres(&app.db, sale).await.is_err(),
        "a new second asks Postgres again"
    );
}
