//! The one stop-and-drain state machine that every loop of a sidecar follows.
//!
//! A loop (the log and tf.events shippers, the metrics pipeline) runs passes until the job is over,
//! then drains: it keeps reading until what was written is stored, for at most the drain timeout.
//! The job is over at the first stop request ([`Stop`]: SIGTERM, which a Kubernetes native sidecar
//! gets only after the main container ended) or when the exit-code file of `periscope exec`
//! appears. A second stop request, or the timeout, ends the drain at once; each loop's checkpoint
//! says exactly what was stored, so a later start with the same state folder ships the rest.
//!
//! A drain is over once passes have found nothing new and nothing waiting for [`DRAIN_QUIET`] and
//! at least two passes in a row: a writer starved of CPU for a moment, or one flushing its last
//! buffers, is not cut off, and change notifications that trigger passes microseconds apart do
//! not end it early. Every loop uses the same timings, and reports draining through the same
//! [`DrainFlag`] that `/healthz` and `/metrics` read.
//!
//! This module owns timing only: it never reads a file, never prints, and never decides what a
//! pass does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long passes must find nothing new, with nothing waiting, before a drain ends.
pub const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// The longest pause between two passes while draining (the poll interval when it is shorter).
pub const DRAIN_PAUSE: Duration = Duration::from_millis(100);

/// Timing of a sidecar's loops. Invariant: durations are non-zero.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// How often files are checked when no change notification arrives (works on network
    /// filesystems, where notifications do not).
    pub poll_interval: Duration,
    pub drain_timeout: Duration,
    /// Drain and exit when this file appears (the main command's exit-code file).
    pub exit_when_file: Option<PathBuf>,
}

impl Lifecycle {
    /// How long a loop waits between passes (it also wakes on notifications and stop requests).
    pub fn pause(&self, draining: bool) -> Duration {
        if draining {
            DRAIN_PAUSE.min(self.poll_interval)
        } else {
            self.poll_interval
        }
    }
}

/// How a loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Everything read was stored.
    Drained,
    /// Stopped with bytes not yet stored (drain timeout or a second stop request).
    Incomplete { backlog: u64, reason: &'static str },
}

impl Ending {
    /// The ending of a loop cut short for `reason` with `backlog` bytes not yet stored.
    pub fn cut(backlog: u64, reason: &'static str) -> Ending {
        if backlog == 0 {
            Ending::Drained
        } else {
            Ending::Incomplete { backlog, reason }
        }
    }
}

/// Stop requests as a count every task can watch (the first means "drain", the second "end
/// now"). Invariant: the count only grows. Cheap to clone; each clone sees every request.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<u32>);

/// The sending side of [`Stop`]: whoever sees a signal or learns that the job is over.
#[derive(Debug, Clone)]
pub struct StopSender(Arc<watch::Sender<u32>>);

impl Stop {
    /// A new stop channel.
    pub fn channel() -> (StopSender, Stop) {
        let (tx, rx) = watch::channel(0);
        (StopSender(Arc::new(tx)), Stop(rx))
    }

    /// Stop requests so far.
    pub fn requests(&self) -> u32 {
        *self.0.borrow()
    }

    /// Waits for the next request and returns the count. When every sender is gone no request
    /// can come any more, and this never resolves.
    pub async fn next(&mut self) -> u32 {
        match self.0.changed().await {
            Ok(()) => *self.0.borrow(),
            Err(_) => std::future::pending().await,
        }
    }
}

impl StopSender {
    /// Counts SIGTERM, SIGINT and SIGHUP as stop requests from now on, on the current runtime.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let tx = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = term.recv() => {}
                    Some(()) = int.recv() => {}
                    Some(()) = hup.recv() => {}
                    else => break,
                }
                tx.request();
            }
        });
        Ok(())
    }

    /// Counts one more stop request.
    pub fn request(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Raises the count to at least `n` (idempotent, unlike [`StopSender::request`]).
    pub fn at_least(&self, n: u32) {
        self.0.send_if_modified(|count| {
            let raise = *count < n;
            *count = (*count).max(n);
            raise
        });
    }
}

