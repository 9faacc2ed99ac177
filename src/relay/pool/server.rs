//! One pooled server connection: its login with the credentials the proxy holds (none, a
//! password, an md5 hash, or a verified client's SCRAM key), the login replies it replays to
//! each client, its reset between clients, the check that it is still alive, and `auth_query`
//! run on it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::protocol;
use crate::relay::auth::scram::PassThrough;
use crate::relay::auth::secret::{self, Secret};
use crate::relay::auth::{self};
use crate::relay::upstream::Upstream;

/// A logged-in server connection.
pub struct ServerConn {
    pub upstream: Upstream,
    pub info: ConnInfo,
}

/// What the proxy knows of a logged-in server connection.
pub struct ConnInfo {
    /// The server's `ParameterStatus` messages (the latest of each name), then its
    /// `BackendKeyData`, as raw messages.
    params: Vec<(String, Vec<u8>)>,
    key_data: Vec<u8>,
    pub pid: i32,
    /// The thread whose runtime's reactor the socket is registered with: a client served on
    /// that thread is woken without crossing threads.
    pub home: std::thread::ThreadId,
    pub created: Instant,
    pub idle_since: Instant,
}

impl ConnInfo {
    /// The server's secret cancel key.
    pub fn cancel_key(&self) -> &[u8] {
        self.key_data.get(9..).unwrap_or_default()
    }

    /// What a client logging in on this connection gets: `AuthenticationOk`, the server's
    /// parameters, its key for cancel requests, and `ReadyForQuery`.
    /// The client's cancel key is `client_key` (as long as the server's), not the server's.
    pub fn login_replies(&self, client_key: &[u8]) -> BytesMut {
        let mut out = BytesMut::with_capacity(512);
        auth::auth_ok(&mut out);
        for (_, m) in &self.params {
            out.extend_from_slice(m);
        }
        if self.key_data.len() > 9 {
            out.put_u8(b'K');
            out.put_i32(8 + client_key.len() as i32);
            out.put_i32(self.pid);
            out.put_slice(client_key);
        }
        out.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        out
    }
}

/// What the proxy logs in to the server with.
#[derive(Clone, Debug, Default)]
pub struct Creds {
    pub secret: Option<Secret>,
    /// A verified client's SCRAM `ClientKey` (used with a SCRAM secret).
    pub client_key: Option<[u8; 32]>,
}

/// Why a server login failed.
pub enum LoginError {
    /// The server refused: its `ErrorResponse`, to relay to the client as it is.
    Server(Vec<u8>),
    /// The proxy could not answer the server, or the connection failed.
    Proxy(String),
}

impl ServerConn {
    /// The connection, moved to the calling thread's reactor when it was registered with
    /// another thread's (see [`Upstream::rehome`]).
    pub fn here(mut self) -> io::Result<ServerConn> {
        let here = std::thread::current().id();
        if self.info.home != here && !matches!(self.upstream, Upstream::Tls(_)) {
            self.upstream = self.upstream.rehome()?;
            self.info.home = here;
        }
        Ok(self)
    }

