//! Push: buyers in line follow their standing on an event stream
//! (`GET /v1/sales/{id}/queue/events`) instead of polling.
//!
//! Redis is not asked once per stream per release tick. Each sale that has
//! streams open has one watcher task, which runs `lua/watch_sale.lua` every
//! `PUSH_WATCH_INTERVAL_MS` and publishes what it read (the sale's state,
//! its admissions so far and the admission frontier, the highest place
//! admitted) on a `watch` channel. Nor is every stream woken at every
//! tick: the watcher wakes them all only when the sale's state changes
//! (paused, waitlisted, sold out, closed, frozen, gone), and wakes only the
//! streams whose place the frontier reached ([`Near`]); each stream looks at
//! the published view for a new position on its own, every two to three
//! seconds. Each stream
//! ([`Follower`]) knows its buyer's place and position from its last exact
//! read of the buyer's status, and works out the buyer's standing from the
//! sale's view alone: every buyer admitted since that read was ahead of this
//! one (admission is in place order), a paused, waitlisted or sold-out sale
//! is so for everyone. It asks Redis about its own buyer only
//!
//! - when the frontier reaches the buyer's place: the buyer was admitted
//!   (the status carries the pass) or dropped;
//! - every `poll_after_ms` (what a polling page would do): the exact
//!   position, counting buyers ahead who left, and the buyer's last-seen
//!   mark, so a buyer whose stream is open is never taken for gone.
//!
//! A watcher stops at its first tick without subscribers; every stream
//! ends when the server's shutdown token is cancelled, so a stopping server
//! does not wait for them.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use fred::{clients::Pool, types::Value};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    ids::SaleId,
    keys::SaleKeys,
    queue::{self, InLine, QueueError, Standing},
    scripts::Scripts,
};

/// A position that changed, and nothing else, is told at most this often:
/// a buyer far back sees the number fall every few seconds, not at every
/// release tick.
pub const POSITION_EVERY: Duration = Duration::from_secs(2);

/// Streams look for a new position every [`POSITION_EVERY`] and a random
/// moment up to this long: one release tick moves every stream of a sale at
/// once, and spreading their looks leaves the moment of the tick to the
/// buyers it admitted.
const POSITION_SPREAD_MS: u64 = 1_000;

/// Streams of one sale by place, for the watcher to wake those the
/// admission frontier reaches. Keyed by (place, stream), since one buyer may
/// follow the line from two tabs.
type Near = Arc<Mutex<std::collections::BTreeMap<(u64, u64), Arc<tokio::sync::Notify>>>>;

/// One watched sale: its view, and its streams by place.
#[derive(Clone)]
struct Watch {
    tx: watch::Sender<View>,
    near: Near,
}

/// After a failed read of the buyer's status, the next try.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(2);

/// The shortest wait between two exact reads of a buyer whose stream is
/// open (unless the idle limit needs them sooner): near the front a polling
/// page asks every second, but a stream learns of admissions from the
/// frontier; exact reads only add buyers ahead who left, and keep the
/// buyer's last-seen mark fresh.
const EXACT_EVERY_MIN_MS: u64 = 5_000;

/// What a sale's watcher last read (`lua/watch_sale.lua`).
#[derive(Clone, Debug, PartialEq)]
pub enum Watched {
    /// The sale is not in Redis (removed, or lost): the streams end and the
    /// page asks again, getting the answer a poll would.
    Gone,
    Live(SaleView),
}

#[derive(Clone, Debug, PartialEq)]
pub struct SaleView {
    /// Being restored: nothing changes, and nothing is told.
    pub frozen: bool,
    pub sold_out: bool,
    pub waitlist: bool,
    pub paused: bool,
    pub closed: bool,
    pub measured_rate: f64,
    pub release_rate: f64,
    pub opens_at_ms: i64,
    /// Buyers admitted so far.
    pub admitted_total: u64,
    /// The highest place admitted so far.
    pub frontier: Option<f64>,
    pub waiting: u64,
}

