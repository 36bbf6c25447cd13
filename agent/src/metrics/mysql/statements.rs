//! The SQL that applies a batch to Submarine's `experiment`, `metric` and `param` tables, with
//! every value bound as a parameter of a prepared statement, never written into the SQL text, so
//! no value can change a statement whatever the connection's character set or `sql_mode`.
//!
//! The experiment row is created when missing and never changed beyond its status and times, in
//! a statement of its own ([`experiment_row`]). A batch becomes multi-row inserts that skip rows
//! whose primary key exists (`ON DUPLICATE KEY UPDATE id = id`: the first value wins, so a
//! redelivered batch adds nothing), purges and status updates, in queue order. A worker's
//! `Succeeded` never replaces another's `Failed` (see [`status_update`]). The mapping from items to rows is [`crate::metrics::submarine`]'s,
//! shared with the SQLite metastore.
//!
//! MySQL's `FLOAT` cannot hold ±Infinity: they are stored as ±3.402823466e38 (`FLOAT`'s largest
//! values). Strings longer than Submarine's columns (`key`/`value` 190 characters,
//! `worker_index` 32, `id` 64) are cut to fit, with a warning. Metric timestamps outside
//! `DATETIME`'s range are skipped, with a warning.

use mysql_async::Value;

use crate::metrics::model::{Item, RunStatus};
use crate::metrics::submarine::{changes, parse_datetime, Change};

/// Most rows in one multi-row insert (and keys in one purge): 7,000 parameters at most, far
/// below the protocol's 65,535, and about a megabyte with the longest values, below every
/// server's default `max_allowed_packet` (4 MiB on MySQL 5.7).
const MAX_ROWS: usize = 1000;
/// `DATETIME`'s range, 1000-01-01 to 9999-12-31 23:59:59.999, in ms since the epoch.
const DATETIME_MS: std::ops::RangeInclusive<i64> = -30_610_224_000_000..=253_402_300_799_999;

const METRIC_INSERT: &str =
    "INSERT INTO metric (id, `key`, value, worker_index, `timestamp`, step, is_nan) VALUES ";
const METRIC_ROW: &str = "(?, ?, ?, ?, ?, ?, ?)";
const PARAM_INSERT: &str = "INSERT INTO param (id, `key`, value, worker_index) VALUES ";
const PARAM_ROW: &str = "(?, ?, ?, ?)";
/// Keeps the existing row: the first value of a primary key wins.
const KEEP_EXISTING: &str = " ON DUPLICATE KEY UPDATE id = id";

/// One prepared statement and its parameters. Invariant: `sql` has one `?` per parameter and
/// holds no value from the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

/// The statement that creates `experiment`'s row when it is missing, and leaves an existing one
/// as it is; `now` (a `DATETIME(3)` text) is its creation time. It locks the row while its
/// transaction lasts, and every worker's metric and param rows read the row (their foreign key),
/// so it should run in a transaction of its own, and only when the row may be missing.
pub fn experiment_row(experiment: &str, now: &str) -> Statement {
    Statement {
        sql: "INSERT INTO experiment (id, experiment_spec, create_time, update_time, \
              experiment_status, accepted_time) VALUES (?, '{}', ?, ?, 'Accepted', ?)"
            .to_string()
            + KEEP_EXISTING,
        params: vec![
            text(experiment, 64, "experiment id"),
            now.into(),
            now.into(),
            now.into(),
        ],
    }
}

/// The statements (without the transaction around them) that apply `items` for `experiment`,
/// whose row exists ([`experiment_row`]). `now` is used for a status whose time is out of range.
/// Consecutive metrics and params are batched into multi-row inserts of at most [`MAX_ROWS`]
/// rows; a purge or a status change flushes them first, to keep queue order.
pub fn statements(experiment: &str, items: &[Item], now: &str) -> Vec<Statement> {
    let id = text(experiment, 64, "experiment id");
    let mut out = Vec::new();
    let mut metrics = Insert::new(METRIC_INSERT, METRIC_ROW);
    let mut params = Insert::new(PARAM_INSERT, PARAM_ROW);
    for change in changes(items, now) {
        match change {
            Change::Metric {
                key,
                value,
                is_nan,
                worker,
                timestamp,
                step,
            } => {
                if !parse_datetime(&timestamp).is_some_and(|ms| DATETIME_MS.contains(&ms)) {
                    tracing::warn!(key, %timestamp,
                        "metric timestamp outside MySQL's DATETIME range; not stored");
                    continue;
                }
                let row = [
                    id.clone(),
                    text(key, 190, "metric key"),
                    float(value),
                    text(worker, 32, "worker index"),
                    timestamp.into(),
                    step.into(),
                    i64::from(is_nan).into(),
                ];
                metrics.push(row, &mut out);
            }
            Change::Param { key, value, worker } => {
                let row = [
                    id.clone(),
                    text(&key, 190, "param key"),
                    text(&value, 190, "param value"),
                    text(worker, 32, "worker index"),
                ];
                params.push(row, &mut out);
            }
            Change::Purge {
                keys,
                worker,
                from_step,
            } => {
                metrics.flush(&mut out);
                params.flush(&mut out);
                let worker = text(worker, 32, "worker index");
                for chunk in keys.chunks(MAX_ROWS) {
                    let mut sql = "DELETE FROM metric WHERE id = ? AND worker_index = ? AND \
                                   step >= ? AND `key` IN ("
                        .to_string();
                    sql.push_str(&vec!["?"; chunk.len()].join(", "));
                    sql.push(')');
                    let mut values = vec![id.clone(), worker.clone(), from_step.into()];
                    values.extend(chunk.iter().map(|k| text(k, 190, "metric key")));
                    out.push(Statement {
                        sql,
                        params: values,
                    });
                }
            }
            Change::Status { status, at } => {
                metrics.flush(&mut out);
                params.flush(&mut out);
                out.push(status_update(status, at, &id));
            }
        }
    }
    metrics.flush(&mut out);
    params.flush(&mut out);
    out
}

