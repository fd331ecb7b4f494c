//! Measures the stream sink's throughput into Postgres: fills one sale's
//! stream with real confirmations (through the confirm script), then times a
//! sink draining it.
//!
//!   cargo run --release -p flashsale-workers --example sink_throughput -- 50000 500
//!
//! Arguments: confirmations (default 50,000), batch size (default 500).
//! Uses REDIS_URL and DATABASE_URL (migrated), like the workers.

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use flashsale::{
    config::Config,
    ids::ReservationId,
    inventory::{self, HoldRequest},
    queue,
    sales::{self, NewSale},
    scripts::Scripts,
};
use flashsale_workers::sink::Sink;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50_000);
    let batch: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
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
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    sales::create(&db, &redis, &scripts, &mut def, &release)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sale = def.id;

    eprintln!("filling the stream with {n} confirmations...");
    let users: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    for u in &users {
        queue::join(&redis, &scripts, sale, u, b"seed")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut admitted = 0;
    while admitted < n as u64 {
        if let Some(t) = queue::release_tick(&redis, &scripts, sale, 3_600_000, 10_000)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
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
                };
                inventory::hold(&redis, &scripts, req)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .ok();
                inventory::confirm(redis.next(), &scripts, &id, &u, "")
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .ok();
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    let sink = Sink {
        consumer: "bench".into(),
        batch,
        claim_idle_ms: 30_000,
    };
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
    Ok(())
}
