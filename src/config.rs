//! Typed configuration, read once from the environment.
//!
//! Every setting has a default that works on a developer's machine, but for
//! the secrets, which only `FLASHSALE_ENV=development` does without; a value
//! that is set but malformed stops the program at start, naming the variable.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use anyhow::{bail, Context};

use crate::limits::{IpRange, LimitStore, LimitsConfig, Rate};

/// The secret used when `JWT_SECRET` is not set, with
/// `FLASHSALE_ENV=development` only: in production the service refuses to
/// start without a secret of its own.
pub const DEV_JWT_SECRET: &str = "flashsale-development-secret-change-me-in-production";

/// Secrets anyone can read in this repository: the built-in development
/// one, the example Kubernetes Secret's placeholder and the tests' and load
/// scripts' secrets. Production refuses each as `JWT_SECRET`, as it refuses
/// any value written as a template placeholder (`<...>`).
const PUBLIC_JWT_SECRETS: &[&str] = &[
    DEV_JWT_SECRET,
    "<openssl rand -base64 48>",
    "test-secret-that-is-long-enough-for-hs256-0123456789",
    "load-test-secret-load-test-secret-0123456789",
    "bench-secret-bench-secret-bench-secret-0123",
];

/// How the service treats missing or public secrets (`FLASHSALE_ENV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    /// The default: `serve` and the commands that sign for real refuse to
    /// start without real secrets.
    Production,
    /// A developer's machine and the tests: the built-in development
    /// secret and a queue-pass key shared through Redis stand in.
    Development,
}

/// How long a confirmation waits for its replicas by default. A healthy
/// replica acknowledges within a millisecond or two; a second rides out a
/// replica's fsync stall or a slow moment of the network, yet a buyer whose
/// replica is really gone hears `503` (and retries) within a second instead
/// of hanging. WAIT holds the connection it runs on for up to this long, so
/// it also bounds how long the confirmations queued behind it wait.
const DEFAULT_CONFIRM_WAIT_MS: u64 = 1_000;
/// Longer waits would run into the API's 10 s request timeout once a few
/// confirmations queue on one connection.
const MAX_CONFIRM_WAIT_MS: u64 = 5_000;

#[derive(Clone, Debug)]
pub struct Config {
    /// `FLASHSALE_ENV`: `production` (the default) or `development`.
    pub env: Environment,
    /// Whether `JWT_SECRET` was set at all.
    pub jwt_secret_set: bool,
    pub database_url: String,
    pub redis_url: String,
    pub jwt: JwtConfig,
    pub listen_addr: SocketAddr,
    /// Connections kept to Redis; commands are pipelined over each.
    pub redis_pool_size: usize,
    pub database_max_connections: u32,
    /// How long a Redis or Postgres call may take before the client is told
    /// `503 unavailable` rather than left hanging.
    pub store_timeout: Duration,
    /// `json` for one JSON object a line (production), `text` for people.
    pub log_format: LogFormat,
    /// A waiting buyer who has not polled this long loses the place.
    pub queue_idle_seconds: u64,
    /// Lifetime of the access tokens that login issues.
    pub access_token_ttl_seconds: u64,
    /// Replicas that must acknowledge a confirmation (or the cancellation of
    /// a confirmed reservation) before the buyer is told of it; 0 answers at
    /// once, as soon as the primary has it.
    pub confirm_wait_replicas: u32,
    /// How long a confirmation waits for those replicas before the buyer is
    /// told `503` and to retry.
    pub confirm_wait_timeout: Duration,
    /// With a `rediss://` URL: the CA certificates to trust instead of the
    /// system's (`REDIS_TLS_CA_FILE`).
    pub redis_tls_ca: Option<std::path::PathBuf>,
    pub limits: LimitsConfig,
    pub passes: PassSettings,
    /// Sites whose pages may call the API from the browser
    /// (`CORS_ALLOWED_ORIGINS`): origins as browsers send them
    /// (`https://tickets.example.com`), none by default.
    pub cors_allowed_origins: Vec<String>,
    /// The HTTP server's listen queue, timeouts and connection cap.
    pub server: crate::server::ServerSettings,
    /// How often each sale followed on an event stream is read for changes
    /// (`PUSH_WATCH_INTERVAL_MS`): one Redis call per sale per interval,
    /// however many streams follow it.
    pub push_watch_interval: Duration,
    /// Event streams one API process keeps open at once
    /// (`MAX_EVENT_STREAMS`); past it, `503` and the page polls instead.
    pub max_event_streams: usize,
}

