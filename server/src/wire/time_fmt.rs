//! The one spelling of a point in time on the wire: RFC 3339 in UTC, with
//! microseconds only when there are any. Both directions live here so that a
//! time printed by the server, pasted back into a filter, compares equal to the
//! stored value (the databases keep microseconds, so finer digits are dropped on
//! the way in as well as on the way out).

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

/// Formats `t` in UTC as `YYYY-MM-DDTHH:MM:SSZ`, or with exactly six fraction
/// digits when it has a non-zero microsecond part. Anything finer than a
/// microsecond is dropped, not rounded, so formatting never moves a time forward
/// across a second (or a day) boundary.
pub fn format(t: OffsetDateTime) -> String {
    // `to_offset` panics only when the UTC date leaves time's year range; keep
    // the original offset's fields in that corner rather than panicking.
    let t = t.checked_to_offset(UtcOffset::UTC).unwrap_or(t);
    let micros = t.microsecond();
    let year = t.year();
    if !(0..=9999).contains(&year) {
        let base = format!(
            "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        return if micros == 0 {
            format!("{base}Z")
        } else {
            format!("{base}.{micros:06}Z")
        };
    }
    // Digit by digit: this runs for every time of every record on a page.
    let mut out = String::with_capacity(27);
    push_digits(&mut out, year as u32, 4);
    for (sep, n) in [
        ('-', u32::from(u8::from(t.month()))),
        ('-', u32::from(t.day())),
        ('T', u32::from(t.hour())),
        (':', u32::from(t.minute())),
        (':', u32::from(t.second())),
    ] {
        out.push(sep);
        push_digits(&mut out, n, 2);
    }
    if micros != 0 {
        out.push('.');
        push_digits(&mut out, micros, 6);
    }
    out.push('Z');
    out
}

/// Appends `n` as exactly `width` decimal digits (zero-padded).
fn push_digits(out: &mut String, n: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u32.pow(i) % 10) as u8));
    }
}

/// Parses a strict RFC 3339 time (any offset), returning it in UTC truncated to
/// microseconds.
pub fn parse(s: &str) -> Result<OffsetDateTime, String> {
    const EXPECTED: &str =
        "expected an RFC3339 time like 2026-06-10T09:00:00Z or 2026-06-10T11:00:00.5+02:00";
    // time's RFC 3339 parser follows the RFC in allowing `t` and `z`, and also
    // takes a space for the `T`. Nothing this server prints uses them and
    // nothing else in the API is case-insensitive, so refuse them rather than
    // carry several spellings (a space is also easy to lose in a URL).
    if s.contains(['t', 'z']) {
        return Err(format!("{EXPECTED} (with upper-case T and Z)"));
    }
    if s.as_bytes().get(10) != Some(&b'T') {
        return Err(EXPECTED.to_owned());
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| EXPECTED.to_owned())?;
    let t = t
        .checked_to_offset(UtcOffset::UTC)
        .ok_or_else(|| format!("{EXPECTED} (this one is outside the years 0000 to 9999 in UTC)"))?;
    Ok(truncate_to_micros(t))
}

/// Drops the sub-microsecond part, as the databases would.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t - Duration::nanoseconds(i64::from(t.nanosecond() % 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    proptest::proptest! {
        /// The digit-by-digit formatting spells every time as `format!` would.
        #[test]
        fn formats_like_the_reference(secs in -62_000_000_000i64..253_402_300_000i64, micros in 0u32..1_000_000) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap() + Duration::microseconds(i64::from(micros));
            let base = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second()
            );
            let want = if t.microsecond() == 0 { format!("{base}Z") } else { format!("{base}.{:06}Z", t.microsecond()) };
            proptest::prop_assert_eq!(format(t), want);
        }
    }

    #[test]
    fn formats_whole_seconds_without_fraction() {
        assert_eq!(
            format(datetime!(2026-06-10 09:00:00 UTC)),
            "2026-06-10T09:00:00Z"
        );
        assert_eq!(
            format(datetime!(0001-01-01 00:00:00 UTC)),
            "0001-01-01T00:00:00Z"
        );
    }

    #[test]
    fn formats_six_fraction_digits_and_truncates() {
        assert_eq!(
            format(datetime!(2026-06-10 09:00:00.5 UTC)),
            "2026-06-10T09:00:00.500000Z"
        );
        assert_eq!(
            format(datetime!(2026-06-10 09:00:00.000001 UTC)),
            "2026-06-10T09:00:00.000001Z"
        );
        // 999 ns is below a microsecond: dropped, not rounded up.
        assert_eq!(
            format(datetime!(2026-12-31 23:59:59.999999999 UTC)),
            "2026-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            format(datetime!(2026-06-10 09:00:00.000000999 UTC)),
            "2026-06-10T09:00:00Z"
        );
    }

    #[test]
    fn formats_in_utc() {
        assert_eq!(
            format(datetime!(2026-06-10 11:00:00 +02:00)),
            "2026-06-10T09:00:00Z"
        );
        assert_eq!(
            format(datetime!(2026-01-01 00:30:00 +01:00)),
            "2025-12-31T23:30:00Z"
        );
    }

    #[test]
    fn parses_and_converts_to_utc() {
        let t = parse("2026-06-10T11:00:00+02:00").unwrap();
        assert_eq!(t, datetime!(2026-06-10 09:00:00 UTC));
        assert_eq!(t.offset(), UtcOffset::UTC);
        assert_eq!(
            parse("2026-06-10T09:00:00.123456789Z").unwrap(),
            datetime!(2026-06-10 09:00:00.123456 UTC)
        );
        assert_eq!(
            parse("2026-06-10T09:00:00-00:00").unwrap(),
            datetime!(2026-06-10 09:00:00 UTC)
        );
    }

    #[test]
    fn rejects_everything_else() {
        for s in [
            "",
            "2026-06-10",
            "2026-06-10 09:00:00Z",
            "2026-06-10t09:00:00Z",
            "2026-06-10T09:00:00z",
            "2026-06-10T09:00:00",
            "2026-06-10T09:00Z",
            " 2026-06-10T09:00:00Z",
            "2026-06-10T09:00:00Z ",
            "2026-13-10T09:00:00Z",
            "2026-02-30T09:00:00Z",
            "2026-06-10T25:00:00Z",
            "10/06/2026",
            "1781082000",
            "now",
            "9999-12-31T23:00:00-02:00",
        ] {
            let e = parse(s).unwrap_err();
            assert!(
                e.starts_with("expected an RFC3339 time like 2026-06-10T09:00:00Z"),
                "{s:?}: {e}"
            );
        }
    }

    #[test]
    fn round_trips() {
        for s in [
            "2026-06-10T09:00:00Z",
            "2026-06-10T09:00:00.000001Z",
            "2026-06-10T09:00:00.100000Z",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
        let t = datetime!(2026-03-04 05:06:07.080910 UTC);
        assert_eq!(parse(&format(t)).unwrap(), t);
    }
}
