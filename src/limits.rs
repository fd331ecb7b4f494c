//! Abuse limits: per-user and per-address rate limits, and a cap on
//! requests in flight.
//!
//! Each limited action (join, poll, hold, login, register) has a limit keyed
//! by user (login and register: by client address, since there is no user
//! yet), and all of them
//! share a limit by client address. A refusal is `429 rate_limited` with
//! `Retry-After`. A rate of 0 turns a limit off.
//!
//! Every limit is first checked in memory (governor): cheap, and a request
//! refused there never goes further. With `RATE_LIMIT_STORE=redis` a request
//! allowed in memory is then checked against the same limit kept in Redis
//! (`lua/check_rate_limit.lua`), which every replica of the API shares: the
//! in-memory limit alone would let a buyer through once per replica. The
//! shared check fails open: when Redis does not answer, the request goes on
//! (on the in-memory limit alone) and `flashsale_shared_rate_limit_errors_total`
//! counts it, because refusing every buyer is worse than letting a few past
//! their limit for a while.
//!
//! The in-memory stores forget keys that are back to full allowance on every
//! `shrink()` (run periodically), so a million distinct keys do not grow
//! memory forever; the Redis keys expire once drained.
//!
//! The client address is the socket's peer, unless that peer is a configured
//! trusted proxy: then it is the right-most `X-Forwarded-For` entry that is
//! not itself a trusted proxy. `X-Forwarded-For` is never trusted by default.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use fred::{clients::Pool, types::Value};
use governor::{
    clock::{Clock, DefaultClock},
    DefaultKeyedRateLimiter, Quota,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::scripts::Scripts;

/// Declares the limited actions and each one's own limit in one table, so
/// adding an action is adding its line (and its rate to [`LimitsConfig`]).
macro_rules! actions {
    ($($(#[$doc:meta])* $action:ident => $name:literal by $by:ident, rate $field:ident;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Action {
            $($(#[$doc])* $action,)*
        }

        impl Action {
            /// Every action, in declaration order (`self as usize` indexes it).
            pub const ALL: &'static [Action] = &[$(Action::$action),*];

            /// The action's own limit: its name (the `limit` label of
            /// `flashsale_rate_limited_total`, and part of its Redis key),
            /// whom it counts, and its configured rate.
            fn limit(self, cfg: &LimitsConfig) -> (&'static str, By, Rate) {
                match self {
                    $(Action::$action => ($name, By::$by, cfg.$field),)*
                }
            }
        }
    };
}

actions! {
    /// Joining a sale's queue.
    Join => "join" by User, rate join;
    /// Polling one's place in the queue.
    Poll => "poll" by User, rate poll;
    /// Holding tickets.
    Hold => "hold" by User, rate hold;
    /// Logging in: runs argon2, so limited per client address.
    Login => "login" by Address, rate login;
    /// Creating an account: a few a minute per client address, which also
    /// bounds how fast one address learns which e-mails have accounts.
    Register => "register" by Address, rate register;
}

/// Whom an action's own limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    User,
    Address,
}

/// Where the limits are kept (`RATE_LIMIT_STORE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitStore {
    /// In each process's memory only: a limit per replica.
    #[default]
    Memory,
    /// In memory first, then in Redis, shared by every replica.
    Redis,
}

impl std::str::FromStr for LimitStore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            other => Err(format!("`{other}` is neither `memory` nor `redis`")),
        }
    }
}

/// A rate: `per_minute` sustained, `burst` at once. `per_minute == 0`: off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub join: Rate,
    pub poll: Rate,
    pub hold: Rate,
    /// Per client address: logins run argon2, which is deliberately costly.
    pub login: Rate,
    /// Per client address: account creation, a few a minute. Also bounds
    /// how fast one address learns which e-mails have accounts.
    pub register: Rate,
    /// Per client address, over every limited action together.
    pub per_address: Rate,
    /// Requests being served at once before new ones are shed with 503.
    pub max_in_flight: usize,
    pub trusted_proxies: Vec<IpRange>,
    /// Where the limits are kept (`RATE_LIMIT_STORE`).
    pub store: LimitStore,
    /// The Redis of the shared limits (`RATE_LIMIT_REDIS_URL`), when not the
    /// service's own `REDIS_URL`.
    pub redis_url: Option<String>,
}

