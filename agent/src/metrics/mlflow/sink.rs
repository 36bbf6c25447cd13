//! [`MlflowSink`]: applies queue batches to an MLflow tracking server, idempotently.
//!
//! Redelivery (the queue hands out again what was not acknowledged before a crash, and a batch
//! whose later requests failed is sent again whole) relies on what MLflow does with each item:
//!
//! * Metrics: MLflow's SQL stores key a point by (run, key, timestamp, step, value); logging the
//!   identical point again adds no row (checked against the real server by the integration
//!   tests). MLflow's file store (`./mlruns`) appends instead, so a redelivery after a crash can
//!   double points there; use a database-backed server.
//! * Params: immutable in MLflow. The same value again is accepted; a different value is refused,
//!   and then the first value wins: the refused params are dropped with a warning, so one bad
//!   param never stops the queue.
//! * Tags and status: set again to the same value, which changes nothing.
//! * Artifacts saves: their tag, and where the run's `artifact_uri` is in the save's bucket,
//!   server-side copies of the save into the run's artifacts ([`mirror`]), which overwrite
//!   themselves when made again.
//!
//! It never retries by itself and never logs a credential.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::api::{RunAnswer, UpdateRun};
use super::batch::{Call, LogBatch, Planner};
use super::client::{ApiClient, ApiError};
use super::mirror;
use super::run::{self, Target};
use super::run_artifacts::{self, Sources};
use super::script_run::{Owner, ScriptRuns};
use super::MlflowSettings;
use crate::error::{Classify, ErrorClass};
use crate::metrics::model::{ArtifactsSave, Item};
use crate::metrics::sink::{Sink, SinkError};
use crate::storage::StoreOptions;

/// Server-side copies in flight while a save is copied into a run's artifacts.
const COPY_CONCURRENCY: usize = 8;

/// The MLflow metastore. Invariant: `runs` holds, per Periscope experiment, a run id that
/// [`run::resolve`] returned for this server and worker.
pub struct MlflowSink {
    client: ApiClient,
    settings: MlflowSettings,
    runs: HashMap<String, String>,
    /// Run id → its `artifact_uri`, asked for when the run's first artifacts save comes.
    artifact_uris: HashMap<String, String>,
    planner: Planner,
    /// The `Retry-After` of the last failed call, for [`Sink::retry_after`].
    retry_after: Option<Duration>,
    /// The server runs of the scripts' runs (loaded when the first one comes).
    script_runs: Option<ScriptRuns>,
    /// Where the scripts' stored files are read from.
    sources: Sources,
}

impl MlflowSink {
    /// Prepares the client; contacts no server (the first write does, so a server that is down
    /// at start only delays delivery).
    pub fn open(settings: MlflowSettings) -> Result<MlflowSink, SinkError> {
        let client = ApiClient::new(&settings.url, &settings.transport)?;
        Ok(MlflowSink {
            client,
            settings,
            runs: HashMap::new(),
            artifact_uris: HashMap::new(),
            planner: Planner::default(),
            retry_after: None,
            script_runs: None,
            sources: Sources::default(),
        })
    }

    fn script_runs(&mut self) -> &mut ScriptRuns {
        let (dir, server) = (&self.settings.state_dir, self.client.shown());
        self.script_runs
            .get_or_insert_with(|| ScriptRuns::load(dir, server))
    }

    /// The server id of a call's run: the worker's (`None`) or a script's.
    async fn target(&mut self, experiment: &str, run: Option<&str>) -> Result<String, SinkError> {
        match run {
            None => self.run_id(experiment).await,
            Some(local) => {
                let client = self.client.clone();
                self.script_runs().server_id(&client, local).await
            }
        }
    }

    /// A script run's batch with its `mlflow.parentRunId` tag naming the parent's server run.
    async fn with_server_parent(
        &mut self,
        batch: &LogBatch,
    ) -> Result<Option<LogBatch>, SinkError> {
        let Some(parent) = batch.tags.iter().find(|t| t.key == "mlflow.parentRunId") else {
            return Ok(None);
        };
        let client = self.client.clone();
        let server = self.script_runs().server_id(&client, &parent.value).await?;
        let mut out = batch.clone();
        for t in &mut out.tags {
            if t.key == "mlflow.parentRunId" {
                t.value = server.clone();
            }
        }
        Ok(Some(out))
    }

