//! The holder's lease on a worker's folder: renewed while the sidecar runs, marked with how the
//! job ended when it finishes, and watched for a successor.
//!
//! The holder rewrites `lease.json` ([`LeaseBody`]) every third of its lapse time with a new
//! `beat`. A newcomer never compares clocks: it reads the lease, and judges the holder running
//! if the beat changes while it watches, gone if it does not change for the holder's own
//! `lapses_after_s`. Before each renewal the holder looks for the next attempt's claim: finding
//! one (it was cut off from storage for longer than its lapse time, and was taken over), it
//! stops the sidecar's loops and ends with [`ClaimError::TakenOver`]. From the claim on, while
//! the state folder has had no room for the claim's token, the lease tries to write it every
//! [`KEEP_PAUSE`], and once more at the end ([`Token::keep`]).

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::error::ClaimError;
use super::gate::ClaimGate;
use super::holder::{now, Holder, Token};
use super::names::{claim_key, lease_key};
use crate::storage::{Service, StorageError};

/// The pause between two tries to write a claim's token that the state folder had no room for.
const KEEP_PAUSE: Duration = Duration::from_secs(1);

/// How the holder's job ended, as its lease says once it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobEnd {
    /// The command exited 0: the worker is done.
    Succeeded,
    /// The command exited otherwise.
    Failed,
    /// The sidecar was stopped before the command ended (a pod deleted or preempted).
    Stopped,
}

/// The lease object. Invariant: `beat` differs at every renewal; `ended` is set only by the
/// holder's last write, after everything it read was stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    pub attempt: u32,
    pub pod: String,
    pub beat: String,
    /// How long the lease lasts without a renewal, in seconds.
    pub lapses_after_s: f64,
    /// When it was written (RFC 3339, UTC), for people.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<JobEnd>,
}

/// Reads the lease under `worker_prefix`; `None` when there is none, or it is unreadable.
pub async fn read(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    worker_prefix: &Path,
) -> Result<Option<LeaseBody>, StorageError> {
    let key = lease_key(worker_prefix);
    let failed = |e: &object_store::Error| StorageError::request(service, key.to_string(), e);
    match store.get(&key).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| failed(&e))?;
            Ok(serde_json::from_slice(&bytes).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(failed(&e)),
    }
}

/// The lease a sidecar keeps once its claim is made. Invariant: `lapse` is non-zero.
pub struct Lease {
    pub store: Arc<dyn ObjectStore>,
    pub service: Service,
    pub worker_prefix: Path,
    /// The worker's folder, as people see it.
    pub folder: String,
    pub pod: String,
    pub lapse: Duration,
    /// The claim's token, written to the state folder once there is room if there was none at
    /// start.
    pub token: Option<Arc<Token>>,
}

/// A task that ends when this is dropped (the lease's token keeper ends with the lease).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running lease. [`LeaseTask::finish`] ends it.
pub struct LeaseTask {
    end: oneshot::Sender<Option<JobEnd>>,
    handle: JoinHandle<Result<(), ClaimError>>,
}

impl Lease {
    /// Renews the lease from the moment `gate` opens until [`LeaseTask::finish`]; calls `lost`
    /// at once if a later attempt took the folder over.
    pub fn spawn(self, gate: ClaimGate, lost: impl FnOnce() + Send + 'static) -> LeaseTask {
        let (end, ended) = oneshot::channel();
        let handle = tokio::spawn(async move { self.keep(gate, ended, lost).await });
        LeaseTask { end, handle }
    }

    async fn keep(
        self,
        gate: ClaimGate,
        mut ended: oneshot::Receiver<Option<JobEnd>>,
        lost: impl FnOnce(),
    ) -> Result<(), ClaimError> {
        // Never claimed: there is no lease to keep or end.
        let attempt = tokio::select! {
            // A claim made before the end is released like any other.
            biased;
            n = gate.settled() => match n {
                Some(n) => n,
                None => return Ok(()),
            },
            _ = &mut ended => return Ok(()),
        };
        // Kept as soon as there is room: until then a restart of this sidecar is a newcomer.
        let _keeper = self.token.clone().map(|token| {
            AbortOnDrop(tokio::spawn(async move {
                while !token.keep() {
                    tokio::time::sleep(KEEP_PAUSE).await;
                }
            }))
        });
        let every = (self.lapse / 3).max(Duration::from_millis(100));
        let mut failing = false;
        loop {
            if let Some(by) = self.successor(attempt).await {
                lost();
                return Err(ClaimError::TakenOver {
                    folder: self.folder.clone(),
                    by: by.describe(),
                    attempt: by.attempt,
                });
            }
            match self.write(attempt, None).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(folder = %self.folder, "the worker folder's lease is renewed again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(folder = %self.folder, error = %e, lapse_s = self.lapse.as_secs_f64(),
                        "cannot renew the worker folder's lease; another attempt may take the folder over if this lasts");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                end = &mut ended => {
                    // A last try, so a restart on this state folder continues the claim.
                    if let Some(token) = &self.token {
                        token.keep();
                    }
                    if let Ok(Some(end)) = end {
                        self.release(attempt, end).await;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// The next attempt's holder, if one took the folder over. A failed look is no successor:
    /// the next renewal looks again.
    async fn successor(&self, attempt: u32) -> Option<Holder> {
        let key = claim_key(&self.worker_prefix, attempt + 1);
        let got = self.store.get(&key).await.ok()?;
        let bytes = got.bytes().await.ok()?;
        Some(Holder::parse(&bytes, attempt + 1))
    }

    async fn write(&self, attempt: u32, ended: Option<JobEnd>) -> Result<(), StorageError> {
        let body = LeaseBody {
            attempt,
            pod: self.pod.clone(),
            beat: hex::encode(rand::random::<[u8; 8]>()),
            lapses_after_s: self.lapse.as_secs_f64(),
            at: now(),
            ended,
        };
        // Plain strings and numbers: serialising cannot fail.
        let bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
        let key = lease_key(&self.worker_prefix);
        (self.store.put(&key, PutPayload::from(bytes)).await)
            .map(|_| ())
            .map_err(|e| StorageError::request(self.service, key.to_string(), &e))
    }

    /// Says how the job ended, so a replacement need not wait for the lease to lapse (or, when
    /// the job succeeded, is refused at once). Tried a few times; if it never lands, the lease
    /// lapses instead.
    async fn release(&self, attempt: u32, end: JobEnd) {
        for pause in [0u64, 200, 1000] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if self.successor(attempt).await.is_some() {
                return;
            }
            match self.write(attempt, Some(end)).await {
                Ok(()) => {
                    tracing::info!(folder = %self.folder, ended = ?end, "released the worker's folder");
                    return;
                }
                Err(e) => {
                    tracing::warn!(folder = %self.folder, error = %e, "cannot release the worker's folder")
                }
            }
        }
    }
}

impl LeaseTask {
    /// Ends the lease: with `Some(end)` the lease says the job ended so (everything was stored);
    /// with `None` it is left to lapse. Returns the take-over, if one ended it first.
    pub async fn finish(self, end: Option<JobEnd>) -> Result<(), ClaimError> {
        let _ = self.end.send(end);
        match self.handle.await {
            Ok(result) => result,
            // The task panicked: the lease lapses, as after a crash.
            Err(_) => Ok(()),
        }
    }
}
