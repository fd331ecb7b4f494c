//! Reservations through HTTP: hold, confirm, cancel, expiry, idempotency,
//! limits and every refusal docs/API.md lists.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::{assert_problem, TestApp};
use flashsale::{ids::SaleId, keys::SaleKeys};
use fred::interfaces::StreamsInterface;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn held(app: &TestApp, sale: SaleId, buyer: &str, zone: &str, qty: i64) -> Value {
    let res = app.hold(sale, buyer, zone, qty, None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

async fn stream_len(app: &TestApp, sale: SaleId) -> u64 {
    app.redis.xlen(SaleKeys::new(sale).stream()).await.unwrap()
}

#[tokio::test]
async fn buyer_holds_tickets_and_the_zone_stock_moves() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({"hold_ttl_seconds": 120})).await;
    let res = app.hold(sale, "alice", "A", 2, None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let r: Value = res.json().await.unwrap();
    assert_eq!(r["sale_id"], sale.to_string());
    assert_eq!(r["zone"], "A");
    assert_eq!(r["quantity"], 2);
    assert_eq!(r["status"], "held");
    assert_eq!(
        location,
        format!("/v1/reservations/{}", r["id"].as_str().unwrap())
    );
    let created = chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(r["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 120);
    assert_eq!(app.stock(sale, "A").await, (8, 2, 0, 10));
    assert_eq!(app.stock(sale, "B").await, (5, 0, 0, 5));

    // The buyer reads it back; nobody else can.
    let got: Value = app
        .get(&location, Some(&app.buyer("alice")))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got, r);
    assert_problem(
        app.get(&location, Some(&app.buyer("mallory"))).await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    )
    .await;
}

#[tokio::test]
async fn confirm_turns_a_hold_into_a_sale_once_and_appends_it_to_the_stream() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let r = held(&app, sale, "alice", "A", 2).await;
    let id = r["id"].as_str().unwrap();

    let res = app
        .post(
            &format!("/v1/reservations/{id}/confirm"),
            Some(&app.buyer("alice")),
            json!({"payment_ref": "pay_123"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let c: Value = res.json().await.unwrap();
    assert_eq!(c["status"], "confirmed");
    assert_eq!(c["id"], r["id"]);
    assert!(c["confirmed_at"].is_string());
    assert_eq!(app.stock(sale, "A").await, (8, 0, 2, 10));
    assert_eq!(stream_len(&app, sale).await, 1);

    // Confirming again answers the same reservation and appends nothing.
    let again = app.confirm(id, "alice").await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, c);
    assert_eq!(stream_len(&app, sale).await, 1);
    assert_eq!(app.stock(sale, "A").await, (8, 0, 2, 10));

    // A confirm with no body at all works too.
    let r2 = held(&app, sale, "bob", "B", 1).await;
    let res = app
        .http
        .post(app.url(&format!(
            "/v1/reservations/{}/confirm",
            r2["id"].as_str().unwrap()
        )))
        .bearer_auth(app.buyer("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_users_reservation_reads_as_not_found_and_is_untouched() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let r = held(&app, sale, "alice", "A", 1).await;
    let id = r["id"].as_str().unwrap();
    assert_problem(
        app.confirm(id, "mallory").await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    )
    .await;
    assert_problem(
        app.cancel(id, "mallory").await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    )
    .await;
    assert_eq!(app.stock(sale, "A").await, (9, 1, 0, 10));
    for bad in ["nope", "' OR 1=1 --", &"f".repeat(48)] {
        let path = format!("/v1/reservations/{}/confirm", urlencode(bad));
        assert_problem(
            app.post(&path, Some(&app.buyer("alice")), json!({})).await,
            StatusCode::NOT_FOUND,
            "reservation_not_found",
        )
        .await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn cancel_returns_held_and_confirmed_tickets_to_the_zone() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let h = held(&app, sale, "alice", "A", 2).await;
    let c = held(&app, sale, "alice", "B", 1).await;
    assert_eq!(
        app.confirm(c["id"].as_str().unwrap(), "alice")
            .await
            .status(),
        StatusCode::OK
    );

    let res = app.cancel(h["id"].as_str().unwrap(), "alice").await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");
    assert!(body["cancelled_at"].is_string());
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));

    let res = app.cancel(c["id"].as_str().unwrap(), "alice").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.stock(sale, "B").await, (5, 0, 0, 5));
    // The confirmation and its cancellation are both in the outbox.
    assert_eq!(stream_len(&app, sale).await, 2);

    // Cancelling twice answers the same; confirming a cancelled one is refused.
    let again: Value = app
        .cancel(h["id"].as_str().unwrap(), "alice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "cancelled");
    assert_problem(
        app.confirm(h["id"].as_str().unwrap(), "alice").await,
        StatusCode::CONFLICT,
        "reservation_cancelled",
    )
    .await;
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
}

#[tokio::test]
async fn hold_is_refused_when_zone_is_sold_out_and_says_how_many_are_left() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    held(&app, sale, "alice", "B", 4).await;
    let body = assert_problem(
        app.hold(sale, "bob", "B", 2, None).await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("1 left"),
        "{body}"
    );
    held(&app, sale, "bob", "B", 1).await;
    let body = assert_problem(
        app.hold(sale, "carol", "B", 1, None).await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("0 left"),
        "{body}"
    );
    assert_eq!(app.stock(sale, "B").await, (0, 5, 0, 5));
    // Other zones still sell, and the sale is not sold out while they do.
    held(&app, sale, "carol", "A", 1).await;
    let read: Value = app
        .get(&format!("/v1/sales/{sale}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["state"], "open");
}

#[tokio::test]
async fn a_sale_with_nothing_available_or_held_is_sold_out() {
    let app = TestApp::spawn().await;
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 2}], "per_user_limit": 2}))
        .await;
    let r = held(&app, sale, "alice", "A", 2).await;
    let read: Value = app
        .get(&format!("/v1/sales/{sale}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["state"], "open", "held tickets may come back");
    app.confirm(r["id"].as_str().unwrap(), "alice").await;
    let read: Value = app
        .get(&format!("/v1/sales/{sale}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["state"], "sold_out");
}

#[tokio::test]
async fn per_user_limit_counts_held_and_confirmed_tickets_for_the_whole_sale() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({"per_user_limit": 3})).await;
    let a = held(&app, sale, "alice", "A", 2).await;
    app.confirm(a["id"].as_str().unwrap(), "alice").await;
    let body = assert_problem(
        app.hold(sale, "alice", "B", 2, None).await,
        StatusCode::CONFLICT,
        "limit_exceeded",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("1 more"),
        "{body}"
    );
    let b = held(&app, sale, "alice", "B", 1).await;
    assert_problem(
        app.hold(sale, "alice", "A", 1, None).await,
        StatusCode::CONFLICT,
        "limit_exceeded",
    )
    .await;
    // A quantity above the limit on its own is refused the same way.
    assert_problem(
        app.hold(sale, "bob", "A", 4, None).await,
        StatusCode::CONFLICT,
        "limit_exceeded",
    )
    .await;
    // Cancelling gives the allowance back.
    app.cancel(b["id"].as_str().unwrap(), "alice").await;
    held(&app, sale, "alice", "A", 1).await;
    assert_eq!(app.stock(sale, "A").await, (7, 1, 2, 10));
}

#[tokio::test]
async fn idempotent_retries_replay_the_first_response_and_a_new_body_is_refused() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let first = app.hold(sale, "alice", "A", 2, Some("key-1")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let retry = app.hold(sale, "alice", "A", 2, Some("key-1")).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(
        app.stock(sale, "A").await,
        (8, 2, 0, 10),
        "the retry took nothing"
    );

    let body = assert_problem(
        app.hold(sale, "alice", "A", 3, Some("key-1")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("different"));
    assert_problem(
        app.hold(sale, "alice", "B", 2, Some("key-1")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    // Keys are scoped to the user: bob's key-1 is his own reservation.
    let bob: Value = app
        .hold(sale, "bob", "A", 2, Some("key-1"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(bob["id"], first["id"]);
    assert_eq!(app.stock(sale, "A").await, (6, 4, 0, 10));

    // Malformed keys are refused before anything happens.
    for key in ["", &"k".repeat(256), "has space"] {
        let res = app
            .http
            .post(app.url(&format!("/v1/sales/{sale}/reservations")))
            .bearer_auth(app.buyer("carol"))
            .header("Idempotency-Key", key)
            .header("x-queue-pass", app.pass_for(sale, "carol").await)
            .json(&json!({"zone": "A", "quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_problem(
            res,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
        )
        .await;
    }
    assert_eq!(app.stock(sale, "A").await, (6, 4, 0, 10));
}

#[tokio::test]
async fn bad_quantities_are_refused_with_invalid_quantity_and_nothing_moves() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let path = format!("/v1/sales/{sale}/reservations");
    let token = app.buyer("alice");
    let pass = app.pass_for(sale, "alice").await;
    let send = |body: Value| {
        app.http
            .post(app.url(&path))
            .bearer_auth(&token)
            .header("x-queue-pass", &pass)
            .json(&body)
            .send()
    };
    for q in [
        json!(0),
        json!(-1),
        json!(1e12),
        json!("2"),
        json!(null),
        json!(2.5),
        json!(101),
    ] {
        let res = send(json!({"zone": "A", "quantity": q})).await.unwrap();
        assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity").await;
    }
    let res = send(json!({"zone": "A"})).await.unwrap();
    assert_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity").await;
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
}

#[tokio::test]
async fn unknown_zones_and_sales_are_404() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    for zone in ["Z", "a", "A:held", "'; DROP TABLE zones; --"] {
        let res = app.hold(sale, "alice", zone, 1, None).await;
        assert_problem(res, StatusCode::NOT_FOUND, "zone_not_found").await;
    }
    // An unknown sale: no pass can name it, so the pass is refused first.
    let pass = app.pass_for(sale, "alice").await;
    let res = app
        .hold_with_pass(SaleId::new(), "alice", &pass, "A", 1, None)
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "pass_invalid").await;
    let res = app
        .post(
            &format!("/v1/sales/{}/reservations", SaleId::new()),
            Some(&app.buyer("alice")),
            json!({"zone": "A", "quantity": 1}),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "pass_required").await;
    // An id that is not a sale id at all is simply not found.
    let res = app
        .post(
            "/v1/sales/garbage/reservations",
            Some(&app.buyer("alice")),
            json!({"zone": "A", "quantity": 1}),
        )
        .await;
    assert_problem(res, StatusCode::NOT_FOUND, "sale_not_found").await;
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
}

#[tokio::test]
async fn holds_past_their_deadline_expire_and_their_tickets_go_back() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({"hold_ttl_seconds": 1})).await;
    let swept = held(&app, sale, "alice", "A", 2).await;
    let late = held(&app, sale, "bob", "A", 3).await;
    let cancelled_late = held(&app, sale, "carol", "B", 1).await;
    assert_eq!(app.stock(sale, "A").await, (5, 5, 0, 10));
    // Wait until both deadlines have certainly passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The sweeper returns alice's tickets.
    let done = flashsale::inventory::expire_due(&app.redis, &app.scripts, sale, 100)
        .await
        .unwrap();
    assert_eq!(done.holds, 3);
    assert_eq!(done.tickets, 6);
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
    let r: Value = app
        .get(
            &format!("/v1/reservations/{}", swept["id"].as_str().unwrap()),
            Some(&app.buyer("alice")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "expired");

    // A confirm or cancel after the deadline is 410 and changes nothing more.
    assert_problem(
        app.confirm(late["id"].as_str().unwrap(), "bob").await,
        StatusCode::GONE,
        "hold_expired",
    )
    .await;
    assert_problem(
        app.cancel(cancelled_late["id"].as_str().unwrap(), "carol")
            .await,
        StatusCode::GONE,
        "hold_expired",
    )
    .await;
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
    assert_eq!(app.stock(sale, "B").await, (5, 0, 0, 5));
    assert_eq!(stream_len(&app, sale).await, 0);

    // Per-user allowance came back too.
    held(&app, sale, "alice", "A", 4).await;
}

#[tokio::test]
async fn a_late_confirm_expires_the_hold_itself_before_the_sweeper_does() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({"hold_ttl_seconds": 1})).await;
    let r = held(&app, sale, "alice", "A", 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_problem(
        app.confirm(r["id"].as_str().unwrap(), "alice").await,
        StatusCode::GONE,
        "hold_expired",
    )
    .await;
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
    // The sweeper finds nothing left to return.
    let done = flashsale::inventory::expire_due(&app.redis, &app.scripts, sale, 100)
        .await
        .unwrap();
    assert_eq!(done.tickets, 0);
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
}

#[tokio::test]
async fn my_reservations_lists_the_callers_own_across_sales_newest_first() {
    let app = TestApp::spawn().await;
    let s1 = app.sale_id(json!({})).await;
    let s2 = app.sale_id(json!({})).await;
    // Users of their own: other tests share this Redis.
    let alice = format!("alice-{}", uuid::Uuid::new_v4());
    let a = held(&app, s1, &alice, "A", 1).await;
    let b = held(&app, s2, &alice, "B", 2).await;
    held(&app, s1, "bob", "A", 1).await;
    let list: Value = app
        .get("/v1/me/reservations", Some(&app.buyer(&alice)))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![b["id"].as_str().unwrap(), a["id"].as_str().unwrap()]
    );
    assert_problem(
        app.get("/v1/me/reservations", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn forged_expired_and_unsigned_tokens_are_refused() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let path = format!("/v1/sales/{sale}/reservations");
    let now = flashsale::tokens::unix_now();
    let sign = |claims: Value, secret: &str| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "eve", "role": "buyer", "exp": now + 600}))
    );
    let cases = [
        ("no header", None),
        ("not a jwt", Some("hello".to_owned())),
        ("alg none", Some(unsigned)),
        (
            "wrong key",
            Some(sign(
                json!({"sub": "eve", "role": "buyer", "exp": now + 600}),
                "another-secret-that-is-long-enough-000",
            )),
        ),
        (
            "expired",
            Some(sign(
                json!({"sub": "eve", "role": "buyer", "exp": now - 60}),
                common::JWT_SECRET,
            )),
        ),
        (
            "no exp",
            Some(sign(
                json!({"sub": "eve", "role": "buyer"}),
                common::JWT_SECRET,
            )),
        ),
        (
            "no sub",
            Some(sign(
                json!({"role": "buyer", "exp": now + 600}),
                common::JWT_SECRET,
            )),
        ),
        (
            "bad role",
            Some(sign(
                json!({"sub": "eve", "role": "admin", "exp": now + 600}),
                common::JWT_SECRET,
            )),
        ),
    ];
    for (what, token) in cases {
        let res = app
            .post(&path, token.as_deref(), json!({"zone": "A", "quantity": 1}))
            .await;
        let body = assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{what}");
    }
    let res = app
        .http
        .post(app.url(&path))
        .header("authorization", "Basic YTpi")
        .json(&json!({"zone": "A", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert_eq!(app.stock(sale, "A").await, (10, 0, 0, 10));
}
