//! Frontend (client to server) messages: zero-copy readers for the bodies the proxy inspects,
//! and writers for the messages it builds or rewrites.
//!
//! Readers take the message body (after tag and length) and borrow from it; names and SQL stay
//! raw bytes, since the client's encoding need not be UTF-8.

use bytes::BytesMut;
use smallvec::SmallVec;

use super::{be_i16, be_i32, be_u16, begin_message, cstr, finish_message};

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const FUNCTION_CALL: u8 = b'F';
pub const TERMINATE: u8 = b'X';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const PASSWORD: u8 = b'p';

/// True for the messages a client sends during COPY IN (`CopyData`, `CopyDone`, `CopyFail`).
#[inline]
/// The longest body-and-length PostgreSQL reads for a message of type `tag` after the login
/// (`PQ_LARGE_MESSAGE_LIMIT` for the ones that carry statements or data, 10000 bytes for the
/// rest), or `None` for a type it does not take at all (it ends the session at the type
/// byte). Beyond the limit it closes the connection without a word.
pub fn length_limit(tag: u8) -> Option<usize> {
    const LARGE: usize = 0x3fff_ffff - 1;
    const SMALL: usize = 10_000;
    match tag {
        QUERY | FUNCTION_CALL | BIND | PARSE | COPY_DATA => Some(LARGE),
        TERMINATE | CLOSE | DESCRIBE | EXECUTE | FLUSH | SYNC | COPY_DONE | COPY_FAIL => {
            Some(SMALL)
        }
        // Authentication answers (SASL), read by the login with a limit of its own.
        PASSWORD => Some(65_535),
        _ => None,
    }
}

pub fn is_copy_message(tag: u8) -> bool {
    matches!(tag, COPY_DATA | COPY_DONE | COPY_FAIL)
}

/// The SQL text of a `Query` body.
#[inline]
///
/// `None` unless the body is exactly one NUL-terminated string: PostgreSQL refuses anything
/// else ("invalid message format") before running it, so such a frame goes to it unread.
pub fn query_text(body: &[u8]) -> Option<&[u8]> {
    match cstr(body) {
        Some((q, [])) => Some(q),
        _ => None,
    }
}

/// A `Parse` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// Declared parameter type OIDs (0 = let the server infer).
    pub param_types: Vec<u32>,
}

/// A `Parse` body; `None` when it is not exactly one (bytes missing or left over: PostgreSQL
/// refuses it before preparing anything).
pub fn parse(body: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = cstr(body)?;
    let (query, rest) = cstr(rest)?;
    let (n, mut rest) = be_u16(rest)?;
    let mut param_types = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let (t, r) = be_i32(rest)?;
        param_types.push(t as u32);
        rest = r;
    }
    if !rest.is_empty() {
        return None;
    }
    Some(Parse {
        name,
        query,
        param_types,
    })
}

/// The statement name of a `Parse` body, without reading the rest.
#[inline]
pub fn parse_name(body: &[u8]) -> Option<&[u8]> {
    cstr(body).map(|(n, _)| n)
}

/// Writes a `Parse` message.
pub fn write_parse(out: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u32]) {
    let at = begin_message(out, PARSE);
    out.extend_from_slice(name);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(query);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(param_types.len() as i16).to_be_bytes());
    for t in param_types {
        out.extend_from_slice(&t.to_be_bytes());
    }
    finish_message(out, at);
}

/// A `Bind` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Parameter format codes as sent: none (all text), one (for all) or one per parameter
    /// (held inline up to eight: decoding a usual `Bind` allocates nothing).
    pub param_formats: SmallVec<[i16; 8]>,
    /// Parameter values; `None` is SQL NULL.
    pub params: SmallVec<[Option<&'a [u8]>; 8]>,
    /// The rest of the body: result format codes, kept raw.
    pub result_formats: &'a [u8],
}

