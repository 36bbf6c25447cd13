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

/// The body of `runs/update`: the part that matters here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateRun {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(
        default,
        deserialize_with = "int64",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_time: Option<i64>,
}

/// MLflow's error answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub message: String,
}

/// The parts of a `RunInfo` read and written here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    #[serde(default)]
    pub lifecycle_stage: String,
    /// Where the run's artifacts live (`s3://…`, `mlflow-artifacts:/…`, a path).
    #[serde(default)]
    pub artifact_uri: String,
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

/// A `Run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
}

/// The answer of `runs/get` and `runs/create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunAnswer {
    pub run: Run,
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
