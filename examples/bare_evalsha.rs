//! The ceiling the hot endpoints are measured against: an axum server whose
//! one route makes one EVALSHA call through a fred pool built like the
//! service's, with no auth, no JSON, no limits and no middleware.
//!
//!   cargo run --release --example bare_evalsha -- 127.0.0.1:18090
//!   wrk -t1 -c64 -d15s http://127.0.0.1:18090/
//!
//! `REDIS_URL`, `REDIS_POOL_SIZE` and `TOKIO_WORKER_THREADS` as for the
//! service. The script is
//! `return 1`, so the figure is HTTP + fred + one Redis round trip; or, with
//! `SCRIPT=lua/queue_status.lua KEYS="k1 k2" ARGS="a1 a2"`, one of ours with
//! fixed keys and arguments, which separates what Redis spends on the script
//! from what the API spends around it.

#![allow(clippy::print_stderr, reason = "an example prints where it listens")]

use std::{sync::Arc, time::Duration};

use axum::{extract::State, routing::get, Router};
use fred::{clients::Pool, interfaces::LuaInterface};

fn main() -> anyhow::Result<()> {
    // Workers: TOKIO_WORKER_THREADS, else one per core, as for the service.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".to_owned());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let size = std::env::var("REDIS_POOL_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let pool = flashsale::redis::connect(&url, size, Duration::from_secs(2)).await?;
    let script = match std::env::var("SCRIPT") {
        Ok(path) => std::fs::read_to_string(path)?,
        Err(_) => "return 1".to_owned(),
    };
    let words = |name: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (keys, args) = (Arc::new(words("KEYS")), Arc::new(words("ARGS")));
    let sha: String = pool.next().script_load(script).await?;
    let app = Router::new()
        .route(
            "/",
            get(|State(bare): State<Bare>| async move {
                let (keys, args) = (bare.keys.to_vec(), bare.args.to_vec());
                match bare
                    .pool
                    .next()
                    .evalsha::<fred::types::Value, _, _, _>(&*bare.sha, keys, args)
                    .await
                {
                    Ok(v) => format!("{v:?}"),
                    Err(e) => e.to_string(),
                }
            }),
        )
        .with_state(Bare {
            pool,
            sha: sha.into(),
            keys,
            args,
        });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare_evalsha listening on {addr}");
    axum::serve(listener, app).await?;
    Ok(())
}

#[derive(Clone)]
struct Bare {
    pool: Pool,
    sha: Arc<str>,
    keys: Arc<Vec<String>>,
    args: Arc<Vec<String>>,
}
