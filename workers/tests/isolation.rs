//! One broken sale does not stop the workers for the others.

mod common;

use std::time::Duration;

use common::*;
use flashsale::{keys::SaleKeys, sales};
use flashsale_workers::{expirer, reconciler::Reconciler, releaser, sink::Sink};
use fred::interfaces::{HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface};

#[tokio::test]
async fn a_sale_whose_keys_are_damaged_fails_alone_and_every_worker_serves_the_other_sales() {
    // A Redis of its own: the workers visit every sale they find there.
    let server = PrivateRedis::start();
    let redis = redis(&server.url()).await;
    let (db, _) = fresh_database().await;
    let scripts = scripts();
    let one = sale(&db, &redis, &scripts, 100, 1).await;
    let two = sale(&db, &redis, &scripts, 100, 1).await;
    // The workers visit sales in the set's order: the first one they visit
    // is the one broken, so a pass that gave up at it would never reach the
    // other.
    let order: Vec<String> = redis.smembers(flashsale::keys::SALES).await.unwrap();
    assert_eq!(
        order.len(),
        2,
        "both sales are in the set the workers visit"
    );
    let (broken, healthy) = if order[0] == one.to_string() {
        (one, two)
    } else {
        (two, one)
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

    // The releaser admits the healthy sale's waiting buyers.
    let h = SaleKeys::new(healthy);
    let mut err = None;
    for _ in 0..50 {
        if let Err(e) = releaser::run_once(&redis, &scripts, 300_000).await {
            err = Some(e);
        }
        let still: i64 = redis.zcard(h.waiting()).await.unwrap();
        if still == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still: i64 = redis.zcard(h.waiting()).await.unwrap();
    assert_eq!(still, 0, "the healthy sale's waiting buyers were admitted");
    let err = format!("{:#}", err.expect("the releaser reports the broken sale"));
    assert!(err.contains(&broken.to_string()), "{err}");
    assert!(!err.contains(&healthy.to_string()), "{err}");

    // The expirer returns the healthy sale's lapsed holds.
    let err = expirer::run_once(&redis, &scripts).await.unwrap_err();
    assert!(format!("{err:#}").contains(&broken.to_string()), "{err:#}");
    let live = sales::live(&redis, healthy).await.unwrap().unwrap();
    assert_eq!(
        (live.stock[0].available, live.stock[0].held),
        (98, 0),
        "100 less the 2 confirmed; the 6 held came back"
    );

    // The sink records the healthy sale's confirmations in Postgres.
    let sink = Sink {
        consumer: "isolation".into(),
        batch: 100,
        claim_idle_ms: 30_000,
    };
    let err = sink.run_once(&redis, &scripts, &db).await.unwrap_err();
    assert!(format!("{err:#}").contains(&broken.to_string()), "{err:#}");
    assert_eq!(persisted(&db, healthy).await.0, 2);

    // The reconciler checks the healthy sale.
    let err = Reconciler::default()
        .run_once(&redis, &scripts, &db)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains(&broken.to_string()), "{err:#}");
    let checked: Option<String> = redis.hget(h.reconciliation(), "drift").await.unwrap();
    assert_eq!(checked.as_deref(), Some("0"));
}
