//! Measures the stream sink's throughput into Postgres: fills one sale's
//! stream with real confirmations (through the confirm script), then times a
//! sink draining it.
//!
//!   cargo run --release -p flashsale-workers --example sink_throughput -- 50000 500
//!   cargo run --release -p flashsale-workers --example sink_throughput -- 200000 500 --slowlog
//!
//! Arguments: confirmations (default 50,000), batch size (default 500).
//! Uses REDIS_URL and DATABASE_URL (migrated), like the workers.
//!
//! `--slowlog` (only against a Redis of the run's own: it changes the
//! server's settings, as `load/backlog.sh` does): with the backlog in
//! flight, times one reconciler pass over the sale and reports the longest
//! Redis command of the pass from SLOWLOG (every command logged), then the
//! longest command of the drain.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example prints its figures"
)]

use std::{sync::Arc, time::Instant};

use anyhow::Context;
use chrono::Utc;
use flashsale::{
    config::Config,
    ids::ReservationId,
    inventory::{self, HoldRequest},
    queue,
    sales::{self, NewSale},
    scripts::Scripts,
};
use flashsale_workers::{reconciler::Reconciler, sink::Sink};
use fred::{clients::Pool, interfaces::ClientLike, types::Value};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let slowlog = args.iter().any(|a| a == "--slowlog");
    let mut numbers = args.iter().filter(|a| !a.starts_with("--"));
    let n: usize = numbers
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50_000);
    let batch: u64 = numbers
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500);
    let config = Config::from_env()?;
    let redis = flashsale::redis::connect(&config.redis_url, 4, config.store_timeout).await?;
    let db = flashsale::db::connect(&config.database_url, 4, config.store_timeout).await?;
    flashsale::db::migrate(&db).await?;
    let scripts = Arc::new(Scripts::new());

    let new: NewSale = serde_json::from_value(serde_json::json!({
        "name": "sink throughput", "zones": [{"code": "A", "capacity": n}],
        "per_user_limit": 1, "release_rate": 100000, "release_interval_ms": 100,
        "pass_ttl_seconds": 3600, "hold_ttl_seconds": 3600
    }))?;
    let (mut def, release) = new
        .validate("bench", Utc::now())
        .context("set up the sale")?;
    sales::create(&db, &redis, &scripts, &mut def, &release)
        .await
        .context("set up the sale")?;
    let sale = def.id;

    eprintln!("filling the stream with {n} confirmations...");
    let filling = Instant::now();
    let users: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    for u in &users {
        queue::join(&redis, &scripts, sale, u, b"seed")
            .await
            .context("set up the sale")?;
    }
    let mut admitted = 0;
    while admitted < n as u64 {
        if let Some(t) = queue::release_tick(&redis, &scripts, sale, 3_600_000, 10_000)
            .await
            .context("set up the sale")?
        {
            admitted += t.admitted;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut tasks = Vec::new();
    for chunk in users.chunks(n.div_ceil(16).max(1)) {
        let (redis, scripts, chunk) = (redis.clone(), scripts.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for u in chunk {
                let id = ReservationId::random(sale);
                let req = HoldRequest {
                    sale,
                    user: &u,
                    zone: "A",
                    quantity: 1,
                    id: id.clone(),
                    fingerprint: None,
                    pick: flashsale::inventory::Pick::Any,
                };
                inventory::hold(&redis, &scripts, req)
                    .await
                    .context("set up the sale")?
                    .ok();
                inventory::confirm(redis.next(), &scripts, &id, &u, "")
                    .await
                    .context("set up the sale")?
                    .ok();
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!("filled in {:.1} s", filling.elapsed().as_secs_f64());

    if slowlog {
        // Every command is logged from here on; the log is emptied first.
        redis_cmd(&redis, "CONFIG", &["SET", "slowlog-log-slower-than", "0"]).await?;
        redis_cmd(&redis, "CONFIG", &["SET", "slowlog-max-len", "1000000"]).await?;
        redis_cmd(&redis, "SLOWLOG", &["RESET"]).await?;
        let started = Instant::now();
        let report = Reconciler::default()
            .check(&redis, &scripts, &db, sale)
            .await?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "reconcile: one pass over {} entries in flight took {secs:.2} s; {}",
            report.lag_entries,
            read_slowlog(&redis).await?
        );
        redis_cmd(&redis, "SLOWLOG", &["RESET"]).await?;
    }

    let sink = Sink::new("bench", batch, 30_000);
    let started = Instant::now();
    let mut written = 0;
    while written < n as u64 {
        written += sink.drain(&redis, &scripts, &db, sale).await?.confirmed;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sink: {written} confirmations into Postgres in {secs:.2} s = {:.0} rows/s (batch {batch})",
        written as f64 / secs
    );
    if slowlog {
        println!("sink, while draining: {}", read_slowlog(&redis).await?);
    }
    Ok(())
}

async fn redis_cmd(redis: &Pool, cmd: &'static str, args: &[&str]) -> anyhow::Result<Value> {
    Ok(redis.next().custom(fred::cmd!(cmd), args.to_vec()).await?)
}

/// What SLOWLOG says of the commands since it was reset.
struct Slowlog {
    count: usize,
    /// Redis's time in all of them (µs).
    total_us: i64,
    /// The median command's time (µs).
    median_us: i64,
    /// The longest command's time (µs) and its first words (a script's
    /// SHA shortened).
    longest: (i64, String),
}

impl std::fmt::Display for Slowlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Redis commands, {:.1} ms of Redis's time in all, the median {:.2} ms, the longest {:.2} ms ({})",
            self.count,
            self.total_us as f64 / 1000.0,
            self.median_us as f64 / 1000.0,
            self.longest.0 as f64 / 1000.0,
            self.longest.1
        )
    }
}

async fn read_slowlog(redis: &Pool) -> anyhow::Result<Slowlog> {
    // Each entry: [id, unix time, µs, [command, args...], client, name].
    let log = redis_cmd(redis, "SLOWLOG", &["GET", "-1"])
        .await?
        .into_array();
    let mut total = 0;
    let mut times = Vec::with_capacity(log.len());
    let mut longest = (0, String::new());
    for entry in &log {
        let entry = entry.clone().into_array();
        let us = entry.get(2).and_then(|v| v.as_i64()).unwrap_or(0);
        total += us;
        times.push(us);
        if us > longest.0 {
            let words: Vec<String> = entry
                .get(3)
                .cloned()
                .map(|v| v.into_array())
                .unwrap_or_default()
                .iter()
                .take(3)
                .filter_map(|w| w.as_string())
                .map(|w| w.chars().take(12).collect())
                .collect();
            longest = (us, words.join(" "));
        }
    }
    times.sort_unstable();
    Ok(Slowlog {
        count: log.len(),
        total_us: total,
        median_us: times.get(times.len() / 2).copied().unwrap_or(0),
        longest,
    })
}
