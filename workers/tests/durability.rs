//! The durable record under the faults the order-independent design is for:
//! two sink replicas that apply one sale's entries out of order (one of them
//! dead, its entries claimed later), sink processes killed with kill -9 mid-
//! sale, a Redis restarted from an older file, and `flashsale restore
//! --freeze` under live traffic.
//!
//! After each, Postgres holds exactly what buyers were last told,
//! reservation by reservation; no zone is sold beyond capacity; Redis's
//! counters add up (capacity = available + held + confirmed) and agree with
//! Postgres; nothing is dead-lettered that could still apply; and a Redis
//! that went back in time stops selling (`503 sale_frozen`) until it is
//! restored, then sells again.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]
#![allow(clippy::print_stderr, reason = "a fault test reports what it measured")]

mod common;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::*;
use flashsale::{
    ids::{ReservationId, SaleId},
    inventory,
    keys::SaleKeys,
    outbox, recovery,
    scripts::Scripts,
};
use flashsale_workers::{
    reconciler::Reconciler,
    sink::{Sink, Written, GROUP, MAX_BACKOFF},
};
use fred::{
    clients::Pool,
    interfaces::{HashesInterface, StreamsInterface},
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Waits until `done` answers true; panics naming `what` after `limit`.
/// The limit only catches a hang: no outcome depends on how long it took.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every entry of the sale's stream has been delivered to a
/// sink and acknowledged: Postgres holds all it ever carried.
async fn drained(redis: &Pool, scripts: &Scripts, sale: SaleId) {
    eventually("the stream drains", Duration::from_secs(60), || async {
        outbox::position(redis, scripts, sale)
            .await
            .is_ok_and(|p| p.drained())
    })
    .await;
}

/// Consumer `consumer` of the sink group takes the next `n` entries of the
/// sale's stream and dies: they stay pending in its name.
async fn taken_by_dead_consumer(redis: &Pool, sale: SaleId, consumer: &str, n: usize) {
    let stream = SaleKeys::new(sale).stream();
    let _: Result<fred::types::Value, _> = redis.xgroup_create(&stream, GROUP, "0", true).await;
    let taken: fred::types::streams::XReadResponse<String, String, String, String> = redis
        .xreadgroup_map(GROUP, consumer, Some(n as u64), None, false, &stream, ">")
        .await
        .unwrap();
    assert_eq!(taken[&stream].len(), n);
}

/// Entries of the sale's stream pending in `consumer`'s name.
async fn pending_with(redis: &Pool, sale: SaleId, consumer: &str) -> i64 {
    // [count, lowest id, highest id, [[consumer, count], ...]]
    let summary: fred::types::Value = redis
        .xpending(SaleKeys::new(sale).stream(), GROUP, ())
        .await
        .unwrap();
    let consumers = summary.into_array().into_iter().nth(3);
    consumers
        .map(|c| c.into_array())
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.into_array())
        .find(|c| c.first().and_then(|n| n.as_string()).as_deref() == Some(consumer))
        .and_then(|c| c.get(1).and_then(|n| n.as_string()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A reservation's row: status and quantity.
async fn row(db: &PgPool, id: &ReservationId) -> Option<(String, i32)> {
    sqlx::query_as("SELECT status, quantity FROM reservations WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(db)
        .await
        .unwrap()
}

/// The zones' `sold` in Postgres, by zone.
async fn sold(db: &PgPool, sale: SaleId) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i32)>("SELECT code, sold FROM zones WHERE sale_id = $1")
        .bind(sale.0)
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|(z, s)| (z, i64::from(s)))
        .collect()
}

/// Every row of the sale: id -> (status, zone, quantity).
async fn rows(db: &PgPool, sale: SaleId) -> HashMap<String, (String, String, i32)> {
    sqlx::query_as::<_, (String, String, String, i32)>(
        "SELECT id, status, zone_code, quantity FROM reservations WHERE sale_id = $1",
    )
    .bind(sale.0)
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, status, zone, qty)| (id, (status, zone, qty)))
    .collect()
}

async fn dead_letters(redis: &Pool, sale: SaleId) -> u64 {
    redis
        .xlen(SaleKeys::new(sale).dead_letters())
        .await
        .unwrap()
}

