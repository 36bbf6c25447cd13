//! Saves of the artifacts folders while the job runs and once it is over: the one loop behind
//! `--artifacts-every`, `--artifacts-marker`, `--keep-saves` and `--final-save-timeout`, for
//! `sidecar`, `exec` and `run` alike.
//!
//! While the job runs, a save is taken every `every` (counted from the start of the previous
//! one), when the marker file appears (it is removed once a save that began after it appeared is
//! complete, so a script can wait for it), and at once when an earlier start left a save
//! unfinished (it is continued); a folder that holds no file yet is left out of these. A save
//! whose file changed or vanished while it was read is taken again at once, up to [`RETAKES`]
//! times; any other failure waits for the next tick (a marker is tried again after
//! [`RETRY_PAUSE`]). Once the job is over, a save that is under way
//! is not waited for: the final save continues it.
//!
//! The final save must end by its deadline: `final_timeout` after the first stop signal
//! ([`SignalClock`]), since that is when the pod's grace period began. Without a signal (the
//! command ended on its own) it has no deadline. A save cut by its deadline is left as the push
//! state says it is, so the next start (of any command with the same state folder) continues it
//! without sending again what was stored. This module never prints.

use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::push::PushOutcome;
use super::target::{PushTuning, Target};
use super::ArtifactsError;

/// Takes of one save in a row while files change or vanish under it.
pub const RETAKES: u32 = 3;

/// The least time between a failed save and the next try on the marker's behalf.
pub const RETRY_PAUSE: Duration = Duration::from_secs(10);

/// The final save's default time after the first stop signal: inside Kubernetes' default
/// `terminationGracePeriodSeconds` of 30, leaving 10 s for the command to stop and logs to drain.
pub const DEFAULT_FINAL_TIMEOUT: Duration = Duration::from_secs(20);

/// When saves are taken, and how many are kept. Invariant: durations are non-zero.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// A save this often while the job runs.
    pub every: Option<Duration>,
    /// A save when this file appears; it is removed once the save is complete.
    pub marker: Option<PathBuf>,
    /// Complete saves kept; older ones are deleted after each new save.
    pub keep: Option<NonZeroUsize>,
    /// How long after the first stop signal the final save may run.
    pub final_timeout: Duration,
    /// How often the marker is looked for.
    pub poll: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            every: None,
            marker: None,
            keep: None,
            final_timeout: DEFAULT_FINAL_TIMEOUT,
            poll: Duration::from_secs(1),
        }
    }
}

/// A save that did not finish by its deadline. Invariant: `save` is the unfinished save the push
/// state names for `dir` (the next push continues it), when the push had claimed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub dir: PathBuf,
    pub save: Option<u64>,
    /// Files of it stored whole so far.
    pub stored: usize,
    /// How long after the first stop signal it was cut.
    pub after: Duration,
}

/// What the saves of one job did.
#[derive(Debug, Default)]
pub struct SavesReport {
    /// New saves taken while the job ran (unchanged content makes none).
    pub during: Vec<(PathBuf, PushOutcome)>,
    /// The final save of each folder, once the job was over (empty when cut).
    pub last: Vec<(PathBuf, PushOutcome)>,
    /// Saves deleted by `keep`, ascending.
    pub pruned: Vec<u64>,
    /// Saves taken on the marker's behalf.
    pub marked: u32,
    /// Saves that failed while the job ran (each taken again later), and the last reason.
    pub failed: u32,
    pub last_error: Option<String>,
    /// The final save, when its deadline cut it.
    pub cut: Option<Cut>,
}

impl SavesReport {
    /// Every new save stored, in order (those while the job ran, then the final ones).
    pub fn stored(&self) -> impl Iterator<Item = &(PathBuf, PushOutcome)> {
        (self.during.iter())
            .chain(self.last.iter())
            .filter(|(_, o)| !o.unchanged && !self.pruned.contains(&o.save))
    }
}

/// When the first stop signal (SIGTERM, SIGINT, SIGHUP) reached this process. Invariant: set
/// once, never moved. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SignalClock(watch::Receiver<Option<Instant>>);

impl SignalClock {
    /// Starts watching the signals on the current runtime (beside any other handler of them).
    pub fn start() -> std::io::Result<SignalClock> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            tokio::select! {
                Some(()) = term.recv() => {}
                Some(()) = int.recv() => {}
                Some(()) = hup.recv() => {}
                else => return,
            }
            tx.send_replace(Some(Instant::now()));
            // Kept until the receivers are gone, so the time stays readable.
            tx.closed().await;
        });
        Ok(SignalClock(rx))
    }

    /// A clock whose signal never comes (its sender is gone: [`SignalClock::deadline`] waits
    /// forever).
    pub fn never() -> SignalClock {
        SignalClock(watch::channel(None).1)
    }

    /// The moment of the first signal, if one came.
    pub fn first(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// Waits until `timeout` after the first signal.
    pub async fn deadline(mut self, timeout: Duration) {
        let first = match self.0.wait_for(Option::is_some).await {
            Ok(t) => t.unwrap_or_else(Instant::now),
            // The watcher is gone (its runtime ended): no signal will come.
            Err(_) => return std::future::pending().await,
        };
        tokio::time::sleep_until(first + timeout).await;
    }
}