/// Whether the job is over and a loop of the sidecar drains, as `/healthz` and `/metrics` report
/// it, and as work that waits for the job's end (saving artifacts) learns it. Invariant: once set,
/// it stays set. Cheap to clone; every clone is the same flag.
#[derive(Debug, Clone)]
pub struct DrainFlag(Arc<watch::Sender<bool>>);

impl Default for DrainFlag {
    fn default() -> Self {
        DrainFlag(Arc::new(watch::channel(false).0))
    }
}

impl DrainFlag {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    fn set(&self) {
        self.0.send_replace(true);
    }

    /// Waits until the flag is set.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|set| *set).await;
    }
}

/// What a loop must do after a pass or a stop request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Pause, then run another pass.
    Continue,
    /// Run another pass at once (the drain just began).
    PassNow,
    /// End with this.
    End(Ending),
}

/// One loop's place in its life: running, or draining since when and until when. Invariant:
/// `deadline` is set once, when the drain begins, and never moves.
#[derive(Debug)]
pub struct Drain {
    cfg: Lifecycle,
    /// What the loop drains, for its log lines ("logs and tf.events", "metrics").
    what: &'static str,
    flag: DrainFlag,
    deadline: Option<Instant>,
    quiet_since: Option<Instant>,
    quiet_passes: u32,
}

impl Drain {
    /// A running loop that drains `what`; it sets `flag` when its drain begins.
    pub fn new(cfg: Lifecycle, what: &'static str, flag: DrainFlag) -> Drain {
        Drain {
            cfg,
            what,
            flag,
            deadline: None,
            quiet_since: None,
            quiet_passes: 0,
        }
    }

    pub fn draining(&self) -> bool {
        self.deadline.is_some()
    }

    pub fn settings(&self) -> &Lifecycle {
        &self.cfg
    }

    /// How long to wait before the next pass.
    pub fn pause(&self) -> Duration {
        self.cfg.pause(self.draining())
    }

    fn begin(&mut self, why: &str) {
        if self.deadline.is_none() {
            tracing::info!(
                timeout_s = self.cfg.drain_timeout.as_secs_f64(),
                "{why}; draining {}",
                self.what
            );
            self.flag.set();
            self.deadline = Some(Instant::now() + self.cfg.drain_timeout);
            self.quiet_again();
        }
    }

    /// Forgets the quiet passes so far: the loop found more to do on its own (a final record).
    pub fn quiet_again(&mut self) {
        self.quiet_since = None;
        self.quiet_passes = 0;
    }

    /// After a pass: `idle` says it found nothing new and nothing is waiting to be stored;
    /// `backlog` is what is not yet stored. Begins the drain when the exit-code file appeared.
    pub fn after_pass(&mut self, idle: bool, backlog: u64) -> Next {
        let Some(deadline) = self.deadline else {
            if let Some(path) = self.cfg.exit_when_file.as_ref().filter(|p| p.exists()) {
                let why = format!("the command has ended ({} appeared)", path.display());
                self.begin(&why);
                return Next::PassNow;
            }
            return Next::Continue;
        };
        if idle {
            let since = *self.quiet_since.get_or_insert_with(Instant::now);
            self.quiet_passes += 1;
            if self.quiet_passes >= 2 && since.elapsed() >= DRAIN_QUIET {
                return Next::End(Ending::Drained);
            }
        } else {
            self.quiet_again();
        }
        if Instant::now() >= deadline {
            return Next::End(Ending::Incomplete {
                backlog,
                reason: "drain timeout",
            });
        }
        Next::Continue
    }

    /// After [`Stop::next`] returned `requests`. `backlog` is what is not yet stored, asked for
    /// only when the loop must end.
    pub fn on_stop(&mut self, requests: u32, backlog: impl FnOnce() -> u64) -> Next {
        if requests >= 2 {
            // Ending now is the drain's end too: whoever waits for the drain stops waiting.
            self.flag.set();
            return Next::End(Ending::cut(backlog(), "second stop request"));
        }
        self.begin("stop requested");
        Next::PassNow
    }
}

