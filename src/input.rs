//! Values a buyer sends, parsed at the edge into types that cannot hold a
//! bad value, so nothing behind the edge checks them again.
//!
//! Each parse says precisely what was wrong, with the problem a client can
//! act on: a quantity out of range is `invalid_quantity`, a zone code that
//! cannot exist is `zone_not_found`.

use serde::Deserialize;

use crate::error::ApiError;

/// Most tickets one request may ask for; the sale's per-user limit is
/// usually far lower and is checked in the hold script.
pub const MAX_QUANTITY: i64 = 100;

/// A zone code: 1 to 32 of `A-Z a-z 0-9 _ -`. Codes end Redis hash fields
/// (`<code>:avail`), so they never contain `:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneCode(String);

impl ZoneCode {
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| ZoneCode(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A number of tickets: a whole number from 1 to [`MAX_QUANTITY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity(u32);

impl Quantity {
    /// From JSON, as JSON Schema reads it: `2` and `2.0` are 2; `"2"`,
    /// `2.5`, `1e12`, `null`, `0` and `-1` are refused.
    pub fn parse(v: &serde_json::Value) -> Result<Self, ApiError> {
        match crate::json::whole(v) {
            Some(q) if (1..=MAX_QUANTITY).contains(&q) => Ok(Quantity(q as u32)),
            Some(q) => Err(ApiError::InvalidQuantity(format!(
                "quantity must be between 1 and {MAX_QUANTITY}, got {q}"
            ))),
            None => Err(ApiError::InvalidQuantity(format!(
                "quantity must be a whole number between 1 and {MAX_QUANTITY}"
            ))),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A payment reference a buyer confirms with: at most 255 bytes, no control
/// characters; empty when none was given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaymentRef(String);

impl PaymentRef {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        if raw.len() > 255 || raw.chars().any(char::is_control) {
            return Err(ApiError::Validation(
                "payment_ref must be at most 255 characters, without control characters".into(),
            ));
        }
        Ok(PaymentRef(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A hold request as it arrives: each field is read as any JSON value, so a
/// wrong type gets the field's own problem rather than serde's.
#[derive(Deserialize)]
pub struct RawHold {
    zone: serde_json::Value,
    #[serde(default)]
    quantity: serde_json::Value,
}

/// A hold request, parsed: which zone, how many.
#[derive(Clone, Debug)]
pub struct Hold {
    pub zone: ZoneCode,
    pub quantity: Quantity,
}

impl TryFrom<RawHold> for Hold {
    type Error = ApiError;

    fn try_from(raw: RawHold) -> Result<Self, ApiError> {
        let serde_json::Value::String(zone) = raw.zone else {
            return Err(ApiError::InvalidBody(
                "zone must be a zone code (a string)".into(),
            ));
        };
        let quantity = Quantity::parse(&raw.quantity)?;
        let zone = ZoneCode::parse(&zone)
            .ok_or_else(|| ApiError::ZoneNotFound(zone.chars().take(32).collect()))?;
        Ok(Hold { zone, quantity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zone_codes_are_short_and_made_of_safe_characters() {
        for good in ["A", "FLOOR", "balcony-2", "x_1", &"a".repeat(32)] {
            assert!(ZoneCode::parse(good).is_some(), "{good}");
        }
        for bad in ["", "A:avail", "a b", "Ä", &"a".repeat(33), "{sale}"] {
            assert!(ZoneCode::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn quantities_are_whole_numbers_in_range() {
        assert_eq!(Quantity::parse(&json!(2)).unwrap().get(), 2);
        assert_eq!(Quantity::parse(&json!(2.0)).unwrap().get(), 2);
        for bad in [
            json!("2"),
            json!(2.5),
            json!(1e12),
            json!(null),
            json!(0),
            json!(-1),
            json!(101),
        ] {
            assert!(
                matches!(Quantity::parse(&bad), Err(ApiError::InvalidQuantity(_))),
                "{bad}"
            );
        }
    }
}