/// A [`Saver`] running on its thread. Invariant: the thread ends once the final save ended.
pub struct SaverTask(std::thread::JoinHandle<Result<SavesReport, ArtifactsError>>);

impl SaverTask {
    /// Waits for the final save (off the async threads).
    pub async fn join(self) -> Result<SavesReport, ArtifactsError> {
        let thread = self.0;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(report)) => report,
            _ => Err(ArtifactsError::Task("the saves thread panicked".into())),
        }
    }
}

/// Why a save is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Every,
    Marker,
}

/// The saves of a set of folders to one worker's storage. Invariant: `dirs` is not empty.
pub struct Saver {
    pub target: Target,
    pub dirs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub tuning: PushTuning,
    pub schedule: Schedule,
}

impl Saver {
    /// Saves while `over` is pending, then the final save within its deadline on `clock`, as the
    /// module docs say; nothing at all until `claimed` resolves (`true`: the worker's folder is
    /// this process's to write, also if the job ended meanwhile; `false`: it never will be, and
    /// nothing is saved). Fails only when the final save fails.
    pub async fn run(
        self,
        claimed: impl Future<Output = bool>,
        over: impl Future<Output = ()>,
        clock: SignalClock,
    ) -> Result<SavesReport, ArtifactsError> {
        let mut report = SavesReport::default();
        let mut over = std::pin::pin!(over);
        if !claimed.await {
            tracing::warn!("no save taken: the worker's folder in storage was never claimed");
            return Ok(report);
        }
        let left = self
            .dirs
            .iter()
            .any(|d| self.target.unfinished(d, &self.state_dir).is_some());
        let mut next = match left {
            true => Some(Instant::now()),
            false => self.schedule.every.map(|e| Instant::now() + e),
        };
        let mut retry_at = None;
        loop {
            let why = tokio::select! {
                () = &mut over => break,
                why = self.due(next, retry_at) => why,
            };
            let marked = why == Why::Marker || self.marker_present();
            let started = Instant::now();
            let written = self.written_to();
            let saved = tokio::select! {
                () = &mut over => break,
                saved = self.save(&mut report, Some(&written)) => saved,
            };
            next = self.schedule.every.map(|e| started + e);
            match saved {
                Ok(()) => {
                    retry_at = None;
                    if marked {
                        report.marked += 1;
                        self.remove_marker();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a save while the job runs failed; it is taken again later");
                    report.failed += 1;
                    report.last_error = Some(e.to_string());
                    retry_at = Some(Instant::now() + RETRY_PAUSE);
                }
            }
        }
        let marked = self.marker_present();
        let before = report.during.len();
        let deadline = clock.clone().deadline(self.schedule.final_timeout);
        tokio::select! {
            saved = self.save(&mut report, None) => saved?,
            () = deadline => {
                report.cut = Some(self.cut(&clock));
                return Ok(report);
            }
        }
        // `save` put the final outcomes with the others: they are the last save of each folder.
        report.last = report.during.split_off(before);
        if marked {
            self.remove_marker();
        }
        Ok(report)
    }

    /// Runs [`Saver::run`] on a thread of its own with a single-threaded runtime: hashing and
    /// uploading a large checkpoint never delays the loops of the runtime that started it.
    pub fn spawn(
        self,
        claimed: impl Future<Output = bool> + Send + 'static,
        over: impl Future<Output = ()> + Send + 'static,
        clock: SignalClock,
    ) -> std::io::Result<SaverTask> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("periscope-saves".into())
            .spawn(move || runtime.block_on(self.run(claimed, over, clock)))?;
        Ok(SaverTask(thread))
    }

    /// Waits until a save is due: at `next`, or once the marker is there (not before `retry_at`).
    async fn due(&self, next: Option<Instant>, retry_at: Option<Instant>) -> Why {
        let tick = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let marker = async {
            loop {
                if retry_at.is_none_or(|at| Instant::now() >= at) && self.marker_present() {
                    return;
                }
                tokio::time::sleep(self.schedule.poll).await;
            }
        };
        tokio::select! {
            () = tick => Why::Every,
            () = marker => Why::Marker,
        }
    }

    fn marker_present(&self) -> bool {
        self.schedule.marker.as_ref().is_some_and(|m| m.exists())
    }

