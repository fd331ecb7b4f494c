//! Redis key names: the one place that builds them.
//!
//! Every key of a sale carries the sale's hash tag `{sale:<id>}`, so all of a
//! sale's keys live in one Redis Cluster slot and every script that touches a
//! sale runs unchanged on a cluster. Zone codes and user ids never contain
//! `:` in a way that matters: zone codes are checked at the edge and user ids
//! only ever end a key.

use crate::ids::{ReservationId, SaleId};

/// The set of all sale ids, for workers that sweep every sale.
pub const SALES: &str = "flashsale:sales";

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

    fn key(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    /// Hash of the sale's settings and its definition.
    pub fn meta(&self) -> String {
        self.key("meta")
    }
    /// Sorted set of buyers waiting in the virtual queue.
    pub fn waiting(&self) -> String {
        self.key("waiting")
    }
    /// Hash of zone counters: `<code>:cap`, `:avail`, `:held`, `:conf`.
    pub fn zones(&self) -> String {
        self.key("zones")
    }
    /// Hash of user id -> tickets held + confirmed (the per-user limit).
    pub fn users(&self) -> String {
        self.key("users")
    }
    /// Sorted set of held reservation ids by deadline (ms since the epoch).
    pub fn deadlines(&self) -> String {
        self.key("deadlines")
    }
    /// The outbox: confirmations and cancellations, in order.
    pub fn stream(&self) -> String {
        self.key("stream")
    }
    /// Prefix of reservation hashes, for scripts that sweep them.
    pub fn reservation_prefix(&self) -> String {
        self.key("res:")
    }
    pub fn reservation(&self, id: &ReservationId) -> String {
        format!("{}res:{}", self.prefix, id)
    }
    /// Set of one user's reservation ids in this sale.
    pub fn user_reservations(&self, user: &str) -> String {
        format!("{}ures:{}", self.prefix, user)
    }
}
