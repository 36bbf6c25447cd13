//! Submarine's metastore semantics, shared by the SQL sinks ([`super::sqlite`], [`super::mysql`]):
//! how a pipeline [`Item`] becomes a change to the `experiment`, `metric` and `param` tables.
//!
//! This module owns the mapping (NaN stored as 0 with `is_nan` = 1, as the Submarine SDK does;
//! `DATETIME(3)` text in UTC; tags dropped, since Submarine has no tag table; out-of-range
//! timestamps skipped with a warning) so both sinks store the same rows for the same items. It
//! never does I/O and knows no SQL dialect: each sink turns a [`Change`] into its own statements.
//!
//! A script's MLflow runs (made through the endpoint) become rows of their worker_index (the
//! run's [`ScriptRun::index`]): their metrics and params, and the params `mlflow.run_id`,
//! `mlflow.run_name` and `mlflow.experiment` naming the run; where its files are stored becomes
//! the param `mlflow.artifacts` (a logged model's: `mlflow.model.<name>`), the URL of the stored
//! folder. Their tags, deleted tags and inputs have no place in these tables.

use std::borrow::Cow;

use super::model::{Item, RunArtifact, RunStatus, ScriptRun};

const DATETIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// A `DATETIME(3)` text for milliseconds since the epoch, or `None` when out of range.
pub fn datetime(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format(DATETIME_FORMAT).to_string())
}

/// Says which points of `items` the `metric` table cannot keep: its primary key is (experiment,
/// key, timestamp, worker), so of the points of one key and worker that share a millisecond only
/// the first is stored. One warning per key and worker in a batch, with the count.
fn warn_shared_milliseconds(items: &[Item]) {
    let mut seen: std::collections::HashMap<(&str, &str, i64), u64> = Default::default();
    for item in items {
        if let Item::Metric(m) = item {
            *seen.entry((&m.key, &m.worker, m.timestamp_ms)).or_default() += 1;
        }
    }
    let mut lost: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for ((key, worker, _), n) in seen {
        if n > 1 {
            *lost.entry((key, worker)).or_default() += n - 1;
        }
    }
    for ((key, worker), n) in lost {
        tracing::warn!(key, worker, points = n,
            "points share a millisecond with another point of the same key: Submarine's metric table keeps one per key, worker and millisecond, so these are not stored (log each point with its own timestamp)");
    }
}

/// Milliseconds since the epoch from a `DATETIME(3)` text.
pub fn parse_datetime(text: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// One change to Submarine's tables for one experiment, in the order the items came.
/// Invariant: `timestamp`/`at` are `DATETIME(3)` texts; a metric's `value` is 0 when `is_nan`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<'a> {
    /// A `metric` row; the first row of a primary key wins.
    Metric {
        key: &'a str,
        value: f64,
        is_nan: bool,
        worker: &'a str,
        timestamp: String,
        step: i64,
    },
    /// A `param` row; the first value of a (key, worker) wins.
    Param {
        key: Cow<'a, str>,
        value: Cow<'a, str>,
        worker: &'a str,
    },
    /// Delete `metric` rows of these keys and worker with step ≥ `from_step` (written before).
    Purge {
        keys: &'a [String],
        worker: &'a str,
        from_step: i64,
    },
    /// Set `experiment_status`; `Running` also sets `running_time` once and clears
    /// `finished_time`, a final status sets `finished_time`. `Succeeded` never replaces `Failed`
    /// (the experiment is every worker's: a failed worker fails it).
    Status { status: RunStatus, at: String },
}

/// The changes `items` make, in order. `now` is used for a status whose time is out of range.
pub fn changes<'a>(items: &'a [Item], now: &'a str) -> impl Iterator<Item = Change<'a>> + 'a {
    warn_shared_milliseconds(items);
    items.iter().flat_map(move |item| item_changes(item, now))
}

