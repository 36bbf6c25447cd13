//! A sidecar assembled from plain settings, the one way `periscope sidecar` and `periscope run`
//! build one: the storage, the log and tf.events shippers and their loop, the health and
//! MLflow-compatible endpoint, the metrics thread, and, once the job is over, the artifacts saves
//! and the metastore records they make.
//!
//! [`Sidecar::start`] opens and checks everything (a wrong setting fails before the job runs) and
//! starts the loops; [`Sidecar::finish`] waits for them to drain and returns what was done. This
//! module never prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::error::SidecarError;
use super::health;
use super::metrics::{self, MetricsTask};
use super::settings::Settings;
use super::shipping::{self, Pipelines};
use crate::artifacts::{PushOutcome, Target};
use crate::lifecycle::{Drain, DrainFlag, Ending, Stop};
use crate::metrics::mlflow::ingest::{self, Endpoint, RunIdentity};
use crate::metrics::saves;
use crate::redact::redact_url;
use crate::retry::RetryPolicy;
use crate::ship::{LogConfig, LogShipper, MirrorConfig, ShipError, TfeventsMirror};
use crate::storage::{self, StoreOptions};

/// What a finished sidecar did.
#[derive(Debug)]
pub struct Report {
    /// How the log and tf.events loop ended.
    pub shipping: Ending,
    /// How the metrics pipeline ended.
    pub metrics: Ending,
    /// Log bytes stored.
    pub log_bytes: u64,
    /// Event files mirrored.
    pub tfevents_files: usize,
    /// Metrics, params, tags and statuses delivered to the metastore.
    pub metrics_delivered: u64,
    /// Each artifacts folder with its save.
    pub saves: Vec<(PathBuf, PushOutcome)>,
    /// The worker's folder in storage, redacted.
    pub stored_at: String,
}

/// A running sidecar. Invariant: its loops run until [`Sidecar::finish`] has seen them drain.
pub struct Sidecar {
    shipping: JoinHandle<(Result<Ending, ShipError>, Pipelines)>,
    metrics: MetricsTask,
    drained: DrainFlag,
    target: Option<Target>,
    settings: Settings,
    addr: SocketAddr,
    stored_at: String,
    endpoint: Endpoint,
}

impl Sidecar {
    /// Opens storage, the shippers and the metastore, serves the endpoint and starts the loops.
    /// `stop` counts stop requests (see [`crate::lifecycle`]).
    pub async fn start(settings: Settings, stop: Stop) -> Result<Sidecar, SidecarError> {
        let identity = &settings.identity;
        let options = StoreOptions {
            // The shippers retry forever on their own; a short inner retry keeps them reading.
            retry: RetryPolicy {
                attempts: 2,
                ..RetryPolicy::default()
            },
            ..StoreOptions::default()
        };
        let (store, prefix) = storage::open(&settings.storage, &options)?;
        let worker_prefix = identity.worker_prefix(&prefix);
        let stored_at = identity.shown_under(&settings.storage);
        // Checked before the job runs, so a misconfigured pod fails at once rather than after.
        let target = match settings.artifacts.is_empty() {
            true => None,
            false => Some(Target::open(
                &settings.storage,
                identity,
                &StoreOptions::default(),
            )?),
        };
        let logs = &settings.logs;
        let mut pipelines = Pipelines {
            logs: None,
            tfevents: None,
            health: Default::default(),
        };
        if !logs.globs.is_empty() {
            let destination = format!(
                "{}#{}/{}",
                redact_url(settings.storage.as_str()),
                identity.experiment,
                identity.worker
            );
            let mut cfg = LogConfig::new(
                logs.globs.clone(),
                worker_prefix.clone(),
                destination,
                settings.state_dir.clone(),
            );
            cfg.chunk_bytes = logs.chunk_bytes.max(1);
            cfg.chunk_age = logs.chunk_age;
            cfg.spool_max_bytes = logs.spool_max_bytes.max(cfg.chunk_bytes as u64);
            pipelines.logs = Some(LogShipper::open(cfg, store.clone())?);
        }
        if !settings.tfevents.is_empty() || settings.tfevents_search.is_some() {
            let cfg = MirrorConfig {
                roots: settings.tfevents.clone(),
                search: settings.tfevents_search.clone(),
                worker_prefix,
                state_dir: settings.state_dir.clone(),
                interval: settings.tfevents_interval,
                retry: RetryPolicy::default(),
                ..MirrorConfig::default()
            };
            pipelines.tfevents = Some(TfeventsMirror::open(cfg, store)?);
        }
        let drained = pipelines.health.draining.clone();
        let listener = Listener::bind(&settings).await?;
        let (handle, requests) = ingest::channel(RunIdentity {
            experiment: identity.experiment.clone(),
            worker: identity.worker.clone(),
            start_ms: crate::metrics::model::now_ms(),
        });
        let endpoint = Endpoint::open(handle, &settings.state_dir, &settings.storage)?;
        let metrics = metrics::spawn(
            &settings,
            Drain::new(settings.lifecycle.clone(), "metrics", drained.clone()),
            stop.clone(),
            Some(requests),
            Some(listener.addr),
        )
        .await?;
        let observed = health::Observed {
            health: pipelines.health.clone(),
            logs: pipelines.logs.as_ref().map(LogShipper::stats),
            metastore: Some(metrics.status()),
            stall_after: (settings.lifecycle.poll_interval * 10).max(Duration::from_secs(60)),
        };
        let addr = listener.serve(health::router(observed).merge(endpoint.router()));
        let mut folders: Vec<PathBuf> = logs.globs.iter().map(|g| g.base.clone()).collect();
        folders.extend(settings.tfevents.iter().cloned());
        let drain = Drain::new(
            settings.lifecycle.clone(),
            "logs and tf.events",
            drained.clone(),
        );
        let shipping = tokio::spawn(async move {
            // The watcher must live as long as the loop that reads its notifications.
            let (_watcher, wake) = super::watch::watch_folders(&folders);
            let ending = shipping::run(&mut pipelines, drain, stop, wake).await;
            (ending, pipelines)
        });
        tracing::info!(storage = %redact_url(settings.storage.as_str()), experiment = %identity.experiment,
            worker = %identity.worker, "sidecar started");
        Ok(Sidecar {
            shipping,
            metrics,
            drained,
            target,
            settings,
            addr,
            stored_at,
            endpoint,
        })
    }