/// Checks the record against itself and against Redis: `sold` is the sum of
/// the confirmed rows and never above capacity, and in Redis each zone's
/// capacity = available + held + confirmed, its confirmed equal to `sold`.
async fn assert_consistent(db: &PgPool, redis: &Pool, sale: SaleId) {
    let sold = sold(db, sale).await;
    let mut confirmed: HashMap<String, i64> = HashMap::new();
    for (status, zone, qty) in rows(db, sale).await.into_values() {
        if status == "confirmed" {
            *confirmed.entry(zone).or_default() += i64::from(qty);
        }
    }
    let live = flashsale::sales::live(redis, sale).await.unwrap().unwrap();
    for (zone, stock) in live.def.zones.iter().zip(&live.stock) {
        let s = sold[&zone.code];
        assert_eq!(
            s,
            confirmed.get(&zone.code).copied().unwrap_or(0),
            "zone {}: sold is the sum of its confirmed rows",
            zone.code
        );
        assert!(
            s <= i64::from(zone.capacity),
            "zone {} sold {s} of {}",
            zone.code,
            zone.capacity
        );
        assert_eq!(
            stock.capacity,
            stock.available + stock.held + stock.confirmed,
            "zone {}: conservation in Redis ({stock:?})",
            zone.code
        );
        assert_eq!(
            stock.confirmed, s,
            "zone {}: Redis and Postgres agree on what is sold",
            zone.code
        );
    }
}

/// The reconciler, as of Redis's sequence number, finds Redis and Postgres
/// apart by no more than what is in flight, whichever replica applied what.
async fn assert_no_drift(redis: &Pool, scripts: &Scripts, db: &PgPool, sale: SaleId) {
    let report = Reconciler::default()
        .check(redis, scripts, db, sale)
        .await
        .unwrap();
    assert!(
        report
            .zones
            .iter()
            .all(|z| (z.drift, z.oversold, z.conservation_gap) == (0, 0, 0)),
        "{report:?}"
    );
}

/// Sends one request; `None` when no answer came (a store down, a
/// connection cut).
async fn send(req: reqwest::RequestBuilder) -> Option<(StatusCode, Value)> {
    let res = req.send().await.ok()?;
    let status = res.status();
    Some((status, res.json().await.unwrap_or(Value::Null)))
}

/// The buyer's hold of `qty` in `zone`, with their pass and an idempotency
/// key, so a retry cannot hold twice.
async fn hold(
    api: &TestApp,
    sale: SaleId,
    user: &str,
    key: &str,
    zone: &str,
    qty: u32,
) -> Option<(StatusCode, Value)> {
    send(
        api.http
            .post(format!("{}/v1/sales/{sale}/reservations", api.base))
            .bearer_auth(api.buyer(user))
            .header("x-queue-pass", api.pass(sale, user))
            .header("idempotency-key", key)
            .json(&json!({"zone": zone, "quantity": qty})),
    )
    .await
}

/// `confirm` or `cancel` of the buyer's reservation.
async fn act(api: &TestApp, user: &str, id: &str, verb: &str) -> Option<(StatusCode, Value)> {
    send(
        api.http
            .post(format!("{}/v1/reservations/{id}/{verb}", api.base))
            .bearer_auth(api.buyer(user)),
    )
    .await
}

fn is_frozen(answer: &Option<(StatusCode, Value)>) -> bool {
    matches!(answer, Some((StatusCode::SERVICE_UNAVAILABLE, body)) if body["code"] == "sale_frozen")
}

