//! The rows of a captured `COPY (SELECT ...) TO STDOUT`: the proxy's key and version columns
//! are the last fields of each row, in text (tab-separated, backslash escapes) or binary
//! format. `CopyOutResponse` loses their column formats, each `CopyData` row loses the fields
//! (read first, to track the versions), and the client gets the bytes it would get directly.
//!
//! Pure functions over message bodies: [`super::pinned`] calls them for the statement's
//! replies.

use bytes::{BufMut, BytesMut};

use super::rows::ReadPlan;
use crate::guard::CopyFormat;
use crate::guard::datestyle::DateStyle;
use crate::guard::track::Tracker;
use crate::protocol::backend as be;

/// The binary format's signature, the start of its header (then flags and an extension area).
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A `CopyOutResponse` body without its last `added` column formats, written for the client.
/// None (nothing written) when it has fewer columns.
pub fn strip_response(body: &[u8], added: usize, out: &mut BytesMut) -> Option<()> {
    let (&format, rest) = body.split_first()?;
    let n = usize::try_from(i16::from_be_bytes(rest.get(..2)?.try_into().ok()?)).ok()?;
    let keep = n.checked_sub(added)?;
    let formats = rest.get(2..2 + 2 * n)?;
    let len = 4 + 1 + 2 + 2 * keep;
    out.reserve(1 + len);
    out.put_u8(be::COPY_OUT_RESPONSE);
    out.put_u32(len as u32);
    out.put_u8(format);
    out.put_i16(keep as i16);
    out.extend_from_slice(&formats[..2 * keep]);
    Some(())
}

/// One `CopyData` body of a captured `COPY` in `format`: the client gets it without the last
/// `added` fields, which `plan` reads. False (nothing written) when it does not read as a row
/// with that many fields; the caller relays it as it is.
pub fn strip_data(
    body: &[u8],
    format: CopyFormat,
    added: usize,
    plan: Option<&ReadPlan>,
    tracker: &mut Tracker,
    style: DateStyle,
    out: &mut BytesMut,
) -> bool {
    let split = match format {
        CopyFormat::Text => split_text(body, added),
        CopyFormat::Binary => split_binary(body, added),
    };
    let Some(split) = split else {
        return false;
    };
    if let Some(plan) = plan {
        let vals: Vec<Option<&[u8]>> = split.fields.iter().map(|f| f.as_deref()).collect();
        plan.observe_values(&vals, tracker, style);
    }
    let count = split.count.as_ref().map_or(&[][..], |c| &c[..]);
    let len = split.head.len() + count.len() + split.rest.len();
    out.reserve(5 + len);
    out.put_u8(be::COPY_DATA);
    out.put_u32((4 + len) as u32);
    out.extend_from_slice(split.head);
    out.extend_from_slice(count);
    out.extend_from_slice(split.rest);
    true
}

/// A row taken apart: what the client gets (`head`, then the new field count of a binary
/// tuple, then `rest`), and the proxy's fields (decoded; `None` for NULL).
struct Split<'a> {
    head: &'a [u8],
    count: Option<[u8; 2]>,
    rest: &'a [u8],
    fields: Vec<Option<Vec<u8>>>,
}

/// A text row: fields separated by tabs, ending in a newline; the last `added` fields are the
/// proxy's.
fn split_text(body: &[u8], added: usize) -> Option<Split<'_>> {
    let line = body.strip_suffix(b"\n")?;
    let mut cut = line.len();
    for _ in 0..added {
        cut = memchr::memrchr(b'\t', &line[..cut])?;
    }
    let fields = line[cut + 1..]
        .split(|&b| b == b'\t')
        .map(unescape_text)
        .collect();
    // The row up to the tab before the proxy's fields, and its newline (the byte after it).
    Some(Split {
        head: &line[..cut],
        count: None,
        rest: &body[line.len()..],
        fields,
    })
}

/// A text field as COPY writes it: `\N` is NULL; backslash escapes (`\\`, `\t`, `\n`, `\r`,
/// `\b`, `\f`, `\v`, octal `\NNN`, hex `\xHH`) decoded.
fn unescape_text(field: &[u8]) -> Option<Vec<u8>> {
    if field == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' || i == field.len() {
            out.push(b);
            continue;
        }
        let c = field[i];
        i += 1;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let mut v = 0;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|&d| hex(d)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// A binary `CopyData`: the file header first in the first one, then one tuple (a field count
