//! Progress reporting for localization, without printing.
//!
//! Fetchers report bytes as they move; the CLI decides whether that becomes a progress bar (on a
//! terminal) or a log line every few seconds. The library only ever calls a [`ProgressSink`].

use std::sync::Arc;

use crate::localized::Entry;

/// Something that happened to one source, in the order it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// Work on the source began; `label` is the redacted URL.
    Started { label: String },
    /// The total number of bytes expected, once known.
    Total(u64),
    /// This many more bytes were transferred.
    Advanced(u64),
    /// The source is in place: `entry` is what the record now says of it; `skipped` when it was
    /// already published at this revision and nothing was fetched.
    Done { entry: Box<Entry>, skipped: bool },
}

/// Receives progress events. Implemented by the CLI; must be cheap, since fetchers call it per
/// buffer.
pub trait ProgressSink: Send + Sync {
    /// `source` is the index of the source on the command line.
    fn event(&self, source: usize, event: ProgressEvent);
}

/// A sink that ignores everything: for tests and for library callers that do not show progress.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _source: usize, _event: ProgressEvent) {}
}

/// The handle a fetcher holds for its own source.
#[derive(Clone)]
pub struct SourceProgress {
    sink: Arc<dyn ProgressSink>,
    index: usize,
}

impl SourceProgress {
    /// A handle for source number `index`.
    pub fn new(sink: Arc<dyn ProgressSink>, index: usize) -> Self {
        SourceProgress { sink, index }
    }

    /// A handle that reports nowhere.
    pub fn none() -> Self {
        SourceProgress::new(Arc::new(NoProgress), 0)
    }

    /// Sends one event.
    pub fn send(&self, event: ProgressEvent) {
        self.sink.event(self.index, event);
    }

    /// Reports the expected total size in bytes.
    pub fn set_total(&self, bytes: u64) {
        self.send(ProgressEvent::Total(bytes));
    }

    /// Reports `bytes` more transferred.
    pub fn advance(&self, bytes: u64) {
        if bytes > 0 {
            self.send(ProgressEvent::Advanced(bytes));
        }
    }
}
