//! `periscope sidecar`'s tracking-metrics flags, and running the metrics pipeline beside the log
//! shipper as its own task with the same stop and drain rules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use periscope::error::ErrorClass;
use periscope::job::JobIdentity;
use periscope::metrics::ingest::{self, IngestRequest, RunIdentity};
use periscope::metrics::pipeline::{self, MetricsPipeline, PipelineConfig};
use periscope::metrics::{MetastoreUrl, MetricsError, QueueConfig, SinkContext};
use periscope::sidecar::{self, Ending, Lifecycle};
use tokio::sync::mpsc;
use tokio::sync::watch;

use super::size::{human, parse_size};
use super::Failure;

/// Tracking metrics: where they come from and which metastore receives them.
#[derive(clap::Args)]
pub struct MetricsArgs {
    /// Metastore for tracking metrics. sqlite:///path/metastore.db (embedded) or Submarine's
    /// MySQL/MariaDB as mysql://user:password@host:3306/db or mysql+pymysql://… (no TLS), both
    /// with Submarine's experiment, metric and param tables; or an MLflow tracking server,
    /// mlflow+http://HOST:PORT[/prefix] or mlflow+https://… (one run per worker in experiment
    /// $MLFLOW_EXPERIMENT_NAME, default the experiment id, or the run $MLFLOW_RUN_ID;
    /// credentials from $MLFLOW_TRACKING_TOKEN or $MLFLOW_TRACKING_USERNAME/PASSWORD, a private
    /// CA from $MLFLOW_TRACKING_SERVER_CERT_PATH). [default: $SUBMARINE_TRACKING_URI when set,
    /// else $MLFLOW_TRACKING_URI when it is an http(s) URL, else sqlite://<state-dir>/metastore.db]
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
    /// Where `periscope localize` put the code: its recorded revision becomes params.
    #[arg(
        long,
        env = "PERISCOPE_CODE_DIR",
        value_name = "DIR",
        default_value = "/code"
    )]
    pub code_dir: PathBuf,
    /// Most undelivered metrics kept on disk; when full, sources pause until the metastore
    /// catches up.
    #[arg(long, env = "PERISCOPE_METRICS_QUEUE_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub metrics_queue_max_bytes: u64,
}

/// The pipeline's thread. It runs its own single-threaded runtime because its work is short
/// blocking file I/O (fsyncs): kept off the log shipper's runtime, a slow disk never delays log
/// shipping. Delivery to the metastore runs on a further thread of the pipeline's own, so a slow
/// metastore delays neither.
type Task = std::thread::JoinHandle<(Result<Ending, MetricsError>, MetricsPipeline)>;

/// The ingest endpoint as the pipeline sees it: the requests it receives, and the address it
/// listens on (which must not be the metastore too; `None` when that cannot happen).
pub struct Endpoint {
    pub requests: mpsc::Receiver<IngestRequest>,
    pub addr: Option<SocketAddr>,
}

