//! The raw wire-protocol client of the tests: frontend messages built by hand, a connection
//! that sends them and reads the backend's replies message by message ([`Msg`], whole bytes,
//! for byte-exact comparisons), and the same replies reduced to what the guard tests compare
//! ([`Reply`], read up to `ReadyForQuery`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one read may wait before the test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// One backend message: its tag and its whole bytes (tag and length included).
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub bytes: Vec<u8>,
}

impl Msg {
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// A field of an ErrorResponse/NoticeResponse (`b'C'` code, `b'S'` severity, `b'M'` message).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = self.body();
        while let Some((&c, after)) = rest.split_first() {
            if c == 0 {
                return None;
            }
            let end = after.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&after[..end]).into_owned());
            }
            rest = &after[end + 1..];
        }
        None
    }
}

/// Zeroes the contents of every `BackendKeyData` (process id and secret differ per session).
pub fn mask_keys(msgs: &mut [Msg]) {
    for m in msgs {
        if m.tag == b'K' {
            m.bytes[5..].fill(0);
        }
    }
}

/// One backend message, reduced to what the guard tests compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    NoData,
    /// `RowDescription` with the number of columns.
    RowDescription(usize),
    /// A `DataRow`'s values as text (binary values read as lossy UTF-8).
    DataRow(Vec<Option<String>>),
    CommandComplete(String),
    /// SQLSTATE and message.
    Error(String, String),
    /// `ReadyForQuery` with the transaction status.
    Ready(char),
    /// `ParameterDescription` with the number of parameters.
    Params(usize),
    Other(char),
}

/// `CommandComplete` with `tag`.
pub fn cc(tag: &str) -> Reply {
    Reply::CommandComplete(tag.to_string())
}

impl Msg {
    /// The message as a [`Reply`]; None for what [`Raw::until_ready`] leaves out (notices,
    /// parameter statuses, key data, authentication).
    pub fn reply(&self) -> Option<Reply> {
        let body = self.body();
        let count = || i16::from_be_bytes([body[0], body[1]]) as usize;
        Some(match self.tag {
            b'1' => Reply::ParseComplete,
            b'2' => Reply::BindComplete,
            b'n' => Reply::NoData,
            b'T' => Reply::RowDescription(count()),
            b'D' => {
                let mut vals = Vec::new();
                let mut i = 2;
                for _ in 0..count() {
                    let len = i32::from_be_bytes(body[i..i + 4].try_into().unwrap());
                    i += 4;
                    if len < 0 {
                        vals.push(None);
                    } else {
                        let l = len as usize;
                        vals.push(Some(String::from_utf8_lossy(&body[i..i + l]).into_owned()));
                        i += l;
                    }
                }
                Reply::DataRow(vals)
            }
            b'C' => Reply::CommandComplete(
                String::from_utf8_lossy(&body[..body.len() - 1]).into_owned(),
            ),
            b'E' => Reply::Error(
                self.field(b'C').unwrap_or_default(),
                self.field(b'M').unwrap_or_default(),
            ),
            b'Z' => Reply::Ready(body[0] as char),
            b't' => Reply::Params(count()),
            b'N' | b'S' | b'K' | b'R' => return None,
            t => Reply::Other(t as char),
        })
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.body();
        let shown = &body[..body.len().min(120)];
        write!(
            f,
            "{}[{}] {:?}",
            self.tag as char,
            body.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// `StartupMessage` of protocol 3.0.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    startup_version(196608, params)
}

/// `StartupMessage` of another protocol version (`major << 16 | minor`).
pub fn startup_version(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k.as_bytes());
        cstr(&mut body, v.as_bytes());
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// `CancelRequest` for the session whose `BackendKeyData` body (process id and secret) is `key`.
pub fn cancel_request(key: &[u8]) -> Vec<u8> {
    let mut out = ((key.len() + 8) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&80877102i32.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// `SSLRequest`.
pub fn ssl_request() -> Vec<u8> {
    vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
}

/// `PasswordMessage` with a cleartext password.
pub fn password(password: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, password.as_bytes());
    message(b'p', &b)
}

/// `Query` of SQL text (or bytes in the client's encoding).
pub fn query(sql: impl AsRef<[u8]>) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql.as_ref());
    message(b'Q', &b)
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    parse_raw(name, sql.as_bytes(), types)
}

/// `Parse` of SQL bytes in the client's encoding.
pub fn parse_raw(name: &str, sql: &[u8], types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name.as_bytes());
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    message(b'P', &b)
}

