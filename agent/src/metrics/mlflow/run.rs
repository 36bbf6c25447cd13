//! Which MLflow run a sidecar writes to, found again after any restart.
//!
//! * `MLFLOW_RUN_ID` set: that run (it must exist and not be deleted).
//! * Otherwise one run per (Periscope experiment, worker) in the MLflow experiment
//!   `MLFLOW_EXPERIMENT_NAME` (default: the Periscope experiment id), found or created with
//!   `experiments/get-by-name` / `experiments/create` (a concurrent create by another worker is
//!   fine: `RESOURCE_ALREADY_EXISTS` means look it up again). The run is named after the worker
//!   (`run_name`, `mlflow.runName`) and carries the tags `periscope.experiment` and
//!   `periscope.worker`. It is found again by searching for those tags, so a crash after
//!   `runs/create` but before the run id was remembered does not make a second run; the run id
//!   is also remembered in `<state-dir>/mlflow-run.json` to save the search after a restart.
//!
//! This module owns that lookup and the state file, and reads a run's `artifact_uri`; it never
//! writes items.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::{Run, RunAnswer, RunInfo};

use super::client::{ApiClient, ApiError};
use crate::error::ErrorClass;
use crate::metrics::model::now_ms;
use crate::metrics::sink::SinkError;

/// The state file's name inside `--state-dir`.
pub const STATE_FILE: &str = "mlflow-run.json";
/// Tags that identify a worker's run.
pub const TAG_EXPERIMENT: &str = "periscope.experiment";
pub const TAG_WORKER: &str = "periscope.worker";

/// What the state file remembers. Invariant: `run_id` is the run of (`server`,
/// `experiment_name`, `experiment`, `worker`) and is only trusted for that same combination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    server: String,
    experiment_name: String,
    experiment: String,
    worker: String,
    run_id: String,
}

/// Who a run is for. Invariant: `experiment` and `worker` are a Periscope identity (non-empty,
/// no `/`).
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The MLflow experiment's name.
    pub experiment_name: &'a str,
    /// The Periscope experiment id.
    pub experiment: &'a str,
    pub worker: &'a str,
    /// `MLFLOW_RUN_ID`.
    pub attach: Option<&'a str>,
    pub state_dir: &'a Path,
}

