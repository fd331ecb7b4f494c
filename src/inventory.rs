//! Zone inventory: holds, confirmations, cancellations and expiry.
//!
//! Every change of stock is one Lua script (see `lua/`), so the conservation
//! law `capacity = available + held + confirmed` holds for every zone at every
//! instant, whatever runs concurrently. This module builds the scripts' keys
//! and arguments and decodes their replies into Rust types, in one place.

use chrono::{DateTime, TimeZone, Utc};
use fred::{
    clients::{Client, Pool},
    types::Value,
};
use serde::Serialize;

use crate::{
    ids::{ReservationId, SaleId},
    keys::SaleKeys,
    scripts::Scripts,
    store::StoreError,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Held,
    Confirmed,
    Cancelled,
    Expired,
}

impl Status {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "held" => Status::Held,
            "confirmed" => Status::Confirmed,
            "cancelled" => Status::Cancelled,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

/// A reservation as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Reservation {
    #[schema(value_type = String)]
    pub id: ReservationId,
    #[schema(value_type = uuid::Uuid)]
    pub sale_id: SaleId,
    pub zone: String,
    pub quantity: i64,
    pub status: Status,
    #[serde(serialize_with = "crate::json::rfc3339")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::json::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::json::opt_rfc3339"
    )]
    pub confirmed_at: Option<DateTime<Utc>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::json::opt_rfc3339"
    )]
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The seats of a reservation in a seated zone (`A-7`), in the zone's
    /// order; none in a general-admission zone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seats: Vec<String>,
}

/// Why a script refused to act. Each maps to one API error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    SaleNotFound,
    /// The sale has not opened yet.
    NotYetOpen,
    /// The sale has closed.
    Closed,
    /// The buyer is no longer admitted (left the queue, or was dropped).
    PassRevoked,
    /// The buyer's admission ran out.
    PassExpired,
    /// The sale's Redis state is being restored.
    Frozen,
    ZoneNotFound,
    InvalidQuantity,
    LimitExceeded {
        remaining: i64,
    },
    SoldOut {
        left: i64,
    },
    IdempotencyKeyReused,
    /// The id drawn from an idempotency key belongs to another user (128
    /// bits of SHA-256 met: never in practice).
    IdTaken,
    ReservationNotFound,
    /// The hold's deadline passed (`expired_now`: this call returned its tickets).
    HoldExpired {
        expired_now: bool,
    },
    Cancelled,
    /// Seats were asked for in a general-admission zone.
    ZoneNotSeated,
    /// A seat the zone does not have.
    UnknownSeat {
        seat: String,
    },
    /// Some of the seats asked for are held or sold: these.
    SeatsTaken {
        seats: Vec<String>,
    },
}

/// A reservation a script acted on, and whether the call was a replay.
#[derive(Clone, Debug)]
pub struct Acted {
    pub reservation: Reservation,
    pub replayed: bool,
}

pub type Outcome = Result<Acted, Refusal>;

/// The buyer's request for a hold, already parsed.
pub struct HoldRequest<'a> {
    pub sale: SaleId,
    pub user: &'a str,
    pub zone: &'a str,
    pub quantity: u32,
    /// The id to create, derived from the idempotency key when there is one.
    pub id: ReservationId,
    /// Fingerprint of (zone, quantity, seats) when an idempotency key was
    /// given.
    pub fingerprint: Option<String>,
    /// Which seats, in a seated zone.
    pub pick: Pick,
}

/// Which seats a hold takes in a seated zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The best free seats (any tickets, in a general-admission zone).
    Any,
    /// The best free seats side by side in one row.
    Together,
    /// Exactly these seats (`A-7`), distinct; all or none.
    Exact(Vec<String>),
}

