//! Why a sidecar could not start or finish.

use std::net::SocketAddr;

use crate::artifacts::ArtifactsError;
use crate::error::{Classify, ErrorClass};
use crate::metrics::mlflow::ingest::EndpointError;
use crate::metrics::MetricsError;
use crate::ship::ShipError;
use crate::storage::StorageError;

/// A failure of a sidecar's assembly or of one of its loops. Invariant: no message holds a
/// secret (storage and metastore URLs are redacted where they are made).
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Ship(#[from] ShipError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Artifacts(#[from] ArtifactsError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A thread or task of the sidecar could not start or ended abnormally.
    #[error("{0}")]
    Thread(String),
}

impl Classify for SidecarError {
    fn class(&self) -> ErrorClass {
        match self {
            SidecarError::Storage(e) => e.class(),
            SidecarError::Ship(e) => e.class(),
            SidecarError::Metrics(e) => e.class(),
            SidecarError::Artifacts(e) => e.class(),
            SidecarError::Endpoint(e) => e.class(),
            SidecarError::Listen { .. } => ErrorClass::Usage,
            SidecarError::Thread(_) => ErrorClass::Internal,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SidecarError::Storage(e) => e.hint(),
            SidecarError::Ship(e) => e.hint(),
            SidecarError::Metrics(e) => e.hint(),
            SidecarError::Artifacts(e) => e.hint(),
            SidecarError::Endpoint(e) => e.hint(),
            SidecarError::Listen { .. } => {
                Some("choose a free address with --listen (e.g. 127.0.0.1:0 for any port)".into())
            }
            SidecarError::Thread(_) => None,
        }
    }
}
