//! The claim on a worker's folder in storage: one pod writes `<experiment>/<worker>/` at a time,
//! whatever the source of its worker name, and a pod that replaces one that is gone continues it.
//!
//! Before anything is stored, the sidecar claims the folder with a create-only write
//! ([`crate::storage::put_once`]) of `claim.json` ([`names`]): a [`Holder`] naming the pod
//! (`POD_NAME` from the downward API, else the hostname; `POD_UID` and `NODE_NAME` when set) and
//! a random token kept in the state folder. A later start with the same state folder (a
//! restarted sidecar container: the folder is an emptyDir of the pod, or `run --resume`) holds
//! the same token and continues. A state folder with no room for the token (full, or over quota)
//! does not hold the sidecar up: the token is kept in memory and the lease writes it once there
//! is room ([`Token`], [`lease`]); until then a restart of this sidecar is a newcomer, which
//! takes the folder over once this sidecar's lease lapses.
//!
//! A start with another state folder finds the folder held. While it runs, the holder renews a
//! [`lease`]; when it ends having stored everything, the lease says how its job ended. The
//! newcomer decides from that alone (it never compares clocks):
//!
//! * the holder's job **succeeded**: the worker is done; refused ([`ClaimError::Finished`]);
//! * the holder ended with its job **failed or stopped** (a pod preempted or deleted), or its
//!   lease **lapsed** (not renewed for the holder's `--claim-lease` while the newcomer watched: a
//!   pod SIGKILLed, a node lost): the newcomer **takes the folder over** as the next attempt,
//!   with a create-only `claim-<n>.json` (two newcomers: one wins, the other is refused);
//! * the lease is **renewed** while the newcomer watches: two pods run under one worker name
//!   (a misconfigured job); refused ([`ClaimError::Held`]) with a hint to set `--worker`.
//!
//! Refusals exit with a distinct code; nothing of the refused pod is stored. An attempt that takes
//! over stores its logs as new generations of each path (after the ones stored before, see
//! [`crate::ship::LogShipper::continue_stored`]), so the earlier attempt's bytes are never
//! overwritten; event files have names of their own; saves are numbered by claims of their own.
//!
//! When storage cannot be reached at start, or the holder's lease is being watched, the job is not
//! held up: the shipping loop goes on trying ([`Claim::wait`]) and stores nothing until the claim
//! is made; the files wait on disk meanwhile. The metastore and the saves wait for the same claim
//! ([`ClaimGate`], [`GatedSink`]): their rows carry the same experiment and worker, so a pod
//! refused the folder must not have written rows first.

mod error;
mod gate;
mod holder;
pub mod lease;
pub mod names;

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::lifecycle::{wait_to_retry, Drain, Ending, Stop};
use crate::storage::{Service, StorageError};

pub use self::error::ClaimError;
pub use self::gate::{ClaimGate, GatedSink};
pub use self::holder::{pod_name, Holder, Token};
pub use self::lease::{JobEnd, Lease, LeaseTask};
pub use self::names::CLAIM_FILE;

/// How this sidecar came to hold the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// The first claim on the folder.
    New,
    /// This state folder's claim, from an earlier start.
    Continued,
    /// Taken over from the holder named (its job failed or stopped, or its lease lapsed).
    TakenOver { from: String },
}

/// The claim this sidecar holds. Invariant: `attempt >= 1` is the number in its claim's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub attempt: u32,
    pub how: How,
}

/// A worker's folder to claim. Invariant: `folder` shows `worker_prefix` to people; `watched`
/// is what was last seen of the holder's lease, and when it was first seen so.
pub struct Claim {
    pub store: Arc<dyn ObjectStore>,
    pub service: Service,
    pub worker_prefix: Path,
    pub folder: String,
    pub state_dir: std::path::PathBuf,
    /// How long a holder without a lease of its own (it never renewed one) is given.
    pub lapse: Duration,
    watched: std::sync::Mutex<Option<Watched>>,
    /// The state folder's token, once the first look made or read it.
    token: std::sync::OnceLock<Arc<Token>>,
}