impl Pick {
    /// As `hold_tickets.lua` reads it: ARGV[6], and for exact seats each
    /// seat's row and number after it (ARGV[7], ARGV[8], ...), so the script
    /// need not take the list apart.
    fn args(&self) -> Vec<Value> {
        match self {
            Pick::Any => vec![Value::from("")],
            Pick::Together => vec![Value::from("t")],
            Pick::Exact(seats) => {
                let mut args = Vec::with_capacity(1 + 2 * seats.len());
                args.push(Value::from(format!("x:{}", seats.join(","))));
                for seat in seats {
                    // Seat ids are `<row>-<number>` (input::parse_seat_id).
                    let (row, number) = seat.split_once('-').unwrap_or((seat, ""));
                    args.push(Value::from(row));
                    args.push(Value::from(number));
                }
                args
            }
        }
    }
}

pub async fn hold(
    redis: &Pool,
    scripts: &Scripts,
    req: HoldRequest<'_>,
) -> Result<Outcome, StoreError> {
    let keys = SaleKeys::new(req.sale);
    let reply: Vec<String> = scripts
        .hold
        .run(
            redis,
            vec![
                keys.meta(),
                keys.zones(),
                keys.reservation(&req.id),
                keys.buyer(req.user),
                keys.deadlines(),
                keys.admitted(),
                keys.turns(),
                keys.seats(),
                keys.seat_map(),
            ],
            [
                Value::from(req.user),
                Value::from(req.zone),
                Value::from(i64::from(req.quantity)),
                Value::from(req.id.to_string()),
                Value::from(req.fingerprint.unwrap_or_default()),
            ]
            .into_iter()
            .chain(req.pick.args())
            .collect(),
        )
        .await?;
    let outcome = match reply.first().map(String::as_str) {
        // A fresh hold: the script returns only what the caller cannot know.
        Some("new") if reply.len() == 4 => reservation(
            req.id,
            req.zone,
            &req.quantity.to_string(),
            "held",
            &reply[1],
            &reply[2],
            "0",
            "0",
            &reply[3],
        )
        .map(|reservation| {
            Ok(Acted {
                reservation,
                replayed: false,
            })
        }),
        _ => decode(req.sale, &reply),
    }
    .map_err(StoreError::corrupt)?;
    match &outcome {
        Ok(acted) if !acted.replayed => {
            metrics::counter!("flashsale_holds_total").increment(1);
            metrics::counter!("flashsale_held_tickets_total")
                .increment(acted.reservation.quantity as u64);
        }
        Err(Refusal::SoldOut { .. }) => {
            metrics::counter!("flashsale_sold_out_refusals_total").increment(1)
        }
        _ => {}
    }
    Ok(outcome)
}

/// Confirms a hold, on the one connection `redis` (the caller may wait
/// there for replicas: see `replication`).
pub async fn confirm(
    redis: &Client,
    scripts: &Scripts,
    id: &ReservationId,
    user: &str,
    payment_ref: &str,
) -> Result<Outcome, StoreError> {
    let keys = SaleKeys::new(id.sale);
    let mut confirm_keys = change_keys(&keys, id, user);
    confirm_keys.push(keys.admitted());
    confirm_keys.push(keys.meta());
    confirm_keys.push(keys.seats());
    confirm_keys.push(keys.seat_map());
    let reply: Vec<String> = scripts
        .confirm
        .run_on(
            redis,
            confirm_keys,
            vec![
                Value::from(user),
                Value::from(payment_ref),
                Value::from(id.sale.to_string()),
                Value::from(id.to_string()),
            ],
        )
        .await?;
    let outcome = decode(id.sale, &reply).map_err(StoreError::corrupt)?;
    count_change(&outcome, "flashsale_confirms_total");
    Ok(outcome)
}

/// Cancels a reservation, on the one connection `redis` (as `confirm`).
pub async fn cancel(
    redis: &Client,
    scripts: &Scripts,
    id: &ReservationId,
    user: &str,
) -> Result<Outcome, StoreError> {
    let keys = SaleKeys::new(id.sale);
    let mut cancel_keys = change_keys(&keys, id, user);
    cancel_keys.push(keys.meta());
    cancel_keys.push(keys.admitted());
    cancel_keys.push(keys.seats());
    cancel_keys.push(keys.seat_map());
    let reply: Vec<String> = scripts
        .cancel
        .run_on(
            redis,
            cancel_keys,
            vec![
                Value::from(user),
                Value::from(id.sale.to_string()),
                Value::from(id.to_string()),
            ],
        )
        .await?;
    let outcome = decode(id.sale, &reply).map_err(StoreError::corrupt)?;
    count_change(&outcome, "flashsale_cancels_total");
    Ok(outcome)
}

