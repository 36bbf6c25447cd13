//! Stores what the spool holds into Periscope's storage, and tells the metastore.
//!
//! Each committed entry goes up with the verified upload the artifacts saves use
//! ([`crate::artifacts::upload`]: the sha256 of exactly the bytes stored; a large file as a
//! multipart upload whose progress is journaled beside the entry, so a restart continues it) to
//! `<storage>/<experiment>/<worker>/mlflow/<run>/artifacts/<path>` (a logged model's files to
//! `…/mlflow/models/<model>/artifacts/<path>`). Keys depend on the artifact only, so an upload
//! made again after a crash overwrites itself: the file is stored once. Then a
//! [`RunArtifact`] item goes into the metrics queue, and only once it is queued is the entry
//! removed from the spool. Storage failures are retried with backoff for as long as the sidecar
//! runs; what is left when it stops stays in the spool for the next start.
//!
//! When the metrics pipeline has ended (the sidecar is finishing) the items cannot be queued any
//! more: [`Uploads::finish`] hands them to the caller, which queues them after the drain and then
//! lets the spool forget them ([`Late::done`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use object_store::multipart::MultipartStore;
use tokio::sync::{watch, Notify};

use super::endpoint::{IngestHandle, NotQueued, Storage};
use super::spool::{Entry, Spool};
use crate::artifacts::push::under;
use crate::artifacts::state::Unfinished;
use crate::artifacts::upload::{self, Resumable, UploadOptions};
use crate::artifacts::ArtifactsError;
use crate::metrics::model::{Item, RunArtifact};
use crate::retry::{RetryPolicy, Verdict};

/// Small files uploaded at once (each read whole into memory, at most `multipart_above` bytes).
const SMALL_AT_ONCE: usize = 4;

/// How files go up: the artifacts saves' defaults (8 MiB parts, 8 in flight). Large files go
/// one at a time beside [`SMALL_AT_ONCE`] small ones, so the memory held is bounded by
/// `part_size × (concurrency + 1) + SMALL_AT_ONCE × multipart_above` (104 MiB) whatever comes.
const OPTIONS: UploadOptions = UploadOptions {
    multipart_above: 8 << 20,
    part_size: 8 << 20,
    concurrency: 8,
    attempts: 3,
};

/// The running uploader. Invariant: `stored` holds entries that are in storage and whose item is
/// not yet queued.
pub struct Uploads {
    spool: Spool,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    stored: Arc<Mutex<BTreeMap<u64, Item>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Items of files stored after the metrics pipeline ended, for the caller to queue.
pub struct Late {
    spool: Spool,
    pub items: Vec<Item>,
    seqs: Vec<u64>,
}

impl Late {
    /// Lets the spool forget the files once their items are queued.
    pub fn done(self) {
        for seq in self.seqs {
            self.spool.done(seq);
        }
    }
}

/// What one upload needs.
#[derive(Clone)]
struct Context {
    spool: Spool,
    storage: Storage,
    parts: Option<Arc<dyn MultipartStore>>,
}

impl Uploads {
    /// Starts uploading on the current runtime; `wake` is notified when the spool gets a file.
    pub fn start(
        spool: Spool,
        storage: Storage,
        parts: Option<Arc<dyn MultipartStore>>,
        handle: IngestHandle,
        wake: Arc<Notify>,
    ) -> Uploads {
        let (stop, stopped) = watch::channel(false);
        let stored = Arc::new(Mutex::new(BTreeMap::new()));
        let ctx = Context {
            spool: spool.clone(),
            storage,
            parts,
        };
        let task = tokio::spawn(run(ctx, handle, wake.clone(), stopped, stored.clone()));
        Uploads {
            spool,
            wake,
            stop,
            stored,
            task,
        }
    }

