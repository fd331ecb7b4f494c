//! Typed identifiers, parsed at the edge.
//!
//! A reservation id carries its sale id, so a request naming only the
//! reservation (`POST /v1/reservations/{id}/confirm`) still knows which sale's
//! keys, and which cluster slot, hold it. To a client it is an opaque string.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct SaleId(pub Uuid);

impl SaleId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for SaleId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SaleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SaleId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// `<sale uuid, 32 hex><suffix, 32 hex>`.
///
/// The suffix is 128 bits, random or drawn from the idempotency key, so two
/// holds never meet on one id: the hold script writes a fresh hold without
/// first reading whether its id is taken. Ids made before the suffix was
/// widened (16 hex digits) still parse and print as they were.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReservationId {
    pub sale: SaleId,
    suffix: u128,
    /// An id of the narrow, 64-bit form (16 hex digits), still accepted.
    narrow: bool,
}

impl ReservationId {
    /// A fresh random id.
    pub fn random(sale: SaleId) -> Self {
        Self {
            sale,
            suffix: rand::random(),
            narrow: false,
        }
    }

    /// The id a request with this idempotency key maps to: the same user and
    /// key always land on the same reservation, which is how the hold script
    /// recognises a retry.
    pub fn for_idempotency_key(sale: SaleId, user: &str, key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Self {
            sale,
            suffix: u128::from_be_bytes(first),
            narrow: false,
        }
    }
}

impl ReservationId {
    /// The id's text, written into `buf` without `core::fmt`
    /// ([`crate::fast::hex_pair`]).
    pub fn encode<'a>(&self, buf: &'a mut [u8; 64]) -> &'a str {
        let digits = if self.narrow { 16 } else { 32 };
        crate::fast::hex_pair(self.sale.0.as_u128(), self.suffix, digits, buf)
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut [0; 64]))
    }
}

impl FromStr for ReservationId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let narrow = match s.len() {
            64 => false,
            48 => true,
            _ => return Err(()),
        };
        if !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(());
        }
        let sale = Uuid::parse_str(&s[..32]).map_err(|_| ())?;
        let suffix = u128::from_str_radix(&s[32..], 16).map_err(|_| ())?;
        Ok(Self {
            sale: SaleId(sale),
            suffix,
            narrow,
        })
    }
}

impl Serialize for ReservationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.encode(&mut [0; 64]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_id_round_trips_through_its_text_form() {
        let id = ReservationId::random(SaleId::new());
        assert_eq!(id.to_string().parse::<ReservationId>(), Ok(id));
    }

    #[test]
    fn ids_of_the_earlier_narrow_form_round_trip_unchanged() {
        let text = format!("{}{}", SaleId::new().0.simple(), "00ab00cd00ef0012");
        let id: ReservationId = text.parse().expect("a 48-digit id parses");
        assert_eq!(id.to_string(), text);
        assert_ne!(
            id,
            ReservationId {
                narrow: false,
                ..id.clone()
            }
        );
    }

    #[test]
    fn the_text_is_the_sale_and_the_suffix_in_lowercase_hex() {
        let sale = SaleId::new();
        for suffix in [0u128, 1, 0xabc, u128::MAX, rand::random()] {
            let id = ReservationId {
                sale,
                suffix,
                narrow: false,
            };
            let want = format!("{}{:032x}", sale.0.simple(), suffix);
            assert_eq!(id.to_string(), want);
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{want}\""));
            let narrow = ReservationId {
                sale,
                suffix: suffix & u128::from(u64::MAX),
                narrow: true,
            };
            let want = format!("{}{:016x}", sale.0.simple(), suffix & u128::from(u64::MAX));
            assert_eq!(narrow.to_string(), want);
        }
    }

    #[test]
    fn fresh_ids_carry_128_bits() {
        let id = ReservationId::random(SaleId::new());
        assert_eq!(id.to_string().len(), 64);
        let keyed = ReservationId::for_idempotency_key(SaleId::new(), "u1", "k");
        assert_eq!(keyed.to_string().len(), 64);
    }

    #[test]
    fn same_user_and_key_give_the_same_id_and_other_users_do_not() {
        let sale = SaleId::new();
        let a = ReservationId::for_idempotency_key(sale, "u1", "k");
        assert_eq!(a, ReservationId::for_idempotency_key(sale, "u1", "k"));
        assert_ne!(a, ReservationId::for_idempotency_key(sale, "u2", "k"));
        assert_ne!(a, ReservationId::for_idempotency_key(sale, "u1", "k2"));
    }

    #[test]
    fn malformed_reservation_ids_are_refused() {
        for bad in [
            "",
            "1' OR '1'='1",
            &"g".repeat(48),
            &"A".repeat(48),
            &"a".repeat(56),
            &"a".repeat(65),
            &"A".repeat(64),
        ] {
            assert!(bad.parse::<ReservationId>().is_err(), "{bad}");
        }
    }
}
