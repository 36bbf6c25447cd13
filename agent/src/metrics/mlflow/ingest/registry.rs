//! What the endpoint knows of the experiments, runs and logged models a script made through it,
//! so it answers reads truly (`runs/get`, `metrics/get-history`, searches): a SQLite file in the
//! sidecar's state folder (`mlflow-endpoint.db`), found again after a restart.
//!
//! It is a reading aid, not the record: what a script logs is acknowledged once it is in the
//! metrics queue, and only then written here (WAL with `synchronous=NORMAL`: a committed write
//! survives the process being killed; after a power loss the last writes may be missing here,
//! never from the queue). Every write is idempotent, so a client's retry leaves the same rows.
//!
//! Experiment `0` is MLflow's `Default`, always there. Run ids are 32 random hex digits, as
//! MLflow's; each run gets the worker_index its rows carry in Submarine's tables (the worker for
//! the first run, `<worker>/<n>` for the n-th). This module does no HTTP and knows no queue.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::super::api::{
    Experiment, KeyValue, LoggedModel, LoggedModelData, LoggedModelInfo, Metric, ModelOutput, Run,
    RunData, RunInfo, RunInputs, RunOutputs,
};

/// The default experiment's id and name, as in MLflow.
pub const DEFAULT_EXPERIMENT_ID: &str = "0";
pub const DEFAULT_EXPERIMENT_NAME: &str = "Default";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS experiment (
    experiment_id TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    creation_ms   INTEGER NOT NULL,
    update_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_tag (
    experiment_id TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);
CREATE TABLE IF NOT EXISTS run (
    run_id        TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL UNIQUE,
    experiment_id TEXT NOT NULL,
    name          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    start_ms      INTEGER NOT NULL,
    end_ms        INTEGER,
    parent        TEXT,
    worker_index  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS param (
    run_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS tag (
    run_id TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS metric (
    run_id    TEXT NOT NULL,
    key       TEXT NOT NULL,
    bits      INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    PRIMARY KEY (run_id, key, timestamp, step, bits)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    run_id    TEXT NOT NULL,
    key       TEXT NOT NULL,
    bits      INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS input (
    run_id  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    json    TEXT NOT NULL,
    PRIMARY KEY (run_id, kind, json)
);
CREATE TABLE IF NOT EXISTS output (
    run_id   TEXT NOT NULL,
    model_id TEXT NOT NULL,
    step     INTEGER NOT NULL,
    PRIMARY KEY (run_id, model_id)
);
CREATE TABLE IF NOT EXISTS model (
    model_id      TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    name          TEXT NOT NULL,
    source_run_id TEXT,
    model_type    TEXT NOT NULL,
    status        TEXT NOT NULL,
    creation_ms   INTEGER NOT NULL,
    update_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS model_tag (
    model_id TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
CREATE TABLE IF NOT EXISTS model_param (
    model_id TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);
";

/// A failure of the registry's database. Invariant: `message` holds no secret.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's run registry {path}: {message}")]
pub struct RegistryError {
    pub path: String,
    pub message: String,
    /// The disk had no room (a full state folder): the same request may work later.
    pub full: bool,
}

/// A failure of the registry's database at `path`.
fn db_error(path: &Path, e: rusqlite::Error) -> RegistryError {
    RegistryError {
        path: path.display().to_string(),
        full: e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
        message: e.to_string(),
    }
}

/// A run's own record. Invariant: as the `run` table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub run_id: String,
    pub experiment_id: String,
    pub name: String,
    pub user_id: String,
    pub status: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub parent: Option<String>,
    pub worker_index: String,
}

/// What a new run is made of.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub experiment_id: String,
    pub name: String,
    pub user_id: String,
    pub start_ms: i64,
    pub parent: Option<String>,
    pub tags: Vec<KeyValue>,
}

/// What a new logged model is made of.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub experiment_id: String,
    pub name: String,
    pub source_run_id: Option<String>,
    pub model_type: String,
    pub params: Vec<KeyValue>,
    pub tags: Vec<KeyValue>,
}

/// A logged model's own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub model_id: String,
    pub experiment_id: String,
    pub name: String,
    pub source_run_id: Option<String>,
    pub status: String,
}

/// The open registry. Invariant: the schema exists and experiment `0` is in it.
pub struct Registry {
    conn: Connection,
    path: PathBuf,
    /// The sidecar's worker, whose first run keeps its name as worker_index.
    worker: String,
}

/// The registry, or where to open it once the state folder has room. Invariant: `registry` is
/// `None` only after opening it failed for want of room (see [`RegistryError::full`]).
pub struct Slot {
    registry: Option<Registry>,
    path: PathBuf,
    worker: String,
}

impl Slot {
    /// Opens the registry at `path` for `worker`; a folder with no room leaves it to be opened
    /// at its first use (said once), so the endpoint serves meanwhile (its calls answer MLflow's
    /// retryable 503).
    pub fn open(path: &Path, worker: &str) -> Result<Slot, RegistryError> {
        let registry = match open_or_full(path, worker) {
            Ok(registry) => Some(registry),
            Err(e) if e.full => {
                tracing::warn!(error = %e, "the state folder has no room for the MLflow-compatible \
                    endpoint's run registry; its calls answer 503 (clients retry) until there is room");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Slot {
            registry,
            path: path.to_path_buf(),
            worker: worker.to_string(),
        })
    }

    /// The registry, opened now if it was not yet (said once, when it opens).
    pub fn get(&mut self) -> Result<&mut Registry, RegistryError> {
        if let Some(registry) = self.registry.take() {
            return Ok(self.registry.insert(registry));
        }
        let registry = open_or_full(&self.path, &self.worker)?;
        tracing::info!(path = %self.path.display(),
            "the MLflow-compatible endpoint's run registry is open; its calls are answered");
        Ok(self.registry.insert(registry))
    }
}

/// Opens the registry; a failure while its disk has no room left is [`RegistryError::full`]
/// whatever SQLite says (it cannot tell a full disk from others when it cannot open a file).
fn open_or_full(path: &Path, worker: &str) -> Result<Registry, RegistryError> {
    Registry::open(path, worker).map_err(|mut e| {
        let folder = path.parent().unwrap_or(Path::new("."));
        e.full |= crate::fsutil::out_of_room(folder);
        e
    })
}

/// Random ids: 32 lowercase hex digits, as MLflow's run ids.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

impl Registry {
    /// Opens or creates the registry at `path` for `worker`.
    pub fn open(path: &Path, worker: &str) -> Result<Registry, RegistryError> {
        let err = |e| db_error(path, e);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| RegistryError {
                path: path.display().to_string(),
                full: crate::fsutil::no_room(&e),
                message: format!("cannot create its folder: {e}"),
            })?;
        }
        // Made here first: on a disk with no room SQLite only says it cannot open the file.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| RegistryError {
                path: path.display().to_string(),
                full: crate::fsutil::no_room(&e),
                message: format!("cannot create it: {e}"),
            })?;
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let now = crate::metrics::model::now_ms();
        conn.execute(
            "INSERT OR IGNORE INTO experiment (experiment_id, name, creation_ms, update_ms) \
             VALUES (?1, ?2, ?3, ?3)",
            params![DEFAULT_EXPERIMENT_ID, DEFAULT_EXPERIMENT_NAME, now],
        )
        .map_err(err)?;
        Ok(Registry {
            conn,
            path: path.to_path_buf(),
            worker: worker.to_string(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> RegistryError + '_ {
        move |e| db_error(&self.path, e)
    }

    // ---- experiments ----

    fn experiment_where(
        &self,
        clause: &str,
        value: &str,
    ) -> Result<Option<Experiment>, RegistryError> {
        let found = self
            .conn
            .query_row(
                &format!(
                    "SELECT experiment_id, name, creation_ms, update_ms FROM experiment WHERE {clause}"
                ),
                [value],
                |r| {
                    Ok(Experiment {
                        experiment_id: r.get(0)?,
                        name: r.get(1)?,
                        creation_time: Some(r.get(2)?),
                        last_update_time: Some(r.get(3)?),
                        ..Experiment::default()
                    })
                },
            )
            .optional()
            .map_err(self.err())?;
        found.map(|e| self.with_experiment_tags(e)).transpose()
    }

    fn with_experiment_tags(&self, mut e: Experiment) -> Result<Experiment, RegistryError> {
        e.artifact_location = format!("mlflow-artifacts:/{}", e.experiment_id);
        e.lifecycle_stage = "active".into();
        e.tags = self.pairs(
            "SELECT key, value FROM experiment_tag WHERE experiment_id = ?1 ORDER BY key",
            &e.experiment_id,
        )?;
        Ok(e)
    }

    /// The experiment with this id.
    pub fn experiment(&self, id: &str) -> Result<Option<Experiment>, RegistryError> {
        self.experiment_where("experiment_id = ?1", id)
    }

    /// The experiment with this name.
    pub fn experiment_by_name(&self, name: &str) -> Result<Option<Experiment>, RegistryError> {
        self.experiment_where("name = ?1", name)
    }

    /// Every experiment.
    pub fn experiments(&self) -> Result<Vec<Experiment>, RegistryError> {
        let ids: Vec<String> = self.strings("SELECT experiment_id FROM experiment", None)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.experiment(&id)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Creates the experiment `name` and returns its id; `None` when the name is taken.
    pub fn create_experiment(
        &mut self,
        name: &str,
        tags: &[KeyValue],
        now_ms: i64,
    ) -> Result<Option<String>, RegistryError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|e| db_error(&self.path, e))?;
        let result = (|| -> rusqlite::Result<_> {
            let taken: Option<String> = tx
                .query_row(
                    "SELECT experiment_id FROM experiment WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            if taken.is_some() {
                return Ok(None);
            }
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(CAST(experiment_id AS INTEGER)), 0) + 1 FROM experiment",
                [],
                |r| r.get(0),
            )?;
            let id = next.to_string();
            tx.execute(
                "INSERT INTO experiment (experiment_id, name, creation_ms, update_ms) \
                 VALUES (?1, ?2, ?3, ?3)",
                params![id, name, now_ms],
            )?;
            for t in tags {
                tx.execute(
                    "INSERT OR REPLACE INTO experiment_tag (experiment_id, key, value) \
                     VALUES (?1, ?2, ?3)",
                    params![id, t.key, t.value],
                )?;
            }
            Ok(Some(id))
        })();
        let id = result.map_err(self_err(&self.path))?;
        tx.commit().map_err(self_err(&self.path))?;
        Ok(id)
    }

    /// Sets a tag of an experiment (which must exist).
    pub fn set_experiment_tag(
        &mut self,
        experiment_id: &str,
        tag: &KeyValue,
    ) -> Result<(), RegistryError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO experiment_tag (experiment_id, key, value) VALUES (?1, ?2, ?3)",
                params![experiment_id, tag.key, tag.value],
            )
            .map(drop)
            .map_err(self.err())
    }

    // ---- runs ----

    /// Creates a run and returns its record.
    pub fn create_run(&mut self, new: &NewRun) -> Result<RunRecord, RegistryError> {
        let worker = self.worker.clone();
        let tx = self.conn.transaction().map_err(self_err(&self.path))?;
        let record = (|| -> rusqlite::Result<RunRecord> {
            let seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM run", [], |r| {
                r.get(0)
            })?;
            let worker_index = if seq == 1 {
                worker.clone()
            } else {
                format!("{worker}/{seq}")
            };
            let record = RunRecord {
                run_id: new_id(),
                experiment_id: new.experiment_id.clone(),
                name: new.name.clone(),
                user_id: new.user_id.clone(),
                status: "RUNNING".into(),
                start_ms: new.start_ms,
                end_ms: None,
                parent: new.parent.clone(),
                worker_index,
            };
            tx.execute(
                "INSERT INTO run (run_id, seq, experiment_id, name, user_id, status, start_ms, \
                 end_ms, parent, worker_index) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9)",
                params![
                    record.run_id,
                    seq,
                    record.experiment_id,
                    record.name,
                    record.user_id,
                    record.status,
                    record.start_ms,
                    record.parent,
                    record.worker_index
                ],
            )?;
            for t in &new.tags {
                tx.execute(
                    "INSERT OR REPLACE INTO tag (run_id, key, value) VALUES (?1, ?2, ?3)",
                    params![record.run_id, t.key, t.value],
                )?;
            }
            Ok(record)
        })();
        let record = record.map_err(self_err(&self.path))?;
        tx.commit().map_err(self_err(&self.path))?;
        Ok(record)
    }

    /// Removes a run made by [`Registry::create_run`] whose creation could not be queued.
    pub fn delete_run(&mut self, run_id: &str) -> Result<(), RegistryError> {
        for table in ["tag", "param", "metric", "latest", "input", "output", "run"] {
            self.conn
                .execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [run_id])
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// A run's record.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, RegistryError> {
        self.conn
            .query_row(
                "SELECT run_id, experiment_id, name, user_id, status, start_ms, end_ms, parent, \
                 worker_index FROM run WHERE run_id = ?1",
                [run_id],
                run_record,
            )
            .optional()
            .map_err(self.err())
    }

    /// Every run of these experiments (all, when empty), oldest first.
    pub fn runs(&self, experiment_ids: &[String]) -> Result<Vec<RunRecord>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run_id, experiment_id, name, user_id, status, start_ms, end_ms, parent, \
                 worker_index FROM run ORDER BY seq",
            )
            .map_err(self.err())?;
        let rows = stmt.query_map([], run_record).map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(self.err())?;
            if experiment_ids.is_empty() || experiment_ids.contains(&row.experiment_id) {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Changes a run's status, end time or name; returns the record as it is now.
    pub fn update_run(
        &mut self,
        run_id: &str,
        status: Option<&str>,
        end_ms: Option<i64>,
        name: Option<&str>,
    ) -> Result<Option<RunRecord>, RegistryError> {
        self.conn
            .execute(
                "UPDATE run SET status = COALESCE(?2, status), end_ms = COALESCE(?3, end_ms), \
                 name = COALESCE(?4, name) WHERE run_id = ?1",
                params![run_id, status, end_ms, name],
            )
            .map_err(self.err())?;
        if let Some(name) = name {
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO tag (run_id, key, value) VALUES (?1, 'mlflow.runName', ?2)",
                    params![run_id, name],
                )
                .map_err(self.err())?;
        }
        self.run(run_id)
    }

    /// The params of `run_id` among `keys` that already have another value than the one given
    /// (MLflow's params cannot change), as (key, stored value).
    pub fn changed_params(
        &self,
        run_id: &str,
        params: &[KeyValue],
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let mut out = Vec::new();
        for p in params {
            let stored: Option<String> = self
                .conn
                .query_row(
                    "SELECT value FROM param WHERE run_id = ?1 AND key = ?2",
                    [run_id, p.key.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err())?;
            if let Some(v) = stored.filter(|v| *v != p.value) {
                out.push((p.key.clone(), v));
            }
        }
        Ok(out)
    }

    /// Records logged metrics, params and tags of a run (already queued), in one transaction.
    pub fn log(
        &mut self,
        run_id: &str,
        metrics: &[Metric],
        params: &[KeyValue],
        tags: &[KeyValue],
    ) -> Result<(), RegistryError> {
        let tx = self.conn.transaction().map_err(self_err(&self.path))?;
        let result = (|| -> rusqlite::Result<_> {
            for p in params {
                tx.execute(
                    "INSERT OR IGNORE INTO param (run_id, key, value) VALUES (?1, ?2, ?3)",
                    params![run_id, p.key, p.value],
                )?;
            }
            for t in tags {
                tx.execute(
                    "INSERT OR REPLACE INTO tag (run_id, key, value) VALUES (?1, ?2, ?3)",
                    params![run_id, t.key, t.value],
                )?;
                if t.key == "mlflow.runName" {
                    tx.execute(
                        "UPDATE run SET name = ?2 WHERE run_id = ?1",
                        params![run_id, t.value],
                    )?;
                }
            }
            let mut point = tx.prepare_cached(
                "INSERT OR IGNORE INTO metric (run_id, key, bits, timestamp, step) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut latest = tx.prepare_cached(
                "SELECT bits, timestamp, step FROM latest WHERE run_id = ?1 AND key = ?2",
            )?;
            let mut set_latest = tx.prepare_cached(
                "INSERT OR REPLACE INTO latest (run_id, key, bits, timestamp, step) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for m in metrics {
                let (ts, step) = (m.timestamp.unwrap_or(0), m.step.unwrap_or(0));
                let bits = m.value.to_bits() as i64;
                point.execute(params![run_id, m.key, bits, ts, step])?;
                let before: Option<(i64, i64, i64)> = latest
                    .query_row(params![run_id, m.key], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?;
                let newer = match before {
                    None => true,
                    Some((b, t, s)) => later((step, ts, m.value), (s, t, f64::from_bits(b as u64))),
                };
                if newer {
                    set_latest.execute(params![run_id, m.key, bits, ts, step])?;
                }
            }
            Ok(())
        })();
        result.map_err(self_err(&self.path))?;
        tx.commit().map_err(self_err(&self.path))
    }

    /// Deletes a run's tag; false when it had none of that key.
    pub fn delete_tag(&mut self, run_id: &str, key: &str) -> Result<bool, RegistryError> {
        self.conn
            .execute(
                "DELETE FROM tag WHERE run_id = ?1 AND key = ?2",
                [run_id, key],
            )
            .map(|n| n > 0)
            .map_err(self.err())
    }

    /// True when the run has a tag `key`.
    pub fn has_tag(&self, run_id: &str, key: &str) -> Result<bool, RegistryError> {
        self.conn
            .query_row(
                "SELECT 1 FROM tag WHERE run_id = ?1 AND key = ?2",
                [run_id, key],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(self.err())
    }

    /// Keeps a run's dataset and model inputs (MLflow's JSON, kept as given).
    pub fn log_inputs(
        &mut self,
        run_id: &str,
        datasets: &[serde_json::Value],
        models: &[serde_json::Value],
    ) -> Result<(), RegistryError> {
        let tx = self.conn.transaction().map_err(self_err(&self.path))?;
        let result = (|| -> rusqlite::Result<_> {
            for (kind, list) in [("dataset", datasets), ("model", models)] {
                for v in list {
                    tx.execute(
                        "INSERT OR IGNORE INTO input (run_id, kind, json) VALUES (?1, ?2, ?3)",
                        params![run_id, kind, v.to_string()],
                    )?;
                }
            }
            Ok(())
        })();
        result.map_err(self_err(&self.path))?;
        tx.commit().map_err(self_err(&self.path))
    }

    /// Records models a run produced.
    pub fn log_outputs(
        &mut self,
        run_id: &str,
        models: &[ModelOutput],
    ) -> Result<(), RegistryError> {
        for m in models {
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO output (run_id, model_id, step) VALUES (?1, ?2, ?3)",
                    params![run_id, m.model_id, m.step],
                )
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// Every point of a run's metric, by step and time.
    pub fn history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT bits, timestamp, step FROM metric WHERE run_id = ?1 AND key = ?2 \
                 ORDER BY step, timestamp",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([run_id, key], |r| {
                Ok(Metric {
                    key: key.to_string(),
                    value: f64::from_bits(r.get::<_, i64>(0)? as u64),
                    timestamp: Some(r.get(1)?),
                    step: Some(r.get(2)?),
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// A run as `runs/get` answers it: info, params, tags, latest metrics, inputs and outputs.
    pub fn full_run(&self, record: &RunRecord) -> Result<Run, RegistryError> {
        let id = record.run_id.as_str();
        let mut stmt = self
            .conn
            .prepare("SELECT key, bits, timestamp, step FROM latest WHERE run_id = ?1 ORDER BY key")
            .map_err(self.err())?;
        let metrics = stmt
            .query_map([id], |r| {
                Ok(Metric {
                    key: r.get(0)?,
                    value: f64::from_bits(r.get::<_, i64>(1)? as u64),
                    timestamp: Some(r.get(2)?),
                    step: Some(r.get(3)?),
                })
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        let json = |kind: &str| -> Result<Vec<serde_json::Value>, RegistryError> {
            Ok(self
                .strings(
                    "SELECT json FROM input WHERE run_id = ?1 AND kind = ?2 ORDER BY rowid",
                    Some((id, kind)),
                )?
                .iter()
                .filter_map(|t| serde_json::from_str(t).ok())
                .collect())
        };
        let mut outputs = self
            .conn
            .prepare("SELECT model_id, step FROM output WHERE run_id = ?1 ORDER BY rowid")
            .map_err(self.err())?;
        let model_outputs = outputs
            .query_map([id], |r| {
                Ok(ModelOutput {
                    model_id: r.get(0)?,
                    step: r.get(1)?,
                })
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(Run {
            info: run_info(record),
            data: RunData {
                metrics,
                params: self.pairs(
                    "SELECT key, value FROM param WHERE run_id = ?1 ORDER BY rowid",
                    id,
                )?,
                tags: self.pairs(
                    "SELECT key, value FROM tag WHERE run_id = ?1 ORDER BY rowid",
                    id,
                )?,
            },
            inputs: RunInputs {
                dataset_inputs: json("dataset")?,
                model_inputs: json("model")?,
            },
            outputs: RunOutputs { model_outputs },
        })
    }

    // ---- logged models ----

    /// Creates a logged model; returns its record.
    pub fn create_model(
        &mut self,
        new: &NewModel,
        now_ms: i64,
    ) -> Result<ModelRecord, RegistryError> {
        let record = ModelRecord {
            model_id: format!("m-{}", new_id()),
            experiment_id: new.experiment_id.clone(),
            name: new.name.clone(),
            source_run_id: new.source_run_id.clone(),
            status: "LOGGED_MODEL_PENDING".into(),
        };
        let (model_type, params, tags) = (&new.model_type, &new.params, &new.tags);
        let tx = self.conn.transaction().map_err(self_err(&self.path))?;
        let result = (|| -> rusqlite::Result<_> {
            tx.execute(
                "INSERT INTO model (model_id, experiment_id, name, source_run_id, model_type, \
                 status, creation_ms, update_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                params![
                    record.model_id,
                    record.experiment_id,
                    record.name,
                    record.source_run_id,
                    model_type,
                    record.status,
                    now_ms
                ],
            )?;
            for (table, list) in [("model_param", params), ("model_tag", tags)] {
                for kv in list {
                    tx.execute(
                        &format!(
                            "INSERT OR REPLACE INTO {table} (model_id, key, value) VALUES (?1, ?2, ?3)"
                        ),
                        params![record.model_id, kv.key, kv.value],
                    )?;
                }
            }
            Ok(())
        })();
        result.map_err(self_err(&self.path))?;
        tx.commit().map_err(self_err(&self.path))?;
        Ok(record)
    }

    /// A logged model's record.
    pub fn model(&self, model_id: &str) -> Result<Option<ModelRecord>, RegistryError> {
        self.conn
            .query_row(
                "SELECT model_id, experiment_id, name, source_run_id, status FROM model \
                 WHERE model_id = ?1",
                [model_id],
                model_record,
            )
            .optional()
            .map_err(self.err())
    }

    /// Every logged model of these experiments (all, when empty), oldest first.
    pub fn models(&self, experiment_ids: &[String]) -> Result<Vec<ModelRecord>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT model_id, experiment_id, name, source_run_id, status FROM model \
                 ORDER BY creation_ms, model_id",
            )
            .map_err(self.err())?;
        let rows = stmt.query_map([], model_record).map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(self.err())?;
            if experiment_ids.is_empty() || experiment_ids.contains(&row.experiment_id) {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Sets a logged model's status.
    pub fn set_model_status(
        &mut self,
        model_id: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<(), RegistryError> {
        self.conn
            .execute(
                "UPDATE model SET status = ?2, update_ms = ?3 WHERE model_id = ?1",
                params![model_id, status, now_ms],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// Adds or replaces a logged model's tags (`table` `model_tag`) or params (`model_param`).
    pub fn set_model_pairs(
        &mut self,
        model_id: &str,
        params_not_tags: bool,
        pairs: &[KeyValue],
    ) -> Result<(), RegistryError> {
        let table = if params_not_tags {
            "model_param"
        } else {
            "model_tag"
        };
        for kv in pairs {
            self.conn
                .execute(
                    &format!(
                        "INSERT OR REPLACE INTO {table} (model_id, key, value) VALUES (?1, ?2, ?3)"
                    ),
                    params![model_id, kv.key, kv.value],
                )
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// Deletes a logged model's tag.
    pub fn delete_model_tag(&mut self, model_id: &str, key: &str) -> Result<(), RegistryError> {
        self.conn
            .execute(
                "DELETE FROM model_tag WHERE model_id = ?1 AND key = ?2",
                [model_id, key],
            )
            .map(drop)
            .map_err(self.err())
    }

    /// A logged model as the `logged-models` calls answer it.
    pub fn full_model(&self, record: &ModelRecord) -> Result<LoggedModel, RegistryError> {
        let (creation, update, model_type): (i64, i64, String) = self
            .conn
            .query_row(
                "SELECT creation_ms, update_ms, model_type FROM model WHERE model_id = ?1",
                [&record.model_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(self.err())?;
        Ok(LoggedModel {
            info: LoggedModelInfo {
                model_id: record.model_id.clone(),
                experiment_id: record.experiment_id.clone(),
                name: record.name.clone(),
                creation_timestamp_ms: Some(creation),
                last_updated_timestamp_ms: Some(update),
                artifact_uri: model_artifact_uri(record),
                status: record.status.clone(),
                model_type,
                source_run_id: record.source_run_id.clone().unwrap_or_default(),
                tags: self.pairs(
                    "SELECT key, value FROM model_tag WHERE model_id = ?1 ORDER BY key",
                    &record.model_id,
                )?,
            },
            data: LoggedModelData {
                params: self.pairs(
                    "SELECT key, value FROM model_param WHERE model_id = ?1 ORDER BY key",
                    &record.model_id,
                )?,
            },
        })
    }

    // ---- helpers ----

    fn pairs(&self, sql: &str, id: &str) -> Result<Vec<KeyValue>, RegistryError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(KeyValue {
                    key: r.get(0)?,
                    value: r.get(1)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    fn strings(&self, sql: &str, args: Option<(&str, &str)>) -> Result<Vec<String>, RegistryError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let get = |r: &rusqlite::Row<'_>| r.get::<_, String>(0);
        let rows: rusqlite::Result<Vec<String>> = match args {
            Some((a, b)) => stmt.query_map([a, b], get).and_then(Iterator::collect),
            None => stmt.query_map([], get).and_then(Iterator::collect),
        };
        rows.map_err(self.err())
    }
}

fn self_err(path: &Path) -> impl Fn(rusqlite::Error) -> RegistryError + '_ {
    move |e| db_error(path, e)
}

/// True when point `a` (step, timestamp, value) comes after `b` as MLflow picks a metric's latest
/// value: the highest step, then the latest time, then the highest value (NaN lowest).
fn later(a: (i64, i64, f64), b: (i64, i64, f64)) -> bool {
    let value = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
    (a.0, a.1) > (b.0, b.1) || ((a.0, a.1) == (b.0, b.1) && value(a.2) > value(b.2))
}

fn run_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        run_id: r.get(0)?,
        experiment_id: r.get(1)?,
        name: r.get(2)?,
        user_id: r.get(3)?,
        status: r.get(4)?,
        start_ms: r.get(5)?,
        end_ms: r.get(6)?,
        parent: r.get(7)?,
        worker_index: r.get(8)?,
    })
}

fn model_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelRecord> {
    Ok(ModelRecord {
        model_id: r.get(0)?,
        experiment_id: r.get(1)?,
        name: r.get(2)?,
        source_run_id: r.get(3)?,
        status: r.get(4)?,
    })
}

/// The `mlflow-artifacts:` URI of a run's artifacts, which the client resolves against the
/// tracking URI to this endpoint's artifact routes.
pub fn run_artifact_uri(record: &RunRecord) -> String {
    format!(
        "mlflow-artifacts:/{}/{}/artifacts",
        record.experiment_id, record.run_id
    )
}

/// The `mlflow-artifacts:` URI of a logged model's artifacts.
pub fn model_artifact_uri(record: &ModelRecord) -> String {
    format!(
        "mlflow-artifacts:/{}/models/{}/artifacts",
        record.experiment_id, record.model_id
    )
}

/// A run's `RunInfo`.
pub fn run_info(record: &RunRecord) -> RunInfo {
    RunInfo {
        run_id: record.run_id.clone(),
        run_uuid: record.run_id.clone(),
        run_name: record.name.clone(),
        experiment_id: record.experiment_id.clone(),
        user_id: record.user_id.clone(),
        status: record.status.clone(),
        start_time: Some(record.start_ms),
        end_time: record.end_ms,
        artifact_uri: run_artifact_uri(record),
        lifecycle_stage: "active".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let path = Path::new("registry.db");
        assert!(db_error(path, failure(rusqlite::ffi::SQLITE_FULL)).full);
        assert!(!db_error(path, failure(rusqlite::ffi::SQLITE_CORRUPT)).full);
    }

    fn metric(key: &str, value: f64, ts: i64, step: i64) -> Metric {
        Metric {
            key: key.into(),
            value,
            timestamp: Some(ts),
            step: Some(step),
        }
    }

    #[test]
    fn runs_keep_their_data_and_the_latest_metric_is_mlflows() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::open(&dir.path().join("r.db"), "worker-0").unwrap();
        assert_eq!(
            r.experiment_by_name("Default")
                .unwrap()
                .unwrap()
                .experiment_id,
            "0"
        );
        let id = r.create_experiment("exp", &[], 5).unwrap().unwrap();
        assert_eq!(id, "1");
        assert_eq!(r.create_experiment("exp", &[], 5).unwrap(), None);
        let new = NewRun {
            experiment_id: id.clone(),
            name: "a".into(),
            user_id: "u".into(),
            start_ms: 10,
            parent: None,
            tags: vec![],
        };
        let first = r.create_run(&new).unwrap();
        let second = r.create_run(&new).unwrap();
        assert_eq!(first.worker_index, "worker-0");
        assert_eq!(second.worker_index, "worker-0/2");
        assert_eq!(first.run_id.len(), 32);
        let points = [
            metric("loss", 3.0, 100, 2),
            metric("loss", 1.0, 50, 5),
            metric("loss", f64::NAN, 60, 5),
            metric("loss", 1.0, 50, 5),
        ];
        let p = [KeyValue {
            key: "lr".into(),
            value: "0.1".into(),
        }];
        r.log(&first.run_id, &points, &p, &[]).unwrap();
        assert_eq!(r.history(&first.run_id, "loss").unwrap().len(), 3);
        let full = r.full_run(&first).unwrap();
        let latest = &full.data.metrics[0];
        assert!(latest.value.is_nan() && latest.timestamp == Some(60));
        let changed = r
            .changed_params(
                &first.run_id,
                &[KeyValue {
                    key: "lr".into(),
                    value: "0.2".into(),
                }],
            )
            .unwrap();
        assert_eq!(changed, [("lr".to_string(), "0.1".to_string())]);
        drop(r);
        let r = Registry::open(&dir.path().join("r.db"), "worker-0").unwrap();
        assert_eq!(
            r.runs(&[id]).unwrap().len(),
            2,
            "found again after a restart"
        );
    }
}
