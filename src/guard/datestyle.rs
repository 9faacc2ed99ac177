//! Dates and timestamps as the session's settings print them, made canonical.
//!
//! PostgreSQL prints `date`, `timestamp` and `timestamptz` result values in the session's
//! `DateStyle` (`ISO`, `SQL`, `Postgres`, `German`, with a `DMY`/`MDY` field order) and, for
//! `timestamptz`, in its `TimeZone`. A version read under one setting and written under another
//! is the same version: [`canonical_result`] reads any of those forms into the one canonical
//! text of [`super::values`] (ISO, `timestamptz` in UTC), given the [`DateStyle`] the session
//! had when the server printed it (the server reports both settings in `ParameterStatus`).
//!
//! Outside ISO a `timestamptz` carries a zone abbreviation (`CET`, `IST`) rather than an
//! offset, and an abbreviation does not name one offset (PostgreSQL itself reads `IST` back as
//! Israel time); unless the offset is printed, or the session's zone is UTC, such a value is
//! "nothing known" (`None`), never a wrong version.

use super::values::{self, oid};

/// How the server prints dates in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateStyle {
    pub output: Output,
    /// The `DMY` field order (`SQL` and `Postgres` print the day first).
    pub dmy: bool,
    /// The session's `TimeZone` is UTC (a `UTC` or `GMT` abbreviation means offset zero).
    pub utc: bool,
}

/// The output format of `DateStyle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Iso,
    Sql,
    Postgres,
    German,
}

impl Default for DateStyle {
    fn default() -> Self {
        DateStyle {
            output: Output::Iso,
            dmy: false,
            utc: true,
        }
    }
}

impl DateStyle {
    /// Applies a `DateStyle` value as the server reports it (`ISO, MDY`, `German, DMY`).
    pub fn set_date_style(&mut self, value: &str) {
        for part in value.split(',').map(|p| p.trim().to_ascii_lowercase()) {
            match part.as_str() {
                "iso" => self.output = Output::Iso,
                "sql" => self.output = Output::Sql,
                "postgres" => self.output = Output::Postgres,
                "german" => self.output = Output::German,
                "dmy" | "euro" | "european" => self.dmy = true,
                "mdy" | "us" | "noneuropean" | "ymd" => self.dmy = false,
                _ => {}
            }
        }
    }

    /// Applies a `TimeZone` value as the server reports it.
    pub fn set_time_zone(&mut self, value: &str) {
        let v = value.to_ascii_lowercase();
        let v = v.strip_prefix("etc/").unwrap_or(&v);
        self.utc = matches!(
            v,
            "utc" | "uct" | "gmt" | "gmt0" | "gmt+0" | "gmt-0" | "universal" | "zulu" | "greenwich"
        );
    }
}

