//! Canonical values: one text form for a key or version value, whatever it arrived as.
//!
//! Key and version values reach the proxy as SQL literals, as Bind parameters (text or binary)
//! and in result rows (text or binary). To compare them, each is turned into the text
//! PostgreSQL itself prints for that value with `DateStyle = ISO` and `TimeZone = UTC`, chosen
//! by the type OID of the column the value belongs to (`char(n)` drops its trailing blanks,
//! which PostgreSQL ignores when comparing). `None` means "nothing known": the value is
//! malformed, or its binary form is one this module does not decode. Result values printed in
//! another `DateStyle` go through [`super::datestyle`] first.
//!
//! Also here: [`quote_literal`], the one way the proxy embeds a value in SQL text.

use std::fmt::Write as _;

/// Type OIDs this module knows.
pub mod oid {
    pub const UNKNOWN_UNSPECIFIED: u32 = 0;
    pub const BOOL: u32 = 16;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const XID: u32 = 28;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
}

const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch for dates and timestamps.
const PG_EPOCH_DAYS: i64 = 10_957;

/// An integer's decimal text (keys and versions are mostly integers: `itoa`, not `fmt`).
fn int_text(n: impl itoa::Integer) -> String {
    itoa::Buffer::new().format(n).to_owned()
}

/// The canonical text of a value given in PostgreSQL's text format (a text-format parameter or
/// result column, or the content of a SQL literal).
pub fn canonical_text(type_oid: u32, text: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(text).ok()?;
    match type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::XID => {
            let t = s.trim_matches(is_pg_space);
            match t.parse::<i64>() {
                Ok(n) => Some(int_text(n)),
                // A whole number in another spelling (`1.0`, `1e0`): what a key bound as a
                // float or numeric compares as. Anything else names no integer row.
                Err(_) => whole_number(t).map(int_text),
            }
        }
        oid::UUID => canonical_uuid_text(s),
        oid::BOOL => match s.trim_matches(is_pg_space).to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => Some("t".into()),
            "f" | "false" | "no" | "off" | "0" => Some("f".into()),
            _ => None,
        },
        oid::BPCHAR => Some(s.trim_end_matches(' ').to_string()),
        oid::TIMESTAMP => Some(parse_timestamp(s, false).unwrap_or_else(|| s.to_string())),
        oid::TIMESTAMPTZ => Some(parse_timestamp(s, true).unwrap_or_else(|| s.to_string())),
        _ => Some(s.to_string()),
    }
}

/// The canonical text of a value given in PostgreSQL's binary format; `None` for malformed
/// input and for types whose binary form is not decoded here.
pub fn canonical_binary(type_oid: u32, bytes: &[u8]) -> Option<String> {
    match type_oid {
        oid::INT2 => Some(int_text(i16::from_be_bytes(bytes.try_into().ok()?))),
        oid::INT4 => Some(int_text(i32::from_be_bytes(bytes.try_into().ok()?))),
        oid::INT8 => Some(int_text(i64::from_be_bytes(bytes.try_into().ok()?))),
        oid::OID | oid::XID => Some(int_text(u32::from_be_bytes(bytes.try_into().ok()?))),
        oid::TEXT | oid::VARCHAR | oid::NAME | oid::UNKNOWN => {
            std::str::from_utf8(bytes).ok().map(str::to_string)
        }
        oid::BPCHAR => canonical_text(oid::BPCHAR, bytes),
        oid::UUID => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(format_uuid(&b))
        }
        oid::BOOL => match bytes {
            [0] => Some("f".into()),
            [1] => Some("t".into()),
            _ => None,
        },
        oid::DATE => {
            let days = i32::from_be_bytes(bytes.try_into().ok()?);
            Some(match days {
                i32::MAX => "infinity".into(),
                i32::MIN => "-infinity".into(),
                d => {
                    let (y, m, d) = civil_from_days(d as i64 + PG_EPOCH_DAYS);
                    let mut out = String::new();
                    push_date(&mut out, y, m, d);
                    push_era(&mut out, y);
                    out
                }
            })
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => {
            let usecs = i64::from_be_bytes(bytes.try_into().ok()?);
            Some(format_timestamp(usecs, type_oid == oid::TIMESTAMPTZ))
        }
        oid::NUMERIC => numeric_binary(bytes),
        oid::FLOAT4 => {
            let f = f32::from_be_bytes(bytes.try_into().ok()?);
            Some(float_text(f.is_nan(), f.is_infinite(), f > 0.0, || {
                f.to_string()
            }))
        }
        oid::FLOAT8 => {
            let f = f64::from_be_bytes(bytes.try_into().ok()?);
            Some(float_text(f.is_nan(), f.is_infinite(), f > 0.0, || {
                f.to_string()
            }))
        }
        _ => None,
    }
}