impl<'a> Bind<'a> {
    /// The same `Bind` naming `statement` instead (a name that may live shorter than the
    /// message: the parameters are copied, inline up to eight).
    pub fn renamed<'s>(&self, statement: &'s [u8]) -> Bind<'s>
    where
        'a: 's,
    {
        Bind {
            portal: self.portal,
            statement,
            param_formats: self.param_formats.clone(),
            params: self
                .params
                .iter()
                .map(|p| p.map(|v| v as &'s [u8]))
                .collect(),
            result_formats: self.result_formats,
        }
    }

    /// Format code of parameter `i` (0-based): 0 text, 1 binary.
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => self.param_formats.get(i).copied().unwrap_or(0),
        }
    }
}

pub fn bind(body: &[u8]) -> Option<Bind<'_>> {
    let (portal, rest) = cstr(body)?;
    let (statement, rest) = cstr(rest)?;
    let (nf, mut rest) = be_u16(rest)?;
    let mut param_formats = SmallVec::with_capacity(usize::from(nf));
    for _ in 0..nf {
        let (f, r) = be_i16(rest)?;
        param_formats.push(f);
        rest = r;
    }
    let (np, mut rest) = be_u16(rest)?;
    let mut params = SmallVec::with_capacity(usize::from(np));
    for _ in 0..np {
        let (len, r) = be_i32(rest)?;
        if len < 0 {
            params.push(None);
            rest = r;
        } else {
            let len = len as usize;
            if r.len() < len {
                return None;
            }
            params.push(Some(&r[..len]));
            rest = &r[len..];
        }
    }
    Some(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats: rest,
    })
}

/// Statement name of a `Bind` body and its portal, without reading the rest.
#[inline]
pub fn bind_names(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (portal, rest) = cstr(body)?;
    let (statement, _) = cstr(rest)?;
    Some((portal, statement))
}

/// Writes `bind` changed for a rewritten statement: with the text parameters of `extra`
/// appended (`None` binds NULL), and `extra_columns` more text result
/// columns when the client gave one format code per column. Parameter format codes become
/// per-parameter when the client sent a single code for all.
pub fn write_bind_rewritten(
    out: &mut BytesMut,
    bind: &Bind<'_>,
    extra: &[Option<&[u8]>],
    extra_columns: usize,
) {
    let at = begin_message(out, BIND);
    out.extend_from_slice(bind.portal);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(bind.statement);
    out.extend_from_slice(&[0]);
    let n = bind.params.len();
    let added = extra.len();
    match bind.param_formats.len() {
        0 => out.extend_from_slice(&0i16.to_be_bytes()),
        1 if added == 0 => out.extend_from_slice(&[0, 1, 0, bind.param_formats[0] as u8]),
        _ => {
            out.extend_from_slice(&((n + added) as i16).to_be_bytes());
            for i in 0..n {
                out.extend_from_slice(&bind.param_format(i).to_be_bytes());
            }
            for _ in 0..added {
                out.extend_from_slice(&0i16.to_be_bytes());
            }
        }
    }
    out.extend_from_slice(&((n + added) as i16).to_be_bytes());
    for p in bind.params.iter().chain(extra).copied() {
        match p {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    let codes = bind.result_formats;
    let count = i16::from_be_bytes([
        codes.first().copied().unwrap_or(0),
        codes.get(1).copied().unwrap_or(0),
    ]);
    if count > 1 && extra_columns > 0 {
        out.extend_from_slice(&(count + extra_columns as i16).to_be_bytes());
        out.extend_from_slice(&codes[2..]);
        for _ in 0..extra_columns {
            out.extend_from_slice(&0i16.to_be_bytes());
        }
    } else {
        out.extend_from_slice(codes);
    }
    finish_message(out, at);
}

/// Writes a `Bind` of `statement` into `portal` with no parameters and text results.
pub fn write_bind_plain(out: &mut BytesMut, portal: &[u8], statement: &[u8]) {
    let at = begin_message(out, BIND);
    out.extend_from_slice(portal);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(statement);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    finish_message(out, at);
}

/// Runs `sql` as a statement and portal both named `name` (the proxy's own): `Close` of any
/// left from before, `Parse`, `Bind` (no parameters, text results), `Execute` of every row.
/// Five replies come back: two `CloseComplete`, `ParseComplete`, `BindComplete`, then the
/// `Execute`'s.
pub fn write_run(out: &mut BytesMut, name: &[u8], sql: &[u8]) {
    write_close(out, b'S', name);
    write_close(out, b'P', name);
    write_parse(out, name, sql, &[]);
    write_bind_plain(out, name, name);
    write_execute(out, name, 0);
}

/// `Describe` or `Close` body: the kind (`S` statement or `P` portal) and the name.
#[inline]
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr(rest)?;
    Some((kind, name))
}

/// Portal name and row limit of an `Execute` body.
#[inline]
pub fn execute(body: &[u8]) -> Option<(&[u8], i32)> {
    let (portal, rest) = cstr(body)?;
    let (limit, _) = be_i32(rest)?;
    Some((portal, limit))
}

pub fn write_execute(out: &mut BytesMut, portal: &[u8], limit: i32) {
    let at = begin_message(out, EXECUTE);
    out.extend_from_slice(portal);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&limit.to_be_bytes());
    finish_message(out, at);
}

