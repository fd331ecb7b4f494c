//! The sale's stream, the outbox between Redis and Postgres, as the sink,
//! the reconciler and `flashsale restore` read it.
//!
//! Confirmations and cancellations are appended to `{sale:<id>}:stream` by
//! the scripts that make them, each entry numbered with the sale's stream
//! sequence (`seq` in the sale's meta). The fields of an entry are a wire
//! contract between those scripts and the sink; [`fields`] names them.
//!
//! Reading where a stream stands is one small atomic script
//! ([`position`]); reading its entries is paged ([`entries`]), so no single
//! Redis command grows with a backlog.

use std::collections::HashMap;

use fred::{clients::Pool, interfaces::StreamsInterface, types::Value};

use crate::{ids::SaleId, keys::SaleKeys, scripts::Scripts};

/// The consumer group every sink replica joins; an entry it acknowledged is
/// in Postgres.
pub const SINK_GROUP: &str = "sink";

/// Entries read by one XRANGE call: small enough that a call takes about a
/// millisecond of Redis's time.
pub const PAGE: u64 = 1000;

/// The fields of a stream entry, as `confirm_hold.lua` and
/// `cancel_reservation.lua` write them.
pub mod fields {
    /// `confirmed` or `cancelled`.
    pub const TYPE: &str = "type";
    /// The reservation id.
    pub const ID: &str = "id";
    pub const SALE: &str = "sale";
    pub const ZONE: &str = "zone";
    pub const USER: &str = "user";
    pub const QTY: &str = "qty";
    /// When the entry was written (ms since the epoch).
    pub const AT_MS: &str = "at_ms";
    /// A cancellation's confirmation time (ms).
    pub const CONFIRMED_MS: &str = "confirmed_ms";
    pub const PAYMENT_REF: &str = "payment_ref";
    /// The sale's stream sequence number.
    pub const SEQ: &str = "seq";
    /// A seated zone's seats, `A-7,A-8` ("" or absent: general admission).
    pub const SEATS: &str = "seats";
}

/// Where a sale's stream and counters stand, read in one atomic step.
#[derive(Clone, Debug, Default)]
pub struct Position {
    /// The zone counters: `<code>:cap|avail|held|conf` -> count.
    pub counters: HashMap<String, i64>,
    /// The sale's stream sequence number: the counters are as of it.
    pub seq: i64,
    /// The id of the last entry appended ("0-0" when there is none).
    pub last_id: String,
    /// Entries delivered to a sink and not yet acknowledged.
    pub pending: i64,
    /// The last id delivered to the sink group ("" without the group).
    pub delivered: String,
    /// Whether the sale is frozen, and why (`rollback`, `epoch`, or
    /// nothing said: a restore in progress).
    pub frozen: Option<String>,
    /// The sale's epoch in Redis; `None` when Redis does not have the sale.
    pub epoch: Option<i32>,
    /// Each seated zone's segment of the seat map ([`crate::seatmap`]), as
    /// of the counters.
    pub seats: HashMap<String, String>,
}

impl Position {
    /// Every entry appended has been delivered to a sink and acknowledged:
    /// Postgres holds everything the stream ever carried.
    pub fn drained(&self) -> bool {
        self.pending == 0 && (self.last_id == "0-0" || self.delivered == self.last_id)
    }
}

/// Reads where the sale's stream stands (see `lua/reconcile_read.lua`).
pub async fn position(redis: &Pool, scripts: &Scripts, sale: SaleId) -> anyhow::Result<Position> {
    let k = SaleKeys::new(sale);
    let reply: Vec<Value> = scripts
        .reconcile_read
        .run(
            redis,
            vec![k.zones(), k.stream(), k.meta(), k.seat_map()],
            vec![Value::from(SINK_GROUP)],
        )
        .await?;
    let mut parts = reply.into_iter();
    let counters = parts
        .next()
        .unwrap_or(Value::Null)
        .into_array()
        .chunks(2)
        .filter_map(|kv| {
            Some((
                kv.first()?.as_string()?,
                kv.get(1)?.as_string()?.parse().ok()?,
            ))
        })
        .collect();
    let mut text = || parts.next().and_then(|v| v.as_string()).unwrap_or_default();
    let seq = text().parse().unwrap_or(0);
    let last_id = text();
    let pending = text().parse().unwrap_or(0);
    let delivered = text();
    let frozen = text();
    let reason = text();
    let epoch = text().parse().ok();
    let seats = parts
        .next()
        .unwrap_or(Value::Null)
        .into_array()
        .chunks(2)
        .filter_map(|z| Some((z.first()?.as_string()?, z.get(1)?.as_string()?)))
        .collect();
    Ok(Position {
        counters,
        seq,
        last_id,
        pending,
        delivered,
        frozen: (frozen == "1").then_some(reason),
        epoch,
        seats,
    })
}

/// One stream entry as the reconciler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub cancelled: bool,
    pub reservation: String,
    pub zone: String,
    pub qty: i64,
    /// A seated zone's seats (`A-7`); empty for general admission.
    pub seats: Vec<String>,
}

/// The sale's stream entries up to a given id, read in pages of [`PAGE`].
pub struct Pages {
    stream: String,
    from: String,
    last_id: String,
    done: bool,
}

impl Pages {
    /// Pages over the sale's entries up to `last_id` (inclusive).
    pub fn new(sale: SaleId, last_id: &str) -> Self {
        Self {
            stream: SaleKeys::new(sale).stream(),
            from: "-".to_owned(),
            last_id: last_id.to_owned(),
            done: last_id == "0-0",
        }
    }

    /// The next page; `None` after the last.
    pub async fn next(&mut self, redis: &Pool) -> anyhow::Result<Option<Vec<Entry>>> {
        if self.done {
            return Ok(None);
        }
        let reply: Value = redis
            .xrange(
                self.stream.as_str(),
                self.from.as_str(),
                self.last_id.as_str(),
                Some(PAGE),
            )
            .await?;
        let raw = reply.into_array();
        let full = raw.len() as u64 == PAGE;
        let mut last = None;
        let mut page = Vec::with_capacity(raw.len());
        for e in raw {
            let mut parts = e.into_array().into_iter();
            let Some(id) = parts.next().and_then(|v| v.as_string()) else {
                continue;
            };
            let flat = parts.next().unwrap_or(Value::Null).into_array();
            let mut f: HashMap<String, String> = HashMap::new();
            for kv in flat.chunks(2) {
                if let (Some(k), Some(v)) = (
                    kv.first().and_then(|v| v.as_string()),
                    kv.get(1).and_then(|v| v.as_string()),
                ) {
                    f.insert(k, v);
                }
            }
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            page.push(Entry {
                cancelled: get(fields::TYPE) == "cancelled",
                reservation: get(fields::ID),
                zone: get(fields::ZONE),
                qty: get(fields::QTY).parse().unwrap_or(0),
                seats: f
                    .get(fields::SEATS)
                    .map(|s| {
                        s.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            });
            last = Some(id);
        }
        match last {
            Some(id) if full && id != self.last_id => self.from = format!("({id}"),
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}
