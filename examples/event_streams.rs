//! How many queue event streams one API process holds, and what they cost.
//!
//! Starts a Redis of its own, a fresh Postgres database and the API
//! (`flashsale serve`, a separate process, so that the API and this client
//! each have their own file-descriptor limit: with `ulimit -n` at 20,000,
//! about 19,900 streams is the most either can hold), then:
//!
//! 1. queues `streams` buyers in one sale (straight through the join
//!    script; no releaser runs, so nobody moves until step 3) and reads the
//!    API's resident memory (VmRSS);
//! 2. opens one event stream per buyer (`GET .../queue/events`, plain
//!    HTTP/1.1 over TCP, each waiting for its first event) and reads VmRSS
//!    again: the difference over the streams is the cost of one;
//! 3. resumes the sale and runs one release tick by hand, as the releaser
//!    does, admitting `admit` buyers: prints how long after the tick each
//!    admitted buyer's stream delivered `admitted`;
//! 4. sends the API SIGTERM with every stream open: prints how long it took
//!    to exit and how many streams ended cleanly.
//!
//!   cargo build --release --bin flashsale && cargo build --example event_streams
//!   FLASHSALE_BIN=target/release/flashsale target/debug/examples/event_streams <streams> [admit]
//!
//! `FLASHSALE_BIN` names the API binary (default: `flashsale` beside this
//! example's folder); `DATABASE_URL` a Postgres whose user may create
//! databases (the one made is dropped at the end). `admit` (1,000 by
//! default) is the sale's release rate, a tick a second. With
//! `PLAIN_CONNECTIONS=1` it opens as many idle keep-alive connections (one
//! `GET /health` each) instead of streams, for comparison. The client runs
//! on the same machine: its own work competes with the API's for the CPU,
//! and the latencies count both.