/// Reads a sale's view: one script call.
pub async fn watch_sale(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
) -> Result<Watched, QueueError> {
    let k = SaleKeys::new(sale);
    let reply: Vec<String> = scripts
        .watch
        .run(
            redis,
            vec![k.meta(), k.waiting(), k.admissions()],
            Vec::<Value>::new(),
        )
        .await?;
    decode_view(&reply)
}

fn decode_view(reply: &[String]) -> Result<Watched, QueueError> {
    let text = |i: usize| reply.get(i).map_or("", String::as_str);
    let float = |i: usize| text(i).parse::<f64>().unwrap_or(0.0);
    match text(0) {
        "gone" => Ok(Watched::Gone),
        "sale" if reply.len() >= 12 => Ok(Watched::Live(SaleView {
            frozen: text(1) == "1",
            sold_out: text(2) == "1",
            waitlist: text(3) == "1",
            paused: text(4) == "1",
            closed: text(5) == "1",
            measured_rate: float(6),
            release_rate: float(7),
            opens_at_ms: float(8) as i64,
            admitted_total: float(9) as u64,
            frontier: Some(float(10)).filter(|f| *f >= 0.0),
            waiting: float(11) as u64,
        })),
        _ => Err(QueueError::Store(crate::store::StoreError::corrupt(
            anyhow::anyhow!("watch_sale replied {reply:?}"),
        ))),
    }
}

type View = Option<Arc<Watched>>;

/// The watchers of one API process, and its count of open streams.
pub struct Push {
    redis: Pool,
    scripts: Arc<Scripts>,
    every: Duration,
    max_streams: usize,
    open: AtomicUsize,
    stop: CancellationToken,
    sales: Mutex<HashMap<SaleId, Watch>>,
    /// Names streams in [`Near`].
    next_stream: std::sync::atomic::AtomicU64,
}

impl Push {
    /// `stop`: cancelled when the server stops; every stream and watcher
    /// ends then.
    pub fn new(
        redis: Pool,
        scripts: Arc<Scripts>,
        every: Duration,
        max_streams: usize,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            redis,
            scripts,
            every,
            max_streams,
            open: AtomicUsize::new(0),
            stop,
            sales: Mutex::new(HashMap::new()),
            next_stream: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sales being watched (each by one task).
    pub fn watchers(&self) -> usize {
        self.sales.lock().map_or(0, |s| s.len())
    }

    /// Streams open.
    pub fn streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// True once the server is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// A place for one more stream, or `None` at `MAX_EVENT_STREAMS`.
    pub fn open_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            });
        taken.ok().map(|_| {
            metrics::gauge!("flashsale_queue_event_streams").increment(1.0);
            StreamSlot(self.clone())
        })
    }

    /// The sale's view and its streams by place, starting its watcher if it
    /// has none.
    fn subscribe(self: &Arc<Self>, sale: SaleId) -> (watch::Receiver<View>, Near) {
        let mut sales = self.sales.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = sales.get(&sale) {
            return (w.tx.subscribe(), w.near.clone());
        }
        let (tx, rx) = watch::channel(None);
        let w = Watch {
            tx,
            near: Arc::default(),
        };
        sales.insert(sale, w.clone());
        let near = w.near.clone();
        tokio::spawn(watch_loop(self.clone(), sale, w));
        (rx, near)
    }

    /// Forgets the sale's watcher if nobody follows it any more. Under the
    /// same lock as [`Push::subscribe`], so a stream never subscribes to a
    /// watcher that is stopping.
    fn unwatched(&self, sale: SaleId, tx: &watch::Sender<View>, stopping: bool) -> bool {
        let mut sales = self.sales.lock().unwrap_or_else(|e| e.into_inner());
        if !stopping && tx.receiver_count() > 0 {
            return false;
        }
        if sales.get(&sale).is_some_and(|w| w.tx.same_channel(tx)) {
            sales.remove(&sale);
        }
        true
    }
}

