//! MLflow's REST API as JSON: the one definition of the messages and limits that both sides use,
//! the client that delivers to a tracking server ([`super::sink`]) and the ingest endpoint that
//! answers training scripts ([`super::ingest`]).
//!
//! Messages follow MLflow's protobuf JSON: int64 fields may come as numbers or as strings (what
//! MLflow's Java client sends), doubles as numbers or as `"NaN"`/`"Infinity"` strings. Fields a
//! side does not need are not modelled; unknown fields are ignored. This module does no I/O.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};

use crate::metrics::model::float;

/// MLflow's limits for one `runs/log-batch` (`mlflow/utils/validation.py`).
pub const MAX_METRICS: usize = 1000;
pub const MAX_PARAMS: usize = 100;
pub const MAX_TAGS: usize = 100;
pub const MAX_ENTITIES: usize = 1000;
pub const MAX_REQUEST_BYTES: usize = 1_000_000;
/// Longest param value, tag value and key MLflow stores (in characters).
pub const MAX_PARAM_VALUE: usize = 6000;
pub const MAX_TAG_VALUE: usize = 8000;
pub const MAX_KEY: usize = 250;
/// Longest experiment name MLflow accepts.
pub const MAX_EXPERIMENT_NAME: usize = 500;

/// Checks a metric, param or tag key (`what` names which, for the message) as MLflow's server
/// does: non-empty, at most [`MAX_KEY`] characters of letters, digits, `_ - . / :` and space, and
/// not a path that resolves to another name (`a//b`, `./x`, `/x`, `x/`, `..`).
pub fn check_key(what: &str, key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("a {what} key must not be empty"));
    }
    let length = key.chars().count();
    if length > MAX_KEY {
        return Err(format!(
            "a {what} key is {length} characters long; MLflow allows at most {MAX_KEY}"
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ' ' | ':')))
    {
        return Err(format!(
            "the {what} key `{key}` holds {c:?}; names may only contain letters, digits, \
             underscores, periods, dashes, colons, slashes and spaces"
        ));
    }
    if !path_is_unique(key) {
        return Err(format!(
            "the {what} key `{key}` would resolve to another name when treated as a path"
        ));
    }
    Ok(())
}

/// Checks that `value` holds at most `max` characters (`what` names it, for the message).
pub fn check_length(what: &str, value: &str, max: usize) -> Result<(), String> {
    let length = value.chars().count();
    if length > max {
        return Err(format!(
            "{what} is {length} characters long; MLflow allows at most {max}"
        ));
    }
    Ok(())
}

/// MLflow's `path_not_unique`, negated: `posixpath.normpath(name) == name` and it neither is `.`
/// nor starts with `..` or `/`.
pub fn path_is_unique(name: &str) -> bool {
    !(name.is_empty()
        || name.starts_with('/')
        || name.starts_with("..")
        || name.ends_with('/')
        || name.contains("//")
        || name.split('/').any(|p| p == "." || p == ".."))
}

/// One metric point. `timestamp` and `step` are optional when received (the server fills in
/// now and 0) and always sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    #[serde(with = "float")]
    pub value: f64,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<i64>,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub step: Option<i64>,
}

/// A param or tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// The body of `runs/log-batch`. Borrowed when sent, owned when received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogBatch<'a> {
    #[serde(default)]
    pub run_id: Cow<'a, str>,
    #[serde(default)]
    pub metrics: Cow<'a, [Metric]>,
    #[serde(default)]
    pub params: Cow<'a, [KeyValue]>,
    #[serde(default)]
    pub tags: Cow<'a, [KeyValue]>,
}

/// MLflow's error answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub message: String,
}

/// A run's status (`RUNNING`, `SCHEDULED`, `FINISHED`, `FAILED`, `KILLED`).
pub const RUN_STATUSES: [&str; 5] = ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];

/// A `RunInfo`. Optional fields are left out when unset, as MLflow's server does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    /// The same id under its older name (still read by older clients).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_uuid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub experiment_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_time: Option<i64>,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_time: Option<i64>,
    /// Where the run's artifacts live (`s3://…`, `mlflow-artifacts:/…`, a path).
    #[serde(default)]
    pub artifact_uri: String,
    #[serde(default)]
    pub lifecycle_stage: String,
}

/// A run's logged data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunData {
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// A run's inputs: datasets (kept as MLflow's `DatasetInput` JSON) and models.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInputs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dataset_inputs: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_inputs: Vec<serde_json::Value>,
}

/// A model a run produced (`runs/outputs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOutput {
    pub model_id: String,
    #[serde(default, deserialize_with = "int64_or_zero")]
    pub step: i64,
}

/// A run's outputs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunOutputs {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_outputs: Vec<ModelOutput>,
}

/// A `Run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
    #[serde(default)]
    pub inputs: RunInputs,
    #[serde(default)]
    pub outputs: RunOutputs,
}

/// The answer of `runs/get` and `runs/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunAnswer {
    pub run: Run,
}

/// The body of `runs/create`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRun {
    #[serde(default)]
    pub experiment_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub run_name: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// The body of `runs/update`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateRun {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_name: Option<String>,
}

/// The bodies of `runs/log-parameter`, `runs/set-tag` and `runs/delete-tag` (`value` unused by
/// the last), and of `experiments/set-experiment-tag`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunKeyValue {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub run_uuid: Option<String>,
    #[serde(default)]
    pub experiment_id: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// The body of `runs/log-metric`: a metric and the run it belongs to.
