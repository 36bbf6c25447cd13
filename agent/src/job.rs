//! Who this process works for: the experiment id and the worker name.
//!
//! The worker name comes from the first of these that is set, so that two pods of one job never
//! share a name (they would overwrite each other's objects and rows):
//!
//! 1. `--worker` (`PERISCOPE_WORKER`);
//! 2. the Submarine SDK's sources, so rows and objects line up with what the SDK writes:
//!    `TF_CONFIG`'s task `type-index`, else `CLUSTER_SPEC`'s task `job_name-index`, else PyTorch's
//!    `RANK` (`0` → `master-0`, `N` → `worker-N`). Platforms set these on the framework's
//!    container only, so a sidecar rarely sees them;
//! 3. `JOB_COMPLETION_INDEX` → `worker-<index>` (Kubernetes sets it in every container of an
//!    Indexed Job's pod, sidecars included);
//! 4. the training operator's replica labels passed through the downward API as
//!    `PERISCOPE_REPLICA_TYPE` and `PERISCOPE_REPLICA_INDEX` → `<type>-<index>`, as `TF_CONFIG`
//!    names the task;
//! 5. the name `periscope exec` published from the main container (which sees `TF_CONFIG` and
//!    `RANK`) into the shared folder ([`publish`]), when the caller gives its path;
//! 6. the last resort, which the caller chooses ([`Fallback`]): the pod's hostname (unique among
//!    running pods) for the pod commands, `worker-0` on a VM.
//!
//! A name is at most [`MAX_WORKER_CHARS`] characters, the width of Submarine's `worker_index`
//! column, so a metastore never cuts two names to one: a derived name that is longer keeps its
//! start and a hash of the whole; a longer `--worker` is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::error::{Classify, ErrorClass};

/// The longest worker name: Submarine's `worker_index` is `varchar(32)`.
pub const MAX_WORKER_CHARS: usize = 32;

/// The file, in the folder `periscope exec` captures into, that holds the worker name it derived.
pub const PUBLISHED_WORKER_FILE: &str = "worker.json";

/// The identity every stored object and metastore row carries. Invariant: both parts are
/// non-empty and contain no `/`; the worker has at most [`MAX_WORKER_CHARS`] characters.
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

/// Where a worker name came from, for the log line that says which name a process uses and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkerSource {
    Flag,
    TfConfig,
    ClusterSpec,
    Rank,
    CompletionIndex,
    ReplicaLabels,
    Published,
    Hostname,
    Default,
}

impl WorkerSource {
    /// What people know the source as.
    pub fn describe(self) -> &'static str {
        match self {
            WorkerSource::Flag => "--worker",
            WorkerSource::TfConfig => "TF_CONFIG",
            WorkerSource::ClusterSpec => "CLUSTER_SPEC",
            WorkerSource::Rank => "RANK",
            WorkerSource::CompletionIndex => "JOB_COMPLETION_INDEX",
            WorkerSource::ReplicaLabels => "the training operator's replica labels",
            WorkerSource::Published => "the name periscope exec published",
            WorkerSource::Hostname => "the hostname",
            WorkerSource::Default => "the default",
        }
    }
}

/// A worker name and where it came from. Invariant: `name` is a valid worker name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Worker {
    pub name: String,
    pub source: WorkerSource,
}

/// The last resort when no source names the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `worker-0`: one worker per data folder (`periscope run` on a VM, `artifacts push`).
    Worker0,
    /// The hostname: a pod's, unique among the pods that run at once.
    Hostname,
}

/// How to find the worker name beyond the flag and the environment.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The file `periscope exec` publishes ([`PUBLISHED_WORKER_FILE`] in its capture folder).
    pub published: Option<std::path::PathBuf>,
    /// How long to wait for `published` to appear when nothing else names the worker.
    pub wait: Duration,
    pub fallback: Fallback,
}

