//! The server's connection limits, over raw TCP: slow headers and idle
//! keep-alive connections are closed, and past the cap a new connection
//! is closed at once.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::TestApp;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Long enough for any timeout under test to have fired several times
/// over: only a connection the server never closes runs into it.
const PATIENCE: Duration = Duration::from_secs(20);

/// True when the server closes the connection (end of stream, or a reset)
/// before `PATIENCE` runs out, having sent nothing more.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!(
            "the server sent {n} bytes instead of closing: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => false,
    }
}

/// Sends `GET path` on `stream` (kept alive) and reads the answer: its
/// status and body.
async fn get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    try_get(stream, path)
        .await
        .expect("the server closed the connection instead of answering")
}

/// [`get`], or `None` when the server closes the connection first.
async fn try_get(stream: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a Content-Length");
            if data.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return Some((status, body));
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("an answer")
            .ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_connection_that_sends_half_a_header_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(1);
        c.server.keep_alive_timeout = Duration::from_secs(60);
    })
    .await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    assert!(closed_by_server(&mut slow).await);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("flashsale_connections_timed_out_total{phase=\"header\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_header_trickled_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(1);
        c.server.keep_alive_timeout = Duration::from_secs(60);
    })
    .await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    // Far more bytes than the timeout allows at this pace: a trickle that
    // kept the connection open would outlast the loop.
    let mut cut = false;
    for _ in 0..200 {
        if slow.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => panic!("unexpected answer: {:?}", &buf[..n]),
            Err(_) => {}
        }
    }
    assert!(cut, "a trickled header kept its connection open for 20 s");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(30);
        c.server.keep_alive_timeout = Duration::from_secs(1);
    })
    .await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(get(&mut conn, "/health").await.0, 200);
    assert!(closed_by_server(&mut conn).await);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("flashsale_connections_timed_out_total{phase=\"idle\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_idle_longer_than_the_header_timeout_still_serves() {
    let app = TestApp::spawn_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(1);
        c.server.keep_alive_timeout = Duration::from_secs(60);
    })
    .await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(get(&mut conn, "/health").await.0, 200);
    // Idle for three header timeouts, far inside the idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(&mut conn, "/health").await.0, 200);
    assert_eq!(get(&mut conn, "/health").await.0, 200);
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_is_closed_at_once_and_counted() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_connections = 2;
        c.server.header_read_timeout = Duration::from_secs(30);
        c.server.keep_alive_timeout = Duration::from_secs(60);
    })
    .await;
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    // Both are served, so both hold a place.
    assert_eq!(get(&mut first, "/health").await.0, 200);
    assert_eq!(get(&mut second, "/health").await.0, 200);
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    assert!(closed_by_server(&mut third).await);
    // A place freed is a place for the next connection.
    drop(first);
    let mut metrics = None;
    for _ in 0..100 {
        let mut next = TcpStream::connect(app.addr).await.unwrap();
        if let Some(answer) = try_get(&mut next, "/metrics").await {
            metrics = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, metrics) = metrics.expect("a connection is served once one closes");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("flashsale_connections_refused_total"),
        "{metrics}"
    );
    drop(second);
}

#[tokio::test]
async fn on_sigterm_serve_closes_idle_connections_and_exits_cleanly() {
    let (_, db_url) = common::fresh_database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("serve")
        .env("FLASHSALE_ENV", "development")
        .env("REDIS_URL", common::redis_url())
        .env("DATABASE_URL", &db_url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn,flashsale=info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::lines_until(&mut serve, "flashsale API listening", PATIENCE);
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(get(&mut idle, "/health").await.0, 200);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        closed_by_server(&mut idle).await,
        "an idle connection is closed at shutdown"
    );
    let mut status = None;
    for _ in 0..200 {
        status = serve.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = status else {
        let _ = serve.kill();
        panic!("serve did not exit after SIGTERM");
    };
    assert!(status.success(), "{status}");
}