/// One sale's watcher: reads the sale's view every interval while anyone
/// follows it; wakes every stream when the sale's state changed, and the
/// streams the admission frontier reached.
async fn watch_loop(push: Arc<Push>, sale: SaleId, w: Watch) {
    let Watch { tx, near } = w;
    metrics::gauge!("flashsale_queue_event_watchers").increment(1.0);
    let mut tick = tokio::time::interval(push.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = push.stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        if push.unwatched(sale, &tx, stopping) {
            break;
        }
        match watch_sale(&push.redis, &push.scripts, sale).await {
            Ok(seen) => {
                let frontier = match &seen {
                    Watched::Live(v) => v.frontier,
                    Watched::Gone => None,
                };
                // A new value either way; a wake-up for all only when the
                // state changed (the streams look at positions themselves).
                tx.send_if_modified(|view| {
                    let wake_all = view
                        .as_deref()
                        .is_none_or(|old| state_of(old) != state_of(&seen));
                    *view = Some(Arc::new(seen));
                    wake_all
                });
                if let Some(frontier) = frontier {
                    let mut streams = near.lock().unwrap_or_else(|e| e.into_inner());
                    let behind = streams.split_off(&(frontier as u64 + 1, 0));
                    for reached in std::mem::replace(&mut *streams, behind).values() {
                        reached.notify_one();
                    }
                }
            }
            // The streams keep their last view and still refresh their own
            // buyer now and then, which reports the outage if it lasts.
            Err(err) => tracing::debug!(sale.id = %sale, error = %err, "watching the sale failed"),
        }
    }
    metrics::gauge!("flashsale_queue_event_watchers").decrement(1.0);
}

/// What every stream of a sale reacts to at once.
fn state_of(w: &Watched) -> Option<[bool; 5]> {
    match w {
        Watched::Gone => None,
        Watched::Live(v) => Some([v.frozen, v.sold_out, v.waitlist, v.paused, v.closed]),
    }
}

/// An open stream, counted while it lives.
pub struct StreamSlot(Arc<Push>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("flashsale_queue_event_streams").decrement(1.0);
    }
}

/// What was last told, as far as telling again goes: the kind of standing,
/// the position and the pause. ETAs move with the measured rate at every
/// tick; they are told along with the position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Told {
    kind: u8,
    position: u64,
    paused: bool,
}

impl Told {
    fn of(standing: &Standing) -> Self {
        let (kind, position, paused) = match standing {
            Standing::Waiting {
                position, paused, ..
            } => (0, *position, *paused),
            Standing::Waitlisted { position, .. } => (1, *position, false),
            Standing::Admitted { .. } => (2, 0, false),
            Standing::SoldOut => (3, 0, false),
            Standing::Expired => (4, 0, false),
            Standing::NotInQueue => (5, 0, false),
        };
        Self {
            kind,
            position,
            paused,
        }
    }
}

/// After these, nothing more is told: the stream ends.
pub fn is_final(standing: &Standing) -> bool {
    matches!(
        standing,
        Standing::Admitted { .. } | Standing::SoldOut | Standing::Expired | Standing::NotInQueue
    )
}

/// How a stream reads its own buyer.
#[derive(Clone, Copy, Debug)]
pub struct Refresh {
    /// As for a poll: how stale the last-seen mark may get.
    pub seen_refresh_ms: u64,
    /// The longest wait between exact reads.
    pub max_poll_after_ms: u64,
}

/// One buyer's stream: the standing to tell next, from the sale's view and
/// the buyer's last exact read.
pub struct Follower {
    push: Arc<Push>,
    sale: SaleId,
    user: String,
    refresh: Refresh,
    view: watch::Receiver<View>,
    near: Near,
    /// This stream's key in [`Near`] (while registered) and its wake-up.
    id: u64,
    registered: Option<u64>,
    reached: Arc<tokio::sync::Notify>,
    /// The frontier this stream found already past its place, if any.
    passed: Option<u64>,
    /// When to look at the view for a new position.
    look_at: Instant,
    /// The last exact read: waiting or waitlisted.
    base: Standing,
    in_line: Option<InLine>,
    /// When to read the buyer again regardless.
    refresh_at: Instant,
    told: Told,
    told_at: Instant,
    /// A position change waiting for [`POSITION_EVERY`] to pass.
    pending_at: Option<Instant>,
}

