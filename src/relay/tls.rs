//! The TLS material of both legs, built from the config at start and again on every reload:
//! the acceptor for clients (with the client policy), and the connector for the upstream
//! server (with the certificate check its mode asks for). A session takes the one in force
//! when it starts; a reload swaps it for the sessions after, and drops no session.

use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClientTlsMode, Config, TlsConfig, UpstreamTls, UpstreamTlsMode};

/// ALPN protocol name of PostgreSQL (sent by libpq 17 and later, harmless to older servers).
const ALPN: &[u8] = b"postgresql";

/// Every TLS object the sessions of one config generation use.
pub struct TlsSetup {
    pub client_mode: ClientTlsMode,
    /// `None` without a certificate, or with `client_tls = "disable"`.
    pub acceptor: Option<TlsAcceptor>,
    /// The certificate clients are shown (the first of the chain).
    pub client_leaf: Option<CertificateDer<'static>>,
    pub upstream: UpstreamConnector,
}

/// How sessions reach the upstream server.
pub struct UpstreamConnector {
    pub mode: UpstreamTlsMode,
    /// `None` for `disable`.
    pub connector: Option<TlsConnector>,
}

impl TlsSetup {
    /// Reads the certificates and keys the config names; an error says which file and why.
    pub fn load(config: &Config) -> anyhow::Result<TlsSetup> {
        let (acceptor, client_leaf) = match (&config.tls, config.client_tls) {
            (Some(t), ClientTlsMode::Allow | ClientTlsMode::Require) => {
                let (acceptor, leaf) = acceptor(t)?;
                (Some(acceptor), Some(leaf))
            }
            _ => (None, None),
        };
        Ok(TlsSetup {
            client_mode: config.client_tls,
            acceptor,
            client_leaf,
            upstream: UpstreamConnector::load(&config.upstream_tls)?,
        })
    }
}

impl UpstreamConnector {
    fn load(tls: &UpstreamTls) -> anyhow::Result<UpstreamConnector> {
        if tls.mode == UpstreamTlsMode::Disable {
            return Ok(UpstreamConnector {
                mode: tls.mode,
                connector: None,
            });
        }
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, &tls.ca_file) {
            (UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull, Some(ca)) => {
                let full = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider.clone(),
                )
                .build()
                .context("cannot build the upstream certificate check")?;
                Arc::new(CheckCertificate {
                    inner: full,
                    check_name: tls.mode == UpstreamTlsMode::VerifyFull,
                })
            }
            _ => Arc::new(AnyCertificate(provider.clone())),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &tls.client_cert {
            Some(c) => builder
                .with_client_auth_cert(
                    certs(&c.cert, "upstream_tls_cert")?,
                    key(&c.key, "upstream_tls_key")?,
                )
                .context("upstream_tls_cert and upstream_tls_key do not fit together")?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(UpstreamConnector {
            mode: tls.mode,
            connector: Some(TlsConnector::from(Arc::new(config))),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for client connections, and the certificate it shows.
fn acceptor(t: &TlsConfig) -> anyhow::Result<(TlsAcceptor, CertificateDer<'static>)> {
    let chain = certs(&t.cert, "tls_cert")?;
    let leaf = chain[0].clone();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key(&t.key, "tls_key")?)
        .context("the TLS certificate and key (tls_cert, tls_key) do not fit together")?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), leaf))
}

/// The certificates of a PEM file (at least one).
fn certs(path: &Path, option: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open {option} {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut io::BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read certificates from {option} {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{option} {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn key(path: &Path, option: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open {option} {}", path.display()))?;
    rustls_pemfile::private_key(&mut io::BufReader::new(file))
        .with_context(|| {
            format!(
                "cannot read the private key from {option} {}",
                path.display()
            )
        })?
        .with_context(|| format!("{option} {} holds no PEM private key", path.display()))
}

/// The CA certificates of `upstream_tls_ca_file`.
fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path, "upstream_tls_ca_file")? {
        roots.add(cert).with_context(|| {
            format!(
                "upstream_tls_ca_file {}: not a usable CA certificate",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// `verify-ca` and `verify-full`: the server's certificate must chain to the CA file; with
/// `check_name`, it must also name the host optlock connects to.
#[derive(Debug)]
struct CheckCertificate {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for CheckCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The chain was checked before the name: only the name is wrong.
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require`: encryption without a certificate check, as libpq does (the
/// handshake's signatures are still checked, so the key exchange is the certificate's).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name a TLS protocol version goes by in `SHOW SESSIONS` (as `pg_stat_ssl` spells it).
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}
