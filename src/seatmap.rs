//! The seat map as Redis keeps it: one string per sale, a segment per
//! seated zone, a character per seat (`lua/lib/seats.lua` holds, confirms
//! and frees seats in it in place).
//!
//! A segment is its rows front to back, each `|`, the row's name, `:` and a
//! character per seat number from 1, then a closing `|`:
//! `|A:..*#_..|B:.....|`. [`FREE`], [`HELD`], [`SOLD`], and [`NONE`] for a
//! number that is no seat (an aisle gap). This module writes a zone's
//! segment (a new sale, a restore) and reads one back (the seat map, the
//! reconciler).

use std::collections::HashMap;

use crate::sales::Seating;

pub const FREE: u8 = b'.';
pub const HELD: u8 = b'*';
pub const SOLD: u8 = b'#';
pub const NONE: u8 = b'_';

/// A zone's segment with every seat free.
pub fn segment(seating: &Seating) -> String {
    painted::<&str>(seating, &[]).expect("no seats to mark, none unknown")
}

/// A zone's segment with the seats `sold` marked sold, the rest free; or
/// the first id that is no seat of the zone.
pub fn painted<S: AsRef<str>>(seating: &Seating, sold: &[S]) -> Result<String, String> {
    let mut out = Vec::with_capacity(seating.rows.iter().map(|r| r.seats as usize + 6).sum());
    let mut rows: HashMap<&str, (usize, &crate::sales::SeatRow)> = HashMap::new();
    for row in &seating.rows {
        out.push(b'|');
        out.extend_from_slice(row.row.as_bytes());
        out.push(b':');
        rows.insert(row.row.as_str(), (out.len(), row));
        out.extend((1..=row.seats).map(|n| if row.has(n) { FREE } else { NONE }));
    }
    out.push(b'|');
    for id in sold {
        let id = id.as_ref();
        let at = id
            .split_once('-')
            .and_then(|(row, n)| Some((rows.get(row)?, n.parse::<u32>().ok()?)))
            .filter(|((_, row), n)| row.has(*n))
            .map(|((first, _), n)| first + n as usize - 1)
            .ok_or_else(|| id.to_owned())?;
        out[at] = SOLD;
    }
    Ok(String::from_utf8(out).expect("row names are ASCII"))
}

/// Where `zone`'s segment lies in the seat map (positions from 1), from the
/// meta field `seated` (`,ST=1:20400,BAL=20401:30000,`); `None` when the
/// zone is not seated.
pub fn span(seated: &str, zone: &str) -> Option<(usize, usize)> {
    let at = seated.find(&format!(",{zone}="))? + zone.len() + 2;
    let (first, rest) = seated[at..].split_once(':')?;
    let last = rest.split(',').next()?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// One seat of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seat<'a> {
    pub row: &'a str,
    pub number: u32,
    /// [`FREE`], [`HELD`] or [`SOLD`].
    pub state: u8,
}

impl Seat<'_> {
    /// `A-7`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.row, self.number)
    }
}

/// The seats of a segment in map order, without the numbers that are no
/// seat. Text that is not a segment yields what can be read of it.
pub fn seats(segment: &str) -> impl Iterator<Item = Seat<'_>> {
    segment
        .split('|')
        .filter_map(|row| row.split_once(':'))
        .flat_map(|(row, states)| {
            states
                .bytes()
                .zip(1..)
                .filter(|&(state, _)| state != NONE)
                .map(move |(state, number)| Seat { row, number, state })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sales::SeatRow;

    fn seating() -> Seating {
        Seating {
            rows: vec![
                SeatRow {
                    row: "A".into(),
                    seats: 4,
                    missing: vec![2],
                },
                SeatRow {
                    row: "BB".into(),
                    seats: 2,
                    missing: vec![],
                },
            ],
        }
    }

    #[test]
    fn a_segment_lists_rows_and_seats_and_reads_back() {
        let s = seating();
        assert_eq!(segment(&s), "|A:._..|BB:..|");
        let painted = painted(&s, &["A-4", "BB-1"]).unwrap();
        assert_eq!(painted, "|A:._.#|BB:#.|");
        let read: Vec<(String, u8)> = seats(&painted).map(|s| (s.id(), s.state)).collect();
        assert_eq!(
            read,
            [
                ("A-1".into(), FREE),
                ("A-3".into(), FREE),
                ("A-4".into(), SOLD),
                ("BB-1".into(), SOLD),
                ("BB-2".into(), FREE),
            ]
        );
        let ids: Vec<String> = s.seat_ids().collect();
        assert_eq!(ids, ["A-1", "A-3", "A-4", "BB-1", "BB-2"]);
        assert_eq!(s.count(), 5);
    }

    #[test]
    fn a_zones_span_is_read_from_the_seated_list() {
        let seated = ",ST=1:20400,S=20401:20420,";
        assert_eq!(span(seated, "ST"), Some((1, 20400)));
        assert_eq!(span(seated, "S"), Some((20401, 20420)));
        assert_eq!(span(seated, "T"), None);
        assert_eq!(span(",", "ST"), None);
    }

    #[test]
    fn an_unknown_seat_is_named() {
        for bad in ["A-2", "A-5", "A-0", "C-1", "A1", "BB-3"] {
            assert_eq!(painted(&seating(), &[bad]), Err(bad.to_owned()), "{bad}");
        }
    }
}
