//! The claim on a worker's folder in storage: one pod writes `<experiment>/<worker>/`, whatever
//! the source of its worker name.
//!
//! Before anything is stored, the sidecar creates `<experiment>/<worker>/claim.json` with a
//! create-only write ([`crate::storage::put_once`]). It names the pod (`POD_NAME` from the
//! downward API, else the hostname; `POD_UID` and `NODE_NAME` when set) and holds a random token
//! kept in the state folder. A later start with the same state folder (a restarted sidecar
//! container: the folder is an emptyDir of the pod, or `run --resume`) holds the same token and
//! continues. Anyone else would overwrite what the holder stored (object keys are derived from
//! positions in the files, which a new state folder counts again from 0), so it is refused.
//!
//! When storage cannot be reached at start, the job is not held up: the shipping loop retries the
//! claim ([`Claim::wait`]) and stores nothing until it is made; the files wait on disk meanwhile.
//! The metastore waits for the same claim ([`ClaimGate`], [`GatedSink`]): its rows carry the
//! same experiment and worker, so a pod refused the folder must not have written rows first.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorClass};
use crate::lifecycle::{Drain, Ending, Next, Stop};
use crate::metrics::{Item, Sink, SinkError};
use crate::storage::{Service, StorageError};

/// The claim's object in the worker's folder.
pub const CLAIM_FILE: &str = "claim.json";

/// The file in the state folder that keeps this sidecar's token across restarts.
const TOKEN_FILE: &str = "worker-claim-token";

/// Who holds a worker's folder. Invariant: `token` is what the holder's state folder keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub token: String,
    /// The pod's name (or the machine's hostname).
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the claim was made (RFC 3339, UTC).
    pub since: String,
}

impl Holder {
    /// This process's pod, with `token`.
    fn here(token: String) -> Holder {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Holder {
            token,
            pod: env("POD_NAME")
                .or_else(crate::job::hostname)
                .unwrap_or_else(|| "unknown".into()),
            pod_uid: env("POD_UID"),
            node: env("NODE_NAME"),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    /// The pod as people name it: `name` (uid …, on node …).
    fn describe(&self) -> String {
        let mut text = format!("pod `{}`", self.pod);
        if let Some(uid) = &self.pod_uid {
            text.push_str(&format!(" (uid {uid})"));
        }
        if let Some(node) = &self.node {
            text.push_str(&format!(" on node `{node}`"));
        }
        text
    }
}

/// Why a worker's folder could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot keep the claim token in `{}`: {source}", path.display())]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Another pod holds the folder.
    #[error("{folder} is held by {holder} since {since}; this sidecar ({here}) would overwrite what it stored, so it stops")]
    Held {
        folder: String,
        holder: String,
        since: String,
        here: String,
    },
}

impl Classify for ClaimError {
    fn class(&self) -> ErrorClass {
        match self {
            ClaimError::Storage(e) => e.class(),
            ClaimError::Token { .. } => ErrorClass::Io,
            ClaimError::Held { .. } => ErrorClass::Conflict,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ClaimError::Storage(e) => e.hint(),
            ClaimError::Token { .. } => Some("--state-dir must be writable".into()),
            ClaimError::Held { .. } => Some(
                "give each pod its own worker name: set --worker (PERISCOPE_WORKER), or let it \
                 come from JOB_COMPLETION_INDEX (Indexed Job), PERISCOPE_REPLICA_TYPE/INDEX (the \
                 training operator's labels) or TF_CONFIG/RANK; a restarted pod continues its \
                 folder only with its own --state-dir"
                    .into(),
            ),
        }
    }
}

/// Whether the claim was made now or found to be this state folder's already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    New,
    Continued,
}

impl ClaimError {
    /// Whether storage could not be reached (the claim is worth trying again).
    pub fn is_transient(&self) -> bool {
        matches!(self, ClaimError::Storage(e) if e.class() == ErrorClass::Network)
    }
}

/// A worker's folder to claim. Invariant: `folder` shows `worker_prefix` to people.
pub struct Claim {
    pub store: Arc<dyn ObjectStore>,
    pub service: Service,
    pub worker_prefix: object_store::path::Path,
    pub folder: String,
    pub state_dir: std::path::PathBuf,
}

/// The longest pause between two tries of a claim while storage cannot be reached.
const MOST_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

impl Claim {
    /// Claims the folder for the sidecar whose state folder is `state_dir`.
    pub async fn try_once(&self) -> Result<Claimed, ClaimError> {
        claim(
            &self.store,
            self.service,
            &self.worker_prefix,
            &self.folder,
            &self.state_dir,
        )
        .await
    }