/// The canonical text of a text-format result value of type `type_oid`, printed under
/// `style`; `None` when it cannot be read as one value.
pub fn canonical_result(type_oid: u32, text: &[u8], style: DateStyle) -> Option<String> {
    let dated = matches!(type_oid, oid::DATE | oid::TIMESTAMP | oid::TIMESTAMPTZ);
    if !dated || style.output == Output::Iso {
        return values::canonical_text(type_oid, text);
    }
    let s = std::str::from_utf8(text).ok()?.trim();
    if matches!(s, "infinity" | "-infinity") {
        return Some(s.to_string());
    }
    let iso = to_iso(s, type_oid, style)?;
    match type_oid {
        oid::DATE => Some(iso),
        _ => values::parse_timestamp(&iso, type_oid == oid::TIMESTAMPTZ),
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Rewrites a value printed in the `SQL`, `Postgres` or `German` style as ISO text.
fn to_iso(s: &str, type_oid: u32, style: DateStyle) -> Option<String> {
    let mut toks: Vec<&str> = s.split_ascii_whitespace().collect();
    let bc = toks.last() == Some(&"BC");
    if bc {
        toks.pop();
    }
    let num = |t: &str| t.parse::<u32>().ok();
    let ((y, m, d), rest): ((u32, u32, u32), &[&str]) =
        if toks.first()?.starts_with(|c: char| c.is_ascii_alphabetic()) {
            // Postgres: `Thu Feb 29 01:30:00 2024 [zone]` or `Thu 29 Feb 01:30:00 2024 [zone]`.
            let (a, b) = (*toks.get(1)?, *toks.get(2)?);
            let (mon, day) = if num(a).is_some() { (b, a) } else { (a, b) };
            let m = MONTHS.iter().position(|x| mon.eq_ignore_ascii_case(x))? as u32 + 1;
            let year = num(toks.get(4)?)?;
            let time = *toks.get(3)?;
            let zone = toks.get(5).copied();
            return assemble((year, m, num(day)?), Some(time), zone, bc, type_oid, style);
        } else {
            let date = toks[0];
            let sep = date.chars().find(|c| matches!(c, '/' | '.' | '-'))?;
            let parts: Vec<u32> = date.split(sep).map(num).collect::<Option<_>>()?;
            let [a, b, year] = parts[..] else {
                return None;
            };
            let day_first = sep == '.' || style.dmy;
            let (m, d) = if day_first { (b, a) } else { (a, b) };
            ((year, m, d), &toks[1..])
        };
    assemble(
        (y, m, d),
        rest.first().copied(),
        rest.get(1).copied(),
        bc,
        type_oid,
        style,
    )
}

/// ISO text from the parts: `YYYY-MM-DD[ time][offset][ BC]`.
fn assemble(
    (y, m, d): (u32, u32, u32),
    time: Option<&str>,
    zone: Option<&str>,
    bc: bool,
    type_oid: u32,
    style: DateStyle,
) -> Option<String> {
    let mut out = format!("{y:04}-{m:02}-{d:02}");
    if type_oid != oid::DATE {
        out.push(' ');
        out.push_str(time?);
        if type_oid == oid::TIMESTAMPTZ {
            out.push_str(&offset(zone?, style)?);
        }
    }
    if bc {
        out.push_str(" BC");
    }
    Some(out)
}

/// The offset a zone token names: a printed offset (`+03`, `-03:30`, `+0530`), or zero for
/// `UTC`/`GMT` in a session whose zone is UTC. An abbreviation names no offset by itself.
fn offset(zone: &str, style: DateStyle) -> Option<String> {
    if let Some(digits) = zone.strip_prefix(['+', '-']) {
        let sign = &zone[..1];
        let d: String = digits.chars().filter(|c| *c != ':').collect();
        if !d.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return match d.len() {
            2 => Some(format!("{sign}{d}")),
            4 => Some(format!("{sign}{}:{}", &d[..2], &d[2..])),
            6 => Some(format!("{sign}{}:{}:{}", &d[..2], &d[2..4], &d[4..])),
            _ => None,
        };
    }
    (style.utc && matches!(zone, "UTC" | "GMT" | "UCT" | "Z")).then(|| "+00".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn style(date_style: &str, zone: &str) -> DateStyle {
        let mut s = DateStyle::default();
        s.set_date_style(date_style);
        s.set_time_zone(zone);
        s
    }

    #[test]
    fn every_style_reads_back_the_same_timestamp() {
        let want = Some("2024-02-03 01:30:00.12".to_string());
        for (ds, text) in [
            ("ISO, MDY", "2024-02-03 01:30:00.12"),
            ("SQL, MDY", "02/03/2024 01:30:00.12"),
            ("SQL, DMY", "03/02/2024 01:30:00.12"),
            ("German, DMY", "03.02.2024 01:30:00.12"),
            ("Postgres, MDY", "Sat Feb 03 01:30:00.12 2024"),
            ("Postgres, DMY", "Sat 03 Feb 01:30:00.12 2024"),
        ] {
            let s = style(ds, "Europe/Berlin");
            assert_eq!(
                canonical_result(oid::TIMESTAMP, text.as_bytes(), s),
                want,
                "{ds}"
            );
        }
        let bc = style("German", "UTC");
        assert_eq!(
            canonical_result(oid::TIMESTAMP, b"01.01.0001 00:00:00 BC", bc).as_deref(),
            Some("0001-01-01 00:00:00 BC")
        );
        assert_eq!(
            canonical_result(oid::DATE, b"29.02.2024", bc).as_deref(),
            Some("2024-02-29")
        );
    }

    #[test]
    fn timestamptz_needs_a_known_offset() {
        let want = Some("2024-02-29 00:30:00+00".to_string());
        let utc = style("German, DMY", "Etc/UTC");
        assert_eq!(
            canonical_result(oid::TIMESTAMPTZ, b"29.02.2024 00:30:00 UTC", utc),
            want
        );
        let kolkata = style("SQL, DMY", "Asia/Kolkata");
        assert_eq!(
            canonical_result(oid::TIMESTAMPTZ, b"29/02/2024 06:00:00 +0530", kolkata),
            want
        );
        assert_eq!(
            canonical_result(oid::TIMESTAMPTZ, b"29/02/2024 06:00:00 IST", kolkata),
            None,
            "an abbreviation names no offset"
        );
        // `UTC+3` (POSIX: three hours west) prints `UTC`: not offset zero.
        let posix = style("SQL, DMY", "UTC+3");
        assert_eq!(
            canonical_result(oid::TIMESTAMPTZ, b"28/02/2024 21:30:00 UTC", posix),
            None
        );
        let iso = style("ISO, DMY", "Asia/Kolkata");
        assert_eq!(
            canonical_result(oid::TIMESTAMPTZ, b"2024-02-29 06:00:00+05:30", iso),
            want
        );
    }

    #[test]
    fn other_types_are_untouched() {
        let s = style("German", "UTC");
        assert_eq!(
            canonical_result(oid::INT4, b"042", s).as_deref(),
            Some("42")
        );
        assert_eq!(canonical_result(oid::TIMESTAMP, b"garbage", s), None);
    }
}
