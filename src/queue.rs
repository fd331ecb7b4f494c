//! The virtual queue: join, status, leave, the releaser's tick, and the
//! pre-queue draw.
//!
//! Waiting buyers are a sorted set per sale, one entry a buyer. A buyer's
//! place is fixed at join: before opening, a draw in [0, 1) (HMAC-SHA256 of
//! the buyer id under the sale's secret seed, so the pre-queue is shuffled
//! once, reproducibly, and the seed's SHA-256 is public from creation);
//! after opening, the next value of a per-sale counter, behind the whole
//! pre-queue. The score also carries the second the buyer was last seen
//! ([`place_of`], `lua/lib/queue_place.lua`). Every change is a Lua script,
//! so order holds however many API and releaser replicas run.
//!
//! Admitted buyers have a turn: `admit_idle_seconds` to hold. One who holds
//! nothing in that time, or cancels and holds nothing else in it, finishes,
//! and the tickets go to the next buyers. Buyers admitted and yet to hold
//! never outnumber the available tickets plus the sale's
//! `admit_headroom_percent` of them (default 100), so buyers who walk away
//! do not keep the last tickets from the next ones. Buyers still waiting
//! when every ticket is held are waitlisted: tickets that come back go to
//! them in order.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use fred::{
    clients::Pool,
    interfaces::{HashesInterface, ListInterface},
    types::Value,
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{ids::SaleId, keys::SaleKeys, scripts::Scripts, store::StoreError};

/// A buyer's standing in a sale's queue, as the scripts report it.
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    Waiting {
        /// 1 is the next buyer to be admitted.
        position: u64,
        /// Buyers admitted per second over the last ticks (0 before any).
        measured_rate: f64,
        release_rate: f64,
        paused: bool,
        opens_at_ms: i64,
    },
    Admitted {
        /// When the queue pass expires (ms since the epoch).
        deadline_ms: i64,
        pass_ttl_seconds: i64,
    },
    /// Every ticket is held or sold, but held ones may come back: the buyer
    /// keeps the place and is admitted in order when they do.
    Waitlisted {
        position: u64,
        measured_rate: f64,
        release_rate: f64,
        paused: bool,
        opens_at_ms: i64,
    },
    /// Every ticket confirmed, or the sale closed: final.
    SoldOut,
    Expired,
    NotInQueue,
}

impl Standing {
    /// Seconds until admission, from the admission rate actually measured
    /// (the configured rate until there is a measurement), plus the time
    /// until opening for the pre-queue.
    pub fn eta_seconds(&self, now: DateTime<Utc>) -> Option<u64> {
        let Standing::Waiting {
            position,
            measured_rate,
            release_rate,
            opens_at_ms,
            ..
        } = self
        else {
            return None;
        };
        let rate = if *measured_rate > 0.0 {
            *measured_rate
        } else {
            *release_rate
        };
        if rate <= 0.0 {
            return None;
        }
        let until_open = ((*opens_at_ms - now.timestamp_millis()).max(0) as f64) / 1000.0;
        Some((until_open + *position as f64 / rate).ceil() as u64)
    }

    /// When a buyer in line should poll next (ms), chosen from the position
    /// and the admission rate: a tenth of the time left to admission, at
    /// least a second and at most `max_ms`, give or take a tenth so that a
    /// crowd's polls spread out. A line of 500,000 released at 500 a second
    /// then polls a few thousand times a second, not hundreds of thousands.
    /// Waitlisted buyers poll every 5 s (a ticket may come back at any
    /// tick); paused lines every 10 s. `None` for a buyer not in line.
    pub fn poll_after_ms(&self, now: DateTime<Utc>, max_ms: u64) -> Option<u64> {
        let floor = max_ms.min(1_000);
        let base = match self {
            Standing::Waiting { paused: true, .. } => 10_000,
            Standing::Waiting { .. } => self
                .eta_seconds(now)
                .map_or(10_000, |eta| eta.saturating_mul(100)),
            Standing::Waitlisted { .. } => 5_000,
            _ => return None,
        };
        let jittered = base.clamp(floor, max_ms) as f64 * rand::random_range(0.9..1.1);
        Some((jittered as u64).clamp(floor, max_ms))
    }
}

/// Places and last-seen seconds share a score (`lua/lib/queue_place.lua`):
/// `place * SEEN_SLOTS + second of the last poll % SEEN_SLOTS`.
pub const SEEN_SLOTS: f64 = 4096.0;
/// Places of buyers who joined after opening start here; the pre-queue's are
/// the top 40 bits of their draws, below it.
pub const AFTER_OPENING: f64 = 1_099_511_627_776.0;

