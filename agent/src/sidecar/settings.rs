//! A sidecar's settings, as plain values: what `sidecar`'s and `run`'s flags and defaults
//! become, and all [`super::Sidecar::start`] needs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::artifacts::{PushTuning, Schedule};
use crate::job::JobIdentity;
use crate::lifecycle::Lifecycle;
use crate::ship::LogGlob;

/// How logs are cut into chunks. Invariant: `chunk_bytes >= 1`.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub globs: Vec<LogGlob>,
    /// Ship a chunk when this many bytes of a log are buffered.
    pub chunk_bytes: usize,
    /// Ship a chunk when its oldest byte is this old.
    pub chunk_age: Duration,
    /// Most bytes held in memory while storage is failing.
    pub spool_max_bytes: u64,
}

/// Everything a sidecar needs, as plain values. Invariant: durations are non-zero.
#[derive(Debug, Clone)]
pub struct Settings {
    pub identity: JobIdentity,
    /// Where logs, tf.events and saves are stored.
    pub storage: Url,
    /// Checkpoints and queues; keep it on a volume that outlives restarts.
    pub state_dir: PathBuf,
    pub logs: LogSettings,
    /// Folders whose event files are mirrored and whose scalars become metrics.
    pub tfevents: Vec<PathBuf>,
    /// A folder searched for the event files the command writes of its own accord (`run`: the
    /// command's working folder), mirrored and read as the folders above.
    pub tfevents_search: Option<crate::tfevents::Search>,
    /// Least time between two uploads of a growing event file.
    pub tfevents_interval: Duration,
    pub lifecycle: Lifecycle,
    /// The address of `/healthz`, `/readyz` and `/metrics` (the kubelet's probes may need the
    /// pod's IP).
    pub listen: SocketAddr,
    /// The address of the MLflow-compatible endpoint: the pod's loopback unless said otherwise,
    /// since it has no authentication.
    pub mlflow_listen: SocketAddr,
    pub mlflow_limits: super::serve::Limits,
    pub metrics: MetricsSettings,
    /// Folders saved once the job is over (and while it runs, as `saves` says).
    pub artifacts: Vec<PathBuf>,
    pub push: PushTuning,
    /// When the folders are saved while the job runs, how many saves are kept, and how long the
    /// final save may take.
    pub saves: Schedule,
    /// How long the metastore records of the saves may take once the metrics drained; what is
    /// left stays queued for the next start.
    pub late_delivery: Duration,
    /// How long the claim on the worker's folder lasts without a renewal ([`super::claim`]).
    pub claim_lease: Duration,
    /// Whether [`super::Sidecar::start`] returns only once a holder's lease is settled (the
    /// folder claimed or refused) rather than going on to watch it in the background.
    pub claim_first: bool,
}

/// Where tracking metrics come from and which metastore receives them. Invariant: none; an empty
/// `metastore` means "choose" ([`MetastoreUrl::choose`]).
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// The `--metastore` URL, if given.
    pub metastore: Option<String>,
    /// JSONL files of metrics to follow.
    pub files: Vec<PathBuf>,
    /// The sources the run's code came from: their revisions become params (and MLflow's git
    /// tags).
    pub code: Vec<crate::localized::Entry>,
    /// Most undelivered metrics kept on disk.
    pub queue_max_bytes: u64,
    /// The embedded SQLite metastore used when no other is chosen; `None`:
    /// `<state-dir>/metastore.db`.
    pub default_sqlite: Option<PathBuf>,
}