/// What one sweep of a sale's deadlines did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub holds: u64,
    pub tickets: u64,
}

impl std::ops::AddAssign for Swept {
    fn add_assign(&mut self, o: Self) {
        self.holds += o.holds;
        self.tickets += o.tickets;
    }
}

/// Expires up to `limit` of a sale's holds whose deadline has passed.
pub async fn expire_due(
    redis: &Pool,
    scripts: &Scripts,
    sale: SaleId,
    limit: u32,
) -> Result<Swept, StoreError> {
    use fred::interfaces::HashesInterface;
    let keys = SaleKeys::new(sale);
    let due: Vec<String> = scripts
        .due_holds
        .run(
            redis,
            vec![keys.deadlines()],
            vec![Value::from(i64::from(limit))],
        )
        .await?;
    if due.is_empty() {
        return Ok(Swept::default());
    }
    // Each hold's buyer, so the step that ends them names every key it
    // touches (a reservation's buyer never changes). One round trip: the
    // keys share the sale's slot.
    let res_keys: Vec<String> = due
        .iter()
        .map(|rid| format!("{}{rid}", keys.reservation_prefix()))
        .collect();
    let pipe = redis.next().pipeline();
    for key in &res_keys {
        let _: () = pipe.hget(key.as_str(), "user").await?;
    }
    let users: Vec<Option<String>> = pipe.all().await?;
    let mut script_keys = Vec::with_capacity(5 + 2 * due.len());
    script_keys.extend([
        keys.deadlines(),
        keys.zones(),
        keys.meta(),
        keys.seats(),
        keys.seat_map(),
    ]);
    for (key, user) in res_keys.into_iter().zip(&users) {
        script_keys.push(key);
        script_keys.push(keys.buyer(user.as_deref().unwrap_or_default()));
    }
    let (holds, tickets): (u64, u64) = scripts
        .expire
        .run(
            redis,
            script_keys,
            due.into_iter().map(Value::from).collect(),
        )
        .await?;
    if holds > 0 {
        metrics::counter!("flashsale_expiries_total").increment(holds);
    }
    Ok(Swept { holds, tickets })
}

/// Reads one reservation, if it exists and belongs to `user`.
pub async fn get(
    redis: &Pool,
    id: &ReservationId,
    user: &str,
) -> Result<Option<Reservation>, StoreError> {
    use fred::interfaces::HashesInterface;
    let key = SaleKeys::new(id.sale).reservation(id);
    let fields: Vec<Option<String>> = redis
        .hmget(
            key,
            vec![
                "user",
                "zone",
                "qty",
                "status",
                "expires_ms",
                "created_ms",
                "confirmed_ms",
                "cancelled_ms",
                "seats",
            ],
        )
        .await?;
    match fields.first() {
        Some(Some(owner)) if owner == user => {}
        _ => return Ok(None),
    }
    let text = |i: usize| fields.get(i).cloned().flatten().unwrap_or_default();
    Ok(Some(
        reservation(
            id.clone(),
            &text(1),
            &text(2),
            &text(3),
            &text(4),
            &text(5),
            &text(6),
            &text(7),
            &text(8),
        )
        .map_err(StoreError::corrupt)?,
    ))
}

fn change_keys(keys: &SaleKeys, id: &ReservationId, user: &str) -> Vec<String> {
    vec![
        keys.reservation(id),
        keys.zones(),
        keys.buyer(user),
        keys.deadlines(),
        keys.stream(),
    ]
}

fn count_change(outcome: &Outcome, counter: &'static str) {
    match outcome {
        Ok(acted) if !acted.replayed => metrics::counter!(counter).increment(1),
        Err(Refusal::HoldExpired { expired_now: true }) => {
            metrics::counter!("flashsale_expiries_total").increment(1)
        }
        _ => {}
    }
}