    /// Logs in over `upstream` with `startup` (a startup packet) as `user`.
    pub async fn login(
        mut upstream: Upstream,
        startup: &[u8],
        user: &str,
        creds: &Creds,
    ) -> Result<ServerConn, LoginError> {
        let io = |e: std::io::Error| LoginError::Proxy(format!("server connection failed: {e}"));
        upstream.write_all(startup).await.map_err(io)?;
        let mut params: Vec<(String, Vec<u8>)> = Vec::new();
        let mut key_data = Vec::new();
        let mut pid = 0;
        let mut sasl: Option<Sasl> = None;
        let mut buf = reply_buffer();
        loop {
            let (tag, msg) = read_message(&mut upstream, &mut buf).await.map_err(io)?;
            let body = &msg[5..];
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap_or_default());
                    let answer = answer(code, &body[4..], user, creds, &mut sasl)
                        .map_err(LoginError::Proxy)?;
                    if let Some(a) = answer {
                        upstream.write_all(&a).await.map_err(io)?;
                    }
                }
                b'E' => return Err(LoginError::Server(msg)),
                b'S' => set_param(&mut params, msg),
                b'K' => {
                    pid = body
                        .get(..4)
                        .map_or(0, |b| i32::from_be_bytes(b.try_into().unwrap_or_default()));
                    key_data = msg;
                }
                b'Z' => {
                    nothing_behind(&buf).map_err(io)?;
                    break;
                }
                // Notices and the like are not replayed.
                _ => {}
            }
        }
        let now = Instant::now();
        Ok(ServerConn {
            upstream,
            info: ConnInfo {
                params,
                key_data,
                pid,
                home: std::thread::current().id(),
                created: now,
                idle_since: now,
            },
        })
    }

    /// Runs the reset query (nothing when it is empty); fails unless the server ends it idle
    /// and without error.
    pub async fn reset(&mut self, query: &str) -> Result<(), String> {
        if query.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::new();
        out.put_u8(b'Q');
        out.put_i32(4 + query.len() as i32 + 1);
        out.put_slice(query.as_bytes());
        out.put_u8(0);
        let io = |e: std::io::Error| e.to_string();
        self.upstream.write_all(&out).await.map_err(io)?;
        let mut failed = None;
        let mut buf = reply_buffer();
        loop {
            let (tag, msg) = read_message(&mut self.upstream, &mut buf)
                .await
                .map_err(io)?;
            match tag {
                b'E' => failed = Some(error_text(&msg)),
                b'S' => set_param(&mut self.info.params, msg),
                b'Z' => {
                    nothing_behind(&buf).map_err(io)?;
                    return match (failed, msg.get(5)) {
                        (Some(e), _) => Err(format!("server_reset_query failed: {e}")),
                        (None, Some(b'I')) => Ok(()),
                        _ => Err("server_reset_query left a transaction open".into()),
                    };
                }
                _ => {}
            }
        }
    }

    /// False when the server closed the connection (or sent anything) while it was idle: a
    /// terminated backend sends its FATAL and closes.
    pub fn alive(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.upstream).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Says goodbye to the server.
    pub async fn close(mut self) {
        let _ = self.upstream.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = self.upstream.shutdown().await;
    }

    /// Runs `query` with one text parameter and returns the text of the first row's second
    /// column (`auth_query`'s password), `None` without a row or for NULL.
    pub async fn query_secret(
        &mut self,
        query: &str,
        param: &str,
    ) -> Result<Option<String>, String> {
        let mut out = BytesMut::new();
        let mut parse = BytesMut::new();
        parse.put_u8(0);
        parse.put_slice(query.as_bytes());
        parse.put_u8(0);
        parse.put_i16(0);
        message(&mut out, b'P', &parse);
        let mut bind = BytesMut::new();
        bind.put_slice(&[0, 0]);
        bind.put_i16(0);
        bind.put_i16(1);
        bind.put_i32(param.len() as i32);
        bind.put_slice(param.as_bytes());
        bind.put_i16(0);
        message(&mut out, b'B', &bind);
        message(&mut out, b'E', &[0, 0, 0, 0, 0]);
        message(&mut out, b'S', &[]);
        let io = |e: std::io::Error| e.to_string();
        self.upstream.write_all(&out).await.map_err(io)?;
        let mut failed = None;
        let mut found = None;
        let mut buf = reply_buffer();
        loop {
            let (tag, msg) = read_message(&mut self.upstream, &mut buf)
                .await
                .map_err(io)?;
            match tag {
                b'E' => failed = Some(error_text(&msg)),
                b'D' if found.is_none() => found = Some(second_column(&msg[5..])),
                b'Z' => {
                    nothing_behind(&buf).map_err(io)?;
                    return match failed {
                        Some(e) => Err(format!("auth_query failed: {e}")),
                        None => Ok(found.flatten()),
                    };
                }
                _ => {}
            }
        }
    }
}

/// One in-progress SASL exchange with the server.
enum Sasl {
    Password(ScramSha256),
    PassThrough(PassThrough),
}

