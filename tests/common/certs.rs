//! Certificates for TLS tests, made with the openssl command line in a temporary directory the
//! `postgres` OS user owns: a test CA, the server's certificate and another one for the proxy
//! (both for `localhost` and 127.0.0.1), a client certificate (CN `certuser`), and an
//! impostor: the same names signed by a second CA nobody trusts. Also a throwaway cluster with `ssl = on` serving the server
//! certificate, and a TLS client (rustls, trusting both CAs) that tells which certificate it
//! was shown.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use optlock::config::TlsConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cluster::Cluster;
use super::wire::{self, Raw};

/// The certificates of one test, removed with it.
pub struct Certs {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Certs {
    /// Makes `ca`, `server`, `proxy`, `client` and `impostor` (with `other_ca`).
    pub fn new() -> Certs {
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("optlock-certs-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .expect("temp dir");
        let certs = Certs { dir };
        certs.ca("ca", "optlock test CA");
        certs.ca("other_ca", "someone else's CA");
        let server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
        certs.leaf("server", "localhost", "ca", server);
        certs.leaf("proxy", "localhost", "ca", server);
        certs.leaf("impostor", "localhost", "other_ca", server);
        certs.leaf("client", "certuser", "ca", "extendedKeyUsage=clientAuth\n");
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(certs.dir.path())
            .status()
            .expect("chown");
        assert!(st.success(), "chown the certificates to postgres");
        certs
    }

    fn ca(&self, name: &str, cn: &str) {
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subj];
        args.extend(EC);
        args.extend(["-keyout", &key, "-out", &crt]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(self.dir.path(), &args);
    }

    fn leaf(&self, name: &str, cn: &str, ca: &str, ext: &str) {
        let d = self.dir.path();
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-new", "-nodes", "-subj", &subj];
        args.extend(EC);
        args.extend(["-keyout", &key, "-out", &csr]);
        openssl(d, &args);
        let extfile = format!("{name}.ext");
        std::fs::write(
            d.join(&extfile),
            format!("basicConstraints=CA:FALSE\n{ext}"),
        )
        .unwrap();
        let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &extfile,
            ],
        );
        // PostgreSQL refuses a key others can read.
        std::fs::set_permissions(
            d.join(&key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }

    /// The file `name` (e.g. `ca.crt`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `name` as a path string, for config files and conninfo strings.
    pub fn file(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// The certificate and key `name`.crt / `name`.key.
    pub fn pair(&self, name: &str) -> TlsConfig {
        TlsConfig {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        }
    }

    /// The DER of the certificate `name`.crt.
    pub fn der(&self, name: &str) -> Vec<u8> {
        let pem = std::fs::read(self.path(&format!("{name}.crt"))).unwrap();
        let cert = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .unwrap()
            .unwrap();
        cert.as_ref().to_vec()
    }

    /// A cluster with `ssl = on` serving `server.crt` (client certificates checked against
    /// `ca.crt`), listening on 127.0.0.1 and 127.0.0.2, with `hba_lines`.
    pub fn cluster(&self, hba_lines: &[&str]) -> Cluster {
        let conf = [
            "ssl = on".to_string(),
            format!("ssl_cert_file = '{}'", self.file("server.crt")),
            format!("ssl_key_file = '{}'", self.file("server.key")),
            format!("ssl_ca_file = '{}'", self.file("ca.crt")),
            "listen_addresses = '127.0.0.1,127.0.0.2'".to_string(),
        ];
        let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
        Cluster::start_with(hba_lines, &conf)
    }
}

/// SSLRequest, 'S', then a TLS handshake trusting both test CAs: a raw protocol connection
/// over TLS, and the certificate the other end showed.
pub async fn raw_tls(certs: &Certs, addr: &str) -> (Raw, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&wire::ssl_request()).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S", "the proxy offers TLS");
    let mut roots = rustls::RootCertStore::empty();
    for ca in ["ca", "other_ca"] {
        roots.add(CertificateDer::from(certs.der(ca))).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (Raw::over(tls), leaf)
}
