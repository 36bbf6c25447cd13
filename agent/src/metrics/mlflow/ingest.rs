//! The local MLflow-compatible ingest endpoint: the part of MLflow's REST API a training script
//! uses, answered from the sidecar, so `MLFLOW_TRACKING_URI=http://127.0.0.1:PORT` works unchanged
//! and the script never waits on the remote metastore.
//!
//! [`router`] gives an `axum::Router` for the sidecar's `--listen` server to merge. Every request
//! that logs something is acknowledged only after its items are in the durable queue (fsynced);
//! when the queue is full it answers 503 with `Retry-After`, and nothing is dropped.
//!
//! One run per sidecar: `runs/create` returns the sidecar's run, and metrics logged with any
//! `run_id` are attributed to it (the sidecar's experiment and worker). Errors are MLflow's
//! `{"error_code", "message"}`. Bare `NaN`/`Infinity` in request bodies (Python's `json` writes
//! them) are accepted. This module never touches the queue itself: it sends items to the
//! pipeline's loop and waits for its answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::api::{
    self, KeyValue, LogBatch, UpdateRun, MAX_ENTITIES, MAX_METRICS, MAX_PARAMS, MAX_TAGS,
};
use crate::metrics::intake::{IngestRequest, Refusal};
use crate::metrics::model::{float, now_ms, Item, Metric, Param, RunStatus, Tag};

/// How long a client is asked to wait when the queue is full.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Who the sidecar's run is. Invariant: fixed for the sidecar's lifetime.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    pub experiment: String,
    pub worker: String,
    pub start_ms: i64,
}

impl RunIdentity {
    /// The run id handed to clients.
    pub fn run_id(&self) -> String {
        format!("{}-{}", self.experiment, self.worker)
    }
}

/// The endpoint's side of the channel to the pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestHandle {
    tx: mpsc::Sender<IngestRequest>,
    run: Arc<RunIdentity>,
}

/// A channel between the endpoint and the pipeline (which receives on the second half).
pub fn channel(run: RunIdentity) -> (IngestHandle, mpsc::Receiver<IngestRequest>) {
    let (tx, rx) = mpsc::channel(1024);
    (
        IngestHandle {
            tx,
            run: Arc::new(run),
        },
        rx,
    )
}

/// The MLflow routes, under `/api/2.0/mlflow/`.
pub fn router(handle: IngestHandle) -> Router {
    Router::new()
        .route("/api/2.0/mlflow/runs/create", post(runs_create))
        .route("/api/2.0/mlflow/runs/get", get(runs_get))
        .route("/api/2.0/mlflow/runs/update", post(runs_update))
        .route("/api/2.0/mlflow/runs/log-metric", post(log_metric))
        .route("/api/2.0/mlflow/runs/log-batch", post(log_batch))
        .route("/api/2.0/mlflow/runs/log-parameter", post(log_parameter))
        .route("/api/2.0/mlflow/runs/set-tag", post(set_tag))
        .route(
            "/api/2.0/mlflow/experiments/get-by-name",
            get(experiments_get_by_name),
        )
        .route("/api/2.0/mlflow/experiments/get", get(experiments_get))
        .route(
            "/api/2.0/mlflow/experiments/create",
            post(experiments_create),
        )
        .with_state(handle)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = api::ErrorBody {
        error_code: code.into(),
        message: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
}

/// Parses a JSON body, accepting bare NaN/Infinity. Errors are MLflow's invalid-parameter text.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the body is not UTF-8".to_string())?;
    let text = float::quote_non_finite(if text.trim().is_empty() { "{}" } else { text });
    serde_json::from_str(&text).map_err(|e| format!("malformed request body: {e}"))
}

fn run_info(run: &RunIdentity, experiment_id: Option<&str>) -> Value {
    let id = run.run_id();
    json!({
        "run_id": id,
        "run_uuid": id,
        "run_name": run.worker,
        "experiment_id": experiment_id.unwrap_or(&run.experiment),
        "user_id": "",
        "status": "RUNNING",
        "start_time": run.start_ms,
        "artifact_uri": "",
        "lifecycle_stage": "active",
    })
}

fn run_json(run: &RunIdentity, experiment_id: Option<&str>) -> Value {
    json!({"run": {"info": run_info(run, experiment_id), "data": {"metrics": [], "params": [], "tags": []}}})
}

fn experiment_json(run: &RunIdentity) -> Value {
    json!({"experiment": {
        "experiment_id": run.experiment,
        "name": run.experiment,
        "artifact_location": "",
        "lifecycle_stage": "active",
        "tags": [],
    }})
}

/// Hands items to the pipeline and turns its answer into a response.
async fn store(handle: &IngestHandle, items: Vec<Item>) -> Response {
    if items.is_empty() {
        return axum::Json(json!({})).into_response();
    }
    let (reply, answer) = oneshot::channel();
    let unavailable = || {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "TEMPORARILY_UNAVAILABLE",
            "the sidecar is not accepting metrics now; retry later",
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(RETRY_AFTER.as_secs()),
        );
        r
    };
    if handle
        .tx
        .send(IngestRequest { items, reply })
        .await
        .is_err()
    {
        return unavailable();
    }
    match answer.await {
        Ok(Ok(())) => axum::Json(json!({})).into_response(),
        Ok(Err(Refusal::Full)) | Err(_) => unavailable(),
        Ok(Err(Refusal::Failed(message))) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
        }
    }
}

