//! Failures talking to the MySQL metastore, sorted for the pipeline: a lost connection, a
//! timeout, a lock wait timeout, a deadlock, a server going away or restarting are transient
//! (the queue keeps the items and the batch is retried on a new connection); refused
//! credentials, an unknown database, missing tables and TLS that cannot be had as the URL asks
//! are permanent, with a hint saying what to do. No message holds the password: the client's
//! errors carry the server's words, never what the client sent.

use std::time::Duration;

use mysql_async::{DriverError, IoError};

use super::url::TlsMode;
use crate::error::ErrorClass;
use crate::metrics::sink::SinkError;

/// A failure of a connection or a statement. Invariant: holds no password.
#[derive(Debug)]
pub enum Failure {
    /// What the client reported (the server's errors included).
    Client(mysql_async::Error),
    /// No answer within the limit.
    Timeout(Duration),
    /// `ssl-ca` cannot be used: unreadable, or no PEM certificate in it.
    CaFile(String),
}

impl From<mysql_async::Error> for Failure {
    fn from(e: mysql_async::Error) -> Self {
        Failure::Client(e)
    }
}

impl Failure {
    /// Whether the connection must be dropped: its state is unknown after anything but an error
    /// the server reported.
    pub fn breaks_connection(&self) -> bool {
        !matches!(self, Failure::Client(mysql_async::Error::Server(_)))
    }

    /// Whether a row's parent is missing (a metric or param row whose experiment row is gone).
    pub fn is_missing_row(&self) -> bool {
        matches!(self, Failure::Client(mysql_async::Error::Server(s)) if s.code == 1452)
    }

    /// Whether the server has no TLS to offer (what `PREFERRED` connects in plain after).
    pub fn is_tls_unavailable(&self) -> bool {
        matches!(
            self,
            Failure::Client(mysql_async::Error::Driver(
                DriverError::NoClientSslFlagFromServer
            ))
        )
    }
}

