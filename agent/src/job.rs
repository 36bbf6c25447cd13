//! Who this process works for: the experiment id and the worker name.
//!
//! The worker name follows the Submarine SDK, so rows and objects written by Periscope line up
//! with what the SDK writes: `TF_CONFIG`'s task `type-index`, else `CLUSTER_SPEC`'s task
//! `job_name-index`, else PyTorch's `RANK` (`0` → `master-0`, `N` → `worker-N`), else `worker-0`.

use crate::error::{Classify, ErrorClass};

/// The identity every stored object and metastore row carries. Invariant: both parts are
/// non-empty and contain no `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobIdentity {
    pub experiment: String,
    pub worker: String,
}

/// An identity that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(String);

impl Classify for IdentityError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }

    fn hint(&self) -> Option<String> {
        Some("set --experiment-id (or JOB_ID) and optionally --worker".into())
    }
}

impl JobIdentity {
    /// The worker's folder below a storage path: `<prefix>/<experiment>/<worker>`, where
    /// everything this worker stores lives.
    pub fn worker_prefix(&self, prefix: &object_store::path::Path) -> object_store::path::Path {
        prefix
            .clone()
            .join(self.experiment.as_str())
            .join(self.worker.as_str())
    }

    /// The worker's folder below a storage URL, redacted, for people: `<URL>/<experiment>/<worker>`.
    pub fn shown_under(&self, storage: &url::Url) -> String {
        format!(
            "{}/{}/{}",
            crate::redact::redact_url(storage.as_str()).trim_end_matches('/'),
            self.experiment,
            self.worker
        )
    }

    /// Builds the identity from flags, falling back to the environment as described above.
    pub fn resolve(
        experiment: Option<String>,
        worker: Option<String>,
    ) -> Result<JobIdentity, IdentityError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let experiment = experiment.or_else(|| env("JOB_ID")).ok_or_else(|| {
            IdentityError(
                "no experiment id: --experiment-id is not given and JOB_ID is not set".into(),
            )
        })?;
        let worker = resolve_worker(worker);
        for (what, value) in [("experiment id", &experiment), ("worker", &worker)] {
            if value.is_empty() || value.contains('/') || value == "." || value == ".." {
                return Err(IdentityError(format!(
                    "{what} `{value}` must be non-empty and contain no `/`"
                )));
            }
        }
        Ok(JobIdentity { experiment, worker })
    }
}

/// The worker name: `flag` when given, else derived from the environment as the module docs say.
pub fn resolve_worker(flag: Option<String>) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    flag.unwrap_or_else(|| {
        worker_from(
            env("TF_CONFIG").as_deref(),
            env("CLUSTER_SPEC").as_deref(),
            env("RANK").as_deref(),
        )
    })
}

/// The worker name as the Submarine SDK derives it.
pub fn worker_from(
    tf_config: Option<&str>,
    cluster_spec: Option<&str>,
    rank: Option<&str>,
) -> String {
    let task = |json: &str, type_key: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let task = v.get("task")?;
        let kind = task.get(type_key)?.as_str()?;
        let index = match task.get("index")? {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            _ => return None,
        };
        Some(format!("{kind}-{index}"))
    };
    if let Some(w) = tf_config.and_then(|j| task(j, "type")) {
        return w;
    }
    if let Some(w) = cluster_spec.and_then(|j| task(j, "job_name")) {
        return w;
    }
    match rank.map(str::trim) {
        Some("0") => "master-0".into(),
        Some(r) if !r.is_empty() => format!("worker-{r}"),
        _ => "worker-0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_follow_the_submarine_sdk() {
        let tf = r#"{"cluster":{},"task":{"type":"ps","index":1}}"#;
        assert_eq!(worker_from(Some(tf), None, Some("3")), "ps-1");
        let cs = r#"{"task":{"job_name":"chief","index":0}}"#;
        assert_eq!(worker_from(None, Some(cs), Some("3")), "chief-0");
        assert_eq!(worker_from(None, None, Some("0")), "master-0");
        assert_eq!(worker_from(None, None, Some("2")), "worker-2");
        assert_eq!(worker_from(None, None, None), "worker-0");
        assert_eq!(worker_from(Some("not json"), None, None), "worker-0");
    }
}
