//! Choosing the metastore from a `--metastore` URL and the standard environment, and opening it.
//!
//! [`MetastoreUrl::choose`] is the one place that decides which metastore a sidecar uses when
//! several settings name one. This module never prints and never shows a password (URLs pass
//! through [`redact_url`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::mlflow::{MlflowSettings, MlflowSink, MlflowUrl};
use super::mysql::{MySqlSink, MySqlUrl};
use super::sink::{Sink, SinkError};
use super::sqlite::SqliteStore;
use crate::error::ErrorClass;
use crate::job::JobIdentity;
use crate::redact::redact_url;

/// The environment variable Submarine sets for its SDK: its MySQL metastore,
/// `mysql+pymysql://user:password@host:3306/submarine`.
pub const SUBMARINE_TRACKING_URI: &str = "SUBMARINE_TRACKING_URI";

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

/// Whether `text` begins like a URL: a letter, then letters, digits, `+`, `-` or `.`, then `:`.
fn begins_like_a_url(text: &str) -> bool {
    text.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// What a sink needs to know about the sidecar that opens it. Invariant: `state_dir` is the
/// sidecar's `--state-dir` (sinks may keep small state files there).
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub state_dir: PathBuf,
    pub identity: JobIdentity,
}

impl MetastoreUrl {
    /// Parses a metastore URL, or a path to the embedded SQLite file. Text that begins like a URL
    /// (`word:`) must be one of the metastore URLs; anything else is a path.
    pub fn parse(url: &str) -> Result<MetastoreUrl, SinkError> {
        let usage = |message: String| SinkError::permanent(ErrorClass::Usage, message);
        if !begins_like_a_url(url) {
            return Ok(MetastoreUrl::Sqlite(PathBuf::from(url)));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            usage(format!(
                "`{}` begins like a URL but is not a metastore URL (scheme://…)",
                redact_url(url)
            ))
        })?;
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
    /// MySQL), then `MLFLOW_TRACKING_URI` when it names an http(s) server, else `default` (the
    /// embedded SQLite file). An empty setting counts as unset, as Kubernetes manifests
    /// often set `value: ""`. `env` reads the environment (a map in tests).
    /// `own` is the sidecar's ingest endpoint: a `MLFLOW_TRACKING_URI` that points back at it
    /// (an environment shared with the training container) is ignored with a warning, since
    /// the sidecar would feed its own queue; a flag that does so is refused.
    pub fn choose(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        default: MetastoreUrl,
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
        Ok(default)
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
        assert_eq!(
            MetastoreUrl::parse("/just/a/path.db").unwrap(),
            MetastoreUrl::Sqlite("/just/a/path.db".into())
        );
        assert_eq!(
            MetastoreUrl::parse("data/m.db").unwrap(),
            MetastoreUrl::Sqlite("data/m.db".into())
        );
        assert!(MetastoreUrl::parse("sqlite:/x.db").is_err());
        assert!(MetastoreUrl::parse("mysq://u@h/db").is_err());
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
        let choose = |flag, uri| MetastoreUrl::choose(flag, env(uri), default.clone(), Some(own));
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
            MetastoreUrl::choose(flag, env, MetastoreUrl::default_for(state), None).unwrap()
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
