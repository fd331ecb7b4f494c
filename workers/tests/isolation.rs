//! One broken sale does not stop the workers for the others.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::*;
use flashsale::{ids::SaleId, keys::SaleKeys, sales};
use flashsale_workers::{expirer, reconciler::Reconciler, releaser, sink::Sink};
use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface};

#[tokio::test]
async fn a_sale_whose_keys_are_damaged_fails_alone_and_every_worker_serves_the_other_sales() {
    // A Redis of its own: the workers visit every sale they find there.
    let server = PrivateRedis::start();
    let redis = redis(&server.url()).await;
    let (db, _) = fresh_database().await;
    let scripts = scripts();
    let healthy = sale(&db, &redis, &scripts, 100, 1).await;
    let broken = sale(&db, &redis, &scripts, 100, 1).await;
    let known = flashsale::live_sales::all(&redis).await.unwrap();
    assert_eq!(
        known.len(),
        2,
        "both sales are in the set the workers visit"
    );
    // A pass fails naming the broken sale, and says the other sale was done
    // in that same pass. Passes start one sale further along each time, so
    // each worker runs twice: in one of the two the broken sale comes first.
    let failed_alone = |err: anyhow::Error| {
        let err = format!("{err:#}");
        assert!(err.contains("1 of 2 sales failed"), "{err}");
        assert!(err.contains(&broken.to_string()), "{err}");
        assert!(!err.contains(&healthy.to_string()), "{err}");
    };

    // The healthy sale: two confirmed buyers (stream entries for the sink),
    // three holds that lapse in a second, and three buyers waiting.
    confirmations(
        &redis,
        &scripts,
        healthy,
        &format!("ok-{healthy}"),
        2,
        "A",
        1,
    )
    .await;
    let holders: Vec<String> = (0..3).map(|i| format!("holder-{healthy}-{i}")).collect();
    admit(&redis, &scripts, healthy, &holders).await;
    hold_each(&redis, &scripts, healthy, &holders, "A", 2).await;
    let waiting: Vec<String> = (0..3).map(|i| format!("wait-{healthy}-{i}")).collect();
    join_all(&redis, &scripts, healthy, &waiting).await;

    // The broken sale: a setting that is not a number (its release tick
    // fails in Lua), and its deadlines and stream overwritten by strings
    // (its sweep, sink and reconciliation fail with WRONGTYPE).
    let b = SaleKeys::new(broken);
    let _: () = redis
        .hset(b.meta(), ("pass_ttl_seconds", "damaged"))
        .await
        .unwrap();
    let _: () = redis
        .set(b.deadlines(), "damaged", None, None, false)
        .await
        .unwrap();
    let _: () = redis
        .set(b.stream(), "damaged", None, None, false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The releaser admits the healthy sale's waiting buyers. Its first pass
    // may come before the sale's next tick is due; it keeps passing until
    // they are all in.
    let h = SaleKeys::new(healthy);
    for pass in 0.. {
        failed_alone(
            releaser::run_once(&redis, &scripts, 300_000)
                .await
                .unwrap_err(),
        );
        let still: i64 = redis.zcard(h.waiting()).await.unwrap();
        if still == 0 && pass >= 1 {
            break;
        }
        assert!(pass < 50, "the healthy sale's waiting buyers were admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The expirer returns the healthy sale's lapsed holds.
    for _ in 0..2 {
        failed_alone(expirer::run_once(&redis, &scripts).await.unwrap_err());
    }
    let live = sales::live(&redis, healthy).await.unwrap().unwrap();
    assert_eq!(
        (live.stock[0].available, live.stock[0].held),
        (98, 0),
        "100 less the 2 confirmed; the 6 held came back"
    );

    // The sink records the healthy sale's confirmations in Postgres.
    let sink = Sink::new("isolation", 100, 30_000);
    for _ in 0..2 {
        failed_alone(sink.run_once(&redis, &scripts, &db).await.unwrap_err());
    }
    assert_eq!(persisted(&db, healthy).await.0, 2);

    // The reconciler checks the healthy sale.
    let reconciler = Reconciler::default();
    for _ in 0..2 {
        failed_alone(
            reconciler
                .run_once(&redis, &scripts, &db)
                .await
                .unwrap_err(),
        );
    }
    let checked: Option<String> = redis.hget(h.reconciliation(), "drift").await.unwrap();
    assert_eq!(checked.as_deref(), Some("0"));
}

/// A Redis written by the earlier layout lists its sales in one set: the
/// workers move them into the spread sets, and so still visit them.
#[tokio::test]
async fn sales_listed_in_the_earlier_single_set_are_moved_over_and_visited() {
    let server = PrivateRedis::start();
    let redis = redis(&server.url()).await;
    let sale = SaleId::new();
    let _: i64 = redis
        .sadd(
            flashsale::live_sales::LEGACY_SET,
            vec![sale.to_string(), "not-a-sale".into()],
        )
        .await
        .unwrap();
    assert!(flashsale::live_sales::all(&redis).await.unwrap().is_empty());
    let listed = flashsale_workers::sales_in_redis(&redis).await.unwrap();
    assert_eq!(listed, vec![sale]);
    assert!(flashsale::live_sales::contains(&redis, sale).await.unwrap());
    let left: Vec<String> = redis
        .smembers(flashsale::live_sales::LEGACY_SET)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
