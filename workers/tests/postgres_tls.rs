//! Postgres over TLS: `sslmode=verify-full` with the CA in `sslrootcert`,
//! against a private Postgres serving a certificate made here.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn the_service_reaches_postgres_over_verified_tls_and_refuses_an_unknown_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let other_key = KeyPair::generate().unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = other.self_signed(&other_key).unwrap();

    let pg = PrivatePostgres::start_with_files(
        &[
            ("server.crt", server.pem().as_bytes()),
            ("server.key", key.serialize_pem().as_bytes()),
        ],
        &[
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
        ],
    );
    let dir = std::env::temp_dir().join(format!("fs-pgtls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("other.pem"), other.pem()).unwrap();
    let url = |root: &str| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url("postgres"),
            dir.join(root).display()
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
    let untrusted = flashsale::db::connect(&url("other.pem"), 1, Duration::from_secs(2))
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
    let _ = std::fs::remove_dir_all(&dir);
}
