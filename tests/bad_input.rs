//! A corpus of hostile and broken input: each request gets its documented
//! 4xx problem with its code, never a 5xx, and no ticket moves.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use common::{assert_problem, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn broken_bodies_on_every_json_endpoint_are_4xx_problems_and_change_nothing() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let pass = app.pass_for(sale, "alice").await;
    let r: Value = app
        .hold(sale, "alice", "A", 1, None)
        .await
        .json()
        .await
        .unwrap();
    let rid = r["id"].as_str().unwrap().to_owned();
    let org = app.organizer("org-1");
    let buyer = app.buyer("alice");
    let endpoints: Vec<(reqwest::Method, String, String)> = vec![
        (reqwest::Method::POST, "/v1/sales".into(), org.clone()),
        (
            reqwest::Method::PATCH,
            format!("/v1/sales/{sale}"),
            org.clone(),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/sales/{sale}/reservations"),
            buyer.clone(),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/reservations/{rid}/confirm"),
            buyer.clone(),
        ),
        (
            reqwest::Method::POST,
            "/v1/auth/register".into(),
            String::new(),
        ),
        (
            reqwest::Method::POST,
            "/v1/auth/login".into(),
            String::new(),
        ),
    ];
    // Past every limit, a new sale's 1 MiB included.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(1_100_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", b"{\"zone\": ".to_vec()),
        ("not json", b"zone=A&quantity=1".to_vec()),
        ("a string", b"\"hello\"".to_vec()),
        ("an array", b"[1, 2, 3]".to_vec()),
        ("deep nesting", "[".repeat(10_000).into_bytes()),
        (
            "invalid utf-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
        ("huge", huge.into_bytes()),
    ];
    for (method, path, token) in &endpoints {
        for (what, body) in &bodies {
            let mut req = app
                .http
                .request(method.clone(), app.url(path))
                .header("content-type", "application/json")
                .header("x-queue-pass", &pass)
                .body(body.clone());
            if !token.is_empty() {
                req = req.bearer_auth(token);
            }
            let res = req.send().await.unwrap();
            let status = res.status();
            assert!(
                status.is_client_error(),
                "{method} {path} with {what}: {status}"
            );
            let text = res.text().await.unwrap();
            let problem: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {path} with {what}: {status} {text}"));
            assert!(
                problem["code"].is_string(),
                "{method} {path} with {what}: {problem}"
            );
            if *what == "huge" {
                assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}");
            }
        }
    }
    assert_eq!(app.stock(sale, "A").await, (9, 1, 0, 10), "nothing moved");
    let sales: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sales")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sales, 1);
}

#[tokio::test]
async fn wrong_types_name_the_field_in_plain_words() {
    let app = TestApp::spawn().await;
    let res = app
        .post(
            "/v1/sales",
            Some(&app.organizer("org-1")),
            json!({"name": "x", "zones": [{"code": "A", "capacity": "lots"}]}),
        )
        .await;
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("zones[0].capacity") && detail.contains("expected an integer"),
        "{detail}"
    );
    assert!(!detail.contains("i64"), "{detail}");
}

#[tokio::test]
async fn tokens_of_the_wrong_kind_are_refused_for_what_they_are_not() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let pass = app.pass_for(sale, "alice").await;
    // A queue pass is not an access token.
    let res = app
        .get(&format!("/v1/sales/{sale}/queue"), Some(&pass))
        .await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    // An access token is not a queue pass.
    let access = app.buyer("alice");
    let res = app
        .hold_with_pass(sale, "alice", &access, "A", 1, None)
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "pass_invalid").await;
    // An organizer's token is not a queue pass either, nor a buyer's pass.
    let res = app
        .hold_with_pass(sale, "alice", &app.organizer("org-1"), "A", 1, None)
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "pass_invalid").await;
    // Garbage in every header.
    let res = app
        .http
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .json(&json!({"zone": "A", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
}

#[tokio::test]
async fn ids_that_look_like_sql_or_paths_are_just_not_found() {
    let app = TestApp::spawn().await;
    let token = app.buyer("alice");
    for id in [
        "1;DROP TABLE sales",
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
        "' OR ''='",
        "%F0%9F%92%A5",
    ] {
        let res = app.get(&format!("/v1/sales/{id}"), None).await;
        assert_problem(res, StatusCode::NOT_FOUND, "sale_not_found").await;
        let res = app
            .get(&format!("/v1/reservations/{id}"), Some(&token))
            .await;
        assert_problem(res, StatusCode::NOT_FOUND, "reservation_not_found").await;
        let res = app
            .get(&format!("/v1/sales/{id}/queue"), Some(&token))
            .await;
        assert_problem(res, StatusCode::NOT_FOUND, "sale_not_found").await;
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sales")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn control_characters_are_refused_not_stored() {
    let app = TestApp::spawn().await;
    let res = app
        .post(
            "/v1/sales",
            Some(&app.organizer("org-1")),
            json!({"name": "nul\u{0}name", "zones": [{"code": "A", "capacity": 1}]}),
        )
        .await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = app
        .post(
            "/v1/sales",
            Some(&app.organizer("org-1")),
            json!({"name": "ok", "zones": [{"code": "A", "capacity": 1, "name": "bell\u{7}"}]}),
        )
        .await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let res = app
        .post(
            "/v1/auth/login",
            None,
            json!({"email": "a\u{0}@example.com", "password": "whatever password"}),
        )
        .await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    // Whole numbers written as 2.0 are integers, as the schema says.
    let res = app
        .post(
            "/v1/sales",
            Some(&app.organizer("org-1")),
            json!({"name": "floats", "zones": [{"code": "A", "capacity": 5.0}], "release_rate": 10.0}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = app
        .http
        .patch(app.url("/v1/sales/00000000-0000-0000-0000-000000000000"))
        .bearer_auth(app.organizer("org-1"))
        .json(&json!([null, null]))
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;
    assert_eq!(body["detail"], "the body must be a JSON object");
}