/// The statement that sets the experiment's status to `status` at `at`. The experiment is every
/// worker's: `Running` (a worker starts, or a failed one runs again) replaces any status; a final
/// status sets `finished_time`, but `Succeeded` never replaces `Failed`, so a failed worker fails
/// the experiment whichever worker ends last. Each statement leaves the same row when run again.
fn status_update(status: RunStatus, at: String, id: &Value) -> Statement {
    let mut params = vec![
        status.as_submarine().into(),
        at.clone().into(),
        at.into(),
        id.clone(),
    ];
    let sql = match status {
        RunStatus::Running => {
            "UPDATE experiment SET experiment_status = ?, running_time = COALESCE(running_time, ?), \
             finished_time = NULL, update_time = ? WHERE id = ?"
        }
        RunStatus::Failed => {
            "UPDATE experiment SET experiment_status = ?, finished_time = ?, update_time = ? \
             WHERE id = ?"
        }
        RunStatus::Succeeded => {
            params.push(RunStatus::Failed.as_submarine().into());
            "UPDATE experiment SET experiment_status = ?, finished_time = ?, update_time = ? \
             WHERE id = ? AND NOT (experiment_status <=> ?)"
        }
    };
    Statement {
        sql: sql.into(),
        params,
    }
}

/// A multi-row `INSERT … ON DUPLICATE KEY UPDATE id = id` being built. Invariant: `params` holds
/// whole rows of `row`'s placeholders, at most [`MAX_ROWS`] of them.
struct Insert {
    head: &'static str,
    row: &'static str,
    rows: usize,
    params: Vec<Value>,
}

impl Insert {
    fn new(head: &'static str, row: &'static str) -> Insert {
        Insert {
            head,
            row,
            rows: 0,
            params: Vec::new(),
        }
    }

    fn push<const N: usize>(&mut self, row: [Value; N], out: &mut Vec<Statement>) {
        if self.rows == MAX_ROWS {
            self.flush(out);
        }
        self.params.extend(row);
        self.rows += 1;
    }

    fn flush(&mut self, out: &mut Vec<Statement>) {
        if self.rows == 0 {
            return;
        }
        let mut sql = String::from(self.head);
        sql.push_str(&vec![self.row; self.rows].join(", "));
        sql.push_str(KEEP_EXISTING);
        out.push(Statement {
            sql,
            params: std::mem::take(&mut self.params),
        });
        self.rows = 0;
    }
}

/// A value for a `FLOAT` column: ±Infinity (and finite values beyond `FLOAT`) become its
/// largest value, which MySQL can store; NaN never comes here ([`Change::Metric`] holds 0).
fn float(v: f64) -> Value {
    let largest = f64::from(f32::MAX);
    Value::Double(if v.is_finite() && v.abs() <= largest {
        v
    } else {
        largest.copysign(v)
    })
}

