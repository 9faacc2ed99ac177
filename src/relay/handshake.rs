//! The client's side of connection start-up: `SSLRequest` (TLS with the configured certificate,
//! or 'N'), `GSSENCRequest` ('N'), `CancelRequest` (forwarded to the server, which knows the
//! key) and finally the `StartupMessage`, whose raw bytes go to the server unchanged; under
//! `client_tls = "require"` a startup in plain text is refused.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::tls::{TlsSetup, version_name};
use crate::config::ClientTlsMode;
use crate::events::ClientError;
use crate::protocol::backend;
use crate::protocol::startup::{self, StartupPacket};

/// The client connection, plain or TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

stream_enum_io!(ClientStream { Plain, Tls });

impl ClientStream {
    /// The TLS version of the connection, when it is encrypted.
    pub fn tls_version(&self) -> Option<&'static str> {
        match self {
            ClientStream::Tls(s) => Some(version_name(s.get_ref().1.protocol_version())),
            ClientStream::Plain(_) => None,
        }
    }
}

/// What the client asked for.
pub enum Opening {
    /// A session: the raw startup packet and its parameters.
    Startup {
        stream: ClientStream,
        packet: Vec<u8>,
        params: Vec<(String, String)>,
    },
    /// A cancel request: the raw packet, to forward to the server, and the client's connection,
    /// kept open until the server has taken the request in.
    Cancel {
        stream: ClientStream,
        packet: Vec<u8>,
    },
}

/// A start-up that failed; the message is sent to the client as FATAL when it can be.
pub struct HandshakeError {
    pub stream: Option<ClientStream>,
    pub code: &'static str,
    pub message: String,
    /// Why the proxy refused the client, when it did (a client that just left is not counted).
    pub reason: Option<ClientError>,
}

/// Reads start-up packets until a `StartupMessage` or `CancelRequest`.
pub async fn accept(tcp: TcpStream, setup: &TlsSetup) -> Result<Opening, HandshakeError> {
    let tls = setup.acceptor.as_ref();
    let mut stream = ClientStream::Plain(tcp);
    let fail = |stream, message: String| HandshakeError {
        stream: Some(stream),
        code: "08P01",
        message,
        reason: Some(ClientError::Protocol),
    };
    loop {
        // A TLS ClientHello straight away: direct TLS negotiation (PostgreSQL 17 clients).
        if let (ClientStream::Plain(tcp), Some(acceptor)) = (&stream, tls) {
            let mut first = [0u8; 1];
            if matches!(tcp.peek(&mut first).await, Ok(1)) && first[0] == 0x16 {
                let ClientStream::Plain(tcp) = stream else {
                    unreachable!()
                };
                stream = ClientStream::Tls(Box::new(tls_accept(acceptor, tcp).await?));
                continue;
            }
        }
        let packet = read_packet(&mut stream).await?;
        match startup::parse(&packet) {
            Err(e) if e.before_v3 => {
                // Answered in the format of the protocol the client asked for.
                let mut out = Vec::new();
                startup::write_v2_error(&mut out, &e.message);
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
                return Err(HandshakeError {
                    stream: None,
                    ..fail(stream, e.message)
                });
            }
            Err(e) => {
                return Err(HandshakeError {
                    code: e.code,
                    ..fail(stream, e.message)
                });
            }
            Ok(StartupPacket::Cancel) => return Ok(Opening::Cancel { stream, packet }),
            Ok(StartupPacket::GssEnc) => write_byte(&mut stream, b'N').await?,
            Ok(StartupPacket::Ssl) => match (stream, tls) {
                (ClientStream::Plain(mut tcp), Some(acceptor)) => {
                    write_byte_tcp(&mut tcp, b'S').await?;
                    stream = ClientStream::Tls(Box::new(tls_accept(acceptor, tcp).await?));
                }
                (s, _) => {
                    stream = s;
                    // Bytes sent behind the SSLRequest, before its answer could be read, were
                    // meant to go encrypted: PostgreSQL refuses them after its `N`.
                    let pipelined =
                        matches!(&stream, ClientStream::Plain(tcp) if has_data_now(tcp));
                    write_byte(&mut stream, b'N').await?;
                    if pipelined {
                        return Err(fail(
                            stream,
                            "received unencrypted data after SSL request".into(),
                        ));
                    }
                }
            },
            Ok(StartupPacket::Startup { .. })
                if setup.client_mode == ClientTlsMode::Require
                    && matches!(stream, ClientStream::Plain(_)) =>
            {
                return Err(plain_refused(stream));
            }
            Ok(StartupPacket::Startup { params, .. }) => {
                return Ok(Opening::Startup {
                    stream,
                    packet,
                    params,
                });
            }
        }
    }
}

/// True when the client's bytes already wait in the socket (looked at without waiting).
fn has_data_now(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(tcp.poll_peek(&mut cx, &mut buf), std::task::Poll::Ready(Ok(n)) if n > 0)
}

/// One start-up packet, whole (its length word included).
async fn read_packet(stream: &mut ClientStream) -> Result<Vec<u8>, HandshakeError> {
    let incomplete = |e: std::io::Error| HandshakeError {
        stream: None,
        code: "08P01",
        message: format!("incomplete startup packet: {e}"),
        reason: None,
    };
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(incomplete)?;
    let size = match startup::packet_size(&len) {
        Ok(Some(n)) => n,
        Ok(None) => unreachable!("four bytes were read"),
        // PostgreSQL only logs an impossible length and closes: the client gets nothing
        // (a driver that raced its own Terminate ahead of its startup packet expects that).
        Err(e) => {
            return Err(HandshakeError {
                stream: None,
                code: "08P01",
                message: e,
                reason: Some(ClientError::Protocol),
            });
        }
    };
    let mut packet = vec![0u8; size];
    packet[..4].copy_from_slice(&len);
    stream
        .read_exact(&mut packet[4..])
        .await
        .map_err(incomplete)?;
    Ok(packet)
}

/// The refusal of a client in plain text under `client_tls = "require"`.
fn plain_refused(stream: ClientStream) -> HandshakeError {
    HandshakeError {
        stream: Some(stream),
        code: "28000",
        message: "optlock accepts only TLS connections (client_tls = \"require\"): connect with \
                  sslmode=require, verify-ca or verify-full"
            .into(),
        reason: Some(ClientError::Tls),
    }
}

async fn tls_accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    acceptor.accept(tcp).await.map_err(|e| HandshakeError {
        stream: None,
        code: "08P01",
        message: format!("TLS handshake failed: {e}"),
        reason: Some(ClientError::Tls),
    })
}

async fn write_byte(stream: &mut ClientStream, b: u8) -> Result<(), HandshakeError> {
    stream.write_all(&[b]).await.map_err(|e| HandshakeError {
        stream: None,
        code: "08006",
        message: format!("client went away during start-up: {e}"),
        reason: None,
    })
}

async fn write_byte_tcp(stream: &mut TcpStream, b: u8) -> Result<(), HandshakeError> {
    stream.write_all(&[b]).await.map_err(|e| HandshakeError {
        stream: None,
        code: "08006",
        message: format!("client went away during start-up: {e}"),
        reason: None,
    })
}

/// Sends a FATAL error to a client and closes the write side.
pub async fn send_fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    let mut out = BytesMut::new();
    backend::write_error(&mut out, "FATAL", code, message);
    let _ = w.write_all(&out).await;
    let _ = w.shutdown().await;
}
