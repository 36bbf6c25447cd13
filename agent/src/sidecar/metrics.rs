//! A sidecar's tracking metrics: the metastore it opens, and the metrics pipeline running beside
//! the shippers on a thread of its own, with the same stop and drain rules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::error::SidecarError;
use super::settings::Settings;
use crate::lifecycle::{Drain, Ending, Stop};
use crate::metrics::intake::IngestRequest;
use crate::metrics::pipeline::{self, DeliveryStatus, MetricsPipeline, PipelineConfig};
use crate::metrics::{Item, MetastoreUrl, MetricsError, QueueConfig, SinkContext};

/// The pipeline's thread. It runs its own single-threaded runtime because its work is short
/// blocking file I/O (fsyncs): kept off the shippers' runtime, a slow disk never delays log
/// shipping. Delivery to the metastore runs on a further thread of the pipeline's own, so a slow
/// metastore delays neither.
pub struct MetricsTask {
    thread: std::thread::JoinHandle<(Result<Ending, MetricsError>, MetricsPipeline)>,
    status: Arc<DeliveryStatus>,
}

/// Opens the metastore and the queue, and starts the pipeline's thread. Scalars are read from
/// the sidecar's tf.events folders (the ones the mirror uploads); `requests` come from the
/// ingest endpoint that listens on `endpoint` (which therefore must not be the metastore too).
pub async fn spawn(
    sidecar: &Settings,
    drain: Drain,
    stop: Stop,
    requests: Option<mpsc::Receiver<IngestRequest>>,
    endpoint: Option<SocketAddr>,
) -> Result<MetricsTask, SidecarError> {
    let settings = &sidecar.metrics;
    let state_dir = &sidecar.state_dir;
    let identity = &sidecar.identity;
    let default = match &settings.default_sqlite {
        Some(path) => MetastoreUrl::Sqlite(path.clone()),
        None => MetastoreUrl::default_for(state_dir),
    };
    let url = MetastoreUrl::choose(
        settings.metastore.as_deref(),
        |k| std::env::var(k).ok(),
        default,
        endpoint,
    )
    .map_err(MetricsError::from)?;
    let mut sink = url
        .open(&SinkContext {
            state_dir: state_dir.to_path_buf(),
            identity: identity.clone(),
        })
        .map_err(MetricsError::from)?;
    // Wrong credentials or missing tables stop the sidecar now, with their hint; a metastore
    // that does not answer yet only delays delivery (the queue keeps everything).
    match sink.check().await {
        Ok(()) => {}
        Err(e) if e.transient => tracing::warn!(metastore = %sink.describe(), error = %e,
            "the metastore does not answer yet; metrics are queued until it does"),
        Err(e) => return Err(MetricsError::from(e).into()),
    }
    let mut cfg = PipelineConfig::new(state_dir.to_path_buf(), identity.clone());
    cfg.metrics_files = settings.files.clone();
    cfg.tfevents_roots = sidecar.tfevents.clone();
    cfg.tfevents_search = sidecar.tfevents_search.clone();
    cfg.code = settings.code.clone();
    cfg.queue = QueueConfig {
        max_bytes: settings.queue_max_bytes.max(1),
        ..QueueConfig::default()
    };
    let mut watched = cfg.tfevents_roots.clone();
    watched.extend(cfg.metrics_files.iter().cloned());
    let mut pipeline = MetricsPipeline::open(cfg.clone(), sink)?;
    let status = pipeline.status();
    tracing::info!(metastore = %pipeline.describe_sink(), metrics_files = cfg.metrics_files.len(),
        tfevents = cfg.tfevents_roots.len(), "tracking metrics");
    let thread =
        |e: std::io::Error| SidecarError::Thread(format!("cannot start the metrics thread: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(thread)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                // The watcher must live as long as the loop that reads its notifications.
                let (_watcher, wake) = super::watch::watch_folders(&watched);
                let ending = pipeline::run(&mut pipeline, drain, stop, wake, requests).await;
                (ending, pipeline)
            })
        })
        .map(|thread| MetricsTask { thread, status })
        .map_err(thread)
}

impl MetricsTask {
    /// How delivery to the metastore goes, for the health endpoints.
    pub fn status(&self) -> Arc<DeliveryStatus> {
        self.status.clone()
    }

    /// Waits for the pipeline's thread; returns how it ended and the pipeline, for items that come
    /// after the drain.
    pub async fn join(self) -> Result<(Ending, MetricsPipeline), SidecarError> {
        let task = self.thread;
        let joined = tokio::task::spawn_blocking(move || task.join()).await;
        let Ok(Ok((ending, pipeline))) = joined else {
            return Err(SidecarError::Thread("the metrics thread panicked".into()));
        };
        let ending = ending?;
        let stats = pipeline.stats();
        tracing::info!(queued = stats.queued_items, delivered = stats.delivered_items,
            bad_lines = pipeline.bad_lines(), metastore = %pipeline.describe_sink(), "metrics pipeline ended");
        Ok((ending, pipeline))
    }
}

/// Queues `items` after the drain and, when `deliver`, delivers them for at most `within`. What
/// is not delivered by then stays in the durable queue of the state folder, for the next start.
pub async fn deliver_late(
    pipeline: &mut MetricsPipeline,
    items: Vec<Item>,
    deliver: bool,
    within: Duration,
) -> Result<(), MetricsError> {
    if items.is_empty() {
        return Ok(());
    }
    pipeline.enqueue(items)?;
    if !deliver {
        return Ok(());
    }
    let deadline = Instant::now() + within;
    loop {
        pipeline.deliver().await?;
        if pipeline.backlog() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                backlog = pipeline.backlog(),
                "artifacts records not yet in the metastore; they stay queued in the state folder"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
