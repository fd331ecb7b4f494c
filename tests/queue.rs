//! The virtual queue through HTTP: fair order, the auditable pre-queue, the
//! releaser (two at once, live rate changes, pause, stock), sold out,
//! abandonment, and queue passes.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::{collections::HashMap, time::Duration};

use common::{assert_problem, TestApp};
use flashsale::{
    ids::SaleId,
    passes::{PassClaims, PassKeys, SigningKey},
    tokens::unix_now,
};
use fred::interfaces::SetsInterface;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn patch(app: &TestApp, sale: SaleId, body: Value) {
    let res = app
        .http
        .patch(app.url(&format!("/v1/sales/{sale}")))
        .bearer_auth(app.organizer("org-1"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

async fn standing(app: &TestApp, sale: SaleId, buyer: &str) -> Value {
    let res = app.poll(sale, buyer).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[tokio::test]
async fn joining_twice_keeps_the_place_and_leaving_gives_it_up() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let (a, b) = (unique("a"), unique("b"));
    let first: Value = app.join(sale, &a).await.json().await.unwrap();
    assert_eq!(first["state"], "waiting");
    assert_eq!(first["position"], 1);
    assert!(first["eta_seconds"].is_u64());
    // The server says when to poll next: within a second to a minute.
    without_poll_after(first.clone());
    let res = app.join(sale, &b).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.json::<Value>().await.unwrap()["position"], 2);
    // Joining again: same place.
    assert_eq!(
        app.join(sale, &a).await.json::<Value>().await.unwrap()["position"],
        1
    );
    assert_eq!(standing(&app, sale, &b).await["position"], 2);

    let res = app
        .http
        .delete(app.url(&format!("/v1/sales/{sale}/queue")))
        .bearer_auth(app.buyer(&a))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(standing(&app, sale, &b).await["position"], 1);
    assert_problem(
        app.poll(sale, &a).await,
        StatusCode::NOT_FOUND,
        "not_in_queue",
    )
    .await;
    // Rejoining goes to the back.
    assert_eq!(
        app.join(sale, &a).await.json::<Value>().await.unwrap()["position"],
        2
    );

    assert_problem(
        app.join(SaleId::new(), &a).await,
        StatusCode::NOT_FOUND,
        "sale_not_found",
    )
    .await;
    assert_problem(
        app.poll(SaleId::new(), &a).await,
        StatusCode::NOT_FOUND,
        "sale_not_found",
    )
    .await;
    let res = app
        .post(&format!("/v1/sales/{sale}/queue"), None, json!({}))
        .await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn buyers_who_join_after_opening_are_admitted_in_arrival_order() {
    let app = TestApp::spawn().await;
    // 20 admissions a tick; stock for everyone.
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 1000}], "release_rate": 200, "release_interval_ms": 100}))
        .await;
    let run = unique("fifo");
    // Hundreds join at once; the place each is given is its arrival order.
    let buyers: Vec<String> = (0..240).map(|i| format!("{run}-{i}")).collect();
    let mut place: HashMap<String, u64> = HashMap::new();
    let app = &app;
    for chunk in buyers.chunks(60) {
        let joins = chunk
            .iter()
            .map(|b| async move { (b.clone(), app.join(sale, b).await) });
        for (b, res) in futures::future::join_all(joins).await {
            let body: Value = res.json().await.unwrap();
            place.insert(b, body["position"].as_u64().unwrap());
        }
    }
    let mut places: Vec<u64> = place.values().copied().collect();
    places.sort();
    assert_eq!(
        places,
        (1..=240).collect::<Vec<_>>(),
        "every arrival has its own place"
    );
    let mut by_place: Vec<&String> = buyers.iter().collect();
    by_place.sort_by_key(|b| place[*b]);

    // After every tick, those admitted are exactly the first arrivals.
    let mut admitted = 0usize;
    while admitted < buyers.len() {
        let tick = app.tick(sale, 300_000).await;
        assert_eq!(tick.admitted, 20, "a full batch each tick");
        admitted += tick.admitted as usize;
        for (rank, b) in by_place.iter().enumerate() {
            let state = standing(app, sale, b).await;
            if rank < admitted {
                assert_eq!(
                    state["state"],
                    "admitted",
                    "arrival {} should be admitted",
                    rank + 1
                );
            } else {
                assert_eq!(state["state"], "waiting");
                assert_eq!(state["position"], (rank - admitted + 1) as u64);
            }
        }
    }
}

