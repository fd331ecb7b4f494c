//! JSON input as JSON Schema reads it: `2.0` is the integer 2 (the OpenAPI
//! document says `integer`, and a client generated from it may send either
//! form), while `2.5` and `"2"` are not integers.

use chrono::{DateTime, Utc};
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
/// `Serialize` writes it, through [`crate::fast::rfc3339_millis`] (chrono
/// for what that does not cover).
pub fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    match crate::fast::rfc3339_millis(t, &mut [0u8; 24]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[derive(Serialize)]
    struct Fast(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);

    #[test]
    fn the_serde_helper_writes_what_chrono_writes_and_falls_back_to_it() {
        for t in [
            Utc.timestamp_millis_opt(1_795_289_458_821)
                .single()
                .unwrap(),
            Utc.timestamp_millis_opt(253_402_300_800_000)
                .single()
                .unwrap(),
            Utc.timestamp_opt(1_795_289_458, 123_456_000)
                .single()
                .unwrap(),
        ] {
            assert_eq!(
                serde_json::to_string(&Fast(t)).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
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
