//! Redis over TLS (`rediss://`), with a private CA as managed and in-cluster
//! Redis servers use: a real `redis-server` serving TLS only, with
//! certificates made here.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{pki::Pki, *};
use fred::interfaces::ClientLike;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A redis-server that speaks TLS only (its plain port is off).
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(pki: &Pki) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(pki.path("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(&pki.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { port, child };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server with TLS did not start (is it built with TLS?)");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_buyer_queues_holds_and_confirms_through_redis_over_tls() {
    let pki = Pki::make();
    let server = TlsRedis::start(&pki);
    let app = TestApp::spawn_with_tls_redis(&server.url(), &pki.path("ca.pem")).await;
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::OK, "ready over TLS");

    let sale = app.sale_id(json!({})).await;
    let res = app.hold(sale, "tls-buyer", "A", 2, None).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let held: Value = res.json().await.unwrap();
    let id = held["id"].as_str().unwrap();
    let res = app.confirm(id, "tls-buyer").await;
    assert_eq!(res.status(), StatusCode::OK);
    let confirmed: Value = res.json().await.unwrap();
    assert_eq!(confirmed["status"], "confirmed");
    let (available, held, confirmed, capacity) = app.stock(sale, "A").await;
    assert_eq!((available, held, confirmed), (capacity - 2, 0, 2));
}

#[tokio::test]
async fn a_server_whose_certificate_the_client_does_not_trust_gets_no_command() {
    let pki = Pki::make();
    let server = TlsRedis::start(&pki);
    let timeout = Duration::from_millis(500);
    // Trusting another CA, and trusting the system's roots: neither accepts
    // the server's certificate, so no command goes through.
    let other = flashsale::redis::connect_with_ca(
        &server.url(),
        1,
        timeout,
        Some(&pki.path("other-ca.pem")),
    )
    .await
    .unwrap();
    let err = other.ping::<String>(None).await;
    assert!(
        err.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    let system = flashsale::redis::connect_with_ca(&server.url(), 1, timeout, None)
        .await
        .unwrap();
    assert!(system.ping::<String>(None).await.is_err());
    // The CA that signed it: the same server answers.
    let trusted =
        flashsale::redis::connect_with_ca(&server.url(), 1, timeout, Some(&pki.path("ca.pem")))
            .await
            .unwrap();
    assert_eq!(trusted.ping::<String>(None).await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_ca_file_with_a_plain_redis_url_or_without_certificates_is_refused() {
    let pki = Pki::make();
    let timeout = Duration::from_millis(200);
    let plain = flashsale::redis::connect_with_ca(
        "redis://127.0.0.1:6379",
        1,
        timeout,
        Some(&pki.path("ca.pem")),
    )
    .await;
    let Err(err) = plain else {
        panic!("a CA file with a plain redis:// URL was accepted")
    };
    let err = format!("{err:#}");
    assert!(err.contains("not a rediss:// URL"), "{err}");
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let none =
        flashsale::redis::connect_with_ca("rediss://127.0.0.1:6379", 1, timeout, Some(&empty))
            .await;
    let Err(err) = none else {
        panic!("a CA file without certificates was accepted")
    };
    let err = format!("{err:#}");
    assert!(err.contains("holds no certificate"), "{err}");
}
