//! What flows through the metrics pipeline: metrics, params, tags, purges and run status.
//!
//! Every source produces [`Item`]s and every sink consumes them; neither knows the other. Values
//! keep NaN and ±Infinity exactly: JSON cannot hold them as numbers, so [`float`] writes them as
//! the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (as MLflow's REST API does) and reads both
//! forms back. This module does no I/O.

use serde::{Deserialize, Serialize};

/// One point of a metric series. Invariant: `key` is non-empty; `value` may be NaN or ±Infinity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    #[serde(with = "float")]
    pub value: f64,
    pub step: i64,
    /// Milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// The worker that produced it (`worker-0`, `master-0`, …), Submarine's `worker_index`.
    pub worker: String,
}

/// A run parameter. Invariant: one value per (key, worker); a later value for the same key is
/// ignored by the sinks, as in Submarine and MLflow (parameters are immutable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    pub key: String,
    pub value: String,
    pub worker: String,
}

/// A run tag (MLflow's; sinks without tags ignore them). A later value replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// A completed save of model artifacts (see [`crate::artifacts`]). Each sink records it its own
/// way: Submarine and SQLite through the [`Param`] that comes with it, MLflow as a tag and, when
/// the run's artifact store is the same object store, as the run's artifacts. Invariant: `url`
/// is the save folder's redacted URL, ending in `/`, and `manifest_sha256` the hex sha256 of its
/// stored `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactsSave {
    pub worker: String,
    /// The save number `n` of `…/artifacts/<n>/`.
    pub save: u64,
    pub url: String,
    pub manifest_sha256: String,
}

/// An MLflow run a training script made through the endpoint
/// ([`crate::metrics::mlflow::ingest`]), as the sinks record it; the whole record is queued again
/// whenever it changes (its name, status or end). Invariant: `run_id` is unique within the
/// Periscope experiment; `index` is the worker_index its metrics and params carry (the worker
/// itself for the worker's first run, `<worker>/<n>` for its n-th); `status` is one of MLflow's
/// run statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRun {
    pub run_id: String,
    pub index: String,
    /// The MLflow experiment's name; `None` for the default experiment, which each sink maps to
    /// the worker's own.
    pub experiment: Option<String>,
    pub name: String,
    /// The run it is nested in (`mlflow.parentRunId`).
    pub parent: Option<String>,
    pub user: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub status: String,
}

/// A file a script logged through the endpoint, now stored in Periscope's storage. Invariant:
/// `path` is relative and `/`-separated, below the run's artifacts, or below the logged model's
/// when `model` is set; `folder` is the redacted URL of that stored artifacts folder, ending in
/// `/`; `size` and `sha256` describe the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunArtifact {
    /// The run (a logged model's source run); `None` for a model logged outside any run.
    pub run: Option<String>,
    /// The worker_index of the run (see [`ScriptRun::index`]).
    pub index: String,
    pub model: Option<ModelRef>,
    pub path: String,
    pub folder: String,
    pub size: u64,
    pub sha256: String,
}

/// A logged model (MLflow 3's `log_model`). Invariant: `name` is non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub id: String,
    pub name: String,
}

impl RunArtifact {
    /// The stored object's redacted URL.
    pub fn url(&self) -> String {
        format!("{}{}", self.folder, self.path)
    }

    /// The file's path among the run's artifacts: a model's files under the model's name, as
    /// MLflow 2 kept them (and `runs:/<run>/<name>` still finds them).
    pub fn run_path(&self) -> String {
        match &self.model {
            Some(m) => format!("{}/{}", m.name, self.path),
            None => self.path.clone(),
        }
    }
}

/// The lifecycle of the experiment, in Submarine's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
}

impl RunStatus {
    /// Submarine's `experiment_status` value.
    pub fn as_submarine(self) -> &'static str {
        match self {
            RunStatus::Running => "Running",
            RunStatus::Succeeded => "Succeeded",
            RunStatus::Failed => "Failed",
        }
    }
}

/// One thing a sink must apply, in queue order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    Metric(Metric),
    Param(Param),
    Tag(Tag),
    /// A completed artifacts save (queued after its [`Param`]).
    Artifacts(ArtifactsSave),
    /// The writer of a TensorBoard run restarted at `from_step` (PyTorch's `purge_step`): points of
    /// `keys` for `worker` with step ≥ `from_step` that were applied *before* this item are stale
    /// and are deleted, as TensorBoard drops them. Points that come after it are kept.
    Purge {
        keys: Vec<String>,
        worker: String,
        from_step: i64,
    },
    /// The experiment's status changed at `at_ms`.
    Status {
        status: RunStatus,
        at_ms: i64,
    },
    /// A script's MLflow run was made or changed.
    ScriptRun(ScriptRun),
    /// Data logged to a script's run (queued after the run). Metrics and params carry the run's
    /// worker_index as their `worker`.
    RunData {
        run: String,
        metrics: Vec<Metric>,
        params: Vec<Param>,
        tags: Vec<Tag>,
    },
    /// A tag of a script's run was deleted.
    RunTagDeleted {
        run: String,
        key: String,
    },
    /// Datasets a script's run used, as MLflow's `DatasetInput` JSON.
    RunInputs {
        run: String,
        datasets: Vec<serde_json::Value>,
    },
    /// A file of a script's run reached storage.
    RunArtifact(RunArtifact),
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Serde for `f64` that keeps NaN and ±Infinity (as strings, since JSON numbers cannot hold them).
pub mod float {
    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Writes finite values as numbers, the others as `"NaN"`, `"Infinity"`, `"-Infinity"`.
    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            s.serialize_f64(*value)
        } else {
            s.serialize_str(name(*value))
        }
    }

    /// Reads a number, or one of the strings above (any case, `Inf` too).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(t) => {
                parse(&t).ok_or_else(|| de::Error::custom(format!("`{t}` is not a number")))
            }
        }
    }

    /// The text form of a non-finite value.
    pub fn name(value: f64) -> &'static str {
        if value.is_nan() {
            "NaN"
        } else if value > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
    }

    /// Puts quotes around bare `NaN`, `Infinity` and `-Infinity` outside strings, so a line written
    /// by Python's `json.dumps` (which writes them bare) parses.
    pub fn quote_non_finite(text: &str) -> std::borrow::Cow<'_, str> {
        if !text.contains("NaN") && !text.contains("Infinity") {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 8);
        let mut in_string = false;
        let mut escaped = false;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if in_string {
                out.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                rest = &rest[c.len_utf8()..];
                continue;
            }
            if c == '"' {
                in_string = true;
            }
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            match token {
                Some(t) => {
                    out.push('"');
                    out.push_str(t);
                    out.push('"');
                    rest = &rest[t.len()..];
                }
                None => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// Parses a number written as text, including the non-finite names.
    pub fn parse(text: &str) -> Option<f64> {
        match text.trim().to_ascii_lowercase().as_str() {
            "nan" => Some(f64::NAN),
            "inf" | "infinity" | "+inf" | "+infinity" => Some(f64::INFINITY),
            "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_survive_a_json_round_trip() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5, -0.0] {
            let item = Item::Metric(Metric {
                key: "loss".into(),
                value: v,
                step: 3,
                timestamp_ms: 1_700_000_000_123,
                worker: "worker-0".into(),
            });
            let json = serde_json::to_string(&item).unwrap();
            let Item::Metric(back) = serde_json::from_str::<Item>(&json).unwrap() else {
                panic!("not a metric: {json}");
            };
            assert!(
                back.value.to_bits() == v.to_bits() || (v.is_nan() && back.value.is_nan()),
                "{json}"
            );
        }
    }
}