#[tokio::test]
async fn the_prequeue_is_shuffled_by_the_published_seed_and_can_be_recomputed() {
    let app = TestApp::spawn().await;
    let opens_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let sale_body = app
        .create_sale(
            "org-1",
            json!({"opens_at": opens_at.to_rfc3339(), "zones": [{"code": "A", "capacity": 1000}]}),
        )
        .await;
    let sale: SaleId = sale_body["id"].as_str().unwrap().parse().unwrap();
    let commitment = sale_body["prequeue_seed_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(commitment.len(), 64);
    assert!(
        sale_body.get("prequeue_seed").is_none(),
        "the seed is secret before opening"
    );

    let run = unique("early");
    let arrivals: Vec<String> = (0..40).map(|i| format!("{run}-{i:02}")).collect();
    for b in &arrivals {
        let body: Value = app.join(sale, b).await.json().await.unwrap();
        assert_eq!(body["state"], "waiting");
        assert!(
            body["eta_seconds"].as_u64().unwrap() >= 1,
            "ETA counts the time to opening"
        );
    }
    let org = app.organizer("org-1");
    let res = app
        .get(&format!("/v1/sales/{sale}/prequeue"), Some(&org))
        .await;
    assert_problem(res, StatusCode::CONFLICT, "sale_not_open").await;

    // Wait for the opening (bounded: it is three seconds away).
    while chrono::Utc::now() < opens_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = format!("{run}-late");
    let body: Value = app.join(sale, &late).await.json().await.unwrap();
    assert_eq!(
        body["position"], 41,
        "after opening, behind the whole pre-queue"
    );

    let read: Value = app
        .get(&format!("/v1/sales/{sale}"), None)
        .await
        .json()
        .await
        .unwrap();
    let seed = read["prequeue_seed"]
        .as_str()
        .expect("the seed is public once open")
        .to_owned();
    assert_eq!(
        flashsale::queue::seed_commitment(&seed),
        commitment,
        "the seed matches its commitment"
    );

    // The organizer's export, and the documented command's recomputation.
    let export: Value = app
        .get(&format!("/v1/sales/{sale}/prequeue"), Some(&org))
        .await
        .json()
        .await
        .unwrap();
    let mut exported: Vec<String> = serde_json::from_value(export["buyers"].clone()).unwrap();
    exported.sort();
    assert_eq!(
        exported, arrivals,
        "the export lists exactly the early buyers"
    );
    let file = std::env::temp_dir().join(format!("{run}.json"));
    std::fs::write(&file, export.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["prequeue-order", "--export", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recomputed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    std::fs::remove_file(&file).ok();
    assert_eq!(recomputed.len(), 40);
    assert_ne!(
        recomputed, arrivals,
        "the pre-queue is not in arrival order"
    );

    // The live queue is in exactly that order.
    for (i, b) in recomputed.iter().enumerate() {
        assert_eq!(
            standing(&app, sale, b).await["position"],
            (i + 1) as u64,
            "{b}"
        );
    }
    // A seed that does not match the commitment is refused by the command.
    let mut forged = export.clone();
    forged["seed"] = json!("00".repeat(32));
    std::fs::write(&file, forged.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["prequeue-order", "--export", file.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_file(&file).ok();
    assert!(!out.status.success());
}

#[tokio::test]
async fn two_releasers_running_at_once_admit_exactly_the_configured_number() {
    let app = TestApp::spawn().await;
    // One buyer a second, released every minute: 60 per tick.
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 1000}], "release_rate": 1, "release_interval_ms": 60000}))
        .await;
    let run = unique("two");
    for i in 0..100 {
        app.join(sale, &format!("{run}-{i}")).await;
    }
    let releaser = || async {
        let mut admitted = 0;
        for _ in 0..25 {
            if let Some(t) =
                flashsale::queue::release_tick(&app.redis, &app.scripts, sale, 300_000, 5000)
                    .await
                    .unwrap()
            {
                admitted += t.admitted;
            }
        }
        admitted
    };
    let (a, b) = tokio::join!(releaser(), releaser());
    assert_eq!(a + b, 60, "one tick's batch, whoever ran it");
    let stats: Value = app
        .get(
            &format!("/v1/sales/{sale}/stats"),
            Some(&app.organizer("org-1")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["admitted_total"], 60);
    assert_eq!(stats["active"], 60);
    assert_eq!(stats["waiting"], 40);
}

#[tokio::test]
async fn a_rate_change_and_a_pause_take_effect_at_the_next_tick() {
    let app = TestApp::spawn().await;
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 1000}], "release_rate": 10, "release_interval_ms": 100}))
        .await;
    let run = unique("rate");
    for i in 0..200 {
        app.join(sale, &format!("{run}-{i}")).await;
    }
    assert_eq!(
        app.tick(sale, 300_000).await.admitted,
        1,
        "10/s in 100 ms ticks"
    );
    assert_eq!(app.tick(sale, 300_000).await.admitted, 1);

    patch(&app, sale, json!({"release_rate": 500})).await;
    assert_eq!(
        app.tick(sale, 300_000).await.admitted,
        50,
        "the very next tick uses 500/s"
    );

    patch(&app, sale, json!({"paused": true})).await;
    let tick = app.tick(sale, 300_000).await;
    assert_eq!(tick.admitted, 0, "paused: nobody is admitted");
    let last = format!("{run}-199");
    let body = standing(&app, sale, &last).await;
    assert_eq!(body["state"], "waiting");
    assert_eq!(body["paused"], true);
    assert_eq!(body["position"], 148);
    let read: Value = app
        .get(&format!("/v1/sales/{sale}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["state"], "paused");

    patch(&app, sale, json!({"paused": false})).await;
    assert_eq!(
        app.tick(sale, 300_000).await.admitted,
        50,
        "no burst after a pause"
    );
}

#[tokio::test]
async fn eta_follows_the_measured_admission_rate() {
    let app = TestApp::spawn().await;
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 1000}], "release_rate": 100, "release_interval_ms": 100}))
        .await;
    let run = unique("eta");
    for i in 0..300 {
        app.join(sale, &format!("{run}-{i}")).await;
    }
    for _ in 0..4 {
        app.tick(sale, 300_000).await;
    }
    let measured: f64 = {
        use fred::interfaces::HashesInterface;
        let v: String = app
            .redis
            .hget(flashsale::keys::SaleKeys::new(sale).meta(), "measured_rate")
            .await
            .unwrap();
        v.parse().unwrap()
    };
    assert!(measured > 0.0);
    let body = standing(&app, sale, &format!("{run}-299")).await;
    let position = body["position"].as_u64().unwrap();
    assert_eq!(position, 300 - 40);
    let expected = (position as f64 / measured).ceil() as u64;
    assert_eq!(
        body["eta_seconds"].as_u64().unwrap(),
        expected,
        "ETA = position / measured rate ({measured}/s)"
    );
}

