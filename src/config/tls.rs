//! TLS settings, for clients (`client_tls`, `tls_cert`, `tls_key`) and towards the upstream
//! server (`upstream_tls`, `upstream_tls_ca_file`, `upstream_tls_cert`, `upstream_tls_key`),
//! with their checks: what goes together, what a mode needs, and what a Unix-domain socket
//! cannot do. The certificates themselves are read by the relay, at start and on reload.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// A certificate chain and its private key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What optlock offers clients, as PgBouncer's `client_tls_sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// `SSLRequest` is answered 'N', even with a certificate configured.
    Disable,
    /// TLS for clients that ask (with `tls_cert`/`tls_key`); plain text for the others.
    #[default]
    Allow,
    /// Only TLS: a client that does not ask for it is refused with an error that says so.
    Require,
}

impl ClientTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Require => "require",
        }
    }
}

/// How optlock reaches the upstream server, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain text; no `SSLRequest`.
    Disable,
    /// TLS when the server offers it, plain text when it answers 'N'; certificate not checked.
    #[default]
    Prefer,
    /// TLS or no session; certificate not checked.
    Require,
    /// TLS with a certificate signed by `upstream_tls_ca_file`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host of `upstream`.
    VerifyFull,
}

impl UpstreamTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamTlsMode::Disable => "disable",
            UpstreamTlsMode::Prefer => "prefer",
            UpstreamTlsMode::Require => "require",
            UpstreamTlsMode::VerifyCa => "verify-ca",
            UpstreamTlsMode::VerifyFull => "verify-full",
        }
    }

    /// True for the modes that refuse a session rather than go on in plain text.
    pub fn demands_tls(self) -> bool {
        matches!(
            self,
            UpstreamTlsMode::Require | UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull
        )
    }

    /// True for the modes that check the server's certificate against a CA.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull
        )
    }
}

impl std::str::FromStr for UpstreamTlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use UpstreamTlsMode::*;
        [Disable, Prefer, Require, VerifyCa, VerifyFull]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("{s:?}: write disable, prefer, require, verify-ca or verify-full")
            })
    }
}

impl std::str::FromStr for ClientTlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use ClientTlsMode::*;
        [Disable, Allow, Require]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("{s:?}: write disable, allow or require"))
    }
}

impl fmt::Display for UpstreamTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS towards the upstream server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    pub mode: UpstreamTlsMode,
    /// The CA certificates (PEM) the server's certificate must chain to (`verify-*`).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key to present to the server, when it asks for one.
    pub client_cert: Option<TlsConfig>,
}

/// The TLS settings as written in the file, with their places for errors.
#[derive(Default)]
pub struct RawTls {
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub client_tls: Option<Spanned<ClientTlsMode>>,
    pub upstream_tls: Option<Spanned<UpstreamTlsMode>>,
    pub upstream_tls_ca_file: Option<Spanned<String>>,
    pub upstream_tls_cert: Option<Spanned<String>>,
    pub upstream_tls_key: Option<Spanned<String>>,
}

/// The TLS settings of a config, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub client: Option<TlsConfig>,
    pub client_mode: ClientTlsMode,
    pub upstream: UpstreamTls,
}

/// An error and where it is in the file, when known.
pub type SpanError = (Option<Range<usize>>, String);

impl RawTls {
    /// Checks the settings as a whole; `upstream` is the server's address (a socket path
    /// cannot carry TLS).
    pub fn build(self, upstream: &str) -> Result<TlsSettings, SpanError> {
        let client = pair(self.tls_cert, self.tls_key, "tls_cert", "tls_key")?;
        let client_mode = self.client_tls.as_ref().map(|m| *m.get_ref());
        let upstream_mode = self.upstream_tls.as_ref().map(|m| *m.get_ref());
        let settings = TlsSettings {
            client,
            client_mode: client_mode.unwrap_or_default(),
            upstream: UpstreamTls {
                mode: upstream_mode.unwrap_or_default(),
                ca_file: self
                    .upstream_tls_ca_file
                    .as_ref()
                    .map(|f| f.get_ref().into()),
                client_cert: pair(
                    self.upstream_tls_cert,
                    self.upstream_tls_key,
                    "upstream_tls_cert",
                    "upstream_tls_key",
                )?,
            },
        };
        let span_of_client = self.client_tls.map(|m| m.span());
        let span_of_upstream = self
            .upstream_tls
            .map(|m| m.span())
            .or(self.upstream_tls_ca_file.map(|f| f.span()));
        check_client(&settings).map_err(|e| (span_of_client, e))?;
        check_upstream(&settings.upstream, upstream).map_err(|e| (span_of_upstream, e))?;
        Ok(settings)
    }
}

