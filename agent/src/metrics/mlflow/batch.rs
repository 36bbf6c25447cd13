//! Turns a queue batch of [`Item`]s into the MLflow calls that apply it, in order, within
//! MLflow's limits for one `runs/log-batch`: at most 1000 metrics, 100 params, 100 tags, 1000
//! entities and 1 MB of JSON.
//!
//! What MLflow cannot take is made acceptable here rather than refused later, because a refused
//! batch would stop the queue forever: keys with characters MLflow's names do not allow are
//! rewritten (the same key always maps to the same name, so redelivery stays idempotent), and
//! values longer than MLflow keeps are cut where the server would cut them. Params travel in
//! requests of their own, so a param MLflow refuses (a changed value) never holds metrics back.
//! Purges cannot be expressed in MLflow and are skipped. An artifacts save becomes its tag and a
//! [`Call::Artifacts`] (copying it into the run's artifacts), which the sink may find it cannot
//! do. This module does no I/O.

use std::collections::HashSet;

use serde::Serialize;

use super::api::path_is_unique;
pub use super::api::{
    KeyValue, Metric, MAX_ENTITIES, MAX_KEY, MAX_METRICS, MAX_PARAMS, MAX_PARAM_VALUE,
    MAX_REQUEST_BYTES, MAX_TAGS, MAX_TAG_VALUE,
};
use crate::metrics::model::{ArtifactsSave, Item, RunArtifact, RunStatus, ScriptRun, Tag};
use crate::metrics::saves::mlflow_tag;

/// Bytes kept free for `{"run_id":"…","metrics":[],"params":[],"tags":[]}` around the items
/// (MLflow run ids are 32 hex characters; this leaves room for long ones).
const ENVELOPE_BYTES: usize = 512;

/// The body of one `runs/log-batch`. Invariant: within every limit above once wrapped with a
/// run id, param keys are unique, tag keys are unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogBatch {
    /// The script run (the endpoint's run id) it belongs to; `None`: the worker's run.
    pub run: Option<String>,
    pub metrics: Vec<Metric>,
    pub params: Vec<KeyValue>,
    pub tags: Vec<KeyValue>,
    /// Encoded size of the items, commas included.
    bytes: usize,
}

impl LogBatch {
    /// A batch of params only (at most [`MAX_PARAMS`], unique keys: the caller's invariant).
    pub fn with_params(params: Vec<KeyValue>) -> LogBatch {
        LogBatch {
            bytes: params.iter().map(encoded_len).sum(),
            params,
            ..LogBatch::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.metrics.is_empty() && self.params.is_empty() && self.tags.is_empty()
    }

    fn entities(&self) -> usize {
        self.metrics.len() + self.params.len() + self.tags.len()
    }

    /// The request body for `run_id`.
    pub fn body(&self, run_id: &str) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&super::api::LogBatch {
            run_id: run_id.into(),
            metrics: self.metrics.as_slice().into(),
            params: self.params.as_slice().into(),
            tags: self.tags.as_slice().into(),
        })
    }
}

/// One MLflow call. Invariant: a plan's calls are in the order they must be made.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Log(LogBatch),
    /// `runs/update`.
    Status {
        status: &'static str,
        end_time: Option<i64>,
    },
    /// Put the save's files into the run's artifacts, where the run's artifact store allows it.
    Artifacts(ArtifactsSave),
    /// Create a script's run (or find the one made before), or update it.
    ScriptRun(ScriptRun),
    /// `runs/delete-tag` on a script's run.
    DeleteTag {
        run: String,
        key: String,
    },
    /// `runs/log-inputs` on a script's run.
    Inputs {
        run: String,
        datasets: Vec<serde_json::Value>,
    },
    /// Put a script run's stored file into the run's artifacts on the server.
    RunArtifact(RunArtifact),
}

/// MLflow's run status and end time for a Periscope status.
pub fn mlflow_status(status: RunStatus, at_ms: i64) -> Call {
    match status {
        RunStatus::Running => Call::Status {
            status: "RUNNING",
            end_time: None,
        },
        RunStatus::Succeeded => Call::Status {
            status: "FINISHED",
            end_time: Some(at_ms),
        },
        RunStatus::Failed => Call::Status {
            status: "FAILED",
            end_time: Some(at_ms),
        },
    }
}