#[tokio::test]
async fn stats_show_the_measured_admission_rate_that_etas_come_from() {
    let app = TestApp::spawn().await;
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 1000}], "release_rate": 100, "release_interval_ms": 100}))
        .await;
    let organizer = app.organizer("org-1");
    let stats = || async {
        let res = app
            .get(&format!("/v1/sales/{sale}/stats"), Some(&organizer))
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<Value>().await.unwrap()
    };
    assert_eq!(stats().await["measured_rate"], 0.0, "no tick yet");
    let run = unique("rate");
    for i in 0..300 {
        app.join(sale, &format!("{run}-{i}")).await;
    }
    for _ in 0..4 {
        app.tick(sale, 300_000).await;
    }
    let measured = stats().await["measured_rate"].as_f64().unwrap();
    // A tick admits at most one interval's worth, and ticks are at least an
    // interval apart: the measure never passes the configured rate.
    assert!(
        measured > 0.0 && measured <= 100.0,
        "measured {measured}/s at 100/s"
    );
    let body = standing(&app, sale, &format!("{run}-299")).await;
    let position = body["position"].as_u64().unwrap();
    assert_eq!(
        body["eta_seconds"].as_u64().unwrap(),
        (position as f64 / measured).ceil() as u64,
        "the buyers' ETA comes from the rate the organizer sees"
    );
}