impl Follower {
    /// Follows `user`, whose exact standing (waiting or waitlisted, already
    /// told) is `first`.
    pub fn new(
        push: &Arc<Push>,
        sale: SaleId,
        user: String,
        refresh: Refresh,
        first: Standing,
        in_line: Option<InLine>,
    ) -> Self {
        let now = Instant::now();
        let (view, near) = push.subscribe(sale);
        let mut follower = Self {
            view,
            near,
            id: push.next_stream.fetch_add(1, Ordering::Relaxed),
            registered: None,
            reached: Arc::default(),
            passed: None,
            look_at: now + look_every(),
            push: push.clone(),
            sale,
            user,
            refresh,
            refresh_at: now + next_read(&first, refresh.max_poll_after_ms),
            told: Told::of(&first),
            told_at: now,
            base: first,
            in_line,
            pending_at: None,
        };
        follower.register();
        follower
    }

    /// Puts the stream among those the watcher wakes when the frontier
    /// reaches its place; if it already has, wakes itself.
    fn register(&mut self) {
        let Some(line) = self.in_line else {
            return;
        };
        let place = line.place as u64;
        let mut near = self.near.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = self.registered.take() {
            near.remove(&(old, self.id));
        }
        // The watcher updates the view before it wakes the streams reached:
        // a frontier that passed before this registration shows here.
        let passed = match self.view.borrow().as_deref() {
            Some(Watched::Live(SaleView {
                frontier: Some(f), ..
            })) if *f >= line.place => Some(*f as u64),
            _ => None,
        };
        if let Some(frontier) = passed {
            drop(near);
            // Once per frontier: a buyer still in line behind it (a sale
            // rebuilt by a restore) is left to the periodic reads.
            if self.passed != Some(frontier) {
                self.passed = Some(frontier);
                self.reached.notify_one();
            }
        } else {
            near.insert((place, self.id), self.reached.clone());
            self.registered = Some(place);
        }
    }

