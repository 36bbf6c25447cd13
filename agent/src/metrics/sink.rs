//! Where delivered metrics go: the [`Sink`] trait, and choosing a sink from a `--metastore` URL.
//!
//! A sink applies a batch of [`Item`]s in order and must be idempotent: after a crash the queue
//! delivers again whatever was not acknowledged, so applying the same batch twice must leave the
//! same rows (natural primary keys, `INSERT … ON CONFLICT DO NOTHING`). A sink never knows which
//! file or request an item came from.
//!
//! Sinks: the embedded SQLite metastore (`sqlite://`) and an MLflow tracking server
//! (`mlflow+http(s)://`, see [`mlflow`](super::mlflow)); `mysql://` is recognised and refused with
//! a clear message until its sink lands. [`MetastoreUrl::choose`] is the one place that decides
//! which metastore a sidecar uses when no URL is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

use super::mlflow::{MlflowSettings, MlflowSink, MlflowUrl};
use super::model::Item;
use super::sqlite::SqliteStore;
use crate::error::{Classify, ErrorClass};
use crate::job::JobIdentity;
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
    /// `mlflow+http(s)://HOST:PORT[/prefix]`, or `MLFLOW_TRACKING_URI`'s `http(s)://…`.
    Mlflow(MlflowUrl),
}

/// What a sink needs to know about the sidecar that opens it. Invariant: `state_dir` is the
/// sidecar's `--state-dir` (sinks may keep small state files there).
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub state_dir: PathBuf,
    pub identity: JobIdentity,
}

impl MetastoreUrl {
    /// Parses a metastore URL; `mysql` and `mysql+pymysql` are recognised but not available yet.
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
            "mlflow+http" | "mlflow+https" => Ok(MetastoreUrl::Mlflow(MlflowUrl::parse(
                url.trim_start_matches("mlflow+"),
            )?)),
            "mysql" | "mysql+pymysql" => Err(usage(format!(
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

    /// The sidecar's metastore: the explicit `--metastore` URL (`flag`, which clap also fills
    /// from `PERISCOPE_METASTORE`), else `MLFLOW_TRACKING_URI` when it names an http(s)
    /// server, else the default SQLite file under `state_dir`. `env` reads the environment.
    /// `own` is the sidecar's ingest endpoint: a `MLFLOW_TRACKING_URI` that points back at it
    /// (an environment shared with the training container) is ignored with a warning, since
    /// the sidecar would feed its own queue; a flag that does so is refused.
    pub fn choose(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        state_dir: &Path,
        own: Option<SocketAddr>,
    ) -> Result<MetastoreUrl, SinkError> {
        let loops = |url: &MetastoreUrl| matches!((url, own), (MetastoreUrl::Mlflow(u), Some(addr)) if u.is_endpoint(addr));
        if let Some(flag) = flag {
            let url = MetastoreUrl::parse(flag)?;
            if loops(&url) {
                return Err(SinkError {
                    message: format!(
                        "--metastore {} is this sidecar's own MLflow endpoint (--listen); point                          it at the MLflow tracking server",
                        redact_url(flag)
                    ),
                    class: ErrorClass::Usage,
                    transient: false,
                });
            }
            return Ok(url);
        }
        // SUBMARINE_TRACKING_URI (Submarine's MySQL) takes precedence over MLflow's variable
        // when it is set.
        if let Some(uri) = env("MLFLOW_TRACKING_URI").filter(|v| !v.trim().is_empty()) {
            let uri = uri.trim();
            let http = uri.starts_with("http://") || uri.starts_with("https://");
            match MlflowUrl::parse(uri).map(MetastoreUrl::Mlflow) {
                Ok(url) if !loops(&url) => return Ok(url),
                Ok(_) => tracing::warn!(uri = %redact_url(uri),
                    "MLFLOW_TRACKING_URI points at this sidecar's own endpoint; ignored"),
                // A malformed http(s) URL is a mistake to report; `databricks`, `file:` and
                // the like are forms Periscope does not write to.
                Err(e) if http => return Err(e),
                Err(_) => tracing::warn!(uri = %redact_url(uri),
                    "MLFLOW_TRACKING_URI is not an http(s) tracking server; ignored"),
            }
        }
        Ok(MetastoreUrl::default_for(state_dir))
    }

    /// Opens the sink this URL names. The MLflow sink reads MLflow's standard variables
    /// (credentials, experiment name, run id) from the process environment.
    pub fn open(&self, ctx: &SinkContext) -> Result<Box<dyn Sink>, SinkError> {
        match self {
            MetastoreUrl::Sqlite(path) => Ok(Box::new(SqliteStore::open(path)?)),
            MetastoreUrl::Mlflow(url) => {
                let settings = MlflowSettings::from_env(
                    url.clone(),
                    ctx.state_dir.clone(),
                    ctx.identity.worker.clone(),
                    |k| std::env::var(k).ok(),
                )?;
                Ok(Box::new(MlflowSink::open(settings)?))
            }
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
        assert_eq!(
            MetastoreUrl::parse("mlflow+https://mlflow.example/prefix").unwrap(),
            MetastoreUrl::Mlflow(MlflowUrl::parse("https://mlflow.example/prefix").unwrap())
        );
        assert!(MetastoreUrl::parse("mlflow+http://").is_err());
        let e = MetastoreUrl::parse("mlflow+http://u:hunter2@h:5000").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
    }

    #[test]
    fn the_flag_wins_then_mlflow_tracking_uri_then_the_default() {
        let state = Path::new("/state");
        let own: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let env = |uri: Option<&'static str>| {
            move |k: &str| match k {
                "MLFLOW_TRACKING_URI" => uri.map(String::from),
                _ => None,
            }
        };
        let mlflow = |u: &str| MetastoreUrl::Mlflow(MlflowUrl::parse(u).unwrap());
        let default = MetastoreUrl::default_for(state);
        let choose = |flag, uri| MetastoreUrl::choose(flag, env(uri), state, Some(own));
        assert_eq!(
            choose(Some("sqlite:///x.db"), Some("http://m:5000")).unwrap(),
            MetastoreUrl::Sqlite("/x.db".into())
        );
        assert_eq!(
            choose(None, Some("http://m:5000")).unwrap(),
            mlflow("http://m:5000")
        );
        assert_eq!(choose(None, None).unwrap(), default);
        assert_eq!(choose(None, Some("databricks")).unwrap(), default);
        assert_eq!(choose(None, Some("  ")).unwrap(), default);
        // Pointing back at the sidecar's own endpoint would loop.
        assert_eq!(
            choose(None, Some("http://127.0.0.1:9090")).unwrap(),
            default
        );
        assert!(choose(Some("mlflow+http://localhost:9090"), None).is_err());
        assert!(choose(None, Some("http://:bad")).is_err());
    }
}