/// The holder's lease as a newcomer last saw it. Invariant: `since` is when this `beat` of
/// attempt `attempt` was first seen.
#[derive(Debug, Clone)]
struct Watched {
    attempt: u32,
    beat: Option<String>,
    since: Instant,
}

/// The longest pause between two tries of a claim while storage cannot be reached.
const MOST_PAUSE: Duration = Duration::from_secs(30);

/// The pause between two looks at a holder's lease while it is watched.
pub const WATCH_PAUSE: Duration = Duration::from_secs(1);

impl Claim {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        service: Service,
        worker_prefix: Path,
        folder: String,
        state_dir: std::path::PathBuf,
        lapse: Duration,
    ) -> Claim {
        Claim {
            store,
            service,
            worker_prefix,
            folder,
            state_dir,
            lapse,
            watched: Default::default(),
            token: Default::default(),
        }
    }

    /// The state folder's token, once a look at the claim made or read it: the lease keeps
    /// trying to write it while the folder has no room ([`Token::keep`]).
    pub fn token(&self) -> Option<Arc<Token>> {
        self.token.get().cloned()
    }

    /// The token, read or made at the first look and the same at every later one (whether or
    /// not the state folder could keep it), so a claim made with it is recognised again.
    fn look_token(&self) -> Result<String, ClaimError> {
        if let Some(token) = self.token.get() {
            return Ok(token.value.clone());
        }
        let loaded = Arc::new(Token::load(&self.state_dir)?);
        Ok(self.token.get_or_init(|| loaded).value.clone())
    }

    /// Claims the folder for the sidecar whose state folder is `state_dir`, as far as one look
    /// can decide ([`ClaimError::Waiting`]: look again).
    pub async fn try_once(&self) -> Result<Claimed, ClaimError> {
        let token = self.look_token()?;
        // Two newcomers racing for one attempt: the loser looks again, and finds the winner.
        for _ in 0..3 {
            let Some((attempt, holder)) = self.latest().await? else {
                let here = Holder::here(token.clone(), 1);
                if let Some(claimed) = self.create(&here, How::New).await? {
                    return Ok(claimed);
                }
                continue;
            };
            if holder.token == token {
                tracing::info!(folder = %self.folder, pod = %holder.pod, since = %holder.since, attempt,
                    "continuing the worker's folder this state folder claimed");
                return Ok(Claimed {
                    attempt,
                    how: How::Continued,
                });
            }
            self.judge(attempt, &holder).await?;
            let here = Holder::here(token.clone(), attempt + 1);
            let how = How::TakenOver {
                from: holder.describe(),
            };
            if let Some(claimed) = self.create(&here, how).await? {
                return Ok(claimed);
            }
        }
        // Only reached if claims keep appearing under our feet: someone else is taking over.
        let (_, holder) = (self.latest().await?).unwrap_or((1, Holder::unknown(1)));
        Err(self.held(&holder))
    }

    /// Tries until the claim is made, pausing longer each time storage cannot be reached, and
    /// following `drain`'s rules on stop requests. `Ok(Ok(claimed))`: claimed, the loop may
    /// store; `Ok(Err(ending))`: the drain ended first, with `unread()` bytes not stored.
    pub async fn wait(
        &self,
        drain: &mut Drain,
        stop: &mut Stop,
        unread: impl Fn() -> u64,
    ) -> Result<Result<Claimed, Ending>, ClaimError> {
        let mut pause = Duration::from_secs(1);
        let mut said_waiting = false;
        loop {
            let this_pause = match self.try_once().await {
                Ok(claimed) => return Ok(Ok(claimed)),
                Err(e @ ClaimError::Waiting { .. }) => {
                    if !said_waiting {
                        said_waiting = true;
                        tracing::info!(folder = %self.folder, "{e}; nothing is stored meanwhile");
                    }
                    WATCH_PAUSE
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(folder = %self.folder, error = %e, retry_s = pause.as_secs_f64(),
                        "cannot reach storage to claim the worker's folder; nothing is stored until it can");
                    let this = pause;
                    pause = (pause * 2).min(MOST_PAUSE);
                    this
                }
                Err(e) => return Err(e),
            };
            if let Some(ending) = wait_to_retry(drain, stop, this_pause, &unread).await {
                return Ok(Err(ending));
            }
        }
    }

    /// The highest attempt's claim, if the folder has any.
    async fn latest(&self) -> Result<Option<(u32, Holder)>, ClaimError> {
        let failed =
            |e: &object_store::Error| StorageError::request(self.service, self.folder.clone(), e);
        let listed = match self
            .store
            .list_with_delimiter(Some(&self.worker_prefix))
            .await
        {
            Ok(listed) => listed.objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(failed(&e).into()),
        };
        let attempt = (listed.iter())
            .filter_map(|o| o.location.filename().and_then(names::attempt_of))
            .max();
        let Some(attempt) = attempt else {
            return Ok(None);
        };
        let key = names::claim_key(&self.worker_prefix, attempt);
        let got = self.store.get(&key).await.map_err(|e| failed(&e))?;
        let bytes = got.bytes().await.map_err(|e| failed(&e))?;
        Ok(Some((attempt, Holder::parse(&bytes, attempt))))
    }

    /// Writes `here`'s claim, create-only; `None` when another claim took its place first.
    async fn create(&self, here: &Holder, how: How) -> Result<Option<Claimed>, ClaimError> {
        let key = names::claim_key(&self.worker_prefix, here.attempt);
        let mine = here.to_bytes();
        let held = crate::storage::put_once(&self.store, self.service, &key, &mine).await?;
        if held.as_ref() != mine.as_slice() {
            return Ok(None);
        }
        match &how {
            How::TakenOver { from } => {
                tracing::info!(folder = %self.folder, pod = %here.pod, attempt = here.attempt, from = %from,
                "took the worker's folder over; this attempt's logs are stored as new generations beside the earlier ones")
            }
            _ => {
                tracing::info!(folder = %self.folder, pod = %here.pod, "claimed the worker's folder")
            }
        }
        Ok(Some(Claimed {
            attempt: here.attempt,
            how,
        }))
    }

    /// Whether `holder` (attempt `attempt`) may be taken over now: `Ok` when its job failed or
    /// stopped, or its lease lapsed while watched; else why not.
    async fn judge(&self, attempt: u32, holder: &Holder) -> Result<(), ClaimError> {
        let lease = lease::read(&self.store, self.service, &self.worker_prefix).await?;
        // A lease of an earlier attempt says nothing of this holder: it never renewed one.
        let lease = lease.filter(|l| l.attempt == attempt);
        match lease.as_ref().and_then(|l| l.ended) {
            Some(JobEnd::Succeeded) => {
                return Err(ClaimError::Finished {
                    folder: self.folder.clone(),
                    holder: holder.describe(),
                    since: holder.since.clone(),
                    here: holder::describe_here(),
                });
            }
            Some(JobEnd::Failed | JobEnd::Stopped) => return Ok(()),
            None => {}
        }
        let lapse = (lease.as_ref())
            .map(|l| Duration::from_secs_f64(l.lapses_after_s.clamp(0.1, 86_400.0)))
            .unwrap_or(self.lapse);
        let beat = lease.map(|l| l.beat);
        // A poisoned lock only means another look panicked; what it saw is still usable.
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        match watched.as_ref() {
            Some(w) if w.attempt == attempt && w.beat != beat => Err(self.held(holder)),
            Some(w) if w.attempt == attempt && w.since.elapsed() >= lapse => {
                tracing::info!(folder = %self.folder, holder = %holder.describe(), lapse_s = lapse.as_secs_f64(),
                    "the holder's lease lapsed");
                Ok(())
            }
            Some(w) if w.attempt == attempt => Err(self.waiting(holder, lapse)),
            _ => {
                *watched = Some(Watched {
                    attempt,
                    beat,
                    since: Instant::now(),
                });
                Err(self.waiting(holder, lapse))
            }
        }
    }

    fn held(&self, holder: &Holder) -> ClaimError {
        ClaimError::Held {
            folder: self.folder.clone(),
            holder: holder.describe(),
            since: holder.since.clone(),
            here: holder::describe_here(),
        }
    }

    fn waiting(&self, holder: &Holder, lapse: Duration) -> ClaimError {
        ClaimError::Waiting {
            folder: self.folder.clone(),
            holder: holder.describe(),
            lapse_s: lapse.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn claim(store: &Arc<dyn ObjectStore>, state: &std::path::Path) -> Claim {
        Claim::new(
            store.clone(),
            Service::Local,
            Path::from("runs/exp/worker-0"),
            "worker-0".into(),
            state.to_path_buf(),
            Duration::from_millis(300),
        )
    }

    fn lease(store: &Arc<dyn ObjectStore>) -> Lease {
        Lease {
            store: store.clone(),
            service: Service::Local,
            worker_prefix: Path::from("runs/exp/worker-0"),
            folder: "worker-0".into(),
            pod: "a".into(),
            lapse: Duration::from_millis(300),
            token: None,
        }
    }

    #[tokio::test]
    async fn a_newcomer_is_refused_while_the_lease_is_renewed_and_takes_over_once_it_lapses() {
        let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let first = claim(&store, dirs[0].path()).try_once().await.unwrap();
        assert_eq!((first.attempt, first.how), (1, How::New));
        let again = claim(&store, dirs[0].path()).try_once().await.unwrap();
        assert_eq!(again.how, How::Continued);

        // The holder renews its lease: a newcomer watches, sees it renewed, and is refused.
        let held = lease(&store).spawn(ClaimGate::opened(1), || {});
        let newcomer = claim(&store, dirs[1].path());
        let seen = newcomer.try_once().await.unwrap_err();
        assert!(matches!(seen, ClaimError::Waiting { .. }), "{seen}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let refused = newcomer.try_once().await.unwrap_err();
        assert!(matches!(refused, ClaimError::Held { .. }), "{refused}");

        // The holder is gone without a word: its lease lapses, and the next newcomer takes over.
        drop(held);
        let later = claim(&store, dirs[2].path());
        assert!(matches!(
            later.try_once().await,
            Err(ClaimError::Waiting { .. })
        ));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let taken = later.try_once().await.unwrap();
        assert_eq!(taken.attempt, 2);
        assert!(matches!(taken.how, How::TakenOver { .. }));
        // The first holder's state folder is now a newcomer to attempt 2's folder.
        let back = claim(&store, dirs[0].path()).try_once().await.unwrap_err();
        assert!(matches!(back, ClaimError::Waiting { .. }), "{back}");
    }

    #[tokio::test]
    async fn how_the_holders_job_ended_decides_at_once() {
        for (end, taken) in [
            (JobEnd::Failed, true),
            (JobEnd::Stopped, true),
            (JobEnd::Succeeded, false),
        ] {
            let dirs = [(); 2].map(|_| tempfile::tempdir().unwrap());
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            claim(&store, dirs[0].path()).try_once().await.unwrap();
            let task = lease(&store).spawn(ClaimGate::opened(1), || {});
            task.finish(Some(end)).await.unwrap();
            let next = claim(&store, dirs[1].path()).try_once().await;
            match taken {
                true => assert_eq!(next.unwrap().attempt, 2, "{end:?}"),
                false => assert!(matches!(next, Err(ClaimError::Finished { .. })), "{end:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_holder_that_was_taken_over_learns_it_at_its_next_renewal() {
        let dirs = [(); 2].map(|_| tempfile::tempdir().unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        claim(&store, dirs[0].path()).try_once().await.unwrap();
        // Someone took attempt 2 while this holder could not renew.
        let other = Holder::here("other".into(), 2);
        let key = names::claim_key(&Path::from("runs/exp/worker-0"), 2);
        store.put(&key, other.to_bytes().into()).await.unwrap();
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost.clone();
        let task = lease(&store).spawn(ClaimGate::opened(1), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(lost.load(std::sync::atomic::Ordering::SeqCst));
        let ended = task.finish(Some(JobEnd::Succeeded)).await.unwrap_err();
        assert!(
            matches!(ended, ClaimError::TakenOver { attempt: 2, .. }),
            "{ended}"
        );
    }
}
