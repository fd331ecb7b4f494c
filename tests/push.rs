//! The buyer's queue as server-sent events (`GET .../queue/events`),
//! through a real HTTP client against the real server, Redis and Postgres:
//! the status at once, positions as buyers ahead leave or are admitted, the
//! pause, admission with a pass that works, final states that end the
//! stream, refusals before the stream, one watcher per sale however many
//! streams follow it, and every stream ending when the server stops.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::{assert_problem, TestApp};
use flashsale::ids::SaleId;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Nothing in these tests should take this long; a stream that stays
/// silent past it has failed.
const PATIENCE: Duration = Duration::from_secs(20);

/// One open event stream, read as a browser's EventSource reads it.
struct Events {
    res: reqwest::Response,
    buf: String,
    /// `retry:` fields seen.
    retry: Vec<u64>,
}

impl Events {
    /// Opens the buyer's stream (with a client that has no overall timeout:
    /// the stream lasts as long as it must).
    async fn open(app: &TestApp, sale: SaleId, buyer: &str) -> Self {
        let res = request(app, sale, Some(&app.buyer(buyer))).await;
        assert_eq!(res.status(), StatusCode::OK, "the stream opens");
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(ct, "text/event-stream");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        assert_eq!(res.headers()["cache-control"], "no-cache");
        Self {
            res,
            buf: String::new(),
            retry: Vec::new(),
        }
    }

    /// The next `status` event's body; `None` once the server ends the
    /// stream.
    async fn next(&mut self) -> Option<Value> {
        tokio::time::timeout(PATIENCE, self.next_event())
            .await
            .expect("an event, or the end of the stream")
    }

    async fn next_event(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if let Some(v) = line.strip_prefix("retry:") {
                        self.retry.push(v.trim().parse().unwrap());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment, or a bare retry
                }
                assert_eq!(name.as_deref(), Some("status"), "event name in {block:?}");
                return Some(serde_json::from_str(&data).unwrap());
            }
            match self.res.chunk().await.expect("the stream reads cleanly") {
                Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => {
                    assert!(self.buf.trim().is_empty(), "a cut event: {:?}", self.buf);
                    return None;
                }
            }
        }
    }

    /// Events until one whose `state` is `state`, which it returns.
    async fn until_state(&mut self, state: &str) -> Value {
        loop {
            let event = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before `{state}`"));
            if event["state"] == state {
                return event;
            }
        }
    }

    /// Waiting events until one at `position`; every one on the way is a
    /// waiting status with a position no lower than it.
    async fn until_position(&mut self, position: u64) -> Value {
        loop {
            let event = self.next().await.expect("a waiting status");
            assert_eq!(event["state"], "waiting", "{event}");
            let at = event["position"].as_u64().unwrap();
            assert!(at >= position, "position {at} overshot {position}");
            if at == position {
                return event;
            }
        }
    }
}

