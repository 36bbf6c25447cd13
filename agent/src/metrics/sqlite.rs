//! The embedded metastore: one SQLite file with Apache Submarine's `experiment`, `metric` and
//! `param` tables, their columns, primary keys and semantics.
//!
//! * `metric`: primary key (`id`, `key`, `timestamp`, `worker_index`) as Submarine's, so a batch
//!   delivered twice inserts nothing the second time (`INSERT OR IGNORE`). A consequence of that
//!   key: two points of one key from one worker within the same millisecond are one row (the
//!   first is kept), as in Submarine's MySQL.
//! * NaN is stored as value 0 with `is_nan` = 1, as the Submarine SDK does; ±Infinity are stored
//!   as they are (SQLite's REAL holds them).
//! * `timestamp` and the experiment times are `YYYY-MM-DD HH:MM:SS.mmm` in UTC (`DATETIME(3)`).
//! * `param`: primary key (`id`, `key`, `worker_index`); the first value wins.
//! * `experiment_status` is the experiment's, which all its workers share: `Running` replaces
//!   any status (a worker starts, or a failed one runs again), a final status sets
//!   `finished_time`, and `Succeeded` never replaces `Failed`, so a failed worker fails the
//!   experiment whichever worker ends last.
//!
//! A script's MLflow runs (made through the endpoint) also get tables of Periscope's own, since
//! Submarine's have no place for them: `mlflow_run` (one row per run: its worker_index, names,
//! status and times), `mlflow_tag` (its current tags), `mlflow_input` (its datasets, as MLflow's
//! JSON) and `mlflow_artifact` (each stored file: path, size, sha256, URL). Their metrics and
//! params are rows of the run's worker_index in `metric` and `param`, as [`super::submarine`]
//! maps them.
//!
//! Writes happen in one transaction per batch with `synchronous=FULL`, so a batch acknowledged to
//! the queue is on disk. WAL mode lets `periscope metrics` read while the sidecar writes. The work
//! is synchronous and short (one transaction); [`Sink::write`] runs it inline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::model::{Item, Metric, Param, RunStatus, ScriptRun, Tag};
use super::sink::{Sink, SinkError};
use super::submarine::{changes, Change};
use crate::error::ErrorClass;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS experiment (
    id                VARCHAR(64) NOT NULL PRIMARY KEY,
    experiment_spec   TEXT NOT NULL,
    create_by         VARCHAR(32),
    create_time       DATETIME,
    update_by         VARCHAR(32),
    update_time       DATETIME,
    experiment_status VARCHAR(20),
    accepted_time     DATETIME(3),
    running_time      DATETIME(3),
    finished_time     DATETIME(3),
    uid               VARCHAR(64)
);
CREATE TABLE IF NOT EXISTS metric (
    id           VARCHAR(64) NOT NULL,
    key          VARCHAR(190) NOT NULL,
    value        FLOAT NOT NULL,
    worker_index VARCHAR(32) NOT NULL,
    timestamp    DATETIME(3) NOT NULL,
    step         INTEGER NOT NULL,
    is_nan       BOOLEAN NOT NULL,
    CONSTRAINT metric_pk PRIMARY KEY (id, key, timestamp, worker_index),
    FOREIGN KEY (id) REFERENCES experiment (id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS param (
    id           VARCHAR(64) NOT NULL,
    key          VARCHAR(190) NOT NULL,
    value        VARCHAR(190) NOT NULL,
    worker_index VARCHAR(32) NOT NULL,
    CONSTRAINT param_pk PRIMARY KEY (id, key, worker_index),
    FOREIGN KEY (id) REFERENCES experiment (id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS mlflow_run (
    id              VARCHAR(64) NOT NULL,
    run_id          VARCHAR(64) NOT NULL,
    worker_index    VARCHAR(32) NOT NULL,
    experiment_name TEXT,
    name            TEXT NOT NULL,
    parent_run_id   TEXT,
    user_id         TEXT NOT NULL,
    status          VARCHAR(20) NOT NULL,
    start_time      DATETIME(3),
    end_time        DATETIME(3),
    CONSTRAINT mlflow_run_pk PRIMARY KEY (id, run_id),
    FOREIGN KEY (id) REFERENCES experiment (id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS mlflow_tag (
    id     VARCHAR(64) NOT NULL,
    run_id VARCHAR(64) NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    CONSTRAINT mlflow_tag_pk PRIMARY KEY (id, run_id, key),
    FOREIGN KEY (id) REFERENCES experiment (id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS mlflow_input (
    id      VARCHAR(64) NOT NULL,
    run_id  VARCHAR(64) NOT NULL,
    dataset TEXT NOT NULL,
    CONSTRAINT mlflow_input_pk PRIMARY KEY (id, run_id, dataset),
    FOREIGN KEY (id) REFERENCES experiment (id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS mlflow_artifact (
    id     VARCHAR(64) NOT NULL,
    run_id VARCHAR(64) NOT NULL,
    path   TEXT NOT NULL,
    size   INTEGER NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    url    TEXT NOT NULL,
    CONSTRAINT mlflow_artifact_pk PRIMARY KEY (id, run_id, path),
    FOREIGN KEY (id) REFERENCES experiment (id) ON UPDATE CASCADE ON DELETE CASCADE
);
";

pub use super::submarine::{datetime, parse_datetime};

/// One row of `experiment`, as `periscope metrics ls` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExperimentRow {
    pub id: String,
    pub status: Option<String>,
    pub accepted_time: Option<String>,
    pub running_time: Option<String>,
    pub finished_time: Option<String>,
    pub metrics: u64,
}

/// One metric series of an experiment, summarised for `periscope metrics ls`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeriesSummary {
    pub key: String,
    pub worker: String,
    pub points: u64,
    pub first_step: i64,
    pub last_step: i64,
}

/// One row of `mlflow_run`: a script's MLflow run, as `periscope runs show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScriptRunRow {
    pub run_id: String,
    pub worker_index: String,
    pub experiment_name: Option<String>,
    pub name: String,
    pub parent_run_id: Option<String>,
    pub status: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

/// One row of `mlflow_artifact`: a stored file of a script's run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArtifactRow {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub url: String,
}

/// Which metric rows to read.
#[derive(Debug, Clone, Default)]
pub struct MetricFilter {
    pub key: Option<String>,
    pub worker: Option<String>,
}

/// An open SQLite metastore. Invariant: the schema exists (created on open for writers).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

fn sql_err(path: &Path, what: &str) -> impl FnOnce(rusqlite::Error) -> SinkError {
    let path = path.display().to_string();
    let what = what.to_string();
    move |e| {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        SinkError {
            message: format!("SQLite metastore {path}: cannot {what}: {e}"),
            class: ErrorClass::Io,
            // Busy, locked, disk full: all may pass; the queue keeps the items meanwhile.
            transient: busy || !matches!(e, rusqlite::Error::InvalidQuery),
            hint: None,
        }
    }
}

/// Runs `step` until it is not refused as busy or locked, for up to [`OPEN_PATIENCE`]: on open,
/// processes that start together (two `periscope run` on one data folder) each switch the file to
/// WAL and create the tables, and SQLite refuses one of them at once, without its busy handler,
/// when their locks would otherwise deadlock.
fn while_busy<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + OPEN_PATIENCE;
    loop {
        match step() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// How long opening the metastore waits for other processes opening it at the same time.
const OPEN_PATIENCE: Duration = Duration::from_secs(15);

impl SqliteStore {
    /// Opens or creates the database at `path` (and its folder) with the schema.
    pub fn open(path: &Path) -> Result<SqliteStore, SinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| SinkError {
                message: format!("cannot create {}: {e}", dir.display()),
                class: ErrorClass::Io,
                transient: false,
                hint: None,
            })?;
        }
        let conn = Connection::open(path).map_err(sql_err(path, "open the database"))?;
        let store = SqliteStore::configure(conn, path)?;
        while_busy(|| store.conn.execute_batch(SCHEMA))
            .map_err(sql_err(path, "create the tables"))?;
        Ok(store)
    }

    /// Opens an existing database for reading (`periscope metrics`).
    pub fn open_existing(path: &Path) -> Result<SqliteStore, SinkError> {
        if !path.exists() {
            return Err(SinkError {
                message: format!("no metastore at {}", path.display()),
                class: ErrorClass::NotFound,
                transient: false,
                hint: None,
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err(path, "open the database"))?;
        SqliteStore::configure(conn, path)
    }

    fn configure(conn: Connection, path: &Path) -> Result<SqliteStore, SinkError> {
        // Short: a write that waits on another writer's lock holds up the pipeline's loop; the
        // queue keeps the batch and it is retried after a backoff instead.
        conn.busy_timeout(Duration::from_secs(1))
            .map_err(sql_err(path, "set the busy timeout"))?;
        while_busy(|| {
            conn.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            )
        })
        .map_err(sql_err(path, "configure the database"))?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Applies `items` for `experiment` in one transaction.
    pub fn apply(&mut self, experiment: &str, items: &[Item]) -> Result<(), SinkError> {
        let path = self.path.clone();
        let now = super::model::now_ms();
        let now_text = datetime(now).unwrap_or_default();
        let tx = self
            .conn
            .transaction()
            .map_err(sql_err(&path, "begin a transaction"))?;
        tx.execute(
            "INSERT OR IGNORE INTO experiment (id, experiment_spec, create_time, update_time, \
             experiment_status, accepted_time) VALUES (?1, '{}', ?2, ?2, 'Accepted', ?2)",
            params![experiment, now_text],
        )
        .map_err(sql_err(&path, "record the experiment"))?;
        {
            let mut metric = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO metric (id, key, value, worker_index, timestamp, step, \
                     is_nan) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql_err(&path, "prepare an insert"))?;
            let mut param = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO param (id, key, value, worker_index) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql_err(&path, "prepare an insert"))?;
            for change in changes(items, &now_text) {
                match change {
                    Change::Metric {
                        key,
                        value,
                        is_nan,
                        worker,
                        timestamp,
                        step,
                    } => {
                        metric
                            .execute(params![
                                experiment, key, value, worker, timestamp, step, is_nan
                            ])
                            .map_err(sql_err(&path, "insert a metric"))?;
                    }
                    Change::Param { key, value, worker } => {
                        param
                            .execute(params![experiment, key, value, worker])
                            .map_err(sql_err(&path, "insert a param"))?;
                    }
                    Change::Purge {
                        keys,
                        worker,
                        from_step,
                    } => {
                        for key in keys {
                            tx.execute(
                                "DELETE FROM metric WHERE id = ?1 AND worker_index = ?2 \
                                 AND key = ?3 AND step >= ?4",
                                params![experiment, worker, key, from_step],
                            )
                            .map_err(sql_err(&path, "purge metrics"))?;
                        }
                    }
                    Change::Status { status, at } => {
                        set_status(&tx, experiment, status, &at)
                            .map_err(sql_err(&path, "update the experiment status"))?;
                    }
                }
            }
        }
        for item in items {
            apply_script_run(&tx, experiment, item)
                .map_err(sql_err(&path, "record a script run"))?;
        }
        tx.commit().map_err(sql_err(&path, "commit"))
    }

    /// The experiment's script runs, in the order they started.
    pub fn script_runs(&self, experiment: &str) -> Result<Vec<ScriptRunRow>, SinkError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run_id, worker_index, experiment_name, name, parent_run_id, status, \
                 start_time, end_time FROM mlflow_run WHERE id = ?1 ORDER BY start_time, run_id",
            )
            .map_err(sql_err(&self.path, "read script runs"))?;
        let rows = stmt
            .query_map([experiment], |r| {
                Ok(ScriptRunRow {
                    run_id: r.get(0)?,
                    worker_index: r.get(1)?,
                    experiment_name: r.get(2)?,
                    name: r.get(3)?,
                    parent_run_id: r.get(4)?,
                    status: r.get(5)?,
                    start_time: r.get(6)?,
                    end_time: r.get(7)?,
                })
            })
            .map_err(sql_err(&self.path, "read script runs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "read script runs"))
    }

    /// A script run's tags, by key.
    pub fn script_run_tags(&self, experiment: &str, run_id: &str) -> Result<Vec<Tag>, SinkError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM mlflow_tag WHERE id = ?1 AND run_id = ?2 ORDER BY key")
            .map_err(sql_err(&self.path, "read run tags"))?;
        let rows = stmt
            .query_map([experiment, run_id], |r| {
                Ok(Tag {
                    key: r.get(0)?,
                    value: r.get(1)?,
                })
            })
            .map_err(sql_err(&self.path, "read run tags"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "read run tags"))
    }

    /// A script run's stored files, by path.
    pub fn script_run_artifacts(
        &self,
        experiment: &str,
        run_id: &str,
    ) -> Result<Vec<ArtifactRow>, SinkError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT path, size, sha256, url FROM mlflow_artifact WHERE id = ?1 AND run_id = ?2 \
                 ORDER BY path",
            )
            .map_err(sql_err(&self.path, "read run artifacts"))?;
        let rows = stmt
            .query_map([experiment, run_id], |r| {
                Ok(ArtifactRow {
                    path: r.get(0)?,
                    size: r.get::<_, i64>(1)?.max(0) as u64,
                    sha256: r.get(2)?,
                    url: r.get(3)?,
                })
            })
            .map_err(sql_err(&self.path, "read run artifacts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "read run artifacts"))
    }

    /// Every experiment, by id, with its number of metric rows.
    pub fn experiments(&self) -> Result<Vec<ExperimentRow>, SinkError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT e.id, e.experiment_status, e.accepted_time, e.running_time, \
                 e.finished_time, (SELECT COUNT(*) FROM metric m WHERE m.id = e.id) \
                 FROM experiment e ORDER BY e.id",
            )
            .map_err(sql_err(&self.path, "list experiments"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ExperimentRow {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    accepted_time: r.get(2)?,
                    running_time: r.get(3)?,
                    finished_time: r.get(4)?,
                    metrics: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })
            .map_err(sql_err(&self.path, "list experiments"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "list experiments"))
    }

    /// True when the experiment has a row.
    pub fn has_experiment(&self, experiment: &str) -> Result<bool, SinkError> {
        self.conn
            .query_row(
                "SELECT 1 FROM experiment WHERE id = ?1",
                [experiment],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(sql_err(&self.path, "find the experiment"))
    }

    /// The experiment's metric rows, ordered by key, worker, step and timestamp. NaN comes back as
    /// NaN (from `is_nan`).
    pub fn metrics(
        &self,
        experiment: &str,
        filter: &MetricFilter,
    ) -> Result<Vec<Metric>, SinkError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, value, worker_index, timestamp, step, is_nan FROM metric \
                 WHERE id = ?1 AND (?2 IS NULL OR key = ?2) AND (?3 IS NULL OR worker_index = ?3) \
                 ORDER BY key, worker_index, step, timestamp",
            )
            .map_err(sql_err(&self.path, "read metrics"))?;
        let rows = stmt
            .query_map(params![experiment, filter.key, filter.worker], |r| {
                let is_nan: bool = r.get(5)?;
                let ts: String = r.get(3)?;
                Ok(Metric {
                    key: r.get(0)?,
                    value: if is_nan { f64::NAN } else { r.get(1)? },
                    worker: r.get(2)?,
                    timestamp_ms: parse_datetime(&ts).unwrap_or(0),
                    step: r.get(4)?,
                })
            })
            .map_err(sql_err(&self.path, "read metrics"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "read metrics"))
    }

    /// The experiment's series (key and worker) with their number of points and step range.
    pub fn series(&self, experiment: &str) -> Result<Vec<SeriesSummary>, SinkError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, worker_index, COUNT(*), MIN(step), MAX(step) FROM metric \
                 WHERE id = ?1 GROUP BY key, worker_index ORDER BY key, worker_index",
            )
            .map_err(sql_err(&self.path, "summarise metrics"))?;
        let rows = stmt
            .query_map([experiment], |r| {
                Ok(SeriesSummary {
                    key: r.get(0)?,
                    worker: r.get(1)?,
                    points: r.get::<_, i64>(2)?.max(0) as u64,
                    first_step: r.get(3)?,
                    last_step: r.get(4)?,
                })
            })
            .map_err(sql_err(&self.path, "summarise metrics"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "summarise metrics"))
    }

    /// The experiment's params, ordered by key and worker.
    pub fn params(&self, experiment: &str) -> Result<Vec<Param>, SinkError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key, value, worker_index FROM param WHERE id = ?1 \
                 ORDER BY key, worker_index",
            )
            .map_err(sql_err(&self.path, "read params"))?;
        let rows = stmt
            .query_map([experiment], |r| {
                Ok(Param {
                    key: r.get(0)?,
                    value: r.get(1)?,
                    worker: r.get(2)?,
                })
            })
            .map_err(sql_err(&self.path, "read params"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_err(&self.path, "read params"))
    }
}