    fn remove_marker(&self) {
        if let Some(marker) = &self.schedule.marker {
            match std::fs::remove_file(marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(marker = %marker.display(), error = %e, "cannot remove the marker file");
                }
                _ => {}
            }
        }
    }

    /// The folders that hold at least one file: while the job runs, a folder it has not written
    /// to yet is not saved, so a job started without a restore never makes an empty save the
    /// latest one (which a later restore would bring back instead of the last checkpoint).
    fn written_to(&self) -> Vec<PathBuf> {
        fn has_file(dir: &std::path::Path) -> bool {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return false;
            };
            entries.flatten().any(|e| match e.file_type() {
                Ok(t) if t.is_dir() => has_file(&e.path()),
                Ok(_) => true,
                Err(_) => false,
            })
        }
        self.dirs.iter().filter(|d| has_file(d)).cloned().collect()
    }

    /// One save of `dirs` (every folder when `None`: the final save), taken again while files
    /// change or vanish under it; then the older saves are pruned, after a new save or the final
    /// one (a save the job's end cut short may have stored its manifest and not pruned yet). New
    /// saves go into `report.during`.
    async fn save(
        &self,
        report: &mut SavesReport,
        dirs: Option<&[PathBuf]>,
    ) -> Result<(), ArtifactsError> {
        let last = dirs.is_none();
        let dirs = dirs.unwrap_or(&self.dirs);
        let mut take = 1;
        let outcomes = loop {
            match (self.target)
                .push_all(dirs, &self.state_dir, self.tuning)
                .await
            {
                Ok(outcomes) => break outcomes,
                Err(e) if take < RETAKES && retakeable(&e) => {
                    tracing::info!(error = %e, take, "a file changed or vanished during the save; taking it again");
                    take += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let new = outcomes.iter().any(|(_, o)| !o.unchanged);
        report.during.extend(outcomes);
        if let (true, Some(keep)) = (new || last, self.schedule.keep) {
            match self.target.prune(keep).await {
                Ok(pruned) => report.pruned.extend(pruned),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune older saves; trying after the next save")
                }
            }
        }
        Ok(())
    }

    /// What the push state says is left of the save that the deadline cut.
    fn cut(&self, clock: &SignalClock) -> Cut {
        let after = clock.first().map(|t| t.elapsed()).unwrap_or_default();
        let left =
            (self.dirs.iter()).find_map(|d| Some((d, self.target.unfinished(d, &self.state_dir)?)));
        match left {
            Some((dir, (save, stored))) => Cut {
                dir: dir.clone(),
                save: Some(save),
                stored,
                after,
            },
            None => Cut {
                dir: self.dirs.first().cloned().unwrap_or_default(),
                save: None,
                stored: 0,
                after,
            },
        }
    }
}

/// Whether a failed save is worth taking again at once: a file changed during every read, or
/// vanished between the walk and its read (a checkpoint replaced by its successor).
fn retakeable(e: &ArtifactsError) -> bool {
    match e {
        ArtifactsError::FileChanging { .. } => true,
        ArtifactsError::Read { error, .. } => error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobIdentity;
    use crate::storage::StoreOptions;

    #[tokio::test]
    async fn a_folder_not_written_to_yet_is_not_saved_while_the_job_runs() {
        let work = tempfile::tempdir().unwrap();
        let url = url::Url::parse(&format!("file://{}/store", work.path().display())).unwrap();
        let identity = JobIdentity {
            experiment: "e".into(),
            worker: "w".into(),
        };
        let dir = work.path().join("ckpt");
        std::fs::create_dir_all(dir.join("empty-sub")).unwrap();
        let saver = Saver {
            target: Target::open(&url, &identity, &StoreOptions::default()).unwrap(),
            dirs: vec![dir.clone()],
            state_dir: work.path().join("state"),
            tuning: PushTuning::default(),
            schedule: Schedule {
                every: Some(Duration::from_millis(20)),
                ..Schedule::default()
            },
        };
        let written = dir.join("ckpt.json");
        let over = async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::fs::write(&written, b"{\"step\": 5}").unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let report = saver
            .run(std::future::ready(true), over, SignalClock::never())
            .await
            .unwrap();
        // Ticks before the file existed made no save; the first one after it made save 1, and
        // the others found it unchanged, as did the final save.
        let saved: Vec<(u64, bool)> = (report.during.iter())
            .map(|(_, o)| (o.save, o.unchanged))
            .collect();
        assert_eq!(saved.first(), Some(&(1, false)), "{saved:?}");
        assert!(saved[1..].iter().all(|s| *s == (1, true)), "{saved:?}");
        assert_eq!(report.last.len(), 1);
        assert!(report.last[0].1.unchanged && report.cut.is_none());
    }
}