/// A key MLflow accepts: characters other than letters, digits, `_ - . / :` and space become
/// `_`, and names that would resolve to another path (`a//b`, `./x`, `/x`, `x/`) lose the
/// offending slashes. The same input always gives the same name.
pub fn mlflow_key(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' ' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !path_is_unique(&out) {
        out = out
            .split('/')
            .filter(|part| !part.is_empty() && *part != "." && *part != "..")
            .collect::<Vec<_>>()
            .join("/");
        if out.is_empty() {
            out.push('_');
        }
    }
    out.chars().take(MAX_KEY).collect()
}

fn cut(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}

/// Turns items into calls. Invariant: `warned` holds every key it already warned about (and
/// a marker for purges), so a bad key is reported once and not once per point.
#[derive(Debug, Default)]
pub struct Planner {
    warned: HashSet<String>,
}

impl Planner {
    /// The calls that apply `items`, in order: items between two status changes become as few
    /// `runs/log-batch` calls as the limits allow (params in calls of their own, one run per
    /// call), and each status change or script run change becomes its own call after them.
    /// Artifacts copies come last: their tags are logged first, so the run names every save even
    /// when its copy cannot be made.
    pub fn plan(&mut self, items: &[Item]) -> Vec<Call> {
        let mut out = Plan::default();
        for item in items {
            match item {
                Item::Metric(m) => {
                    out.target(None);
                    self.metric(m, &mut out);
                }
                Item::Param(p) => {
                    out.target(None);
                    self.param(p, &mut out);
                }
                Item::Tag(t) => {
                    out.target(None);
                    self.tag(t, &mut out);
                }
                Item::Artifacts(save) => {
                    out.target(None);
                    self.tag(&mlflow_tag(save), &mut out);
                    out.copies.push(Call::Artifacts(save.clone()));
                }
                Item::Purge {
                    keys, from_step, ..
                } => {
                    // MLflow has no way to delete metric points; TensorBoard hides them, MLflow
                    // keeps both the old and the new points of those steps.
                    if self.warned.insert("\0purge".into()) {
                        tracing::warn!(?keys, from_step,
                            "a TensorBoard purge (restart at a step) cannot be applied in MLflow; earlier points stay");
                    } else {
                        tracing::debug!(
                            ?keys,
                            from_step,
                            "purge skipped (not expressible in MLflow)"
                        );
                    }
                }
                Item::Status { status, at_ms } => {
                    out.flush_all();
                    out.calls.push(mlflow_status(*status, *at_ms));
                }
                Item::ScriptRun(run) => {
                    out.flush_all();
                    out.calls.push(Call::ScriptRun(run.clone()));
                }
                Item::RunData {
                    run,
                    metrics,
                    params,
                    tags,
                } => {
                    out.target(Some(run));
                    for p in params {
                        self.param(p, &mut out);
                    }
                    for t in tags {
                        self.tag(t, &mut out);
                    }
                    for m in metrics {
                        self.metric(m, &mut out);
                    }
                }
                Item::RunTagDeleted { run, key } => {
                    out.flush_all();
                    out.calls.push(Call::DeleteTag {
                        run: run.clone(),
                        key: key.clone(),
                    });
                }
                Item::RunInputs { run, datasets } => {
                    out.flush_all();
                    out.calls.push(Call::Inputs {
                        run: run.clone(),
                        datasets: datasets.clone(),
                    });
                }
                Item::RunArtifact(file) => out.copies.push(Call::RunArtifact(file.clone())),
            }
        }
        out.flush_all();
        out.calls.extend(out.copies);
        out.calls
    }

    fn metric(&mut self, m: &crate::metrics::model::Metric, out: &mut Plan) {
        let point = Metric {
            key: self.key(&m.key),
            value: m.value,
            timestamp: Some(m.timestamp_ms),
            step: Some(m.step),
        };
        let size = encoded_len(&point);
        if !fits(&out.data, size) || out.data.metrics.len() >= MAX_METRICS {
            out.flush_data();
        }
        out.data.bytes += size;
        out.data.metrics.push(point);
    }

