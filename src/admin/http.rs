//! The `/metrics` HTTP endpoint: a minimal HTTP/1.1 server on tokio that answers
//! `GET /metrics` (and `HEAD`) with the OpenMetrics text, 404 elsewhere, one request per
//! connection (`Connection: close`), each connection in its own task under a time limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Metrics;

/// The `Content-Type` of the metrics response.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long one connection may take to send its request and receive the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head accepted.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, shutdown: impl Future) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(CONNECTION_TIMEOUT, handle(stream, &metrics)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection failed"),
                            Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_REQUEST_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                "text/plain; charset=utf-8",
                b"request head too large\n",
                true,
            )
            .await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            if head.is_empty() {
                return Ok(());
            }
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }

    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("");
    let with_body = method != "HEAD";

    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = metrics.encode();
            respond(
                &mut stream,
                "200 OK",
                "",
                OPENMETRICS_CONTENT_TYPE,
                body.as_bytes(),
                with_body,
            )
            .await
        }
        (_, "/metrics") => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "Allow: GET, HEAD\r\n",
                "text/plain; charset=utf-8",
                b"only GET and HEAD are allowed on /metrics\n",
                true,
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "",
                "text/plain; charset=utf-8",
                b"not found: optlock serves its metrics at /metrics\n",
                with_body,
            )
            .await
        }
    }
}

/// Writes a whole response; `extra_headers` is empty or whole `Name: value\r\n` lines.
async fn respond(
    stream: &mut TcpStream,
    status: &str,
    extra_headers: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra_headers}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    if with_body {
        out.extend_from_slice(body);
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;
    use crate::guard::TableId;

    async fn request(addr: std::net::SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn answers_metrics_and_404_then_stops() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_tables(vec![(TableId(0), "public.invoice".into())]);
        metrics.guarded(TableId(0), Outcome::Conflict);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(listener, metrics.clone(), async move {
            let _ = stopped.await;
        }));

        let resp = request(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Type: {OPENMETRICS_CONTENT_TYPE}\r\n")),
            "{head}"
        );
        assert!(head.contains("Connection: close"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(
            body.contains(
                "optlock_guarded_writes_total{table=\"public.invoice\",outcome=\"conflict\"} 1"
            ),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));

        let resp = request(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");

        let resp = request(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\n"), "HEAD has no body: {resp}");

        let resp = request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
        assert!(resp.contains("/metrics"), "{resp}");

        let resp = request(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 405 "), "{resp}");
        assert!(resp.contains("Allow: GET, HEAD\r\n"), "{resp}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops on shutdown")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once the server stops"
        );
    }
}