/// `text` cut to `max_chars` characters (the column's width, which a longer value would not
/// fit), as a string parameter.
fn text(text: &str, max_chars: usize, what: &str) -> Value {
    let cut = match text.char_indices().nth(max_chars) {
        Some((end, _)) => {
            tracing::warn!(
                what,
                max_chars,
                "value longer than Submarine's column; cut to fit"
            );
            &text[..end]
        }
        None => text,
    };
    Value::Bytes(cut.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Metric, Param};

    fn metric(key: &str, step: i64, value: f64) -> Item {
        Item::Metric(Metric {
            key: key.into(),
            value,
            step,
            timestamp_ms: 1_700_000_000_000 + step,
            worker: "worker-0".into(),
        })
    }

    fn s(text: &str) -> Value {
        Value::Bytes(text.as_bytes().to_vec())
    }

    #[test]
    fn a_batch_becomes_ordered_idempotent_statements_with_bound_values() {
        let items = vec![
            metric("loss", 0, 0.5),
            metric("loss", 1, f64::NAN),
            metric("it's", 2, f64::NEG_INFINITY),
            Item::Param(Param {
                key: "lr".into(),
                value: "a€',0x77)#\\".into(),
                worker: "worker-0".into(),
            }),
            Item::Purge {
                keys: vec!["loss".into()],
                worker: "worker-0".into(),
                from_step: 1,
            },
            metric("loss", 1, 2.0),
            Item::Status {
                status: RunStatus::Failed,
                at_ms: 5000,
            },
        ];
        let now = "2026-01-01 00:00:00.000";
        let got = statements("e'1", &items, now);
        assert_eq!(got.len(), 5, "{got:#?}");
        assert_eq!(
            got[0].sql,
            format!("{METRIC_INSERT}{METRIC_ROW}, {METRIC_ROW}, {METRIC_ROW}{KEEP_EXISTING}")
        );
        let ts = |ms| s(&format!("2023-11-14 22:13:20.00{ms}"));
        let row = |key, v: f64, ms, step: i64, nan: i64| {
            [s("e'1"), s(key), Value::Double(v), s("worker-0")]
                .into_iter()
                .chain([ts(ms), Value::Int(step), Value::Int(nan)])
                .collect::<Vec<_>>()
        };
        let mut want = row("loss", 0.5, 0, 0, 0);
        want.extend(row("loss", 0.0, 1, 1, 1));
        want.extend(row("it's", -f64::from(f32::MAX), 2, 2, 0));
        assert_eq!(got[0].params, want);
        // The value is a parameter, byte for byte; the SQL text holds placeholders only.
        assert_eq!(
            got[1].sql,
            format!("{PARAM_INSERT}{PARAM_ROW}{KEEP_EXISTING}")
        );
        assert_eq!(
            got[1].params,
            [s("e'1"), s("lr"), s("a€',0x77)#\\"), s("worker-0")]
        );
        assert!(got[2].sql.starts_with("DELETE FROM metric") && got[2].sql.ends_with("IN (?)"));
        assert_eq!(
            got[2].params,
            [s("e'1"), s("worker-0"), Value::Int(1), s("loss")]
        );
        assert_eq!(got[3].params, row("loss", 2.0, 1, 1, 0));
        assert_eq!(
            got[4].params,
            [
                s("Failed"),
                s("1970-01-01 00:00:05.000"),
                s("1970-01-01 00:00:05.000"),
                s("e'1")
            ]
        );
        for st in &got {
            assert_eq!(st.sql.matches('?').count(), st.params.len(), "{}", st.sql);
            assert!(
                !st.sql.contains("e'1") && !st.sql.contains("loss"),
                "{}",
                st.sql
            );
        }
    }

    #[test]
    fn only_succeeded_keeps_a_failed_status() {
        let at = |status| Item::Status {
            status,
            at_ms: 5000,
        };
        let items = [
            at(RunStatus::Running),
            at(RunStatus::Failed),
            at(RunStatus::Succeeded),
        ];
        let got = statements("e", &items, "2026-01-01 00:00:00.000");
        let time = s("1970-01-01 00:00:05.000");
        assert!(!got[0].sql.contains("<=>") && !got[1].sql.contains("<=>"));
        assert!(got[2]
            .sql
            .ends_with("WHERE id = ? AND NOT (experiment_status <=> ?)"));
        assert_eq!(
            got[2].params,
            [s("Succeeded"), time.clone(), time, s("e"), s("Failed")]
        );
    }

    #[test]
    fn long_values_are_cut_to_the_column_and_big_batches_split() {
        let long = "é".repeat(300);
        assert_eq!(text(&long, 190, "x"), s(&"é".repeat(190)));
        let items: Vec<Item> = (0..2500).map(|i| metric(&long, i, 1.0)).collect();
        let got = statements("e", &items, "2026-01-01 00:00:00.000");
        let rows: Vec<usize> = got.iter().map(|st| st.params.len() / 7).collect();
        assert_eq!(rows, [1000, 1000, 500]);
        let keys: Vec<String> = (0..1500).map(|i| i.to_string()).collect();
        let purge = [Item::Purge {
            keys,
            worker: "w".into(),
            from_step: 0,
        }];
        let got = statements("e", &purge, "2026-01-01 00:00:00.000");
        let lens: Vec<usize> = got.iter().map(|st| st.params.len()).collect();
        assert_eq!(lens, [1003, 503]);
    }

    #[test]
    fn the_experiment_row_is_created_when_missing_and_never_changed() {
        let row = experiment_row("e'1", "2026-01-01 00:00:00.000");
        assert!(row.sql.starts_with("INSERT INTO experiment"));
        assert!(row.sql.ends_with(KEEP_EXISTING));
        let now = s("2026-01-01 00:00:00.000");
        assert_eq!(row.params, [s("e'1"), now.clone(), now.clone(), now]);
        assert!(!row.sql.contains("e'1"));
    }
}
