//! Which tracking-server run each run a script made through the endpoint is, found again after
//! any restart.
//!
//! A script run becomes one run on the server, in the experiment of the same name (the default
//! experiment: the worker's own, `MLFLOW_EXPERIMENT_NAME` or the Periscope experiment id),
//! created when missing, with the script's run name and the tags `periscope.experiment`,
//! `periscope.worker` and `periscope.run_id` (the endpoint's id). The mapping is remembered in
//! `<state-dir>/mlflow-script-runs.json`; a run not found there is searched for by its
//! `periscope.run_id` tag, so a crash between `runs/create` and remembering never makes a second
//! run. A nested run's `mlflow.parentRunId` names its parent's server id.
//!
//! This module owns that lookup and the state file; it writes no metrics, params or tags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::{Run, RunAnswer, UpdateRun};
use super::client::ApiClient;
use super::run::{experiment_id, TAG_EXPERIMENT, TAG_WORKER};
use crate::error::ErrorClass;
use crate::metrics::model::ScriptRun;
use crate::metrics::sink::SinkError;

/// The state file's name inside `--state-dir`.
pub const STATE_FILE: &str = "mlflow-script-runs.json";
/// The tag that names the endpoint's id of a run.
pub const TAG_RUN: &str = "periscope.run_id";

/// What the state file remembers. Invariant: every value is the server id of the key's run on
/// `server`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    server: String,
    runs: BTreeMap<String, String>,
}

/// The mapping, as far as known. Invariant: `known.runs` agrees with the state file once a run
/// was added.
pub struct ScriptRuns {
    path: PathBuf,
    known: Remembered,
}

/// Who the worker's own run is for: where the default experiment goes, and the tags.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// The experiment name for runs of the endpoint's default experiment.
    pub default_experiment: &'a str,
    pub experiment: &'a str,
    pub worker: &'a str,
}

impl ScriptRuns {
    /// The mapping kept in `state_dir` for `server` (an empty one for another server).
    pub fn load(state_dir: &Path, server: &str) -> ScriptRuns {
        let path = state_dir.join(STATE_FILE);
        let known = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok())
            .filter(|r| r.server == server)
            .unwrap_or_else(|| Remembered {
                server: server.to_string(),
                runs: BTreeMap::new(),
            });
        ScriptRuns { path, known }
    }

    fn remember(&mut self, local: &str, server_id: &str) -> Result<(), SinkError> {
        self.known
            .runs
            .insert(local.to_string(), server_id.to_string());
        let io = |e: std::io::Error| {
            SinkError::transient(
                ErrorClass::Io,
                format!(
                    "cannot remember MLflow runs in {}: {e}",
                    self.path.display()
                ),
            )
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Serializing a map of strings cannot fail.
        let bytes = serde_json::to_vec_pretty(&self.known).unwrap_or_default();
        crate::fsutil::write_atomic(&self.path, &bytes).map_err(io)
    }

    /// The server id of the endpoint's run `local`, searched for by its tag on the server when
    /// the state file does not have it.
    pub async fn server_id(
        &mut self,
        client: &ApiClient,
        local: &str,
    ) -> Result<String, SinkError> {
        if let Some(id) = self.known.runs.get(local) {
            return Ok(id.clone());
        }
        #[derive(Deserialize)]
        struct Experiments {
            #[serde(default)]
            experiments: Vec<super::api::Experiment>,
        }
        let all: Experiments = client
            .post_json(
                "experiments/search",
                &json!({"max_results": 1000, "view_type": "ALL"}),
            )
            .await?;
        let ids: Vec<String> = all
            .experiments
            .into_iter()
            .map(|e| e.experiment_id)
            .collect();
        match search(client, &ids, local).await? {
            Some(id) => {
                self.remember(local, &id)?;
                Ok(id)
            }
            None => Err(SinkError::permanent(
                ErrorClass::Integrity,
                format!("the MLflow run of the script's run {local} is not on the server and its record is not in the queue"),
            )),
        }
    }

    /// Creates the server's run of `run` (or finds the one made before), then brings its
    /// status, end time and name up to date. Returns its server id.
    pub async fn apply(
        &mut self,
        client: &ApiClient,
        run: &ScriptRun,
        owner: Owner<'_>,
    ) -> Result<String, SinkError> {
        let name = run
            .experiment
            .as_deref()
            .unwrap_or(owner.default_experiment);
        let id = match self.known.runs.get(&run.run_id) {
            Some(id) => id.clone(),
            None => {
                let experiment = experiment_id(client, name).await?;
                let id =
                    match search(client, std::slice::from_ref(&experiment), &run.run_id).await? {
                        Some(id) => id,
                        None => self.create(client, &experiment, run, owner).await?,
                    };
                self.remember(&run.run_id, &id)?;
                id
            }
        };
        let body = UpdateRun {
            run_id: Some(id.clone()),
            run_uuid: None,
            status: Some(run.status.clone()),
            end_time: run.end_ms,
            run_name: Some(run.name.clone()),
        };
        client
            .post_json::<serde_json::Value>("runs/update", &body)
            .await?;
        Ok(id)
    }

    async fn create(
        &mut self,
        client: &ApiClient,
        experiment: &str,
        run: &ScriptRun,
        owner: Owner<'_>,
    ) -> Result<String, SinkError> {
        let mut tags = vec![
            ("mlflow.runName", run.name.clone()),
            (TAG_EXPERIMENT, owner.experiment.to_string()),
            (TAG_WORKER, owner.worker.to_string()),
            (TAG_RUN, run.run_id.clone()),
        ];
        if let Some(parent) = &run.parent {
            tags.push(("mlflow.parentRunId", self.server_id(client, parent).await?));
        }
        let created: RunAnswer = client
            .post_json(
                "runs/create",
                &json!({
                    "experiment_id": experiment,
                    "run_name": run.name,
                    "user_id": run.user,
                    "start_time": run.start_ms,
                    "tags": tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                }),
            )
            .await?;
        tracing::info!(run = %run.run_id, server_run = %created.run.info.run_id, name = %run.name,
            "created the MLflow run of a script's run");
        Ok(created.run.info.run_id)
    }
}

/// The oldest active run of `experiments` tagged as the endpoint's run `local`.
async fn search(
    client: &ApiClient,
    experiments: &[String],
    local: &str,
) -> Result<Option<String>, SinkError> {
    #[derive(Deserialize)]
    struct Found {
        #[serde(default)]
        runs: Vec<Run>,
    }
    if experiments.is_empty() {
        return Ok(None);
    }
    let Some(value) = super::run::literal(local) else {
        return Ok(None);
    };
    let found: Found = client
        .post_json(
            "runs/search",
            &json!({
                "experiment_ids": experiments,
                "filter": format!("tags.`{TAG_RUN}` = {value}"),
                "run_view_type": "ACTIVE_ONLY",
                "max_results": 1,
                "order_by": ["attributes.start_time ASC"],
            }),
        )
        .await?;
    Ok(found.runs.into_iter().next().map(|r| r.info.run_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_kept_per_server() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = ScriptRuns::load(dir.path(), "http://a");
        runs.remember("local-1", "server-1").unwrap();
        let again = ScriptRuns::load(dir.path(), "http://a");
        assert_eq!(
            again.known.runs.get("local-1").map(String::as_str),
            Some("server-1")
        );
        assert!(ScriptRuns::load(dir.path(), "http://b")
            .known
            .runs
            .is_empty());
    }
}
