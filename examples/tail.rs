//! The end of a sale, measured: `tickets` left, `waiting` buyers in line,
//! and the first `walkers` admitted buyers walk away without holding. The
//! others hold one ticket and confirm as soon as they are admitted. Prints
//! how long until every ticket is confirmed, and how many buyers were
//! admitted for them.
//!
//! It runs the queue's and the holds' real scripts on a real Redis, with a
//! releaser asking for a tick every 50 ms as `flashsale-workers` does, and
//! each waiting buyer polling every 250 ms. The sale is created in Postgres
//! as the API creates it.
//!
//!   tail <tickets> <waiting> <walkers> <admit_idle_seconds> <admit_headroom_percent>
//!
//! `REDIS_URL` and `DATABASE_URL` name the stores (migrated on the way).

#![allow(clippy::print_stdout, reason = "an example prints its figures")]

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use flashsale::{
    ids::{ReservationId, SaleId},
    inventory::{self, HoldRequest, Refusal},
    queue::{self, Standing},
    sales::{self, NewSale},
    scripts::Scripts,
};
use fred::clients::Pool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>())
        .collect::<Result<_, _>>()
        .context("numbers expected")?;
    let [tickets, waiting, walkers, idle_s, headroom] = args[..] else {
        anyhow::bail!(
            "usage: tail <tickets> <waiting> <walkers> <admit_idle_seconds> <admit_headroom_percent>"
        );
    };
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let redis = flashsale::redis::connect(
        &env("REDIS_URL", "redis://127.0.0.1:6379"),
        4,
        Duration::from_secs(2),
    )
    .await?;
    let db = flashsale::db::connect(
        &env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/flashsale",
        ),
        2,
        Duration::from_secs(2),
    )
    .await?;
    flashsale::db::migrate(&db).await?;
    let scripts = Arc::new(Scripts::new());
    let new: NewSale = serde_json::from_value(serde_json::json!({
        "name": "the tail",
        "zones": [{"code": "A", "capacity": tickets}],
        "per_user_limit": 1,
        "release_rate": 100,
        "release_interval_ms": 1000,
        "pass_ttl_seconds": 600,
        "admit_idle_seconds": idle_s,
        "admit_headroom_percent": headroom,
    }))?;
    let (mut def, release) = new
        .validate("tail", Utc::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    sales::create(&db, &redis, &scripts, &mut def, &release)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sale = def.id;
    for i in 0..waiting {
        queue::join(&redis, &scripts, sale, &format!("t-{i}"), b"seed").await?;
    }

    let start = Instant::now();
    let admitted = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let releaser = {
        let (redis, scripts) = (redis.clone(), scripts.clone());
        tokio::spawn(async move {
            loop {
                let _ = queue::release_tick(&redis, &scripts, sale, 300_000, 5000).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut buyers = Vec::new();
    for i in 0..waiting {
        let (redis, scripts) = (redis.clone(), scripts.clone());
        let (admitted, confirmed) = (admitted.clone(), confirmed.clone());
        buyers.push(tokio::spawn(async move {
            buyer(
                &redis,
                &scripts,
                sale,
                &format!("t-{i}"),
                walkers,
                &admitted,
                &confirmed,
            )
            .await
        }));
    }
    while confirmed.load(Ordering::Relaxed) < tickets && start.elapsed() < Duration::from_secs(600)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    releaser.abort();
    for b in buyers {
        b.abort();
    }
    println!(
        "tickets={tickets} waiting={waiting} walkers={walkers} admit_idle_seconds={idle_s} \
         admit_headroom_percent={headroom}: {} of {tickets} sold in {:.2} s, {} buyers admitted",
        confirmed.load(Ordering::Relaxed),
        took.as_secs_f64(),
        admitted.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Polls until admitted (or the sale is sold out); the first `walkers`
/// admitted walk away, the others hold one ticket and confirm it.
async fn buyer(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    user: &str,
    walkers: u64,
    admitted: &AtomicU64,
    confirmed: &AtomicU64,
) {
    loop {
        match queue::status(redis, scripts, sale, user, 5000).await {
            Ok(Standing::Admitted { .. }) => break,
            Ok(Standing::Waiting { .. } | Standing::Waitlisted { .. }) | Err(_) => {}
            Ok(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if admitted.fetch_add(1, Ordering::Relaxed) < walkers {
        return;
    }
    // Tickets held by others may come back: try again while admitted.
    loop {
        let id = ReservationId::random(sale);
        let hold = HoldRequest {
            sale,
            user,
            zone: "A",
            quantity: 1,
            id: id.clone(),
            fingerprint: None,
            pick: flashsale::inventory::Pick::Any,
        };
        match inventory::hold(redis, scripts, hold).await {
            Ok(Ok(_)) => {
                if let Ok(Ok(_)) = inventory::confirm(redis.next(), scripts, &id, user, "").await {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Ok(Err(Refusal::SoldOut { .. })) | Err(_) => {}
            Ok(Err(_)) => return,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