/// The TLS error inside an I/O error, which is how a failed handshake arrives.
fn tls_cause(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Sorts `e` into transient or permanent, with the class and hint the user needs; `context`
/// says what was being done, `tls` what the URL asked for.
pub fn classify(e: &Failure, tls: &TlsMode, context: &str) -> SinkError {
    let credentials = "check the user and password in the metastore URL (or its Secret) and that \
                       the user may SELECT, INSERT, UPDATE and DELETE on the database's \
                       experiment, metric and param tables";
    let tables = "create Submarine's tables (experiment, metric, param) in that database with \
                  Submarine's schema (its submarine.sql)";
    let ca_hint = "ssl-ca must name a readable PEM file with the CA's certificate";
    let mode = tls.name();
    let client = match e {
        Failure::Timeout(limit) => {
            return SinkError::transient(
                ErrorClass::Network,
                format!("{context}: the server did not answer within {limit:?}"),
            )
        }
        Failure::CaFile(why) => {
            return SinkError::permanent(ErrorClass::Usage, format!("{context}: {why}"))
                .with_hint(ca_hint)
        }
        Failure::Client(e) => e,
    };
    match client {
        mysql_async::Error::Server(s) => {
            let message = format!(
                "{context}: server error {} ({}): {}",
                s.code, s.state, s.message
            );
            match s.code {
                // Access denied (to the server, the database, a table or column); a password
                // that expired or must be reset; an account locked; an unsupported auth protocol.
                1044 | 1045 | 1142 | 1143 | 1227 | 1251 | 1698 | 1820 | 1862 | 3118 | 4151 => {
                    SinkError::permanent(ErrorClass::Auth, message).with_hint(credentials)
                }
                1049 => SinkError::permanent(ErrorClass::NotFound, message).with_hint(
                    "create the database, or fix its name in the metastore URL (the path after \
                     host:port)",
                ),
                // No such table or column: not Submarine's schema.
                1146 | 1054 => SinkError::permanent(ErrorClass::NotFound, message).with_hint(tables),
                // Syntax errors and rejected values are bugs in this module: retrying cannot help.
                1064 | 1264 | 1292 | 1366 | 1406 => {
                    SinkError::permanent(ErrorClass::Internal, message)
                }
                // Lock wait timeout, deadlock, too many connections, server shutting down, query
                // killed, read-only during a failover, …: they pass.
                _ => SinkError::transient(ErrorClass::Network, message),
            }
        }
        mysql_async::Error::Io(IoError::Io(io)) => match tls_cause(io) {
            Some(cause) => {
                let message = format!("{context}: TLS with the server failed ({mode}): {cause}");
                if tls.verifies() {
                    SinkError::permanent(ErrorClass::Auth, message).with_hint(
                        "check that ssl-ca is the CA that signed the server's certificate and, \
                         for VERIFY_IDENTITY, that the certificate names the host in the URL",
                    )
                } else {
                    // No certificate is checked in the other modes: the two sides found no
                    // common TLS.
                    SinkError::permanent(ErrorClass::Network, message).with_hint(
                        "the server's TLS could not be negotiated (TLS 1.2 or newer is needed): \
                         update the server's TLS settings, or use ssl-mode=DISABLED on a trusted \
                         network",
                    )
                }
            }
            None => SinkError::transient(
                ErrorClass::Network,
                format!("{context}: the connection to the server failed: {io}"),
            ),
        },
        // Building the TLS client from ssl-ca (a certificate rustls cannot use) or the host name.
        mysql_async::Error::Io(IoError::Tls(t)) => SinkError::permanent(
            ErrorClass::Usage,
            format!("{context}: TLS settings ({mode}): {t}"),
        )
        .with_hint(ca_hint),
        mysql_async::Error::Driver(d) => match d {
            DriverError::ConnectionClosed => SinkError::transient(
                ErrorClass::Network,
                format!("{context}: the server closed the connection"),
            ),
            DriverError::NoClientSslFlagFromServer => SinkError::permanent(
                ErrorClass::Auth,
                format!("{context}: ssl-mode {mode} needs TLS, and the server does not offer it"),
            )
            .with_hint(
                "configure TLS on the server (ssl_cert, ssl_key), or lower ssl-mode in the \
                 metastore URL if the network is trusted",
            ),
            DriverError::UnknownAuthPlugin { .. }
            | DriverError::MysqlOldPasswordDisabled
            | DriverError::CleartextPluginDisabled => SinkError::permanent(
                ErrorClass::Auth,
                format!("{context}: the server asks for an authentication Periscope does not speak: {d}"),
            )
            .with_hint(
                "give the metastore user caching_sha2_password, mysql_native_password or \
                 (MariaDB) ed25519 (ALTER USER … IDENTIFIED WITH …)",
            ),
            // Replies that are not MySQL's protocol.
            _ => SinkError::permanent(ErrorClass::Network, format!("{context}: {d}"))
                .with_hint("check that the metastore URL points at a MySQL or MariaDB server"),
        },
        other => SinkError::permanent(ErrorClass::Internal, format!("{context}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> Failure {
        Failure::Client(mysql_async::Error::Server(mysql_async::ServerError {
            code,
            state: "HY000".into(),
            message: "m".into(),
        }))
    }

    #[test]
    fn failures_are_sorted_into_transient_and_permanent() {
        let mode = TlsMode::Preferred;
        let c = classify(&server(1045), &mode, "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Auth, false));
        assert!(c.hint.is_some());
        let c = classify(&server(1146), &mode, "x");
        assert_eq!((c.class, c.transient), (ErrorClass::NotFound, false));
        assert!(c.hint.unwrap().contains("create Submarine's tables"));
        for code in [1205, 1213, 1040, 1053, 1927] {
            assert!(classify(&server(code), &mode, "x").transient, "{code}");
            assert!(!server(code).breaks_connection());
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let io = Failure::Client(reset.into());
        assert!(classify(&io, &mode, "x").transient && io.breaks_connection());
        assert!(classify(&Failure::Timeout(Duration::from_secs(1)), &mode, "x").transient);
        let closed = Failure::Client(mysql_async::Error::Driver(DriverError::ConnectionClosed));
        assert!(classify(&closed, &mode, "x").transient);
        // TLS: a certificate the CA does not vouch for is an auth failure; no common protocol
        // in the unverified modes is not about the CA.
        let handshake = || {
            let cause = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, cause);
            Failure::Client(io.into())
        };
        let c = classify(
            &handshake(),
            &TlsMode::VerifyIdentity("/ca.pem".into()),
            "x",
        );
        assert_eq!((c.class, c.transient), (ErrorClass::Auth, false));
        assert!(c
            .message
            .contains("TLS with the server failed (VERIFY_IDENTITY)"));
        assert!(c.hint.unwrap().contains("ssl-ca"));
        let c = classify(&handshake(), &TlsMode::Required, "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Network, false));
        assert!(c.hint.unwrap().contains("ssl-mode=DISABLED"));
        let none = Failure::Client(mysql_async::Error::Driver(
            DriverError::NoClientSslFlagFromServer,
        ));
        assert!(none.is_tls_unavailable());
        let c = classify(&none, &TlsMode::Required, "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Auth, false));
        assert!(c.message.contains("ssl-mode REQUIRED needs TLS"));
        let c = classify(&Failure::CaFile("no PEM".into()), &mode, "x");
        assert_eq!((c.class, c.transient), (ErrorClass::Usage, false));
    }
}
