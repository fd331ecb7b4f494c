//! Memory of the keyed rate limiter: a million distinct buyers poll once
//! each, then the periodic shrink forgets those back at full allowance.
//!
//!   cargo run --release --example limiter_memory -- 1000000
//!
//! Prints the process's resident memory (VmRSS) before, after the million
//! keys, and after the shrink, and how many keys the limiters hold.

#![allow(clippy::print_stdout, reason = "an example prints its figures")]

use std::time::Duration;

use flashsale::limits::{Action, Limits, LimitsConfig, Rate};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut cfg = LimitsConfig::unlimited();
    // The default poll limit: 120 a minute, bursts of 10.
    cfg.poll = Rate {
        per_minute: 120,
        burst: 10,
    };
    let limits = Limits::new(&cfg);
    let before = rss_mib();
    for i in 0..n {
        let user = format!("buyer-{i:08}");
        limits
            .check(Action::Poll, Some(&user), None)
            .await
            .expect("first poll is allowed");
    }
    let full = rss_mib();
    println!(
        "{n} keys: {} held, RSS {before:.1} MiB -> {full:.1} MiB (+{:.1} MiB, {:.0} bytes a key)",
        limits.keys(),
        full - before,
        (full - before) * 1048576.0 / n as f64
    );
    // One poll's cell refills in half a second; after that every key is back
    // at full allowance and the shrink forgets it.
    std::thread::sleep(Duration::from_secs(2));
    limits.shrink();
    let after = rss_mib();
    println!(
        "after shrink: {} keys held, RSS {after:.1} MiB",
        limits.keys()
    );
}
