//! Backend (server to client) messages: zero-copy readers for the bodies the proxy inspects,
//! and writers for the messages it builds itself (errors, row descriptions it trims).

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::ErrorResponse;
use smallvec::SmallVec;

use super::{TxStatus, be_i16, be_i32, be_u16, begin_message, cstr, finish_message};

pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const BIND_COMPLETE: u8 = b'2';
pub const CLOSE_COMPLETE: u8 = b'3';
pub const COMMAND_COMPLETE: u8 = b'C';
pub const COPY_IN_RESPONSE: u8 = b'G';
pub const COPY_OUT_RESPONSE: u8 = b'H';
pub const COPY_BOTH_RESPONSE: u8 = b'W';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const DATA_ROW: u8 = b'D';
pub const EMPTY_QUERY: u8 = b'I';
pub const ERROR_RESPONSE: u8 = b'E';
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
pub const NO_DATA: u8 = b'n';
pub const NOTICE_RESPONSE: u8 = b'N';
pub const NOTIFICATION: u8 = b'A';
pub const PARAMETER_DESCRIPTION: u8 = b't';
pub const PARAMETER_STATUS: u8 = b'S';
pub const PARSE_COMPLETE: u8 = b'1';
pub const PORTAL_SUSPENDED: u8 = b's';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ROW_DESCRIPTION: u8 = b'T';

/// The command tag of a `CommandComplete` body, e.g. `UPDATE 1`.
#[inline]
pub fn command_tag(body: &[u8]) -> &[u8] {
    cstr(body).map(|(t, _)| t).unwrap_or(body)
}

/// Rows counted by a command tag (`UPDATE 3` → 3, `INSERT 0 1` → 1); `None` for tags without.
pub fn tag_rows(tag: &[u8]) -> Option<u64> {
    let last = tag.rsplit(|&b| b == b' ').next()?;
    if last.is_empty() || !last.iter().all(u8::is_ascii_digit) || last.len() == tag.len() {
        return None;
    }
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// Name and value of a `ParameterStatus` body.
#[inline]
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

/// One field of an `ErrorResponse`/`NoticeResponse` body.
pub fn error_field(body: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&c, after)) = rest.split_first() {
        if c == 0 {
            return None;
        }
        let (value, after) = cstr(after)?;
        if c == code {
            return Some(value);
        }
        rest = after;
    }
    None
}

/// One column of a `RowDescription`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a [u8],
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub format: i16,
}

/// Columns or values of one message; rows of up to this many need no allocation.
const INLINE: usize = 8;

/// The columns of a `RowDescription`.
pub type Columns<'a> = SmallVec<[Column<'a>; INLINE]>;

/// The values of a `DataRow` (`None` is NULL).
pub type Values<'a> = SmallVec<[Option<&'a [u8]>; INLINE]>;

/// Reads the columns of a `RowDescription` body.
pub fn row_description(body: &[u8]) -> Option<Columns<'_>> {
    let (n, mut rest) = be_i16(body)?;
    let mut cols = Columns::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let (name, r) = cstr(rest)?;
        if r.len() < 18 {
            return None;
        }
        let table_oid = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        let attnum = i16::from_be_bytes([r[4], r[5]]);
        let type_oid = u32::from_be_bytes([r[6], r[7], r[8], r[9]]);
        let format = i16::from_be_bytes([r[16], r[17]]);
        cols.push(Column {
            name,
            table_oid,
            attnum,
            type_oid,
            format,
        });
        rest = &r[18..];
    }
    Some(cols)
}

/// Calls `f` with the table OID of each column of a `RowDescription` body; stops early when
/// `f` returns true, and then returns true.
pub fn any_column_table(body: &[u8], mut f: impl FnMut(u32) -> bool) -> bool {
    let Some((n, mut rest)) = be_i16(body) else {
        return false;
    };
    for _ in 0..n {
        let Some((_, r)) = cstr(rest) else {
            return false;
        };
        if r.len() < 18 {
            return false;
        }
        if f(u32::from_be_bytes([r[0], r[1], r[2], r[3]])) {
            return true;
        }
        rest = &r[18..];
    }
    false
}