/// A certificate and its key: both or neither.
fn pair(
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    cert_name: &str,
    key_name: &str,
) -> Result<Option<TlsConfig>, SpanError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(TlsConfig {
            cert: c.into_inner().into(),
            key: k.into_inner().into(),
        })),
        (Some(s), None) | (None, Some(s)) => Err((
            Some(s.span()),
            format!("{cert_name} and {key_name} go together: set both, or neither"),
        )),
        (None, None) => Ok(None),
    }
}

/// `client_tls = "require"` needs a certificate to offer.
pub fn check_client(tls: &TlsSettings) -> Result<(), String> {
    if tls.client_mode == ClientTlsMode::Require && tls.client.is_none() {
        return Err(
            "client_tls = \"require\" needs tls_cert and tls_key (the certificate optlock \
             presents to clients)"
                .into(),
        );
    }
    Ok(())
}

/// What a mode needs, and what a Unix-domain socket cannot do.
pub fn check_upstream(tls: &UpstreamTls, upstream: &str) -> Result<(), String> {
    let mode = tls.mode;
    if upstream.starts_with('/') && mode.demands_tls() {
        return Err(format!(
            "upstream_tls = \"{mode}\" cannot apply to the Unix-domain socket {upstream:?}: \
             PostgreSQL speaks no TLS over a local socket (use \"disable\" or \"prefer\", or a \
             host:port upstream)"
        ));
    }
    match (&tls.ca_file, mode.verifies()) {
        (None, true) => Err(format!(
            "upstream_tls = \"{mode}\" needs upstream_tls_ca_file: the CA certificate(s), in \
             PEM, that signed the server's certificate"
        )),
        (Some(_), false) => Err(format!(
            "upstream_tls_ca_file is used only with upstream_tls = \"verify-ca\" or \
             \"verify-full\"; with \"{mode}\" the server's certificate is not checked"
        )),
        _ => Ok(()),
    }
}

/// True when `upstream` is a TCP address of another host (not a loopback address, not
/// `localhost`, not a socket path).
pub fn is_remote_tcp(upstream: &str) -> bool {
    if upstream.starts_with('/') {
        return false;
    }
    let host = upstream.rsplit_once(':').map_or(upstream, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => true,
    }
}

/// The warning `optlock check` and the start-up log give when the server is on another host
/// and its certificate is not checked against its name.
pub fn upstream_warning(tls: &UpstreamTls, upstream: &str) -> Option<String> {
    if !is_remote_tcp(upstream) || tls.mode == UpstreamTlsMode::VerifyFull {
        return None;
    }
    let what = match tls.mode {
        UpstreamTlsMode::Disable => "in plain text",
        UpstreamTlsMode::Prefer => "in plain text whenever the server does not offer TLS",
        _ => "without checking that the certificate names that host",
    };
    Some(format!(
        "warning: the upstream server {upstream} is on another host and upstream_tls = \
         \"{}\": passwords and data may cross the network {what}, or reach a server that \
         is not yours. Set upstream_tls = \"verify-full\" with upstream_tls_ca_file.",
        tls.mode
    ))
}

/// The TLS options as `SHOW CONFIG` lists them: (key, value), `None` for unset.
pub fn rows(tls: &Option<TlsConfig>, mode: ClientTlsMode, up: &UpstreamTls) -> TlsRows {
    let path = |p: &PathBuf| Some(p.display().to_string());
    let up_cert = up.client_cert.as_ref();
    [
        ("tls_cert", tls.as_ref().and_then(|t| path(&t.cert))),
        ("tls_key", tls.as_ref().and_then(|t| path(&t.key))),
        ("client_tls", Some(mode.as_str().into())),
        ("upstream_tls", Some(up.mode.as_str().into())),
        ("upstream_tls_ca_file", up.ca_file.as_ref().and_then(path)),
        ("upstream_tls_cert", up_cert.and_then(|t| path(&t.cert))),
        ("upstream_tls_key", up_cert.and_then(|t| path(&t.key))),
    ]
}