/// Opens the metastore and the queue, and starts the pipeline's thread. Scalars are read from
/// the sidecar's `--tfevents` folders (the same ones the mirror uploads).
pub async fn spawn(
    args: &MetricsArgs,
    tfevents_roots: Vec<PathBuf>,
    state_dir: &Path,
    identity: &JobIdentity,
    lifecycle: &Lifecycle,
    stop: watch::Receiver<u32>,
    endpoint: Option<Endpoint>,
) -> Result<Task, Failure> {
    let url = MetastoreUrl::choose(
        args.metastore.as_deref(),
        |k| std::env::var(k).ok(),
        state_dir,
        endpoint.as_ref().and_then(|e| e.addr),
    )?;
    let ingest = endpoint.map(|e| e.requests);
    let mut sink = url.open(&SinkContext {
        state_dir: state_dir.to_path_buf(),
        identity: identity.clone(),
    })?;
    // Wrong credentials or missing tables stop the sidecar now, with their hint; a metastore
    // that does not answer yet only delays delivery (the queue keeps everything).
    match sink.check().await {
        Ok(()) => {}
        Err(e) if e.transient => tracing::warn!(metastore = %sink.describe(), error = %e,
            "the metastore does not answer yet; metrics are queued until it does"),
        Err(e) => return Err(e.into()),
    }
    let mut cfg = PipelineConfig::new(state_dir.to_path_buf(), identity.clone());
    cfg.metrics_files = args.metrics_file.clone();
    cfg.tfevents_roots = tfevents_roots;
    cfg.code_dir = Some(args.code_dir.clone());
    cfg.queue = QueueConfig {
        max_bytes: args.metrics_queue_max_bytes.max(1),
        ..QueueConfig::default()
    };
    let mut watched = cfg.tfevents_roots.clone();
    watched.extend(cfg.metrics_files.iter().cloned());
    let mut pipeline = MetricsPipeline::open(cfg.clone(), sink)?;
    tracing::info!(metastore = %pipeline.describe_sink(), metrics_files = cfg.metrics_files.len(),
        tfevents = cfg.tfevents_roots.len(), "tracking metrics");
    let lifecycle = lifecycle.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                ErrorClass::Internal,
                format!("cannot start the metrics runtime: {e}"),
                None,
            )
        })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                // The watcher must live as long as the loop that reads its notifications.
                let (_watcher, wake) = sidecar::watch_folders(&watched);
                let ending = pipeline::run(&mut pipeline, &lifecycle, stop, wake, ingest).await;
                (ending, pipeline)
            })
        })
        .map_err(|e| {
            Failure::new(
                ErrorClass::Internal,
                format!("cannot start the metrics thread: {e}"),
                None,
            )
        })
}

/// The MLflow-compatible ingest routes for this run, and the pipeline's end of their channel.
/// The sidecar serves the routes on `--listen` beside `/healthz`, `/readyz` and `/metrics`.
pub fn ingest(identity: &JobIdentity) -> (axum::Router, mpsc::Receiver<IngestRequest>) {
    let (handle, rx) = ingest::channel(RunIdentity {
        experiment: identity.experiment.clone(),
        worker: identity.worker.clone(),
        start_ms: periscope::metrics::model::now_ms(),
    });
    (ingest::router(handle), rx)
}

/// Waits for the pipeline's task and combines its ending with the log shipper's. The pipeline is
/// returned for items that come after the drain (artifacts saves).
pub async fn join(task: Task, logs: Ending) -> Result<(Ending, MetricsPipeline), Failure> {
    let joined = tokio::task::spawn_blocking(move || task.join()).await;
    let (ending, pipeline) = match joined {
        Ok(Ok(done)) => done,
        _ => {
            return Err(Failure::new(
                ErrorClass::Internal,
                "the metrics thread panicked",
                None,
            ))
        }
    };
    let ending = ending?;
    let stats = pipeline.stats();
    tracing::info!(queued = stats.queued_items, delivered = stats.delivered_items,
        bad_lines = pipeline.bad_lines(), metastore = %pipeline.describe_sink(), "metrics pipeline ended");
    match ending {
        Ending::Drained => Ok((logs, pipeline)),
        Ending::Incomplete { backlog, reason } => Err(Failure::new(
            ErrorClass::Network,
            format!(
                "stopped by {reason} with {} of metrics not yet in the metastore",
                human(backlog)
            ),
            Some(
                "the queue in --state-dir keeps them; start again with the same --state-dir to deliver them"
                    .into(),
            ),
        )),
    }
}

/// Queues `items` after the drain and delivers them, for at most `within`. What is not delivered
/// by then stays in the durable queue of the state folder, for the next start to deliver.
pub async fn deliver_late(
    pipeline: &mut MetricsPipeline,
    items: Vec<periscope::metrics::Item>,
    within: std::time::Duration,
) -> Result<(), Failure> {
    if items.is_empty() {
        return Ok(());
    }
    pipeline.enqueue(items)?;
    let deadline = std::time::Instant::now() + within;
    loop {
        pipeline.deliver().await?;
        if pipeline.backlog() == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                backlog = pipeline.backlog(),
                "artifacts records not yet in the metastore; they stay queued in the state folder"
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
