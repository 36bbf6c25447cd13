//! A sidecar assembled from plain settings, the one way `periscope sidecar` and `periscope run`
//! build one: the storage and the claim on the worker's folder in it, the log and tf.events
//! shippers and their loop, the probes and the MLflow-compatible endpoint (each on its own
//! listener, with its own limits), the metrics thread, and, once the job is over, the artifacts
//! saves and the metastore records they make.
//!
//! [`Sidecar::start`] opens and checks everything (a wrong setting fails before the job runs),
//! claims the worker's folder before anything is stored there ([`super::claim`]), and starts the
//! loops; [`Sidecar::finish`] waits for them to drain and returns what was done. This module
//! never prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::claim::{Claim, ClaimError, ClaimGate, JobEnd, Lease, LeaseTask, WATCH_PAUSE};
use super::error::SidecarError;
use super::health;
use super::metrics::{self, MetricsTask};
use super::serve::{Limits, Listener};
use super::settings::Settings;
use super::shipping::{self, Pipelines};
use crate::artifacts::{Saver, SaverTask, SavesReport, SignalClock, Target};
use crate::lifecycle::{Drain, DrainFlag, Ending, Stop, StopSender};
use crate::metrics::mlflow::ingest::{self, Endpoint, RunIdentity};
use crate::metrics::saves;
use crate::redact::redact_url;
use crate::retry::RetryPolicy;
use crate::ship::{LogConfig, LogShipper, MirrorConfig, TfeventsMirror};
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
    /// Every save of the artifacts folders, while the job ran and once it was over.
    pub saving: SavesReport,
    /// The worker's folder in storage, redacted.
    pub stored_at: String,
}

