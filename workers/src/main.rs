//! `flashsale-workers`: runs every background worker of flashsale in one
//! process, until SIGTERM or Ctrl-C, then finishes the current step and exits.

#![allow(clippy::print_stdout, reason = "a CLI prints its results")]

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use flashsale::{
    config::{Config, WorkersConfig},
    scripts::Scripts,
    telemetry,
};
use flashsale_workers::{
    archiver, every, expirer, liveness::Heartbeats, reconciler::Reconciler, releaser, sink::Sink,
};
use tokio_util::sync::CancellationToken;

/// mimalloc, as in the API: the release, expiry and sink loops allocate many
/// small, short-lived objects too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Check { sale, confirmed }) = cli.command {
        return check(&sale, confirmed.as_deref()).await;
    }
    let config = Config::from_env()?;
    let WorkersConfig {
        expire_every,
        release_poll,
        metrics_addr,
        step_limit,
        sink_every,
        reconcile_every,
        archive_every,
        sink_consumer,
        sink_batch,
        sink_claim_idle_ms,
        sink_max_deliveries,
    } = WorkersConfig::from_env()?;
    let idle_ms = config.queue_idle_seconds * 1000;
    telemetry::init_tracing(config.log_format);
    let metrics = telemetry::metrics();
    let sink = Arc::new(
        Sink::new(sink_consumer, sink_batch, sink_claim_idle_ms)
            .max_deliveries(sink_max_deliveries),
    );
    let redis = flashsale::redis::connect_with_ca(
        &config.redis_url,
        2,
        config.store_timeout,
        config.redis_tls_ca.as_deref(),
    )
    .await?;
    let db = flashsale::db::connect(&config.database_url, 4, config.store_timeout).await?;
    let scripts = Arc::new(Scripts::new());
    if let Err(err) = scripts.load(&redis).await {
        tracing::warn!(error = %err, "could not preload Lua scripts");
    }
    flashsale::redis::check_eviction_policy(&redis).await;

    let stop = CancellationToken::new();
    let beats = Arc::new(Heartbeats::default());
    let reconciler = Arc::new(Reconciler::default());
    let expiring = {
        let (redis, scripts) = (redis.clone(), scripts.clone());
        tokio::spawn(every(
            "expirer",
            expire_every,
            step_limit,
            stop.clone(),
            beats.add("expirer", expire_every, step_limit),
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
            beats.add("releaser", release_poll, step_limit),
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
            beats.add("sink", sink_every, step_limit),
            move || {
                let (redis, scripts, db, sink) =
                    (redis.clone(), scripts.clone(), db.clone(), sink.clone());
                async move { sink.run_once(&redis, &scripts, &db).await.map(|_| ()) }
            },
        ))
    };
    let reconciling = {
        let (redis, scripts, db, reconciler) = (
            redis.clone(),
            scripts.clone(),
            db.clone(),
            reconciler.clone(),
        );
        tokio::spawn(every(
            "reconciler",
            reconcile_every,
            step_limit,
            stop.clone(),
            beats.add("reconciler", reconcile_every, step_limit),
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
    let archiving = {
        let (redis, scripts, db) = (redis.clone(), scripts.clone(), db.clone());
        tokio::spawn(every(
            "archiver",
            archive_every,
            step_limit,
            stop.clone(),
            beats.add("archiver", archive_every, step_limit),
            move || {
                let (redis, scripts, db) = (redis.clone(), scripts.clone(), db.clone());
                async move { archiver::run_once(&redis, &scripts, &db).await.map(|_| ()) }
            },
        ))
    };
    // The workers' own metrics (admissions, expiries, queue and stock
    // gauges), and their liveness.
    let listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    let metrics_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (metrics, reconciler) = (metrics.clone(), reconciler.clone());
                async move {
                    let mut text = metrics.render();
                    text.push_str(&reconciler.render_stock());
                    text
                }
            }),
        )
        .route(
            "/live",
            axum::routing::get(move || {
                let beats = beats.clone();
                async move { beats.response() }
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
    let _ = tokio::join!(
        expiring,
        releasing,
        sinking,
        reconciling,
        archiving,
        serving
    );
    tracing::info!("flashsale workers stopped");
    Ok(())
}

/// flashsale's background workers: the releaser, the hold expirer, the
/// stream sink, the reconciler and the archiver, until SIGTERM or Ctrl-C. Settings come
/// from the environment (README, Configuration).
#[derive(Parser)]
#[command(name = "flashsale-workers", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The post-run check of a load test: every invariant of the sale, and
    /// every confirmation a client was told of in Postgres. Exits 1 when an
    /// invariant is broken.
    Check {
        /// The sale to check.
        #[arg(long)]
        sale: String,
        /// A file of the reservation ids clients were told are confirmed,
        /// one a line.
        #[arg(long)]
        confirmed: Option<std::path::PathBuf>,
    },
}

/// `flashsale-workers check --sale ID [--confirmed FILE]` (see `check.rs`).
async fn check(sale: &str, confirmed: Option<&std::path::Path>) -> anyhow::Result<()> {
    let sale: flashsale::ids::SaleId = sale.parse().context("--sale is not a sale id")?;
    let told: std::collections::HashSet<String> = match confirmed {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("read {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Default::default(),
    };
    let config = Config::from_env()?;
    let redis = flashsale::redis::connect_with_ca(
        &config.redis_url,
        1,
        config.store_timeout,
        config.redis_tls_ca.as_deref(),
    )
    .await?;
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
