//! A test certificate authority and a leaf certificate for `localhost` / `127.0.0.1`, made with the
//! real `openssl` command line, for HTTPS test servers.
//!
//! rustls refuses a self-signed CA used directly as a server certificate (`CaUsedAsEndEntity`), so
//! this makes a CA and a separate leaf signed by it, the way a private CA works in production.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tempfile::TempDir;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA and a leaf for `localhost`. Invariant: the files exist for as long as the value lives.
pub struct TestCa {
    _dir: TempDir,
    /// The CA certificate (PEM): what a client passes as `--ca-file`.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), signed by the CA, valid for DNS:localhost and IP:127.0.0.1.
    pub leaf_cert: PathBuf,
    /// The server's private key (PEM).
    pub leaf_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run openssl (tests/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes a fresh CA and leaf in a temporary folder.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write leaf.ext");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=Periscope Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(d, &csr);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "3",
                "-extfile",
                "leaf.ext",
            ],
        );
        TestCa {
            ca_cert: d.join("ca.pem"),
            leaf_cert: d.join("leaf.pem"),
            leaf_key: d.join("leaf.key"),
            _dir: dir,
        }
    }

    /// A rustls server configuration presenting the leaf (HTTP/1.1 only).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.leaf_cert)
            .expect("read leaf cert")
            .collect::<Result<_, _>>()
            .expect("parse leaf cert");
        let key = PrivateKeyDer::from_pem_file(&self.leaf_key).expect("read leaf key");
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
