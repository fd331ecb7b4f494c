//! JSON input as JSON Schema reads it: `2.0` is the integer 2 (the OpenAPI
//! document says `integer`, and a client generated from it may send either
//! form), while `2.5` and `"2"` are not integers.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The value as a whole number, if it is one: `2` and `2.0`, not `2.5`,
/// `"2"` or a number beyond i64.
pub fn whole(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let f = v.as_f64()?;
        (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
    })
}

/// serde helper for `Option<i64>` fields that accept `2.0` as 2.
pub fn opt_whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => whole(&v).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid type: {}, expected an integer", kind(&v)))
        }),
    }
}

/// serde helper for `i64` fields that accept `2.0` as 2.
pub fn req_whole<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = Value::deserialize(d)?;
    whole(&v).ok_or_else(|| {
        serde::de::Error::custom(format!("invalid type: {}, expected an integer", kind(&v)))
    })
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string {:?}", s.chars().take(40).collect::<String>()),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// Whether a body is a JSON object (its first non-blank byte is `{`).
/// serde would also fill a struct from an array, which no client means.
pub fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// serde helper: a UTC time as RFC 3339, exactly as chrono's own
/// `Serialize` writes it (`2026-11-21T19:30:58.821Z`, no fraction on a whole
/// second), without `core::fmt`. A hold's answer carries two times, and
/// chrono's formatting goes through `core::fmt`, a noticeable share of a
/// hold (load/RESULTS.md). Times this does not cover (sub-millisecond, or outside the
/// years 0 to 9999) go through chrono.
pub fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 24];
    match format_rfc3339(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => t.serialize(s),
    }
}

/// [`rfc3339`] for an optional time.
pub fn opt_rfc3339<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

fn format_rfc3339<'a>(t: &DateTime<Utc>, buf: &'a mut [u8; 24]) -> Option<&'a str> {
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || !nanos.is_multiple_of(1_000_000) || nanos >= 1_000_000_000 {
        return None;
    }
    fn digits(buf: &mut [u8], mut v: u32) {
        for b in buf.iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    digits(&mut buf[0..4], year as u32);
    buf[4] = b'-';
    digits(&mut buf[5..7], t.month());
    buf[7] = b'-';
    digits(&mut buf[8..10], t.day());
    buf[10] = b'T';
    digits(&mut buf[11..13], t.hour());
    buf[13] = b':';
    digits(&mut buf[14..16], t.minute());
    buf[16] = b':';
    digits(&mut buf[17..19], t.second());
    let mut len = 19;
    if nanos != 0 {
        buf[19] = b'.';
        digits(&mut buf[20..23], nanos / 1_000_000);
        len = 23;
    }
    buf[len] = b'Z';
    std::str::from_utf8(&buf[..=len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[derive(Serialize)]
    struct Fast(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);

    #[test]
    fn times_are_written_exactly_as_chrono_writes_them() {
        let edges = [
            0,
            1,
            999,
            1_000,
            -1,
            -1_000,
            951_782_400_000,     // 2000-02-29
            946_684_799_999,     // 1999-12-31T23:59:59.999
            1_795_289_458_821,   // 2026-11-21T...
            -62_167_219_200_000, // 0000-01-01
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01: through chrono
            -62_167_219_200_001, // -0001: through chrono
        ];
        let random =
            (0..200_000).map(|_| rand::random_range(-62_167_219_200_000i64..253_402_300_800_000));
        for ms in edges.into_iter().chain(random) {
            let t = Utc.timestamp_millis_opt(ms).single().unwrap();
            assert_eq!(
                serde_json::to_string(&Fast(t)).unwrap(),
                serde_json::to_string(&t).unwrap(),
                "{ms}"
            );
        }
        let micro = Utc
            .timestamp_opt(1_795_289_458, 123_456_000)
            .single()
            .unwrap();
        assert_eq!(
            serde_json::to_string(&Fast(micro)).unwrap(),
            serde_json::to_string(&micro).unwrap()
        );
    }

    #[test]
    fn whole_numbers_are_what_json_schema_calls_integers() {
        assert_eq!(whole(&json!(2)), Some(2));
        assert_eq!(whole(&json!(2.0)), Some(2));
        assert_eq!(whole(&json!(-1)), Some(-1));
        assert_eq!(whole(&json!(2.5)), None);
        assert_eq!(whole(&json!("2")), None);
        assert_eq!(whole(&json!(null)), None);
        assert_eq!(whole(&json!(1e300)), None);
    }

    #[test]
    fn only_objects_count_as_objects() {
        assert!(is_object(br#"  {"a": 1}"#));
        assert!(!is_object(b"[null, null]"));
        assert!(!is_object(b""));
    }
}
