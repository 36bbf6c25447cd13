//! Where delivered metrics go: the [`Sink`] trait every metastore implements, and its failures.
//!
//! A sink applies a batch of [`Item`]s in order and must be idempotent: after a crash the queue
//! delivers again whatever was not acknowledged, so applying the same batch twice must leave the
//! same rows (natural primary keys, `INSERT … ON CONFLICT DO NOTHING`). A sink never knows which
//! file or request an item came from.
//!
//! Sinks: the embedded SQLite metastore ([`super::sqlite`]), Submarine's MySQL/MariaDB metastore
//! ([`super::mysql`]) and an MLflow tracking server ([`super::mlflow`]); [`super::metastore`]
//! chooses and opens one. This module never prints.

use std::time::Duration;

use futures::future::BoxFuture;

use super::model::Item;
use crate::error::{Classify, ErrorClass};

/// A metastore that accepts items. Implementations keep their connection between calls.
pub trait Sink: Send {
    /// The metastore, for logs (redacted).
    fn describe(&self) -> String;

    /// Applies `items` for `experiment`, in order. After a failure the whole batch is written
    /// again, so a sink that cannot apply it all or nothing (MLflow's several requests) must
    /// make a repeated prefix harmless.
    /// The pipeline calls it from a delivery thread of its own, so the future may block (as
    /// SQLite's does) without delaying sources or ingest; it may also be dropped unfinished at a
    /// stop, and the batch is written again on the next start.
    fn write<'a>(
        &'a mut self,
        experiment: &'a str,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// How long the metastore asked to wait after the last failed write (HTTP `Retry-After`), if
    /// it said. A method rather than a field of [`SinkError`], so that sinks without such a hint
    /// need nothing.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Checks once, before the pipeline starts, that the metastore takes writes (credentials,
    /// database, tables), so a wrong setting stops the sidecar at once instead of after the job.
    /// Keeps no connection: the pipeline writes from a runtime of its own.
    fn check(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A sink's failure. Invariant: `message` and `hint` hold no secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub class: ErrorClass,
    /// True when trying again later may succeed (the queue keeps the items meanwhile).
    pub transient: bool,
    /// What the user should do, when the sink knows better than its class's generic hint.
    pub hint: Option<String>,
}

impl SinkError {
    /// A failure that trying again later may cure (the pipeline keeps the items and retries).
    pub fn transient(class: ErrorClass, message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            class,
            transient: true,
            hint: None,
        }
    }

    /// A failure that needs the user to act (the sidecar stops with the class's exit code).
    pub fn permanent(class: ErrorClass, message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            class,
            transient: false,
            hint: None,
        }
    }

    /// The same failure with a specific hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl Classify for SinkError {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn hint(&self) -> Option<String> {
        if let Some(hint) = &self.hint {
            return Some(hint.clone());
        }
        match self.class {
            ErrorClass::Usage => Some(
                "use --metastore sqlite:///path/metastore.db (the default is under --state-dir)"
                    .into(),
            ),
            ErrorClass::NotFound => {
                Some("run the sidecar first, or point --metastore at its database".into())
            }
            _ => None,
        }
    }
}
