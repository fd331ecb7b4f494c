//! The waiting line at scale: `buyers` join one sale (36-character ids, as
//! the accounts' UUIDs are) through the real join script, after opening or
//! (with `prequeue`) before it. Prints Redis's memory per waiting buyer, then
//! runs `ticks` release ticks that each admit `rate` buyers and sweep the line
//! for silent ones, and prints their durations (Redis's own time for the
//! script, from `INFO commandstats`, and the round trip).
//!
//!   waitlist_scale <buyers> <rate> <ticks> [prequeue]
//!
//! `REDIS_URL` should name a Redis of its own (memory is read from INFO),
//! `DATABASE_URL` a Postgres (migrated on the way).

#![allow(clippy::print_stdout, reason = "an example prints its figures")]

use std::{sync::Arc, time::Duration, time::Instant};

use anyhow::Context;
use chrono::Utc;
use flashsale::{
    queue,
    sales::{self, NewSale},
    scripts::Scripts,
};
use fred::{
    clients::Pool,
    interfaces::{ClientLike, HashesInterface},
};
use futures::{stream, StreamExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (buyers, rates, ticks): (u64, Vec<u64>, u64) = match &args[..] {
        [b, r, t] | [b, r, t, _] => (
            b.parse()?,
            r.split(',').map(str::parse).collect::<Result<_, _>>()?,
            t.parse()?,
        ),
        _ => anyhow::bail!("usage: waitlist_scale <buyers> <rates> <ticks> [prequeue]"),
    };
    let prequeue = args.get(3).is_some_and(|a| a == "prequeue");
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let redis = flashsale::redis::connect(
        &env("REDIS_URL", "redis://127.0.0.1:6379"),
        8,
        Duration::from_secs(10),
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
    // Opening in an hour for the pre-queue, else now; the releaser's ticks
    // below need it open, so a pre-queue run opens it after the joins.
    let opens = if prequeue {
        Utc::now() + chrono::Duration::hours(1)
    } else {
        Utc::now()
    };
    let new: NewSale = serde_json::from_value(serde_json::json!({
        "name": "waitlist scale",
        "opens_at": opens,
        "zones": [{"code": "A", "capacity": 10_000_000}],
        "release_rate": rates[0],
        "release_interval_ms": 1000,
    }))?;
    let (mut def, release) = new
        .validate("scale", Utc::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    sales::create(&db, &redis, &scripts, &mut def, &release)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sale = def.id;

    let before = used_memory(&redis).await?;
    let started = Instant::now();
    let joined = stream::iter(0..buyers)
        .map(|i| {
            let (redis, scripts) = (redis.clone(), scripts.clone());
            async move {
                let user = format!("{i:08x}-0000-4000-8000-{i:012x}");
                queue::join(&redis, &scripts, sale, &user, b"scale-seed").await
            }
        })
        .buffer_unordered(256)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await as u64;
    let join_s = started.elapsed().as_secs_f64();
    let after = used_memory(&redis).await?;
    println!(
        "{joined} buyers joined {} in {join_s:.1} s ({:.0} joins/s); Redis memory {:.1} MB more: {:.0} bytes a waiting buyer",
        if prequeue { "before opening" } else { "after opening" },
        joined as f64 / join_s,
        (after - before) as f64 / 1e6,
        (after - before) as f64 / joined as f64
    );
    if prequeue {
        let _: () = redis
            .hset(
                flashsale::keys::SaleKeys::new(sale).meta(),
                [("opens_at_ms", Utc::now().timestamp_millis().to_string())],
            )
            .await?;
    }

    let meta = flashsale::keys::SaleKeys::new(sale).meta();
    for rate in rates {
        let _: () = redis
            .hset(&meta, [("release_rate", rate.to_string())])
            .await?;
        let mut server_us = Vec::new();
        let mut round_trip_us = Vec::new();
        let mut admitted = 0;
        while (server_us.len() as u64) < ticks {
            let calls_before = script_stats(&redis).await?;
            let t = Instant::now();
            let Some(tick) = queue::release_tick(&redis, &scripts, sale, 300_000, 10_000).await?
            else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            round_trip_us.push(t.elapsed().as_micros() as u64);
            let calls_after = script_stats(&redis).await?;
            server_us.push(calls_after.1.saturating_sub(calls_before.1));
            admitted += tick.admitted;
        }
        let summary = |v: &mut Vec<u64>| {
            v.sort_unstable();
            format!(
                "median {:.2} ms, max {:.2} ms",
                v[v.len() / 2] as f64 / 1000.0,
                v[v.len() - 1] as f64 / 1000.0
            )
        };
        println!(
            "{ticks} ticks admitting {rate} each ({admitted} in all), {} swept a tick: in Redis {}; round trip {}",
            queue::SWEEP,
            summary(&mut server_us),
            summary(&mut round_trip_us)
        );
    }
    Ok(())
}

async fn used_memory(redis: &Pool) -> anyhow::Result<i64> {
    let info: String = redis
        .next()
        .info(Some(fred::types::InfoKind::Memory))
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("used_memory in INFO")
}

/// (calls, microseconds) of EVALSHA so far, from INFO commandstats: the time
/// Redis spent running scripts called by SHA.
async fn script_stats(redis: &Pool) -> anyhow::Result<(u64, u64)> {
    let client = redis.next();
    let info: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await?;
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .context("cmdstat_evalsha in INFO")?;
    let field = |name: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("calls="), field("usec=")))
}