#[tokio::test]
async fn admission_stops_at_the_stock_and_sold_out_is_told_to_everyone_waiting() {
    let app = TestApp::spawn().await;
    // No headroom: admission stops at the stock itself.
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 2}], "per_user_limit": 2, "admit_headroom_percent": 0}))
        .await;
    let run = unique("so");
    let buyers: Vec<String> = (0..5).map(|i| format!("{run}-{i}")).collect();
    for b in &buyers {
        app.join(sale, b).await;
    }
    let tick = app.tick(sale, 300_000).await;
    assert_eq!(tick.admitted, 2, "no more active buyers than tickets");
    let pass = standing(&app, sale, &buyers[0]).await["pass"]
        .as_str()
        .unwrap()
        .to_owned();
    let r: Value = app
        .hold_with_pass(sale, &buyers[0], &pass, "A", 2, None)
        .await
        .json()
        .await
        .unwrap();
    // Held but not confirmed: the tickets may come back, so the line keeps
    // its places, waitlisted.
    let tick = app.tick(sale, 300_000).await;
    assert!(tick.waitlist && !tick.sold_out, "{tick:?}");
    assert_eq!(
        without_poll_after(standing(&app, sale, &buyers[4]).await),
        json!({"state": "waitlisted", "position": 3})
    );
    // A newcomer joins the waitlist, behind them.
    let late = unique("late");
    assert_eq!(
        without_poll_after(app.join(sale, &late).await.json::<Value>().await.unwrap()),
        json!({"state": "waitlisted", "position": 4})
    );

    assert_eq!(
        app.confirm(r["id"].as_str().unwrap(), &buyers[0])
            .await
            .status(),
        StatusCode::OK
    );
    let tick = app.tick(sale, 300_000).await;
    assert!(tick.sold_out);
    assert_eq!(tick.admitted, 0);
    for b in &buyers[2..] {
        assert_eq!(standing(&app, sale, b).await, json!({"state": "sold_out"}));
    }
    assert_eq!(
        standing(&app, sale, &late).await,
        json!({"state": "sold_out"})
    );
    // A newcomer is told sold_out, and so is the newcomer's next poll: the
    // answer is final, not an invitation to join again.
    let newcomer = unique("newcomer");
    assert_eq!(
        app.join(sale, &newcomer)
            .await
            .json::<Value>()
            .await
            .unwrap(),
        json!({"state": "sold_out"})
    );
    assert_eq!(
        standing(&app, sale, &newcomer).await,
        json!({"state": "sold_out"})
    );
    let read: Value = app
        .get(&format!("/v1/sales/{sale}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["state"], "sold_out");
}

#[tokio::test]
async fn one_tick_admits_thousands_in_order_and_drops_thousands_that_lapsed_or_went_silent() {
    let app = TestApp::spawn().await;
    // 25,000 a second in 100 ms ticks: 2,500 a tick, more than one slice of
    // the script's bulk commands (1,000).
    let sale = app
        .sale_id(
            json!({"zones": [{"code": "A", "capacity": 100000}], "release_rate": 25000,
            "release_interval_ms": 100, "pass_ttl_seconds": 1}),
        )
        .await;
    let run = unique("bulk");
    let buyers: Vec<String> = (0..4000).map(|i| format!("{run}-{i:05}")).collect();
    for b in &buyers {
        flashsale::queue::join(&app.redis, &app.scripts, sale, b, b"seed")
            .await
            .unwrap();
    }
    let first = app.tick(sale, 300_000).await;
    assert_eq!((first.admitted, first.waits_ms.len()), (2500, 2500));
    assert_eq!((first.waiting, first.active), (1500, 2500));
    for b in [&buyers[0], &buyers[1234], &buyers[2499]] {
        assert_eq!(standing(&app, sale, b).await["state"], "admitted", "{b}");
    }
    // (Polling the last one keeps it from counting as silent below.)
    let last = standing(&app, sale, &buyers[3999]).await;
    assert_eq!(
        (&last["state"], &last["position"]),
        (&json!("waiting"), &json!(1500))
    );

    // Two seconds later every pass has lapsed, and the 1,499 others never
    // polled; the last one polls just before the tick.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    standing(&app, sale, &buyers[3999]).await;
    let second = app.tick(sale, 2_000).await;
    assert_eq!(
        (second.lapsed, second.abandoned, second.admitted),
        (2000, 1499, 1),
        "at most 1,000 lapsed passes and 1,000 unused turns a tick; every silent buyer \
         swept; the one who polled admitted"
    );
    assert_eq!((second.waiting, second.active), (0, 501));
    assert_eq!(
        standing(&app, sale, &buyers[2500]).await,
        json!({"state": "expired"})
    );
    assert_eq!(
        standing(&app, sale, &buyers[3998]).await,
        json!({"state": "expired"})
    );
    assert_eq!(
        standing(&app, sale, &buyers[3999]).await["state"],
        "admitted"
    );
    let expired: u64 = app
        .redis
        .scard(flashsale::keys::SaleKeys::new(sale).expired())
        .await
        .unwrap();
    assert_eq!(expired, 2000 + 1499);
}

#[tokio::test]
async fn silent_buyers_lose_their_place_and_unused_passes_expire() {
    let app = TestApp::spawn().await;
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 100}], "pass_ttl_seconds": 1, "max_active": 1}))
        .await;
    let (first, silent, patient) = (unique("first"), unique("silent"), unique("patient"));
    app.join(sale, &first).await;
    // Admit `first` before the others join, so they stay waiting.
    assert_eq!(app.tick(sale, 300_000).await.admitted, 1);
    app.join(sale, &silent).await;
    app.join(sale, &patient).await;

    // `first` never uses the pass; `silent` stops polling; `patient` polls.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    standing(&app, sale, &patient).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A two-second idle limit: `silent` (last seen at join) is over it,
    // `patient` (seen 0.7 s ago) is not; `first`'s one-second pass lapsed.
    let tick = app.tick(sale, 2_000).await;
    assert_eq!(tick.lapsed, 1);
    assert_eq!(tick.abandoned, 1);
    assert_eq!(
        tick.admitted, 1,
        "the lapsed pass freed the one active slot"
    );
    assert_eq!(
        standing(&app, sale, &first).await,
        json!({"state": "expired"})
    );
    assert_eq!(
        standing(&app, sale, &silent).await,
        json!({"state": "expired"})
    );
    assert_eq!(standing(&app, sale, &patient).await["state"], "admitted");
    // Rejoining after expiry queues again, at the back.
    assert_eq!(
        app.join(sale, &silent).await.json::<Value>().await.unwrap()["state"],
        "waiting"
    );
}

