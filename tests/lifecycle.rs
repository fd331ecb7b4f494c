//! The life of a sale through HTTP: listing, closing, the settings that
//! change live, and the organizer's audit log. (Archiving, which the workers
//! do, and the attendee list, which the workers' sink fills, are in
//! `workers/tests/archiver.rs`.)

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use common::{assert_problem, TestApp};
use flashsale::{ids::SaleId, keys::SaleKeys};
use fred::interfaces::HashesInterface;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn id_of(sale: &Value) -> SaleId {
    sale["id"].as_str().unwrap().parse().unwrap()
}

/// Every page of a listing, following `next_cursor` to the end; the ids in
/// the order given. Bounded: a listing that never ends fails.
async fn all_pages(app: &TestApp, path: &str, token: Option<&str>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}cursor={c}"),
            None => path.to_owned(),
        };
        let res = app.get(&url, token).await;
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let page: Value = res.json().await.unwrap();
        for s in page["sales"].as_array().unwrap() {
            ids.push(s["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
    panic!("the listing did not end within 50 pages");
}

/// The sales' ids newest first, as the listing orders them: by creation
/// time, then id.
fn newest_first(sales: &[&Value]) -> Vec<String> {
    let mut sorted: Vec<(chrono::DateTime<chrono::Utc>, String)> = sales
        .iter()
        .map(|s| {
            (
                s["created_at"].as_str().unwrap().parse().unwrap(),
                s["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Uuids in lower-case hex compare as text the way Postgres compares
    // them (byte by byte).
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn sales_are_listed_newest_first_a_page_at_a_time_and_filtered_by_state() {
    let app = TestApp::spawn().await;
    let later = json!({"opens_at": "2099-01-01T00:00:00Z"});
    let ended = json!({"opens_at": "2020-01-01T00:00:00Z", "closes_at": "2020-01-02T00:00:00Z"});
    let scheduled = [
        app.create_sale("org-1", later.clone()).await,
        app.create_sale("org-1", later).await,
    ];
    let open = [
        app.create_sale("org-1", json!({})).await,
        app.create_sale("org-1", json!({})).await,
    ];
    let closed = app.create_sale("org-1", ended).await;
    let theirs = app.create_sale("org-2", json!({})).await;
    let everyone: Vec<&Value> = scheduled
        .iter()
        .chain(&open)
        .chain([&closed, &theirs])
        .collect();

    // Pages of two: every sale once, newest first, then no cursor.
    let listed = all_pages(&app, "/v1/sales?limit=2", None).await;
    assert_eq!(listed, newest_first(&everyone));
    let first: Value = app
        .get("/v1/sales?limit=2", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["sales"].as_array().unwrap().len(), 2);
    // A listed sale reads as `GET /v1/sales/{id}` reads it.
    let newest = &first["sales"][0];
    let alone: Value = app
        .get(
            &format!("/v1/sales/{}", newest["id"].as_str().unwrap()),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(newest, &alone);
    // The default page holds them all.
    let whole: Value = app.get("/v1/sales", None).await.json().await.unwrap();
    assert_eq!(whole["sales"].as_array().unwrap().len(), 6);
    assert_eq!(whole["next_cursor"], Value::Null);

    // By state.
    let by_state = |state: &'static str| {
        let app = &app;
        async move { all_pages(app, &format!("/v1/sales?state={state}&limit=1"), None).await }
    };
    assert_eq!(
        by_state("scheduled").await,
        newest_first(&scheduled.iter().collect::<Vec<_>>())
    );
    assert_eq!(
        by_state("open").await,
        newest_first(&[&open[0], &open[1], &theirs])
    );
    assert_eq!(
        by_state("closed").await,
        vec![closed["id"].as_str().unwrap()]
    );

    // An organizer's own sales, with or without a state.
    let org2 = app.organizer("org-2");
    assert_eq!(
        all_pages(&app, "/v1/organizer/sales", Some(&org2)).await,
        vec![theirs["id"].as_str().unwrap()]
    );
    let org1 = app.organizer("org-1");
    assert_eq!(
        all_pages(&app, "/v1/organizer/sales?state=closed", Some(&org1)).await,
        vec![closed["id"].as_str().unwrap()]
    );
    assert_problem(
        app.get("/v1/organizer/sales", Some(&app.buyer("b"))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_problem(
        app.get("/v1/organizer/sales", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;

    // Bad parameters are named.
    for (query, names) in [
        ("state=paused", "state"),
        ("state=", "state"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=2.5", "limit"),
    ] {
        let body = assert_problem(
            app.get(&format!("/v1/sales?{query}"), None).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().starts_with(names),
            "{query}: {body}"
        );
    }
    for cursor in ["abc", "AAAA", "%%%", "MjAyNi0wMS0wMQ"] {
        assert_problem(
            app.get(&format!("/v1/sales?cursor={cursor}"), None).await,
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        )
        .await;
    }
}

#[tokio::test]
async fn closing_a_sale_refuses_joins_admissions_and_holds_and_confirmations_stand() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let path = format!("/v1/sales/{sale}");
    let org = app.organizer("org-1");
    let res = app.hold(sale, "alice", "A", 2, None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let alice: Value = res.json().await.unwrap();
    let alice_id = alice["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.confirm(&alice_id, "alice").await.status(),
        StatusCode::OK
    );
    let res = app.hold(sale, "bob", "B", 1, None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let bob: Value = res.json().await.unwrap();
    let carol_pass = app.pass_for(sale, "carol").await;
    // Dave waits in the line; nobody admits him before the close.
    assert_eq!(app.join(sale, "dave").await.status(), StatusCode::ACCEPTED);

    let res = app
        .patch(&path, Some(&org), json!({"state": "closed"}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let closed: Value = res.json().await.unwrap();
    assert_eq!(closed["state"], "closed");
    let closes_at = closed["closes_at"].as_str().unwrap().to_owned();
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["state"], "closed");
    assert_eq!(read["closes_at"], closes_at.as_str());

    // No joins, no admissions, no holds.
    assert_problem(
        app.join(sale, "erin").await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
    assert_eq!(app.tick(sale, 300_000).await.admitted, 0);
    let dave: Value = app.poll(sale, "dave").await.json().await.unwrap();
    assert_ne!(dave["state"], "admitted", "{dave}");
    assert_problem(
        app.hold_with_pass(sale, "carol", &carol_pass, "A", 1, None)
            .await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
    // What was confirmed stands; the open hold is still out, to run out.
    let mine: Value = app
        .get(
            &format!("/v1/reservations/{alice_id}"),
            Some(&app.buyer("alice")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["status"], "confirmed");
    let held: Value = app
        .get(
            &format!("/v1/reservations/{}", bob["id"].as_str().unwrap()),
            Some(&app.buyer("bob")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(held["status"], "held");
    assert_eq!(app.stock(sale, "A").await, (8, 0, 2, 10));
    assert_eq!(app.stock(sale, "B").await, (4, 1, 0, 5));

    // Closing again changes nothing; a closed sale is not reopened.
    let again = app
        .patch(&path, Some(&org), json!({"state": "closed"}))
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["closes_at"], closes_at.as_str());
    for body in [
        json!({"closes_at": null}),
        json!({"closes_at": "2099-01-01T00:00:00Z"}),
    ] {
        let problem = assert_problem(
            app.patch(&path, Some(&org), body).await,
            StatusCode::CONFLICT,
            "sale_closed",
        )
        .await;
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains("cannot be reopened"));
    }
    assert_problem(
        app.join(sale, "erin").await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;

    // One audit row: the close.
    let log: Value = app
        .get(&format!("{path}/changes"), Some(&org))
        .await
        .json()
        .await
        .unwrap();
    let changes = log["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{log}");
    assert_eq!(changes[0]["actor"], "org-1");
    assert_eq!(changes[0]["before"]["closes_at"], Value::Null);
    assert_eq!(changes[0]["after"]["closes_at"], closes_at.as_str());
}

#[tokio::test]
async fn a_sale_that_has_not_opened_can_be_closed_for_good() {
    let app = TestApp::spawn().await;
    let sale = app
        .create_sale("org-1", json!({"opens_at": "2099-01-01T00:00:00Z"}))
        .await;
    let id = id_of(&sale);
    assert_eq!(app.join(id, "early").await.status(), StatusCode::ACCEPTED);
    let path = format!("/v1/sales/{id}");
    let res = app
        .patch(
            &path,
            Some(&app.organizer("org-1")),
            json!({"state": "closed"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["state"], "closed");
    assert_problem(
        app.join(id, "late").await,
        StatusCode::CONFLICT,
        "sale_not_open",
    )
    .await;
}

#[tokio::test]
async fn admit_idle_seconds_and_closes_at_are_checked_recorded_and_reach_redis() {
    let app = TestApp::spawn().await;
    let org = app.organizer("org-1");
    let meta = |sale: SaleId| {
        let redis = app.redis.clone();
        async move {
            let (idle, closes): (Option<i64>, Option<i64>) = redis
                .hmget(
                    SaleKeys::new(sale).meta(),
                    vec!["admit_idle_ms", "closes_at_ms"],
                )
                .await
                .unwrap();
            (idle.unwrap(), closes.unwrap())
        }
    };

    // Created: the default, or a value in range.
    let plain = app.create_sale("org-1", json!({})).await;
    assert_eq!(plain["admit_idle_seconds"], 60);
    assert_eq!(meta(id_of(&plain)).await, (60_000, 0));
    let sale = app
        .create_sale(
            "org-1",
            json!({"admit_idle_seconds": 30, "opens_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    let id = id_of(&sale);
    assert_eq!(sale["admit_idle_seconds"], 30);
    assert_eq!(meta(id).await, (30_000, 0));
    for bad in [json!(4), json!(3601), json!("30"), json!(30.5)] {
        let body = json!({"name": "x", "zones": [{"code": "A", "capacity": 1}], "admit_idle_seconds": bad});
        let res = app.post("/v1/sales", Some(&org), body).await;
        assert!(
            res.status() == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            res.status()
        );
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("admit_idle_seconds")
                || problem["code"] == "invalid_body",
            "{problem}"
        );
    }

    // Changed live.
    let path = format!("/v1/sales/{id}");
    let res = app
        .patch(
            &path,
            Some(&org),
            json!({"admit_idle_seconds": 120, "closes_at": "2030-01-02T00:00:00Z"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["admit_idle_seconds"], 120);
    assert_eq!(body["closes_at"], "2030-01-02T00:00:00Z");
    assert_eq!(body["state"], "scheduled");
    assert_eq!(meta(id).await, (120_000, 1_893_542_400_000));

    // Refused with the reason, and nothing changes.
    for (patch, code, says) in [
        (
            json!({"admit_idle_seconds": 3}),
            "validation_failed",
            "admit_idle_seconds",
        ),
        (
            json!({"closes_at": "2029-12-31T00:00:00Z"}),
            "validation_failed",
            "after opens_at",
        ),
        (
            json!({"closes_at": "tomorrow"}),
            "validation_failed",
            "RFC 3339",
        ),
        (
            json!({"closes_at": 1893542400}),
            "validation_failed",
            "RFC 3339",
        ),
        (json!({"state": "open"}), "validation_failed", "state"),
        (
            json!({"state": "closed", "closes_at": "2031-01-01T00:00:00Z"}),
            "validation_failed",
            "not both",
        ),
        (
            json!({"closes": "2031-01-01T00:00:00Z"}),
            "invalid_body",
            "unknown field",
        ),
    ] {
        let problem = assert_problem(
            app.patch(&path, Some(&org), patch.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{patch}: {problem}"
        );
    }
    // In the past, on a sale that has opened: the way to end it now is
    // `state`, not a time that has gone by.
    let open = app.sale_id(json!({})).await;
    assert_problem(
        app.patch(
            &format!("/v1/sales/{open}"),
            Some(&org),
            json!({"closes_at": "2025-01-01T00:00:00Z"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["admit_idle_seconds"], 120);
    assert_eq!(read["closes_at"], "2030-01-02T00:00:00Z");
    assert_eq!(meta(id).await, (120_000, 1_893_542_400_000));

    // Null removes a close that has not come.
    let body: Value = app
        .patch(&path, Some(&org), json!({"closes_at": null}))
        .await
        .json()
        .await
        .unwrap();
    assert!(body.get("closes_at").is_none(), "{body}");
    assert_eq!(meta(id).await.1, 0);

    // Every accepted change is in the log, oldest first.
    let log: Value = app
        .get(&format!("{path}/changes"), Some(&org))
        .await
        .json()
        .await
        .unwrap();
    let after: Vec<&Value> = log["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["after"])
        .collect();
    assert_eq!(after.len(), 2, "{log}");
    assert_eq!(after[0]["admit_idle_seconds"], 120);
    assert_eq!(after[0]["closes_at"], "2030-01-02T00:00:00Z");
    assert_eq!(after[1]["closes_at"], Value::Null);
}

#[tokio::test]
async fn admit_headroom_percent_is_checked_recorded_and_reaches_redis() {
    let app = TestApp::spawn().await;
    let org = app.organizer("org-1");
    let meta = |sale: SaleId| {
        let redis = app.redis.clone();
        async move {
            let headroom: Option<i64> = redis
                .hget(SaleKeys::new(sale).meta(), "admit_headroom_percent")
                .await
                .unwrap();
            headroom
        }
    };

    // Created: the default, or a value in range (0 and 1000 included).
    let plain = app.create_sale("org-1", json!({})).await;
    assert_eq!(plain["admit_headroom_percent"], 100);
    assert_eq!(meta(id_of(&plain)).await, Some(100));
    for edge in [0, 1000] {
        let sale = app
            .create_sale("org-1", json!({"admit_headroom_percent": edge}))
            .await;
        assert_eq!(sale["admit_headroom_percent"], edge);
        assert_eq!(meta(id_of(&sale)).await, Some(edge));
    }
    let sale = app
        .create_sale("org-1", json!({"admit_headroom_percent": 50.0}))
        .await;
    let id = id_of(&sale);
    assert_eq!(sale["admit_headroom_percent"], 50);
    assert_eq!(meta(id).await, Some(50));
    let path = format!("/v1/sales/{id}");
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["admit_headroom_percent"], 50);

    // Out of range or not a whole number: refused, naming the field, and
    // no sale is made.
    let listed = || async {
        let page: Value = app
            .get("/v1/organizer/sales?limit=100", Some(&org))
            .await
            .json()
            .await
            .unwrap();
        page["sales"].as_array().unwrap().len()
    };
    let before = listed().await;
    for bad in [
        json!(-1),
        json!(1001),
        json!("50"),
        json!(50.5),
        json!(true),
    ] {
        let body = json!({"name": "x", "zones": [{"code": "A", "capacity": 1}], "admit_headroom_percent": bad});
        let res = app.post("/v1/sales", Some(&org), body).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("admit_headroom_percent"),
            "{bad}: {problem}"
        );
    }
    assert_eq!(listed().await, before);

    // Changed live: in Postgres, in Redis, and in the audit log.
    let res = app
        .patch(&path, Some(&org), json!({"admit_headroom_percent": 250}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["admit_headroom_percent"], 250);
    assert_eq!(meta(id).await, Some(250));

    // Refused with the reason, and nothing changes.
    for bad in [json!(-5), json!(1001), json!("250"), json!(12.5)] {
        let res = app
            .patch(&path, Some(&org), json!({"admit_headroom_percent": bad}))
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("admit_headroom_percent"),
            "{bad}: {problem}"
        );
    }
    let read: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(read["admit_headroom_percent"], 250);
    assert_eq!(meta(id).await, Some(250));

    let log: Value = app
        .get(&format!("{path}/changes"), Some(&org))
        .await
        .json()
        .await
        .unwrap();
    let changes = log["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{log}");
    assert_eq!(changes[0]["before"]["admit_headroom_percent"], 50);
    assert_eq!(changes[0]["after"]["admit_headroom_percent"], 250);
}

#[tokio::test]
async fn the_audit_log_is_paged_oldest_first_and_only_for_its_organizer() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({"release_rate": 100})).await;
    let path = format!("/v1/sales/{sale}");
    let org = app.organizer("org-1");
    for rate in [200, 300, 400] {
        let res = app
            .patch(&path, Some(&org), json!({"release_rate": rate}))
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let mut rates = Vec::new();
    let mut url = format!("{path}/changes?limit=2");
    for _ in 0..5 {
        let page: Value = app.get(&url, Some(&org)).await.json().await.unwrap();
        for c in page["changes"].as_array().unwrap() {
            assert_eq!(c["actor"], "org-1");
            assert!(c["at"].is_string());
            rates.push((
                c["before"]["release_rate"].as_i64().unwrap(),
                c["after"]["release_rate"].as_i64().unwrap(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("{path}/changes?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(rates, vec![(100, 200), (200, 300), (300, 400)]);

    for (token, status, code) in [
        (
            Some(app.organizer("org-2")),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (Some(app.buyer("b")), StatusCode::FORBIDDEN, "forbidden"),
        (None, StatusCode::UNAUTHORIZED, "unauthenticated"),
    ] {
        for what in ["changes", "attendees"] {
            assert_problem(
                app.get(&format!("{path}/{what}"), token.as_deref()).await,
                status,
                code,
            )
            .await;
        }
    }
    for what in ["changes", "attendees"] {
        assert_problem(
            app.get(&format!("/v1/sales/{}/{what}", SaleId::new()), Some(&org))
                .await,
            StatusCode::NOT_FOUND,
            "sale_not_found",
        )
        .await;
    }
    assert_problem(
        app.get(&format!("{path}/changes?limit=1001"), Some(&org))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_problem(
        app.get(&format!("{path}/changes?cursor=zz"), Some(&org))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
}
