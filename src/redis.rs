//! The Redis client pool (fred), configured not to hang when Redis does not
//! answer: every command has a timeout, and the clients reconnect forever in
//! the background.

use std::time::Duration;

use anyhow::Context;
use fred::{
    clients::Pool,
    interfaces::ClientLike,
    prelude::{Builder, Config, ReconnectPolicy},
};

pub async fn connect(url: &str, size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    let config = Config::from_url(url).context("parse REDIS_URL")?;
    let pool = Builder::from_config(config)
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // A command is sent once: a Lua script that reached Redis but whose
            // reply was lost must not run a second time behind the caller's back.
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build_pool(size)
        .context("build redis pool")?;
    // Connect in the background: a Redis that is down at start makes the
    // service report not-ready and answer 503, not refuse to start.
    pool.connect_pool();
    if tokio::time::timeout(timeout, pool.wait_for_connect())
        .await
        .is_err()
    {
        tracing::warn!(url = %redacted(url), "redis does not answer yet; will keep trying");
    }
    Ok(pool)
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
