//! Confirmation latency over HTTP, for load/confirm_wait.sh: each buyer of a
//! `flashsale prepare-buyers` file (`<access token> <queue pass>` a line)
//! holds one ticket, then confirms it, `concurrency` buyers at a time. Prints
//! one line with the confirmations' and the holds' p50/p99 latency.
//!
//!   confirm_latency <base url> <sale id> <buyers file> <concurrency>

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example prints its figures"
)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, sale, file, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: confirm_latency <base url> <sale id> <buyers file> <concurrency>");
    };
    let concurrency: usize = concurrency.parse().context("concurrency")?;
    let buyers: Vec<(String, String)> = std::fs::read_to_string(file)
        .with_context(|| format!("read {file}"))?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| (t.to_owned(), p.to_owned()))
        .collect();
    let buyers = Arc::new(buyers);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, buyers, next, failed, times) = (
            http.clone(),
            buyers.clone(),
            next.clone(),
            failed.clone(),
            times.clone(),
        );
        let (holds, confirms) = (
            format!("{base}/v1/sales/{sale}/reservations"),
            format!("{base}/v1/reservations"),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((token, pass)) = buyers.get(i) else {
                    break;
                };
                let t = Instant::now();
                let res = http
                    .post(&holds)
                    .bearer_auth(token)
                    .header("x-queue-pass", pass)
                    .json(&serde_json::json!({"zone": "A", "quantity": 1}))
                    .send()
                    .await;
                let held = t.elapsed();
                let id = match res {
                    Ok(r) if r.status() == 201 => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|b| b["id"].as_str().map(str::to_owned)),
                    _ => None,
                };
                let Some(id) = id else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let t = Instant::now();
                let res = http
                    .post(format!("{confirms}/{id}/confirm"))
                    .bearer_auth(token)
                    .send()
                    .await;
                let confirmed = t.elapsed();
                if !matches!(res, Ok(ref r) if r.status() == 200) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut times = times.lock().unwrap_or_else(|e| e.into_inner());
                times.0.push(held);
                times.1.push(confirmed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (mut holds, mut confirms) =
        std::mem::take(&mut *times.lock().unwrap_or_else(|e| e.into_inner()));
    holds.sort();
    confirms.sort();
    let ms = |v: &[Duration], q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "RESULT concurrency {concurrency} buyers {} confirm p50 {:.2} ms p99 {:.2} ms | hold p50 {:.2} ms p99 {:.2} ms | {:.0} buyers/s failed {}",
        confirms.len(),
        ms(&confirms, 0.50),
        ms(&confirms, 0.99),
        ms(&holds, 0.50),
        ms(&holds, 0.99),
        confirms.len() as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    );
    Ok(())
}