    /// Tries until the claim is made, pausing longer each time storage cannot be reached, and
    /// following `drain`'s rules on stop requests. `Ok(None)`: claimed, the loop may store;
    /// `Ok(Some(ending))`: the drain ended first, with `unread()` bytes not stored.
    pub async fn wait(
        &self,
        drain: &mut Drain,
        stop: &mut Stop,
        unread: impl Fn() -> u64,
    ) -> Result<Option<Ending>, ClaimError> {
        let mut pause = std::time::Duration::from_secs(1);
        loop {
            match self.try_once().await {
                Ok(_) => return Ok(None),
                Err(e) if e.is_transient() => {
                    tracing::warn!(folder = %self.folder, error = %e, retry_s = pause.as_secs_f64(),
                        "cannot reach storage to claim the worker's folder; nothing is stored until it can");
                }
                Err(e) => return Err(e),
            }
            if let Next::End(ending) = drain.after_pass(false, unread()) {
                return Ok(Some(ending));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                requests = stop.next() => {
                    if let Next::End(ending) = drain.on_stop(requests, &unread) {
                        return Ok(Some(ending));
                    }
                }
            }
            pause = (pause * 2).min(MOST_PAUSE);
        }
    }
}

/// Claims `worker_prefix` (shown to people as `folder`) for the sidecar whose state folder is
/// `state_dir`.
async fn claim(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    worker_prefix: &object_store::path::Path,
    folder: &str,
    state_dir: &Path,
) -> Result<Claimed, ClaimError> {
    let token = token(state_dir)?;
    let here = Holder::here(token.clone());
    // A `Holder` is plain strings: serialising it cannot fail.
    let mine = serde_json::to_vec_pretty(&here).unwrap_or_default();
    let key = worker_prefix.clone().join(CLAIM_FILE);
    let held = crate::storage::put_once(store, service, &key, &mine).await?;
    if held.as_ref() == mine.as_slice() {
        tracing::info!(folder, pod = %here.pod, "claimed the worker's folder");
        return Ok(Claimed::New);
    }
    let holder: Holder = match serde_json::from_slice(&held) {
        Ok(h) => h,
        // Not ours, and not readable: someone else's all the same.
        Err(_) => Holder {
            token: String::new(),
            pod: "an unknown writer".into(),
            pod_uid: None,
            node: None,
            since: "an unknown time".into(),
        },
    };
    if holder.token == token {
        tracing::info!(folder, pod = %holder.pod, since = %holder.since,
            "continuing the worker's folder this state folder claimed");
        return Ok(Claimed::Continued);
    }
    Err(ClaimError::Held {
        folder: folder.to_string(),
        holder: holder.describe(),
        since: holder.since,
        here: here.describe(),
    })
}

/// The state folder's token, made the first time.
fn token(state_dir: &Path) -> Result<String, ClaimError> {
    let path = state_dir.join(TOKEN_FILE);
    let failed = |source| ClaimError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let token = hex::encode(rand::random::<[u8; 16]>());
    std::fs::create_dir_all(state_dir).map_err(failed)?;
    crate::fsutil::write_atomic(&path, token.as_bytes()).map_err(failed)?;
    Ok(token)
}

/// Whether the worker's folder is claimed yet. Invariant: once open, it stays open (a claim is
/// never given up while the sidecar runs).
#[derive(Debug, Clone, Default)]
pub struct ClaimGate(Arc<AtomicBool>);

impl ClaimGate {
    /// A gate already open: the claim was made before anything started.
    pub fn opened() -> ClaimGate {
        let gate = ClaimGate::default();
        gate.open();
        gate
    }

    /// The claim is made: writes may go ahead.
    pub fn open(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A metastore that takes writes only once the worker's folder is claimed. Until then each
/// write fails as transient, so the pipeline keeps the items in its durable queue and tries
/// again with its backoff; a sidecar refused the folder stops with them still queued, never
/// merged into the holder's rows. Invariant: `inner` sees no write before `gate` is open.
pub struct GatedSink {
    pub inner: Box<dyn Sink>,
    pub gate: ClaimGate,
    /// The worker's folder, as people see it.
    pub folder: String,
}

impl Sink for GatedSink {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn write<'a>(
        &'a mut self,
        experiment: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        if !self.gate.is_open() {
            let message = format!(
                "waiting to claim {} in storage before writing its rows",
                self.folder
            );
            return Box::pin(
                async move { Err(SinkError::transient(ErrorClass::Network, message)) },
            );
        }
        self.inner.write(experiment, items)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        self.inner.retry_after()
    }

    fn check(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.inner.check()
    }

    fn release(&mut self) -> BoxFuture<'_, ()> {
        self.inner.release()
    }
}
