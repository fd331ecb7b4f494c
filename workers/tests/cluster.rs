//! flashsale on a real Redis Cluster: three primaries of the test's own
//! (`--cluster-enabled yes`, AOF on), joined by `redis-cli --cluster create`,
//! and `REDIS_URL` in the comma-list form a user writes. Sales spread over
//! every shard keep their queue order, never oversell under concurrent
//! holds, reach Postgres through the real workers binary, and are restored
//! from Postgres after their keys are lost.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]
#![allow(clippy::print_stderr, reason = "a fault test reports what buyers saw")]

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use flashsale::{ids::SaleId, keys::SaleKeys, recovery};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Sales made until every shard has this many.
const PER_SHARD: usize = 4;
/// Buyers a sale: the first `ADMITTED` in line are let in by one tick.
const BUYERS: usize = 30;
const ADMITTED: usize = 20;
/// Zone A's tickets: 20 buyers asking two each find 15 holds' worth.
const CAPACITY: i64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sales_over_three_shards_keep_order_never_oversell_reach_postgres_and_restore() {
    let cluster = RedisCluster::start(3);
    let api = Api::spawn_with_redis(&cluster.url()).await;
    let shards = cluster.primaries();
    assert_eq!(shards.len(), 3, "three primaries serve the slots");

    // Sales until each shard holds PER_SHARD of them (sale ids are random,
    // so the spread is seen, not assumed).
    let mut on_shard: HashMap<u16, Vec<SaleId>> = HashMap::new();
    let mut sales = Vec::new();
    while on_shard.len() < 3 || on_shard.values().any(|s| s.len() < PER_SHARD) {
        assert!(sales.len() < 100, "sales did not spread: {on_shard:?}");
        let sale = api.sale_id(crowd_sale()).await;
        let port = cluster.primary_for(&SaleKeys::new(sale).meta());
        on_shard.entry(port).or_default().push(sale);
        sales.push(sale);
    }
    assert!(sales.len() >= 12);
    // The list of sales lives on more than one shard too.
    let listed: std::collections::HashSet<u16> = flashsale::live_sales::sets()
        .map(|key| cluster.primary_for(&key))
        .collect();
    assert_eq!(listed.len(), 3, "the sets listing sales sit on every shard");
    let known = flashsale::live_sales::all(&api.redis).await.unwrap();
    for sale in &sales {
        assert!(known.contains(sale), "sale {sale} is listed");
    }

    // Every sale at once: a crowd joins, one tick admits the first twenty
    // in arrival order, and the admitted race for the tickets.
    let api = &api;
    let confirmed: HashMap<SaleId, Vec<String>> = futures::future::join_all(
        sales
            .iter()
            .map(|&sale| async move { (sale, one_sale(api, sale).await) }),
    )
    .await
    .into_iter()
    .collect();

    // Two replicas of the real workers binary, on the cluster: every sale
    // on every shard reaches Postgres, each confirmation once.
    let workers = [
        Workers::start(&cluster.url(), &api.db_url, &[]),
        Workers::start(&cluster.url(), &api.db_url, &[]),
    ];
    for _ in 0..600 {
        let mut all = true;
        for &sale in &sales {
            all &= persisted(&api.db, sale).await == (15, CAPACITY, CAPACITY);
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &sale in &sales {
        assert_eq!(
            persisted(&api.db, sale).await,
            (15, CAPACITY, CAPACITY),
            "sale {sale}: 15 confirmed holds of two in Postgres"
        );
    }
    drop(workers);

    // The post-sale check, the real CLI on the cluster URL: queue order,
    // stock, Redis against Postgres, every confirmation buyers were told of.
    for (sale, ids) in &confirmed {
        let told = std::env::temp_dir().join(format!("told-{sale}"));
        std::fs::write(&told, ids.join("\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale-workers"))
            .args(["check", "--sale", &sale.to_string(), "--confirmed"])
            .arg(&told)
            .env("REDIS_URL", cluster.url())
            .env("DATABASE_URL", &api.db_url)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&told);
        assert!(
            out.status.success(),
            "check of sale {sale}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // One sale a shard loses every key; restore rebuilds it from Postgres.
    for sales_here in on_shard.values() {
        let sale = sales_here[0];
        recovery::wipe(&api.redis, sale, &[]).await.unwrap();
        assert!(flashsale::sales::live(&api.redis, sale)
            .await
            .unwrap()
            .is_none());
        api.restore(sale).await;
        let (available, held, confirmed, capacity) = api.stock(sale, "A").await;
        assert_eq!(
            (available, held, confirmed, capacity),
            (0, 0, CAPACITY, CAPACITY),
            "sale {sale} restored"
        );
    }
}

/// A sale for a crowd: thirty tickets in zone A, twenty buyers admitted a
/// tick, two tickets a buyer.
fn crowd_sale() -> Value {
    json!({
        "zones": [{"code": "A", "capacity": CAPACITY}],
        "release_rate": 200,
        "release_interval_ms": 100,
        "per_user_limit": 2
    })
}

/// One sale's crowd: places in arrival order, the first twenty admitted by
/// one tick and the rest told their new position, then twenty concurrent
/// holds of two for thirty tickets: exactly fifteen placed, and confirmed.
/// Returns the ids of the confirmed reservations.
async fn one_sale(api: &Api, sale: SaleId) -> Vec<String> {
    let buyers: Vec<String> = (0..BUYERS).map(|i| format!("b{i}-{sale}")).collect();
    let joined = futures::future::join_all(buyers.iter().map(|b| async move {
        let res = api.join(sale, b).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let body: Value = res.json().await.unwrap();
        (b.clone(), body["position"].as_u64().unwrap())
    }))
    .await;
    let mut by_place = joined.clone();
    by_place.sort_by_key(|(_, p)| *p);
    let places: Vec<u64> = by_place.iter().map(|(_, p)| *p).collect();
    assert_eq!(places, (1..=BUYERS as u64).collect::<Vec<_>>());

    let tick = api.tick(sale, 300_000).await;
    assert_eq!(tick.admitted as usize, ADMITTED);
    for (rank, (b, _)) in by_place.iter().enumerate() {
        let state: Value = api.poll(sale, b).await.json().await.unwrap();
        if rank < ADMITTED {
            assert_eq!(state["state"], "admitted", "{rank}: {state}");
        } else {
            assert_eq!(state["state"], "waiting", "{rank}: {state}");
            assert_eq!(state["position"], (rank - ADMITTED + 1) as u64);
        }
    }

    let first: Vec<&String> = by_place.iter().take(ADMITTED).map(|(b, _)| b).collect();
    let holds = futures::future::join_all(first.iter().map(|b| async move {
        let res = api.hold(sale, b, "A", 2, None).await;
        (
            b.to_string(),
            res.status(),
            res.json::<Value>().await.unwrap(),
        )
    }))
    .await;
    let placed: Vec<(String, String)> = holds
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::CREATED)
        .map(|(b, _, body)| (b.clone(), body["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(placed.len(), 15, "sale {sale}: {holds:?}");
    for (_, status, body) in &holds {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::CONFLICT,
            "{status} {body}"
        );
    }
    assert_eq!(api.stock(sale, "A").await, (0, CAPACITY, 0, CAPACITY));
    for (b, id) in &placed {
        assert_eq!(api.confirm(id, b).await.status(), StatusCode::OK);
    }
    assert_eq!(api.stock(sale, "A").await, (0, 0, CAPACITY, CAPACITY));
    placed.into_iter().map(|(_, id)| id).collect()
}

/// kill -9 of the primary that holds a sale, mid-sale, with a replica of it
/// present and confirmations waiting for one replica
/// (`CONFIRM_WAIT_REPLICAS=1`): the replica takes over, buyers see 503s
/// until it has, retries with the same idempotency key go through, and
/// every confirmation a buyer was told of is still confirmed, in Redis and
/// in Postgres. Prints what buyers saw (run with `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_mid_sale_fails_over_and_no_acknowledged_confirmation_is_lost() {
    const LANES: usize = 8;
    const EACH: usize = 20;
    let mut cluster = RedisCluster::start_with_replicas(3, 1);
    let (_, db_url) = fresh_database().await;
    let api = Api::serve_replicated(&cluster.url(), &db_url, 1, Duration::from_secs(2)).await;
    let sale = api
        .sale_id(json!({
            "zones": [{"code": "A", "capacity": 1000}],
            "release_rate": 1000,
            "per_user_limit": 1
        }))
        .await;
    let primary = cluster.primary_for(&SaleKeys::new(sale).meta());
    let buyers: Vec<String> = (0..LANES * EACH).map(|i| format!("f{i}-{sale}")).collect();
    let passes = api.admit_all(sale, &buyers).await;
    let workers = Workers::start(&cluster.url(), &db_url, &[]);

    // Lanes of buyers hold and confirm one ticket each, retrying through
    // 503s with the same idempotency key; the primary dies once a third of
    // them are done.
    let done = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let lanes = (0..LANES).map(|lane| {
        let (api, buyers, passes, done) = (&api, &buyers, &passes, &done);
        async move {
            let mut acked = Vec::new();
            let mut unavailable = Vec::new();
            for i in (lane * EACH)..((lane + 1) * EACH) {
                let (buyer, pass) = (&buyers[i], &passes[i]);
                let key = format!("k-{buyer}");
                let id = loop {
                    let res = api
                        .hold_with_pass(sale, buyer, pass, "A", 1, Some(&key))
                        .await;
                    match res.status() {
                        StatusCode::CREATED | StatusCode::OK => {
                            let body: Value = res.json().await.unwrap();
                            break body["id"].as_str().unwrap().to_owned();
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            unavailable.push(started.elapsed());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => panic!("hold: {other} {}", res.text().await.unwrap()),
                    }
                };
                loop {
                    let res = api.confirm(&id, buyer).await;
                    match res.status() {
                        StatusCode::OK => break,
                        StatusCode::SERVICE_UNAVAILABLE => {
                            unavailable.push(started.elapsed());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => panic!("confirm: {other} {}", res.text().await.unwrap()),
                    }
                }
                acked.push((buyer.clone(), id));
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (acked, unavailable)
        }
    });
    let meta = SaleKeys::new(sale).meta();
    let killer = async {
        while done.load(std::sync::atomic::Ordering::Relaxed) < LANES * EACH / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cluster.node(primary).kill();
        let at = started.elapsed();
        // Its replica takes over; confirmations wait for a replica, so
        // none is acknowledged until the dead node comes back (as a
        // restarted pod does) and joins as the new primary's replica.
        let promoted = loop {
            match cluster.owner_of(&meta) {
                Some(port) if port != primary => break port,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        cluster.node(primary).launch();
        (at, promoted)
    };
    let (results, (killed_at, promoted)) = tokio::join!(futures::future::join_all(lanes), killer);
    let acked: Vec<(String, String)> = results.iter().flat_map(|(a, _)| a.clone()).collect();
    let mut unavailable: Vec<Duration> = results.iter().flat_map(|(_, u)| u.clone()).collect();
    unavailable.sort();
    assert_eq!(acked.len(), LANES * EACH, "every buyer got through");
    eprintln!(
        "failover: primary {primary} killed at {killed_at:?}; replica {promoted} took over, and the \
         killed node came back as its replica; \
         {} answers were 503, from {:?} to {:?} after the start",
        unavailable.len(),
        unavailable.first(),
        unavailable.last()
    );

    // Every confirmation a buyer was told of is confirmed in Redis...
    for (buyer, id) in &acked {
        let res = api
            .get(&format!("/v1/reservations/{id}"), Some(&api.buyer(buyer)))
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "confirmed", "{body}");
    }
    let (available, held, confirmed, capacity) = api.stock(sale, "A").await;
    assert_eq!(confirmed, acked.len() as i64);
    assert_eq!(available + held + confirmed, capacity);
    // ... and reaches Postgres through the workers, which kept working.
    let want = (acked.len() as i64, acked.len() as i64, acked.len() as i64);
    for _ in 0..600 {
        if persisted(&api.db, sale).await == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(persisted(&api.db, sale).await, want);
    drop(workers);
}

/// Two API processes on one cluster, behind no balancer, serve one sale's
/// buyers half each: every buyer joins through one and polls, is admitted
/// and holds through the other. Places follow arrival over both, a pass
/// one signs the other accepts, holds from both never oversell, and a
/// buyer's rate limit (kept in Redis) is one limit over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_api_processes_share_one_sales_buyers_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let (_, db_url) = fresh_database().await;
    // One configuration, as replicas share theirs: the same pass signing
    // key, and rate limits kept in Redis.
    let mut config = config(&db_url, &cluster.url());
    config.limits.store = flashsale::limits::LimitStore::Redis;
    config.limits.poll = flashsale::limits::Rate {
        per_minute: 1,
        burst: 40,
    };
    let apis = [
        Api::start(config.clone(), axum::Router::new()).await,
        Api::start(config, axum::Router::new()).await,
    ];
    let sale = apis[0].sale_id(crowd_sale()).await;
    let apis = &apis;
    let one = |i: usize| &apis[i % 2];
    let other = |i: usize| &apis[(i + 1) % 2];

    // Joins alternate between the two; the places are one line.
    let buyers: Vec<String> = (0..BUYERS).map(|i| format!("r{i}-{sale}")).collect();
    let joined = futures::future::join_all(buyers.iter().enumerate().map(|(i, b)| async move {
        let res = one(i).join(sale, b).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let body: Value = res.json().await.unwrap();
        (i, body["position"].as_u64().unwrap())
    }))
    .await;
    let mut by_place = joined.clone();
    by_place.sort_by_key(|(_, p)| *p);
    let places: Vec<u64> = by_place.iter().map(|(_, p)| *p).collect();
    assert_eq!(places, (1..=BUYERS as u64).collect::<Vec<_>>());

    // One tick (either process's releaser would do) admits the first
    // twenty; each buyer asks the process it did not join through.
    let tick = apis[1].tick(sale, 300_000).await;
    assert_eq!(tick.admitted as usize, ADMITTED);
    let mut passes = HashMap::new();
    for (rank, &(i, _)) in by_place.iter().enumerate() {
        let state: Value = other(i).poll(sale, &buyers[i]).await.json().await.unwrap();
        if rank < ADMITTED {
            assert_eq!(state["state"], "admitted", "{rank}: {state}");
            passes.insert(i, state["pass"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(state["state"], "waiting", "{rank}: {state}");
            assert_eq!(state["position"], (rank - ADMITTED + 1) as u64);
        }
    }

    // The admitted hold two each through the process that did not sign
    // their pass, all at once: thirty tickets, fifteen holds.
    let holds = futures::future::join_all(passes.iter().map(|(&i, pass)| {
        let b = &buyers[i];
        async move {
            let res = one(i).hold_with_pass(sale, b, pass, "A", 2, None).await;
            res.status()
        }
    }))
    .await;
    let placed = holds.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(placed, 15, "{holds:?}");
    assert!(holds
        .iter()
        .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
    assert_eq!(apis[0].stock(sale, "A").await, (0, CAPACITY, 0, CAPACITY));

    // A buyer's poll allowance (40 at once) is spent over both processes
    // together: polls alternating between them are refused from the 41st
    // on (the buyer polled once above).
    let (i, _) = by_place[ADMITTED];
    let mut answered = 1;
    for n in 0..60 {
        let res = apis[n % 2].poll(sale, &buyers[i]).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
        answered += 1;
    }
    assert_eq!(answered, 40, "one allowance over both processes");
}