#![allow(clippy::print_stdout, reason = "an example prints its figures")]
#![allow(
    clippy::unwrap_used,
    reason = "a measurement stops at its first failure"
)]

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use flashsale::{
    config::{JwtConfig, DEV_JWT_SECRET},
    queue,
    scripts::Scripts,
    tokens::{AccessTokens, Role},
};
use flashsale_testkit::{fresh_database, PrivateRedis};
use futures::{stream, StreamExt};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Streams being opened at once.
const OPENING: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let streams: usize = args
        .first()
        .context("usage: event_streams <streams> [admit]")?
        .parse()?;
    let admit: u64 = args.get(1).map_or(Ok(1_000), |a| a.parse())?;

    let redis_server = PrivateRedis::start();
    let (db, db_url) = fresh_database().await;
    db.close().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let bin = std::env::var("FLASHSALE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let me = std::env::current_exe().unwrap();
            me.parent().unwrap().parent().unwrap().join("flashsale")
        });
    let mut api = Command::new(&bin)
        .arg("serve")
        .env("FLASHSALE_ENV", "development")
        .env("DATABASE_URL", &db_url)
        .env("REDIS_URL", redis_server.url())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RATE_LIMITS", "off")
        .env("MAX_EVENT_STREAMS", "1000000")
        .env("RUST_LOG", "warn")
        .env_remove("JWT_SECRET")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = api.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/health")).send().await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the API did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let tokens = AccessTokens::new(&JwtConfig {
        secret: DEV_JWT_SECRET.into(),
        issuer: None,
        audience: None,
        leeway_seconds: 5,
    });
    let organizer = tokens.issue("organizer-1", Role::Organizer, 3600)?;
    // `admit` buyers a tick (one a second), stock for all of them.
    let sale: serde_json::Value = http
        .post(format!("{base}/v1/sales"))
        .bearer_auth(&organizer)
        .json(&json!({
            "name": "Event streams",
            "zones": [{"code": "A", "name": "Floor", "capacity": 1_000_000, "price_cents": 100}],
            "release_rate": admit,
            "release_interval_ms": 1000,
            "per_user_limit": 4
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sale_id: flashsale::ids::SaleId = sale["id"].as_str().context("sale id")?.parse()?;

    let redis = flashsale::redis::connect(&redis_server.url(), 4, Duration::from_secs(10)).await?;
    let scripts = Arc::new(Scripts::new());
    let seed = flashsale::queue::Seeds::default()
        .get(&redis, sale_id)
        .await?;
    let buyers: Vec<String> = (0..streams).map(|i| format!("buyer-{i:06}")).collect();
    stream::iter(&buyers)
        .map(|b| queue::join(&redis, &scripts, sale_id, b, &seed))
        .buffered(64)
        .for_each(|r| {
            r.unwrap();
            async {}
        })
        .await;
    let idle_kib = rss_kib(pid)?;
    println!(
        "API process {pid}, {streams} buyers waiting; VmRSS {idle_kib} KiB with no stream open"
    );

    if std::env::var_os("PLAIN_CONNECTIONS").is_some() {
        // For comparison: as many idle keep-alive connections, each after
        // one `GET /health`, and no stream.
        let mut conns = Vec::with_capacity(streams);
        for _ in 0..streams {
            conns.push(open(port, "/health", "", "\"ok\"}").await?);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let open_kib = rss_kib(pid)?;
        println!(
            "{streams} idle keep-alive connections after GET /health; VmRSS {open_kib} KiB: {:.2} KiB a connection",
            (open_kib.saturating_sub(idle_kib)) as f64 / streams as f64
        );
        api.kill()?;
        api.wait()?;
        return Ok(());
    }

    // Open the streams, each waiting for its first event.
    let admitted_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let clean_ends = Arc::new(AtomicUsize::new(0));
    let cut_ends = Arc::new(AtomicUsize::new(0));
    let opening = Instant::now();
    let mut opened = stream::iter(buyers.iter())
        .map(|b| {
            let token = tokens.issue(b, Role::Buyer, 3600).unwrap();
            let path = format!("/v1/sales/{sale_id}/queue/events");
            async move { open(port, &path, &token, "\n\n").await.unwrap() }
        })
        .buffer_unordered(OPENING);
    let mut readers = tokio::task::JoinSet::new();
    while let Some(conn) = opened.next().await {
        readers.spawn(read_stream(
            conn,
            admitted_at.clone(),
            clean_ends.clone(),
            cut_ends.clone(),
        ));
    }
    let opened_in = opening.elapsed();
    // Let the streams' first exact reads and the allocator settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let open_kib = rss_kib(pid)?;
    println!(
        "{streams} streams open in {:.1} s; VmRSS {open_kib} KiB ({:.1} MiB): {:.2} KiB a stream",
        opened_in.as_secs_f64(),
        open_kib as f64 / 1024.0,
        (open_kib.saturating_sub(idle_kib)) as f64 / streams as f64
    );

    // One release tick, as the releaser runs it (no releaser runs here:
    // nobody is admitted but by this tick).
    let tick = loop {
        if let Some(tick) =
            queue::release_tick(&redis, &scripts, sale_id, 3_600_000, admit as u32).await?
        {
            break tick;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ticked = Instant::now();
    let waited = Instant::now();
    while admitted_at.lock().unwrap().len() < tick.admitted as usize
        && waited.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies: Vec<f64> = admitted_at
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.saturating_duration_since(ticked).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    if latencies.is_empty() {
        println!(
            "the tick admitted {} buyers; no stream told of it",
            tick.admitted
        );
    } else {
        println!(
            "the tick admitted {}; {} streams told `admitted`, after the tick: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            tick.admitted,
            latencies.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }

    // SIGTERM with every other stream still open.
    let before_stop = rss_kib(pid)?;
    let stopping = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = api.wait()?;
    let exited_in = stopping.elapsed();
    let _ = tokio::time::timeout(Duration::from_secs(10), readers.join_all()).await;
    println!(
        "SIGTERM with {} streams open (VmRSS {before_stop} KiB): exited ({status}) in {:.0} ms; {} streams ended cleanly, {} cut",
        streams - latencies.len(),
        exited_in.as_secs_f64() * 1000.0,
        clean_ends.load(Ordering::Relaxed),
        cut_ends.load(Ordering::Relaxed),
    );

    let admin = sqlx::PgPool::connect(&flashsale_testkit::database_url()).await?;
    let name = db_url.rsplit('/').next().unwrap_or_default();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    Ok(())
}

/// Reads a stream to its end: notes when it told `admitted`, and whether it
/// ended cleanly (the last chunk of the body) or was cut.
async fn read_stream(
    mut conn: TcpStream,
    admitted_at: Arc<Mutex<Vec<Instant>>>,
    clean_ends: Arc<AtomicUsize>,
    cut_ends: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 1024];
    let mut told_admitted = false;
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => {
                cut_ends.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if !told_admitted && text.contains("\"state\":\"admitted\"") {
                    told_admitted = true;
                    admitted_at.lock().unwrap().push(Instant::now());
                }
                if text.ends_with("0\r\n\r\n") {
                    clean_ends.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Connects, sends `GET path` and reads until the body holds `until` (for
/// a stream, its first event).
async fn open(port: u16, path: &str, token: &str, until: &str) -> anyhow::Result<TcpStream> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the stream closed before its first event");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(head_end) = text.find("\r\n\r\n") {
            anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "refused: {text}");
            if text[head_end + 4..].contains(until) {
                return Ok(conn);
            }
        }
    }
}

/// The process's resident memory, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")
}