    /// The run items of `experiment` go to, found or created once per sidecar.
    pub async fn run_id(&mut self, experiment: &str) -> Result<String, SinkError> {
        if let Some(id) = self.runs.get(experiment) {
            return Ok(id.clone());
        }
        let target = Target {
            experiment_name: self
                .settings
                .experiment_name
                .as_deref()
                .unwrap_or(experiment),
            experiment,
            worker: &self.settings.worker,
            attach: self.settings.run_id.as_deref(),
            state_dir: &self.settings.state_dir,
        };
        let id = run::resolve(&self.client, &target).await?;
        tracing::info!(server = %self.client.shown(), run_id = %id, "writing metrics to this MLflow run");
        self.runs.insert(experiment.to_string(), id.clone());
        Ok(id)
    }

    async fn apply(&mut self, experiment: &str, items: &[Item]) -> Result<(), SinkError> {
        self.retry_after = None;
        for call in self.planner.plan(items) {
            let result = match &call {
                Call::Log(batch) => {
                    let run_id = self.target(experiment, batch.run.as_deref()).await?;
                    let rewritten = match batch.run {
                        Some(_) => self.with_server_parent(batch).await?,
                        None => None,
                    };
                    let batch = rewritten.as_ref().unwrap_or(batch);
                    if batch.params.is_empty() {
                        self.log(&run_id, batch).await
                    } else {
                        self.log_params(&run_id, batch).await
                    }
                }
                Call::Status { status, end_time } => {
                    let run_id = self.run_id(experiment).await?;
                    let body = UpdateRun {
                        run_id: Some(run_id),
                        status: Some(status.to_string()),
                        end_time: *end_time,
                        ..UpdateRun::default()
                    };
                    self.client
                        .post_json::<serde_json::Value>("runs/update", &body)
                        .await
                        .map(drop)
                }
                Call::Artifacts(save) => {
                    let run_id = self.run_id(experiment).await?;
                    self.artifacts(&run_id, save).await?;
                    continue;
                }
                Call::ScriptRun(run) => {
                    let client = self.client.clone();
                    let default = self
                        .settings
                        .experiment_name
                        .clone()
                        .unwrap_or_else(|| experiment.to_string());
                    let worker = self.settings.worker.clone();
                    let owner = Owner {
                        default_experiment: &default,
                        experiment,
                        worker: &worker,
                    };
                    self.script_runs().apply(&client, run, owner).await?;
                    continue;
                }
                Call::DeleteTag { run, key } => {
                    let run_id = self.target(experiment, Some(run)).await?;
                    let body = serde_json::json!({ "run_id": run_id, "key": key });
                    match self
                        .client
                        .post_json::<serde_json::Value>("runs/delete-tag", &body)
                        .await
                    {
                        // Deleted by an earlier delivery of the same batch.
                        Err(e) if e.code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(()),
                        other => other.map(drop),
                    }
                }
                Call::Inputs { run, datasets } => {
                    let run_id = self.target(experiment, Some(run)).await?;
                    let body = serde_json::json!({ "run_id": run_id, "datasets": datasets });
                    self.client
                        .post_json::<serde_json::Value>("runs/log-inputs", &body)
                        .await
                        .map(drop)
                }
                Call::RunArtifact(file) => {
                    let run_id = self.target(experiment, file.run.as_deref()).await?;
                    let uri = self.artifact_uri(&run_id).await?;
                    run_artifacts::deliver(&self.client, &uri, file, &mut self.sources).await?;
                    continue;
                }
            };
            if let Err(e) = result {
                self.retry_after = e.retry_after();
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The run's `artifact_uri`, asked for once.
    async fn artifact_uri(&mut self, run_id: &str) -> Result<String, SinkError> {
        if let Some(uri) = self.artifact_uris.get(run_id) {
            return Ok(uri.clone());
        }
        let uri = run::artifact_uri(&self.client, run_id).await.map_err(|e| {
            self.retry_after = e.retry_after();
            SinkError::from(e)
        })?;
        self.artifact_uris.insert(run_id.to_string(), uri.clone());
        Ok(uri)
    }

    /// Copies a save into the run's artifacts when they are in the save's bucket (see
    /// [`mirror`]); otherwise the save's tag, logged before, is its record. A copy that may work
    /// later (the store did not answer) fails the batch, so the queue delivers it again; any
    /// other failure is warned about and leaves the tag as the record, so that one save the
    /// copy cannot be made of never stops the queue.
    async fn artifacts(&mut self, run_id: &str, save: &ArtifactsSave) -> Result<(), SinkError> {
        let uri = self.artifact_uri(run_id).await?;
        let target = match mirror::plan(&save.url, &uri, &save.worker, save.save) {
            Ok(target) => target,
            Err(why) => {
                tracing::info!(save = save.save, worker = %save.worker, reason = %why,
                    "artifacts save recorded in MLflow as a tag only");
                return Ok(());
            }
        };
        let copied = mirror::copy(
            &target,
            &save.manifest_sha256,
            &StoreOptions::default(),
            COPY_CONCURRENCY,
        )
        .await;
        match copied {
            Ok(c) => {
                tracing::info!(save = save.save, worker = %save.worker, files = c.files,
                    bytes = c.bytes, to = %target.shown, "artifacts save copied into the MLflow run's artifacts");
                Ok(())
            }
            Err(e) if e.class() == ErrorClass::Network => Err(SinkError::transient(
                ErrorClass::Network,
                format!(
                    "cannot copy artifacts save {} into the MLflow run's artifacts at {}: {e}",
                    save.save, target.shown
                ),
            )),
            Err(e) => {
                tracing::warn!(save = save.save, worker = %save.worker, to = %target.shown, error = %e,
                    "cannot copy the artifacts save into the MLflow run's artifacts; its tag is the record");
                Ok(())
            }
        }
    }

    async fn log(&self, run_id: &str, batch: &LogBatch) -> Result<(), ApiError> {
        let body = batch.body(run_id).map_err(|e| ApiError::Setup {
            detail: format!("cannot encode runs/log-batch: {e}"),
        })?;
        self.client
            .post::<serde_json::Value>("runs/log-batch", body)
            .await
            .map(drop)
    }

    /// Logs a batch of params; when MLflow refuses it because some already have another value,
    /// keeps those first values (with a warning) and logs the rest.
    async fn log_params(&self, run_id: &str, batch: &LogBatch) -> Result<(), ApiError> {
        let refused = match self.log(run_id, batch).await {
            Err(e) if e.code() == Some("INVALID_PARAMETER_VALUE") => e,
            other => return other,
        };
        let existing = self.params(run_id).await?;
        let mut rest = Vec::new();
        for p in &batch.params {
            match existing.get(&p.key) {
                None => rest.push(p.clone()),
                Some(v) if *v == p.value => {}
                Some(v) => tracing::warn!(key = %p.key, kept = %v, refused = %p.value,
                    "MLflow params cannot change; the first value stays"),
            }
        }
        if rest.len() == batch.params.len() {
            // No conflict explains the refusal: report it as it is.
            return Err(refused);
        }
        if rest.is_empty() {
            return Ok(());
        }
        self.log(run_id, &LogBatch::with_params(rest)).await
    }

    /// The run's params as the server has them.
    async fn params(&self, run_id: &str) -> Result<HashMap<String, String>, ApiError> {
        let answer: RunAnswer = self.client.get("runs/get", &[("run_id", run_id)]).await?;
        Ok(answer
            .run
            .data
            .params
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect())
    }
}

impl Sink for MlflowSink {
    fn describe(&self) -> String {
        format!("mlflow+{}", self.client.shown())
    }

    fn write<'a>(
        &'a mut self,
        experiment: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.apply(experiment, items))
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}
