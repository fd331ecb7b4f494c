//! Abuse limits: per-user and per-address rate limits (governor), and a cap
//! on requests in flight.
//!
//! Each limited action (join, poll, hold, login, register) has a keyed
//! limiter by user (login and register: by client address, since there is
//! no user yet), and all of them share a limiter by client address. A refusal is `429 rate_limited` with
//! `Retry-After`. The keyed stores forget keys that are back to full
//! allowance on every `shrink()` (run periodically), so a million distinct
//! keys do not grow memory forever. A rate of 0 turns a limiter off.
//!
//! The client address is the socket's peer, unless that peer is a configured
//! trusted proxy: then it is the right-most `X-Forwarded-For` entry that is
//! not itself a trusted proxy. `X-Forwarded-For` is never trusted by default.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultKeyedRateLimiter, Quota,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Join,
    Poll,
    Hold,
    Login,
    Register,
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

pub struct Limits {
    join: Keyed<String>,
    poll: Keyed<String>,
    hold: Keyed<String>,
    login: Keyed<IpAddr>,
    register: Keyed<IpAddr>,
    per_address: Keyed<IpAddr>,
    in_flight: Arc<Semaphore>,
    pub trusted_proxies: Vec<IpRange>,
}

impl Limits {
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self {
            join: limiter(cfg.join),
            poll: limiter(cfg.poll),
            hold: limiter(cfg.hold),
            login: limiter(cfg.login),
            register: limiter(cfg.register),
            per_address: limiter(cfg.per_address),
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
            trusted_proxies: cfg.trusted_proxies.clone(),
        }
    }

    /// Checks `action` for the user (if any) and the client address (if
    /// known). The address is checked first: a flood from one address is
    /// refused before it costs anything per user.
    pub fn check(
        &self,
        action: Action,
        user: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Result<(), RateLimited> {
        if let Some(addr) = addr {
            check(&self.per_address, &addr, "address")?;
            match action {
                Action::Login => check(&self.login, &addr, "login")?,
                Action::Register => check(&self.register, &addr, "register")?,
                _ => {}
            }
        }
        if let Some(user) = user {
            let (limiter, name) = match action {
                Action::Join => (&self.join, "join"),
                Action::Poll => (&self.poll, "poll"),
                Action::Hold => (&self.hold, "hold"),
                Action::Login | Action::Register => return Ok(()),
            };
            check(limiter, &user.to_owned(), name)?;
        }
        Ok(())
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
        shrink(&self.join);
        shrink(&self.poll);
        shrink(&self.hold);
        shrink(&self.login);
        shrink(&self.register);
        shrink(&self.per_address);
    }

    /// Keys currently remembered, over all limiters (for metrics).
    pub fn keys(&self) -> usize {
        fn len<K: std::hash::Hash + Eq + Clone>(l: &Keyed<K>) -> usize {
            l.as_ref().map_or(0, |l| l.len())
        }
        len(&self.join)
            + len(&self.poll)
            + len(&self.hold)
            + len(&self.login)
            + len(&self.register)
            + len(&self.per_address)
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
        metrics::counter!("flashsale_rate_limited_total", "limit" => name).increment(1);
        RateLimited {
            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        }
    })
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
