//! Hand-written versions of routines on the request path, each next to the
//! test that proves it gives what the plain version gives.
//!
//! They exist because the plain versions are measurably dear where they run
//! once or more per request (figures in `load/RESULTS.md`): `core::fmt`
//! behind chrono's RFC 3339 writer and behind `format!` of hex digits, and
//! SHA-256 on CPUs without SHA instructions. Nothing else in the crate
//! should need a trick of its own; add it here, with its test.

use chrono::{DateTime, Datelike, Timelike, Utc};
use siphasher::sip128::SipHasher24;

/// A UTC time as RFC 3339, byte for byte as chrono's own `Serialize` writes
/// it (`2026-11-21T19:30:58.821Z`, no fraction on a whole second), into
/// `buf`. `None` for what this does not cover (sub-millisecond precision,
/// years outside 0 to 9999): the caller then asks chrono.
pub fn rfc3339_millis<'a>(t: &DateTime<Utc>, buf: &'a mut [u8; 24]) -> Option<&'a str> {
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

/// `high` as 32 lowercase hex digits followed by the low `digits` hex
/// digits of `low`, into `buf`: `format!("{high:032x}{low:0digits$x}")`
/// without `core::fmt` (a hold writes a reservation id four times).
pub fn hex_pair(high: u128, low: u128, digits: usize, buf: &mut [u8; 64]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = digits.min(32);
    for (i, b) in buf[..32].iter_mut().enumerate() {
        *b = HEX[((high >> (124 - 4 * i)) & 0xf) as usize];
    }
    for (i, b) in buf[32..32 + digits].iter_mut().enumerate() {
        *b = HEX[((low >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[..32 + digits]).unwrap_or_default()
}

/// What a verified token or pass is cached under: a 128-bit SipHash-2-4 of
/// its exact string, keyed with 128 random bits drawn once per process.
///
/// The digest, not the token, is the key: 16 bytes instead of a few hundred,
/// for each of up to 200,000 buyers. SipHash is a pseudorandom function: a
/// caller who never learns the key cannot make a second string land on a
/// cached token's digest (2^-128 a try), so a hit stands for the very token
/// that was verified. It takes a fraction of SHA-256's time on CPUs without
/// SHA instructions.
pub type CacheKey = u128;

pub fn cache_key(token: &str) -> CacheKey {
    static KEY: std::sync::LazyLock<[u8; 16]> = std::sync::LazyLock::new(rand::random);
    SipHasher24::new_with_key(&KEY)
        .hash(token.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

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
        ];
        let random =
            (0..200_000).map(|_| rand::random_range(-62_167_219_200_000i64..253_402_300_800_000));
        for ms in edges.into_iter().chain(random) {
            let t = Utc.timestamp_millis_opt(ms).single().unwrap();
            let plain = serde_json::to_value(t).unwrap();
            assert_eq!(rfc3339_millis(&t, &mut [0; 24]), plain.as_str(), "{ms}");
        }
    }

    #[test]
    fn times_it_does_not_cover_are_left_to_chrono() {
        for t in [
            Utc.timestamp_millis_opt(253_402_300_800_000)
                .single()
                .unwrap(), // 10000-01-01
            Utc.timestamp_millis_opt(-62_167_219_200_001)
                .single()
                .unwrap(), // -0001
            Utc.timestamp_opt(1_795_289_458, 123_456_000)
                .single()
                .unwrap(), // microseconds
        ] {
            assert_eq!(rfc3339_millis(&t, &mut [0; 24]), None, "{t}");
        }
    }

    #[test]
    fn hex_pairs_are_what_format_writes() {
        for (high, low) in [
            (0u128, 0u128),
            (1, 1),
            (u128::MAX, u128::MAX),
            (rand::random(), rand::random()),
            (rand::random(), 0xabc),
        ] {
            assert_eq!(
                hex_pair(high, low, 32, &mut [0; 64]),
                format!("{high:032x}{low:032x}")
            );
            let narrow = low & u128::from(u64::MAX);
            assert_eq!(
                hex_pair(high, narrow, 16, &mut [0; 64]),
                format!("{high:032x}{narrow:016x}")
            );
        }
    }

    #[test]
    fn cache_keys_tell_tokens_apart_and_are_stable_within_a_process() {
        assert_eq!(cache_key("a.b.c"), cache_key("a.b.c"));
        assert_ne!(cache_key("a.b.c"), cache_key("a.b.d"));
        assert_ne!(cache_key(""), cache_key(" "));
    }
}