#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// `JWT_SECRET`, or [`DEV_JWT_SECRET`] when unset.
    pub secret: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, in seconds (a few at most).
    pub leeway_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl Config {
    /// The configuration from the process's environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(&Vars::process())
    }

    /// The configuration from `vars`, read as `from_env` reads the
    /// environment (the tests build theirs this way).
    pub fn from_vars(vars: &Vars) -> anyhow::Result<Self> {
        let env = match vars.optional("FLASHSALE_ENV").as_deref().map(str::trim) {
            None | Some("production") => Environment::Production,
            Some("development") => Environment::Development,
            Some(other) => {
                bail!("FLASHSALE_ENV must be `production` or `development`, not `{other}`")
            }
        };
        let set_secret = vars.optional("JWT_SECRET");
        let jwt_secret_set = set_secret.is_some();
        let secret = set_secret.unwrap_or_else(|| DEV_JWT_SECRET.to_owned());
        if secret.len() < 32 {
            bail!("JWT_SECRET must be at least 32 bytes long");
        }
        let leeway_seconds = vars.parse_or("JWT_LEEWAY_SECONDS", 5u64)?;
        if leeway_seconds > 30 {
            bail!("JWT_LEEWAY_SECONDS must be at most 30");
        }
        let confirm_wait_timeout_ms =
            vars.parse_or("CONFIRM_WAIT_TIMEOUT_MS", DEFAULT_CONFIRM_WAIT_MS)?;
        if !(1..=MAX_CONFIRM_WAIT_MS).contains(&confirm_wait_timeout_ms) {
            bail!("CONFIRM_WAIT_TIMEOUT_MS must be between 1 and {MAX_CONFIRM_WAIT_MS}");
        }
        let log_format = match vars.optional("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("LOG_FORMAT must be `json` or `text`, not `{other}`"),
        };
        let defaults = crate::server::ServerSettings::default();
        let seconds = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(
                vars.parse_or(name, default.as_secs())?.max(1),
            ))
        };
        let server = crate::server::ServerSettings {
            backlog: vars.parse_or("LISTEN_BACKLOG", defaults.backlog)?.max(1),
            header_read_timeout: seconds(
                "HEADER_READ_TIMEOUT_SECONDS",
                defaults.header_read_timeout,
            )?,
            keep_alive_timeout: seconds("KEEP_ALIVE_TIMEOUT_SECONDS", defaults.keep_alive_timeout)?,
            max_connections: vars
                .parse_or("MAX_CONNECTIONS", defaults.max_connections)?
                .max(1),
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace)?,
        };
        Ok(Self {
            env,
            jwt_secret_set,
            database_url: vars
                .optional("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/flashsale".into()),
            redis_url: vars
                .optional("REDIS_URL")
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            jwt: JwtConfig {
                secret,
                issuer: vars.optional("JWT_ISSUER"),
                audience: vars.optional("JWT_AUDIENCE"),
                leeway_seconds,
            },
            listen_addr: vars.parse_or("LISTEN_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            redis_pool_size: vars.parse_or("REDIS_POOL_SIZE", 4usize)?.max(1),
            database_max_connections: vars.parse_or("DATABASE_MAX_CONNECTIONS", 10u32)?.max(1),
            store_timeout: Duration::from_millis(
                vars.parse_or("STORE_TIMEOUT_MS", 2000u64)?.max(1),
            ),
            log_format,
            queue_idle_seconds: vars.parse_or("QUEUE_IDLE_SECONDS", 300u64)?.max(1),
            access_token_ttl_seconds: vars
                .parse_or("ACCESS_TOKEN_TTL_SECONDS", 3600u64)?
                .clamp(60, 7 * 24 * 3600),
            confirm_wait_replicas: vars.parse_or("CONFIRM_WAIT_REPLICAS", 0u32)?,
            confirm_wait_timeout: Duration::from_millis(confirm_wait_timeout_ms),
            redis_tls_ca: vars
                .optional("REDIS_TLS_CA_FILE")
                .map(std::path::PathBuf::from),
            limits: limits_from_env(vars)?,
            passes: PassSettings {
                signing_key: vars.utf8("PASS_SIGNING_KEY")?,
                key_id: vars.utf8("PASS_KEY_ID")?,
                previous_keys: vars.utf8("PASS_PREVIOUS_KEYS")?,
            },
            cors_allowed_origins: match vars.optional("CORS_ALLOWED_ORIGINS") {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(parse_origin)
                    .collect::<anyhow::Result<_>>()
                    .context("CORS_ALLOWED_ORIGINS is malformed")?,
            },
            server,
            push_watch_interval: Duration::from_millis(
                vars.parse_or("PUSH_WATCH_INTERVAL_MS", 250u64)?
                    .clamp(50, 5_000),
            ),
            max_event_streams: vars.parse_or("MAX_EVENT_STREAMS", 20_000usize)?,
        })
    }

    /// True when the built-in development secret signs access tokens.
    pub fn uses_dev_secret(&self) -> bool {
        self.jwt.secret == DEV_JWT_SECRET
    }

    /// In production, refuses a `JWT_SECRET` that is unset or public (see
    /// [`PUBLIC_JWT_SECRETS`]); its length was checked when read. For the
    /// commands that sign access tokens only (`token`, `demo`).
    pub fn require_real_jwt_secret(&self) -> anyhow::Result<()> {
        if self.env == Environment::Development {
            return Ok(());
        }
        if !self.jwt_secret_set {
            bail!(
                "JWT_SECRET is not set: production needs a secret of its own (at least 32 \
                 bytes, e.g. `openssl rand -base64 48`); FLASHSALE_ENV=development uses a \
                 built-in one on a developer's machine"
            );
        }
        let secret = self.jwt.secret.trim();
        if PUBLIC_JWT_SECRETS.contains(&secret) || is_template_placeholder(secret) {
            bail!(
                "JWT_SECRET is a placeholder or a secret published in the flashsale \
                 repository: set a secret of your own (e.g. `openssl rand -base64 48`)"
            );
        }
        Ok(())
    }

    /// In production, refuses development secrets: [`Self::require_real_jwt_secret`],
    /// and an unset or placeholder `PASS_SIGNING_KEY` (else every pod would
    /// sign queue passes with a key kept in Redis). For `serve` and the
    /// commands that sign queue passes (`prepare-buyers`).
    pub fn require_real_secrets(&self) -> anyhow::Result<()> {
        self.require_real_jwt_secret()?;
        if self.env == Environment::Development {
            return Ok(());
        }
        match self.passes.signing_key.as_deref().map(str::trim) {
            None | Some("") => bail!(
                "PASS_SIGNING_KEY is not set: production needs an Ed25519 key to sign \
                 queue passes (`openssl genpkey -algorithm ed25519`); \
                 FLASHSALE_ENV=development shares a key through Redis on a developer's machine"
            ),
            Some(key) if is_template_placeholder(key) => bail!(
                "PASS_SIGNING_KEY is a placeholder: set an Ed25519 key of your own \
                 (`openssl genpkey -algorithm ed25519`)"
            ),
            Some(_) => Ok(()),
        }
    }
}

