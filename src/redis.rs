//! The Redis client pool (fred), configured not to hang when Redis does not
//! answer: every command has a timeout, and the clients reconnect forever in
//! the background.
//!
//! `REDIS_URL` takes these forms (the API, the workers and the command line
//! all read it through `connect`):
//!
//! - One server: `redis://[[user]:password@]host[:port][/db]`.
//! - Redis Sentinel, a comma list of sentinels (port 26379 when left out):
//!   `redis-sentinel://s1:26379,s2:26379,s3:26379/0?sentinelServiceName=mymaster`;
//!   or fred's own form, one sentinel in the authority and the others as
//!   `node` parameters (each with its port):
//!   `redis-sentinel://s1:26379/0?sentinelServiceName=mymaster&node=s2:26379&node=s3:26379`.
//!   `sentinelServiceName` (the name the sentinels monitor) is required; a
//!   plain `redis://` URL that carries it is read as Sentinel too (fred alone
//!   would take the sentinel for a Redis server and ignore the name). The
//!   user and password are the Redis servers'; sentinels that need their own
//!   take `sentinelUsername` and `sentinelPassword` parameters, and without
//!   them are asked without credentials. Each (re)connection asks a sentinel
//!   for the primary and checks that it is one (ROLE), so when the primary
//!   dies the clients reconnect, through the sentinels, to the replica they
//!   promoted: no restart needed.
//! - Redis Cluster: `redis-cluster://a:6379,b:6379` or fred's
//!   `redis-cluster://a:6379?node=b:6379`.
//!
//! TLS: `rediss://` (also `rediss-sentinel://`, `rediss-cluster://`) connects
//! over TLS (rustls), checking the server's certificate against the system's
//! roots, or only against the CA certificates in the PEM file
//! `REDIS_TLS_CA_FILE` names (a private CA, as managed and in-cluster Redis
//! servers often use).

