//! The sidecar's shipping loop: run the log and tf.events shippers in passes until the job is
//! over, then drain, following [`crate::lifecycle`]'s one set of rules and timings.
//!
//! This module owns the loop; it never prints, and it never decides what a chunk is (that is
//! [`ship`](crate::ship)).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::lifecycle::{wait_to_retry, Drain, Ending, Next, Stop};
use crate::ship::{LogShipper, ShipError, TfeventsMirror};

/// Everything the sidecar ships, ticked together by [`run`]. Each part is optional.
#[derive(Default)]
pub struct Pipelines {
    pub logs: Option<LogShipper>,
    pub tfevents: Option<TfeventsMirror>,
    /// Updated after every pass, read by `/healthz`, `/readyz` and `/metrics`.
    pub health: Arc<super::health::Health>,
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

/// Runs the shippers until the drain ends (see [`crate::lifecycle`]). `stop` counts stop
/// requests; `wake` carries change notifications for the followed folders.
pub async fn run(
    pipelines: &mut Pipelines,
    mut drain: Drain,
    mut stop: Stop,
    mut wake: mpsc::UnboundedReceiver<()>,
) -> Result<Ending, ShipError> {
    loop {
        let report = pipelines.tick(drain.draining()).await?;
        let backlog = |p: &Pipelines| {
            if p.has_backlog() {
                report.backlog.max(1)
            } else {
                0
            }
        };
        let idle = report.bytes_read == 0 && !pipelines.has_backlog();
        match drain.after_pass(idle, report.backlog) {
            Next::End(ending) => return Ok(ending),
            Next::PassNow => continue,
            Next::Continue => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(drain.pause()) => {}
            Some(()) = wake.recv() => {
                // Coalesce a burst of notifications into one pass.
                while wake.try_recv().is_ok() {}
            }
            requests = stop.next() => {
                if let Next::End(ending) = drain.on_stop(requests, || backlog(pipelines)) {
                    return Ok(ending);
                }
            }
        }
    }
}

/// Before the first pass of a later attempt of the worker: the log shipper learns what earlier
/// attempts stored ([`LogShipper::continue_stored`]), trying until storage answers and following
/// `drain`'s rules meanwhile. `Some(ending)`: the drain ended first, with `unread()` bytes not
/// stored.
pub async fn continue_stored(
    pipelines: &mut Pipelines,
    attempt: u32,
    drain: &mut Drain,
    stop: &mut Stop,
    unread: impl Fn() -> u64,
) -> Option<Ending> {
    let logs = pipelines.logs.as_mut()?;
    let mut pause = Duration::from_secs(1);
    loop {
        match logs.continue_stored(attempt).await {
            Ok(()) => return None,
            Err(e) => {
                tracing::warn!(error = %crate::storage::scrub(&e.to_string()), retry_s = pause.as_secs_f64(),
                "cannot list the logs earlier attempts stored; nothing is stored until it can")
            }
        }
        if let Some(ending) = wait_to_retry(drain, stop, pause, &unread).await {
            return Some(ending);
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}