/// A value left as an example file writes it: `<openssl rand -base64 48>`.
fn is_template_placeholder(value: &str) -> bool {
    value.starts_with('<') && value.ends_with('>')
}

/// One origin of `CORS_ALLOWED_ORIGINS`, in the form a browser sends in its
/// `Origin` header (scheme and host lower case, no default port, no path),
/// since origins are compared byte for byte.
fn parse_origin(raw: &str) -> anyhow::Result<String> {
    let lower = raw.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
        .with_context(|| format!("`{raw}` is not an origin: expected `https://host[:port]`"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*', ' ']) {
        bail!("`{raw}` is not an origin: expected `{scheme}://host[:port]`, with no path, not even a trailing `/`");
    }
    let authority: axum::http::uri::Authority = rest
        .parse()
        .with_context(|| format!("`{raw}` is not an origin: its host is malformed"))?;
    // `Authority` takes any digits after the colon; a port must be a u16.
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.ends_with(']'));
    if authority.host().is_empty() || (has_port && authority.port_u16().is_none()) {
        bail!("`{raw}` is not an origin: its host or port is malformed");
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    Ok(match authority.port_u16() {
        Some(port) if port == default_port => format!("{scheme}://{}", authority.host()),
        _ => format!("{scheme}://{authority}"),
    })
}

/// `RATE_<JOIN|POLL|HOLD|LOGIN|REGISTER|ADDRESS>_PER_MINUTE` and `..._BURST`,
/// `MAX_IN_FLIGHT`, `TRUSTED_PROXIES` (comma-separated addresses or CIDR
/// ranges), `RATE_LIMIT_STORE` (`memory` or `redis`: shared by the replicas)
/// and `RATE_LIMIT_REDIS_URL` (the shared limits' own Redis, if not
/// `REDIS_URL`); `RATE_LIMITS=off` turns every rate limit off (load tests
/// from one address).
fn limits_from_env(vars: &Vars) -> anyhow::Result<LimitsConfig> {
    if vars.optional("RATE_LIMITS").is_some_and(|v| v == "off") {
        return Ok(LimitsConfig::unlimited());
    }
    let rate = |name: &str, per_minute: u32, burst: u32| -> anyhow::Result<Rate> {
        Ok(Rate {
            per_minute: vars.parse_or(&format!("RATE_{name}_PER_MINUTE"), per_minute)?,
            burst: vars.parse_or(&format!("RATE_{name}_BURST"), burst)?.max(1),
        })
    };
    let trusted_proxies = match vars.optional("TRUSTED_PROXIES") {
        Some(list) => list
            .split(',')
            .map(|a| a.trim().parse::<IpRange>())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("TRUSTED_PROXIES is malformed: {e}"))?,
        _ => Vec::new(),
    };
    Ok(LimitsConfig {
        // A browser joins once and polls every few seconds; a buyer
        // holds a handful of times. Bursts absorb retries and reloads.
        join: rate("JOIN", 60, 5)?,
        poll: rate("POLL", 120, 10)?,
        hold: rate("HOLD", 120, 10)?,
        login: rate("LOGIN", 20, 10)?,
        // A person creates one account; a household or an office behind one
        // address, a few.
        register: rate("REGISTER", 5, 5)?,
        // Generous: many buyers can share one address (NAT, offices).
        per_address: rate("ADDRESS", 6000, 200)?,
        max_in_flight: vars.parse_or("MAX_IN_FLIGHT", 4096usize)?.max(1),
        trusted_proxies,
        store: match vars.optional("RATE_LIMIT_STORE") {
            None => LimitStore::Memory,
            Some(v) => v
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("RATE_LIMIT_STORE is malformed: {e}"))?,
        },
        redis_url: vars.optional("RATE_LIMIT_REDIS_URL"),
    })
}