#[tokio::test]
async fn a_queue_pass_is_bound_to_its_buyer_and_sale_and_checked_every_way() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let other_sale = app.sale_id(json!({})).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let pass = app.pass_for(sale, &alice).await;
    app.pass_for(other_sale, &bob).await;

    // The pass's header names its key, published in the JWKS.
    let jwks: Value = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&pass).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let kid = header.kid.unwrap();
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == kid && k["crv"] == "Ed25519"));

    let refused = |who: &str, pass: &str, on: SaleId| {
        let (who, pass) = (who.to_owned(), pass.to_owned());
        let app = &app;
        async move { app.hold_with_pass(on, &who, &pass, "A", 1, None).await }
    };
    // Another account, another sale.
    assert_problem(
        refused(&bob, &pass, sale).await,
        StatusCode::FORBIDDEN,
        "pass_invalid",
    )
    .await;
    assert_problem(
        refused(&alice, &pass, other_sale).await,
        StatusCode::FORBIDDEN,
        "pass_invalid",
    )
    .await;
    // No pass at all.
    let res = app
        .post(
            &format!("/v1/sales/{sale}/reservations"),
            Some(&app.buyer(&alice)),
            json!({"zone": "A", "quantity": 1}),
        )
        .await;
    assert_problem(res, StatusCode::FORBIDDEN, "pass_required").await;
    // Expired: signed by the service's own key, but past its exp.
    let now = unix_now();
    let claims = |exp: u64| PassClaims {
        sub: alice.clone(),
        sale: sale.to_string(),
        iat: now - 600,
        exp,
        jti: "j".into(),
    };
    let expired = app.passes.sign(&claims(now - 60)).unwrap();
    assert_problem(
        refused(&alice, &expired, sale).await,
        StatusCode::FORBIDDEN,
        "pass_expired",
    )
    .await;
    // Forged: right claims, another key under the same kid.
    let forger = PassKeys::new(SigningKey::generate(kid.clone()), vec![]).unwrap();
    let forged = forger.sign(&claims(now + 600)).unwrap();
    assert_problem(
        refused(&alice, &forged, sale).await,
        StatusCode::FORBIDDEN,
        "pass_invalid",
    )
    .await;
    // alg: none.
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": kid})),
        b64(serde_json::to_value(claims(now + 600)).unwrap())
    );
    assert_problem(
        refused(&alice, &unsigned, sale).await,
        StatusCode::FORBIDDEN,
        "pass_invalid",
    )
    .await;
    // An access token is not a queue pass.
    let access = app.buyer(&alice);
    assert_problem(
        refused(&alice, &access, sale).await,
        StatusCode::FORBIDDEN,
        "pass_invalid",
    )
    .await;

    // The genuine pass works; once alice leaves the queue it is revoked.
    assert_eq!(
        refused(&alice, &pass, sale).await.status(),
        StatusCode::CREATED
    );
    app.http
        .delete(app.url(&format!("/v1/sales/{sale}/queue")))
        .bearer_auth(app.buyer(&alice))
        .send()
        .await
        .unwrap();
    assert_problem(
        refused(&alice, &pass, sale).await,
        StatusCode::FORBIDDEN,
        "pass_invalid",
    )
    .await;
    assert_eq!(
        app.stock(sale, "A").await,
        (9, 1, 0, 10),
        "only the genuine hold took stock"
    );

    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for reason in [
        "other_buyer",
        "other_sale",
        "missing",
        "expired",
        "invalid",
        "revoked",
    ] {
        assert!(
            metrics.contains(&format!(
                "flashsale_pass_refusals_total{{reason=\"{reason}\"}}"
            )),
            "no refusal counted for {reason}"
        );
    }
}