    /// Once `job_over` resolves, waits at most `within` for the spool to empty, then stops and
    /// returns the items of stored files the pipeline could not take any more.
    pub async fn finish(
        self,
        job_over: impl std::future::Future<Output = ()>,
        within: Duration,
    ) -> Late {
        job_over.await;
        let deadline = Instant::now() + within;
        loop {
            let waiting = self
                .stored
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64;
            let (files, bytes) = self.spool.backlog();
            if files <= waiting {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    files = files - waiting,
                    bytes,
                    "artifacts not yet in storage; they stay in the state folder for the next start"
                );
                break;
            }
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let stored =
            std::mem::take(&mut *self.stored.lock().unwrap_or_else(PoisonError::into_inner));
        Late {
            spool: self.spool,
            seqs: stored.keys().copied().collect(),
            items: stored.into_values().collect(),
        }
    }
}

/// The uploader's loop: uploads ready entries, queues their items, retries failures.
async fn run(
    ctx: Context,
    handle: IngestHandle,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    stored: Arc<Mutex<BTreeMap<u64, Item>>>,
) {
    let policy = RetryPolicy::default();
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    let mut busy: HashSet<u64> = HashSet::new();
    // The large (multipart) upload in flight, if any.
    let mut large_busy: Option<u64> = None;
    let mut in_flight = FuturesUnordered::new();
    loop {
        // Items of stored files first: queued together (one fsync of the queue for all), their
        // entries go.
        let waiting: Vec<(u64, Item)> = stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(s, i)| (*s, i.clone()))
            .collect();
        let mut closed = false;
        if !waiting.is_empty() {
            let items = waiting.iter().map(|(_, i)| i.clone()).collect();
            match handle.queue(items).await {
                Ok(()) => {
                    let mut held = stored.lock().unwrap_or_else(PoisonError::into_inner);
                    for (seq, _) in &waiting {
                        held.remove(seq);
                    }
                    drop(held);
                    for (seq, _) in &waiting {
                        ctx.spool.done(*seq);
                    }
                }
                Err(NotQueued::Closed) => closed = true,
                Err(e) => tracing::debug!(?e, "artifact records wait for the metrics queue"),
            }
        }
        if retry_at.is_none_or(|t| Instant::now() >= t) {
            retry_at = None;
            let taken: HashSet<u64> = busy
                .iter()
                .copied()
                .chain(
                    stored
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .keys()
                        .copied(),
                )
                .collect();
            for (seq, entry) in ctx.spool.ready(&taken) {
                let large = entry.size > OPTIONS.multipart_above;
                let (busy_large, busy_small) = (large_busy.is_some() as usize, busy.len());
                if (large && busy_large > 0) || (!large && busy_small - busy_large >= SMALL_AT_ONCE)
                {
                    continue;
                }
                if large {
                    large_busy = Some(seq);
                }
                busy.insert(seq);
                let ctx = ctx.clone();
                in_flight.push(async move { (seq, upload_one(&ctx, seq, &entry).await) });
            }
        }
        let pause = match retry_at {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None if !stored
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
                && !closed =>
            {
                Duration::from_millis(200)
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            Some((seq, result)) = in_flight.next() => {
                busy.remove(&seq);
                if large_busy == Some(seq) {
                    large_busy = None;
                }
                match result {
                    Ok(item) => {
                        failures = 0;
                        stored.lock().unwrap_or_else(PoisonError::into_inner).insert(seq, item);
                    }
                    Err(e) => {
                        failures += 1;
                        let wait = policy.delay(failures, Verdict::Transient);
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                            "cannot store an artifact yet; it stays in the state folder");
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Uploads entry `seq` and returns its item.
async fn upload_one(ctx: &Context, seq: u64, entry: &Entry) -> Result<Item, ArtifactsError> {
    let storage = &ctx.storage;
    let target = &entry.target;
    let key = under(&storage.prefix, &target.key());
    let data = ctx.spool.data_path(seq);
    let journal_path = ctx.spool.journal_path(seq);
    let left: Option<Unfinished> = std::fs::read(&journal_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let journal_file = journal_path.clone();
    let mut journal = move |u: Option<&Unfinished>| -> Result<(), ArtifactsError> {
        let result = match u {
            // Serializing a struct of strings and numbers cannot fail.
            Some(u) => crate::fsutil::write_atomic(
                &journal_file,
                &serde_json::to_vec(u).unwrap_or_default(),
            ),
            None => match std::fs::remove_file(&journal_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        result.map_err(|error| ArtifactsError::State {
            path: journal_file.clone(),
            error,
        })
    };
    let resumable = ctx.parts.clone().map(|parts| Resumable {
        parts,
        left,
        journal: &mut journal,
    });
    let stored = upload::upload(
        &storage.store,
        storage.service,
        &data,
        &key,
        &OPTIONS,
        resumable,
    )
    .await?;
    if stored.size != entry.size {
        return Err(ArtifactsError::Integrity {
            save: key.to_string(),
            reason: format!(
                "{} bytes were received but {} read back from the spool",
                entry.size, stored.size
            ),
        });
    }
    tracing::info!(path = %target.path, bytes = stored.size, key = %key, "artifact stored");
    Ok(Item::RunArtifact(RunArtifact {
        run: target.run.clone(),
        index: target.index.clone(),
        model: target.model.clone(),
        path: target.path.clone(),
        folder: format!("{}/{}", storage.shown, target.folder()),
        size: stored.size,
        sha256: stored.sha256,
    }))
}