/// Finds or creates the run for `target` and returns its id. Every failure is an [`ApiError`]
/// the pipeline retries when it is transient.
pub async fn resolve(client: &ApiClient, target: &Target<'_>) -> Result<String, SinkError> {
    if let Some(run_id) = target.attach {
        let run = get_run(client, run_id).await.map_err(|e| match e.code() {
            Some("RESOURCE_DOES_NOT_EXIST") => SinkError {
                message: format!("MLFLOW_RUN_ID {run_id} is not a run of {}", client.shown()),
                class: ErrorClass::NotFound,
                transient: false,
                hint: None,
            },
            _ => e.into(),
        })?;
        if run.lifecycle_stage == "deleted" {
            return Err(SinkError {
                message: format!(
                    "MLFLOW_RUN_ID {run_id} is a deleted run; restore it or unset MLFLOW_RUN_ID"
                ),
                class: ErrorClass::NotFound,
                transient: false,
                hint: None,
            });
        }
        return Ok(run_id.to_string());
    }
    let wanted = |run_id: String| Remembered {
        server: client.shown().to_string(),
        experiment_name: target.experiment_name.to_string(),
        experiment: target.experiment.to_string(),
        worker: target.worker.to_string(),
        run_id,
    };
    let state = target.state_dir.join(STATE_FILE);
    if let Some(known) = load(&state) {
        if known == wanted(known.run_id.clone()) {
            match get_run(client, &known.run_id).await {
                Ok(run) if run.lifecycle_stage != "deleted" => return Ok(known.run_id),
                Ok(_) => {
                    tracing::warn!(run_id = %known.run_id, "the remembered MLflow run was deleted; looking for another")
                }
                Err(e) if e.code() == Some("RESOURCE_DOES_NOT_EXIST") => {
                    tracing::warn!(run_id = %known.run_id, "the remembered MLflow run is gone; looking for another")
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let experiment_id = experiment_id(client, target.experiment_name).await?;
    let run_id = match search(client, &experiment_id, target).await? {
        Some(id) => {
            tracing::info!(run_id = %id, "continuing this worker's MLflow run");
            id
        }
        None => create(client, &experiment_id, target).await?,
    };
    save(&state, &wanted(run_id.clone()))?;
    Ok(run_id)
}

/// The run's `artifact_uri`, as the tracking server reports it (empty when it reports none).
pub async fn artifact_uri(client: &ApiClient, run_id: &str) -> Result<String, ApiError> {
    Ok(get_run(client, run_id).await?.artifact_uri)
}

async fn get_run(client: &ApiClient, run_id: &str) -> Result<RunInfo, ApiError> {
    let answer: RunAnswer = client.get("runs/get", &[("run_id", run_id)]).await?;
    Ok(answer.run.info)
}

/// The id of the experiment called `name`, created when there is none.
pub async fn experiment_id(client: &ApiClient, name: &str) -> Result<String, SinkError> {
    #[derive(Deserialize)]
    struct Experiment {
        experiment_id: String,
        #[serde(default)]
        lifecycle_stage: String,
    }
    #[derive(Deserialize)]
    struct ByName {
        experiment: Experiment,
    }
    #[derive(Deserialize)]
    struct Created {
        experiment_id: String,
    }
    // Two rounds at most: not found → create → (someone else created it) → found.
    for _ in 0..2 {
        match client
            .get::<ByName>("experiments/get-by-name", &[("experiment_name", name)])
            .await
        {
            Ok(found) if found.experiment.lifecycle_stage == "deleted" => {
                return Err(SinkError {
                    message: format!(
                        "the MLflow experiment `{name}` is deleted; restore it, or set \
                         MLFLOW_EXPERIMENT_NAME to another name"
                    ),
                    class: ErrorClass::NotFound,
                    transient: false,
                    hint: None,
                })
            }
            Ok(found) => return Ok(found.experiment.experiment_id),
            Err(e) if e.code() == Some("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e.into()),
        }
        match client
            .post_json::<Created>("experiments/create", &json!({ "name": name }))
            .await
        {
            Ok(created) => {
                tracing::info!(experiment = name, id = %created.experiment_id, "created the MLflow experiment");
                return Ok(created.experiment_id);
            }
            Err(e) if e.code() == Some("RESOURCE_ALREADY_EXISTS") => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SinkError {
        message: format!(
            "the MLflow experiment `{name}` exists according to experiments/create but \
             experiments/get-by-name cannot find it"
        ),
        class: ErrorClass::Network,
        transient: true,
        hint: None,
    })
}

/// A filter-string literal: MLflow's parser takes either quote; use the one the value lacks.
pub fn literal(value: &str) -> Option<String> {
    if !value.contains('\'') {
        Some(format!("'{value}'"))
    } else if !value.contains('"') {
        Some(format!("\"{value}\""))
    } else {
        None
    }
}

/// This worker's earliest active run in the experiment, if any.
async fn search(
    client: &ApiClient,
    experiment_id: &str,
    target: &Target<'_>,
) -> Result<Option<String>, SinkError> {
    #[derive(Deserialize)]
    struct Found {
        #[serde(default)]
        runs: Vec<Run>,
    }
    let (Some(experiment), Some(worker)) = (literal(target.experiment), literal(target.worker))
    else {
        return Err(SinkError {
            message:
                "an experiment id or worker with both ' and \" cannot be searched for in MLflow"
                    .into(),
            class: ErrorClass::Usage,
            transient: false,
            hint: None,
        });
    };
    let filter =
        format!("tags.`{TAG_EXPERIMENT}` = {experiment} and tags.`{TAG_WORKER}` = {worker}");
    let found: Found = client
        .post_json(
            "runs/search",
            &json!({
                "experiment_ids": [experiment_id],
                "filter": filter,
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 1,
                // The oldest, so that even two runs left by a race resolve to the same one.
                "order_by": ["attributes.start_time ASC"],
            }),
        )
        .await?;
    Ok(found.runs.into_iter().next().map(|r| r.info.run_id))
}

async fn create(
    client: &ApiClient,
    experiment_id: &str,
    target: &Target<'_>,
) -> Result<String, SinkError> {
    let tags = [
        ("mlflow.runName", target.worker),
        (TAG_EXPERIMENT, target.experiment),
        (TAG_WORKER, target.worker),
    ];
    let created: RunAnswer = client
        .post_json(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": target.worker,
                "start_time": now_ms(),
                "tags": tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            }),
        )
        .await?;
    tracing::info!(run_id = %created.run.info.run_id, worker = target.worker, "created the MLflow run");
    Ok(created.run.info.run_id)
}

fn load(path: &Path) -> Option<Remembered> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save(path: &Path, remembered: &Remembered) -> Result<(), SinkError> {
    let io = |e: std::io::Error| SinkError {
        message: format!("cannot remember the MLflow run in {}: {e}", path.display()),
        class: ErrorClass::Io,
        transient: true,
        hint: None,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Serializing a struct of strings cannot fail.
    let bytes = serde_json::to_vec_pretty(remembered).unwrap_or_default();
    crate::fsutil::write_atomic(path, &bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_literals_pick_a_quote_the_value_lacks() {
        assert_eq!(literal("worker-0").as_deref(), Some("'worker-0'"));
        assert_eq!(literal("it's").as_deref(), Some("\"it's\""));
        assert_eq!(literal("'\""), None);
    }

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s").join(STATE_FILE);
        assert_eq!(load(&path), None);
        let r = Remembered {
            server: "http://127.0.0.1:5000".into(),
            experiment_name: "e".into(),
            experiment: "e".into(),
            worker: "worker-0".into(),
            run_id: "abc".into(),
        };
        save(&path, &r).unwrap();
        assert_eq!(load(&path), Some(r));
    }
}
