//! `flashsale-workers`: runs every background worker of flashsale in one
//! process, until SIGTERM or Ctrl-C, then finishes the current step and exits.

use std::{sync::Arc, time::Duration};

use flashsale::{
    config::{self, Config},
    scripts::Scripts,
    telemetry,
};
use flashsale_workers::{every, expirer};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let expire_every =
        Duration::from_millis(config::parse_or("EXPIRE_INTERVAL_MS", 250u64)?.max(10));
    telemetry::init_tracing(config.log_format);
    let _metrics = telemetry::metrics();
    let redis = flashsale::redis::connect(&config.redis_url, 2, config.store_timeout).await?;
    let scripts = Arc::new(Scripts::new());
    if let Err(err) = scripts.load(&redis).await {
        tracing::warn!(error = %err, "could not preload Lua scripts");
    }

    let stop = CancellationToken::new();
    let expiring = {
        let (redis, scripts) = (redis.clone(), scripts.clone());
        tokio::spawn(every("expirer", expire_every, stop.clone(), move || {
            let (redis, scripts) = (redis.clone(), scripts.clone());
            async move { expirer::run_once(&redis, &scripts).await.map(|_| ()) }
        }))
    };
    tracing::info!(
        expire_every_ms = expire_every.as_millis() as u64,
        "flashsale workers running"
    );

    flashsale::shutdown_signal().await;
    stop.cancel();
    let _ = expiring.await;
    tracing::info!("flashsale workers stopped");
    Ok(())
}
