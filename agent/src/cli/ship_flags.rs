//! The flags `sidecar` and `run` share (what to ship, where metrics go, how saves go up), and
//! turning them into the sidecar's settings.

use std::path::PathBuf;
use std::time::Duration;

use periscope::artifacts::PushTuning;
use periscope::error::ErrorClass;
use periscope::ship::LogGlob;
use periscope::sidecar::{LogSettings, MetricsSettings};

use super::size::parse_size;
use super::Failure;

/// What to ship and how. Invariant: none until [`ShipFlags::log_settings`] checks the values.
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
    /// The `--logs` globs (empty values dropped) with `extra` first, and how chunks are cut.
    pub fn log_settings(&self, extra: Vec<String>) -> Result<LogSettings, Failure> {
        let globs = extra
            .iter()
            .chain(&self.logs)
            .filter(|g| !g.trim().is_empty())
            .map(|g| LogGlob::new(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Failure::new(
                    ErrorClass::Usage,
                    e.to_string(),
                    Some("quote globs so the shell leaves them alone".into()),
                )
            })?;
        Ok(LogSettings {
            globs,
            chunk_bytes: usize::try_from(self.chunk_bytes.max(1)).unwrap_or(usize::MAX),
            chunk_age: seconds("chunk-age", self.chunk_age)?,
            spool_max_bytes: self.spool_max_bytes,
        })
    }

    /// The `--tfevents` folders, else `$SUBMARINE_TENSORBOARD_LOG_DIR`, else `fallback`.
    pub fn tfevents_dirs(&self, fallback: Option<PathBuf>) -> Vec<PathBuf> {
        let given: Vec<PathBuf> = self
            .tfevents
            .iter()
            .filter(|d| !d.as_os_str().is_empty())
            .cloned()
            .collect();
        if !given.is_empty() {
            return given;
        }
        std::env::var_os("SUBMARINE_TENSORBOARD_LOG_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or(fallback)
            .into_iter()
            .collect()
    }

    /// The metrics settings, with `files` after the `--metrics-file` ones.
    pub fn metrics_settings(&self, code_dir: PathBuf, files: Vec<PathBuf>) -> MetricsSettings {
        MetricsSettings {
            metastore: self.metastore.clone(),
            files: self.metrics_file.iter().cloned().chain(files).collect(),
            code_dir,
            queue_max_bytes: self.metrics_queue_max_bytes,
            default_sqlite: None,
        }
    }

    /// How saves go up.
    pub fn push_tuning(&self) -> PushTuning {
        self.artifacts.tuning.settings()
    }
}