async fn request(app: &TestApp, sale: SaleId, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(app.url(&format!("/v1/sales/{sale}/queue/events")))
        .header("accept", "text/event-stream");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn join(app: &TestApp, sale: SaleId, buyer: &str) {
    assert_eq!(app.join(sale, buyer).await.status(), StatusCode::ACCEPTED);
}

async fn patch(app: &TestApp, sale: SaleId, body: Value) {
    let token = app.organizer("org-1");
    let res = app
        .patch(&format!("/v1/sales/{sale}"), Some(&token), body)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// Waits for `done`, checking often, for at most [`PATIENCE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_first_event_is_the_status_then_positions_fall_as_buyers_ahead_leave_or_are_admitted() {
    let app = TestApp::spawn().await;
    // One buyer admitted a tick.
    let sale = app
        .sale_id(json!({"release_rate": 10, "release_interval_ms": 100}))
        .await;
    let buyers: Vec<String> = (0..4).map(|i| unique(&format!("b{i}"))).collect();
    for b in &buyers {
        join(&app, sale, b).await;
    }
    let last = &buyers[3];
    let mut events = Events::open(&app, sale, last).await;
    let first = events.next().await.unwrap();
    let polled: Value = app.poll(sale, last).await.json().await.unwrap();
    assert_eq!(first["state"], "waiting");
    assert_eq!(first["position"], 4);
    assert_eq!(first["position"], polled["position"]);
    assert!(first["poll_after_ms"].as_u64().unwrap() >= 1000, "{first}");
    assert!(first["eta_seconds"].is_u64(), "{first}");
    assert_eq!(
        events.retry.len(),
        1,
        "the first event says when to reconnect"
    );

    // The first buyer gives up the place: one fewer ahead.
    let res = app
        .http
        .delete(app.url(&format!("/v1/sales/{sale}/queue")))
        .bearer_auth(app.buyer(&buyers[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    events.until_position(3).await;

    // The releaser admits the next one: one fewer again.
    let tick = app.tick(sale, 300_000).await;
    assert_eq!(tick.admitted, 1);
    events.until_position(2).await;

    // The organizer pauses the release: told at once, position kept.
    patch(&app, sale, json!({"paused": true})).await;
    let paused = events.next().await.unwrap();
    assert_eq!(paused["state"], "waiting");
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["position"], 2);
    patch(&app, sale, json!({"paused": false})).await;
    let resumed = events.next().await.unwrap();
    assert_eq!(resumed["state"], "waiting");
    assert!(resumed.get("paused").is_none(), "{resumed}");
}

#[tokio::test]
async fn admission_is_pushed_with_a_pass_that_holds_and_the_stream_then_ends() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let buyer = unique("buyer");
    join(&app, sale, &buyer).await;
    let mut events = Events::open(&app, sale, &buyer).await;
    assert_eq!(events.next().await.unwrap()["state"], "waiting");

    // One release tick, as the releaser runs it.
    let tick = app.tick(sale, 300_000).await;
    assert_eq!(tick.admitted, 1);
    let admitted = events.until_state("admitted").await;
    let pass = admitted["pass"].as_str().unwrap();
    assert!(admitted["pass_expires_at"].is_string());
    let polled: Value = app.poll(sale, &buyer).await.json().await.unwrap();
    assert_eq!(
        polled["pass"], admitted["pass"],
        "the same pass as a poll gets"
    );

    let hold = app.hold_with_pass(sale, &buyer, pass, "A", 2, None).await;
    assert_eq!(hold.status(), StatusCode::CREATED, "the pushed pass holds");
    assert_eq!(
        events.next().await,
        None,
        "admission is final: the stream ends"
    );
}

#[tokio::test]
async fn a_closed_sale_is_pushed_as_sold_out_and_ends_the_stream() {
    let app = TestApp::spawn().await;
    let sale = app
        .sale_id(json!({"release_rate": 1, "release_interval_ms": 1000}))
        .await;
    let (first, second) = (unique("first"), unique("second"));
    join(&app, sale, &first).await;
    join(&app, sale, &second).await;
    let mut events = Events::open(&app, sale, &second).await;
    assert_eq!(events.next().await.unwrap()["position"], 2);

    patch(&app, sale, json!({"state": "closed"})).await;
    let last = events.until_state("sold_out").await;
    assert_eq!(last, json!({"state": "sold_out"}));
    assert_eq!(events.next().await, None);

    // Reconnecting hears the final status once more, and the end.
    let mut again = Events::open(&app, sale, &second).await;
    assert_eq!(again.next().await.unwrap()["state"], "sold_out");
    assert_eq!(again.next().await, None);
}

#[tokio::test]
async fn the_stream_is_refused_as_the_status_is_before_it_starts() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let buyer = unique("buyer");

    let res = request(&app, sale, None).await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let res = request(&app, sale, Some("not-a-token")).await;
    assert_problem(res, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let res = request(&app, sale, Some(&app.buyer(&buyer))).await;
    assert_problem(res, StatusCode::NOT_FOUND, "not_in_queue").await;
    let res = request(&app, SaleId::new(), Some(&app.buyer(&buyer))).await;
    assert_problem(res, StatusCode::NOT_FOUND, "sale_not_found").await;
    // A malformed sale id: what the status route answers.
    let get = |path: &str| {
        app.http
            .get(app.url(path))
            .bearer_auth(app.buyer(&buyer))
            .send()
    };
    let stream = get("/v1/sales/not-a-sale/queue/events").await.unwrap();
    let status = get("/v1/sales/not-a-sale/queue").await.unwrap();
    assert_eq!(stream.status(), status.status());
    let (stream, status): (Value, Value) =
        (stream.json().await.unwrap(), status.json().await.unwrap());
    assert_eq!(stream["code"], status["code"]);
    assert_eq!(app.state.push.streams(), 0, "no stream was opened");
}

#[tokio::test]
async fn many_streams_on_one_sale_share_one_watcher_which_stops_with_the_last() {
    let app = TestApp::spawn().await;
    let (one, two) = (app.sale_id(json!({})).await, app.sale_id(json!({})).await);
    let mut open = Vec::new();
    for i in 0..30 {
        let buyer = unique(&format!("b{i}"));
        join(&app, one, &buyer).await;
        let mut events = Events::open(&app, one, &buyer).await;
        assert_eq!(events.next().await.unwrap()["state"], "waiting");
        open.push(events);
    }
    assert_eq!(app.state.push.streams(), 30);
    assert_eq!(app.state.push.watchers(), 1, "one watcher for the sale");

    let buyer = unique("other");
    join(&app, two, &buyer).await;
    let mut other = Events::open(&app, two, &buyer).await;
    other.next().await.unwrap();
    assert_eq!(app.state.push.watchers(), 2, "one more for the other sale");

    // All 30 are told of one release tick that admits them all.
    let tick = app.tick(one, 300_000).await;
    assert_eq!(tick.admitted, 30);
    for events in &mut open {
        events.until_state("admitted").await;
        assert_eq!(events.next().await, None);
    }
    let push = app.state.push.clone();
    eventually("the first sale's watcher stops", || push.watchers() == 1).await;
    drop(other);
    eventually("the last watcher stops", || push.watchers() == 0).await;
    assert_eq!(push.streams(), 0);
}

#[tokio::test]
async fn every_stream_ends_when_the_server_begins_to_stop() {
    let app = TestApp::spawn().await;
    let sale = app.sale_id(json!({})).await;
    let mut open = Vec::new();
    for i in 0..5 {
        let buyer = unique(&format!("b{i}"));
        join(&app, sale, &buyer).await;
        let mut events = Events::open(&app, sale, &buyer).await;
        events.next().await.unwrap();
        open.push(events);
    }
    app.state.shutdown.cancel();
    for events in &mut open {
        assert_eq!(events.next().await, None, "the stream ends cleanly");
    }
    let buyer = unique("late");
    join(&app, sale, &buyer).await;
    let res = request(&app, sale, Some(&app.buyer(&buyer))).await;
    assert_problem(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let push = app.state.push.clone();
    eventually("the watcher stops", || push.watchers() == 0).await;
}