    /// The address the endpoint listens on (the port is chosen when the settings said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until every loop drained. Once the job is over, saves the artifacts folders meanwhile
    /// and records the saves in the metastore.
    pub async fn finish(self) -> Result<Report, SidecarError> {
        let settings = &self.settings;
        let push = async {
            let Some(target) = &self.target else {
                return Ok(Vec::new());
            };
            self.drained.wait().await;
            target
                .push_all(&settings.artifacts, &settings.state_dir, settings.push)
                .await
        };
        // Artifacts clients uploaded through the endpoint reach storage meanwhile; the records of
        // those stored after the metrics pipeline ended are queued below, with the saves'.
        let uploads = self
            .endpoint
            .finish(self.drained.wait(), settings.lifecycle.drain_timeout);
        let (shipped, saves, late) = tokio::join!(self.shipping, push, uploads);
        let (shipping, pipelines) =
            shipped.map_err(|e| SidecarError::Thread(format!("the shipping task failed: {e}")))?;
        let (metrics, mut pipeline) = self.metrics.join().await?;
        let shipping = shipping?;
        let saves = saves?;
        let mut items: Vec<_> = saves
            .iter()
            .flat_map(|(_, o)| saves::items(o, &settings.identity.worker))
            .collect();
        items.extend(late.items.iter().cloned());
        let deliver = metrics == Ending::Drained;
        metrics::deliver_late(&mut pipeline, items, deliver, settings.late_delivery).await?;
        late.done();
        let log_bytes = pipelines.logs.as_ref().map_or(0, |l| {
            l.stats()
                .bytes_shipped
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        Ok(Report {
            shipping,
            metrics,
            log_bytes,
            tfevents_files: pipelines.tfevents.as_ref().map_or(0, TfeventsMirror::files),
            metrics_delivered: pipeline.stats().delivered_items,
            saves,
            stored_at: self.stored_at,
        })
    }
}

/// The endpoint's socket, bound before the metrics pipeline starts (which must know its address,
/// so as not to take it for the metastore) and served once the routes are assembled.
struct Listener {
    socket: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Listener {
    async fn bind(settings: &Settings) -> Result<Listener, SidecarError> {
        let listen_error = |source| SidecarError::Listen {
            addr: settings.listen,
            source,
        };
        let socket = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(listen_error)?;
        let addr = socket.local_addr().map_err(listen_error)?;
        Ok(Listener { socket, addr })
    }

    /// Serves `app` in the background; returns the address.
    fn serve(self, app: axum::Router) -> SocketAddr {
        let addr = self.addr;
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics and the MLflow-compatible /api/2.0/mlflow/");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(self.socket, app).await {
                tracing::error!(error = %e, "the endpoint stopped");
            }
        });
        addr
    }
}