/// The rows [`rows`] gives.
pub type TlsRows = [(&'static str, Option<String>); 7];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn error(text: &str) -> String {
        Config::parse(text, "x.toml").unwrap_err().to_string()
    }

    #[test]
    fn modes_parse_with_their_files() {
        let cfg = Config::parse("", "x.toml").unwrap();
        assert_eq!(cfg.upstream_tls.mode, UpstreamTlsMode::Prefer);
        assert_eq!(cfg.client_tls, ClientTlsMode::Allow);
        let cfg = Config::parse(
            "upstream = \"db:5432\"\nupstream_tls = \"verify-full\"\n\
             upstream_tls_ca_file = \"/ca.pem\"\nupstream_tls_cert = \"/c.pem\"\n\
             upstream_tls_key = \"/k.pem\"\nclient_tls = \"require\"\n\
             tls_cert = \"/s.pem\"\ntls_key = \"/sk.pem\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(cfg.upstream_tls.mode, UpstreamTlsMode::VerifyFull);
        assert_eq!(cfg.upstream_tls.ca_file, Some("/ca.pem".into()));
        assert_eq!(
            cfg.upstream_tls.client_cert.unwrap().key,
            PathBuf::from("/k.pem")
        );
        assert_eq!(cfg.client_tls, ClientTlsMode::Require);
        assert_eq!("verify-ca".parse(), Ok(UpstreamTlsMode::VerifyCa));
        assert!("verify_full".parse::<UpstreamTlsMode>().is_err());
    }

    #[test]
    fn what_a_mode_needs_is_checked_with_the_line() {
        let e = error("\nupstream_tls = \"verify-full\"\n");
        assert!(
            e.starts_with("x.toml:2: ") && e.contains("upstream_tls_ca_file"),
            "{e}"
        );
        let e = error("upstream_tls = \"require\"\nupstream_tls_ca_file = \"/ca.pem\"\n");
        assert!(e.contains("not checked"), "{e}");
        let e = error("upstream = \"/run/pg\"\n\nupstream_tls = \"require\"\n");
        assert!(
            e.starts_with("x.toml:3: ") && e.contains("Unix-domain socket"),
            "{e}"
        );
        assert!(Config::parse("upstream = \"/run/pg\"\nupstream_tls = \"prefer\"", "x").is_ok());
        let e = error("client_tls = \"require\"\n");
        assert!(
            e.starts_with("x.toml:1: ") && e.contains("needs tls_cert"),
            "{e}"
        );
        let e = error("upstream_tls_cert = \"/c.pem\"\n");
        assert!(
            e.contains("upstream_tls_cert and upstream_tls_key go together"),
            "{e}"
        );
        let e = error("upstream_tls = \"verify_full\"\n");
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn remote_means_tcp_to_another_host() {
        assert!(!is_remote_tcp("127.0.0.1:5432"));
        assert!(!is_remote_tcp("127.0.0.2:5432"));
        assert!(!is_remote_tcp("localhost:5432"));
        assert!(!is_remote_tcp("[::1]:5432"));
        assert!(!is_remote_tcp("/var/run/postgresql"));
        assert!(is_remote_tcp("10.0.0.5:5432"));
        assert!(is_remote_tcp("db.internal:5432"));
        assert!(is_remote_tcp("[2001:db8::1]:5432"));
    }

    #[test]
    fn warning_unless_verify_full_to_a_remote_host() {
        let mut tls = UpstreamTls::default();
        assert!(upstream_warning(&tls, "127.0.0.1:5432").is_none());
        let w = upstream_warning(&tls, "db.internal:5432").unwrap();
        assert!(w.contains("\"prefer\"") && w.contains("verify-full"), "{w}");
        tls.mode = UpstreamTlsMode::VerifyCa;
        assert!(upstream_warning(&tls, "db.internal:5432").is_some());
        tls.mode = UpstreamTlsMode::VerifyFull;
        assert!(upstream_warning(&tls, "db.internal:5432").is_none());
    }
}