#[tokio::test]
async fn stats_and_the_prequeue_export_are_for_the_sales_own_organizer() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let buyer = unique("s");
    let r: Value = app
        .hold(sale, &buyer, "A", 2, None)
        .await
        .json()
        .await
        .unwrap();
    let pass = app.pass_for(sale, &buyer).await;
    let stats: Value = app
        .get(
            &format!("/v1/sales/{sale}/stats"),
            Some(&app.organizer("org-1")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["active"], 1, "holding: still active");
    app.confirm(r["id"].as_str().unwrap(), &buyer).await;
    let stats: Value = app
        .get(
            &format!("/v1/sales/{sale}/stats"),
            Some(&app.organizer("org-1")),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["admitted_total"], 1);
    assert_eq!(
        stats["active"], 0,
        "a confirmation finishes the buyer's turn"
    );
    // The pass is spent: buying more means queueing again.
    let res = app.hold_with_pass(sale, &buyer, &pass, "A", 1, None).await;
    assert_problem(res, StatusCode::FORBIDDEN, "pass_invalid").await;
    assert_eq!(stats["waiting"], 0);
    assert_eq!(
        stats["zones"][0],
        json!({"code": "A", "capacity": 10, "available": 8, "held": 0, "confirmed": 2, "persisted": 0})
    );
    for path in [
        format!("/v1/sales/{sale}/stats"),
        format!("/v1/sales/{sale}/prequeue"),
    ] {
        assert_problem(
            app.get(&path, Some(&app.organizer("org-2"))).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_problem(
            app.get(&path, Some(&app.buyer("org-1"))).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
}

/// A status without its `poll_after_ms` (a server's choice, with jitter),
/// after checking it is there and in its bounds.
fn without_poll_after(mut status: Value) -> Value {
    let after = status["poll_after_ms"].as_u64().expect("poll_after_ms");
    assert!((1_000..=60_000).contains(&after), "{status}");
    status.as_object_mut().unwrap().remove("poll_after_ms");
    status
}

/// A pass as `standing` shows it.
fn pass_of(body: &Value) -> String {
    body["pass"].as_str().expect("admitted").to_owned()
}

#[tokio::test]
async fn a_ticket_that_comes_back_goes_to_the_waitlist_in_order_within_one_tick() {
    let app = TestApp::spawn().await;
    // No headroom: one returned ticket admits exactly one buyer.
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 2}], "per_user_limit": 1, "admit_headroom_percent": 0}))
        .await;
    let run = unique("wl");
    let buyers: Vec<String> = (0..5).map(|i| format!("{run}-{i}")).collect();
    for b in &buyers {
        app.join(sale, b).await;
    }
    assert_eq!(app.tick(sale, 300_000).await.admitted, 2);
    let mut holds = Vec::new();
    for b in &buyers[..2] {
        let pass = pass_of(&standing(&app, sale, b).await);
        let res = app.hold_with_pass(sale, b, &pass, "A", 1, None).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        holds.push(
            res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.tick(sale, 300_000).await;
    for (i, b) in buyers[2..].iter().enumerate() {
        assert_eq!(
            without_poll_after(standing(&app, sale, b).await),
            json!({"state": "waitlisted", "position": i + 1})
        );
    }

    // The first holder cancels: the ticket goes to the head of the
    // waitlist at the next tick, and only to them.
    assert_eq!(
        app.cancel(&holds[0], &buyers[0]).await.status(),
        StatusCode::OK
    );
    let tick = app.tick(sale, 300_000).await;
    assert_eq!(tick.admitted, 1, "{tick:?}");
    assert_eq!(standing(&app, sale, &buyers[2]).await["state"], "admitted");
    // The returned ticket is not held yet: the line behind is waiting again,
    // its head next.
    let next = standing(&app, sale, &buyers[3]).await;
    assert_eq!(
        (&next["state"], &next["position"]),
        (&json!("waiting"), &json!(1))
    );
    let pass = pass_of(&standing(&app, sale, &buyers[2]).await);
    let res = app
        .hold_with_pass(sale, &buyers[2], &pass, "A", 1, None)
        .await;
    assert_eq!(
        res.status(),
        StatusCode::CREATED,
        "the returned ticket is theirs"
    );
}

#[tokio::test]
async fn headroom_admits_more_buyers_than_tickets_and_those_who_find_none_are_told_sold_out() {
    let app = TestApp::spawn().await;
    // The default headroom, 100%: twice as many buyers yet to hold as
    // tickets available.
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 2}], "per_user_limit": 1}))
        .await;
    let run = unique("hr");
    let buyers: Vec<String> = (0..6).map(|i| format!("{run}-{i}")).collect();
    for b in &buyers {
        app.join(sale, b).await;
    }
    assert_eq!(app.tick(sale, 300_000).await.admitted, 4);
    for b in &buyers[..4] {
        assert_eq!(standing(&app, sale, b).await["state"], "admitted", "{b}");
    }
    assert_eq!(standing(&app, sale, &buyers[4]).await["state"], "waiting");

    // The first two to hold get the tickets; the third finds none.
    for b in &buyers[..2] {
        let pass = pass_of(&standing(&app, sale, b).await);
        let res = app.hold_with_pass(sale, b, &pass, "A", 1, None).await;
        assert_eq!(res.status(), StatusCode::CREATED, "{b}");
    }
    let pass = pass_of(&standing(&app, sale, &buyers[2]).await);
    assert_problem(
        app.hold_with_pass(sale, &buyers[2], &pass, "A", 1, None)
            .await,
        StatusCode::CONFLICT,
        "sold_out",
    )
    .await;

    // Nothing available: no one more is admitted.
    assert_eq!(app.tick(sale, 300_000).await.admitted, 0);
    assert_eq!(
        without_poll_after(standing(&app, sale, &buyers[4]).await),
        json!({"state": "waitlisted", "position": 1})
    );
}