    /// The next standing to tell, once it differs from the last; `None`
    /// when the stream should end (after a final standing, when the buyer
    /// is no longer in line, or when the server stops).
    pub async fn next(&mut self) -> Option<Standing> {
        if is_final(&self.base) {
            return None;
        }
        loop {
            let wake = [self.pending_at, Some(self.look_at)]
                .into_iter()
                .flatten()
                .fold(self.refresh_at, Instant::min);
            let reached = tokio::select! {
                biased;
                _ = self.push.stop.cancelled() => return None,
                changed = self.view.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    false
                },
                _ = self.reached.notified() => true,
                _ = tokio::time::sleep_until(wake) => false,
            };
            let now = Instant::now();
            if now >= self.look_at {
                self.look_at = now + look_every();
            }
            let view = self.view.borrow_and_update().clone();
            let standing = self.standing(view.as_deref(), reached).await;
            if matches!(standing, Standing::NotInQueue) {
                return None;
            }
            if let Some(tell) = self.tell(standing) {
                return Some(tell);
            }
        }
    }

    /// The buyer's standing now: estimated from the view, or read exactly
    /// when the frontier `reached` the buyer or the periodic read is due.
    async fn standing(&mut self, view: Option<&Watched>, reached: bool) -> Standing {
        if reached {
            self.registered = None;
        }
        if reached || Instant::now() >= self.refresh_at {
            // Boxed: the read is kilobytes, and the stream's resting state
            // (awaiting the next change) should not carry it.
            let read = Box::pin(queue::status_in_line(
                &self.push.redis,
                &self.push.scripts,
                self.sale,
                &self.user,
                self.refresh.seen_refresh_ms,
            ))
            .await;
            match read {
                Ok((standing, in_line)) => {
                    self.refresh_at =
                        Instant::now() + next_read(&standing, self.refresh.max_poll_after_ms);
                    if !is_final(&standing) {
                        self.base = standing.clone();
                        self.in_line = in_line;
                        if self.registered.is_none() {
                            self.register();
                        }
                    }
                    return standing;
                }
                Err(QueueError::SaleNotFound) => return Standing::NotInQueue,
                Err(err) => {
                    tracing::debug!(sale.id = %self.sale, error = %err, "reading a followed buyer failed");
                    self.refresh_at = Instant::now() + RETRY_AFTER_ERROR;
                }
            }
        }
        self.estimate(view)
    }

    /// The standing the view implies for this buyer, from the last exact
    /// read: everyone admitted since was ahead.
    fn estimate(&self, view: Option<&Watched>) -> Standing {
        let v = match view {
            None => return self.base.clone(),
            Some(Watched::Gone) => return Standing::NotInQueue,
            Some(Watched::Live(v)) if v.frozen => return self.base.clone(),
            Some(Watched::Live(v)) => v,
        };
        if v.sold_out || v.closed {
            return Standing::SoldOut;
        }
        let (Standing::Waiting { position, .. } | Standing::Waitlisted { position, .. }) =
            self.base
        else {
            return self.base.clone();
        };
        let ahead_gone = self
            .in_line
            .map_or(0, |l| v.admitted_total.saturating_sub(l.admitted_total));
        let position = position.saturating_sub(ahead_gone).max(1);
        if v.waitlist {
            Standing::Waitlisted {
                position,
                measured_rate: v.measured_rate,
                release_rate: v.release_rate,
                paused: v.paused,
                opens_at_ms: v.opens_at_ms,
            }
        } else {
            Standing::Waiting {
                position,
                measured_rate: v.measured_rate,
                release_rate: v.release_rate,
                paused: v.paused,
                opens_at_ms: v.opens_at_ms,
            }
        }
    }

    /// `standing` if it is news: anything but a position is told at once, a
    /// new position at most every [`POSITION_EVERY`].
    fn tell(&mut self, standing: Standing) -> Option<Standing> {
        let told = Told::of(&standing);
        if told == self.told {
            self.pending_at = None;
            return None;
        }
        let now = Instant::now();
        let only_position = told.kind == self.told.kind && told.paused == self.told.paused;
        if only_position && now < self.told_at + POSITION_EVERY {
            self.pending_at = Some(self.told_at + POSITION_EVERY);
            return None;
        }
        self.told = told;
        self.told_at = now;
        self.pending_at = None;
        if is_final(&standing) {
            self.base = standing.clone();
        }
        Some(standing)
    }
}

/// The next look at the view for a new position: every
/// [`POSITION_EVERY`] and a random moment of up to [`POSITION_SPREAD_MS`],
/// so the streams of a sale do not all look at once.
fn look_every() -> Duration {
    POSITION_EVERY + Duration::from_millis(rand::random_range(0..POSITION_SPREAD_MS))
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(place) = self.registered {
            let mut near = self.near.lock().unwrap_or_else(|e| e.into_inner());
            near.remove(&(place, self.id));
        }
    }
}

/// When a stream reads its buyer again: when a polling page would, but
/// not more often than every [`EXACT_EVERY_MIN_MS`], and always within
/// `max_poll_after_ms` (well inside the idle limit).
fn next_read(standing: &Standing, max_poll_after_ms: u64) -> Duration {
    let ms = standing
        .poll_after_ms(chrono::Utc::now(), max_poll_after_ms)
        .unwrap_or(max_poll_after_ms);
    Duration::from_millis(ms.max(EXACT_EVERY_MIN_MS).min(max_poll_after_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_decodes_and_no_frontier_before_any_admission() {
        let reply: Vec<String> = [
            "sale", "0", "0", "1", "1", "0", "12.5", "10", "1700", "42", "-1", "7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Watched::Live(v) = decode_view(&reply).unwrap() else {
            panic!("a live sale");
        };
        assert!(v.waitlist && v.paused && !v.sold_out);
        assert_eq!(v.admitted_total, 42);
        assert_eq!(v.frontier, None);
        assert_eq!(v.waiting, 7);
        assert_eq!(decode_view(&["gone".into()]).unwrap(), Watched::Gone);
        assert!(decode_view(&["what".into()]).is_err());
    }
}
