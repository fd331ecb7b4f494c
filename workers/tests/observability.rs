//! What the workers show of themselves: the stock gauges on `/metrics`, and
//! `GET /live`, which fails when a worker loop stops finishing its steps.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use flashsale_workers::{archiver, reconciler::Reconciler, sink::Sink};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The stock lines of `sale` in the reconciler's exposition.
fn stock_lines(reconciler: &Reconciler, sale: &str) -> Vec<String> {
    reconciler
        .render_stock()
        .lines()
        .filter(|l| l.contains(sale))
        .map(str::to_owned)
        .collect()
}

/// Each live sale's zones show available, held and confirmed tickets, with
/// `# HELP` lines; once the sale is archived its series are gone.
#[tokio::test]
async fn stock_gauges_follow_each_zone_and_leave_with_the_archived_sale() {
    let api = Api::spawn().await;
    let sale = api
        .sale_id(json!({"zones": [{"code": "A", "capacity": 10}, {"code": "B", "capacity": 5}]}))
        .await;
    let [alice, bob] = ["alice", "bob"].map(|n| format!("{n}-{sale}"));
    let held: Value = api
        .hold(sale, &alice, "A", 2, None)
        .await
        .json()
        .await
        .unwrap();
    let alice_id = held["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.confirm(&alice_id, &alice).await.status(),
        StatusCode::OK
    );
    let held: Value = api
        .hold(sale, &bob, "B", 1, None)
        .await
        .json()
        .await
        .unwrap();
    let bob_id = held["id"].as_str().unwrap().to_owned();

    let reconciler = Reconciler::default();
    reconciler
        .run_once(&api.redis, &api.scripts, &api.db)
        .await
        .unwrap();
    let text = reconciler.render_stock();
    assert!(
        text.contains("# HELP flashsale_stock_available Tickets on sale"),
        "{text}"
    );
    assert!(text.contains("# TYPE flashsale_stock_held gauge"), "{text}");
    let s = sale.to_string();
    let mut lines = stock_lines(&reconciler, &s);
    lines.sort();
    let expected =
        |name: &str, zone: &str, v: i64| format!("{name}{{sale=\"{s}\",zone=\"{zone}\"}} {v}");
    let mut want = vec![
        expected("flashsale_stock_available", "A", 8),
        expected("flashsale_stock_available", "B", 4),
        expected("flashsale_stock_confirmed", "A", 2),
        expected("flashsale_stock_confirmed", "B", 0),
        expected("flashsale_stock_held", "A", 0),
        expected("flashsale_stock_held", "B", 1),
    ];
    want.sort();
    assert_eq!(lines, want);

    // Bob lets go, the sale closes, the sink records it, the archiver
    // moves it out of Redis: its series go with it.
    assert_eq!(api.cancel(&bob_id, &bob).await.status(), StatusCode::OK);
    let res = api
        .patch(
            &format!("/v1/sales/{sale}"),
            Some(&api.organizer("org-1")),
            json!({"state": "closed"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    Sink::new("observability-test", 100, 30_000)
        .drain(&api.redis, &api.scripts, &api.db, sale)
        .await
        .unwrap();
    assert_eq!(
        archiver::archive(&api.redis, &api.scripts, &api.db, sale)
            .await
            .unwrap(),
        archiver::Step::Archived
    );
    reconciler
        .run_once(&api.redis, &api.scripts, &api.db)
        .await
        .unwrap();
    assert_eq!(stock_lines(&reconciler, &s), Vec::<String>::new());
}

/// `GET url` until its answer is `wanted`, for at most `within`; the last
/// answer's status, content type and body.
async fn live_until(
    url: &str,
    wanted: impl Fn(StatusCode, &Value) -> bool,
    within: Duration,
) -> (StatusCode, String, Value) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(res) = http.get(url).send().await {
            let got = res.status();
            let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
            let body: Value = res.json().await.unwrap();
            if wanted(got, &body) || Instant::now() > deadline {
                return (got, kind, body);
            }
        }
        assert!(Instant::now() <= deadline, "no answer from {url}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Redis that takes commands and never answers (stopped with SIGSTOP)
/// stalls the loops that wait on it: `/live` answers 503 naming them, and
/// 200 again once Redis answers.
#[tokio::test]
#[allow(unsafe_code, reason = "libc::kill to stop and resume the server")]
async fn live_fails_naming_the_loops_that_stopped_finishing_steps_and_recovers() {
    let (_, db_url) = fresh_database().await;
    let redis = PrivateRedis::start();
    let mut workers = Workers {
        child: std::process::Command::new(env!("CARGO_BIN_EXE_flashsale-workers"))
            .env("REDIS_URL", redis.url())
            .env("DATABASE_URL", &db_url)
            .env("WORKERS_METRICS_ADDR", "127.0.0.1:0")
            .env("WORKER_STEP_TIMEOUT_SECONDS", "1")
            // Commands wait for a stopped Redis far longer than a step may run.
            .env("STORE_TIMEOUT_MS", "60000")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "error,flashsale_workers=info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    };
    let lines = lines_until(
        &mut workers.child,
        "flashsale workers running",
        Duration::from_secs(30),
    );
    let line: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let live = format!("http://{}/live", line["metrics"].as_str().unwrap());

    let (status, _, body) =
        live_until(&live, |s, _| s == StatusCode::OK, Duration::from_secs(30)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "live"}));
    // The workers describe their metrics too, and say which build runs.
    let metrics = reqwest::get(live.replace("/live", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("# HELP flashsale_build_info"), "{metrics}");
    assert!(
        metrics.contains("flashsale_build_info{version="),
        "{metrics}"
    );

    let pid = redis.pid().unwrap() as i32;
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    // The loops whose steps wait on Redis alone are named once each has
    // gone two intervals and the step timeout without finishing a step.
    let named = |body: &Value, worker: &str| {
        body["stalled"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["worker"] == worker))
    };
    let (status, kind, body) = live_until(
        &live,
        |s, body| {
            s == StatusCode::SERVICE_UNAVAILABLE
                && named(body, "expirer")
                && named(body, "releaser")
        },
        Duration::from_secs(30),
    )
    .await;
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(kind, "application/problem+json");
    assert_eq!(body["code"], "worker_stalled");
    for worker in ["expirer", "releaser"] {
        assert!(named(&body, worker), "{worker} not named: {body}");
        assert!(body["detail"].as_str().unwrap().contains(worker), "{body}");
    }

    let (status, _, body) =
        live_until(&live, |s, _| s == StatusCode::OK, Duration::from_secs(30)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "live again once Redis answers: {body}"
    );
}