/// and each field's length and bytes), or the trailer (-1), which is relayed as it is.
fn split_binary(body: &[u8], added: usize) -> Option<Split<'_>> {
    let mut at = 0;
    if body.starts_with(SIGNATURE) {
        let ext = u32::from_be_bytes(body.get(15..19)?.try_into().ok()?) as usize;
        at = 19 + ext;
    }
    let header = body.get(..at)?;
    let n = i16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?);
    let n = usize::try_from(n).ok()?;
    let keep_n = n.checked_sub(added)?;
    let mut pos = at + 2;
    let mut kept_end = pos;
    let mut fields = Vec::with_capacity(added);
    for i in 0..n {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        let value = if len < 0 {
            None
        } else {
            let len = len as usize;
            let v = body.get(pos..pos + len)?;
            pos += len;
            Some(v.to_vec())
        };
        if i < keep_n {
            kept_end = pos;
        } else {
            fields.push(value);
        }
    }
    if pos != body.len() {
        return None;
    }
    Some(Split {
        head: header,
        count: Some((keep_n as i16).to_be_bytes()),
        rest: &body[at + 2..kept_end],
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::TableId;

    fn data(body: &[u8]) -> Vec<u8> {
        let mut m = vec![b'd'];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn strip(
        body: &[u8],
        format: CopyFormat,
        plan: Option<&ReadPlan>,
        t: &mut Tracker,
    ) -> Option<BytesMut> {
        let mut out = BytesMut::new();
        strip_data(body, format, 2, plan, t, DateStyle::default(), &mut out).then_some(out)
    }

    #[test]
    fn a_text_row_loses_its_last_fields_and_teaches_them() {
        let plan = ReadPlan::captured(&[(TableId(0), 1)], &[(23, 0), (20, 0)]).unwrap();
        let mut tracker = Tracker::new(10);
        let row = b"a\\\\b\\tc\t\\N\t7\t3\n";
        let out = strip(row, CopyFormat::Text, Some(&plan), &mut tracker).unwrap();
        assert_eq!(&out[..], &data(b"a\\\\b\\tc\t\\N\n")[..]);
        assert_eq!(tracker.expected(TableId(0), &["7"]), Some("3"));
        // A row with fewer fields than the proxy added: left alone.
        assert!(strip(b"x\n", CopyFormat::Text, None, &mut tracker).is_none());
    }

    #[test]
    fn text_escapes_decode_as_copy_writes_them() {
        assert_eq!(unescape_text(br"\N"), None);
        assert_eq!(unescape_text(br"a\\b"), Some(br"a\b".to_vec()));
        assert_eq!(unescape_text(br"\101\x41\t\n"), Some(b"AA\t\n".to_vec()));
        assert_eq!(unescape_text(b"plain"), Some(b"plain".to_vec()));
    }

    #[test]
    fn a_binary_tuple_loses_its_last_fields_header_and_trailer_kept() {
        let plan = ReadPlan::captured(&[(TableId(1), 1)], &[(23, 1), (20, 1)]).unwrap();
        let mut tracker = Tracker::new(10);
        let mut body = SIGNATURE.to_vec();
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes());
        let header_len = body.len();
        body.extend_from_slice(&3i16.to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"hi");
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&9i32.to_be_bytes());
        body.extend_from_slice(&8i32.to_be_bytes());
        body.extend_from_slice(&5i64.to_be_bytes());
        let out = strip(&body, CopyFormat::Binary, Some(&plan), &mut tracker).unwrap();
        let mut want = body[..header_len].to_vec();
        want.extend_from_slice(&1i16.to_be_bytes());
        want.extend_from_slice(&2i32.to_be_bytes());
        want.extend_from_slice(b"hi");
        assert_eq!(&out[..], &data(&want)[..]);
        assert_eq!(tracker.expected(TableId(1), &["9"]), Some("5"));
        // The trailer is no tuple: left alone.
        assert!(
            strip(
                &(-1i16).to_be_bytes(),
                CopyFormat::Binary,
                None,
                &mut tracker
            )
            .is_none()
        );
    }

    #[test]
    fn copy_out_response_loses_the_added_formats() {
        let mut body = vec![0u8];
        body.extend_from_slice(&3i16.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = BytesMut::new();
        assert!(strip_response(&body, 2, &mut out).is_some());
        assert_eq!(&out[..], &[b'H', 0, 0, 0, 9, 0, 0, 1, 0, 0][..]);
        assert!(strip_response(&body, 4, &mut BytesMut::new()).is_none());
    }
}