/// A waiting buyer's place, from the score in the waiting line.
pub fn place_of(score: f64) -> f64 {
    (score / SEEN_SLOTS).floor()
}

/// The place a pre-queue draw gets: its top 40 bits. Two buyers whose draws
/// share them (about one pair in ten queues of 500,000) are ordered by their
/// last poll instead of by id.
pub fn prequeue_place(draw: f64) -> f64 {
    (draw * AFTER_OPENING).floor()
}

/// The pre-queue draw of `user` under a sale's `seed`: the first 53 bits of
/// HMAC-SHA256(seed, user) as a number in [0, 1). Exact in an f64, so Redis
/// scores and an auditor's recomputation agree bit for bit.
pub fn prequeue_draw(seed: &[u8], user: &str) -> f64 {
    let mut mac = Hmac::<Sha256>::new_from_slice(seed).expect("HMAC accepts keys of any length");
    mac.update(user.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The pre-queue order: early buyers by the place their draw gives, ties
/// (about one pair in ten queues of 500,000) by id. This is what `flashsale
/// prequeue-order` prints for an auditor.
pub fn prequeue_order(seed: &[u8], buyers: &[String]) -> Vec<String> {
    let mut drawn: Vec<(f64, &String)> = buyers
        .iter()
        .map(|b| (prequeue_place(prequeue_draw(seed, b)), b))
        .collect();
    drawn.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
    });
    drawn.into_iter().map(|(_, b)| b.clone()).collect()
}

/// A fresh secret seed for a sale's pre-queue, hex.
pub fn new_seed() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// SHA-256 of the seed's text, published from the sale's creation.
pub fn seed_commitment(seed_hex: &str) -> String {
    hex::encode(Sha256::digest(seed_hex.as_bytes()))
}

/// Ids of passes: unique per admission, the same on every poll.
pub fn pass_id(sale: SaleId, user: &str, deadline_ms: i64) -> String {
    let digest = Sha256::digest(format!("{sale}\0{user}\0{deadline_ms}"));
    hex::encode(&digest[..16])
}

pub async fn join(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    user: &str,
    seed: &[u8],
) -> Result<Standing, QueueError> {
    let k = SaleKeys::new(sale);
    let reply: Vec<Option<String>> = scripts
        .join
        .run(
            redis,
            vec![
                k.meta(),
                k.waiting(),
                k.arrivals(),
                k.arrivals_ms(),
                k.prequeue(),
                k.admitted(),
                k.expired(),
                k.turns(),
            ],
            vec![
                Value::from(user),
                Value::from(format!("{:.17}", prequeue_draw(seed, user))),
            ],
        )
        .await?;
    decode(&reply)
}

/// A buyer's standing. `seen_refresh_ms`: how stale the buyer's last-seen
/// mark may get before this poll refreshes it.
pub async fn status(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    user: &str,
    seen_refresh_ms: u64,
) -> Result<Standing, QueueError> {
    Ok(status_in_line(redis, scripts, sale, user, seen_refresh_ms)
        .await?
        .0)
}

/// Where a buyer in line is, beyond the position: enough for an event
/// stream to follow the line from the sale's admissions alone
/// ([`crate::push`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InLine {
    /// The buyer's place (fixed at join; admission is in place order).
    pub place: f64,
    /// The sale's admissions so far, when the position was read.
    pub admitted_total: u64,
}

/// [`status`], with the buyer's place and the sale's admission count when
/// the buyer is waiting or waitlisted.
pub async fn status_in_line(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    user: &str,
    seen_refresh_ms: u64,
) -> Result<(Standing, Option<InLine>), QueueError> {
    let k = SaleKeys::new(sale);
    let reply: Vec<Option<String>> = scripts
        .status
        .run(
            redis,
            vec![k.meta(), k.waiting(), k.admitted(), k.expired()],
            vec![Value::from(user), Value::from(seen_refresh_ms as i64)],
        )
        .await?;
    let standing = decode(&reply)?;
    let in_line = match standing {
        Standing::Waiting { .. } | Standing::Waitlisted { .. } => {
            let field = |i: usize| reply.get(i).cloned().flatten();
            match (
                field(6).and_then(|p| p.parse::<f64>().ok()),
                field(7).and_then(|n| n.parse::<u64>().ok()),
            ) {
                (Some(place), Some(admitted_total)) => Some(InLine {
                    place,
                    admitted_total,
                }),
                _ => None,
            }
        }
        _ => None,
    };
    Ok((standing, in_line))
}