impl Lookup {
    /// No published name; `worker-0` at last.
    pub fn vm() -> Lookup {
        Lookup {
            published: None,
            wait: Duration::ZERO,
            fallback: Fallback::Worker0,
        }
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

    /// Builds the identity from flags, falling back to the environment and `worker-0` as the
    /// module docs say.
    pub fn resolve(
        experiment: Option<String>,
        worker: Option<String>,
    ) -> Result<JobIdentity, IdentityError> {
        Ok(JobIdentity::resolve_with(experiment, worker, &Lookup::vm())?.0)
    }

    /// Builds the identity from flags, the environment and `lookup`; returns where the worker
    /// name came from too.
    pub fn resolve_with(
        experiment: Option<String>,
        worker: Option<String>,
        lookup: &Lookup,
    ) -> Result<(JobIdentity, WorkerSource), IdentityError> {
        let experiment = experiment.or_else(|| env("JOB_ID")).ok_or_else(|| {
            IdentityError(
                "no experiment id: --experiment-id is not given and JOB_ID is not set".into(),
            )
        })?;
        check("experiment id", &experiment)?;
        let worker = resolve_worker(worker, &env, lookup)?;
        Ok((
            JobIdentity {
                experiment,
                worker: worker.name,
            },
            worker.source,
        ))
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

fn check(what: &str, value: &str) -> Result<(), IdentityError> {
    if value.is_empty() || value.contains('/') || value == "." || value == ".." {
        return Err(IdentityError(format!(
            "{what} `{value}` must be non-empty and contain no `/`"
        )));
    }
    Ok(())
}

/// The worker name: `flag` when given, else from `env` and `lookup` as the module docs say.
pub fn resolve_worker(
    flag: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
    lookup: &Lookup,
) -> Result<Worker, IdentityError> {
    if let Some(name) = flag {
        check("worker", &name)?;
        if name.chars().count() > MAX_WORKER_CHARS {
            return Err(IdentityError(format!(
                "worker `{name}` is longer than {MAX_WORKER_CHARS} characters (the width of the \
                 metastore's worker_index): give a shorter --worker"
            )));
        }
        return Ok(Worker {
            name,
            source: WorkerSource::Flag,
        });
    }
    if let Some(w) = from_environment(env) {
        return Ok(w);
    }
    if let Some(path) = &lookup.published {
        let deadline = Instant::now() + lookup.wait;
        let mut waiting = false;
        loop {
            if let Some(name) = read_published(path) {
                return Ok(Worker {
                    name,
                    source: WorkerSource::Published,
                });
            }
            if Instant::now() >= deadline {
                break;
            }
            if !waiting {
                tracing::info!(file = %path.display(), wait_s = lookup.wait.as_secs_f64(),
                    "no worker name in the environment; waiting for periscope exec to publish one");
                waiting = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(match lookup.fallback {
        Fallback::Worker0 => Worker {
            name: "worker-0".into(),
            source: WorkerSource::Default,
        },
        Fallback::Hostname => match hostname() {
            Some(h) => Worker {
                name: fit(&h),
                source: WorkerSource::Hostname,
            },
            None => Worker {
                name: "worker-0".into(),
                source: WorkerSource::Default,
            },
        },
    })
}

/// The name the environment gives (sources 2 to 4 of the module docs), if any.
pub fn from_environment(env: &dyn Fn(&str) -> Option<String>) -> Option<Worker> {
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
    let found = |name: String, source| {
        Some(Worker {
            name: fit(&name),
            source,
        })
    };
    if let Some(w) = env("TF_CONFIG").and_then(|j| task(&j, "type")) {
        return found(w, WorkerSource::TfConfig);
    }
    if let Some(w) = env("CLUSTER_SPEC").and_then(|j| task(&j, "job_name")) {
        return found(w, WorkerSource::ClusterSpec);
    }
    match env("RANK").as_deref().map(str::trim) {
        Some("0") => return found("master-0".into(), WorkerSource::Rank),
        Some(r) if r.parse::<u64>().is_ok() => {
            return found(format!("worker-{r}"), WorkerSource::Rank)
        }
        _ => {}
    }
    if let Some(i) = env("JOB_COMPLETION_INDEX").filter(|i| i.trim().parse::<u64>().is_ok()) {
        return found(
            format!("worker-{}", i.trim()),
            WorkerSource::CompletionIndex,
        );
    }
    let kind = env("PERISCOPE_REPLICA_TYPE");
    let index = env("PERISCOPE_REPLICA_INDEX").filter(|i| i.trim().parse::<u64>().is_ok());
    if let (Some(kind), Some(index)) = (kind, index) {
        let name = format!("{}-{}", kind.trim().to_lowercase(), index.trim());
        return found(name, WorkerSource::ReplicaLabels);
    }
    None
}

/// A derived name made safe for a storage path and a metastore column: characters other than
/// letters, digits, `.`, `_` and `-` become `-`; a name longer than [`MAX_WORKER_CHARS`] keeps
/// its first 23 characters and gets 8 hex digits of the whole name's SHA-256, so two long names
/// that share a start stay apart.
pub fn fit(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    let clean = match clean.as_str() {
        "" | "." | ".." => "worker".to_string(),
        _ => clean,
    };
    if clean.chars().count() <= MAX_WORKER_CHARS {
        return clean;
    }
    let digest = sha2::Sha256::digest(name.as_bytes());
    let start: String = clean.chars().take(MAX_WORKER_CHARS - 9).collect();
    format!("{start}-{}", &hex::encode(digest)[..8])
}

/// This machine's (a pod's) hostname.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// Writes the worker name `periscope exec` derived into `dir` (its capture folder, shared with
/// the sidecar), atomically, so the sidecar can use it when its own environment names none.
pub fn publish(dir: &Path, worker: &Worker) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // A `Worker` is plain strings: serialising it cannot fail.
    let json = serde_json::to_vec(worker).unwrap_or_default();
    crate::fsutil::write_atomic(&dir.join(PUBLISHED_WORKER_FILE), &json)
}

/// The name in a published file, when it is there and valid.
fn read_published(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let worker: Worker = serde_json::from_slice(&bytes).ok()?;
    let valid =
        check("worker", &worker.name).is_ok() && worker.name.chars().count() <= MAX_WORKER_CHARS;
    if !valid {
        tracing::warn!(file = %path.display(), "ignoring an invalid published worker name");
    }
    valid.then_some(worker.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Option<(String, WorkerSource)> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        from_environment(&env).map(|w| (w.name, w.source))
    }

    #[test]
    fn worker_names_follow_the_submarine_sdk_first() {
        let tf = r#"{"cluster":{},"task":{"type":"ps","index":1}}"#;
        let cs = r#"{"task":{"job_name":"chief","index":0}}"#;
        let name = |v: &[(&str, &str)]| from(v).map(|(n, _)| n);
        assert_eq!(
            name(&[
                ("TF_CONFIG", tf),
                ("RANK", "3"),
                ("JOB_COMPLETION_INDEX", "5")
            ])
            .unwrap(),
            "ps-1"
        );
        assert_eq!(
            name(&[("CLUSTER_SPEC", cs), ("RANK", "3")]).unwrap(),
            "chief-0"
        );
        assert_eq!(name(&[("RANK", "0")]).unwrap(), "master-0");
        assert_eq!(name(&[("RANK", "2")]).unwrap(), "worker-2");
        assert_eq!(from(&[("TF_CONFIG", "not json")]), None);
    }

    #[test]
    fn a_sidecar_finds_its_index_or_its_replica_labels() {
        assert_eq!(
            from(&[
                ("JOB_COMPLETION_INDEX", "7"),
                ("PERISCOPE_REPLICA_INDEX", "1")
            ]),
            Some(("worker-7".into(), WorkerSource::CompletionIndex))
        );
        assert_eq!(
            from(&[
                ("PERISCOPE_REPLICA_TYPE", "Worker"),
                ("PERISCOPE_REPLICA_INDEX", "1")
            ]),
            Some(("worker-1".into(), WorkerSource::ReplicaLabels))
        );
        // An index that is not a number names nothing.
        assert_eq!(from(&[("JOB_COMPLETION_INDEX", "x")]), None);
        assert_eq!(from(&[("PERISCOPE_REPLICA_TYPE", "worker")]), None);
    }

    #[test]
    fn long_or_odd_names_are_fitted_apart() {
        let a = "training-job-with-a-long-name-0-abcde";
        let b = "training-job-with-a-long-name-1-abcde";
        let (fa, fb) = (fit(a), fit(b));
        assert_eq!(fa.chars().count(), MAX_WORKER_CHARS);
        assert_ne!(fa, fb);
        assert!(fa.starts_with("training-job-with-a-lon"));
        assert_eq!(fit("pod-0"), "pod-0");
        assert_eq!(fit("a b/c"), "a-b-c");
    }

    #[test]
    fn a_long_flag_is_refused_and_a_published_name_is_used_before_the_fallback() {
        let none = |_: &str| None;
        let long = Some("x".repeat(MAX_WORKER_CHARS + 1));
        assert!(resolve_worker(long, &none, &Lookup::vm()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let lookup = Lookup {
            published: Some(dir.path().join(PUBLISHED_WORKER_FILE)),
            wait: Duration::ZERO,
            fallback: Fallback::Worker0,
        };
        let w = resolve_worker(None, &none, &lookup).unwrap();
        assert_eq!(w.source, WorkerSource::Default);
        let published = Worker {
            name: "worker-3".into(),
            source: WorkerSource::Rank,
        };
        publish(dir.path(), &published).unwrap();
        let w = resolve_worker(None, &none, &lookup).unwrap();
        assert_eq!(
            (w.name.as_str(), w.source),
            ("worker-3", WorkerSource::Published)
        );
        let host = Lookup {
            published: None,
            wait: Duration::ZERO,
            fallback: Fallback::Hostname,
        };
        let w = resolve_worker(None, &none, &host).unwrap();
        assert_eq!(w.name, fit(&hostname().unwrap()));
    }
}