#[derive(Debug, Clone, Deserialize)]
pub struct LogMetric {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub run_uuid: Option<String>,
    #[serde(flatten)]
    pub metric: Metric,
}

/// The body of `runs/log-inputs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogInputs {
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub datasets: Vec<serde_json::Value>,
    #[serde(default)]
    pub models: Vec<serde_json::Value>,
}

/// The body of `runs/outputs`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogOutputs {
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub models: Vec<ModelOutput>,
}

/// The body of `runs/search`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchRuns {
    #[serde(default)]
    pub experiment_ids: Vec<String>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub run_view_type: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub order_by: Vec<String>,
    #[serde(default)]
    pub page_token: Option<String>,
}

/// The answer of `runs/search`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunsPage {
    #[serde(default)]
    pub runs: Vec<Run>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// An `Experiment`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    #[serde(default)]
    pub artifact_location: String,
    #[serde(default)]
    pub lifecycle_stage: String,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_time: Option<i64>,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_update_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValue>,
}

/// The answer of `experiments/get` and `experiments/get-by-name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExperimentAnswer {
    pub experiment: Experiment,
}

/// The body of `experiments/create`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateExperiment {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// The body of `experiments/search`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchExperiments {
    #[serde(default, deserialize_with = "int64")]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub page_token: Option<String>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub order_by: Vec<String>,
    #[serde(default)]
    pub view_type: Option<String>,
}

/// The answer of `experiments/search`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExperimentsPage {
    #[serde(default)]
    pub experiments: Vec<Experiment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A `LoggedModel` (MLflow 3's models, which `log_model` creates): its info and data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoggedModelInfo {
    pub model_id: String,
    pub experiment_id: String,
    pub name: String,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_timestamp_ms: Option<i64>,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_updated_timestamp_ms: Option<i64>,
    #[serde(default)]
    pub artifact_uri: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_run_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValue>,
}

/// A logged model's params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoggedModelData {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<KeyValue>,
}

/// A logged model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoggedModel {
    pub info: LoggedModelInfo,
    #[serde(default)]
    pub data: LoggedModelData,
}

/// The answer of the `logged-models` calls that return one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoggedModelAnswer {
    pub model: LoggedModel,
}

/// The body of `logged-models` (create).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateLoggedModel {
    #[serde(default)]
    pub experiment_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub source_run_id: Option<String>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// The body of `logged-models/search`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchLoggedModels {
    #[serde(default)]
    pub experiment_ids: Vec<String>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub page_token: Option<String>,
}

/// The answer of `logged-models/search`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoggedModelsPage {
    #[serde(default)]
    pub models: Vec<LoggedModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// One entry of an artifact listing (`GET /api/2.0/mlflow-artifacts/artifacts?path=…`): `path`
/// relative to the folder listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub is_dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
}

/// An artifact listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileList {
    #[serde(default)]
    pub files: Vec<FileInfo>,
}

/// The body of `mlflow-artifacts/mpu/create/…`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateMultipartUpload {
    /// The client's local file (its name is the artifact's).
    #[serde(default)]
    pub path: String,
    #[serde(default, deserialize_with = "int64")]
    pub num_parts: Option<i64>,
}

/// Where a client sends one part of a multipart upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartCredential {
    pub url: String,
    pub part_number: i64,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// The answer of `mlflow-artifacts/mpu/create/…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultipartUpload {
    pub upload_id: String,
    pub credentials: Vec<PartCredential>,
}

/// A part as the client reports it when completing.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UploadedPart {
    #[serde(default, deserialize_with = "int64_or_zero")]
    pub part_number: i64,
    #[serde(default)]
    pub etag: String,
}

/// The body of `mlflow-artifacts/mpu/complete/…` and `…/abort/…`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FinishMultipartUpload {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub upload_id: String,
    #[serde(default)]
    pub parts: Vec<UploadedPart>,
}

/// An int64 as protobuf JSON writes it: a number, or a string holding one.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Number(i64),
        Text(String),
    }
    match Option::<Int>::deserialize(d)? {
        None => Ok(None),
        Some(Int::Number(n)) => Ok(Some(n)),
        Some(Int::Text(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an int64"))),
    }
}

/// An int64 that is 0 when absent or null.
fn int64_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(int64(d)?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_fields_take_numbers_and_strings_as_protobuf_json_writes_them() {
        let m: Metric =
            serde_json::from_str(r#"{"key":"k","value":"NaN","step":"7","timestamp":12}"#).unwrap();
        assert_eq!((m.step, m.timestamp), (Some(7), Some(12)));
        assert!(m.value.is_nan());
        let m: Metric = serde_json::from_str(r#"{"key":"k","value":1.5}"#).unwrap();
        assert_eq!((m.step, m.timestamp), (None, None));
        assert!(serde_json::from_str::<Metric>(r#"{"key":"k","value":1,"step":"x"}"#).is_err());
    }

    #[test]
    fn a_batch_sent_borrowed_reads_back_owned() {
        let metrics = [Metric {
            key: "loss".into(),
            value: f64::INFINITY,
            timestamp: Some(1),
            step: Some(2),
        }];
        let sent = LogBatch {
            run_id: "r".into(),
            metrics: Cow::Borrowed(&metrics),
            ..LogBatch::default()
        };
        let text = serde_json::to_string(&sent).unwrap();
        assert!(text.contains(r#""value":"Infinity""#), "{text}");
        let got: LogBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(got.run_id, "r");
        assert_eq!(got.metrics.as_ref(), &metrics);
        assert!(got.params.is_empty() && got.tags.is_empty());
    }
}
