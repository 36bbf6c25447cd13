//! The sidecar's lifecycle: run the shippers until told to stop, then drain.
//!
//! Kubernetes native sidecars get SIGTERM only after the main container ended, so the first stop
//! request means "the job is over": keep reading until what was written is stored (including what
//! is written during the drain), for at most the drain timeout. A second request, or the timeout,
//! ends at once; the checkpoint already says exactly what was stored, so a later start with the
//! same state folder ships the rest. A classic sidecar learns that the job is over from the exit
//! code file `periscope exec` writes.
//!
//! This module owns the loop and its timing; it never prints, and it never decides what a chunk
//! is (that is [`ship`](crate::ship)).

pub mod health;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::ship::{LogShipper, ShipError, TfeventsMirror};

/// Everything the sidecar ships, ticked together by [`run`]. Each part is optional.
#[derive(Default)]
pub struct Pipelines {
    pub logs: Option<LogShipper>,
    pub tfevents: Option<TfeventsMirror>,
    /// Updated after every pass, read by `/healthz`, `/readyz` and `/metrics`.
    pub health: Arc<health::Health>,
}

/// What one pass over every pipeline did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// New bytes read from the followed files (a drain is over once this stays 0).
    pub bytes_read: u64,
    /// Bytes read but not yet stored, over all pipelines.
    pub backlog: u64,
}

impl Pipelines {
    /// Runs one pass of every pipeline; with `flush`, everything read is due now.
    pub async fn tick(&mut self, flush: bool) -> Result<Pass, ShipError> {
        let mut pass = Pass::default();
        if let Some(logs) = self.logs.as_mut() {
            let r = logs.tick(flush).await?;
            pass.bytes_read += r.bytes_read;
            pass.backlog += r.backlog;
        }
        if let Some(mirror) = self.tfevents.as_mut() {
            let r = mirror.tick(flush).await?;
            pass.backlog += r.backlog;
        }
        self.health.pass_done(pass.backlog);
        Ok(pass)
    }

    /// Whether anything read is not yet stored.
    pub fn has_backlog(&self) -> bool {
        self.logs.as_ref().is_some_and(LogShipper::has_backlog)
            || self
                .tfevents
                .as_ref()
                .is_some_and(TfeventsMirror::has_backlog)
    }
}

/// How long the followed files must stay unchanged, with everything stored, before a drain ends.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// Timing of the sidecar loop. Invariant: durations are non-zero.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// How often files are checked when no change notification arrives (works on network
    /// filesystems, where notifications do not).
    pub poll_interval: Duration,
    pub drain_timeout: Duration,
    /// Drain and exit when this file appears (the main container's exit-code file).
    pub exit_when_file: Option<PathBuf>,
}

/// How the sidecar ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Everything read was stored.
    Drained,
    /// Stopped with bytes not yet stored (drain timeout or a second stop request).
    Incomplete { backlog: u64, reason: &'static str },
}

/// Runs until `stop` has been signalled and the drain ended. `stop` counts stop requests
/// (SIGTERM/SIGINT); `wake` carries change notifications for the followed folders.
pub async fn run(
    pipelines: &mut Pipelines,
    cfg: &Lifecycle,
    mut stop: watch::Receiver<u32>,
    mut wake: mpsc::UnboundedReceiver<()>,
) -> Result<Ending, ShipError> {
    let mut drain_deadline: Option<Instant> = None;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let draining = drain_deadline.is_some();
        let report = pipelines.tick(draining).await?;
        if let Some(deadline) = drain_deadline {
            if report.bytes_read == 0 && !pipelines.has_backlog() {
                // Quiet for a while, not just one pass: a writer starved of CPU for a moment, or
                // one flushing its last buffers, must not be cut off.
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= DRAIN_QUIET {
                    return Ok(Ending::Drained);
                }
            } else {
                quiet_since = None;
            }
            if Instant::now() >= deadline {
                return Ok(Ending::Incomplete {
                    backlog: report.backlog,
                    reason: "drain timeout",
                });
            }
        } else if cfg.exit_when_file.as_ref().is_some_and(|p| p.exists()) {
            tracing::info!("the main container has exited; draining");
            pipelines
                .health
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            drain_deadline = Some(Instant::now() + cfg.drain_timeout);
            continue;
        }
        let pause = if draining {
            Duration::from_millis(200).min(cfg.poll_interval)
        } else {
            cfg.poll_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            Some(()) = wake.recv() => {
                // Coalesce a burst of notifications into one pass.
                while wake.try_recv().is_ok() {}
            }
            changed = stop.changed() => {
                let requests = if changed.is_ok() { *stop.borrow() } else { 1 };
                if requests >= 2 || changed.is_err() && draining {
                    return Ok(if pipelines.has_backlog() {
                        Ending::Incomplete { backlog: report.backlog, reason: "second stop request" }
                    } else {
                        Ending::Drained
                    });
                }
                if drain_deadline.is_none() {
                    tracing::info!(timeout_s = cfg.drain_timeout.as_secs(), "stop requested; draining");
                    pipelines.health.draining.store(true, std::sync::atomic::Ordering::Relaxed);
                    drain_deadline = Some(Instant::now() + cfg.drain_timeout);
                    quiet_since = None;
                }
            }
        }
    }
}

/// True for notifications that can mean new bytes or files. Opening or reading a file is not a
/// change: the pipelines read the files they follow, and waking on that would make every read
/// trigger the next one (a busy loop on an idle job).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        // A writer closing its file is worth a look; our own read-only opens and closes are not.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts change notifications for `folders` (recursive). Returns the watcher (keep it alive) and
/// the channel; when notifications cannot be set up, polling alone still works.
pub fn watch_folders(
    folders: &[PathBuf],
) -> (
    Option<notify::RecommendedWatcher>,
    mpsc::UnboundedReceiver<()>,
) {
    use notify::Watcher;
    let (tx, rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| is_change(&e.kind)) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file notifications unavailable; polling only");
            return (None, rx);
        }
    };
    for folder in folders {
        if let Err(e) = watcher.watch(folder, notify::RecursiveMode::Recursive) {
            tracing::debug!(folder = %folder.display(), error = %e, "cannot watch folder; polling it");
        }
    }
    (Some(watcher), rx)
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};

    #[test]
    fn reading_a_file_is_not_a_change_writing_one_is() {
        assert!(!super::is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!super::is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(super::is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(super::is_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(super::is_change(&EventKind::Create(CreateKind::File)));
    }
}
