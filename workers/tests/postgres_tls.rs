//! Postgres over TLS: `sslmode=verify-full` with the CA in `sslrootcert`,
//! against a private Postgres serving a certificate made here.

#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

mod common;

use std::time::Duration;

use common::*;
use flashsale_testkit::pki::Pki;

#[tokio::test]
async fn the_service_reaches_postgres_over_verified_tls_and_refuses_an_unknown_ca() {
    let pki = Pki::make();
    let pg = PrivatePostgres::start_with_files(
        &[
            (
                "server.crt",
                &std::fs::read(pki.path("server.pem")).unwrap(),
            ),
            (
                "server.key",
                &std::fs::read(pki.path("server.key")).unwrap(),
            ),
        ],
        &[
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
        ],
    );
    let url = |root: &str| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url("postgres"),
            pki.path(root).display()
        )
    };

    // The pool the service builds, with the CA that signed the certificate:
    // the migrations run, and the session is encrypted.
    let db = flashsale::db::connect(&url("ca.pem"), 2, Duration::from_secs(5))
        .await
        .unwrap();
    flashsale::db::migrate(&db).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(ssl, "the session is encrypted");

    // Trusting another CA: no connection.
    let untrusted = flashsale::db::connect(&url("other-ca.pem"), 1, Duration::from_secs(2))
        .await
        .unwrap();
    let err = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&untrusted)
        .await
        .expect_err("a certificate from an unknown CA was accepted");
    assert!(
        !matches!(err, sqlx::Error::Database(_)),
        "refused before any query reached the server: {err}"
    );
}
