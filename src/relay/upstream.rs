//! The connection to the real PostgreSQL server: TCP (`host:port`) or a Unix-domain socket
//! (an absolute path), opened with the configured timeout; and the forwarding of a client's
//! `CancelRequest` to that same server.
//!
//! When the proxy runs on the database host, the socket costs the kernel far less per message
//! than TCP over loopback.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tracing::{debug, warn};

use crate::config::{Config, UpstreamAddr};

/// An open connection to the upstream server.
#[derive(Debug)]
pub enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to the upstream server, with the configured timeout.
pub async fn connect(config: &Config) -> Result<Upstream, String> {
    let addr = &config.upstream;
    match tokio::time::timeout(config.upstream_connect_timeout, open(addr)).await {
        Err(_) => Err(format!(
            "could not connect to the upstream server at {addr}: no answer within upstream_connect_timeout ({:?})",
            config.upstream_connect_timeout
        )),
        Ok(Err(e)) => Err(format!(
            "could not connect to the upstream server at {addr}: {e}"
        )),
        Ok(Ok(s)) => Ok(s),
    }
}

async fn open(addr: &str) -> io::Result<Upstream> {
    match UpstreamAddr::parse(addr) {
        UpstreamAddr::Tcp(a) => {
            let s = TcpStream::connect(a).await?;
            let _ = s.set_nodelay(true);
            Ok(Upstream::Tcp(s))
        }
        UpstreamAddr::Unix(path) => UnixStream::connect(&path)
            .await
            .map(Upstream::Unix)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Forwards a `CancelRequest` to the server; the key in it was issued by that server.
pub async fn forward_cancel(addr: &str, packet: &[u8], peer: std::net::SocketAddr) {
    match open(addr).await {
        Ok(mut s) => {
            let _ = s.write_all(packet).await;
            let _ = s.shutdown().await;
            debug!(client = %peer, "cancel request forwarded");
        }
        Err(e) => {
            warn!(client = %peer, error = %e, "cancel request could not reach the upstream server")
        }
    }
}

stream_enum_io!(Upstream { Tcp, Unix });
