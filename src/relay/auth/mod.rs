//! Logins the proxy checks itself, in pooled mode (`pool_mode = "session"`): a pooled server
//! connection is handed only to a client whose password the proxy verified, against the
//! secret found in `auth_file` or read with `auth_query` (the caller looks it up).
//!
//! - this file: the exchange with the client (`auth_type` scram-sha-256, md5 or trust), and
//!   PostgreSQL's own refusal (`28P01 password authentication failed for user "…"`).
//! - [`scram`]: SCRAM-SHA-256, both as the server (checking clients) and as a client that
//!   passes a verified client's key on to the server.
//! - [`secret`]: the secrets' forms, the hashes, and the `auth_file`.

pub mod scram;
pub mod secret;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::AuthType;
use crate::protocol::backend;
use scram::{ScramError, Verifier};
use secret::{ScramSecret, Secret};

/// A login the proxy accepted.
#[derive(Debug, Default)]
pub struct Verified {
    /// The `ClientKey` a SCRAM login revealed: the proxy logs in to the server with it when
    /// its secret is a SCRAM secret.
    pub client_key: Option<[u8; 32]>,
}

/// Why a login failed; the client was told (unless it left).
#[derive(Debug)]
pub enum Refused {
    /// A wrong password, or a user without a secret.
    Password,
    /// A message that is not the answer asked for.
    Protocol(String),
    /// The client left during the login.
    Gone,
}

const AUTH_OK: i32 = 0;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Checks the client's password as `auth_type` says. `secret` is the user's (`None`: unknown
/// user, which fails as a wrong password does, after the same exchange). Sends nothing after
/// the exchange's last message: `AuthenticationOk` comes with the rest of the login.
pub async fn login<S>(
    stream: &mut S,
    auth_type: AuthType,
    user: &str,
    secret: Option<Secret>,
) -> Result<Verified, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = match auth_type {
        AuthType::Trust => return Ok(Verified::default()),
        // PostgreSQL checks a SCRAM secret with SCRAM even where md5 is asked for.
        AuthType::Md5 if !matches!(secret, Some(Secret::Scram(_))) => {
            md5(stream, user, secret).await
        }
        _ => {
            let scram = secret.as_ref().and_then(Secret::scram);
            scram_login(stream, scram).await
        }
    };
    match &result {
        Err(Refused::Password) => {
            let message = format!("password authentication failed for user \"{user}\"");
            fatal(stream, "28P01", &message).await;
        }
        Err(Refused::Protocol(message)) => fatal(stream, "08P01", message).await,
        _ => {}
    }
    result
}

async fn md5<S>(stream: &mut S, user: &str, secret: Option<Secret>) -> Result<Verified, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let salt = secret::random::<4>();
    let mut out = BytesMut::new();
    auth_request(&mut out, AUTH_MD5, &salt);
    send(stream, &out).await?;
    let answer = read_password(stream).await?;
    let answer = answer.strip_suffix(&[0]).unwrap_or(&answer);
    let expected = secret
        .and_then(|s| s.md5_hex(user))
        .map(|hex| secret::md5_answer(&hex, salt));
    match expected {
        Some(e) if e.as_bytes() == answer => Ok(Verified::default()),
        _ => Err(Refused::Password),
    }
}

async fn scram_login<S>(stream: &mut S, secret: Option<ScramSecret>) -> Result<Verified, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let known = secret.is_some();
    let secret = secret.unwrap_or_else(ScramSecret::mock);
    let mut out = BytesMut::new();
    auth_request(&mut out, AUTH_SASL, b"SCRAM-SHA-256\0\0");
    send(stream, &out).await?;
    let initial = read_password(stream).await?;
    let first = sasl_initial(&initial)?;
    let (verifier, server_first) = Verifier::start(secret, first).map_err(refusal)?;
    out.clear();
    auth_request(&mut out, AUTH_SASL_CONTINUE, server_first.as_bytes());
    send(stream, &out).await?;
    let last = read_password(stream).await?;
    let (server_final, client_key) = verifier.finish(&last).map_err(refusal)?;
    if !known {
        return Err(Refused::Password);
    }
    out.clear();
    auth_request(&mut out, AUTH_SASL_FINAL, server_final.as_bytes());
    send(stream, &out).await?;
    Ok(Verified {
        client_key: Some(client_key),
    })
}

fn refusal(e: ScramError) -> Refused {
    match e {
        ScramError::Protocol(m) => Refused::Protocol(m),
        ScramError::WrongProof => Refused::Password,
    }
}

/// The mechanism and data of a `SASLInitialResponse`.
fn sasl_initial(body: &[u8]) -> Result<&[u8], Refused> {
    let bad = || Refused::Protocol("malformed SASLInitialResponse message".into());
    let nul = body.iter().position(|&b| b == 0).ok_or_else(bad)?;
    if &body[..nul] != b"SCRAM-SHA-256" {
        return Err(Refused::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    let len = body.get(nul + 1..nul + 5).ok_or_else(bad)?;
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let data = &body[nul + 5..];
    if len < 0 || len as usize != data.len() {
        return Err(bad());
    }
    Ok(data)
}

/// `AuthenticationXxx` with its code and data.
pub fn auth_request(out: &mut BytesMut, code: i32, data: &[u8]) {
    out.put_u8(b'R');
    out.put_i32(8 + data.len() as i32);
    out.put_i32(code);
    out.put_slice(data);
}

/// `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    auth_request(out, AUTH_OK, &[]);
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), Refused> {
    stream.write_all(bytes).await.map_err(|_| Refused::Gone)?;
    stream.flush().await.map_err(|_| Refused::Gone)
}

/// The body of the client's next message, which must be a `PasswordMessage` (`p`).
async fn read_password<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, Refused> {
    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|_| Refused::Gone)?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if header[0] != b'p' {
        return Err(Refused::Protocol(format!(
            "expected password response, got message type {}",
            header[0]
        )));
    }
    if !(4..=10_000).contains(&len) {
        return Err(Refused::Protocol("invalid password packet size".into()));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| Refused::Gone)?;
    Ok(body)
}

async fn fatal<S: AsyncWrite + Unpin>(stream: &mut S, code: &str, message: &str) {
    let mut out = BytesMut::new();
    backend::write_error(&mut out, "FATAL", code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
