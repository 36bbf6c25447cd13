//! TLS for the MySQL wire client: the `ssl-mode` a metastore URL asks for, the rustls client
//! configuration each mode means, and the stream that is plain TCP until the handshake upgrades it.
//!
//! The modes are MySQL's own (`--ssl-mode`), with MySQL's meaning, so a URL copied from a MySQL
//! client behaves the same: `PREFERRED` (the default) encrypts when the server offers TLS and
//! checks no certificate, as MySQL servers ship with self-signed ones; `REQUIRED` refuses a server
//! without TLS but checks no certificate either; `VERIFY_CA` checks the chain against `ssl-ca`;
//! `VERIFY_IDENTITY` also checks that the certificate names the host. Only the verifying modes
//! protect the password against a man in the middle, and the error hints say so. This module never
//! reads or writes MySQL packets ([`super::wire`] does).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What TLS a connection must have. Invariant: the verifying modes carry the CA file they check
/// against (MySQL's client refuses them without `--ssl-ca` too).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plain TCP, even when the server offers TLS.
    Disabled,
    /// TLS when the server offers it, certificate unchecked; plain otherwise.
    #[default]
    Preferred,
    /// TLS or nothing, certificate unchecked.
    Required,
    /// TLS with the chain checked against the CA file; any host name.
    VerifyCa(PathBuf),
    /// TLS with the chain checked against the CA file and the host name checked.
    VerifyIdentity(PathBuf),
}

impl TlsMode {
    /// The mode named by the URL options `ssl-mode` and `ssl-ca` (either may be absent). A CA
    /// without a mode means `VERIFY_CA`, as PyMySQL (Submarine's driver) treats `ssl_ca`.
    pub fn from_options(mode: Option<&str>, ca: Option<PathBuf>) -> Result<TlsMode, String> {
        let mode = mode.map(|m| m.trim().to_ascii_uppercase().replace('-', "_"));
        match (mode.as_deref(), ca) {
            (None, None) | (Some("PREFERRED"), None) => Ok(TlsMode::Preferred),
            (Some("DISABLED"), None) => Ok(TlsMode::Disabled),
            (Some("REQUIRED"), None) => Ok(TlsMode::Required),
            (None | Some("VERIFY_CA"), Some(ca)) => Ok(TlsMode::VerifyCa(ca)),
            (Some("VERIFY_IDENTITY"), Some(ca)) => Ok(TlsMode::VerifyIdentity(ca)),
            (Some("VERIFY_CA" | "VERIFY_IDENTITY"), None) => {
                Err("ssl-mode VERIFY_CA and VERIFY_IDENTITY need ssl-ca=PATH (the CA's PEM file)".into())
            }
            (Some("DISABLED" | "PREFERRED" | "REQUIRED"), Some(_)) => Err(
                "ssl-ca is only checked by ssl-mode VERIFY_CA or VERIFY_IDENTITY".into(),
            ),
            (Some(other), _) => Err(format!(
                "ssl-mode {other} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY"
            )),
        }
    }

    /// MySQL's name of the mode, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TlsMode::Disabled => "DISABLED",
            TlsMode::Preferred => "PREFERRED",
            TlsMode::Required => "REQUIRED",
            TlsMode::VerifyCa(_) => "VERIFY_CA",
            TlsMode::VerifyIdentity(_) => "VERIFY_IDENTITY",
        }
    }

    /// Whether a server that offers no TLS must be refused.
    pub fn requires_tls(&self) -> bool {
        !matches!(self, TlsMode::Disabled | TlsMode::Preferred)
    }

    /// The rustls configuration for this mode; `None` for `Disabled`.
    pub fn client_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        crate::net::tls::ensure_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self {
            TlsMode::Disabled => return Ok(None),
            TlsMode::Preferred | TlsMode::Required => Arc::new(Lenient {
                chain: None,
                provider: provider.clone(),
            }),
            TlsMode::VerifyCa(ca) => Arc::new(Lenient {
                chain: Some(webpki(ca, &provider)?),
                provider: provider.clone(),
            }),
            TlsMode::VerifyIdentity(ca) => webpki(ca, &provider)?,
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(Arc::new(config)))
    }
}

/// A verifier that checks the chain against the certificates of the PEM file `ca`.
fn webpki(
    ca: &Path,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let shown = ca.display();
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read ssl-ca {shown}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ssl-ca {shown}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ssl-ca {shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("ssl-ca {shown} holds no PEM certificate"));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("ssl-ca {shown}: {e}"))
}

/// `PREFERRED` and `REQUIRED` (no `chain`): any certificate, as MySQL's client does in these
/// modes. `VERIFY_CA` (`chain`): the chain must lead to the CA; the name in the certificate is not
/// checked. Either way the handshake's signatures are checked against the certificate presented.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connection's byte stream: plain TCP, or TLS over it after the SSLRequest.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the bytes are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_mysqls_names_and_a_ca_alone_means_verify_ca() {
        let ca = || Some(PathBuf::from("/ca.pem"));
        assert_eq!(TlsMode::from_options(None, None), Ok(TlsMode::Preferred));
        assert_eq!(
            TlsMode::from_options(Some("disabled"), None),
            Ok(TlsMode::Disabled)
        );
        assert_eq!(
            TlsMode::from_options(Some("REQUIRED"), None),
            Ok(TlsMode::Required)
        );
        assert_eq!(
            TlsMode::from_options(None, ca()),
            Ok(TlsMode::VerifyCa("/ca.pem".into()))
        );
        assert_eq!(
            TlsMode::from_options(Some("verify-identity"), ca()),
            Ok(TlsMode::VerifyIdentity("/ca.pem".into()))
        );
        assert!(TlsMode::from_options(Some("VERIFY_IDENTITY"), None)
            .unwrap_err()
            .contains("ssl-ca"));
        assert!(TlsMode::from_options(Some("REQUIRED"), ca()).is_err());
        assert!(TlsMode::from_options(Some("sometimes"), None)
            .unwrap_err()
            .contains("DISABLED"));
        assert!(TlsMode::Required.requires_tls() && !TlsMode::Preferred.requires_tls());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = TlsMode::VerifyCa(ca).client_config().unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = TlsMode::VerifyCa(dir.path().join("nope.pem"));
        assert!(missing.client_config().unwrap_err().contains("cannot read"));
    }
}
