//! `periscope sidecar`: ship logs to storage until the job ends, then drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use object_store::path::Path;
use periscope::error::ErrorClass;
use periscope::job::JobIdentity;
use periscope::redact::redact_url;
use periscope::retry::RetryPolicy;
use periscope::ship::{LogConfig, LogGlob, LogShipper, MirrorConfig, TfeventsMirror};
use periscope::sidecar::{self, Ending, Lifecycle, Pipelines};
use periscope::storage::{self, StoreOptions};

use super::size::{human, parse_size};
use super::Failure;

const AFTER_HELP: &str = "\
Storage layout (tensorboard --logdir <URL>/<experiment> works on the stored tree):
  <URL>/<experiment>/<worker>/logs/<path relative to the glob's base>/g<N>/<start>-<end>.gz

Each log chunk's key names the byte range it holds, and the checkpoint in --state-dir records each
upload before and after it happens, so after kill -9, restarts, storage outages and log rotation
(rename or copytruncate) every byte is stored exactly once. Read logs back with `periscope logs cat`.

On SIGTERM (a native sidecar gets it after the main container ends) the sidecar keeps reading until
everything written so far is stored, for at most --drain-timeout, then exits 0. A second SIGTERM, or the
timeout, exits at once (code 6 if bytes are left; a restart with the same --state-dir ships them).

Tracking metrics: scalars of the --tfevents folders (key = run folder/tag), lines of
--metrics-file and calls to the MLflow-compatible endpoint on --listen go through a disk queue in
--state-dir into --metastore (default: $MLFLOW_TRACKING_URI when it is an http(s) MLflow
tracking server, else Submarine's tables in <state-dir>/metastore.db), exactly once across
kill -9 and restarts. The run is Running while the sidecar works, then Succeeded/Failed
(MLflow: FINISHED/FAILED) from --exit-when-file; the code revision in
<code-dir>/.periscope/localized.json becomes params (and MLflow's mlflow.source.git.* tags).
Read the SQLite metastore with `periscope metrics`.

Artifacts: each --artifacts folder is saved to <URL>/<experiment>/<worker>/artifacts/<n>/ (see
`periscope artifacts push --help`) once the job is over and the logs are drained, still within the
drain; the save's URL becomes the param artifacts.<n> in the metastore. MLflow also gets the tag
periscope.artifacts.<worker>.<n> (URL and manifest sha256) and, when the run's artifact_uri is in
the storage's bucket, the save's files copied to <artifact_uri>/<worker>/<n>/.

Identity: --experiment-id defaults to $JOB_ID; --worker is derived like the Submarine SDK does (TF_CONFIG
task type-index, else CLUSTER_SPEC, else RANK: 0 -> master-0, N -> worker-N, else worker-0).

Examples:
  periscope sidecar --storage s3://ml-logs/jobs --logs '/periscope/logs/*.log' --state-dir /periscope/state
  periscope sidecar --storage file:///mnt/logs --logs '/job/**/*.log' --exit-when-file /periscope/logs/exit-code";

/// Ship logs to object storage and metrics to the metastore, exactly once, until the job ends.
#[derive(clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct SidecarArgs {
    /// Where to store: s3://bucket/prefix, gs://…, az://container/prefix, file:///path or a folder.
    #[arg(long, env = "PERISCOPE_STORAGE", value_name = "URL")]
    storage: String,
    /// Log files to follow (globs, repeatable; `**` matches folders). Quote them.
    #[arg(
        long = "logs",
        env = "PERISCOPE_LOGS",
        value_delimiter = ' ',
        value_name = "GLOB"
    )]
    logs: Vec<String>,
    /// Folders whose TensorBoard event files are mirrored to <URL>/<experiment>/<worker>/tfevents/
    /// (repeatable). [default: $SUBMARINE_TENSORBOARD_LOG_DIR]
    #[arg(
        long = "tfevents",
        env = "PERISCOPE_TFEVENTS",
        value_delimiter = ' ',
        value_name = "DIR"
    )]
    tfevents: Vec<PathBuf>,
    /// Least seconds between two uploads of a growing event file (always one more when draining).
    #[arg(long, env = "PERISCOPE_TFEVENTS_INTERVAL", default_value_t = 10.0)]
    tfevents_interval: f64,
    /// Folder for the checkpoint; keep it on a volume that outlives restarts of this container.
    #[arg(
        long,
        env = "PERISCOPE_STATE_DIR",
        value_name = "DIR",
        default_value = "periscope-data/state"
    )]
    state_dir: PathBuf,
    /// Experiment id. [default: $JOB_ID]
    #[arg(long, env = "PERISCOPE_EXPERIMENT_ID")]
    experiment_id: Option<String>,
    /// Worker name. [default: derived from TF_CONFIG, CLUSTER_SPEC or RANK]
    #[arg(long, env = "PERISCOPE_WORKER")]
    worker: Option<String>,
    /// Ship a chunk when this many bytes of a log are buffered.
    #[arg(long, env = "PERISCOPE_CHUNK_BYTES", default_value = "8MiB", value_parser = parse_size)]
    chunk_bytes: u64,
    /// Ship a chunk when its oldest byte is this many seconds old.
    #[arg(long, env = "PERISCOPE_CHUNK_AGE", default_value_t = 5.0)]
    chunk_age: f64,
    /// Most bytes held in memory while storage is failing (the files hold the rest).
    #[arg(long, env = "PERISCOPE_SPOOL_MAX_BYTES", default_value = "64MiB", value_parser = parse_size)]
    spool_max_bytes: u64,
    /// Seconds between checks of the files when no change notification arrives.
    #[arg(long, env = "PERISCOPE_POLL_INTERVAL", default_value_t = 1.0)]
    poll_interval: f64,
    /// Seconds to keep shipping after SIGTERM.
    #[arg(long, env = "PERISCOPE_DRAIN_TIMEOUT", default_value_t = 20.0)]
    drain_timeout: f64,
    /// Address for /healthz, /readyz and Prometheus /metrics (use 0.0.0.0:9090 for kubelet probes).
    #[arg(
        long,
        env = "PERISCOPE_LISTEN",
        default_value = "127.0.0.1:9090",
        value_name = "ADDR"
    )]
    listen: std::net::SocketAddr,
    /// Drain and exit when this file appears (the exit-code file of `periscope exec`).
    #[arg(long, env = "PERISCOPE_EXIT_WHEN_FILE", value_name = "PATH")]
    exit_when_file: Option<PathBuf>,
    #[command(flatten)]
    metrics: super::sidecar_metrics::MetricsArgs,
    #[command(flatten)]
    artifacts: super::artifacts::ArtifactsFlags,
}

