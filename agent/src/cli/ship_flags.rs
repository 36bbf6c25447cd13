//! The flags `sidecar` and `run` share (what to ship, where metrics go, how saves go up), and
//! turning them into the sidecar's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use periscope::error::ErrorClass;
use periscope::job::JobIdentity;
use periscope::lifecycle::Lifecycle;
use periscope::ship::LogGlob;
use periscope::sidecar::{Limits, LogSettings, MetricsSettings, Settings};
use url::Url;

use super::size::parse_size;
use super::Failure;

/// What to ship and how. Invariant: none until [`ShipFlags::settings`] checks the values.
#[derive(clap::Args)]
pub struct ShipFlags {
    /// Log files to follow (globs, repeatable; `**` matches folders). Quote them.
    #[arg(
        long = "logs",
        env = "PERISCOPE_LOGS",
        value_delimiter = ' ',
        value_name = "GLOB"
    )]
    pub logs: Vec<String>,
    /// Folders whose TensorBoard event files are mirrored to <URL>/<experiment>/<worker>/tfevents/
    /// and whose scalars become metrics (repeatable). [default: $SUBMARINE_TENSORBOARD_LOG_DIR]
    #[arg(
        long = "tfevents",
        env = "PERISCOPE_TFEVENTS",
        value_delimiter = ' ',
        value_name = "DIR"
    )]
    pub tfevents: Vec<PathBuf>,
    /// Least seconds between two uploads of a growing event file (always one more when draining).
    #[arg(long, env = "PERISCOPE_TFEVENTS_INTERVAL", default_value_t = 10.0)]
    pub tfevents_interval: f64,
    /// Ship a chunk when this many bytes of a log are buffered.
    #[arg(long, env = "PERISCOPE_CHUNK_BYTES", default_value = "8MiB", value_parser = parse_size)]
    pub chunk_bytes: u64,
    /// Ship a chunk when its oldest byte is this many seconds old.
    #[arg(long, env = "PERISCOPE_CHUNK_AGE", default_value_t = 5.0)]
    pub chunk_age: f64,
    /// Most bytes held in memory while storage is failing (the files hold the rest).
    #[arg(long, env = "PERISCOPE_SPOOL_MAX_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub spool_max_bytes: u64,
    /// Seconds between checks of the files when no change notification arrives.
    #[arg(long, env = "PERISCOPE_POLL_INTERVAL", default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Seconds the worker's folder stays this sidecar's without a renewal (renewed every third of
    /// it). A pod that replaces one SIGKILLed or lost with its node takes the folder over once
    /// this long has passed without one; one that ended failed or stopped, at once.
    #[arg(long, env = "PERISCOPE_CLAIM_LEASE", default_value_t = 30.0)]
    pub claim_lease: f64,
    /// Metastore for tracking metrics: sqlite:///path/metastore.db (embedded); Submarine's
    /// MySQL/MariaDB as mysql://user:password@host:3306/db or mysql+pymysql://… (TLS with
    /// ?ssl-mode=REQUIRED, VERIFY_CA or VERIFY_IDENTITY and ssl-ca=FILE); or an MLflow tracking
    /// server, mlflow+http://HOST:PORT[/prefix] or mlflow+https://… (one run per worker in
    /// experiment $MLFLOW_EXPERIMENT_NAME, default the experiment id, or the run $MLFLOW_RUN_ID;
    /// credentials from $MLFLOW_TRACKING_TOKEN or $MLFLOW_TRACKING_USERNAME/PASSWORD, a private
    /// CA from $MLFLOW_TRACKING_SERVER_CERT_PATH). [default: $SUBMARINE_TRACKING_URI when set,
    /// else $MLFLOW_TRACKING_URI when it is an http(s) URL, else the embedded SQLite file]
    #[arg(long, env = "PERISCOPE_METASTORE", value_name = "URL")]
    pub metastore: Option<String>,
    /// A JSONL file of metrics to follow, one {"key", "value", "step", "timestamp"} per line
    /// (timestamp in ms since the epoch; NaN/Infinity allowed). Repeatable.
    #[arg(
        long = "metrics-file",
        env = "PERISCOPE_METRICS_FILE",
        value_name = "PATH"
    )]
    pub metrics_file: Vec<PathBuf>,
    /// Most undelivered metrics kept on disk; when full, sources pause until the metastore
    /// catches up.
    #[arg(long, env = "PERISCOPE_METRICS_QUEUE_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub metrics_queue_max_bytes: u64,
    #[command(flatten)]
    pub artifacts: super::save_flags::ArtifactsFlags,
    /// Seconds a request's headers may take on the MLflow-compatible endpoint (and a kept-alive
    /// connection may wait for its next request).
    #[arg(long, env = "PERISCOPE_MLFLOW_HEADER_TIMEOUT", default_value_t = 10.0)]
    pub mlflow_header_timeout: f64,
    /// Seconds a request's body may take to arrive on the MLflow-compatible endpoint.
    #[arg(long, env = "PERISCOPE_MLFLOW_BODY_TIMEOUT", default_value_t = 30.0)]
    pub mlflow_body_timeout: f64,
    /// Seconds a connection to the MLflow-compatible endpoint may stay without any traffic.
    #[arg(long, env = "PERISCOPE_MLFLOW_IDLE_TIMEOUT", default_value_t = 30.0)]
    pub mlflow_idle_timeout: f64,
    /// Most connections the MLflow-compatible endpoint serves at once; more wait to be accepted.
    #[arg(long, env = "PERISCOPE_MLFLOW_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub mlflow_max_connections: u16,
}

