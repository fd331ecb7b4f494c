//! `flashsale-workers`: runs every background worker of flashsale in one
//! process, until SIGTERM or Ctrl-C, then finishes the current step and exits.

#![allow(clippy::print_stdout, reason = "a CLI prints its results")]

use std::{sync::Arc, time::Duration};

use flashsale::{
    config::{self, Config},
    scripts::Scripts,
    telemetry,
};
use flashsale_workers::{every, expirer, reconciler::Reconciler, releaser, sink::Sink};
use tokio_util::sync::CancellationToken;

/// mimalloc, as in the API: the release, expiry and sink loops allocate many
/// small, short-lived objects too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("check") {
        return check(&args[1..]).await;
    }
    let config = Config::from_env()?;
    let expire_every =
        Duration::from_millis(config::parse_or("EXPIRE_INTERVAL_MS", 250u64)?.max(10));
    let release_poll = Duration::from_millis(config::parse_or("RELEASE_POLL_MS", 50u64)?.max(5));
    let idle_ms = config.queue_idle_seconds * 1000;
    let metrics_addr: std::net::SocketAddr = config::parse_or(
        "WORKERS_METRICS_ADDR",
        std::net::SocketAddr::from(([127, 0, 0, 1], 9091)),
    )?;
    telemetry::init_tracing(config.log_format);
    let metrics = telemetry::metrics();
    // Far above any step's normal run: only a hung step reaches it.
    let step_limit =
        Duration::from_secs(config::parse_or("WORKER_STEP_TIMEOUT_SECONDS", 60u64)?.max(1));
    let sink_every = Duration::from_millis(config::parse_or("SINK_INTERVAL_MS", 100u64)?.max(5));
    let reconcile_every =
        Duration::from_secs(config::parse_or("RECONCILE_INTERVAL_SECONDS", 5u64)?.max(1));
    let sink = Arc::new(
        Sink::new(
            std::env::var("SINK_CONSUMER").unwrap_or_else(|_| {
                format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "sink".into()),
                    std::process::id()
                )
            }),
            config::parse_or("SINK_BATCH", 500u64)?.clamp(1, 10_000),
            config::parse_or("SINK_CLAIM_IDLE_MS", 30_000u64)?,
        )
        .max_deliveries(config::parse_or("SINK_MAX_DELIVERIES", 60u32)?.max(1)),
    );
    let redis = flashsale::redis::connect(&config.redis_url, 2, config.store_timeout).await?;
    let db = flashsale::db::connect(&config.database_url, 4, config.store_timeout).await?;
    let scripts = Arc::new(Scripts::new());
    if let Err(err) = scripts.load(&redis).await {
        tracing::warn!(error = %err, "could not preload Lua scripts");
    }

    let stop = CancellationToken::new();
    let expiring = {
        let (redis, scripts) = (redis.clone(), scripts.clone());
        tokio::spawn(every(
            "expirer",
            expire_every,
            step_limit,
            stop.clone(),
            move || {
                let (redis, scripts) = (redis.clone(), scripts.clone());
                async move { expirer::run_once(&redis, &scripts).await.map(|_| ()) }
            },
        ))
    };
    let releasing = {
        let (redis, scripts) = (redis.clone(), scripts.clone());
        tokio::spawn(every(
            "releaser",
            release_poll,
            step_limit,
            stop.clone(),
            move || {
                let (redis, scripts) = (redis.clone(), scripts.clone());
                async move {
                    releaser::run_once(&redis, &scripts, idle_ms)
                        .await
                        .map(|_| ())
                }
            },
        ))
    };
    let sinking = {
        let (redis, scripts, db, sink) = (redis.clone(), scripts.clone(), db.clone(), sink.clone());
        tokio::spawn(every(
            "sink",
            sink_every,
            step_limit,
            stop.clone(),
            move || {
                let (redis, scripts, db, sink) =
                    (redis.clone(), scripts.clone(), db.clone(), sink.clone());
                async move { sink.run_once(&redis, &scripts, &db).await.map(|_| ()) }
            },
        ))
    };
    let reconciling = {
        let (redis, scripts, db) = (redis.clone(), scripts.clone(), db.clone());
        let reconciler = Arc::new(Reconciler::default());
        tokio::spawn(every(
            "reconciler",
            reconcile_every,
            step_limit,
            stop.clone(),
            move || {
                let (redis, scripts, db, reconciler) = (
                    redis.clone(),
                    scripts.clone(),
                    db.clone(),
                    reconciler.clone(),
                );
                async move { reconciler.run_once(&redis, &scripts, &db).await.map(|_| ()) }
            },
        ))
    };
    // The workers' own metrics (admissions, expiries, queue gauges).
    let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }),
    );
    let serving = {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };
    tracing::info!(
        expire_every_ms = expire_every.as_millis() as u64,
        release_poll_ms = release_poll.as_millis() as u64,
        queue_idle_seconds = idle_ms / 1000,
        metrics = %metrics_addr,
        "flashsale workers running"
    );

    flashsale::shutdown_signal().await;
    stop.cancel();
    let _ = tokio::join!(expiring, releasing, sinking, reconciling, serving);
    tracing::info!("flashsale workers stopped");
    Ok(())
}

/// `flashsale-workers check --sale ID [--confirmed FILE]`: the post-run check
/// of a load test (see `check.rs`). Exits 1 when an invariant is broken.
async fn check(args: &[String]) -> anyhow::Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let sale: flashsale::ids::SaleId = value("--sale")
        .ok_or_else(|| {
            anyhow::anyhow!("usage: flashsale-workers check --sale ID [--confirmed FILE]")
        })?
        .parse()
        .map_err(|_| anyhow::anyhow!("--sale is not a sale id"))?;
    let told: std::collections::HashSet<String> = match value("--confirmed") {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Default::default(),
    };
    let config = Config::from_env()?;
    let redis = flashsale::redis::connect(&config.redis_url, 1, config.store_timeout).await?;
    let db = flashsale::db::connect(&config.database_url, 2, config.store_timeout).await?;
    let scripts = Scripts::new();
    let v = flashsale_workers::check::run(&redis, &scripts, &db, sale, &told).await?;
    println!("post-run check of sale {sale}");
    for z in &v.report.zones {
        println!(
            "  zone {:<8} capacity {:>7}  available {:>7}  held {:>5}  confirmed {:>7}  in postgres {:>7}  drift {}  oversold {}",
            z.zone, z.capacity, z.available, z.held, z.confirmed, z.persisted, z.drift, z.oversold
        );
    }
    println!(
        "  confirmations clients were told of: {} ({} missing in Postgres); holds past deadline: {}; stream lag: {}",
        v.told_confirmed, v.missing_in_postgres, v.holds_past_deadline, v.report.lag_entries
    );
    println!(
        "  queue: {} admitted over {} release ticks; ticks out of order: {}; waiting buyers overtaken: {}",
        v.queue.admitted, v.queue.ticks, v.queue.out_of_order_ticks, v.queue.overtaken_waiting
    );
    if v.broken.is_empty() {
        println!("  all invariants hold");
        Ok(())
    } else {
        for b in &v.broken {
            println!("  BROKEN: {b}");
        }
        std::process::exit(1);
    }
}
