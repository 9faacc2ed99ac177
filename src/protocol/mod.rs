//! PostgreSQL wire protocol: framing and the few message fields the proxy reads or writes.
//!
//! Every message after startup is `tag (1 byte) + length (4 bytes, counts itself) + body`.
//! The relay keeps each message's raw bytes and forwards them untouched; only the message
//! kinds the proxy must understand are decoded, by the plain zero-copy functions in
//! [`frontend`] (client to server) and [`backend`] (server to client).

pub mod backend;
pub mod frontend;
pub mod startup;

use std::fmt;

/// The transaction status a `ReadyForQuery` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (statements are refused until it ends).
    Failed,
}

impl TxStatus {
    /// The status of a `ReadyForQuery` body (an unknown byte reads as idle, as an empty one).
    #[inline]
    pub fn from_ready(body: &[u8]) -> TxStatus {
        match body.first() {
            Some(b'T') => TxStatus::InTransaction,
            Some(b'E') => TxStatus::Failed,
            _ => TxStatus::Idle,
        }
    }

    /// The status byte on the wire.
    #[inline]
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// One whole message after startup, as received: `tag + length + body`. The engine passes
/// messages around as frames, so no code indexes raw bytes to find a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The message at the start of `bytes` (a whole message, as framed by [`peek_header`]).
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Frame<'a> {
        debug_assert!(bytes.len() >= 5, "a message has a tag and a length");
        Frame { bytes }
    }

    /// The message's type byte (read against [`frontend`] or [`backend`] by direction).
    #[inline]
    pub fn tag(self) -> u8 {
        self.bytes[0]
    }

    /// The message without its tag and length.
    #[inline]
    pub fn body(self) -> &'a [u8] {
        self.bytes.get(5..).unwrap_or_default()
    }

    /// The whole message, tag and length included: what is forwarded.
    #[inline]
    pub fn bytes(self) -> &'a [u8] {
        self.bytes
    }
}

/// A complete message at the front of a buffer: its tag and total size (tag + length + body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Bytes of the whole message, tag included.
    pub size: usize,
}

impl Header {
    /// The body of this message within `buf` (which starts with the message).
    #[inline]
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[5..self.size]
    }
}

/// A message the proxy refuses to frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below 4.
    BadLength { tag: u8, length: i32 },
    /// The length field exceeds the configured maximum.
    TooLarge { tag: u8, length: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength { tag, length } => write!(
                f,
                "invalid message: type {} with length {length}",
                tag_name(*tag)
            ),
            FrameError::TooLarge { tag, length, max } => write!(
                f,
                "message too large: type {} of {length} bytes exceeds max_message_size ({max} bytes)",
                tag_name(*tag)
            ),
        }
    }
}

fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// Reads the header of the message at the front of `buf`.
///
/// `Ok(None)` when fewer than 5 bytes are buffered. The message itself may still be incomplete:
/// compare `size` with `buf.len()`.
#[inline]
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let length = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if length < 4 {
        return Err(FrameError::BadLength { tag, length });
    }
    let length = length as usize;
    if length > max {
        return Err(FrameError::TooLarge { tag, length, max });
    }
    Ok(Some(Header {
        tag,
        size: length + 1,
    }))
}

/// Reads a NUL-terminated string at the front of `buf`: the bytes and the rest after the NUL.
#[inline]
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, buf)?;
    Some((&buf[..end], &buf[end + 1..]))
}

#[inline]
pub(crate) fn be_i16(buf: &[u8]) -> Option<(i16, &[u8])> {
    if buf.len() < 2 {
        return None;
    }
    Some((i16::from_be_bytes([buf[0], buf[1]]), &buf[2..]))
}

/// A count of the protocol's (parameters, formats, types): an unsigned 16-bit number, as
/// PostgreSQL reads it (65535 parameters are allowed).
#[inline]
pub(crate) fn be_u16(buf: &[u8]) -> Option<(u16, &[u8])> {
    be_i16(buf).map(|(n, rest)| (n as u16, rest))
}

#[inline]
pub(crate) fn be_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    if buf.len() < 4 {
        return None;
    }
    Some((
        i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
        &buf[4..],
    ))
}

/// Starts a message in `out`: writes the tag and a placeholder length; returns the position to
/// pass to [`finish_message`].
#[inline]
pub fn begin_message(out: &mut bytes::BytesMut, tag: u8) -> usize {
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    out.len() - 4
}

/// Fills in the length of a message begun with [`begin_message`].
#[inline]
pub fn finish_message(out: &mut bytes::BytesMut, at: usize) {
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_status_from_ready_for_query() {
        assert_eq!(TxStatus::from_ready(b"I"), TxStatus::Idle);
        assert_eq!(TxStatus::from_ready(b"T"), TxStatus::InTransaction);
        assert_eq!(TxStatus::from_ready(b"E"), TxStatus::Failed);
        // PostgreSQL sends nothing else; anything else reads as idle, like an empty body.
        assert_eq!(TxStatus::from_ready(b"?"), TxStatus::Idle);
        assert_eq!(TxStatus::from_ready(b""), TxStatus::Idle);
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            assert_eq!(TxStatus::from_ready(&[s.byte()]), s);
        }
    }

    #[test]
    fn header_reads_tag_and_size() {
        let msg = [b'Q', 0, 0, 0, 8, b'a', b'b', b'c', 0];
        let h = peek_header(&msg, 100).unwrap().unwrap();
        assert_eq!(h, Header { tag: b'Q', size: 9 });
        assert_eq!(h.body(&msg), b"abc\0");
        assert_eq!(peek_header(&msg[..4], 100), Ok(None));
    }

    #[test]
    fn header_rejects_bad_and_huge_lengths() {
        assert!(matches!(
            peek_header(&[b'Q', 0, 0, 0, 3], 100),
            Err(FrameError::BadLength { length: 3, .. })
        ));
        assert!(matches!(
            peek_header(&[b'Q', 0xff, 0xff, 0xff, 0xff], 100),
            Err(FrameError::BadLength { .. })
        ));
        let e = peek_header(&[b'Q', 0, 0, 1, 0], 100).unwrap_err();
        assert!(e.to_string().contains("max_message_size"), "{e}");
    }

    #[test]
    fn message_builder_sets_length() {
        let mut out = bytes::BytesMut::new();
        let at = begin_message(&mut out, b'S');
        finish_message(&mut out, at);
        assert_eq!(&out[..], &[b'S', 0, 0, 0, 4]);
    }
}
