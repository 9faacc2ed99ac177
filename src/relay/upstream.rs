//! The connection to the real PostgreSQL server: TCP (`host:port`) or a Unix-domain socket
//! (an absolute path), opened with the configured timeout, and over TCP encrypted as
//! `upstream_tls` says, negotiated with `SSLRequest` as libpq does; and the forwarding of a
//! client's `CancelRequest` to that same server.
//!
//! When the proxy runs on the database host, the socket costs the kernel far less per message
//! than TCP over loopback. A socket carries no TLS.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tracing::{debug, warn};

use super::tls::{UpstreamConnector, version_name};
use crate::config::{Config, UpstreamAddr, UpstreamTlsMode};

/// An open connection to the upstream server.
#[derive(Debug)]
pub enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Upstream {
    /// The connection registered with the calling thread's reactor instead of the one it was
    /// opened on, so that its readiness wakes this thread's sessions directly. A TLS
    /// connection stays where it is (its stream cannot be taken apart and rebuilt): it is
    /// still served, its wake-ups crossing threads.
    pub fn rehome(self) -> io::Result<Upstream> {
        Ok(match self {
            Upstream::Tcp(s) => Upstream::Tcp(TcpStream::from_std(s.into_std()?)?),
            Upstream::Unix(s) => Upstream::Unix(UnixStream::from_std(s.into_std()?)?),
            tls @ Upstream::Tls(_) => tls,
        })
    }

    /// The TLS version of the connection, when it is encrypted.
    pub fn tls_version(&self) -> Option<&'static str> {
        match self {
            Upstream::Tls(s) => Some(version_name(s.get_ref().1.protocol_version())),
            _ => None,
        }
    }

    /// The server's certificate (the first of its chain), when the connection is encrypted.
    pub fn server_certificate(&self) -> Option<&[u8]> {
        match self {
            Upstream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
            _ => None,
        }
    }
}

/// Connects to the upstream server (TLS as `tls` says), within `upstream_connect_timeout`.
/// The error names the server and the reason; the session's client gets it as `08006`.
pub async fn connect(config: &Config, tls: &UpstreamConnector) -> Result<Upstream, String> {
    let addr = &config.upstream;
    match tokio::time::timeout(config.upstream_connect_timeout, open(addr, tls)).await {
        Err(_) => Err(format!(
            "could not connect to the upstream server at {addr}: no answer within upstream_connect_timeout ({:?})",
            config.upstream_connect_timeout
        )),
        Ok(r) => r,
    }
}

async fn open(addr: &str, tls: &UpstreamConnector) -> Result<Upstream, String> {
    let failed = |e: io::Error| format!("could not connect to the upstream server at {addr}: {e}");
    let host = match UpstreamAddr::parse(addr) {
        UpstreamAddr::Tcp(a) => a,
        UpstreamAddr::Unix(path) => {
            return UnixStream::connect(&path)
                .await
                .map(Upstream::Unix)
                .map_err(|e| failed(io::Error::new(e.kind(), format!("{}: {e}", path.display()))));
        }
    };
    let tcp = tcp(host).await.map_err(failed)?;
    let Some(connector) = &tls.connector else {
        return Ok(Upstream::Tcp(tcp));
    };
    match negotiate(tcp, host, tls.mode, connector).await {
        Ok(s) => Ok(s),
        Err(Refusal::Plain(tcp)) => Ok(Upstream::Tcp(tcp)),
        Err(Refusal::Retry(reason)) => {
            // libpq's `prefer`: a failed attempt at TLS is tried again without it.
            warn!(upstream = %addr, reason = %reason, "TLS with the upstream server failed; this session reaches it in plain text (upstream_tls = \"prefer\")");
            Ok(Upstream::Tcp(self::tcp(host).await.map_err(failed)?))
        }
        Err(Refusal::Fatal(reason)) => Err(format!(
            "could not connect to the upstream server at {addr} with upstream_tls = \"{}\": {reason}",
            tls.mode
        )),
        Err(Refusal::Io(e)) => Err(failed(e)),
    }
}

