//! Accounts through HTTP: register, log in, use the token; and organizers
//! created from the command line.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use common::{assert_problem, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn email() -> String {
    format!("fan-{}@example.com", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_buyer_registers_logs_in_and_the_token_works() {
    let app = TestApp::spawn().await;
    let email = email();
    let res = app
        .post(
            "/v1/auth/register",
            None,
            json!({"email": email, "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user_id = res.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Any case of the email logs in.
    let res = app
        .post(
            "/v1/auth/login",
            None,
            json!({"email": email.to_uppercase(), "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let login: Value = res.json().await.unwrap();
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["expires_in"], 3600);
    let token = login["access_token"].as_str().unwrap();
    let me = app.tokens.verify(token).unwrap();
    assert_eq!(me.user_id, user_id);
    assert_eq!(me.role, flashsale::tokens::Role::Buyer);

    let sale = app.sale_id(json!({})).await;
    let res = app
        .post(&format!("/v1/sales/{sale}/queue"), Some(token), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    // A buyer's token cannot create sales.
    let res = app
        .post(
            "/v1/sales",
            Some(token),
            json!({"name": "x", "zones": [{"code": "A", "capacity": 1}]}),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn wrong_passwords_and_unknown_emails_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let email = email();
    app.post(
        "/v1/auth/register",
        None,
        json!({"email": email, "password": "correct horse battery"}),
    )
    .await;
    for (e, p) in [
        (email.as_str(), "wrong horse battery"),
        ("nobody@example.com", "correct horse battery"),
    ] {
        let res = app
            .post("/v1/auth/login", None, json!({"email": e, "password": p}))
            .await;
        let body = assert_problem(res, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
        assert_eq!(body["detail"], "the email or the password is wrong");
    }
}

#[tokio::test]
async fn registration_refuses_bad_emails_weak_passwords_and_taken_emails() {
    let app = TestApp::spawn().await;
    let res = app
        .post(
            "/v1/auth/register",
            None,
            json!({"email": "not-an-email", "password": "correct horse battery"}),
        )
        .await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_email").await;
    for weak in ["short", "aaaaaaaaaaaaaaaa", "Password123"] {
        let res = app
            .post(
                "/v1/auth/register",
                None,
                json!({"email": email(), "password": weak}),
            )
            .await;
        assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "weak_password").await;
    }
    let res = app
        .post(
            "/v1/auth/register",
            None,
            json!({"email": 5, "password": []}),
        )
        .await;
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body").await;

    // The same email in another case, many times at once: exactly one wins.
    let email = email();
    let attempts = (0..8).map(|i| {
        let e = if i % 2 == 0 {
            email.clone()
        } else {
            email.to_uppercase()
        };
        app.post(
            "/v1/auth/register",
            None,
            json!({"email": e, "password": "correct horse battery"}),
        )
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$"),
        "stored as argon2id, never in clear"
    );
}

#[tokio::test]
async fn organizers_are_created_from_the_command_line_and_can_create_sales() {
    let app = TestApp::spawn().await;
    let email = email();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["add-user", "--email", &email, "--role", "organizer"])
        .env("DATABASE_URL", &app.db_url)
        .env("FLASHSALE_PASSWORD", "organizer password 1")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res = app
        .post(
            "/v1/auth/login",
            None,
            json!({"email": email, "password": "organizer password 1"}),
        )
        .await;
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .post(
            "/v1/sales",
            Some(&token),
            json!({"name": "By CLI organizer", "zones": [{"code": "A", "capacity": 5}]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
}