/// The proxy's answer to an authentication request of the server (`None`: nothing to send).
fn answer(
    code: i32,
    data: &[u8],
    user: &str,
    creds: &Creds,
    sasl: &mut Option<Sasl>,
) -> Result<Option<BytesMut>, String> {
    let no_password = |how: &str| {
        format!(
            "the server asks for user \"{user}\"'s password ({how}) and the proxy holds none that \
             fits: list the user's password in auth_file"
        )
    };
    let mut out = BytesMut::new();
    match code {
        0 => return Ok(None),
        3 => match &creds.secret {
            Some(Secret::Plain(p)) => password_message(&mut out, p.as_bytes(), true),
            _ => return Err(no_password("cleartext")),
        },
        5 => {
            let salt: [u8; 4] = data
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or_default();
            let hex = creds
                .secret
                .as_ref()
                .and_then(|s| s.md5_hex(user))
                .ok_or_else(|| no_password("md5"))?;
            password_message(&mut out, secret::md5_answer(&hex, salt).as_bytes(), true);
        }
        10 => {
            let (mechanism, first) = match (&creds.secret, creds.client_key) {
                (Some(Secret::Plain(p)), _) => {
                    let s = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                    let first = s.message().to_vec();
                    *sasl = Some(Sasl::Password(s));
                    ("SCRAM-SHA-256", first)
                }
                (Some(Secret::Scram(secret)), Some(key)) => {
                    let (p, first) = PassThrough::start(key, secret.clone());
                    *sasl = Some(Sasl::PassThrough(p));
                    ("SCRAM-SHA-256", first.into_bytes())
                }
                _ => return Err(no_password("SCRAM-SHA-256")),
            };
            let mut body = BytesMut::new();
            body.put_slice(mechanism.as_bytes());
            body.put_u8(0);
            body.put_i32(first.len() as i32);
            body.put_slice(&first);
            message(&mut out, b'p', &body);
        }
        11 => {
            let last = match sasl {
                Some(Sasl::Password(s)) => s
                    .update(data)
                    .map(|()| s.message().to_vec())
                    .map_err(|e| format!("SCRAM with the server: {e}"))?,
                Some(Sasl::PassThrough(p)) => p.answer(data)?.into_bytes(),
                None => return Err("the server continued a SCRAM exchange never begun".into()),
            };
            password_message(&mut out, &last, false);
        }
        12 => {
            match sasl {
                Some(Sasl::Password(s)) => s
                    .finish(data)
                    .map_err(|e| format!("SCRAM with the server: {e}"))?,
                Some(Sasl::PassThrough(p)) => p.verify(data)?,
                None => return Err("the server ended a SCRAM exchange never begun".into()),
            }
            return Ok(None);
        }
        other => {
            return Err(format!(
                "the server asks for an authentication method the proxy cannot answer ({other})"
            ));
        }
    }
    Ok(Some(out))
}

fn password_message(out: &mut BytesMut, data: &[u8], nul: bool) {
    let mut body = BytesMut::from(data);
    if nul {
        body.put_u8(0);
    }
    message(out, b'p', &body);
}

fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
}

/// Keeps the latest `ParameterStatus` of each name.
fn set_param(params: &mut Vec<(String, Vec<u8>)>, msg: Vec<u8>) {
    let name = msg[5..]
        .split(|&b| b == 0)
        .next()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    match params.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = msg,
        None => params.push((name, msg)),
    }
}

/// The largest reply message a login, reset or `auth_query` exchange accepts.
const MAX_REPLY: usize = 64 * 1024 * 1024;

/// One whole server message (its type byte and length included), read through `buf`: a read
/// takes what the socket holds (a reply's messages usually arrive together), not one header
/// and one body at a time. Framed as the relay frames ([`protocol::peek_header`]).
async fn read_message(s: &mut Upstream, buf: &mut BytesMut) -> std::io::Result<(u8, Vec<u8>)> {
    loop {
        let header = protocol::peek_header(buf, MAX_REPLY)
            .map_err(|e| std::io::Error::other(format!("malformed server message: {e}")))?;
        if let Some(h) = header {
            if buf.len() >= h.size {
                let msg = buf.split_to(h.size).to_vec();
                return Ok((h.tag, msg));
            }
            buf.reserve(h.size - buf.len());
        }
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The buffer an exchange with the server is read through.
fn reply_buffer() -> BytesMut {
    BytesMut::with_capacity(1024)
}

/// Fails when the server sent more behind the `ReadyForQuery` that ended an exchange: the
/// connection would be out of step with the next client.
fn nothing_behind(buf: &BytesMut) -> std::io::Result<()> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} unexpected bytes behind ReadyForQuery",
            buf.len()
        )))
    }
}

/// The `M` field of an `ErrorResponse`.
pub fn error_text(msg: &[u8]) -> String {
    crate::protocol::backend::error_field(&msg[5..], b'M')
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The second column of a `DataRow` body, as text (`None` for NULL).
fn second_column(body: &[u8]) -> Option<String> {
    let mut at = 2;
    let mut value = None;
    for _ in 0..2 {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        value = if len < 0 {
            None
        } else {
            let v = body.get(at..at + len as usize)?;
            at += len as usize;
            Some(String::from_utf8_lossy(v).into_owned())
        };
    }
    value
}

/// A startup packet for `user` and `database` (the proxy's own `auth_user` connections).
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    for (k, v) in [("user", user), ("database", database)] {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}