/// The integer a decimal or float spelling stands for, when it is a whole number within
/// `i64`.
fn whole_number(t: &str) -> Option<i64> {
    let f: f64 = t.parse().ok()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e18).then_some(f as i64)
}

/// A float as the shortest text that reads back to it (what PostgreSQL prints with its
/// default `extra_float_digits`), so a whole number reads as an integer key: `1` for `1.0`.
fn float_text(nan: bool, infinite: bool, positive: bool, shortest: impl Fn() -> String) -> String {
    match (nan, infinite, positive) {
        (true, _, _) => "NaN".into(),
        (_, true, true) => "Infinity".into(),
        (_, true, false) => "-Infinity".into(),
        _ => shortest(),
    }
}

/// Quotes a value as an `E'...'` literal: backslashes and single quotes doubled. The result
/// means the same whatever `standard_conforming_strings` is.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn format_uuid(b: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// PostgreSQL accepts braces, upper case, and hyphens after any group of four digits.
fn canonical_uuid_text(s: &str) -> Option<String> {
    let s = s.trim_matches(is_pg_space);
    let s = match s.strip_prefix('{') {
        Some(inner) => inner.strip_suffix('}')?,
        None => s,
    };
    let mut b = [0u8; 16];
    let mut n = 0;
    for c in s.chars() {
        if c == '-' {
            continue;
        }
        let v = c.to_digit(16)? as u8;
        if n >= 32 {
            return None;
        }
        b[n / 2] |= if n % 2 == 0 { v << 4 } else { v };
        n += 1;
    }
    (n == 32).then(|| format_uuid(&b))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical years: 0 is 1 BC).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let (m, d) = (m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push_date(out: &mut String, y: i64, m: u32, d: u32) {
    let shown = if y <= 0 { 1 - y } else { y };
    let _ = write!(out, "{shown:04}-{m:02}-{d:02}");
}

fn push_era(out: &mut String, y: i64) {
    if y <= 0 {
        out.push_str(" BC");
    }
}

/// Microseconds since 2000-01-01 00:00:00 as PostgreSQL prints them (ISO, UTC for `tz`).
fn format_timestamp(usecs: i64, tz: bool) -> String {
    match usecs {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let days = usecs.div_euclid(USECS_PER_DAY);
    let mut rem = usecs.rem_euclid(USECS_PER_DAY);
    let (y, m, d) = civil_from_days(days + PG_EPOCH_DAYS);
    let frac = rem % 1_000_000;
    rem /= 1_000_000;
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    let mut out = String::with_capacity(32);
    push_date(&mut out, y, m, d);
    let _ = write!(out, " {hh:02}:{mm:02}:{ss:02}");
    push_fraction(&mut out, frac);
    if tz {
        out.push_str("+00");
    }
    push_era(&mut out, y);
    out
}

fn push_fraction(out: &mut String, frac: i64) {
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// Parses PostgreSQL's ISO output (`YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]`) and
/// prints it canonically: fraction without trailing zeros, `timestamptz` moved to UTC.
pub(crate) fn parse_timestamp(s: &str, tz: bool) -> Option<String> {
    let s = s.trim_matches(is_pg_space);
    if matches!(s, "infinity" | "-infinity") {
        return Some(s.to_string());
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let b = s.as_bytes();
    let mut p = Cursor { b, i: 0 };
    let year = p.number(1, 9)?;
    p.expect(b'-')?;
    let month = p.number(2, 2)? as u32;
    p.expect(b'-')?;
    let day = p.number(2, 2)? as u32;
    if !(p.eat(b' ') || p.eat(b'T')) {
        return None;
    }
    let hh = p.number(2, 2)?;
    p.expect(b':')?;
    let mm = p.number(2, 2)?;
    p.expect(b':')?;
    let ss = p.number(2, 2)?;
    let mut frac = 0i64;
    if p.eat(b'.') {
        let start = p.i;
        let digits = p.number(1, 6)?;
        let len = p.i - start;
        frac = digits * 10i64.pow(6 - len as u32);
    }
    let mut offset = 0i64;
    if tz {
        let sign = if p.eat(b'+') {
            1
        } else if p.eat(b'-') {
            -1
        } else {
            return None;
        };
        let mut secs = p.number(2, 2)? * 3600;
        if p.eat(b':') {
            secs += p.number(2, 2)? * 60;
            if p.eat(b':') {
                secs += p.number(2, 2)?;
            }
        }
        offset = sign * secs;
    }
    if p.i != b.len()
        || year == 0
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(if bc { 1 - year } else { year }, month)
        || hh > 24
        || mm > 59
        || ss > 60
    {
        return None;
    }
    let year = if bc { 1 - year } else { year };
    let days = days_from_civil(year, month, day) - PG_EPOCH_DAYS;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    let usecs = secs.checked_mul(1_000_000)?.checked_add(frac)?;
    if usecs == i64::MAX || usecs == i64::MIN {
        return None;
    }
    Some(format_timestamp(usecs, tz))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let start = self.i;
        let mut n = 0i64;
        while self.i < self.b.len() && self.i - start < max && self.b[self.i].is_ascii_digit() {
            n = n * 10 + (self.b[self.i] - b'0') as i64;
            self.i += 1;
        }
        (self.i - start >= min).then_some(n)
    }
}

/// `numeric` in binary: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_binary(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes(bytes.get(i..i + 2)?.try_into().ok()?))
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i64;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    if bytes.len() != 8 + 2 * ndigits {
        return None;
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    if digits.iter().any(|&d| d >= 10_000) {
        return None;
    }
    let digit = |i: i64| -> u16 {
        if i >= 0 && (i as usize) < ndigits {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut out = String::new();
    match sign {
        0x0000 => {}
        0x4000 => out.push('-'),
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(out, "{}", digit(i));
            } else {
                let _ = write!(out, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Some(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn floats_in_binary_read_as_their_shortest_text() {
        let f8 = |f: f64| canonical_binary(oid::FLOAT8, &f.to_be_bytes());
        let f4 = |f: f32| canonical_binary(oid::FLOAT4, &f.to_be_bytes());
        assert_eq!(f8(1.0).as_deref(), Some("1"));
        assert_eq!(f8(-2.5).as_deref(), Some("-2.5"));
        assert_eq!(f4(0.1).as_deref(), Some("0.1"));
        assert_eq!(f8(f64::INFINITY).as_deref(), Some("Infinity"));
        assert_eq!(f4(f32::NAN).as_deref(), Some("NaN"));
        assert_eq!(canonical_binary(oid::FLOAT8, &[0; 3]), None);
        // As an integer key: 1.0 names row 1, 1.5 names none.
        assert_eq!(canonical_text(oid::INT4, b"1").as_deref(), Some("1"));
        assert_eq!(canonical_text(oid::INT4, b"1.5"), None);
        assert_eq!(canonical_text(oid::INT4, b" 1.0 ").as_deref(), Some("1"));
        assert_eq!(canonical_text(oid::INT8, b"2e0").as_deref(), Some("2"));
        assert_eq!(canonical_text(oid::INT4, b"x"), None);
    }
    use super::*;

    #[test]
    fn integers_agree_across_spellings() {
        assert_eq!(canonical_text(oid::INT4, b"042").as_deref(), Some("42"));
        assert_eq!(canonical_text(oid::INT8, b" -7 ").as_deref(), Some("-7"));
        assert_eq!(canonical_text(oid::INT4, b"4x"), None);
        assert_eq!(canonical_text(oid::INT4, b""), None);
        assert_eq!(
            canonical_binary(oid::INT8, &i64::MAX.to_be_bytes()).as_deref(),
            Some("9223372036854775807")
        );
        assert_eq!(
            canonical_binary(oid::XID, &u32::MAX.to_be_bytes()).as_deref(),
            Some("4294967295")
        );
        assert_eq!(canonical_binary(oid::INT4, &[0, 1]), None);
    }

    #[test]
    fn text_and_uuid() {
        assert_eq!(canonical_text(oid::TEXT, b"a'b").as_deref(), Some("a'b"));
        assert_eq!(canonical_text(oid::TEXT, b"\xff"), None);
        assert_eq!(
            canonical_text(oid::UUID, b"{A0EEBC99-9C0B4EF8-BB6D6BB9BD380A11}").as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(canonical_text(oid::UUID, b"a0ee"), None);
    }

    #[test]
    fn calendar_round_trips() {
        for days in -1_000_000..1_000_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(PG_EPOCH_DAYS), (2000, 1, 1));
    }

    #[test]
    fn timestamps_print_like_postgres() {
        assert_eq!(format_timestamp(0, false), "2000-01-01 00:00:00");
        assert_eq!(format_timestamp(-1, true), "1999-12-31 23:59:59.999999+00");
        assert_eq!(format_timestamp(500_000, false), "2000-01-01 00:00:00.5");
        assert_eq!(
            canonical_text(oid::TIMESTAMPTZ, b"2024-02-29 01:30:00.120+01:30").as_deref(),
            Some("2024-02-29 00:00:00.12+00")
        );
        assert_eq!(
            canonical_text(oid::TIMESTAMP, b"0001-01-01 00:00:00 BC").as_deref(),
            Some("0001-01-01 00:00:00 BC")
        );
        assert_eq!(
            canonical_text(oid::TIMESTAMP, b"not a time").as_deref(),
            Some("not a time")
        );
    }

    #[test]
    fn literal_quoting() {
        assert_eq!(quote_literal(r"a'b\c"), r"E'a''b\\c'");
    }
}