/// Reads the values of a `DataRow` body (`None` is NULL).
pub fn data_row(body: &[u8]) -> Option<Values<'_>> {
    let (n, mut rest) = be_i16(body)?;
    let mut vals = Values::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let (len, r) = be_i32(rest)?;
        if len < 0 {
            vals.push(None);
            rest = r;
        } else {
            let len = len as usize;
            if r.len() < len {
                return None;
            }
            vals.push(Some(&r[..len]));
            rest = &r[len..];
        }
    }
    Some(vals)
}

/// The field (or value) count in the header of a `RowDescription` or `DataRow` body, without
/// reading the fields (0 for a body too short or a negative count).
pub fn field_count(body: &[u8]) -> usize {
    be_i16(body).map_or(0, |(n, _)| usize::try_from(n).unwrap_or(0))
}

/// Writes a `RowDescription` or `DataRow` message keeping only the first `keep` columns of
/// `body` (used to hide the proxy's own `RETURNING` columns). Returns where the kept fields
/// end in `body` (for [`write_head`]); None, having written nothing, when `body` does not read
/// as one.
pub fn write_truncated(out: &mut BytesMut, tag: u8, body: &[u8], keep: usize) -> Option<usize> {
    let (_, mut rest) = be_i16(body)?;
    let start = rest.as_ptr() as usize - body.as_ptr() as usize;
    for _ in 0..keep {
        rest = match tag {
            ROW_DESCRIPTION => {
                let (_, r) = cstr(rest)?;
                r.get(18..)?
            }
            _ => {
                let (len, r) = be_i32(rest)?;
                r.get(len.max(0) as usize..)?
            }
        };
    }
    let end = rest.as_ptr() as usize - body.as_ptr() as usize;
    let at = begin_message(out, tag);
    out.extend_from_slice(&(keep as i16).to_be_bytes());
    out.extend_from_slice(&body[start..end]);
    finish_message(out, at);
    Some(end)
}

/// Splits a `DataRow` body after its first `keep` values: where those end in `body`, and the
/// values after them (`None` is NULL). Nothing is allocated for a tail of up to eight values.
pub fn split_row(body: &[u8], keep: usize) -> Option<(usize, Values<'_>)> {
    let (n, mut rest) = be_i16(body)?;
    let n = usize::try_from(n).ok()?;
    let mut tail = Values::new();
    let mut end = 0;
    for i in 0..n {
        if i == keep {
            end = body.len() - rest.len();
        }
        let (len, r) = be_i32(rest)?;
        if len < 0 {
            rest = r;
            if i >= keep {
                tail.push(None);
            }
        } else {
            let value = r.get(..len as usize)?;
            rest = &r[len as usize..];
            if i >= keep {
                tail.push(Some(value));
            }
        }
    }
    if keep >= n {
        end = body.len() - rest.len();
    }
    Some((end, tail))
}

/// Writes a `RowDescription` or `DataRow` of `keep` columns whose fields are `body[2..end]`
/// (the first `keep` of `body`'s, `end` as [`split_row`] finds it).
pub fn write_head(out: &mut BytesMut, tag: u8, body: &[u8], keep: usize, end: usize) {
    let at = begin_message(out, tag);
    out.extend_from_slice(&(keep as i16).to_be_bytes());
    out.extend_from_slice(&body[2..end]);
    finish_message(out, at);
}

/// Writes a `ParameterDescription` keeping only the first `keep` parameter types.
pub fn write_parameter_description(out: &mut BytesMut, body: &[u8], keep: usize) -> Option<()> {
    let (n, rest) = be_u16(body)?;
    let keep = keep.min(usize::from(n));
    let at = begin_message(out, PARAMETER_DESCRIPTION);
    out.extend_from_slice(&(keep as i16).to_be_bytes());
    out.extend_from_slice(rest.get(..keep * 4)?);
    finish_message(out, at);
    Some(())
}

/// Parameter type OIDs of a `ParameterDescription` body.
pub fn parameter_types(body: &[u8]) -> Option<Vec<u32>> {
    let (n, mut rest) = be_u16(body)?;
    let mut types = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let (t, r) = be_i32(rest)?;
        types.push(t as u32);
        rest = r;
    }
    Some(types)
}

pub fn write_simple(out: &mut BytesMut, tag: u8) {
    out.extend_from_slice(&[tag, 0, 0, 0, 4]);
}