/// The changes of one item: one at most, but for a script run's.
fn item_changes<'a>(item: &'a Item, now: &'a str) -> Vec<Change<'a>> {
    match item {
        Item::Metric(m) => metric(m).into_iter().collect(),
        Item::Param(p) => vec![param(&p.key, &p.value, &p.worker)],
        // Submarine's tables have no tags; a save is recorded by the param queued with it.
        Item::Tag(_) | Item::Artifacts(_) => Vec::new(),
        Item::Purge {
            keys,
            worker,
            from_step,
        } => vec![Change::Purge {
            keys,
            worker,
            from_step: *from_step,
        }],
        Item::Status { status, at_ms } => vec![Change::Status {
            status: *status,
            at: datetime(*at_ms).unwrap_or_else(|| now.to_string()),
        }],
        Item::ScriptRun(run) => run_params(run),
        Item::RunData {
            metrics, params, ..
        } => metrics
            .iter()
            .filter_map(metric)
            .chain(params.iter().map(|p| param(&p.key, &p.value, &p.worker)))
            .collect(),
        Item::RunTagDeleted { .. } | Item::RunInputs { .. } => Vec::new(),
        Item::RunArtifact(file) => vec![artifact_param(file)],
    }
}

fn metric(m: &super::model::Metric) -> Option<Change<'_>> {
    let Some(timestamp) = datetime(m.timestamp_ms) else {
        tracing::warn!(key = %m.key, timestamp_ms = m.timestamp_ms,
            "metric timestamp out of range; not stored");
        return None;
    };
    let is_nan = m.value.is_nan();
    Some(Change::Metric {
        key: &m.key,
        value: if is_nan { 0.0 } else { m.value },
        is_nan,
        worker: &m.worker,
        timestamp,
        step: m.step,
    })
}

fn param<'a>(key: &'a str, value: &'a str, worker: &'a str) -> Change<'a> {
    Change::Param {
        key: Cow::Borrowed(key),
        value: Cow::Borrowed(value),
        worker,
    }
}

/// The params that name a script's run among its worker_index's rows.
fn run_params(run: &ScriptRun) -> Vec<Change<'_>> {
    let mut out = vec![
        param("mlflow.run_id", &run.run_id, &run.index),
        param("mlflow.run_name", &run.name, &run.index),
    ];
    if let Some(experiment) = &run.experiment {
        out.push(param("mlflow.experiment", experiment, &run.index));
    }
    out
}

/// The param that says where a run's (or a logged model's) files are stored.
fn artifact_param(file: &RunArtifact) -> Change<'_> {
    let key = match &file.model {
        None => Cow::Borrowed("mlflow.artifacts"),
        Some(m) => Cow::Owned(format!("mlflow.model.{}", m.name)),
    };
    Change::Param {
        key,
        value: Cow::Borrowed(&file.folder),
        worker: &file.index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Metric, Tag};

    #[test]
    fn nan_becomes_zero_with_is_nan_tags_vanish_and_times_are_datetime3() {
        let items = [
            Item::Metric(Metric {
                key: "k".into(),
                value: f64::NAN,
                step: 1,
                timestamp_ms: 1_700_000_000_123,
                worker: "worker-0".into(),
            }),
            Item::Tag(Tag {
                key: "t".into(),
                value: "v".into(),
            }),
            Item::Metric(Metric {
                key: "k".into(),
                value: 1.0,
                step: 2,
                timestamp_ms: i64::MAX,
                worker: "worker-0".into(),
            }),
        ];
        let got: Vec<_> = changes(&items, "now").collect();
        assert_eq!(
            got,
            [Change::Metric {
                key: "k",
                value: 0.0,
                is_nan: true,
                worker: "worker-0",
                timestamp: "2023-11-14 22:13:20.123".into(),
                step: 1
            }]
        );
        assert_eq!(
            parse_datetime("2023-11-14 22:13:20.123"),
            Some(1_700_000_000_123)
        );
    }
}