fn seconds(name: &str, value: f64) -> Result<Duration, Failure> {
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

/// Runs `periscope sidecar`.
pub async fn run(args: SidecarArgs) -> Result<ExitCode, Failure> {
    let identity = JobIdentity::resolve(args.experiment_id.clone(), args.worker.clone())?;
    let url = super::storage_url::parse(&args.storage)?;
    let options = StoreOptions {
        // The shipper retries forever on its own; a short inner retry keeps it reading meanwhile.
        retry: RetryPolicy {
            attempts: 2,
            ..RetryPolicy::default()
        },
        ..StoreOptions::default()
    };
    let (store, prefix) = storage::open(&url, &options)?;
    let worker_prefix = join(&prefix, &[&identity.experiment, &identity.worker]);
    let globs = args
        .logs
        .iter()
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
    let mut tfevents_roots = args.tfevents.clone();
    if tfevents_roots.is_empty() {
        if let Some(dir) =
            std::env::var_os("SUBMARINE_TENSORBOARD_LOG_DIR").filter(|d| !d.is_empty())
        {
            tfevents_roots.push(PathBuf::from(dir));
        }
    }
    if globs.is_empty() && tfevents_roots.is_empty() && args.metrics.metrics_file.is_empty() {
        tracing::warn!(
            "no --logs, --tfevents or --metrics-file: only the MLflow-compatible endpoint on --listen feeds this sidecar"
        );
    }
    let chunk_bytes = usize::try_from(args.chunk_bytes.max(1)).unwrap_or(usize::MAX);
    let mirror_cfg = MirrorConfig {
        roots: tfevents_roots.clone(),
        worker_prefix: worker_prefix.clone(),
        state_dir: args.state_dir.clone(),
        interval: seconds("tfevents-interval", args.tfevents_interval)?,
        retry: RetryPolicy::default(),
        ..MirrorConfig::default()
    };
    let mut cfg = LogConfig::new(
        globs.clone(),
        worker_prefix,
        format!(
            "{}#{}/{}",
            redact_url(url.as_str()),
            identity.experiment,
            identity.worker
        ),
        args.state_dir.clone(),
    );
    cfg.chunk_bytes = chunk_bytes;
    cfg.chunk_age = seconds("chunk-age", args.chunk_age)?;
    cfg.spool_max_bytes = args.spool_max_bytes.max(args.chunk_bytes);
    let lifecycle = Lifecycle {
        poll_interval: seconds("poll-interval", args.poll_interval)?,
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        exit_when_file: args.exit_when_file.clone(),
    };
    let mut pipelines = Pipelines {
        logs: if globs.is_empty() {
            None
        } else {
            Some(LogShipper::open(cfg, store.clone())?)
        },
        tfevents: if tfevents_roots.is_empty() {
            None
        } else {
            Some(TfeventsMirror::open(mirror_cfg, store)?)
        },
        health: Default::default(),
    };
    let observed = sidecar::health::Observed {
        health: pipelines.health.clone(),
        logs: pipelines.logs.as_ref().map(LogShipper::stats),
        stall_after: (lifecycle.poll_interval * 10).max(Duration::from_secs(60)),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            Failure::new(
                ErrorClass::Usage,
                format!("cannot listen on {}: {e}", args.listen),
                Some("choose a free address with --listen (e.g. 127.0.0.1:0 for any port)".into()),
            )
        })?;
    let local_addr = listener.local_addr().ok();
    if let Some(addr) = local_addr {
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics and the MLflow-compatible /api/2.0/mlflow/");
    }
    let (ingest_routes, ingest) = super::sidecar_metrics::ingest(&identity);
    let app = sidecar::health::router(observed).merge(ingest_routes);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    });
    let mut folders: Vec<PathBuf> = globs.iter().map(|g| g.base.clone()).collect();
    folders.extend(tfevents_roots.iter().cloned());
    let (_watcher, wake) = sidecar::watch_folders(&folders);
    let stop = super::signals::stop_requests()?;
    let metrics = super::sidecar_metrics::spawn(
        &args.metrics,
        tfevents_roots.clone(),
        &args.state_dir,
        &identity,
        &lifecycle,
        stop.clone(),
        Some(super::sidecar_metrics::Endpoint {
            requests: ingest,
            addr: local_addr,
        }),
    )
    .await?;
    tracing::info!(storage = %redact_url(url.as_str()), experiment = %identity.experiment, worker = %identity.worker,
        "sidecar started");
    let ending = sidecar::run(&mut pipelines, &lifecycle, stop, wake).await?;
    // The job is over and its logs are drained: save the artifacts folders, then record the
    // saves in the metastore through the same pipeline.
    let artifact_dirs = args.artifacts.dirs();
    let saves = if artifact_dirs.is_empty() {
        Ok(Vec::new())
    } else {
        let target = super::artifacts::Target::open(&url, &identity, &StoreOptions::default())?;
        super::artifacts::push_dirs(
            &artifact_dirs,
            &target,
            &args.state_dir,
            &args.artifacts.tuning,
        )
        .await
    };
    let (ending, mut metrics) = super::sidecar_metrics::join(metrics, ending).await?;
    let items = saves?
        .iter()
        .flat_map(|o| periscope::artifacts::record::items(o, &identity.worker))
        .collect();
    super::sidecar_metrics::deliver_late(&mut metrics, items, Duration::from_secs(10)).await?;
    let shipped = pipelines
        .logs
        .as_ref()
        .map(|l| {
            l.stats()
                .bytes_shipped
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .unwrap_or(0);
    match ending {
        Ending::Drained => {
            tracing::info!(shipped = %human(shipped), "drained; everything read is stored");
            Ok(ExitCode::SUCCESS)
        }
        Ending::Incomplete { backlog, reason } => Err(Failure::new(
            ErrorClass::Network,
            format!("stopped by {reason} with {} not yet stored", human(backlog)),
            Some("the checkpoint records what was stored; start again with the same --state-dir to ship the rest".into()),
        )),
    }
}

/// `prefix/a/b`.
pub fn join(prefix: &Path, parts: &[&str]) -> Path {
    let mut p = prefix.clone();
    for part in parts {
        p = p.join(*part);
    }
    p
}