/// Between two tries of work that must come before a loop's first pass (a claim, a listing):
/// waits `pause`, following `drain`'s rules on stop requests and the exit-code file.
/// `Some(ending)`: the drain ended meanwhile, with `unread()` bytes not stored.
pub async fn wait_to_retry(
    drain: &mut Drain,
    stop: &mut Stop,
    pause: Duration,
    unread: impl Fn() -> u64,
) -> Option<Ending> {
    if let Next::End(ending) = drain.after_pass(false, unread()) {
        return Some(ending);
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => None,
        requests = stop.next() => match drain.on_stop(requests, &unread) {
            Next::End(ending) => Some(ending),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(exit: Option<PathBuf>) -> Lifecycle {
        Lifecycle {
            poll_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(3600),
            exit_when_file: exit,
        }
    }

    #[test]
    fn a_drain_ends_after_two_quiet_passes_spanning_the_quiet_time() {
        let flag = DrainFlag::default();
        let mut drain = Drain::new(lifecycle(None), "logs", flag.clone());
        assert_eq!(drain.after_pass(true, 0), Next::Continue);
        assert!(!flag.is_set());
        assert_eq!(drain.on_stop(1, || 0), Next::PassNow);
        assert!(flag.is_set() && drain.draining());
        assert_eq!(drain.pause(), DRAIN_PAUSE);
        // Two quiet passes at once are not enough: they must span the quiet time.
        assert_eq!(drain.after_pass(true, 0), Next::Continue);
        assert_eq!(drain.after_pass(true, 0), Next::Continue);
        // A pass that found something starts the quiet time again.
        assert_eq!(drain.after_pass(false, 10), Next::Continue);
        drain.quiet_since = Some(Instant::now() - DRAIN_QUIET);
        drain.quiet_passes = 1;
        assert_eq!(drain.after_pass(true, 0), Next::End(Ending::Drained));
    }

    #[test]
    fn a_second_request_or_the_timeout_ends_with_the_backlog() {
        let mut drain = Drain::new(lifecycle(None), "logs", DrainFlag::default());
        drain.on_stop(1, || unreachable!("the first request does not end"));
        assert_eq!(
            drain.on_stop(2, || 7),
            Next::End(Ending::Incomplete {
                backlog: 7,
                reason: "second stop request"
            })
        );
        assert_eq!(drain.on_stop(2, || 0), Next::End(Ending::Drained));
        drain.deadline = Some(Instant::now());
        assert_eq!(
            drain.after_pass(false, 5),
            Next::End(Ending::Incomplete {
                backlog: 5,
                reason: "drain timeout"
            })
        );
    }

    #[test]
    fn the_exit_code_file_begins_the_drain() {
        let dir = tempfile::tempdir().unwrap();
        let exit = dir.path().join("exit-code");
        let mut drain = Drain::new(
            lifecycle(Some(exit.clone())),
            "metrics",
            DrainFlag::default(),
        );
        assert_eq!(drain.after_pass(true, 0), Next::Continue);
        std::fs::write(&exit, "0").unwrap();
        assert_eq!(drain.after_pass(true, 0), Next::PassNow);
        assert!(drain.draining());
    }

    #[tokio::test]
    async fn every_clone_of_stop_sees_each_request() {
        let (tx, stop) = Stop::channel();
        let mut a = stop.clone();
        let mut b = stop;
        tx.request();
        assert_eq!(a.next().await, 1);
        assert_eq!(b.next().await, 1);
        tx.at_least(1);
        tx.at_least(2);
        assert_eq!(a.next().await, 2);
        assert_eq!(a.requests(), 2);
        // With every sender gone, no request comes any more.
        drop(tx);
        let waited = tokio::time::timeout(Duration::from_millis(20), a.next()).await;
        assert!(waited.is_err());
    }
}