/// Decodes the reply shared by hold, confirm and cancel:
/// `{"ok", rid, zone, qty, status, expires_ms, created_ms, confirmed_ms,
/// cancelled_ms, replayed, seats}` or `{"err", code, number}` (for
/// `unknown_seat` and `seats_taken`, seat ids in place of the number).
fn decode(sale: SaleId, reply: &[String]) -> anyhow::Result<Outcome> {
    let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
    match field(0) {
        "ok" if reply.len() == 11 => {
            let id: ReservationId = field(1)
                .parse()
                .map_err(|_| anyhow::anyhow!("script returned a bad reservation id"))?;
            anyhow::ensure!(
                id.sale == sale,
                "script returned another sale's reservation"
            );
            Ok(Ok(Acted {
                reservation: reservation(
                    id,
                    field(2),
                    field(3),
                    field(4),
                    field(5),
                    field(6),
                    field(7),
                    field(8),
                    field(10),
                )?,
                replayed: field(9) == "1",
            }))
        }
        "err" if reply.len() == 3 => {
            let n: i64 = field(2).parse().unwrap_or(0);
            Ok(Err(match field(1) {
                "sale_not_found" => Refusal::SaleNotFound,
                "sale_not_open" if n == 2 => Refusal::Closed,
                "sale_not_open" => Refusal::NotYetOpen,
                "zone_not_found" => Refusal::ZoneNotFound,
                "invalid_quantity" => Refusal::InvalidQuantity,
                "limit_exceeded" => Refusal::LimitExceeded {
                    remaining: n.max(0),
                },
                "sold_out" => Refusal::SoldOut { left: n.max(0) },
                "idempotency_key_reused" => Refusal::IdempotencyKeyReused,
                "id_taken" => Refusal::IdTaken,
                "pass_revoked" => Refusal::PassRevoked,
                "pass_expired" => Refusal::PassExpired,
                "sale_frozen" => Refusal::Frozen,
                "reservation_not_found" => Refusal::ReservationNotFound,
                "hold_expired" => Refusal::HoldExpired {
                    expired_now: n == 1,
                },
                "reservation_cancelled" => Refusal::Cancelled,
                "zone_not_seated" => Refusal::ZoneNotSeated,
                "unknown_seat" => Refusal::UnknownSeat {
                    seat: field(2).to_owned(),
                },
                "seats_taken" => Refusal::SeatsTaken {
                    seats: seat_list(field(2)),
                },
                other => anyhow::bail!("script returned unknown refusal `{other}`"),
            }))
        }
        _ => anyhow::bail!("script returned an unexpected reply: {reply:?}"),
    }
}

/// The seats of a list as the scripts write it (`A-7,A-8`; "" for none).
fn seat_list(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[allow(clippy::too_many_arguments, reason = "one per field of the hash")]
fn reservation(
    id: ReservationId,
    zone: &str,
    qty: &str,
    status: &str,
    expires_ms: &str,
    created_ms: &str,
    confirmed_ms: &str,
    cancelled_ms: &str,
    seats: &str,
) -> anyhow::Result<Reservation> {
    let millis = |s: &str| -> Option<DateTime<Utc>> {
        s.parse::<i64>()
            .ok()
            .filter(|ms| *ms > 0)
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    };
    Ok(Reservation {
        sale_id: id.sale,
        id,
        zone: zone.to_owned(),
        quantity: qty
            .parse()
            .map_err(|_| anyhow::anyhow!("reservation has a bad quantity `{qty}`"))?,
        status: Status::parse(status)
            .ok_or_else(|| anyhow::anyhow!("reservation has a bad status `{status}`"))?,
        expires_at: millis(expires_ms)
            .ok_or_else(|| anyhow::anyhow!("reservation has no deadline"))?,
        created_at: millis(created_ms)
            .ok_or_else(|| anyhow::anyhow!("reservation has no creation time"))?,
        confirmed_at: millis(confirmed_ms),
        cancelled_at: millis(cancelled_ms),
        seats: seat_list(seats),
    })
}