async fn tcp(host: &str) -> io::Result<TcpStream> {
    let s = TcpStream::connect(host).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Why a connection is not encrypted.
enum Refusal {
    /// The server answered 'N' and the mode allows plain text: go on over this connection.
    Plain(TcpStream),
    /// The mode allows plain text: connect again without asking for TLS.
    Retry(String),
    /// The mode demands TLS (or a verified certificate): no session.
    Fatal(String),
    Io(io::Error),
}

/// Logged once per process: the server does not offer TLS and `prefer` goes on in plain text.
static PLAIN_NOTED: AtomicBool = AtomicBool::new(false);

/// `SSLRequest`, then a TLS handshake if the server answers 'S'.
async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    mode: UpstreamTlsMode,
    connector: &tokio_rustls::TlsConnector,
) -> Result<Upstream, Refusal> {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    tcp.write_all(&SSL_REQUEST).await.map_err(Refusal::Io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(Refusal::Io)?;
    let plain_ok = !mode.demands_tls();
    match answer[0] {
        b'S' => {}
        b'N' if plain_ok => {
            if !PLAIN_NOTED.swap(true, Ordering::Relaxed) {
                warn!(upstream = %host, "the upstream server does not offer TLS: sessions reach it in plain text (upstream_tls = \"prefer\"; \"require\" would refuse them)");
            }
            return Err(Refusal::Plain(tcp));
        }
        b'N' => {
            return Err(Refusal::Fatal(
                "the server refused TLS (it answered 'N' to SSLRequest: is ssl = on in its \
                 postgresql.conf?)"
                    .into(),
            ));
        }
        // A server of before 7.0 answers with an error, and closes.
        b'E' if plain_ok => {
            return Err(Refusal::Retry("the server does not know SSLRequest".into()));
        }
        other => {
            return Err(Refusal::Fatal(format!(
                "the server answered SSLRequest with {:?}, not 'S' or 'N'",
                other as char
            )));
        }
    }
    let name = server_name(host);
    match connector.connect(name, tcp).await {
        Ok(s) => {
            debug!(upstream = %host, tls = version_name(s.get_ref().1.protocol_version()), "upstream TLS");
            Ok(Upstream::Tls(Box::new(s)))
        }
        Err(e) if plain_ok => Err(Refusal::Retry(format!("TLS handshake failed: {e}"))),
        Err(e) => Err(Refusal::Fatal(format!("TLS handshake failed: {e}"))),
    }
}

/// The name the server's certificate must carry under `verify-full`: the host of `upstream`
/// (a DNS name, or an IP address matched against the certificate's IP addresses).
fn server_name(host_port: &str) -> ServerName<'static> {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("invalid.host.name").expect("a valid name"))
}

/// How long a forwarded `CancelRequest` may take the server to act on before the client's
/// connection is closed anyway.
const CANCEL_PATIENCE: Duration = Duration::from_secs(10);

/// Forwards a `CancelRequest` to the server, over the same kind of connection a session gets
/// (the key in it was issued by that server), and closes the client's connection once the
/// server has closed that one. PostgreSQL closes it after signalling the backend; a client that
/// waits for the end of its cancel connection before its next statement (pgjdbc after a query
/// timeout) relies on that to never see the cancel land on that statement.
pub async fn forward_cancel(
    config: &Config,
    tls: &UpstreamConnector,
    packet: &[u8],
    client: &mut (impl AsyncWrite + Unpin),
    peer: std::net::SocketAddr,
) {
    match connect(config, tls).await {
        Ok(mut s) => {
            if s.write_all(packet).await.is_ok() && s.flush().await.is_ok() {
                let mut sink = [0u8; 64];
                let until_closed =
                    async { while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {} };
                if tokio::time::timeout(CANCEL_PATIENCE, until_closed)
                    .await
                    .is_err()
                {
                    warn!(client = %peer, "the upstream server kept a cancel request's connection open");
                }
            }
            let _ = s.shutdown().await;
            debug!(client = %peer, "cancel request forwarded");
        }
        Err(e) => {
            warn!(client = %peer, error = %e, "cancel request could not reach the upstream server")
        }
    }
    let _ = client.shutdown().await;
}

stream_enum_io!(Upstream { Tcp, Unix, Tls });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_upstream_addresses() {
        assert_eq!(
            server_name("db.internal:5432"),
            ServerName::try_from("db.internal").unwrap()
        );
        assert_eq!(
            server_name("10.0.0.5:5432"),
            ServerName::try_from("10.0.0.5").unwrap()
        );
        assert_eq!(
            server_name("[::1]:5432"),
            ServerName::try_from("::1").unwrap()
        );
    }
}
