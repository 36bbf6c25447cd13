//! Where delivered metrics go: the [`Sink`] trait, and choosing a sink from a `--metastore` URL.
//!
//! A sink applies a batch of [`Item`]s in order and must be idempotent: after a crash the queue
//! delivers again whatever was not acknowledged, so applying the same batch twice must leave the
//! same rows (natural primary keys, `INSERT … ON CONFLICT DO NOTHING`). A sink never knows which
//! file or request an item came from.
//!
//! Sinks: the embedded SQLite metastore ([`super::sqlite`]) and Submarine's MySQL/MariaDB
//! metastore ([`super::mysql`]); `mlflow+http(s)://` is recognised and refused with a clear
//! message until its sink lands. [`choose_metastore`] owns which URL wins when several settings
//! name one. This module never prints and never shows a password (URLs pass through
//! [`redact_url`]).

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::model::Item;
use super::mysql::{MySqlSink, MySqlUrl};
use super::sqlite::SqliteStore;
use crate::error::{Classify, ErrorClass};
use crate::redact::redact_url;

/// The environment variable Submarine sets for its SDK: its MySQL metastore,
/// `mysql+pymysql://user:password@host:3306/submarine`.
pub const SUBMARINE_TRACKING_URI: &str = "SUBMARINE_TRACKING_URI";

/// The metastore URL to use, first match wins: the explicit `--metastore` flag (or
/// `PERISCOPE_METASTORE`, which clap folds into it), then `SUBMARINE_TRACKING_URI` from the
/// environment. `None` means the default embedded SQLite metastore. An empty variable counts as
/// unset, as Kubernetes manifests often set `value: ""`. `env` reads a variable (the process
/// environment in the CLI, a map in tests).
pub fn choose_metastore(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    set(flag.map(str::to_string)).or_else(|| set(env(SUBMARINE_TRACKING_URI)))
}

/// A metastore that accepts items. Implementations keep their connection between calls.
pub trait Sink: Send {
    /// The metastore, for logs (redacted).
    fn describe(&self) -> String;

    /// Applies `items` for `experiment`, all or nothing, in order.
    fn write<'a>(
        &'a mut self,
        experiment: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Checks once, before the pipeline starts, that the metastore takes writes (credentials,
    /// database, tables), so a wrong setting stops the sidecar at once instead of after the job.
    /// Keeps no connection: the pipeline writes from a runtime of its own.
    fn check(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A sink's failure. Invariant: `message` and `hint` hold no secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub class: ErrorClass,
    /// True when trying again later may succeed (the queue keeps the items meanwhile).
    pub transient: bool,
    /// What the user should do, when the sink knows better than its class's generic hint.
    pub hint: Option<String>,
}

impl SinkError {
    /// A failure that trying again later may cure (the pipeline keeps the items and retries).
    pub fn transient(class: ErrorClass, message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            class,
            transient: true,
            hint: None,
        }
    }

    /// A failure that needs the user to act (the sidecar stops with the class's exit code).
    pub fn permanent(class: ErrorClass, message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            class,
            transient: false,
            hint: None,
        }
    }

    /// The same failure with a specific hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl Classify for SinkError {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn hint(&self) -> Option<String> {
        if let Some(hint) = &self.hint {
            return Some(hint.clone());
        }
        match self.class {
            ErrorClass::Usage => Some(
                "use --metastore sqlite:///path/metastore.db (the default is under --state-dir)"
                    .into(),
            ),
            ErrorClass::NotFound => {
                Some("run the sidecar first, or point --metastore at its database".into())
            }
            _ => None,
        }
    }
}

/// A parsed `--metastore` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetastoreUrl {
    /// `sqlite:///abs/path.db` or `sqlite://relative/path.db`.
    Sqlite(PathBuf),
    /// `mysql://user:password@host:port/db` or Submarine's `mysql+pymysql://…`.
    MySql(MySqlUrl),
}

impl MetastoreUrl {
    /// Parses a metastore URL; `mlflow+http(s)` is recognised but not available yet.
    pub fn parse(url: &str) -> Result<MetastoreUrl, SinkError> {
        let usage = |message: String| SinkError::permanent(ErrorClass::Usage, message);
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| usage(format!("`{}` is not a metastore URL", redact_url(url))))?;
        match scheme {
            "sqlite" if !rest.is_empty() => Ok(MetastoreUrl::Sqlite(PathBuf::from(rest))),
            "sqlite" => Err(usage(
                "sqlite:// needs a path: sqlite:///path/metastore.db".into(),
            )),
            "mysql" | "mysql+pymysql" => Ok(MetastoreUrl::MySql(MySqlUrl::parse(url)?)),
            "mlflow+http" | "mlflow+https" => Err(usage(format!(
                "the {scheme} metastore is not available in this build yet ({})",
                redact_url(url)
            ))),
            other => Err(usage(format!(
                "unknown metastore scheme `{other}` in {}",
                redact_url(url)
            ))),
        }
    }

    /// The default metastore: `sqlite://<state_dir>/metastore.db`.
    pub fn default_for(state_dir: &Path) -> MetastoreUrl {
        MetastoreUrl::Sqlite(state_dir.join("metastore.db"))
    }

    /// Opens the sink this URL names.
    pub fn open(&self) -> Result<Box<dyn Sink>, SinkError> {
        match self {
            MetastoreUrl::Sqlite(path) => Ok(Box::new(SqliteStore::open(path)?)),
            MetastoreUrl::MySql(url) => Ok(Box::new(MySqlSink::new(url.clone()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metastore_urls() {
        assert_eq!(
            MetastoreUrl::parse("sqlite:///var/m.db").unwrap(),
            MetastoreUrl::Sqlite("/var/m.db".into())
        );
        assert_eq!(
            MetastoreUrl::parse("sqlite://rel/m.db").unwrap(),
            MetastoreUrl::Sqlite("rel/m.db".into())
        );
        let e = MetastoreUrl::parse("mlflow+http://u:hunter2@db/x").unwrap_err();
        assert_eq!(e.class, ErrorClass::Usage);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(matches!(
            MetastoreUrl::parse("mysql+pymysql://u:hunter2@db/sub").unwrap(),
            MetastoreUrl::MySql(_)
        ));
        assert!(MetastoreUrl::parse("postgres://x").is_err());
        assert!(MetastoreUrl::parse("/just/a/path").is_err());
    }

    #[test]
    fn the_flag_wins_over_submarine_tracking_uri_and_empty_counts_as_unset() {
        let env = |uri: &'static str| {
            move |k: &str| (k == SUBMARINE_TRACKING_URI).then(|| uri.to_string())
        };
        let sub = "mysql+pymysql://u:p@db:3306/submarine";
        assert_eq!(
            choose_metastore(Some("sqlite:///m.db"), &env(sub)).as_deref(),
            Some("sqlite:///m.db")
        );
        assert_eq!(choose_metastore(None, &env(sub)).as_deref(), Some(sub));
        assert_eq!(choose_metastore(Some(""), &env(sub)).as_deref(), Some(sub));
        assert_eq!(choose_metastore(None, &env(" ")), None);
        assert_eq!(choose_metastore(None, &|_: &str| None), None);
    }
}