pub fn write_ready(out: &mut BytesMut, status: TxStatus) {
    out.extend_from_slice(&[READY_FOR_QUERY, 0, 0, 0, 5, status.byte()]);
}

/// Writes an `ErrorResponse` built by the proxy.
pub fn write_error(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    write_error_fields(
        out,
        vec![
            (b'S', severity.to_string()),
            (b'V', severity.to_string()),
            (b'C', code.to_string()),
            (b'M', message.to_string()),
        ],
    );
}

/// Writes an `ErrorResponse` from (field code, value) pairs.
pub fn write_error_fields(out: &mut BytesMut, fields: Vec<(u8, String)>) {
    // Encoding into a BytesMut cannot fail.
    let _ = ErrorResponse::new(fields).encode(out);
}

/// Writes an `ErrorResponse`/`NoticeResponse` body without the fields whose codes are listed.
pub fn write_without_fields(out: &mut BytesMut, tag: u8, body: &[u8], drop: &[u8]) {
    let at = begin_message(out, tag);
    let mut rest = body;
    while let Some((&c, after)) = rest.split_first() {
        if c == 0 {
            break;
        }
        let Some((value, after)) = cstr(after) else {
            break;
        };
        if !drop.contains(&c) {
            out.extend_from_slice(&[c]);
            out.extend_from_slice(value);
            out.extend_from_slice(&[0]);
        }
        rest = after;
    }
    out.extend_from_slice(&[0]);
    finish_message(out, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_count_rows() {
        assert_eq!(tag_rows(b"UPDATE 3"), Some(3));
        assert_eq!(tag_rows(b"INSERT 0 1"), Some(1));
        assert_eq!(tag_rows(b"DELETE 0"), Some(0));
        assert_eq!(tag_rows(b"BEGIN"), None);
        assert_eq!(tag_rows(b"42"), None);
    }

    #[test]
    fn error_fields_are_found_and_dropped() {
        let mut out = BytesMut::new();
        write_error_fields(
            &mut out,
            vec![
                (b'S', "ERROR".into()),
                (b'C', "40001".into()),
                (b'W', "PL/pgSQL".into()),
            ],
        );
        let body = &out[5..];
        assert_eq!(error_field(body, b'C'), Some(&b"40001"[..]));
        assert_eq!(error_field(body, b'W'), Some(&b"PL/pgSQL"[..]));
        let mut clean = BytesMut::new();
        write_without_fields(&mut clean, ERROR_RESPONSE, body, b"W");
        assert_eq!(error_field(&clean[5..], b'W'), None);
        assert_eq!(error_field(&clean[5..], b'C'), Some(&b"40001"[..]));
        assert_eq!(
            i32::from_be_bytes([clean[1], clean[2], clean[3], clean[4]]) as usize + 1,
            clean.len()
        );
    }

    #[test]
    fn rows_are_truncated() {
        let mut row = BytesMut::new();
        let at = begin_message(&mut row, DATA_ROW);
        row.extend_from_slice(&3i16.to_be_bytes());
        for v in [&b"a"[..], b"bc", b"def"] {
            row.extend_from_slice(&(v.len() as i32).to_be_bytes());
            row.extend_from_slice(v);
        }
        finish_message(&mut row, at);
        let mut out = BytesMut::new();
        write_truncated(&mut out, DATA_ROW, &row[5..], 2).unwrap();
        assert_eq!(
            data_row(&out[5..]).unwrap().as_slice(),
            [Some(&b"a"[..]), Some(&b"bc"[..])]
        );
        let (end, tail) = split_row(&row[5..], 1).unwrap();
        assert_eq!(tail.as_slice(), [Some(&b"bc"[..]), Some(&b"def"[..])]);
        let mut head = BytesMut::new();
        write_head(&mut head, DATA_ROW, &row[5..], 1, end);
        assert_eq!(data_row(&head[5..]).unwrap().as_slice(), [Some(&b"a"[..])]);
        let (end, tail) = split_row(&row[5..], 3).unwrap();
        assert_eq!((end, tail.len()), (row.len() - 5, 0));
        assert!(split_row(&row[5..8], 1).is_none(), "a cut row");
    }
}