/// Gives up the buyer's place or pass. True if there was one.
pub async fn leave(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    user: &str,
) -> Result<bool, QueueError> {
    let k = SaleKeys::new(sale);
    let was: i64 = scripts
        .leave
        .run(
            redis,
            vec![k.waiting(), k.admitted(), k.turns(), k.expired(), k.meta()],
            vec![Value::from(user)],
        )
        .await?;
    if was < 0 {
        return Err(QueueError::SaleFrozen);
    }
    Ok(was == 1)
}

/// Why the queue refused, or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("sale not found")]
    SaleNotFound,
    /// The sale's live state is being restored.
    #[error("the sale is frozen")]
    SaleFrozen,
    #[error("the sale has closed")]
    SaleClosed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QueueError {
    fn corrupt(err: impl Into<anyhow::Error>) -> Self {
        QueueError::Store(StoreError::corrupt(err))
    }
}

impl From<fred::error::Error> for QueueError {
    fn from(err: fred::error::Error) -> Self {
        QueueError::Store(err.into())
    }
}

/// The buyers who joined before opening, each once, sorted by id, for the
/// organizer's export.
pub async fn early_buyers(redis: &Pool, sale: SaleId) -> Result<Vec<String>, QueueError> {
    let mut buyers: Vec<String> = redis.lrange(SaleKeys::new(sale).prequeue(), 0, -1).await?;
    buyers.sort();
    buyers.dedup();
    Ok(buyers)
}

/// What one releaser tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub admitted: u64,
    pub lapsed: u64,
    pub abandoned: u64,
    pub sold_out: bool,
    /// Nothing available, but held tickets may come back.
    pub waitlist: bool,
    pub waiting: u64,
    pub active: u64,
    /// How long each admitted buyer waited, join to admission (ms).
    pub waits_ms: Vec<u64>,
}

/// Waiting buyers checked for silence in one tick. Reading them costs the
/// tick about 1.6 µs each (load/RESULTS.md), so a line of 1,000,000 is swept
/// in 1,000 ticks; a silent buyer the sweep has not reached yet is dropped
/// when popped instead of admitted.
pub const SWEEP: u32 = 1_000;

