//! Redis key names: the one place that builds them.
//!
//! Every key of a sale carries the sale's hash tag `{sale:<id>}`, so all of a
//! sale's keys live in one Redis Cluster slot and every script that touches a
//! sale runs unchanged on a cluster. Zone codes and user ids never contain
//! `:` in a way that matters: zone codes are checked at the edge and user ids
//! only ever end a key.

use crate::ids::{ReservationId, SaleId};

/// The field of a buyer hash that counts their tickets; every other field is
/// a reservation id (hex digits only, so never this).
pub const BUYER_TICKETS: &str = "tickets";

/// One of a zone's four counters in the sale's zones hash, whose fields are
/// `<zone code>:<counter>` (`A:avail`). The Lua scripts name them the same
/// way; this is the one place the Rust side spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Capacity,
    Available,
    Held,
    Confirmed,
}

impl Counter {
    pub fn suffix(self) -> &'static str {
        match self {
            Counter::Capacity => "cap",
            Counter::Available => "avail",
            Counter::Held => "held",
            Counter::Confirmed => "conf",
        }
    }

    /// The field of `zone`'s counter in the zones hash.
    pub fn field(self, zone: &str) -> String {
        let suffix = self.suffix();
        let mut field = String::with_capacity(zone.len() + 1 + suffix.len());
        field.push_str(zone);
        field.push(':');
        field.push_str(suffix);
        field
    }

    /// The zone codes of a zones hash, from its capacity fields.
    pub fn zones<'a>(fields: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let suffix = format!(":{}", Counter::Capacity.suffix());
        let mut zones: Vec<String> = fields
            .into_iter()
            .filter_map(|f| f.strip_suffix(suffix.as_str()).map(str::to_owned))
            .collect();
        zones.sort();
        zones
    }
}

/// The shared rate limit `limit` (`join`, `address`...) of `subject` (a user
/// id or a client address): `{rl:<limit>:<subject>}`. The whole key is its
/// hash tag, so each lives in one slot of a cluster; they are many small
/// keys, spread over every slot.
pub fn rate_limit(limit: &str, subject: &str) -> String {
    format!("{{rl:{limit}:{subject}}}")
}

#[derive(Clone, Debug)]
pub struct SaleKeys {
    prefix: String,
}

impl SaleKeys {
    pub fn new(sale: SaleId) -> Self {
        Self {
            prefix: format!("{{sale:{sale}}}:"),
        }
    }

    /// Prefix + suffix without the formatting machinery: a poll builds five
    /// keys, and `format!`'s machinery is a measurable share of a poll
    /// (load/RESULTS.md).
    fn key(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + suffix.len());
        key.push_str(&self.prefix);
        key.push_str(suffix);
        key
    }

    /// Hash of the sale's settings and its definition.
    pub fn meta(&self) -> String {
        self.key("meta")
    }
    /// Sorted set of buyers waiting in the virtual queue, by place, with the
    /// second of each buyer's last poll in the score's low bits
    /// (`lua/lib/queue_place.lua`, [`crate::queue::place_of`]).
    pub fn waiting(&self) -> String {
        self.key("waiting")
    }
    /// Counter of arrivals after opening: the order of first come, first served.
    pub fn arrivals(&self) -> String {
        self.key("arrivals")
    }
    /// Hash of arrival counter / 64 -> the first of those arrivals' time
    /// (ms): how long admitted buyers waited, without a field per buyer.
    pub fn arrivals_ms(&self) -> String {
        self.key("arrivals_ms")
    }
    /// List of the buyers who joined before the sale opened (the pre-queue),
    /// in order of joining; a buyer who left and joined again is listed
    /// twice.
    pub fn prequeue(&self) -> String {
        self.key("prequeue")
    }
    /// Sorted set of admitted buyers yet to hold, by the time their turn
    /// ends unless they hold (admit_idle_seconds after admission). They are
    /// the admitted buyers who may still take available tickets.
    pub fn turns(&self) -> String {
        self.key("turns")
    }
    /// Sorted set of admitted buyers by pass deadline (ms). A member whose
    /// deadline has not passed holds a valid pass; it counts as active.
    pub fn admitted(&self) -> String {
        self.key("admitted")
    }
    /// Set of buyers whose pass expired unused, or who were dropped for not
    /// polling: their next poll says `expired`.
    pub fn expired(&self) -> String {
        self.key("expired")
    }
    /// List of recent release ticks, "ms:admitted", for the measured rate.
    pub fn ticks(&self) -> String {
        self.key("ticks")
    }
    /// List with one entry per release tick that admitted anyone:
    /// "ms:lowest place:highest place:count". The post-run check reads it to
    /// prove the queue was served in order (places only grow, tick to tick).
    pub fn admissions(&self) -> String {
        self.key("admissions")
    }
    /// Hash of zone counters: `<code>:cap`, `:avail`, `:held`, `:conf`
    /// ([`Counter`]); a seated zone's also keep where its best-seat searches
    /// start, `<code>:f<q>` and `<code>:fmax` (`lua/lib/seats.lua`).
    pub fn zones(&self) -> String {
        self.key("zones")
    }
    /// Hash indexing the seated zones' seats in [`Self::seat_map`]: where
    /// each row's seat 1 is (`lua/lib/seats.lua`).
    pub fn seats(&self) -> String {
        self.key("seats")
    }
    /// String of every seated zone's seats, a segment per zone, a character
    /// per seat ([`crate::seatmap`]): a hold reads and writes its own part
    /// in place, and one read answers a zone's seat map.
    pub fn seat_map(&self) -> String {
        self.key("seatmap")
    }
    /// Sorted set of held reservation ids by deadline (ms since the epoch).
    pub fn deadlines(&self) -> String {
        self.key("deadlines")
    }
    /// The outbox: confirmations and cancellations, in order.
    pub fn stream(&self) -> String {
        self.key("stream")
    }
    /// Stream entries the sink could not record, with the reason.
    pub fn dead_letters(&self) -> String {
        self.key("deadletter")
    }
    /// Hash of the reconciler's last findings (`at_ms`, `drift`, per zone).
    pub fn reconciliation(&self) -> String {
        self.key("recon")
    }
    /// Prefix of reservation hashes, for scripts that sweep them.
    pub fn reservation_prefix(&self) -> String {
        self.key("res:")
    }
    pub fn reservation(&self, id: &ReservationId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 4 + 64);
        key.push_str(&self.prefix);
        key.push_str("res:");
        key.push_str(id.encode(&mut [0; 64]));
        key
    }
    /// Prefix of buyer hashes, for scripts and sweeps that reach them by id.
    pub fn buyer_prefix(&self) -> String {
        self.key("buyer:")
    }
    /// Hash of one buyer in this sale: [`BUYER_TICKETS`], the tickets they
    /// hold or have confirmed (the per-user limit), and one field per
    /// reservation of theirs (its id, value `1`). One hash, so a hold writes
    /// the count and the id in one command.
    pub fn buyer(&self, user: &str) -> String {
        let mut key = self.key("buyer:");
        key.push_str(user);
        key
    }
}