#[tokio::test]
async fn an_admitted_buyer_who_holds_nothing_loses_the_turn_to_the_next() {
    let app = TestApp::spawn().await;
    // No headroom: the next buyer waits for the idle turn to end.
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 1}], "admit_idle_seconds": 5, "admit_headroom_percent": 0}))
        .await;
    let (idle, next) = (unique("idle"), unique("next"));
    app.join(sale, &idle).await;
    app.join(sale, &next).await;
    assert_eq!(
        app.tick(sale, 300_000).await.admitted,
        1,
        "one ticket, one turn"
    );
    assert_eq!(standing(&app, sale, &idle).await["state"], "admitted");
    assert_eq!(standing(&app, sale, &next).await["state"], "waiting");

    // `idle` never holds: five seconds on, the turn is over (the pass had
    // ten minutes to go) and `next` is admitted at the following tick.
    let mut admitted_next = false;
    for _ in 0..100 {
        app.tick(sale, 300_000).await;
        if standing(&app, sale, &next).await["state"] == "admitted" {
            admitted_next = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        admitted_next,
        "the next buyer was admitted within ten seconds"
    );
    assert_eq!(
        standing(&app, sale, &idle).await,
        json!({"state": "expired"})
    );
    let pass = pass_of(&standing(&app, sale, &next).await);
    let res = app.hold_with_pass(sale, &next, &pass, "A", 1, None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_buyer_who_cancels_and_holds_nothing_else_finishes_and_frees_the_ticket_at_once() {
    let app = TestApp::spawn().await;
    // No headroom: the next buyer is admitted only once the ticket is back.
    let sale = app
        .sale_id(json!({"zones": [{"code": "A", "capacity": 1}], "admit_idle_seconds": 5, "admit_headroom_percent": 0}))
        .await;
    let (canceller, next) = (unique("canceller"), unique("next"));
    app.join(sale, &canceller).await;
    app.join(sale, &next).await;
    app.tick(sale, 300_000).await;
    let before = standing(&app, sale, &canceller).await;
    let res = app
        .hold_with_pass(sale, &canceller, &pass_of(&before), "A", 1, None)
        .await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.cancel(&id, &canceller).await.status(), StatusCode::OK);

    // The ticket is back and the canceller does not count against it: the
    // next buyer is admitted at the next tick.
    assert_eq!(app.tick(sale, 300_000).await.admitted, 1);
    assert_eq!(standing(&app, sale, &next).await["state"], "admitted");
    // The canceller's turn now ends within admit_idle_seconds, not when the
    // ten-minute pass would have.
    let after = standing(&app, sale, &canceller).await;
    let until = |b: &Value| {
        chrono::DateTime::parse_from_rfc3339(b["pass_expires_at"].as_str().unwrap()).unwrap()
    };
    assert!(until(&after) < until(&before), "{before} then {after}");
    assert!(until(&after) <= chrono::Utc::now() + chrono::Duration::seconds(6));
    let mut finished = false;
    for _ in 0..100 {
        app.tick(sale, 300_000).await;
        if standing(&app, sale, &canceller).await == json!({"state": "expired"}) {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(finished, "the canceller's turn ended within ten seconds");
}
