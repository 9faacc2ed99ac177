//! The client's side of connection start-up: `SSLRequest` (TLS with the configured certificate,
//! or 'N'), `GSSENCRequest` ('N'), `CancelRequest` (forwarded to the server, which knows the
//! key) and finally the `StartupMessage`, whose raw bytes go to the server unchanged.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::events::ClientError;
use crate::protocol::backend;
use crate::protocol::startup::{self, StartupPacket};

/// The client connection, plain or TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

stream_enum_io!(ClientStream { Plain, Tls });

/// What the client asked for.
pub enum Opening {
    /// A session: the raw startup packet and its parameters.
    Startup {
        stream: ClientStream,
        packet: Vec<u8>,
        params: Vec<(String, String)>,
    },
    /// A cancel request: the raw packet, to forward to the server.
    Cancel(Vec<u8>),
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
pub async fn accept(tcp: TcpStream, tls: Option<&TlsAcceptor>) -> Result<Opening, HandshakeError> {
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
        let mut len = [0u8; 4];
        if let Err(e) = stream.read_exact(&mut len).await {
            return Err(HandshakeError {
                stream: None,
                code: "08P01",
                message: format!("incomplete startup packet: {e}"),
                reason: None,
            });
        }
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
        if let Err(e) = stream.read_exact(&mut packet[4..]).await {
            return Err(HandshakeError {
                stream: None,
                code: "08P01",
                message: format!("incomplete startup packet: {e}"),
                reason: None,
            });
        }
        match startup::parse(&packet) {
            Err(e) => return Err(fail(stream, e)),
            Ok(StartupPacket::Cancel) => return Ok(Opening::Cancel(packet)),
            Ok(StartupPacket::GssEnc) => write_byte(&mut stream, b'N').await?,
            Ok(StartupPacket::Ssl) => match (stream, tls) {
                (ClientStream::Plain(mut tcp), Some(acceptor)) => {
                    write_byte_tcp(&mut tcp, b'S').await?;
                    stream = ClientStream::Tls(Box::new(tls_accept(acceptor, tcp).await?));
                }
                (s, _) => {
                    stream = s;
                    write_byte(&mut stream, b'N').await?;
                }
            },
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

/// Loads the TLS certificate chain and key for client connections.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    let certs = rustls_pemfile::certs(&mut io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("cannot open tls_cert {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls_cert {} holds no PEM certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut io::BufReader::new(
        std::fs::File::open(key)
            .with_context(|| format!("cannot open tls_key {}", key.display()))?,
    ))
    .with_context(|| format!("cannot read the private key from {}", key.display()))?
    .with_context(|| format!("tls_key {} holds no PEM private key", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
}