/// A running sidecar. Invariant: its loops run until [`Sidecar::finish`] has seen them drain.
pub struct Sidecar {
    shipping: JoinHandle<(Result<Ending, SidecarError>, Pipelines)>,
    metrics: MetricsTask,
    drained: DrainFlag,
    saver: Option<SaverTask>,
    /// The lease on the worker's folder, renewed from the claim on.
    lease: LeaseTask,
    settings: Settings,
    probes: SocketAddr,
    mlflow: SocketAddr,
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
        // Bound first: a taken port fails before anything is claimed or stored.
        let probes = Listener::bind(
            settings.listen,
            "/healthz, /readyz and /metrics",
            Limits::PROBES,
        )?;
        let mlflow = Listener::bind(
            settings.mlflow_listen,
            "the MLflow-compatible /api/2.0/mlflow/",
            settings.mlflow_limits,
        )?;
        if !mlflow.addr.ip().is_loopback() {
            tracing::warn!(addr = %mlflow.addr, "the MLflow-compatible endpoint has no authentication: \
                whoever reaches this address can log metrics and end the run; keep it on 127.0.0.1");
        }
        let (service, _) = storage::locate(&settings.storage)?;
        let claim = Claim::new(
            store.clone(),
            service,
            worker_prefix.clone(),
            stored_at.clone(),
            settings.state_dir.clone(),
            settings.claim_lease,
        );
        // Another pod's folder stops the sidecar now; unreachable storage, or a holder whose
        // lease is being watched, only delays shipping.
        let mut first = claim.try_once().await;
        if let (true, Err(e @ ClaimError::Waiting { .. })) = (settings.claim_first, &first) {
            tracing::info!(folder = %stored_at, "{e}; the command starts once it is settled");
        }
        while let (true, Err(ClaimError::Waiting { .. })) = (settings.claim_first, &first) {
            tokio::time::sleep(WATCH_PAUSE).await;
            first = claim.try_once().await;
        }
        let claim_token = claim.token();
        let (pending, claimed) = match first {
            Ok(c) => (None, ClaimGate::opened(c.attempt)),
            Err(e) if e.is_transient() => (Some(claim), ClaimGate::default()),
            Err(e) => return Err(e.into()),
        };
        let lease = Lease {
            store: store.clone(),
            service,
            worker_prefix: worker_prefix.clone(),
            folder: stored_at.clone(),
            pod: super::claim::pod_name(),
            lapse: settings.claim_lease,
            token: claim_token.clone(),
        };
        // Checked before the job runs, so a misconfigured pod fails at once rather than after.
        let saver = match settings.artifacts.is_empty() {
            true => None,
            false => Some(Saver {
                target: Target::open(&settings.storage, identity, &StoreOptions::default())?,
                dirs: settings.artifacts.clone(),
                state_dir: settings.state_dir.clone(),
                tuning: settings.push,
                schedule: settings.saves.clone(),
            }),
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
        let (handle, requests) = ingest::channel(RunIdentity {
            experiment: identity.experiment.clone(),
            worker: identity.worker.clone(),
            start_ms: crate::metrics::model::now_ms(),
        });
        let endpoint = Endpoint::open(handle, &settings.state_dir, &settings.storage)?;
        let (refused, metrics_stop) = follow(&stop);
        let (lost, shipping_stop) = follow(&stop);
        let metrics = metrics::spawn(
            &settings,
            Drain::new(settings.lifecycle.clone(), "metrics", drained.clone()),
            metrics_stop,
            (Some(requests), Some(mlflow.addr)),
            claimed.clone(),
        )
        .await?;
        let observed = health::Observed {
            health: pipelines.health.clone(),
            logs: pipelines.logs.as_ref().map(LogShipper::stats),
            tfevents: pipelines
                .tfevents
                .as_ref()
                .map(TfeventsMirror::checkpoint_outage),
            metastore: Some(metrics.status()),
            claim_token: claim_token.clone(),
            stall_after: (settings.lifecycle.poll_interval * 10).max(Duration::from_secs(60)),
        };
        let probes = probes.serve(health::router(observed));
        let mlflow = mlflow.serve(endpoint.router());
        let mut folders: Vec<PathBuf> = logs.globs.iter().map(|g| g.base.clone()).collect();
        folders.extend(settings.tfevents.iter().cloned());
        let mut drain = Drain::new(
            settings.lifecycle.clone(),
            "logs and tf.events",
            drained.clone(),
        );
        let unread = unread_bytes(&settings);
        let saves_gate = claimed.clone();
        let lease = lease.spawn(claimed.clone(), {
            let (refused, lost) = (refused.clone(), lost.clone());
            // Taken over: every loop ends now, storing nothing more.
            move || {
                refused.at_least(2);
                lost.at_least(2);
            }
        });
        let shipping = tokio::spawn(async move {
            // The watcher must live as long as the loop that reads its notifications.
            let (_watcher, wake) = super::watch::watch_folders(&folders);
            let mut stop = shipping_stop;
            if let Some(claim) = pending {
                match claim.wait(&mut drain, &mut stop, &unread).await {
                    Ok(Ok(c)) => claimed.open(c.attempt),
                    Ok(Err(ending)) => {
                        claimed.give_up();
                        return (Ok(ending), pipelines);
                    }
                    Err(e) => {
                        // Another pod's folder: nothing of this one is delivered, at once,
                        // and whoever waits for the drain (the endpoint's uploads) stops waiting.
                        claimed.give_up();
                        refused.at_least(2);
                        let _ = drain.on_stop(1, || 0);
                        return (Err(e.into()), pipelines);
                    }
                }
            }
            // Invariant: the gate is open here (claimed at start, or just now).
            let attempt = claimed.attempt().unwrap_or(1);
            let listed =
                shipping::continue_stored(&mut pipelines, attempt, &mut drain, &mut stop, &unread);
            if let Some(ending) = listed.await {
                return (Ok(ending), pipelines);
            }
            let ending = shipping::run(&mut pipelines, drain, stop, wake).await;
            (ending.map_err(SidecarError::from), pipelines)
        });
        // Saves run beside the job from now on (everything that can fail to start has started);
        // the final one once it is over.
        let saver = match saver {
            Some(saver) => {
                let thread = |e: std::io::Error| SidecarError::Thread(e.to_string());
                let over = drained.clone();
                let over = async move { over.wait().await };
                // Saves go into the worker's folder: only once it is this pod's.
                let gate = saves_gate;
                let claimed = async move { gate.settled().await.is_some() };
                let clock = SignalClock::start().map_err(thread)?;
                Some(saver.spawn(claimed, over, clock).map_err(thread)?)
            }
            None => None,
        };
        tracing::info!(storage = %redact_url(settings.storage.as_str()), experiment = %identity.experiment,
            worker = %identity.worker, "sidecar started");
        Ok(Sidecar {
            shipping,
            metrics,
            drained,
            saver,
            lease,
            settings,
            probes,
            mlflow,
            stored_at,
            endpoint,
        })
    }

