//! The local MLflow-compatible endpoint: the part of MLflow's REST API a training script uses,
//! answered by the sidecar, so a script written for MLflow runs unchanged with
//! `MLFLOW_TRACKING_URI=http://127.0.0.1:PORT` and never waits on the remote metastore.
//!
//! What it serves: experiments (by id and name, create, search, tags), runs (create, get, update,
//! search; metrics, params, tags, tag deletion, dataset inputs and model outputs;
//! `metrics/get-history`), MLflow 3's logged models (what `log_model` makes), and MLflow's
//! artifact proxy (upload in one request or in parts, listing, download) for the
//! `mlflow-artifacts:` URIs it gives runs. `GET /` says what it is; any other route answers
//! MLflow's JSON error naming what is not supported.
//!
//! How it maps onto Periscope: every experiment and run made here belongs to the sidecar's
//! Periscope experiment and worker. Each `runs/create` is one MLflow run, with its own run id;
//! its metrics and params carry a worker_index of their own (the worker for its first run,
//! `<worker>/<n>` for the n-th), its artifacts go to
//! `<storage>/<experiment>/<worker>/mlflow/<run>/artifacts/`. Everything logged is acknowledged
//! once it is durable: metrics, params, tags and run changes in the metrics queue (503 with
//! `Retry-After` while it is full), artifacts in the spool on the state folder's disk.
//!
//! A file per idea: [`endpoint`] (shared state, MLflow's answers), [`tracking`] (experiments and
//! runs), [`search`] (the filter grammar), [`models`] (logged models), [`artifacts`] (the artifact
//! routes), [`registry`] (what the endpoint knows, for reads), [`spool`] (received files) and
//! [`uploader`] (spool → storage → metastore); [`routes`] matches requests to them, and
//! [`router`] gives them as a plain [`axum::Router`].

pub mod artifacts;
pub mod endpoint;
pub mod models;
pub mod registry;
pub mod routes;
pub mod search;
pub mod spool;
pub mod tracking;
pub mod uploader;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::sync::Notify;
use url::Url;

pub use endpoint::{channel, IngestHandle, NotQueued, RunIdentity, RETRY_AFTER};
pub use uploader::Late;

use endpoint::{Shared, Storage};
use registry::{RegistryError, Slot};
use spool::{Spool, SpoolError};
use uploader::Uploads;

use crate::error::{Classify, ErrorClass};
use crate::job::JobIdentity;
use crate::retry::RetryPolicy;
use crate::storage::{self, Service, StorageError, StoreOptions};

/// The registry's file inside the state folder.
pub const REGISTRY_FILE: &str = "mlflow-endpoint.db";
/// The spool's folder inside the state folder.
pub const SPOOL_DIR: &str = "mlflow-artifacts";

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Classify for EndpointError {
    fn class(&self) -> ErrorClass {
        match self {
            EndpointError::Registry(_) | EndpointError::Spool(_) => ErrorClass::Io,
            EndpointError::Storage(e) => e.class(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            EndpointError::Registry(_) | EndpointError::Spool(_) => {
                Some("check free space and permissions of the --state-dir volume".into())
            }
            EndpointError::Storage(e) => e.hint(),
        }
    }
}

/// The endpoint: its routes, and the uploader that stores what clients upload. Invariant: the
/// uploader runs until [`Endpoint::finish`].
pub struct Endpoint {
    router: Router,
    uploads: Uploads,
}

impl Endpoint {
    /// Opens the registry and the spool in `state_dir` and the storage at `storage`, and starts
    /// the uploader on the current runtime. Items go to the pipeline through `handle`.
    pub fn open(
        handle: IngestHandle,
        state_dir: &Path,
        storage: &Url,
    ) -> Result<Endpoint, EndpointError> {
        let identity = JobIdentity {
            experiment: handle.identity().experiment.clone(),
            worker: handle.identity().worker.clone(),
        };
        let registry = Slot::open(&state_dir.join(REGISTRY_FILE), &identity.worker)?;
        let spool = Spool::open(&state_dir.join(SPOOL_DIR))?;
        let options = StoreOptions {
            // The uploader retries for as long as the sidecar runs; a short inner retry keeps
            // reads answered quickly while storage is down.
            retry: RetryPolicy {
                attempts: 2,
                ..RetryPolicy::default()
            },
            ..StoreOptions::default()
        };
        let opened = storage::open_parts(storage, &options)?;
        let storage = Storage {
            store: opened.objects,
            service: Service::from_scheme(storage.scheme()).unwrap_or(Service::Local),
            prefix: identity.worker_prefix(&opened.path),
            shown: identity.shown_under(storage),
        };
        let uploaded = Arc::new(Notify::new());
        let uploads = Uploads::start(
            spool.clone(),
            storage.clone(),
            opened.parts,
            handle.clone(),
            uploaded.clone(),
        );
        let state = Arc::new(endpoint::State {
            handle,
            registry: Mutex::new(registry),
            spool,
            storage,
            uploaded,
        });
        Ok(Endpoint {
            router: router(state),
            uploads,
        })
    }

    /// The routes, for the sidecar's listener.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Once `job_over` resolves, waits at most `within` for uploaded artifacts to reach
    /// storage; returns the records the metrics pipeline could no longer take (see [`Late`]).
    pub async fn finish(
        self,
        job_over: impl std::future::Future<Output = ()>,
        within: std::time::Duration,
    ) -> Late {
        self.uploads.finish(job_over, within).await
    }
}

/// The endpoint's routes over `state`, a plain [`axum::Router`] (see [`routes`]).
pub fn router(state: Shared) -> Router {
    Router::new().fallback(routes::dispatch).with_state(state)
}