/// The queue passes' keys as configured: `PASS_SIGNING_KEY`, `PASS_KEY_ID`,
/// `PASS_PREVIOUS_KEYS` (see [`crate::passes::PassKeys::from_settings`]).
#[derive(Clone, Default)]
pub struct PassSettings {
    pub signing_key: Option<String>,
    pub key_id: Option<String>,
    pub previous_keys: Option<String>,
}

impl std::fmt::Debug for PassSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("PassSettings")
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<set>"))
            .field("key_id", &self.key_id)
            .field("previous_keys", &self.previous_keys)
            .finish()
    }
}

/// The background workers' settings (`flashsale-workers`), read once.
#[derive(Clone, Debug)]
pub struct WorkersConfig {
    /// How often holds past their deadline are swept.
    pub expire_every: Duration,
    /// How often the releaser asks each sale whether a tick is due.
    pub release_poll: Duration,
    /// The workers' own `/metrics`.
    pub metrics_addr: SocketAddr,
    /// A step not finished by then is abandoned and run afresh.
    pub step_limit: Duration,
    pub sink_every: Duration,
    pub reconcile_every: Duration,
    /// How often closed sales are looked at for archiving.
    pub archive_every: Duration,
    /// This sink's consumer name in the group (`<HOSTNAME>-<pid>` unless set).
    pub sink_consumer: String,
    pub sink_batch: u64,
    pub sink_claim_idle_ms: u64,
    pub sink_max_deliveries: u32,
}

