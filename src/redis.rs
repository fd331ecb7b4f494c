//! The Redis client pool (fred), configured not to hang when Redis does not
//! answer: every command has a timeout, and the clients reconnect forever in
//! the background.
//!
//! TLS: a `rediss://` URL connects over TLS (rustls), checking the server's
//! certificate against the system's roots, or only against the CA
//! certificates in the PEM file `REDIS_TLS_CA_FILE` names (a private CA, as
//! managed and in-cluster Redis servers often use).

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use fred::{
    clients::Pool,
    interfaces::ClientLike,
    prelude::{Builder, Config, ReconnectPolicy},
    types::config::TlsConnector,
};

/// A pool for `url`, with the CA file of `REDIS_TLS_CA_FILE` if it is set.
pub async fn connect(url: &str, size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    let ca = std::env::var_os("REDIS_TLS_CA_FILE").filter(|v| !v.is_empty());
    connect_with_ca(url, size, timeout, ca.as_deref().map(Path::new)).await
}

/// A pool for `url`; over TLS, the server's certificate must chain to a CA
/// in `ca` (a PEM file) when given, else to the system's roots.
pub async fn connect_with_ca(
    url: &str,
    size: usize,
    timeout: Duration,
    ca: Option<&Path>,
) -> anyhow::Result<Pool> {
    let mut config = Config::from_url(url).context("parse REDIS_URL")?;
    if let Some(ca) = ca {
        anyhow::ensure!(
            config.uses_tls(),
            "REDIS_TLS_CA_FILE is set but REDIS_URL is not a rediss:// URL"
        );
        config.tls = Some(tls_trusting(ca)?.into());
    }
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

/// A TLS connector that trusts exactly the CA certificates in `path`.
fn tls_trusting(path: &Path) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read REDIS_TLS_CA_FILE {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("parse REDIS_TLS_CA_FILE {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "REDIS_TLS_CA_FILE {} holds no certificate",
        path.display()
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config.into())
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
