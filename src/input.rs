//! Values a buyer sends, parsed at the edge into types that cannot hold a
//! bad value, so nothing behind the edge checks them again.
//!
//! Each parse says precisely what was wrong, with the problem a client can
//! act on: a quantity out of range is `invalid_quantity`, a zone code that
//! cannot exist is `zone_not_found`.

use serde::Deserialize;

use crate::{error::ApiError, inventory::Pick};

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
    #[serde(default)]
    seats: serde_json::Value,
    #[serde(default)]
    together: serde_json::Value,
}

/// A hold request, parsed: which zone, how many, and in a seated zone which
/// seats.
#[derive(Clone, Debug)]
pub struct Hold {
    pub zone: ZoneCode,
    pub quantity: Quantity,
    pub pick: Pick,
}

/// A seat id, `<row>-<number>`: a row of 1 to 4 letters or digits and a
/// number from 1 to 9999 written plainly (`A-7`, `AA-12`). Whether the zone
/// has the seat is the hold script's to say.
pub fn parse_seat_id(raw: &str) -> Option<&str> {
    let (row, number) = raw.split_once('-')?;
    let row_ok = (1..=4).contains(&row.len()) && row.bytes().all(|b| b.is_ascii_alphanumeric());
    let number_ok = (1..=4).contains(&number.len())
        && !number.starts_with('0')
        && number.bytes().all(|b| b.is_ascii_digit());
    (row_ok && number_ok).then_some(raw)
}

/// The seats of a hold: distinct seat ids, 1 to [`MAX_QUANTITY`].
fn parse_seats(v: &serde_json::Value) -> Result<Vec<String>, ApiError> {
    let serde_json::Value::Array(items) = v else {
        return Err(ApiError::InvalidBody(
            "seats must be a list of seat ids (`[\"A-7\", \"A-8\"]`)".into(),
        ));
    };
    if items.is_empty() || items.len() > MAX_QUANTITY as usize {
        return Err(ApiError::InvalidQuantity(format!(
            "seats must list 1 to {MAX_QUANTITY} seats, got {}",
            items.len()
        )));
    }
    let mut seats: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let serde_json::Value::String(raw) = item else {
            return Err(ApiError::InvalidBody(
                "seats must be a list of seat ids (strings such as `A-7`)".into(),
            ));
        };
        let id = parse_seat_id(raw)
            .ok_or_else(|| ApiError::UnknownSeat(raw.chars().take(16).collect()))?;
        if seats.iter().any(|seen| seen == id) {
            return Err(ApiError::InvalidSeats(format!("seat {id} is listed twice")));
        }
        seats.push(id.to_owned());
    }
    Ok(seats)
}

impl TryFrom<RawHold> for Hold {
    type Error = ApiError;

    fn try_from(raw: RawHold) -> Result<Self, ApiError> {
        let serde_json::Value::String(zone) = raw.zone else {
            return Err(ApiError::InvalidBody(
                "zone must be a zone code (a string)".into(),
            ));
        };
        let together = match raw.together {
            serde_json::Value::Null => false,
            serde_json::Value::Bool(b) => b,
            _ => {
                return Err(ApiError::InvalidBody(
                    "together must be true or false".into(),
                ))
            }
        };
        let (quantity, pick) = if raw.seats.is_null() {
            let pick = if together { Pick::Together } else { Pick::Any };
            (Quantity::parse(&raw.quantity)?, pick)
        } else {
            if !raw.quantity.is_null() {
                return Err(ApiError::InvalidBody(
                    "give either `seats` or `quantity`, not both".into(),
                ));
            }
            if together {
                return Err(ApiError::InvalidBody(
                    "`together` goes with `quantity`: listed seats are held as listed".into(),
                ));
            }
            let seats = parse_seats(&raw.seats)?;
            (Quantity(seats.len() as u32), Pick::Exact(seats))
        };
        let zone = ZoneCode::parse(&zone)
            .ok_or_else(|| ApiError::ZoneNotFound(zone.chars().take(32).collect()))?;
        Ok(Hold {
            zone,
            quantity,
            pick,
        })
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
    fn seat_ids_are_a_short_row_and_a_plain_number() {
        for good in ["A-7", "AA-12", "1-1", "ZZZZ-9999"] {
            assert_eq!(parse_seat_id(good), Some(good));
        }
        for bad in [
            "A7", "A-0", "A-07", "-7", "A-", "ABCDE-1", "A-10000", "A-7-8", "Ä-1", "A-1,B-2",
        ] {
            assert_eq!(parse_seat_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_hold_names_seats_or_a_quantity_never_both() {
        let parse =
            |v: serde_json::Value| Hold::try_from(serde_json::from_value::<RawHold>(v).unwrap());
        let hold = parse(json!({"zone": "ST", "seats": ["A-7", "A-8"]})).unwrap();
        assert_eq!(hold.quantity.get(), 2);
        assert_eq!(hold.pick, Pick::Exact(vec!["A-7".into(), "A-8".into()]));
        let hold = parse(json!({"zone": "ST", "quantity": 3, "together": true})).unwrap();
        assert_eq!((hold.quantity.get(), hold.pick), (3, Pick::Together));
        assert!(matches!(
            parse(json!({"zone": "ST", "seats": ["A-7"], "quantity": 1})),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse(json!({"zone": "ST", "seats": ["A-7", "A-7"]})),
            Err(ApiError::InvalidSeats(_))
        ));
        assert!(matches!(
            parse(json!({"zone": "ST", "seats": ["A7"]})),
            Err(ApiError::UnknownSeat(_))
        ));
        assert!(matches!(
            parse(json!({"zone": "ST", "seats": []})),
            Err(ApiError::InvalidQuantity(_))
        ));
        assert!(matches!(
            parse(json!({"zone": "ST", "quantity": 2, "together": "yes"})),
            Err(ApiError::InvalidBody(_))
        ));
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