/// Runs the releaser's script for one sale: `None` when no tick was due.
pub async fn release_tick(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    idle_ms: u64,
    max_batch: u32,
) -> Result<Option<Tick>, QueueError> {
    let k = SaleKeys::new(sale);
    let reply: Vec<String> = scripts
        .release
        .run(
            redis,
            vec![
                k.meta(),
                k.waiting(),
                k.admitted(),
                k.turns(),
                k.expired(),
                k.zones(),
                k.ticks(),
                k.admissions(),
                k.arrivals_ms(),
            ],
            vec![
                Value::from(idle_ms as i64),
                Value::from(i64::from(max_batch)),
                Value::from(i64::from(SWEEP)),
            ],
        )
        .await?;
    let num = |i: usize| {
        reply
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match reply.first().map(String::as_str) {
        // Nothing is due while the sale is frozen (being restored).
        Some("not_due") | Some("frozen") => Ok(None),
        Some("err") => Err(QueueError::SaleNotFound),
        Some("ticked") if reply.len() >= 8 => Ok(Some(Tick {
            admitted: num(1),
            lapsed: num(2),
            abandoned: num(3),
            sold_out: num(4) == 1,
            waiting: num(5),
            active: num(6),
            waitlist: num(7) == 1,
            waits_ms: (8..reply.len()).map(num).collect(),
        })),
        _ => Err(QueueError::corrupt(anyhow::anyhow!(
            "release_batch replied {reply:?}"
        ))),
    }
}

/// Decodes the replies of join_queue and queue_status.
fn decode(reply: &[Option<String>]) -> Result<Standing, QueueError> {
    let text = |i: usize| reply.get(i).cloned().flatten().unwrap_or_default();
    let float = |i: usize| text(i).parse::<f64>().unwrap_or(0.0);
    let int = |i: usize| float(i) as i64;
    Ok(match text(0).as_str() {
        "waiting" => Standing::Waiting {
            position: int(1).max(1) as u64,
            measured_rate: float(2),
            release_rate: float(3),
            paused: text(4) == "1",
            opens_at_ms: int(5),
        },
        "waitlisted" => Standing::Waitlisted {
            position: int(1).max(1) as u64,
            measured_rate: float(2),
            release_rate: float(3),
            paused: text(4) == "1",
            opens_at_ms: int(5),
        },
        "admitted" => Standing::Admitted {
            deadline_ms: int(1),
            pass_ttl_seconds: int(2),
        },
        "sold_out" => Standing::SoldOut,
        "expired" => Standing::Expired,
        "not_in_queue" => Standing::NotInQueue,
        "err" => match text(1).as_str() {
            "sale_not_found" => return Err(QueueError::SaleNotFound),
            "sale_closed" => return Err(QueueError::SaleClosed),
            "sale_frozen" => return Err(QueueError::SaleFrozen),
            other => {
                return Err(QueueError::corrupt(anyhow::anyhow!(
                    "queue script refused: {other}"
                )))
            }
        },
        other => {
            return Err(QueueError::corrupt(anyhow::anyhow!(
                "queue script replied `{other}`"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_in_the_unit_interval_and_depend_on_the_seed() {
        for i in 0..1000 {
            let d = prequeue_draw(b"seed", &format!("user-{i}"));
            assert!((0.0..1.0).contains(&d));
        }
        assert_ne!(prequeue_draw(b"a", "u"), prequeue_draw(b"b", "u"));
    }

    #[test]
    fn a_draw_survives_its_decimal_text_exactly() {
        let d = prequeue_draw(b"seed", "someone");
        assert_eq!(format!("{d:.17}").parse::<f64>().unwrap(), d);
    }

    #[test]
    fn eta_comes_from_the_measured_rate_and_the_time_to_opening() {
        let now = Utc::now();
        let w = |measured: f64, opens_in_ms: i64| Standing::Waiting {
            position: 100,
            measured_rate: measured,
            release_rate: 10.0,
            paused: false,
            opens_at_ms: now.timestamp_millis() + opens_in_ms,
        };
        assert_eq!(w(50.0, -1000).eta_seconds(now), Some(2));
        assert_eq!(w(0.0, -1000).eta_seconds(now), Some(10));
        assert_eq!(w(50.0, 30_000).eta_seconds(now), Some(32));
    }

    #[test]
    fn buyers_far_back_poll_less_often_within_the_bounds() {
        let now = Utc::now();
        let at = |position: u64, paused: bool| Standing::Waiting {
            position,
            measured_rate: 500.0,
            release_rate: 500.0,
            paused,
            opens_at_ms: 0,
        };
        for _ in 0..100 {
            // Next in line: a second, give or take a tenth (never under 1 s).
            let near = at(1, false).poll_after_ms(now, 60_000).unwrap();
            assert!((1_000..=1_100).contains(&near), "{near}");
            // 100,000 ahead at 500 a second: 200 s to go, polls every ~20 s.
            let mid = at(100_000, false).poll_after_ms(now, 60_000).unwrap();
            assert!((18_000..=22_000).contains(&mid), "{mid}");
            // 500,000 ahead: the cap.
            let far = at(500_000, false).poll_after_ms(now, 60_000).unwrap();
            assert!((54_000..=60_000).contains(&far), "{far}");
            let paused = at(1, true).poll_after_ms(now, 60_000).unwrap();
            assert!((9_000..=11_000).contains(&paused), "{paused}");
            // Never past the cap the idle limit sets.
            assert!(at(500_000, false).poll_after_ms(now, 20_000).unwrap() <= 20_000);
        }
        assert_eq!(Standing::Expired.poll_after_ms(now, 60_000), None);
    }
}

/// Each sale's pre-queue seed, read from Redis once and kept: a sale's seed
/// never changes, and joins should cost one Redis call.
#[derive(Default)]
pub struct Seeds {
    known: std::sync::RwLock<HashMap<SaleId, Arc<Vec<u8>>>>,
}

impl Seeds {
    pub async fn get(
        &self,
        redis: &fred::clients::Pool,
        sale: SaleId,
    ) -> Result<Arc<Vec<u8>>, QueueError> {
        if let Some(seed) = self.known.read().ok().and_then(|m| m.get(&sale).cloned()) {
            return Ok(seed);
        }
        let hex_seed: Option<String> = redis.hget(SaleKeys::new(sale).meta(), "seed").await?;
        let seed = hex::decode(hex_seed.ok_or(QueueError::SaleNotFound)?).map_err(|e| {
            QueueError::corrupt(anyhow::anyhow!("sale {sale} has a malformed seed: {e}"))
        })?;
        let seed = Arc::new(seed);
        if let Ok(mut m) = self.known.write() {
            m.insert(sale, seed.clone());
        }
        Ok(seed)
    }
}
