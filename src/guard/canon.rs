//! Canonical values of result columns without allocating, for the per-row path: a key or
//! version the server printed in text is usually canonical already (an integer, a text), and
//! a binary integer is printed into a buffer on the stack. Anything else falls back to
//! [`crate::guard::datestyle::canonical_result`] and [`values::canonical_binary`], whose text
//! this always equals.

use super::datestyle::{self, DateStyle};
use super::values::{self, oid};

/// The canonical text of one value: borrowed from the row, printed on the stack, or owned.
#[derive(Debug)]
pub enum Canon<'a> {
    Borrowed(&'a str),
    Int { buf: [u8; 20], len: u8 },
    Owned(String),
}

impl AsRef<str> for Canon<'_> {
    fn as_ref(&self) -> &str {
        match self {
            Canon::Borrowed(s) => s,
            // Only ASCII digits and '-' are ever written into `buf`.
            Canon::Int { buf, len } => std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or(""),
            Canon::Owned(s) => s,
        }
    }
}

/// The canonical text of a result value in `format` (0 text, 1 binary), its text printed
/// under `style`.
pub fn canonical_result(
    type_oid: u32,
    format: i16,
    raw: &[u8],
    style: DateStyle,
) -> Option<Canon<'_>> {
    if let Some(c) = canonical_plain(type_oid, format, raw) {
        return Some(c);
    }
    if format == 1 {
        return values::canonical_binary(type_oid, raw).map(Canon::Owned);
    }
    datestyle::canonical_result(type_oid, raw, style).map(Canon::Owned)
}

/// The canonical text of a value in `format` when no allocation is needed: an integer or a
/// text already canonical, a binary integer. `None` when the value needs the allocating
/// functions (or is malformed): a bound parameter's text reads the same way, since
/// [`values::canonical_text`] leaves such a value as it is.
pub fn canonical_plain(type_oid: u32, format: i16, raw: &[u8]) -> Option<Canon<'_>> {
    let int = matches!(
        type_oid,
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::XID
    );
    if format == 1 {
        return if int { binary_int(type_oid, raw) } else { None };
    }
    let plain = match type_oid {
        _ if int => plain_integer(raw),
        oid::TEXT | oid::VARCHAR | oid::NAME | oid::UNKNOWN => true,
        _ => false,
    };
    if plain {
        return std::str::from_utf8(raw).ok().map(Canon::Borrowed);
    }
    None
}

/// An integer printed as [`values::canonical_text`] prints it: optional `-`, no leading zero,
/// no `-0`, few enough digits to be in range whatever the type.
fn plain_integer(raw: &[u8]) -> bool {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    let negative = digits.len() != raw.len();
    !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && !negative))
}

fn binary_int(type_oid: u32, raw: &[u8]) -> Option<Canon<'static>> {
    let mut b = itoa::Buffer::new();
    let s = match type_oid {
        oid::INT2 => b.format(i16::from_be_bytes(raw.try_into().ok()?)),
        oid::INT4 => b.format(i32::from_be_bytes(raw.try_into().ok()?)),
        oid::INT8 => b.format(i64::from_be_bytes(raw.try_into().ok()?)),
        _ => b.format(u32::from_be_bytes(raw.try_into().ok()?)),
    };
    let mut buf = [0u8; 20];
    buf[..s.len()].copy_from_slice(s.as_bytes());
    Some(Canon::Int {
        buf,
        len: s.len() as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value reads as the allocating functions read it.
    #[test]
    fn the_same_text_as_the_allocating_functions() {
        let style = DateStyle::default();
        let texts: [(u32, &[u8]); 16] = [
            (oid::INT4, b"42"),
            (oid::INT4, b"-7"),
            (oid::INT4, b"0"),
            (oid::INT4, b"-0"),
            (oid::INT4, b"007"),
            (oid::INT4, b" 5 "),
            (oid::INT8, b"-9223372036854775808"),
            (oid::INT8, b"922337203685477580"),
            (oid::XID, b"4294967295"),
            (oid::INT4, b"1.0"),
            (oid::TEXT, b"a b"),
            (oid::NAME, b""),
            (oid::BPCHAR, b"ab  "),
            (oid::TIMESTAMPTZ, b"2026-12-05 10:00:00.5+00"),
            (oid::BOOL, b"true"),
            (oid::INT2, b"+3"),
        ];
        for (t, raw) in texts {
            let want = datestyle::canonical_result(t, raw, style);
            let got = canonical_result(t, 0, raw, style);
            assert_eq!(
                got.as_ref().map(AsRef::as_ref),
                want.as_deref(),
                "{t} {raw:?}"
            );
            // A bound parameter's text: where no allocation is needed, the same text.
            if let Some(plain) = canonical_plain(t, 0, raw) {
                assert_eq!(
                    Some(plain.as_ref()),
                    values::canonical_text(t, raw).as_deref(),
                    "parameter {t} {raw:?}"
                );
            }
        }
        let binaries: [(u32, &[u8]); 6] = [
            (oid::INT2, &(-3i16).to_be_bytes()),
            (oid::INT4, &i32::MIN.to_be_bytes()),
            (oid::INT8, &i64::MIN.to_be_bytes()),
            (oid::XID, &u32::MAX.to_be_bytes()),
            (oid::INT4, &[1, 2]),
            (oid::TEXT, b"x"),
        ];
        for (t, raw) in binaries {
            let want = values::canonical_binary(t, raw);
            let got = canonical_result(t, 1, raw, style);
            assert_eq!(
                got.as_ref().map(AsRef::as_ref),
                want.as_deref(),
                "{t} {raw:?}"
            );
        }
    }
}
