//! Tracking metrics into the metastore: scalars from tf.events files, metrics from a JSONL file
//! and from the MLflow-compatible ingest endpoint, through a durable on-disk queue, into
//! Submarine-compatible tables or an MLflow tracking server.
//!
//! Data flows one way, **source → queue → sink**, a file per idea:
//!
//! * [`model`]: the items that flow ([`Metric`], params, tags, purges, run status).
//! * Sources: [`jsonl`] (`--metrics-file`), [`scalars`] (`--tfevents` folders), [`run_info`] (code
//!   revision params and the final status); [`checkpoint`] keeps what they read in step with the
//!   queue.
//! * [`intake`]: items handed in from outside (the MLflow-compatible endpoint, [`mlflow::ingest`]).
//! * [`queue`]: the durable, bounded, segmented queue (CRC32C records, fsync before acknowledging).
//! * Sinks: the [`Sink`] trait in [`sink`]; the embedded SQLite metastore in [`sqlite`];
//!   Submarine's MySQL/MariaDB metastore in [`mysql`]; the rows both store, in [`submarine`]; an
//!   MLflow tracking server in [`mlflow`]; choosing and opening one from `--metastore` in
//!   [`metastore`].
//! * [`saves`]: what a completed artifacts save tells the metastore.
//! * [`pipeline`]: ties them together and runs in the sidecar.
//!
//! A source never knows which sink it feeds; a sink never knows which file an item came from.
//! This module never prints.

pub mod checkpoint;
pub mod intake;
pub mod jsonl;
pub mod metastore;
pub mod mlflow;
pub mod model;
pub mod mysql;
pub mod pipeline;
pub mod queue;
pub mod run_info;
pub mod saves;
pub mod scalars;
pub mod sink;
pub mod sqlite;
pub mod submarine;

use std::path::PathBuf;

use crate::error::{Classify, ErrorClass};

pub use metastore::{MetastoreUrl, SinkContext};
pub use model::{Item, Metric, Param, RunStatus, Tag};
pub use pipeline::{MetricsPipeline, MetricsStats, PipelineConfig};
pub use queue::{Queue, QueueConfig, QueueError};
pub use sink::{Sink, SinkError};
pub use sqlite::SqliteStore;

/// A failure of the metrics pipeline.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot write the metrics checkpoint {path}")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode a metrics queue record: {0}")]
    Encode(String),
    #[error("cannot start the metrics delivery thread: {0}")]
    Thread(String),
    #[error("the metrics delivery thread ended unexpectedly")]
    DeliveryLost,
}

impl Classify for MetricsError {
    fn class(&self) -> ErrorClass {
        match self {
            MetricsError::Queue(e) => e.class(),
            MetricsError::Sink(e) => e.class(),
            MetricsError::Checkpoint { .. } => ErrorClass::Io,
            MetricsError::Encode(_) | MetricsError::Thread(_) | MetricsError::DeliveryLost => {
                ErrorClass::Internal
            }
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            MetricsError::Queue(e) => e.hint(),
            MetricsError::Sink(e) => e.hint(),
            MetricsError::Checkpoint { .. } => {
                Some("check free space and permissions of the --state-dir volume".into())
            }
            MetricsError::Encode(_) | MetricsError::Thread(_) | MetricsError::DeliveryLost => None,
        }
    }
}
