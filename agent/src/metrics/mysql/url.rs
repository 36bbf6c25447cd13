//! The metastore URL, `mysql://user:password@host:3306/database` or Submarine's
//! `mysql+pymysql://…`, and the TLS it asks for.
//!
//! The TLS options are MySQL's own (`ssl-mode`, `ssl-ca`, also in PyMySQL's and JDBC's
//! spellings), with MySQL's meanings, so a URL copied from a MySQL client behaves the same:
//! `PREFERRED` (the default) encrypts when the server offers TLS and checks no certificate, as
//! MySQL servers ship with self-signed ones, and connects in plain when it does not; `REQUIRED`
//! refuses a server without TLS but checks no certificate either; `VERIFY_CA` checks the chain
//! against `ssl-ca`; `VERIFY_IDENTITY` also checks that the certificate names the host. Only the
//! verifying modes protect the password against a man in the middle.
//!
//! This module does no I/O: [`super::connection`] reads `ssl-ca` when it connects.

use std::path::PathBuf;

use crate::error::ErrorClass;
use crate::metrics::sink::SinkError;
use crate::redact::{redact_url, Secret};

/// MySQL's port when the URL names none.
const DEFAULT_PORT: u16 = 3306;

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
            (Some("VERIFY_CA" | "VERIFY_IDENTITY"), None) => Err(
                "ssl-mode VERIFY_CA and VERIFY_IDENTITY need ssl-ca=PATH (the CA's PEM file)"
                    .into(),
            ),
            (Some("DISABLED" | "PREFERRED" | "REQUIRED"), Some(_)) => {
                Err("ssl-ca is only checked by ssl-mode VERIFY_CA or VERIFY_IDENTITY".into())
            }
            (Some(other), _) => Err(format!(
                "ssl-mode {other} is not one of DISABLED, PREFERRED, REQUIRED, VERIFY_CA, \
                 VERIFY_IDENTITY"
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

    /// Whether the server's certificate is checked against a CA.
    pub fn verifies(&self) -> bool {
        matches!(self, TlsMode::VerifyCa(_) | TlsMode::VerifyIdentity(_))
    }
}

/// A parsed `mysql://` or `mysql+pymysql://` metastore URL. Invariant: `shown` is redacted, the
/// password lives only in `password`, and `user` and `database` are not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MySqlUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub database: String,
    pub tls: TlsMode,
    shown: String,
}

impl MySqlUrl {
    /// Parses `mysql[+pymysql]://user[:password]@host[:port]/database[?options]`. User,
    /// password and database may be percent-encoded. Options: `ssl-mode` and `ssl-ca` (see the
    /// module); other TLS options (client certificates) are refused, so that a URL asking for
    /// them never connects without; anything else (`charset=…`) is ignored.
    pub fn parse(raw: &str) -> Result<MySqlUrl, SinkError> {
        let shown = redact_url(raw);
        let usage = |why: &str| {
            SinkError::permanent(ErrorClass::Usage, format!("metastore URL {shown}: {why}"))
                .with_hint("write it as mysql://user:password@host:3306/database")
        };
        let url = url::Url::parse(raw).map_err(|e| usage(&e.to_string()))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| usage("user, password and database must be UTF-8"))
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| usage("no host"))?
            // An IPv6 literal is written in brackets in a URL, and connected to without them.
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = decode(url.username())?;
        if user.is_empty() {
            return Err(usage("no user"));
        }
        let password = Secret::new(decode(url.password().unwrap_or_default())?);
        let database = decode(url.path().trim_start_matches('/'))?;
        if database.is_empty() || database.contains('/') {
            return Err(usage("the path must be the database name"));
        }
        let (mut ssl_mode, mut ssl_ca) = (None, None);
        for (key, value) in url.query_pairs() {
            match key.to_ascii_lowercase().replace('_', "-").as_str() {
                "ssl-mode" | "sslmode" => ssl_mode = Some(value.into_owned()),
                "ssl-ca" | "sslca" => ssl_ca = Some(PathBuf::from(value.as_ref())),
                k if k.starts_with("ssl") || k.starts_with("tls") => {
                    return Err(SinkError::permanent(
                        ErrorClass::Usage,
                        format!("metastore URL {shown}: `{key}` is not supported"),
                    )
                    .with_hint(
                        "TLS takes ssl-mode=DISABLED|PREFERRED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY \
                         and ssl-ca=PATH; client certificates are not supported",
                    ));
                }
                _ => tracing::debug!(option = %key, "metastore URL option ignored"),
            }
        }
        let tls = TlsMode::from_options(ssl_mode.as_deref(), ssl_ca).map_err(|why| usage(&why))?;
        Ok(MySqlUrl {
            host,
            port: url.port().unwrap_or(DEFAULT_PORT),
            user,
            password,
            database,
            tls,
            shown,
        })
    }

    /// The URL with its password hidden.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_both_forms_keep_the_password_out_of_sight() {
        let u = MySqlUrl::parse("mysql+pymysql://sub:p%40ss@db.ns:3307/submarine?charset=utf8mb4")
            .unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str()),
            ("db.ns", 3307, "sub")
        );
        assert_eq!(u.password.expose(), "p@ss");
        assert_eq!(u.database, "submarine");
        assert!(!u.shown().contains("p%40ss") && !format!("{u:?}").contains("p@ss"));
        let u = MySqlUrl::parse("mysql://root@127.0.0.1/m").unwrap();
        assert_eq!((u.port, u.password.expose()), (3306, ""));
        let u = MySqlUrl::parse("mysql://root@[::1]:3306/m").unwrap();
        assert_eq!(u.host, "::1");
        for bad in [
            "mysql://u:hunter2@h/",
            "mysql://:hunter2@h/db",
            "mysql://u:hunter2@h/db?ssl-mode=VERIFY_IDENTITY",
            "mysql://u:hunter2@h/db?ssl_cert=/client.pem",
        ] {
            let e = MySqlUrl::parse(bad).unwrap_err();
            assert_eq!(e.class, ErrorClass::Usage, "{bad}");
            assert!(!e.message.contains("hunter2"), "{}", e.message);
        }
        // TLS options in MySQL's, PyMySQL's and JDBC's spellings.
        let tls = |raw: &str| MySqlUrl::parse(raw).unwrap().tls;
        assert_eq!(tls("mysql://u@h/db"), TlsMode::Preferred);
        assert_eq!(
            tls("mysql+pymysql://u@h/db?ssl_ca=/ca.pem"),
            TlsMode::VerifyCa("/ca.pem".into())
        );
        assert_eq!(
            tls("mysql://u@h/db?ssl-mode=verify_identity&ssl-ca=/ca.pem"),
            TlsMode::VerifyIdentity("/ca.pem".into())
        );
        assert_eq!(tls("mysql://u@h/db?sslMode=DISABLED"), TlsMode::Disabled);
    }

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
        assert!(TlsMode::VerifyCa("/ca.pem".into()).verifies() && !TlsMode::Required.verifies());
    }
}