    fn param(&mut self, p: &crate::metrics::model::Param, out: &mut Plan) {
        let kv = KeyValue {
            key: self.key(&p.key),
            value: cut(&p.value, MAX_PARAM_VALUE),
        };
        if let Some(first) = out.params.params.iter().find(|q| q.key == kv.key) {
            // MLflow refuses a batch with a key twice; params are immutable, so the first value
            // is the one that counts.
            if first.value != kv.value {
                tracing::warn!(key = %kv.key,
                    "a param was given two values; MLflow keeps the first");
            }
            return;
        }
        let size = encoded_len(&kv);
        if !fits(&out.params, size) || out.params.params.len() >= MAX_PARAMS {
            out.flush_params();
        }
        out.params.bytes += size;
        out.params.params.push(kv);
    }

    /// Adds a tag to the data batch, flushing it first when it is full.
    fn tag(&mut self, tag: &Tag, out: &mut Plan) {
        let kv = KeyValue {
            key: self.key(&tag.key),
            value: cut(&tag.value, MAX_TAG_VALUE),
        };
        let size = encoded_len(&kv);
        let data = &mut out.data;
        if let Some(i) = data.tags.iter().position(|q| q.key == kv.key) {
            // A later value replaces an earlier one, and MLflow wants one key per batch: the
            // earlier value need not be sent at all.
            let earlier = data.tags.remove(i);
            data.bytes -= encoded_len(&earlier);
        }
        if !fits(data, size) || data.tags.len() >= MAX_TAGS {
            out.flush_data();
        }
        out.data.bytes += size;
        out.data.tags.push(kv);
    }

    /// The MLflow name for `key`, warning once per key that had to change.
    fn key(&mut self, key: &str) -> String {
        let name = mlflow_key(key);
        if name != key && self.warned.insert(key.to_string()) {
            tracing::warn!(key, mlflow_key = %name, "key renamed to a name MLflow accepts");
        }
        name
    }
}

/// A plan being made. Invariant: `params` and `data` hold items of run `run` only (`None`: the
/// worker's run); `calls` and then `copies` are in the order they must be made.
#[derive(Default)]
struct Plan {
    calls: Vec<Call>,
    copies: Vec<Call>,
    params: LogBatch,
    data: LogBatch,
    run: Option<String>,
}

impl Plan {
    /// Makes `run` the run of the next items, flushing what was gathered for another.
    fn target(&mut self, run: Option<&str>) {
        if self.run.as_deref() != run {
            self.flush_all();
            self.run = run.map(str::to_string);
        }
    }

    fn flush_params(&mut self) {
        if !self.params.is_empty() {
            let mut batch = std::mem::take(&mut self.params);
            batch.run = self.run.clone();
            self.calls.push(Call::Log(batch));
        }
    }

    fn flush_data(&mut self) {
        if !self.data.is_empty() {
            let mut batch = std::mem::take(&mut self.data);
            batch.run = self.run.clone();
            self.calls.push(Call::Log(batch));
        }
    }

    fn flush_all(&mut self) {
        self.flush_params();
        self.flush_data();
    }
}

/// True when one more entity of `size` bytes fits `batch`.
fn fits(batch: &LogBatch, size: usize) -> bool {
    batch.entities() < MAX_ENTITIES && batch.bytes + size + ENVELOPE_BYTES <= MAX_REQUEST_BYTES
}