impl WorkersConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let vars = Vars::process();
        let ms = |name: &str, default: u64, min: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(
                vars.parse_or(name, default)?.max(min),
            ))
        };
        let secs = |name: &str, default: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(vars.parse_or(name, default)?.max(1)))
        };
        Ok(Self {
            expire_every: ms("EXPIRE_INTERVAL_MS", 250, 10)?,
            release_poll: ms("RELEASE_POLL_MS", 50, 5)?,
            metrics_addr: vars.parse_or(
                "WORKERS_METRICS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9091)),
            )?,
            // Far above any step's normal run: only a hung step reaches it.
            step_limit: secs("WORKER_STEP_TIMEOUT_SECONDS", 60)?,
            sink_every: ms("SINK_INTERVAL_MS", 100, 5)?,
            reconcile_every: secs("RECONCILE_INTERVAL_SECONDS", 5)?,
            archive_every: secs("ARCHIVE_INTERVAL_SECONDS", 5)?,
            sink_consumer: vars.optional("SINK_CONSUMER").unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    vars.optional("HOSTNAME").unwrap_or_else(|| "sink".into()),
                    std::process::id()
                )
            }),
            sink_batch: vars.parse_or("SINK_BATCH", 500u64)?.clamp(1, 10_000),
            sink_claim_idle_ms: vars.parse_or("SINK_CLAIM_IDLE_MS", 30_000u64)?,
            sink_max_deliveries: vars.parse_or("SINK_MAX_DELIVERIES", 60u32)?.max(1),
        })
    }
}

/// Where settings are read from: the process's environment, or (in tests)
/// a list of the same names and values.
pub struct Vars {
    lookup: Box<Lookup>,
}

type Lookup = dyn Fn(&str) -> Result<String, std::env::VarError> + Send + Sync;

impl Vars {
    /// The process's environment.
    pub fn process() -> Self {
        Self {
            lookup: Box::new(|name| std::env::var(name)),
        }
    }

    /// These names and values, and nothing else.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let map: std::collections::HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self {
            lookup: Box::new(move |name| {
                map.get(name).cloned().ok_or(std::env::VarError::NotPresent)
            }),
        }
    }

    /// A variable's value, treating an empty string as unset.
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// A variable, `None` when unset; one set to something that is not UTF-8
    /// is an error naming it.
    pub fn utf8(&self, name: &str) -> anyhow::Result<Option<String>> {
        match (self.lookup)(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not valid UTF-8"),
        }
    }

    /// Parses a variable when set, else gives the default.
    pub fn parse_or<T>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .with_context(|| format!("{name} is malformed: `{raw}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::from_vars(&Vars::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn cors_origins_are_read_as_browsers_send_them() {
        let config = with(&[(
            "CORS_ALLOWED_ORIGINS",
            " https://Tickets.Example.com , http://localhost:3000,https://a.example:443,",
        )])
        .unwrap();
        assert_eq!(
            config.cors_allowed_origins,
            [
                "https://tickets.example.com",
                "http://localhost:3000",
                "https://a.example"
            ]
        );
        assert!(with(&[]).unwrap().cors_allowed_origins.is_empty());
    }

    #[test]
    fn a_malformed_cors_origin_stops_the_start_naming_the_variable() {
        for bad in [
            "tickets.example.com",
            "https://tickets.example.com/",
            "https://tickets.example.com/shop",
            "ftp://tickets.example.com",
            "*",
            "https://*.example.com",
            "https://user@example.com",
            "https://",
            "https://example.com:99999",
            "https://:8080",
        ] {
            let err = with(&[("CORS_ALLOWED_ORIGINS", bad)]).unwrap_err();
            let message = format!("{err:#}");
            assert!(message.contains("CORS_ALLOWED_ORIGINS"), "{bad}: {message}");
        }
    }

    #[test]
    fn the_rate_limit_store_is_memory_unless_redis_is_asked_for() {
        assert_eq!(with(&[]).unwrap().limits.store, LimitStore::Memory);
        let shared = with(&[
            ("RATE_LIMIT_STORE", "redis"),
            ("RATE_LIMIT_REDIS_URL", "redis://10.0.0.9:6379"),
        ])
        .unwrap();
        assert_eq!(shared.limits.store, LimitStore::Redis);
        assert_eq!(
            shared.limits.redis_url.as_deref(),
            Some("redis://10.0.0.9:6379")
        );
        for bad in ["Redis", "disk", "redis,memory"] {
            let err = with(&[("RATE_LIMIT_STORE", bad)]).unwrap_err();
            let message = format!("{err:#}");
            assert!(message.contains("RATE_LIMIT_STORE"), "{bad}: {message}");
        }
    }
}
