//! Where delivered metrics go: the [`Sink`] trait, and choosing a sink from a `--metastore` URL.
//!
//! A sink applies a batch of [`Item`]s in order and must be idempotent: after a crash the queue
//! delivers again whatever was not acknowledged, so applying the same batch twice must leave the
//! same rows (natural primary keys, `INSERT … ON CONFLICT DO NOTHING`). A sink never knows which
//! file or request an item came from.
//!
//! Sinks: the embedded SQLite metastore ([`super::sqlite`]), Submarine's MySQL/MariaDB metastore
//! ([`super::mysql`]) and an MLflow tracking server ([`super::mlflow`]).
//! [`MetastoreUrl::choose`] is the one place that decides which metastore a sidecar uses when
//! several settings name one. This module never prints and never shows a password (URLs pass
//! through [`redact_url`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

use super::mlflow::{MlflowSettings, MlflowSink, MlflowUrl};
use super::model::Item;
use super::mysql::{MySqlSink, MySqlUrl};
use super::sqlite::SqliteStore;
use crate::error::{Classify, ErrorClass};
use crate::job::JobIdentity;
use crate::redact::redact_url;

/// The environment variable Submarine sets for its SDK: its MySQL metastore,
/// `mysql+pymysql://user:password@host:3306/submarine`.
pub const SUBMARINE_TRACKING_URI: &str = "SUBMARINE_TRACKING_URI";

/// A metastore that accepts items. Implementations keep their connection between calls.
pub trait Sink: Send {
    /// The metastore, for logs (redacted).
    fn describe(&self) -> String;

    /// Applies `items` for `experiment`, in order. After a failure the whole batch is written
    /// again, so a sink that cannot apply it all or nothing (MLflow's several requests) must
    /// make a repeated prefix harmless.
    /// The pipeline calls it from a delivery thread of its own, so the future may block (as
    /// SQLite's does) without delaying sources or ingest; it may also be dropped unfinished at a
    /// stop, and the batch is written again on the next start.
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
    /// Parses a metastore URL.
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
            "mlflow+http" | "mlflow+https" => Ok(MetastoreUrl::Mlflow(MlflowUrl::parse(
                url.trim_start_matches("mlflow+"),
            )?)),
            "mysql" | "mysql+pymysql" => Ok(MetastoreUrl::MySql(MySqlUrl::parse(url)?)),
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

    /// The sidecar's metastore, first match wins: the explicit `--metastore` URL (`flag`, which
    /// clap also fills from `PERISCOPE_METASTORE`), then `SUBMARINE_TRACKING_URI` (Submarine's
    /// MySQL), then `MLFLOW_TRACKING_URI` when it names an http(s) server, else the default
    /// SQLite file under `state_dir`. An empty setting counts as unset, as Kubernetes manifests
    /// often set `value: ""`. `env` reads the environment (a map in tests).
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
        if let Some(flag) = flag.filter(|f| !f.trim().is_empty()) {
            let url = MetastoreUrl::parse(flag.trim())?;
            if loops(&url) {
                return Err(SinkError::permanent(
                    ErrorClass::Usage,
                    format!(
                        "--metastore {} is this sidecar's own MLflow endpoint (--listen); point \
                         it at the MLflow tracking server",
                        redact_url(flag)
                    ),
                ));
            }
            return Ok(url);
        }
        if let Some(uri) = env(SUBMARINE_TRACKING_URI).filter(|v| !v.trim().is_empty()) {
            return MetastoreUrl::parse(uri.trim());
        }
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

    #[test]
    fn submarine_tracking_uri_comes_after_the_flag_and_before_mlflow_and_empty_is_unset() {
        const SUB: &str = "mysql+pymysql://u:p@db:3306/submarine";
        const BOTH: &[(&str, &str)] = &[
            (SUBMARINE_TRACKING_URI, SUB),
            ("MLFLOW_TRACKING_URI", "http://m:5000"),
        ];
        const BLANK_SUB: &[(&str, &str)] = &[
            (SUBMARINE_TRACKING_URI, " "),
            ("MLFLOW_TRACKING_URI", "http://m:5000"),
        ];
        let state = Path::new("/state");
        let choose = |flag, vars: &'static [(&'static str, &'static str)]| {
            let env = move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            };
            MetastoreUrl::choose(flag, env, state, None).unwrap()
        };
        assert_eq!(
            choose(Some("sqlite:///m.db"), BOTH),
            MetastoreUrl::Sqlite("/m.db".into())
        );
        assert_eq!(choose(None, BOTH), MetastoreUrl::parse(SUB).unwrap());
        assert_eq!(choose(Some(""), BOTH), MetastoreUrl::parse(SUB).unwrap());
        assert_eq!(
            choose(None, BLANK_SUB),
            MetastoreUrl::parse("mlflow+http://m:5000").unwrap()
        );
        assert_eq!(choose(None, &[]), MetastoreUrl::default_for(state));
    }
}