/// `Bind` with text parameters (None = NULL) and the given result format codes.
pub fn bind(portal: &str, stmt: &str, params: &[Option<&[u8]>], result_formats: &[i16]) -> Vec<u8> {
    bind_formats(portal, stmt, &[], params, result_formats)
}

pub fn bind_formats(
    portal: &str,
    stmt: &str,
    param_formats: &[i16],
    params: &[Option<&[u8]>],
    result_formats: &[i16],
) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal.as_bytes());
    cstr(&mut b, stmt.as_bytes());
    b.extend_from_slice(&(param_formats.len() as i16).to_be_bytes());
    for f in param_formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b.extend_from_slice(&(result_formats.len() as i16).to_be_bytes());
    for f in result_formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    message(b'B', &b)
}

/// `Bind` with text parameters (none NULL) and text results.
pub fn bind_text(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let params: Vec<Option<&[u8]>> = params.iter().map(|p| Some(p.as_bytes())).collect();
    bind(portal, stmt, &params, &[])
}

/// `Describe` of a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name.as_bytes());
    message(b'D', &b)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal.as_bytes());
    b.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &b)
}

/// `Close` of a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name.as_bytes());
    message(b'C', &b)
}

/// Parse, Bind and Execute of one unnamed statement without parameters (no `Sync`).
pub fn pbe(sql: &str) -> Vec<u8> {
    [parse("", sql, &[]), bind("", "", &[], &[]), execute("", 0)].concat()
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    message(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    message(b'd', data)
}

pub fn copy_done() -> Vec<u8> {
    message(b'c', &[])
}

pub fn copy_fail(reason: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, reason.as_bytes());
    message(b'f', &b)
}

/// `FunctionCall` of the function with OID `oid`, binary arguments and a binary result.
pub fn function_call(oid: u32, args: &[&[u8]]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&(a.len() as i32).to_be_bytes());
        b.extend_from_slice(a);
    }
    b.extend_from_slice(&1i16.to_be_bytes());
    message(b'F', &b)
}

/// A byte stream a raw connection runs over: plain TCP or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// A raw protocol connection.
pub struct Raw {
    pub stream: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: &str) -> Raw {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Raw::over(stream)
    }

    /// A raw connection over an established stream (e.g. TLS).
    pub fn over(stream: impl Io + 'static) -> Raw {
        Raw {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    /// Connects, sends a startup for `user`/`db` and reads until the first ReadyForQuery;
    /// returns the connection and the replies.
    pub async fn login(addr: &str, user: &str, db: &str) -> (Raw, Vec<Msg>) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&startup(&[("user", user), ("database", db)]))
            .await;
        let msgs = raw.read_until(b'Z', 1).await;
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            panic!("login failed: {e:?}");
        }
        (raw, msgs)
    }

    /// A session of user `postgres` on database `db` at `addr`, logged in.
    pub async fn open(addr: &str, db: &str) -> Raw {
        Raw::login(addr, "postgres", db).await.0
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next message, or None at EOF (or a reset connection).
    pub async fn read_msg(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let bytes: Vec<u8> = self.buf.drain(..len + 1).collect();
                    return Some(Msg {
                        tag: bytes[0],
                        bytes,
                    });
                }
            }
            let mut chunk = vec![0u8; 256 * 1024];
            let n = match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk)).await {
                Err(_) => panic!(
                    "no reply within {READ_TIMEOUT:?}; {} bytes buffered",
                    self.buf.len()
                ),
                Ok(Err(_)) => 0,
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "EOF inside a message: {} bytes left",
                    self.buf.len()
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until `n` messages tagged `tag` arrived; panics on EOF before that.
    pub async fn read_until(&mut self, tag: u8, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            match self.read_msg().await {
                Some(m) => {
                    if m.tag == tag {
                        seen += 1;
                    }
                    out.push(m);
                }
                None => panic!(
                    "EOF after {seen} of {n} '{}' messages; read: {out:?}",
                    tag as char
                ),
            }
        }
        out
    }

    /// Every reply up to and including the next `ReadyForQuery`, as [`Reply`] (notices,
    /// parameter statuses, key data and authentication left out); panics on EOF before it.
    pub async fn until_ready(&mut self) -> Vec<Reply> {
        let mut out = Vec::new();
        loop {
            let m = self
                .read_msg()
                .await
                .unwrap_or_else(|| panic!("the connection closed before ReadyForQuery: {out:?}"));
            if let Some(r) = m.reply() {
                let done = matches!(r, Reply::Ready(_));
                out.push(r);
                if done {
                    return out;
                }
            }
        }
    }

    /// Reads every message until EOF.
    pub async fn read_to_end(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.read_msg().await {
            out.push(m);
        }
        out
    }
}