/// Sets the experiment's status to `status` at `at`. The experiment is every worker's:
/// `Running` (a worker starting, or a failed one restarted) replaces any status; a final status
/// sets `finished_time`, but `Succeeded` never replaces `Failed`, so a failed worker fails the
/// experiment whichever worker ends last. Each statement leaves the same row when run again.
fn set_status(
    tx: &rusqlite::Transaction<'_>,
    experiment: &str,
    status: RunStatus,
    at: &str,
) -> rusqlite::Result<()> {
    let sql = match status {
        RunStatus::Running => {
            "UPDATE experiment SET experiment_status = 'Running', \
             running_time = COALESCE(running_time, ?2), finished_time = NULL, update_time = ?2 \
             WHERE id = ?1"
        }
        RunStatus::Failed => {
            "UPDATE experiment SET experiment_status = 'Failed', finished_time = ?2, \
             update_time = ?2 WHERE id = ?1"
        }
        RunStatus::Succeeded => {
            "UPDATE experiment SET experiment_status = 'Succeeded', finished_time = ?2, \
             update_time = ?2 WHERE id = ?1 AND experiment_status IS NOT 'Failed'"
        }
    };
    tx.execute(sql, params![experiment, at]).map(drop)
}

/// Records an item of a script's run in Periscope's own tables (nothing for other items). Every
/// statement is idempotent: a redelivered batch leaves the same rows.
fn apply_script_run(
    tx: &rusqlite::Transaction<'_>,
    experiment: &str,
    item: &Item,
) -> rusqlite::Result<()> {
    match item {
        Item::ScriptRun(run) => upsert_run(tx, experiment, run),
        Item::RunData { run, tags, .. } => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO mlflow_tag (id, run_id, key, value) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for t in tags {
                stmt.execute(params![experiment, run, t.key, t.value])?;
            }
            Ok(())
        }
        Item::RunTagDeleted { run, key } => tx
            .execute(
                "DELETE FROM mlflow_tag WHERE id = ?1 AND run_id = ?2 AND key = ?3",
                params![experiment, run, key],
            )
            .map(drop),
        Item::RunInputs { run, datasets } => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO mlflow_input (id, run_id, dataset) VALUES (?1, ?2, ?3)",
            )?;
            for d in datasets {
                stmt.execute(params![experiment, run, d.to_string()])?;
            }
            Ok(())
        }
        Item::RunArtifact(file) => tx
            .execute(
                "INSERT OR REPLACE INTO mlflow_artifact (id, run_id, path, size, sha256, url) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    experiment,
                    file.run.as_deref().unwrap_or_default(),
                    file.run_path(),
                    i64::try_from(file.size).unwrap_or(i64::MAX),
                    file.sha256,
                    file.url()
                ],
            )
            .map(drop),
        _ => Ok(()),
    }
}