use std::{borrow::Cow, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use fred::{
    clients::Pool,
    interfaces::{ClientLike, EventInterface},
    prelude::{Builder, Config, ReconnectPolicy},
    types::config::TlsConnector,
};

/// Warns when Redis may evict keys under memory pressure. flashsale's
/// keys are its stock, holds and queue: an evicted key is tickets sold twice
/// or a buyer's place lost, so Redis must refuse writes when full
/// (`maxmemory-policy noeviction`; the API then answers `503`) rather than
/// drop anything. Managed Redis often refuses CONFIG: then this says so at
/// debug level and the service starts as usual.
pub async fn check_eviction_policy(redis: &Pool) {
    use fred::types::{ClusterHash, CustomCommand};
    let cmd = CustomCommand::new_static("CONFIG", ClusterHash::Random, false);
    let reply: Result<std::collections::HashMap<String, String>, _> =
        redis.custom(cmd, vec!["GET", "maxmemory-policy"]).await;
    match reply {
        Ok(config) => match config.get("maxmemory-policy").map(String::as_str) {
            Some("noeviction") => {
                tracing::debug!("redis maxmemory-policy is noeviction");
            }
            Some(policy) => tracing::warn!(
                policy,
                "redis maxmemory-policy is not noeviction: when Redis fills up it may evict a sale's stock, holds or queue; set `maxmemory-policy noeviction`"
            ),
            None => tracing::debug!("redis did not say its maxmemory-policy; not checked"),
        },
        Err(err) => tracing::debug!(
            error = %err,
            "could not read redis's maxmemory-policy (CONFIG is often disabled on managed Redis); not checked"
        ),
    }
}

/// A pool for `url`, trusting the system's roots over TLS.
pub async fn connect(url: &str, size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    connect_with_ca(url, size, timeout, None).await
}

/// A pool for `url`; over TLS, the server's certificate must chain to a CA
/// in `ca` (a PEM file) when given, else to the system's roots.
pub async fn connect_with_ca(
    url: &str,
    size: usize,
    timeout: Duration,
    ca: Option<&Path>,
) -> anyhow::Result<Pool> {
    let mut config = config_from_url(url)?;
    if let Some(ca) = ca {
        anyhow::ensure!(
            config.uses_tls(),
            "REDIS_TLS_CA_FILE is set but REDIS_URL is not a rediss:// URL"
        );
        config.tls = Some(tls_trusting(ca)?.into());
    }
    let config_is_sentinel = config.server.is_sentinel();
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
    if config_is_sentinel {
        // Which server the sentinels named, at start and after each failover.
        for client in pool.clients() {
            client.on_reconnect(|primary| async move {
                tracing::info!(primary = %primary, "connected to the redis primary the sentinels name");
                Ok(())
            });
        }
    }
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

/// fred's configuration for a `REDIS_URL` in any form the module doc lists.
pub fn config_from_url(url: &str) -> anyhow::Result<Config> {
    let url = with_node_params(url)?;
    let (scheme, _) = url.split_once("://").unwrap_or_default();
    let names_service = query(&url).any(|(k, _)| k == SENTINEL_SERVICE);
    if scheme.ends_with("-sentinel") && !names_service {
        anyhow::bail!(
            "REDIS_URL: a {scheme}:// URL needs ?{SENTINEL_SERVICE}=<the name the sentinels monitor, e.g. mymaster>"
        );
    }
    let config = if names_service && !scheme.ends_with("-sentinel") {
        if scheme.ends_with("-cluster") {
            anyhow::bail!("REDIS_URL: {SENTINEL_SERVICE} does not go with a {scheme}:// URL");
        }
        Config::from_url_sentinel(&url)
    } else {
        Config::from_url(&url)
    };
    config.context("parse REDIS_URL")
}

const SENTINEL_SERVICE: &str = "sentinelServiceName";

/// A URL's query parameters, undecoded.
fn query(url: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Rewrites a comma list of hosts (`scheme://a:1,b:2,c/...`) into fred's
/// form: the first host stays, the others become `node=host:port`
/// parameters, each with the scheme's default port if it has none (fred
/// requires one there). Any other URL is returned as it is.
fn with_node_params(url: &str) -> anyhow::Result<Cow<'_, str>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(Cow::Borrowed(url));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = authority.split_at(authority.rfind('@').map_or(0, |at| at + 1));
    if !hosts.contains(',') {
        return Ok(Cow::Borrowed(url));
    }
    let default_port = if scheme.ends_with("-sentinel") {
        26379
    } else {
        6379
    };
    let mut hosts = hosts.split(',').map(str::trim).map(|host| {
        anyhow::ensure!(
            !host.is_empty(),
            "REDIS_URL: an empty host in the list of hosts"
        );
        anyhow::ensure!(
            !host.starts_with('['),
            "REDIS_URL: IPv6 addresses cannot be listed; use a name, or fred's `node=` parameters"
        );
        Ok(if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:{default_port}")
        })
    });
    let first = hosts.next().unwrap_or_else(|| Ok(String::new()))?;
    let (path, fragment) = tail
        .split_once('#')
        .map_or((tail, None), |(p, f)| (p, Some(f)));
    let (path, params) = path.split_once('?').unwrap_or((path, ""));
    let mut out = format!("{scheme}://{userinfo}{first}{path}?{params}");
    for host in hosts {
        if !out.ends_with('?') {
            out.push('&');
        }
        out.push_str("node=");
        out.push_str(&host?);
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Ok(Cow::Owned(out))
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

#[cfg(test)]
mod tests {
    use fred::types::config::{Server, ServerConfig};

    use super::*;

    fn sentinel(url: &str) -> (Vec<(String, u16)>, String, Option<u8>) {
        let config = config_from_url(url).unwrap();
        let db = config.database;
        match config.server {
            ServerConfig::Sentinel {
                mut hosts,
                service_name,
                ..
            } => {
                hosts.sort_by(|a, b| (&*a.host, a.port).cmp(&(&*b.host, b.port)));
                let hosts = hosts
                    .into_iter()
                    .map(|s: Server| (s.host.to_string(), s.port))
                    .collect();
                (hosts, service_name, db)
            }
            other => panic!("{url} is not read as Sentinel: {other:?}"),
        }
    }

    fn three() -> Vec<(String, u16)> {
        vec![
            ("a".to_owned(), 26379),
            ("b".to_owned(), 26380),
            ("c".to_owned(), 26379),
        ]
    }

    #[test]
    fn a_comma_list_of_sentinels_is_read_as_freds_node_parameters() {
        let from_list =
            sentinel("redis-sentinel://a:26379,b:26380,c/0?sentinelServiceName=mymaster");
        let freds = sentinel(
            "redis-sentinel://a:26379/0?sentinelServiceName=mymaster&node=b:26380&node=c:26379",
        );
        assert_eq!(from_list, (three(), "mymaster".to_owned(), Some(0)));
        assert_eq!(from_list, freds);
    }

    #[test]
    fn a_comma_list_keeps_the_password_and_works_without_a_database() {
        let config =
            config_from_url("redis-sentinel://:s3cret@a,b:26380,c?sentinelServiceName=m").unwrap();
        assert_eq!(config.password.as_deref(), Some("s3cret"));
        assert_eq!(config.database, None);
        assert_eq!(
            sentinel("redis-sentinel://:s3cret@a,b:26380,c?sentinelServiceName=m").0,
            three()
        );
    }

    #[test]
    fn a_plain_redis_url_naming_a_sentinel_service_is_read_as_sentinel() {
        assert_eq!(
            sentinel("redis://a:26379?sentinelServiceName=mymaster"),
            (vec![("a".to_owned(), 26379)], "mymaster".to_owned(), None)
        );
    }

    #[test]
    fn a_sentinel_url_without_a_service_name_is_refused_with_a_hint() {
        let err = config_from_url("redis-sentinel://a:26379,b:26379").unwrap_err();
        assert!(err.to_string().contains("sentinelServiceName"), "{err}");
    }

    #[test]
    fn a_cluster_url_takes_a_comma_list_too() {
        let config = config_from_url("redis-cluster://a:7000,b:7001,c").unwrap();
        let mut hosts: Vec<(String, u16)> = config
            .server
            .hosts()
            .into_iter()
            .map(|s| (s.host.to_string(), s.port))
            .collect();
        hosts.sort();
        assert_eq!(
            hosts,
            vec![
                ("a".to_owned(), 7000),
                ("b".to_owned(), 7001),
                ("c".to_owned(), 6379)
            ]
        );
    }

    #[test]
    fn a_single_server_url_is_left_as_it_is() {
        let config = config_from_url("redis://:pw@127.0.0.1:6380/2").unwrap();
        assert!(!config.server.is_sentinel());
        assert_eq!(config.server.hosts()[0].port, 6380);
        assert_eq!(config.database, Some(2));
        assert!(matches!(
            with_node_params("redis://h:1/0?x=1"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn an_empty_host_in_the_list_is_refused() {
        assert!(config_from_url("redis-sentinel://a,,b?sentinelServiceName=m").is_err());
    }
}
