//! Whether the worker's folder is claimed yet, for the tasks that must wait for it: the
//! metastore's writes, the saves and the lease.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::ErrorClass;
use crate::metrics::{Item, Sink, SinkError};

/// Whether the worker's folder is claimed yet, and as which attempt. Invariant: 0 while not
/// settled; once the attempt or [`GIVEN_UP`] is set, it never changes (a claim is never given
/// up, nor made twice, while the sidecar runs).
#[derive(Debug, Clone, Default)]
pub struct ClaimGate(Arc<AtomicU32>);

/// The gate's value once the claim will never be made (refused, or the drain ended first).
const GIVEN_UP: u32 = u32::MAX;

impl ClaimGate {
    /// A gate already open: the claim (attempt `attempt`) was made before anything started.
    pub fn opened(attempt: u32) -> ClaimGate {
        let gate = ClaimGate::default();
        gate.open(attempt);
        gate
    }

    /// The claim is made, as attempt `attempt` (≥ 1): writes may go ahead.
    pub fn open(&self, attempt: u32) {
        let attempt = attempt.clamp(1, GIVEN_UP - 1);
        let _ = (self.0).compare_exchange(0, attempt, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The claim will never be made: whoever waits for it stops waiting.
    pub fn give_up(&self) {
        let _ = (self.0).compare_exchange(0, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn is_open(&self) -> bool {
        self.attempt().is_some()
    }

    /// The attempt this sidecar is, once the claim is made.
    pub fn attempt(&self) -> Option<u32> {
        match self.0.load(Ordering::Acquire) {
            0 | GIVEN_UP => None,
            n => Some(n),
        }
    }

    /// Resolves once the claim is settled: the attempt, or `None` if it will never be made.
    pub async fn settled(&self) -> Option<u32> {
        loop {
            match self.0.load(Ordering::Acquire) {
                0 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                GIVEN_UP => return None,
                n => return Some(n),
            }
        }
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