    /// The address of the probes (the port is chosen when the settings said 0).
    pub fn probe_addr(&self) -> SocketAddr {
        self.probes
    }

    /// The address of the MLflow-compatible endpoint (the port is chosen when the settings said 0).
    pub fn mlflow_addr(&self) -> SocketAddr {
        self.mlflow
    }

    /// Waits until every loop drained. Once the job is over, saves the artifacts folders meanwhile
    /// and records the saves in the metastore.
    pub async fn finish(self) -> Result<Report, SidecarError> {
        let settings = &self.settings;
        let push = async {
            match self.saver {
                Some(task) => task.join().await.map_err(SidecarError::from),
                None => Ok(SavesReport::default()),
            }
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
        let saving = saves?;
        let mut items: Vec<_> = saving
            .stored()
            .flat_map(|(_, o)| saves::items(o, &settings.identity.worker))
            .collect();
        items.extend(late.items.iter().cloned());
        let deliver = metrics == Ending::Drained;
        metrics::deliver_late(&mut pipeline, items, deliver, settings.late_delivery).await?;
        late.done();
        // Everything read is stored: say how the job ended, so a replacement need not wait for
        // the lease to lapse. Otherwise the lease lapses, and a restart of this pod (same state
        // folder) may still continue first.
        let all_stored = shipping == Ending::Drained
            && metrics == Ending::Drained
            && saving.cut.is_none()
            && pipeline.backlog() == 0;
        let end = all_stored.then(|| job_end(settings));
        self.lease.finish(end).await?;
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
            saving,
            stored_at: self.stored_at,
        })
    }
}

/// A stop channel that gets every request `stop` gets, and those its sender adds: the metrics
/// loop's, which the shipping loop ends when it learns the worker's folder is another pod's.
fn follow(stop: &Stop) -> (StopSender, Stop) {
    let (tx, rx) = Stop::channel();
    let (forward, mut outer) = (tx.clone(), stop.clone());
    forward.at_least(outer.requests());
    tokio::spawn(async move {
        loop {
            let n = outer.next().await;
            forward.at_least(n);
        }
    });
    (tx, rx)
}

/// Bytes in the files the shipping loop follows, for a loop that stopped before it could read
/// any (its claim was never made): an upper bound of what is not stored.
fn unread_bytes(settings: &Settings) -> impl Fn() -> u64 + Send + 'static {
    let globs = settings.logs.globs.clone();
    let tfevents = settings.tfevents.clone();
    move || {
        let logs: u64 = (globs.iter())
            .flat_map(|g| g.matches().found)
            .filter_map(|found| std::fs::metadata(found.path).ok())
            .map(|m| m.len())
            .sum();
        logs + tfevents.iter().map(|d| folder_bytes(d)).sum::<u64>()
    }
}

fn folder_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// How the job ended, from its exit-code file (and the run's status the script may have set).
fn job_end(settings: &Settings) -> JobEnd {
    use crate::metrics::model::RunStatus;
    let exit = settings.lifecycle.exit_when_file.as_deref();
    let status = exit.and_then(|f| crate::metrics::run_info::final_status(f, &settings.state_dir));
    match status {
        Some(RunStatus::Succeeded) => JobEnd::Succeeded,
        Some(RunStatus::Failed) => JobEnd::Failed,
        Some(RunStatus::Running) | None => JobEnd::Stopped,
    }
}
