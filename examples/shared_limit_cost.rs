//! The cost of the shared rate limit (`RATE_LIMIT_STORE=redis`): the same
//! checks a poll makes (the client address's limit and the user's), once
//! with the limits in memory and once shared in Redis.
//!
//!   redis-server --port 26399 --save '' --appendonly no &
//!   REDIS_URL=redis://127.0.0.1:26399 \
//!     cargo run --release --example shared_limit_cost -- 20000 32
//!
//! Prints, for each store: checks a second and the latency of one check
//! (median, p99) one at a time, then checks a second with `concurrency` at
//! once; and, from Redis's `INFO commandstats`, the EVALSHA calls a check
//! makes and what Redis spends on each (`usec_per_call`). Last, for scale,
//! the same figures for an EVALSHA of `return 1`: the floor of any script
//! call. Use a Redis of its own: the command statistics count every
//! client's EVALSHA.

#![allow(clippy::print_stdout, reason = "an example prints its figures")]

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use flashsale::{
    limits::{Action, Limits, LimitsConfig, Rate},
    scripts::Scripts,
};
use fred::{
    clients::Pool,
    interfaces::{ClientLike, LuaInterface},
};

/// Never reached: every check is allowed, so each one does its whole work.
const WIDE: Rate = Rate {
    per_minute: 60_000_000,
    burst: 1_000_000,
};

/// EVALSHA calls and microseconds Redis spent on them so far.
async fn evalsha_stats(redis: &Pool) -> anyhow::Result<(u64, u64)> {
    let info: String = redis
        .next()
        .custom(fred::cmd!("INFO"), vec!["commandstats"])
        .await?;
    let Some(line) = info.lines().find(|l| l.starts_with("cmdstat_evalsha:")) else {
        return Ok((0, 0));
    };
    let field = |name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("calls"), field("usec")))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(
    name: &str,
    limits: Arc<Limits>,
    redis: &Pool,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let addr = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    let users: Vec<String> = (0..1000).map(|i| format!("cost-buyer-{i}")).collect();
    // Warm up: connections, the script cache, the allocator.
    for user in users.iter().take(200) {
        let _ = limits.check(Action::Poll, Some(user), addr).await;
    }
    let before = evalsha_stats(redis).await?;
    let mut each = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        limits
            .check(Action::Poll, Some(&users[i % users.len()]), addr)
            .await
            .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
        each.push(t.elapsed());
    }
    let serial = started.elapsed();
    let after = evalsha_stats(redis).await?;
    each.sort_unstable();

    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (limits, users) = (limits.clone(), users.clone());
            tokio::spawn(async move {
                for i in (t..n).step_by(concurrency) {
                    let _ = limits
                        .check(Action::Poll, Some(&users[i % users.len()]), addr)
                        .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let parallel = started.elapsed();

    let (calls, usec) = (after.0 - before.0, after.1 - before.1);
    println!(
        "{name:>6}: one at a time {:>8.0} checks/s, median {:>6.1} us, p99 {:>6.1} us; \
         {concurrency} at once {:>8.0} checks/s; EVALSHA a check {:.2}, Redis usec_per_call {:.2}",
        n as f64 / serial.as_secs_f64(),
        percentile(&each, 0.5).as_secs_f64() * 1e6,
        percentile(&each, 0.99).as_secs_f64() * 1e6,
        n as f64 / parallel.as_secs_f64(),
        calls as f64 / n as f64,
        if calls > 0 {
            usec as f64 / calls as f64
        } else {
            0.0
        },
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let redis = flashsale::redis::connect(&url, 4, Duration::from_secs(2)).await?;
    let scripts = Arc::new(Scripts::new());
    scripts.load(&redis).await?;
    let mut cfg = LimitsConfig::unlimited();
    cfg.poll = WIDE;
    cfg.per_address = WIDE;
    measure(
        "memory",
        Arc::new(Limits::new(&cfg)),
        &redis,
        n,
        concurrency,
    )
    .await?;
    let shared = Limits::new(&cfg).shared_in(redis.clone(), scripts);
    measure("redis", Arc::new(shared), &redis, n, concurrency).await?;
    floor(&redis, n).await
}

/// One EVALSHA of `return 1` at a time: the round trip and Redis's time
/// for a script that does nothing.
async fn floor(redis: &Pool, n: usize) -> anyhow::Result<()> {
    let sha: String = redis.next().script_load("return 1").await?;
    let before = evalsha_stats(redis).await?;
    let mut each = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: i64 = redis.next().evalsha(sha.as_str(), (), ()).await?;
        each.push(t.elapsed());
    }
    let after = evalsha_stats(redis).await?;
    each.sort_unstable();
    let (calls, usec) = (after.0 - before.0, after.1 - before.1);
    println!(
        "return 1: one at a time median {:>6.1} us, p99 {:>6.1} us; Redis usec_per_call {:.2}",
        percentile(&each, 0.5).as_secs_f64() * 1e6,
        percentile(&each, 0.99).as_secs_f64() * 1e6,
        usec as f64 / calls.max(1) as f64,
    );
    Ok(())
}