#[derive(Deserialize)]
struct CreateRun {
    #[serde(default)]
    experiment_id: Option<String>,
}

async fn runs_create(State(h): State<IngestHandle>, bytes: Bytes) -> Response {
    let req: CreateRun = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return invalid(e),
    };
    axum::Json(run_json(&h.run, req.experiment_id.as_deref())).into_response()
}

async fn runs_get(State(h): State<IngestHandle>) -> Response {
    axum::Json(run_json(&h.run, None)).into_response()
}

/// FINISHED (what `end_run` sends by default) changes nothing: the run's final status comes from
/// the main container's exit code. FAILED or KILLED is the script's own verdict, which an exit
/// code of 0 must not overturn: it is queued like a metric, durably, before the answer.
async fn runs_update(State(h): State<IngestHandle>, bytes: Bytes) -> Response {
    let req: UpdateRun = match body(&bytes) {
        Ok(r) => r,
        Err(e) => return invalid(e),
    };
    if matches!(req.status.as_deref(), Some("FAILED" | "KILLED")) {
        let at_ms = req
            .end_time
            .filter(|ms| chrono::DateTime::from_timestamp_millis(*ms).is_some())
            .unwrap_or_else(now_ms);
        let failed = Item::Status {
            status: RunStatus::Failed,
            at_ms,
        };
        let stored = store(&h, vec![failed]).await;
        if !stored.status().is_success() {
            return stored;
        }
    }
    axum::Json(json!({"run_info": run_info(&h.run, None)})).into_response()
}

fn metric(m: api::Metric, worker: &str) -> Result<Item, String> {
    if m.key.is_empty() {
        return Err("a metric key must not be empty".into());
    }
    let timestamp_ms = m.timestamp.unwrap_or_else(now_ms);
    if chrono::DateTime::from_timestamp_millis(timestamp_ms).is_none() {
        return Err(format!("timestamp {timestamp_ms} is out of range"));
    }
    Ok(Item::Metric(Metric {
        key: m.key,
        value: m.value,
        step: m.step.unwrap_or(0),
        timestamp_ms,
        worker: worker.to_string(),
    }))
}

fn param(p: KeyValue, worker: &str) -> Result<Item, String> {
    if p.key.is_empty() {
        return Err("a param key must not be empty".into());
    }
    Ok(Item::Param(Param {
        key: p.key,
        value: p.value,
        worker: worker.to_string(),
    }))
}

fn tag(t: KeyValue) -> Result<Item, String> {
    if t.key.is_empty() {
        return Err("a tag key must not be empty".into());
    }
    Ok(Item::Tag(Tag {
        key: t.key,
        value: t.value,
    }))
}

async fn log_metric(State(h): State<IngestHandle>, bytes: Bytes) -> Response {
    let item = match body::<api::Metric>(&bytes).and_then(|m| metric(m, &h.run.worker)) {
        Ok(i) => i,
        Err(e) => return invalid(e),
    };
    store(&h, vec![item]).await
}

async fn log_parameter(State(h): State<IngestHandle>, bytes: Bytes) -> Response {
    let item = match body::<KeyValue>(&bytes).and_then(|p| param(p, &h.run.worker)) {
        Ok(i) => i,
        Err(e) => return invalid(e),
    };
    store(&h, vec![item]).await
}

async fn set_tag(State(h): State<IngestHandle>, bytes: Bytes) -> Response {
    let item = match body::<KeyValue>(&bytes).and_then(tag) {
        Ok(i) => i,
        Err(e) => return invalid(e),
    };
    store(&h, vec![item]).await
}

async fn log_batch(State(h): State<IngestHandle>, bytes: Bytes) -> Response {
    let batch: LogBatch = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    let (m, p, t) = (batch.metrics.len(), batch.params.len(), batch.tags.len());
    if m > MAX_METRICS || p > MAX_PARAMS || t > MAX_TAGS || m + p + t > MAX_ENTITIES {
        return invalid(format!(
            "a batch holds at most {MAX_METRICS} metrics, {MAX_PARAMS} params, \
             {MAX_TAGS} tags and {MAX_ENTITIES} items in all; got {m}, {p} and {t}"
        ));
    }
    let worker = &h.run.worker;
    let items: Result<Vec<Item>, String> = batch
        .params
        .into_owned()
        .into_iter()
        .map(|p| param(p, worker))
        .chain(batch.tags.into_owned().into_iter().map(tag))
        .chain(
            batch
                .metrics
                .into_owned()
                .into_iter()
                .map(|m| metric(m, worker)),
        )
        .collect();
    match items {
        Ok(items) => store(&h, items).await,
        Err(e) => invalid(e),
    }
}

#[derive(Deserialize)]
struct ByName {
    #[serde(default)]
    experiment_name: Option<String>,
}

async fn experiments_get_by_name(
    State(h): State<IngestHandle>,
    Query(q): Query<ByName>,
) -> Response {
    // Whatever name the script asks for, its metrics belong to the sidecar's experiment.
    let _ = q.experiment_name;
    axum::Json(experiment_json(&h.run)).into_response()
}

async fn experiments_get(State(h): State<IngestHandle>) -> Response {
    axum::Json(experiment_json(&h.run)).into_response()
}

async fn experiments_create(State(h): State<IngestHandle>) -> Response {
    axum::Json(json!({"experiment_id": h.run.experiment})).into_response()
}
