//! Where delivered metrics go: the [`Sink`] trait, and choosing a sink from a `--metastore` URL.
//!
//! A sink applies a batch of [`Item`]s in order and must be idempotent: after a crash the queue
//! delivers again whatever was not acknowledged, so applying the same batch twice must leave the
//! same rows (natural primary keys, `INSERT … ON CONFLICT DO NOTHING`). A sink never knows which
//! file or request an item came from.
//!
//! Only the embedded SQLite metastore exists so far; `mysql://` and `mlflow+http(s)://` are
//! recognised and refused with a clear message until their sinks land.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

use super::model::Item;
use super::sqlite::SqliteStore;
use crate::error::{Classify, ErrorClass};
use crate::redact::redact_url;

/// A metastore that accepts items. Implementations keep their connection between calls.
pub trait Sink: Send {
    /// The metastore, for logs (redacted).
    fn describe(&self) -> String;

    /// Applies `items` for `experiment`, in order. After a failure the whole batch is written
    /// again, so a sink that cannot apply it all or nothing (MLflow's several requests) must
    /// make a repeated prefix harmless.
    fn write<'a>(
        &'a mut self,
        experiment: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// How long the metastore asked to wait after the last failed write (HTTP `Retry-After`), if
    /// it said. A method rather than a field of [`SinkError`], so that sinks without such a hint
    /// need nothing.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A sink's failure. Invariant: `message` holds no secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub class: ErrorClass,
    /// True when trying again later may succeed (the queue keeps the items meanwhile).
    pub transient: bool,
}

impl Classify for SinkError {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn hint(&self) -> Option<String> {
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
}

impl MetastoreUrl {
    /// Parses a metastore URL; `mysql`, `mysql+pymysql` and `mlflow+http(s)` are recognised but
    /// not available yet.
    pub fn parse(url: &str) -> Result<MetastoreUrl, SinkError> {
        let usage = |message: String| SinkError {
            message,
            class: ErrorClass::Usage,
            transient: false,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| usage(format!("`{}` is not a metastore URL", redact_url(url))))?;
        match scheme {
            "sqlite" if !rest.is_empty() => Ok(MetastoreUrl::Sqlite(PathBuf::from(rest))),
            "sqlite" => Err(usage(
                "sqlite:// needs a path: sqlite:///path/metastore.db".into(),
            )),
            "mysql" | "mysql+pymysql" | "mlflow+http" | "mlflow+https" => Err(usage(format!(
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
        let e = MetastoreUrl::parse("mysql://u:hunter2@db/sub").unwrap_err();
        assert_eq!(e.class, ErrorClass::Usage);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(MetastoreUrl::parse("postgres://x").is_err());
        assert!(MetastoreUrl::parse("/just/a/path").is_err());
    }
}