/// An address or a CIDR range (`10.0.0.7`, `10.244.0.0/16`, `fd00::/8`):
/// proxies in Kubernetes come and go within a pod or node range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a bad prefix length"))?,
        };
        Ok(Self { net, prefix })
    }
}

impl LimitsConfig {
    /// Everything off: for benchmarks that drive one address very hard.
    pub fn unlimited() -> Self {
        let off = Rate {
            per_minute: 0,
            burst: 1,
        };
        Self {
            join: off,
            poll: off,
            hold: off,
            login: off,
            register: off,
            per_address: off,
            max_in_flight: 1 << 20,
            trusted_proxies: Vec::new(),
            store: LimitStore::Memory,
            redis_url: None,
        }
    }
}

type Keyed<K> = Option<DefaultKeyedRateLimiter<K>>;

fn limiter<K: std::hash::Hash + Eq + Clone>(r: Rate) -> Keyed<K> {
    let per_minute = NonZeroU32::new(r.per_minute)?;
    let burst = NonZeroU32::new(r.burst).unwrap_or(per_minute);
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::per_minute(per_minute).allow_burst(burst),
    ))
}

/// One action's own limit.
struct Limit {
    name: &'static str,
    by: By,
    rate: Rate,
    local: Keyed<String>,
}

pub struct Limits {
    /// Indexed by `Action as usize`.
    actions: Vec<Limit>,
    per_address: Keyed<IpAddr>,
    per_address_rate: Rate,
    shared: Option<Shared>,
    in_flight: Arc<Semaphore>,
    pub trusted_proxies: Vec<IpRange>,
}

impl Limits {
    /// The limits in memory only, whatever `cfg.store` says; see
    /// [`Limits::shared_in`].
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self {
            actions: Action::ALL
                .iter()
                .map(|a| {
                    let (name, by, rate) = a.limit(cfg);
                    Limit {
                        name,
                        by,
                        rate,
                        local: limiter(rate),
                    }
                })
                .collect(),
            per_address: limiter(cfg.per_address),
            per_address_rate: cfg.per_address,
            shared: None,
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
            trusted_proxies: cfg.trusted_proxies.clone(),
        }
    }

    /// Checks every limit also in `redis`, shared with every process that
    /// does the same, after the in-memory check.
    pub fn shared_in(mut self, redis: Pool, scripts: Arc<Scripts>) -> Self {
        self.shared = Some(Shared {
            redis,
            scripts,
            warning: crate::telemetry::Rarely::every(WARNING_EVERY),
        });
        self
    }

    /// Checks `action` for the user (if any) and the client address (if
    /// known). The address is checked first: a flood from one address is
    /// refused before it costs anything per user. In memory first, then, if
    /// the limits are shared, in Redis: the address's and the action's limit
    /// at once, in one round trip.
    pub async fn check(
        &self,
        action: Action,
        user: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Result<(), RateLimited> {
        if let Some(addr) = addr {
            check(&self.per_address, &addr, "address")?;
        }
        let limit = &self.actions[action as usize];
        let subject = match limit.by {
            By::User => user.map(str::to_owned),
            By::Address => addr.map(|a| a.to_string()),
        };
        if let Some(subject) = &subject {
            check(&limit.local, subject, limit.name)?;
        }
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let by_address = async {
            match addr {
                Some(addr) => {
                    shared
                        .check("address", &addr.to_string(), self.per_address_rate)
                        .await
                }
                None => Ok(()),
            }
        };
        let own = async {
            match &subject {
                Some(subject) => shared.check(limit.name, subject, limit.rate).await,
                None => Ok(()),
            }
        };
        let (by_address, own) = tokio::join!(by_address, own);
        by_address.and(own)
    }

    /// A permit to serve one request, or `None` when the service is at its
    /// in-flight cap and should shed the request.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// Forgets keys that are back to their full allowance, and returns the
    /// memory. Run periodically.
    pub fn shrink(&self) {
        fn shrink<K: std::hash::Hash + Eq + Clone>(l: &Keyed<K>) {
            if let Some(l) = l {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        for limit in &self.actions {
            shrink(&limit.local);
        }
        shrink(&self.per_address);
    }

    /// Keys currently remembered in memory, over all limits (for metrics).
    pub fn keys(&self) -> usize {
        fn len<K: std::hash::Hash + Eq + Clone>(l: &Keyed<K>) -> usize {
            l.as_ref().map_or(0, |l| l.len())
        }
        self.actions.iter().map(|l| len(&l.local)).sum::<usize>() + len(&self.per_address)
    }
}

/// A request over its limit, and how many seconds until it would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many requests; retry after {retry_after} s")]
pub struct RateLimited {
    pub retry_after: u64,
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &Keyed<K>,
    key: &K,
    name: &'static str,
) -> Result<(), RateLimited> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        refused(name, wait)
    })
}