fn upsert_run(
    tx: &rusqlite::Transaction<'_>,
    experiment: &str,
    run: &ScriptRun,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO mlflow_run (id, run_id, worker_index, experiment_name, name, parent_run_id, \
         user_id, status, start_time, end_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (id, run_id) DO UPDATE SET name = excluded.name, status = excluded.status, \
         end_time = excluded.end_time",
        params![
            experiment,
            run.run_id,
            run.index,
            run.experiment,
            run.name,
            run.parent,
            run.user,
            run.status,
            datetime(run.start_ms),
            run.end_ms.and_then(datetime)
        ],
    )
    .map(drop)
}

impl Sink for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn write<'a>(
        &'a mut self,
        experiment: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.apply(experiment, items) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(key: &str, step: i64, ts: i64, value: f64) -> Item {
        Item::Metric(Metric {
            key: key.into(),
            value,
            step,
            timestamp_ms: ts,
            worker: "worker-0".into(),
        })
    }

    #[test]
    fn a_redelivered_batch_adds_no_rows_and_nan_is_stored_as_submarine_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
        let batch = vec![
            metric("loss", 0, 1_700_000_000_000, 0.5),
            metric("loss", 1, 1_700_000_000_001, f64::NAN),
            metric("loss", 2, 1_700_000_000_002, f64::INFINITY),
            Item::Param(Param {
                key: "lr".into(),
                value: "0.1".into(),
                worker: "worker-0".into(),
            }),
        ];
        store.apply("exp-1", &batch).unwrap();
        store.apply("exp-1", &batch).unwrap();
        let rows = store.metrics("exp-1", &MetricFilter::default()).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[1].value.is_nan());
        assert_eq!(rows[2].value, f64::INFINITY);
        assert_eq!(rows[0].timestamp_ms, 1_700_000_000_000);
        let (raw, is_nan): (f64, bool) = store
            .conn
            .query_row("SELECT value, is_nan FROM metric WHERE step = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((raw, is_nan), (0.0, true));
        let ts: String = store
            .conn
            .query_row("SELECT timestamp FROM metric WHERE step = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(ts, "2023-11-14 22:13:20.000");
        assert_eq!(store.params("exp-1").unwrap().len(), 1);
    }

    #[test]
    fn a_purge_drops_earlier_points_at_or_after_its_step_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
        let batch = vec![
            metric("run/loss", 1, 1000, 1.0),
            metric("run/loss", 2, 2000, 2.0),
            metric("run/loss", 3, 3000, 3.0),
            metric("other", 3, 3000, 3.0),
            Item::Purge {
                keys: vec!["run/loss".into()],
                worker: "worker-0".into(),
                from_step: 2,
            },
            metric("run/loss", 2, 4000, 20.0),
        ];
        // Applying it twice (a redelivery) gives the same rows.
        store.apply("e", &batch).unwrap();
        store.apply("e", &batch).unwrap();
        let rows = store.metrics("e", &MetricFilter::default()).unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|m| (m.key.as_str(), m.step, m.value))
            .collect();
        assert_eq!(
            got,
            [
                ("other", 3, 3.0),
                ("run/loss", 1, 1.0),
                ("run/loss", 2, 20.0)
            ]
        );
    }

    #[test]
    fn status_follows_the_experiment_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
        store
            .apply(
                "e",
                &[Item::Status {
                    status: RunStatus::Running,
                    at_ms: 1000,
                }],
            )
            .unwrap();
        let e = &store.experiments().unwrap()[0];
        assert_eq!(e.status.as_deref(), Some("Running"));
        assert_eq!(e.running_time.as_deref(), Some("1970-01-01 00:00:01.000"));
        store
            .apply(
                "e",
                &[Item::Status {
                    status: RunStatus::Failed,
                    at_ms: 5000,
                }],
            )
            .unwrap();
        let e = &store.experiments().unwrap()[0];
        assert_eq!(e.status.as_deref(), Some("Failed"));
        assert_eq!(e.finished_time.as_deref(), Some("1970-01-01 00:00:05.000"));
    }

    /// The experiment's status, running_time and finished_time after each status (at whole
    /// seconds), one batch each, in this order, in a fresh store.
    fn after(statuses: &[(RunStatus, u32)]) -> [Option<String>; 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
        for &(status, seconds) in statuses {
            let at_ms = i64::from(seconds) * 1000;
            store.apply("e", &[Item::Status { status, at_ms }]).unwrap();
        }
        let e = store.experiments().unwrap().remove(0);
        [e.status, e.running_time, e.finished_time]
    }

    /// What [`after`] returns: `status`, run at 1 s, finished at `finished` s.
    fn row(status: &str, finished: Option<u32>) -> [Option<String>; 3] {
        let at = |s: u32| Some(format!("1970-01-01 00:00:{s:02}.000"));
        [Some(status.into()), at(1), finished.and_then(at)]
    }

    #[test]
    fn a_failed_worker_fails_the_experiment_whichever_worker_ends_last() {
        use RunStatus::{Failed, Running, Succeeded};
        // Worker 1 fails first, worker 0 succeeds after (its batch delivered twice): the
        // failure's time stays.
        let statuses = [
            (Running, 1),
            (Running, 2),
            (Failed, 5),
            (Succeeded, 7),
            (Succeeded, 7),
        ];
        assert_eq!(after(&statuses), row("Failed", Some(5)));
        // Worker 0 succeeds first, worker 1 fails after (its batch delivered twice).
        let statuses = [(Running, 1), (Succeeded, 5), (Failed, 7), (Failed, 7)];
        assert_eq!(after(&statuses), row("Failed", Some(7)));
    }

    #[test]
    fn a_failed_worker_that_runs_again_and_succeeds_ends_the_experiment_succeeded() {
        use RunStatus::{Failed, Running, Succeeded};
        let again = [(Running, 1), (Failed, 5), (Running, 6)];
        assert_eq!(after(&again), row("Running", None));
        let succeeded = [(Running, 1), (Failed, 5), (Running, 6), (Succeeded, 9)];
        assert_eq!(after(&succeeded), row("Succeeded", Some(9)));
    }
}
