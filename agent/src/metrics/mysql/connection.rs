//! Opening a connection to the metastore as its URL says: TLS per `ssl-mode` (with `PREFERRED`
//! connecting in plain to a server that offers none), authentication, and the session settings
//! every statement relies on.
//!
//! The protocol client is `mysql_async`: TLS through rustls with the process's *ring* provider;
//! the authentication plugins `mysql_native_password`, `caching_sha2_password` (MySQL 8's
//! default: without TLS, its full exchange encrypts the password with the RSA key the server
//! sends, as MySQL's own clients do with `--get-server-public-key`) and MariaDB's `ed25519`.
//! Only the verifying TLS modes protect the password from a man in the middle. The client never
//! reaches for the server's Unix socket, and refuses `LOAD DATA LOCAL` (no file handler is set).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::errors::Failure;
use super::url::{MySqlUrl, TlsMode};

/// Session settings for every connection: the character set in which the server reads the
/// bound string parameters (the handshake asks for utf8mb4, but a server may ignore that or
/// change it with `init_connect`); a known `sql_mode` (not strict, so a 4-byte character that a
/// `utf8` column cannot hold becomes `?` instead of failing its batch forever); lock waits
/// shorter than a statement's timeout.
const SESSION_SETUP: &str = "SET NAMES utf8mb4, @@SESSION.sql_mode = 'NO_ENGINE_SUBSTITUTION', \
                             @@SESSION.innodb_lock_wait_timeout = 10, @@SESSION.autocommit = 1";

/// The server name that `VERIFY_CA` checks the certificate's names against, so that no name is
/// required. The client skips a name mismatch when `with_danger_skip_domain_validation` is set
/// and the mismatch error's text contains `NotValidForName`; rustls's text for it is
/// `certificate not valid for name "<this name>"…`, so this name makes the skip apply. The
/// chain is checked against `ssl-ca` before the name, and a certificate that does not chain to
/// it fails with another error. The `.invalid` top-level domain names no real host.
const ANY_NAME: &str = "NotValidForName.invalid";

/// What the server offered the last `PREFERRED` connection. A client that asks a server without
/// TLS for it learns so from the server's greeting and connects again in plain: the server counts
/// one aborted connect for every real one. Remembering the answer spares that for the connections
/// after the first, until a connection fails or is lost (a server restarted with TLS is asked
/// again). `PREFERRED` protects nothing against a server that says it has no TLS anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Offered {
    /// No connection has said yet, or the last one used TLS.
    #[default]
    Unknown,
    /// The last connection's server offered no TLS.
    NoTls,
}

/// Connects to `url`, authenticates and sets the session up, all within `timeout`. `offered`
/// is what the server offered last time, and is updated.
pub async fn connect(
    url: &MySqlUrl,
    timeout: Duration,
    offered: &mut Offered,
) -> Result<Conn, Failure> {
    let preferred = url.tls == TlsMode::Preferred;
    let ssl = match *offered {
        Offered::NoTls if preferred => None,
        _ => ssl_opts(&url.tls)?,
    };
    let plain_fallback = preferred && ssl.is_some();
    let attempt = async {
        let mut no_tls = ssl.is_none() && preferred;
        let mut conn = match Conn::new(options(url, ssl)).await.map_err(Failure::from) {
            Err(e) if plain_fallback && e.is_tls_unavailable() => {
                tracing::debug!(metastore = %url.shown(),
                    "the server offers no TLS; connecting without (ssl-mode PREFERRED)");
                no_tls = true;
                Conn::new(options(url, None)).await?
            }
            other => other?,
        };
        conn.query_drop(SESSION_SETUP).await?;
        Ok((conn, no_tls))
    };
    let connected = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(Failure::Timeout(timeout)));
    *offered = match connected {
        Ok((_, true)) => Offered::NoTls,
        _ => Offered::Unknown,
    };
    connected.map(|(conn, _)| conn)
}

/// The client's options for `url`, with `ssl` as the TLS to ask for.
fn options(url: &MySqlUrl, ssl: Option<SslOpts>) -> OptsBuilder {
    let password = Some(url.password.expose()).filter(|p| !p.is_empty());
    OptsBuilder::default()
        .ip_or_hostname(url.host.as_str())
        .tcp_port(url.port)
        .user(Some(url.user.as_str()))
        .pass(password)
        .db_name(Some(url.database.as_str()))
        .prefer_socket(false)
        .ssl_opts(ssl)
}

/// What the client is told for each mode; `None` for plain TCP. The verifying modes trust the
/// certificates of `ssl-ca` alone.
fn ssl_opts(mode: &TlsMode) -> Result<Option<SslOpts>, Failure> {
    crate::net::tls::ensure_provider();
    let verifying = |ca: &std::path::Path| -> Result<SslOpts, Failure> {
        Ok(SslOpts::default()
            .with_root_certs(vec![ca_file(ca)?.into()])
            .with_disable_built_in_roots(true))
    };
    Ok(match mode {
        TlsMode::Disabled => None,
        TlsMode::Preferred | TlsMode::Required => {
            Some(SslOpts::default().with_danger_accept_invalid_certs(true))
        }
        TlsMode::VerifyCa(ca) => Some(
            verifying(ca)?
                .with_danger_skip_domain_validation(true)
                .with_danger_tls_hostname_override(Some(ANY_NAME)),
        ),
        TlsMode::VerifyIdentity(ca) => Some(verifying(ca)?),
    })
}

/// The contents of the CA file `path`, checked to hold at least one PEM certificate.
fn ca_file(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| Failure::CaFile(format!("cannot read ssl-ca {shown}: {e}")))?;
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| Failure::CaFile(format!("ssl-ca {shown}: {e}")))?;
        certs += 1;
    }
    if certs == 0 {
        return Err(Failure::CaFile(format!(
            "ssl-ca {shown} holds no PEM certificate"
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let message = |mode: TlsMode| match ssl_opts(&mode) {
            Err(Failure::CaFile(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(message(TlsMode::VerifyCa(ca)).contains("no PEM certificate"));
        let missing = TlsMode::VerifyIdentity(dir.path().join("nope.pem"));
        assert!(message(missing).contains("cannot read"));
        assert!(ssl_opts(&TlsMode::Disabled).unwrap().is_none());
    }
}