fn refused(name: &'static str, wait: Duration) -> RateLimited {
    metrics::counter!("flashsale_rate_limited_total", "limit" => name).increment(1);
    RateLimited {
        retry_after: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
    }
}

/// How long a shared check may take before the request goes on without it:
/// a Redis that does not answer must not add its whole command timeout to
/// every request.
const SHARED_CHECK_TIMEOUT: Duration = Duration::from_millis(250);

/// At most one warning this often while the shared store fails.
const WARNING_EVERY: Duration = Duration::from_secs(10);

/// The limits kept in Redis.
struct Shared {
    redis: Pool,
    scripts: Arc<Scripts>,
    /// The warning of a failed check, logged at most every [`WARNING_EVERY`].
    warning: crate::telemetry::Rarely,
}

impl Shared {
    async fn check(
        &self,
        name: &'static str,
        subject: &str,
        rate: Rate,
    ) -> Result<(), RateLimited> {
        if rate.per_minute == 0 {
            return Ok(());
        }
        let interval_us = (60_000_000 / u64::from(rate.per_minute)).max(1);
        let burst = rate.burst.max(1);
        let key = crate::keys::rate_limit(name, subject);
        let run = self.scripts.check_rate_limit.run::<Vec<i64>>(
            &self.redis,
            vec![key],
            vec![
                Value::from(interval_us as i64),
                Value::from(i64::from(burst)),
            ],
        );
        let err = match tokio::time::timeout(SHARED_CHECK_TIMEOUT, run).await {
            Ok(Ok(reply)) => match reply.as_slice() {
                [1, _] => return Ok(()),
                [0, wait_ms] => {
                    return Err(refused(
                        name,
                        Duration::from_millis(u64::try_from(*wait_ms).unwrap_or(0)),
                    ))
                }
                other => format!("unexpected reply {other:?}"),
            },
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {} ms", SHARED_CHECK_TIMEOUT.as_millis()),
        };
        // Fail open: the in-memory limit still holds for this process.
        metrics::counter!("flashsale_shared_rate_limit_errors_total").increment(1);
        if self.warning.now() {
            tracing::warn!(limit = name, error = %err, "shared rate limit unavailable; letting the request through on the in-memory limit");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_their_addresses_and_no_others() {
        let r: IpRange = "10.244.0.0/16".parse().unwrap();
        assert!(r.contains("10.244.3.7".parse().unwrap()));
        assert!(!r.contains("10.245.0.1".parse().unwrap()));
        // An IPv4 peer seen through an IPv6 socket is still itself.
        assert!(r.contains("::ffff:10.244.0.9".parse().unwrap()));
        let one: IpRange = "192.0.2.1".parse().unwrap();
        assert!(one.contains("192.0.2.1".parse().unwrap()));
        assert!(!one.contains("192.0.2.2".parse().unwrap()));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.5".parse().unwrap()));
        let v6: IpRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }
}
