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
//! [`uploader`] (spool → storage → metastore). [`router`] puts the routes together as a plain
//! [`axum::Router`].

pub mod artifacts;
pub mod endpoint;
pub mod models;
pub mod registry;
pub mod search;
pub mod spool;
pub mod tracking;
pub mod uploader;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use tokio::sync::Notify;
use url::Url;

pub use endpoint::{channel, IngestHandle, NotQueued, RunIdentity, RETRY_AFTER};
pub use uploader::Late;

use endpoint::{error, ok, Fail, Shared, Storage};
use registry::{Registry, RegistryError};
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
        let registry = Registry::open(&state_dir.join(REGISTRY_FILE), &identity.worker)?;
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

/// The endpoint's routes over `state`.
pub fn router(state: Shared) -> Router {
    use tracking as t;
    const MLFLOW: &str = "/api/2.0/mlflow";
    const ARTIFACTS: &str = "/api/2.0/mlflow-artifacts";
    let r = |path: &str| format!("{MLFLOW}{path}");
    let a = |path: &str| format!("{ARTIFACTS}{path}");
    Router::new()
        .route("/", get(root))
        .route("/api/3.0/mlflow/server-info", get(server_info))
        .route(&r("/server-info"), get(server_info))
        .route(
            &r("/experiments/get-by-name"),
            get(t::experiments_get_by_name),
        )
        .route(&r("/experiments/get"), get(t::experiments_get))
        .route(&r("/experiments/create"), post(t::experiments_create))
        .route(&r("/experiments/search"), post(t::experiments_search))
        .route(
            &r("/experiments/set-experiment-tag"),
            post(t::experiments_set_tag),
        )
        .route(&r("/runs/create"), post(t::runs_create))
        .route(&r("/runs/get"), get(t::runs_get))
        .route(&r("/runs/update"), post(t::runs_update))
        .route(&r("/runs/log-metric"), post(t::log_metric))
        .route(&r("/runs/log-parameter"), post(t::log_parameter))
        .route(&r("/runs/set-tag"), post(t::set_tag))
        .route(&r("/runs/delete-tag"), post(t::delete_tag))
        .route(&r("/runs/log-batch"), post(t::log_batch))
        .route(&r("/runs/log-inputs"), post(t::log_inputs))
        .route(&r("/runs/outputs"), post(t::log_outputs))
        .route(&r("/runs/search"), post(t::runs_search))
        .route(&r("/metrics/get-history"), get(t::metric_history))
        .route(&r("/logged-models"), post(models::create))
        .route(&r("/logged-models/search"), post(models::search))
        .route(
            &r("/logged-models/{model_id}"),
            get(models::get).patch(models::finalize),
        )
        .route(
            &r("/logged-models/{model_id}/tags"),
            axum::routing::patch(models::set_tags),
        )
        .route(
            &r("/logged-models/{model_id}/tags/{key}"),
            axum::routing::delete(models::delete_tag),
        )
        .route(
            &r("/logged-models/{model_id}/params"),
            post(models::log_params),
        )
        .route(&a("/artifacts"), get(artifacts::list))
        .route(
            &a("/artifacts/{*path}"),
            get(artifacts::download)
                .put(artifacts::upload)
                .delete(artifacts::delete),
        )
        .route(&a("/mpu/create/{*path}"), post(artifacts::multipart_create))
        .route(
            &a("/mpu/complete/{*path}"),
            post(artifacts::multipart_complete),
        )
        .route(&a("/mpu/abort/{*path}"), post(artifacts::multipart_abort))
        .route(
            &a("/mpu/part/{upload_id}/{part}"),
            put(artifacts::multipart_part),
        )
        .fallback(unsupported)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `GET /`: what this endpoint is.
async fn root(State(s): State<Shared>) -> Response {
    let id = s.handle.identity();
    ok(&serde_json::json!({
        "service": "Periscope's MLflow-compatible tracking endpoint",
        "experiment": id.experiment,
        "worker": id.worker,
        "serves": [
            "experiments: get, get-by-name, create, search, set-experiment-tag",
            "runs: create, get, update, search, log-metric, log-parameter, log-batch, set-tag, \
             delete-tag, log-inputs, outputs; metrics/get-history",
            "logged-models: create, get, finalize, search, tags, params",
            "mlflow-artifacts: upload (single or multipart), list, download",
        ],
        "not_served": [
            "the MLflow UI",
            "model registry, traces, prompts, datasets, scorers, gateway",
            "deleting or restoring runs, experiments and artifacts",
        ],
        "runs": "each runs/create is one MLflow run of this Periscope experiment and worker; \
                 metrics and params reach the metastore through the sidecar's queue, artifacts \
                 reach storage under <experiment>/<worker>/mlflow/<run>/artifacts/",
    }))
}

/// MLflow 3's `server-info`: what the artifact client may use (multipart uploads, whose parts
/// come back to this endpoint).
async fn server_info() -> Response {
    ok(&serde_json::json!({
        "store_type": "PeriscopeEndpoint",
        "workspaces_enabled": false,
        "multipart_uploads_enabled": true,
        "multipart_downloads_enabled": false,
        "presigned_upload_run_id_supported": false,
        "presigned_upload_model_id_supported": false,
    }))
}

/// Any other route: MLflow's JSON error naming what is not supported.
async fn unsupported(method: Method, uri: Uri) -> Fail {
    let path = uri.path();
    if path.starts_with("/api/") || path.starts_with("/ajax-api/") {
        error(
            StatusCode::NOT_IMPLEMENTED,
            "NOT_IMPLEMENTED",
            format!(
                "`{method} {path}` is not supported by Periscope's MLflow-compatible endpoint, \
                 which serves experiments, runs, logged models and artifacts (GET / lists them)"
            ),
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            "ENDPOINT_NOT_FOUND",
            format!(
                "no `{path}` here: this is Periscope's MLflow-compatible tracking endpoint (the \
                 MLflow UI is not served; GET / says what is)"
            ),
        )
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Fail {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "NOT_IMPLEMENTED",
        format!(
            "`{}` does not take {method} at Periscope's MLflow-compatible endpoint",
            uri.path()
        ),
    )
}