/// Tries again while the answer is a 503 or none at all (a sale frozen for
/// a restore, a store down): what a client does with `Retry-After`. Bounded.
async fn persist<F, Fut>(what: &str, send: F) -> (StatusCode, Value)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<(StatusCode, Value)>>,
{
    for _ in 0..600 {
        match send().await {
            Some((status, body)) if status != StatusCode::SERVICE_UNAVAILABLE => {
                return (status, body)
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("{what}: still unavailable after 30 s");
}

#[tokio::test]
async fn a_confirmation_recorded_after_its_own_cancellation_leaves_the_reservation_cancelled() {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 10, 600).await;
    let (user, id) = confirmations(&redis, &scripts, sale, &format!("o-{sale}"), 1, "A", 2)
        .await
        .remove(0);
    // Sink replica "a" takes the confirmation and dies before writing it.
    taken_by_dead_consumer(&redis, sale, "a", 1).await;
    inventory::cancel(redis.next(), &scripts, &id, &user)
        .await
        .unwrap()
        .expect("cancelled");

    // Replica "b" sees only the cancellation: a tombstone, nothing sold.
    let b = Sink::new("b", 100, 60_000);
    let written = b.drain(&redis, &scripts, &db, sale).await.unwrap();
    assert_eq!(
        (written.cancelled, written.dead_lettered, written.retrying),
        (1, 0, 0)
    );
    assert_eq!(row(&db, &id).await, Some(("cancelled".into(), 2)));
    assert_eq!(sold(&db, sale).await["A"], 0);
    assert_no_drift(&redis, &scripts, &db, sale).await;

    // Later "b" claims the dead replica's confirmation: it changes nothing.
    let b = b.claim_idle_ms(0);
    let written = b.drain(&redis, &scripts, &db, sale).await.unwrap();
    assert_eq!((written.dead_lettered, written.retrying), (0, 0));
    assert_eq!(row(&db, &id).await, Some(("cancelled".into(), 2)));
    assert_eq!(sold(&db, sale).await["A"], 0);
    let (confirmed_at, cancelled_at): (bool, bool) = sqlx::query_as(
        "SELECT confirmed_at IS NOT NULL, cancelled_at IS NOT NULL FROM reservations WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        confirmed_at && cancelled_at,
        "the row says when it was bought and when cancelled"
    );
    assert_eq!(dead_letters(&redis, sale).await, 0);
    drained(&redis, &scripts, sale).await;
    assert_consistent(&db, &redis, sale).await;
    assert_no_drift(&redis, &scripts, &db, sale).await;
}

#[tokio::test]
async fn a_confirmation_refused_while_a_dead_sink_holds_the_cancellation_that_frees_its_seat_waits_and_is_recorded(
) {
    let (db, _) = fresh_database().await;
    let redis = redis(&redis_url()).await;
    let scripts = scripts();
    let sale = create_sale(
        &db,
        &redis,
        &scripts,
        json!({
            "name": "one seat",
            "zones": [{"code": "A", "capacity": 1}],
            "hold_ttl_seconds": 600,
            "release_rate": 100000,
            "release_interval_ms": 100
        }),
    )
    .await;
    let b = Sink::new("b", 100, 60_000);
    let (first, r1) = confirmations(&redis, &scripts, sale, &format!("one-{sale}"), 1, "A", 1)
        .await
        .remove(0);
    assert_eq!(
        b.drain(&redis, &scripts, &db, sale)
            .await
            .unwrap()
            .confirmed,
        1
    );
    inventory::cancel(redis.next(), &scripts, &r1, &first)
        .await
        .unwrap()
        .expect("cancelled");
    // The cancellation goes to replica "a", which dies with it.
    taken_by_dead_consumer(&redis, sale, "a", 1).await;
    // Redis has the seat back and sells it to a second buyer.
    let (_, r2) = confirmations(&redis, &scripts, sale, &format!("two-{sale}"), 1, "A", 1)
        .await
        .remove(0);

    // For Postgres the seat is still the first buyer's: refused, kept
    // pending to be tried again, not dead-lettered.
    let written = b.drain(&redis, &scripts, &db, sale).await.unwrap();
    assert_eq!(
        written,
        Written {
            confirmed: 0,
            cancelled: 0,
            dead_lettered: 0,
            retrying: 1
        }
    );
    // Tried again once its backoff has passed: refused again, still waiting.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let written = b.drain(&redis, &scripts, &db, sale).await.unwrap();
    assert_eq!((written.retrying, written.dead_lettered), (1, 0));
    assert_eq!(row(&db, &r2).await, None);
    assert_eq!(dead_letters(&redis, sale).await, 0);
    assert_no_drift(&redis, &scripts, &db, sale).await;

    // "b" claims the dead replica's cancellation; the confirmation goes
    // through on a later try (at most one backoff later).
    let b = b.claim_idle_ms(0);
    let mut total = Written::default();
    let started = Instant::now();
    while row(&db, &r2).await.is_none() {
        assert!(
            started.elapsed() < MAX_BACKOFF + Duration::from_secs(10),
            "the second buyer's confirmation is not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        total += b.drain(&redis, &scripts, &db, sale).await.unwrap();
    }
    assert_eq!(total.dead_lettered, 0);
    assert_eq!(row(&db, &r1).await, Some(("cancelled".into(), 1)));
    assert_eq!(row(&db, &r2).await, Some(("confirmed".into(), 1)));
    assert_eq!(sold(&db, sale).await["A"], 1);
    assert_eq!(dead_letters(&redis, sale).await, 0);
    drained(&redis, &scripts, sale).await;
    assert_consistent(&db, &redis, sale).await;
}

/// What a buyer was last told about their reservation.
#[derive(Debug)]
struct Told {
    id: String,
    zone: &'static str,
    qty: u32,
    cancelled: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sink_processes_one_killed_twice_mid_sale_leave_postgres_as_buyers_were_told() {
    const BUYERS: usize = 480;
    let private = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 1000, 600).await;
    let users: Vec<String> = (0..BUYERS).map(|i| format!("p-{i}")).collect();
    // Admitted before the workers (and their releaser) start.
    admit(&redis, &scripts, sale, &users).await;
    let api = Arc::new(TestApp::serve(&private.url(), &db_url).await);
    // Small batches and a short claim time: many batches in flight when a
    // process dies, and its entries claimed by the other within the run.
    let start = |consumer: &str| {
        Workers::start(
            &private.url(),
            &db_url,
            &[
                ("SINK_CONSUMER", consumer),
                ("SINK_BATCH", "20"),
                ("SINK_INTERVAL_MS", "50"),
                ("SINK_CLAIM_IDLE_MS", "1000"),
            ],
        )
    };
    let _b = start("b");
    let mut a = start("a");

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, user) in users.into_iter().enumerate() {
        let (api, done) = (api.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            // Spread over three seconds.
            tokio::time::sleep(Duration::from_millis((i % 60) as u64 * 50)).await;
            let zone = if i % 2 == 0 { "A" } else { "B" };
            let qty = 1 + u32::from(i % 3 == 0);
            let (status, body) = hold(&api, sale, &user, "k", zone, qty).await.unwrap();
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let id = body["id"].as_str().unwrap().to_owned();
            let (status, body) = act(&api, &user, &id, "confirm").await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            // A quarter change their mind a moment later.
            let cancelled = i % 4 == 0;
            if cancelled {
                tokio::time::sleep(Duration::from_millis((i % 5) as u64 * 20)).await;
                let (status, body) = act(&api, &user, &id, "cancel").await.unwrap();
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            done.fetch_add(1, SeqCst);
            Told {
                id,
                zone,
                qty,
                cancelled,
            }
        }));
    }
    // kill -9 replica "a" twice mid-run, each time starting a fresh process
    // (a new consumer) in its place, as an orchestrator would. The kill is
    // aimed between a batch's read and its acknowledgement when it can be
    // (entries pending in "a"'s name), so that "b" has entries to claim.
    let mut name = "a";
    let mut caught_mid_batch = 0;
    for (at, next) in [(BUYERS / 3, "a2"), (2 * BUYERS / 3, "a3")] {
        eventually("buyers get through", Duration::from_secs(60), || async {
            done.load(SeqCst) >= at
        })
        .await;
        let aiming = Instant::now();
        while aiming.elapsed() < Duration::from_secs(2) {
            if pending_with(&redis, sale, name).await > 0 {
                caught_mid_batch += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        a.kill_9();
        (name, a) = (next, start(next));
    }
    eprintln!("sink killed mid-batch {caught_mid_batch} times of 2");
    let mut told = Vec::new();
    for t in tasks {
        told.push(t.await.unwrap());
    }

    drained(&redis, &scripts, sale).await;
    let expected: HashMap<String, (String, String, i32)> = told
        .iter()
        .map(|t| {
            let status = if t.cancelled {
                "cancelled"
            } else {
                "confirmed"
            };
            (t.id.clone(), (status.into(), t.zone.into(), t.qty as i32))
        })
        .collect();
    let recorded = rows(&db, sale).await;
    let differ: Vec<_> = expected
        .iter()
        .filter(|(id, e)| recorded.get(*id) != Some(e))
        .map(|(id, e)| (id, e, recorded.get(id)))
        .collect();
    assert!(
        differ.is_empty(),
        "{} reservations differ from what buyers were told, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    assert_eq!(recorded.len(), expected.len(), "no row nobody was told of");
    let mut sold_told: HashMap<&str, i64> = HashMap::new();
    for t in told.iter().filter(|t| !t.cancelled) {
        *sold_told.entry(t.zone).or_default() += i64::from(t.qty);
    }
    let sold = sold(&db, sale).await;
    assert_eq!(
        (sold["A"], sold["B"]),
        (sold_told["A"], sold_told["B"]),
        "sold is what buyers kept"
    );
    assert_eq!(dead_letters(&redis, sale).await, 0);
    assert_consistent(&db, &redis, sale).await;
}

/// Buyers buying through the API on a few lanes, one after another: each
/// holds one ticket and confirms it, once (a buyer refused gives up).
struct Traffic {
    told: Arc<Mutex<Vec<String>>>,
    /// Answers `503 sale_frozen`.
    frozen: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Buyers between their hold and their confirmation's answer.
    busy: Arc<AtomicUsize>,
    lanes: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(api: Arc<TestApp>, sale: SaleId, buyers: Vec<String>, lanes: usize) -> Self {
        let t = Self {
            told: Arc::default(),
            frozen: Arc::default(),
            paused: Arc::default(),
            stop: Arc::default(),
            busy: Arc::default(),
            lanes: Vec::new(),
        };
        let buyers = Arc::new(buyers);
        let next = Arc::new(AtomicUsize::new(0));
        let lanes = (0..lanes)
            .map(|_| {
                let (api, buyers, next) = (api.clone(), buyers.clone(), next.clone());
                let (told, frozen, paused, stop, busy) = (
                    t.told.clone(),
                    t.frozen.clone(),
                    t.paused.clone(),
                    t.stop.clone(),
                    t.busy.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(SeqCst) {
                        // Busy first, then the pause flag: `pause` sets the
                        // flag, then waits for no one busy.
                        busy.fetch_add(1, SeqCst);
                        if paused.load(SeqCst) {
                            busy.fetch_sub(1, SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        let Some(user) = buyers.get(next.fetch_add(1, SeqCst)) else {
                            busy.fetch_sub(1, SeqCst);
                            return;
                        };
                        let held = hold(&api, sale, user, "k", "A", 1).await;
                        let answer = match &held {
                            Some((StatusCode::CREATED, body)) => {
                                let id = body["id"].as_str().unwrap().to_owned();
                                let answer = act(&api, user, &id, "confirm").await;
                                if matches!(answer, Some((StatusCode::OK, _))) {
                                    told.lock().unwrap().push(id);
                                }
                                answer
                            }
                            _ => held,
                        };
                        if is_frozen(&answer) {
                            frozen.fetch_add(1, SeqCst);
                        }
                        busy.fetch_sub(1, SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self { lanes, ..t }
    }

    fn told(&self) -> Vec<String> {
        self.told.lock().unwrap().clone()
    }

    /// Stops starting buyers and waits until none is mid-purchase.
    async fn pause(&self) {
        self.paused.store(true, SeqCst);
        eventually("buyers finish", Duration::from_secs(30), || async {
            self.busy.load(SeqCst) == 0
        })
        .await;
    }

    fn resume(&self) {
        self.paused.store(false, SeqCst);
    }

    /// Stops the lanes; every confirmation a buyer was told of.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, SeqCst);
        for lane in self.lanes {
            lane.await.unwrap();
        }
        Arc::try_unwrap(self.told).unwrap().into_inner().unwrap()
    }
}

/// Tickets confirmed in Redis across the sale's zones, and its stream
/// sequence number.
async fn redis_sold(redis: &Pool, sale: SaleId) -> (i64, i64) {
    let live = flashsale::sales::live(redis, sale).await.unwrap().unwrap();
    let seq: Option<i64> = redis.hget(SaleKeys::new(sale).meta(), "seq").await.unwrap();
    (
        live.stock.iter().map(|s| s.confirmed).sum(),
        seq.unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_from_an_older_file_freezes_the_sale_and_restore_keeps_every_confirmation()
{
    let mut private = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 5000, 600).await;
    let users: Vec<String> = (0..1500).map(|i| format!("r-{i}")).collect();
    admit(&redis, &scripts, sale, &users).await;
    let api = Arc::new(TestApp::serve(&private.url(), &db_url).await);
    let _workers = Workers::start(
        &private.url(),
        &db_url,
        &[("RECONCILE_INTERVAL_SECONDS", "1")],
    );
    let traffic = Traffic::start(api.clone(), sale, users, 4);
    eventually("buyers buy", Duration::from_secs(30), || async {
        traffic.told().len() >= 100
    })
    .await;

    // A backup mid-sale, then two more seconds of sales that the sink
    // records in Postgres.
    let snapshot = private.snapshot(&redis).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    traffic.pause().await;
    drained(&redis, &scripts, sale).await;
    let applied: i64 = sqlx::query_scalar("SELECT applied_seq FROM sales WHERE id = $1")
        .bind(sale.0)
        .fetch_one(&db)
        .await
        .unwrap();

    // Redis dies and comes back from the backup: it has forgotten the
    // last two seconds, which Postgres holds.
    private.kill();
    private.relaunch_from(&snapshot);
    let back = Instant::now();
    let seq_back = loop {
        let seq: Result<Option<i64>, _> = redis.hget(SaleKeys::new(sale).meta(), "seq").await;
        match seq {
            Ok(Some(seq)) => break Some(seq),
            _ if back.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => panic!("Redis does not answer after 30 s"),
        }
    };
    assert!(
        seq_back < Some(applied),
        "Redis went back: its seq {seq_back:?}, Postgres applied {applied}"
    );
    traffic.resume();

    // A buyer who was never admitted is turned away (403) while the sale
    // sells, and told `503 sale_frozen` once the rollback is detected.
    let probe = |user: &'static str| {
        let api = api.clone();
        async move { hold(&api, sale, user, "probe", "A", 1).await }
    };
    eventually("the sale is frozen", Duration::from_secs(30), || async {
        is_frozen(&probe("probe").await)
    })
    .await;
    eprintln!(
        "rollback detected {} ms after Redis came back from the older file",
        back.elapsed().as_millis()
    );
    // Frozen, it sells nothing: no confirmation, no cancellation reaches
    // Redis's counters or its stream while buyers keep trying.
    let at_freeze = redis_sold(&redis, sale).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(redis_sold(&redis, sale).await, at_freeze);
    assert!(is_frozen(&probe("newcomer").await));
    let told = traffic.stop().await;
    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert_eq!(report.frozen, Some("rollback"));

    // Restore needs no --freeze: the sale is frozen already. The workers'
    // sink brings the stream's last entries into Postgres first.
    let restored = recovery::restore(
        &db,
        &redis,
        &scripts,
        sale,
        recovery::Options {
            freeze: false,
            drain_wait: Duration::from_secs(60),
        },
    )
    .await
    .unwrap();

    // Every confirmation a buyer was told of stands, before and after the
    // rollback, and nothing else.
    let recorded: HashSet<String> = rows(&db, sale)
        .await
        .into_iter()
        .filter(|(_, (status, _, _))| status == "confirmed")
        .map(|(id, _)| id)
        .collect();
    let told_set: HashSet<String> = told.iter().cloned().collect();
    assert_eq!(told.len(), told_set.len());
    let missing: Vec<_> = told_set.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "{} confirmations buyers were told of are not in Postgres",
        missing.len()
    );
    assert_eq!(recorded, told_set);
    assert_eq!(restored.reservations, told.len());
    let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
    assert!(!live.frozen);
    assert_consistent(&db, &redis, sale).await;

    // The sale sells again, to a buyer who queues now.
    let after = vec!["after".to_owned()];
    admit_alongside_workers(&redis, &scripts, sale, &after).await;
    let (status, body) = hold(&api, sale, "after", "k", "A", 1).await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap();
    let (status, body) = act(&api, "after", id, "confirm").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    drained(&redis, &scripts, sale).await;
    assert!(rows(&db, sale).await.contains_key(id));
    assert_consistent(&db, &redis, sale).await;
    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert_eq!(report.frozen, None);
    assert!(report.zones.iter().all(|z| z.drift == 0), "{report:?}");
}

/// What buyers ran into on their way to a ticket.
#[derive(Default)]
struct Setbacks {
    /// Holds a restore dropped before their confirmation.
    holds_dropped: AtomicUsize,
    /// Buyers who had to queue again (a restore empties the queue).
    queued_again: AtomicUsize,
}

/// One buyer who keeps at it until they have a ticket: holds (a new
/// idempotency key per attempt), confirms, tries again when a restore
/// dropped the hold (404) or emptied the queue (403: queue again), and
/// waits out `503`s. Returns the reservation confirmed.
async fn buy_whatever_it_takes(
    api: &TestApp,
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    user: &str,
    setbacks: &Setbacks,
) -> String {
    for attempt in 0..20 {
        let key = format!("try-{attempt}");
        let (status, body) = persist("hold", || hold(api, sale, user, &key, "A", 1)).await;
        if status == StatusCode::FORBIDDEN {
            setbacks.queued_again.fetch_add(1, SeqCst);
            admit_alongside_workers(redis, scripts, sale, &[user.to_owned()]).await;
            continue;
        }
        assert_eq!(status, StatusCode::CREATED, "hold: {body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let (status, body) = persist("confirm", || act(api, user, &id, "confirm")).await;
        match status {
            StatusCode::OK => return id,
            StatusCode::NOT_FOUND => {
                setbacks.holds_dropped.fetch_add(1, SeqCst);
                continue;
            }
            _ => panic!("confirm: {status} {body}"),
        }
    }
    panic!("{user} could not buy in 20 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_with_freeze_under_live_traffic_loses_nothing_and_sells_nothing_twice() {
    const BUYERS: usize = 300;
    let private = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 1000, 600).await;
    let users: Vec<String> = (0..BUYERS).map(|i| format!("l-{i}")).collect();
    admit(&redis, &scripts, sale, &users).await;
    let api = Arc::new(TestApp::serve(&private.url(), &db_url).await);
    let _workers = Workers::start(
        &private.url(),
        &db_url,
        &[("RECONCILE_INTERVAL_SECONDS", "1")],
    );

    let told = Arc::new(Mutex::new(Vec::new()));
    let setbacks = Arc::new(Setbacks::default());
    let mut tasks = Vec::new();
    for (i, user) in users.into_iter().enumerate() {
        let (api, redis, scripts, told, setbacks) = (
            api.clone(),
            redis.clone(),
            scripts.clone(),
            told.clone(),
            setbacks.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Spread over four seconds.
            tokio::time::sleep(Duration::from_millis((i % 80) as u64 * 50)).await;
            let id = buy_whatever_it_takes(&api, &redis, &scripts, sale, &user, &setbacks).await;
            told.lock().unwrap().push(id);
        }));
    }
    eventually("buyers buy", Duration::from_secs(30), || async {
        told.lock().unwrap().len() >= BUYERS / 4
    })
    .await;
    let restored = recovery::restore(
        &db,
        &redis,
        &scripts,
        sale,
        recovery::Options {
            freeze: true,
            drain_wait: Duration::from_secs(60),
        },
    )
    .await
    .unwrap();
    let before_restore = told.lock().unwrap().len();
    assert!(restored.reservations <= before_restore);

    // Buyers buy again afterwards: everyone gets a ticket in the end.
    for t in tasks {
        t.await.unwrap();
    }
    let told = Arc::try_unwrap(told).unwrap().into_inner().unwrap();
    assert_eq!(told.len(), BUYERS);
    let fresh = "after-restore".to_owned();
    admit_alongside_workers(&redis, &scripts, sale, std::slice::from_ref(&fresh)).await;
    let last = buy_whatever_it_takes(&api, &redis, &scripts, sale, &fresh, &setbacks).await;
    eprintln!(
        "restore under traffic: {} of {BUYERS} buyers bought before it, {} holds dropped by it, {} buyers queued again",
        before_restore,
        setbacks.holds_dropped.load(SeqCst),
        setbacks.queued_again.load(SeqCst)
    );

    drained(&redis, &scripts, sale).await;
    let told_set: HashSet<&str> = told
        .iter()
        .map(String::as_str)
        .chain([last.as_str()])
        .collect();
    assert_eq!(told_set.len(), BUYERS + 1, "no reservation id twice");
    let recorded = rows(&db, sale).await;
    let confirmed: HashSet<&str> = recorded
        .iter()
        .filter(|(_, (status, _, _))| status == "confirmed")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        confirmed, told_set,
        "Postgres holds exactly the confirmations buyers were told of"
    );
    let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
    assert_eq!(
        live.stock[0].confirmed,
        BUYERS as i64 + 1,
        "Redis counts every confirmation, before and after the restore"
    );
    assert_eq!(dead_letters(&redis, sale).await, 0);
    assert_consistent(&db, &redis, sale).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_racing_the_reconciler_leaves_the_sale_selling() {
    let private = PrivateRedis::start();
    let (db, _) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    confirmations(&redis, &scripts, sale, "race", 3, "A", 1).await;
    Sink::new("s", 100, 60_000)
        .drain(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    // Reconcilers checking the sale back to back, as several worker
    // replicas would, while it is restored again and again. Each restore
    // must leave the sale selling once the checks around it are done.
    for round in 0..40 {
        let stop = Arc::new(AtomicBool::new(false));
        let checks: Vec<_> = (0..2)
            .map(|_| {
                let (redis, scripts, db, stop) =
                    (redis.clone(), scripts.clone(), db.clone(), stop.clone());
                tokio::spawn(async move {
                    let reconciler = Reconciler::default();
                    while !stop.load(SeqCst) {
                        let _ = reconciler.check(&redis, &scripts, &db, sale).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let restored = recovery::restore(
            &db,
            &redis,
            &scripts,
            sale,
            recovery::Options {
                freeze: true,
                drain_wait: Duration::from_secs(10),
            },
        )
        .await
        .unwrap();
        assert_eq!(restored.tickets, 3);
        tokio::time::sleep(Duration::from_millis(5)).await;
        stop.store(true, SeqCst);
        for c in checks {
            c.await.unwrap();
        }
        let live = flashsale::sales::live(&redis, sale).await.unwrap().unwrap();
        assert!(!live.frozen, "frozen after restore {round}");
    }
    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert_eq!(report.frozen, None);
    confirmations(&redis, &scripts, sale, "after", 1, "A", 1).await;
}

/// Runs `op` until Redis answers it (the pool reconnecting after a
/// restart). Bounded.
async fn once_redis_answers<T, E: std::fmt::Debug, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Ok(t) => return t,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                panic!("Redis does not answer after 30 s: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn a_rollback_followed_only_by_cancellations_is_detected_all_the_same() {
    let mut private = PrivateRedis::start();
    let (db, _) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    let sink = Sink::new("s", 100, 60_000);
    let kept = confirmations(&redis, &scripts, sale, "kept", 3, "A", 1).await;
    sink.drain(&redis, &scripts, &db, sale).await.unwrap();
    let snapshot = private.snapshot(&redis).await;
    let lost = confirmations(&redis, &scripts, sale, "lost", 2, "A", 1).await;
    sink.drain(&redis, &scripts, &db, sale).await.unwrap();

    // Redis comes back from the backup, without the last two
    // confirmations, and the next entries are all cancellations: their
    // numbers are the lost confirmations' numbers, now on cancellations.
    private.kill();
    private.relaunch_from(&snapshot);
    for (user, id) in &kept {
        let cancelled =
            once_redis_answers(|| inventory::cancel(redis.next(), &scripts, id, user)).await;
        assert!(cancelled.is_ok(), "{cancelled:?}");
    }
    for _ in 0..2 {
        // The first pass that meets a reused number freezes the sale and
        // fails; the next records the entries, unnumbered.
        let _ = sink.drain(&redis, &scripts, &db, sale).await;
    }
    let report = Reconciler::default()
        .check(&redis, &scripts, &db, sale)
        .await
        .unwrap();
    assert_eq!(report.frozen, Some("rollback"));
    assert!(
        flashsale::sales::live(&redis, sale)
            .await
            .unwrap()
            .unwrap()
            .frozen
    );

    recovery::restore(&db, &redis, &scripts, sale, Default::default())
        .await
        .unwrap();
    for (_, id) in &kept {
        assert_eq!(row(&db, id).await, Some(("cancelled".into(), 1)));
    }
    for (_, id) in &lost {
        assert_eq!(row(&db, id).await, Some(("confirmed".into(), 1)));
    }
    assert_consistent(&db, &redis, sale).await;
    assert_eq!(
        flashsale::sales::live(&redis, sale)
            .await
            .unwrap()
            .unwrap()
            .stock[0]
            .confirmed,
        2
    );
}

#[tokio::test]
async fn a_quiet_sale_whose_redis_went_back_is_frozen_by_the_reconciler() {
    let mut private = PrivateRedis::start();
    let (db, _) = fresh_database().await;
    let redis = redis(&private.url()).await;
    let scripts = scripts();
    let sale = sale(&db, &redis, &scripts, 100, 600).await;
    let sink = Sink::new("s", 100, 60_000);
    confirmations(&redis, &scripts, sale, "early", 2, "A", 1).await;
    // A buyer admitted before the backup, still admitted after it.
    let buyer = vec!["next".to_owned()];
    admit(&redis, &scripts, sale, &buyer).await;
    sink.drain(&redis, &scripts, &db, sale).await.unwrap();
    let snapshot = private.snapshot(&redis).await;
    confirmations(&redis, &scripts, sale, "late", 2, "A", 1).await;
    sink.drain(&redis, &scripts, &db, sale).await.unwrap();

    // Back from the backup, and nobody buys: no entry will ever reuse a
    // number, so only the reconciler can tell.
    private.kill();
    private.relaunch_from(&snapshot);
    let reconciler = Reconciler::default();
    let report = once_redis_answers(|| reconciler.check(&redis, &scripts, &db, sale)).await;
    assert_eq!(report.frozen, Some("rollback"));
    let refused = inventory::hold(
        &redis,
        &scripts,
        inventory::HoldRequest {
            sale,
            user: "next",
            zone: "A",
            quantity: 1,
            id: ReservationId::random(sale),
            fingerprint: None,
            pick: flashsale::inventory::Pick::Any,
        },
    )
    .await
    .unwrap();
    assert_eq!(refused.map(|_| ()), Err(inventory::Refusal::Frozen));
}