/// The JSON size of one entity plus the comma before it.
fn encoded_len(value: &impl Serialize) -> usize {
    // Serializing these plain structs cannot fail; a failure would only make the estimate 0,
    // and the server's own check would then refuse an oversized request.
    serde_json::to_vec(value).map_or(0, |v| v.len()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Metric, Param, Tag};

    fn metric(key: &str, step: i64) -> Item {
        Item::Metric(Metric {
            key: key.into(),
            value: step as f64,
            step,
            timestamp_ms: 1000 + step,
            worker: "worker-0".into(),
        })
    }

    fn param(key: &str, value: &str) -> Item {
        Item::Param(Param {
            key: key.into(),
            value: value.into(),
            worker: "worker-0".into(),
        })
    }

    fn tag(key: &str, value: &str) -> Item {
        Item::Tag(Tag {
            key: key.into(),
            value: value.into(),
        })
    }

    fn logs(calls: &[Call]) -> Vec<&LogBatch> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Log(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    /// Every batch is within MLflow's limits once encoded with a run id.
    fn assert_within_limits(calls: &[Call]) {
        for b in logs(calls) {
            assert!(b.metrics.len() <= MAX_METRICS);
            assert!(b.params.len() <= MAX_PARAMS);
            assert!(b.tags.len() <= MAX_TAGS);
            assert!(b.entities() <= MAX_ENTITIES);
            let body = b.body(&"r".repeat(32)).unwrap();
            assert!(body.len() <= MAX_REQUEST_BYTES, "{}", body.len());
            let keys: HashSet<_> = b.params.iter().map(|p| &p.key).collect();
            assert_eq!(keys.len(), b.params.len());
            let keys: HashSet<_> = b.tags.iter().map(|p| &p.key).collect();
            assert_eq!(keys.len(), b.tags.len());
        }
    }

    #[test]
    fn metrics_params_and_tags_are_split_within_the_count_limits() {
        let mut items: Vec<Item> = (0..2500).map(|i| metric("loss", i)).collect();
        items.extend((0..250).map(|i| param(&format!("p{i}"), "v")));
        items.extend((0..150).map(|i| tag(&format!("t{i}"), "v")));
        let calls = Planner::default().plan(&items);
        assert_within_limits(&calls);
        let batches = logs(&calls);
        let metrics: usize = batches.iter().map(|b| b.metrics.len()).sum();
        let params: usize = batches.iter().map(|b| b.params.len()).sum();
        let tags: usize = batches.iter().map(|b| b.tags.len()).sum();
        assert_eq!((metrics, params, tags), (2500, 250, 150));
        // Params never share a request with metrics or tags.
        assert!(batches
            .iter()
            .all(|b| b.params.is_empty() || (b.metrics.is_empty() && b.tags.is_empty())));
        // Metrics keep their order.
        let steps: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.metrics.iter().filter_map(|m| m.step))
            .collect();
        assert_eq!(steps, (0..2500).collect::<Vec<_>>());
    }

    #[test]
    fn large_values_are_split_by_bytes_and_cut_to_mlflows_lengths() {
        // 100 tags of 8000 characters and 900 points with long keys: within every count limit
        // of one batch, but over 1 MB of JSON.
        let big = "x".repeat(20_000);
        let long_key = "k".repeat(240);
        let mut items: Vec<Item> = (0..100)
            .map(|i| tag(&format!("{long_key}{i}"), &big))
            .collect();
        items.extend((0..900).map(|i| metric(&long_key, i)));
        items.extend((0..100).map(|i| param(&format!("p{i}"), &big)));
        let calls = Planner::default().plan(&items);
        assert_within_limits(&calls);
        let batches = logs(&calls);
        let data = batches.iter().filter(|b| b.params.is_empty()).count();
        assert!(data >= 2, "{data} batches of metrics and tags");
        let tags: usize = batches.iter().map(|b| b.tags.len()).sum();
        let metrics: usize = batches.iter().map(|b| b.metrics.len()).sum();
        assert_eq!((tags, metrics), (100, 900));
        for b in &batches {
            assert!(b.tags.iter().all(|t| t.value.len() == MAX_TAG_VALUE));
            assert!(b.params.iter().all(|p| p.value.len() == MAX_PARAM_VALUE));
        }
    }

    #[test]
    fn statuses_come_in_order_with_end_times() {
        let items = vec![
            Item::Status {
                status: RunStatus::Running,
                at_ms: 5,
            },
            metric("a", 0),
            Item::Status {
                status: RunStatus::Failed,
                at_ms: 9,
            },
        ];
        let calls = Planner::default().plan(&items);
        assert_eq!(calls.len(), 3);
        assert_eq!(
            calls[0],
            Call::Status {
                status: "RUNNING",
                end_time: None
            }
        );
        assert!(matches!(&calls[1], Call::Log(b) if b.metrics.len() == 1));
        assert_eq!(
            calls[2],
            Call::Status {
                status: "FAILED",
                end_time: Some(9)
            }
        );
        assert_eq!(
            mlflow_status(RunStatus::Succeeded, 7),
            Call::Status {
                status: "FINISHED",
                end_time: Some(7)
            }
        );
    }

    #[test]
    fn duplicate_keys_in_a_batch_keep_the_first_param_and_the_last_tag() {
        let items = vec![
            param("lr", "0.1"),
            param("lr", "0.2"),
            tag("t", "1"),
            tag("t", "2"),
        ];
        let calls = Planner::default().plan(&items);
        let batches = logs(&calls);
        let params: Vec<_> = batches.iter().flat_map(|b| b.params.clone()).collect();
        let tags: Vec<_> = batches.iter().flat_map(|b| b.tags.clone()).collect();
        assert_eq!(
            params,
            [KeyValue {
                key: "lr".into(),
                value: "0.1".into()
            }]
        );
        assert_eq!(
            tags,
            [KeyValue {
                key: "t".into(),
                value: "2".into()
            }]
        );
    }

    #[test]
    fn an_artifacts_save_is_tagged_and_copied_after_the_batch() {
        let save = ArtifactsSave {
            worker: "worker-1".into(),
            save: 2,
            url: "s3://b/p/e/worker-1/artifacts/2/".into(),
            manifest_sha256: "ab".repeat(32),
        };
        let calls = Planner::default().plan(&[
            param("artifacts.2", &save.url),
            Item::Artifacts(save.clone()),
            metric("loss", 1),
        ]);
        assert_eq!(calls.len(), 3, "{calls:?}");
        let Call::Log(data) = &calls[1] else {
            panic!("{calls:?}");
        };
        assert_eq!(
            data.tags,
            vec![KeyValue {
                key: "periscope.artifacts.worker-1.2".into(),
                value: format!("{} sha256:{}", save.url, save.manifest_sha256),
            }]
        );
        assert_eq!(data.metrics.len(), 1);
        assert_eq!(calls[2], Call::Artifacts(save));
    }

    #[test]
    fn purges_are_skipped_and_non_finite_values_are_mlflow_strings() {
        let items = vec![
            Item::Purge {
                keys: vec!["loss".into()],
                worker: "worker-0".into(),
                from_step: 3,
            },
            Item::Metric(Metric {
                key: "loss".into(),
                value: f64::NAN,
                step: 1,
                timestamp_ms: 2,
                worker: "w".into(),
            }),
            Item::Metric(Metric {
                key: "loss".into(),
                value: f64::NEG_INFINITY,
                step: 2,
                timestamp_ms: 3,
                worker: "w".into(),
            }),
        ];
        let calls = Planner::default().plan(&items);
        assert_eq!(calls.len(), 1);
        let Call::Log(b) = &calls[0] else {
            panic!("{calls:?}")
        };
        let body = String::from_utf8(b.body("r").unwrap()).unwrap();
        assert_eq!(
            body,
            r#"{"run_id":"r","metrics":[{"key":"loss","value":"NaN","timestamp":2,"step":1},{"key":"loss","value":"-Infinity","timestamp":3,"step":2}],"params":[],"tags":[]}"#
        );
    }

    #[test]
    fn keys_become_names_mlflow_accepts() {
        assert_eq!(mlflow_key("train/loss"), "train/loss");
        assert_eq!(mlflow_key("eval/acc top:1"), "eval/acc top:1");
        assert_eq!(mlflow_key("loss@gpu#0"), "loss_gpu_0");
        assert_eq!(mlflow_key("/abs//x/"), "abs/x");
        assert_eq!(mlflow_key("./x/../y"), "x/y");
        assert_eq!(mlflow_key("."), "_");
        assert_eq!(mlflow_key(&"k".repeat(300)).len(), MAX_KEY);
    }
}