pub fn write_close(out: &mut BytesMut, kind: u8, name: &[u8]) {
    write_target(out, CLOSE, kind, name);
}

pub fn write_describe(out: &mut BytesMut, kind: u8, name: &[u8]) {
    write_target(out, DESCRIBE, kind, name);
}

/// A `Close` or `Describe` of a statement (`S`) or portal (`P`).
fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let at = begin_message(out, tag);
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(name);
    out.extend_from_slice(&[0]);
    finish_message(out, at);
}

pub fn write_query(out: &mut BytesMut, sql: &[u8]) {
    let at = begin_message(out, QUERY);
    out.extend_from_slice(sql);
    out.extend_from_slice(&[0]);
    finish_message(out, at);
}

pub fn write_simple(out: &mut BytesMut, tag: u8) {
    out.extend_from_slice(&[tag, 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(msg: &[u8]) -> &[u8] {
        &msg[5..]
    }

    #[test]
    fn parse_round_trips() {
        let mut out = BytesMut::new();
        write_parse(&mut out, b"s1", b"SELECT $1", &[23]);
        let p = parse(body(&out)).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"SELECT $1");
        assert_eq!(p.param_types, vec![23]);
        assert_eq!(parse_name(body(&out)), Some(&b"s1"[..]));
    }

    #[test]
    fn bind_with_extra_expands_single_format_code() {
        // portal "", statement "s", one format code (binary), two params, one result code.
        let mut msg = BytesMut::new();
        let at = begin_message(&mut msg, BIND);
        msg.extend_from_slice(b"\0s\0");
        msg.extend_from_slice(&1i16.to_be_bytes());
        msg.extend_from_slice(&1i16.to_be_bytes());
        msg.extend_from_slice(&2i16.to_be_bytes());
        msg.extend_from_slice(&4i32.to_be_bytes());
        msg.extend_from_slice(&42i32.to_be_bytes());
        msg.extend_from_slice(&(-1i32).to_be_bytes());
        msg.extend_from_slice(&1i16.to_be_bytes());
        msg.extend_from_slice(&1i16.to_be_bytes());
        finish_message(&mut msg, at);

        let b = bind(body(&msg)).unwrap();
        assert_eq!(b.statement, b"s");
        assert_eq!(b.params[..], [Some(&42i32.to_be_bytes()[..]), None]);
        assert_eq!(b.param_format(1), 1);

        let mut out = BytesMut::new();
        write_bind_rewritten(&mut out, &b, &[Some(b"7")], 2);
        let b2 = bind(body(&out)).unwrap();
        assert_eq!(b2.param_formats[..], [1, 1, 0]);
        assert_eq!(b2.params.len(), 3);
        assert_eq!(b2.params[2], Some(&b"7"[..]));
        // A single result format code applies to the proxy's columns too.
        assert_eq!(b2.result_formats, b.result_formats);
    }

    #[test]
    fn truncated_bind_is_rejected() {
        assert!(bind(b"\0s\0\0\0\0\x01\0\0\0\x09ab").is_none());
    }
}