/// A positive number of seconds as a duration, or a usage failure naming the flag.
pub fn seconds(name: &str, value: f64) -> Result<Duration, Failure> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Failure::new(
            ErrorClass::Usage,
            format!("--{name} must be a positive number of seconds"),
            None,
        ))
    }
}

impl ShipFlags {
    /// A sidecar's settings from these flags and the command's own (`storage`, the probes' and
    /// the MLflow endpoint's addresses, `drain_timeout`). Every flag is checked before `identity` is asked for, last (claiming an
    /// identity may make a folder). Folders of the command's own (state, exit-code file) and the
    /// code revision are the caller's to fill in.
    pub fn settings(
        &self,
        storage: Url,
        (listen, mlflow_listen): (SocketAddr, SocketAddr),
        drain_timeout: f64,
        identity: impl FnOnce() -> Result<JobIdentity, Failure>,
    ) -> Result<Settings, Failure> {
        let drain_timeout = seconds("drain-timeout", drain_timeout)?;
        let globs = (self.logs.iter())
            .filter(|g| !g.trim().is_empty())
            .map(|g| LogGlob::new(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                let hint = "quote globs so the shell leaves them alone";
                Failure::new(ErrorClass::Usage, e.to_string(), Some(hint.into()))
            })?;
        let logs = LogSettings {
            globs,
            chunk_bytes: usize::try_from(self.chunk_bytes.max(1)).unwrap_or(usize::MAX),
            chunk_age: seconds("chunk-age", self.chunk_age)?,
            spool_max_bytes: self.spool_max_bytes,
        };
        let poll_interval = seconds("poll-interval", self.poll_interval)?;
        let lifecycle = Lifecycle {
            poll_interval,
            drain_timeout,
            exit_when_file: None,
        };
        let tfevents_interval = seconds("tfevents-interval", self.tfevents_interval)?;
        let mlflow_limits = Limits {
            header_timeout: seconds("mlflow-header-timeout", self.mlflow_header_timeout)?,
            body_timeout: seconds("mlflow-body-timeout", self.mlflow_body_timeout)?,
            idle_timeout: seconds("mlflow-idle-timeout", self.mlflow_idle_timeout)?,
            max_connections: usize::from(self.mlflow_max_connections),
        };
        let claim_lease = seconds("claim-lease", self.claim_lease)?;
        Ok(Settings {
            identity: identity()?,
            storage,
            state_dir: PathBuf::new(),
            logs,
            tfevents: self.tfevents_dirs(),
            tfevents_search: None,
            tfevents_interval,
            lifecycle,
            listen,
            mlflow_listen,
            mlflow_limits,
            metrics: MetricsSettings {
                metastore: self.metastore.clone(),
                files: self.metrics_file.clone(),
                code: Vec::new(),
                queue_max_bytes: self.metrics_queue_max_bytes,
                default_sqlite: None,
            },
            artifacts: self.artifacts.dirs(),
            push: self.artifacts.tuning.settings(),
            saves: self.artifacts.schedule.settings(poll_interval),
            late_delivery: drain_timeout,
            claim_lease,
            claim_first: false,
        })
    }

    /// The `--tfevents` folders, else `$SUBMARINE_TENSORBOARD_LOG_DIR`, else none.
    fn tfevents_dirs(&self) -> Vec<PathBuf> {
        let given: Vec<PathBuf> = (self.tfevents.iter())
            .filter(|d| !d.as_os_str().is_empty())
            .cloned()
            .collect();
        if !given.is_empty() {
            return given;
        }
        std::env::var_os("SUBMARINE_TENSORBOARD_LOG_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .collect()
    }
}

/// `run`'s shipping flags (those `sidecar` has too) and `--restore` (which `sidecar` has not).
#[derive(clap::Args)]
pub struct ShipRestoreFlags {
    #[command(flatten)]
    pub ship: ShipFlags,
    #[command(flatten)]
    pub restore: super::save_flags::RestoreFlag,
}
