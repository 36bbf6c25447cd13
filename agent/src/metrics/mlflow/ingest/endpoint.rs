//! What every route of the endpoint shares: who the sidecar is, the channel to the metrics
//! pipeline, the registry, the spool and storage ([`State`]), and MLflow's way of answering
//! (`{"error_code", "message"}` errors, JSON bodies with bare `NaN`/`Infinity` accepted, a body
//! limit answered in MLflow's JSON).

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};

use super::super::api::ErrorBody;
use super::registry::{Registry, RegistryError, Slot};
use super::spool::Spool;
use crate::metrics::intake::{IngestRequest, Refusal};
use crate::metrics::model::{float, Item};
use crate::storage::Service;

/// How long a client is asked to wait when the queue is full.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Largest JSON body a call takes (artifacts are streamed, whatever their size).
pub const MAX_BODY_BYTES: usize = 2 << 20;
/// Most bytes of a too large body read (and dropped) before answering 413.
pub const MAX_DRAINED_BYTES: u64 = 64 << 20;

/// Who the sidecar's runs belong to. Invariant: fixed for the sidecar's lifetime.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    pub experiment: String,
    pub worker: String,
    pub start_ms: i64,
}

/// The endpoint's side of the channel to the pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestHandle {
    pub(super) tx: mpsc::Sender<IngestRequest>,
    pub(super) run: Arc<RunIdentity>,
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

/// Why items were not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotQueued {
    /// The queue is full, or the pipeline is busy: try again later.
    Busy,
    /// The pipeline has ended (the sidecar is finishing).
    Closed,
    /// Storing failed.
    Failed(String),
}

impl IngestHandle {
    /// Hands items to the pipeline and waits until they are durable in the queue.
    pub async fn queue(&self, items: Vec<Item>) -> Result<(), NotQueued> {
        if items.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        if self.tx.send(IngestRequest { items, reply }).await.is_err() {
            return Err(NotQueued::Closed);
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Refusal::Full)) => Err(NotQueued::Busy),
            Ok(Err(Refusal::Failed(message))) => Err(NotQueued::Failed(message)),
            Err(_) => Err(NotQueued::Closed),
        }
    }

    /// The sidecar's identity.
    pub fn identity(&self) -> &RunIdentity {
        &self.run
    }
}

/// Where the endpoint keeps artifacts in storage. Invariant: `prefix` is the worker's folder
/// (`<storage path>/<experiment>/<worker>`) and `shown` its redacted URL without a trailing `/`.
#[derive(Clone)]
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    pub service: Service,
    pub prefix: Path,
    pub shown: String,
}

/// The state every route reads. Invariant: `registry` and `spool` live in the sidecar's state
/// folder and belong to `handle`'s worker.
pub struct State {
    pub handle: IngestHandle,
    /// Opened at the first call that finds room, if the state folder had none at start.
    pub registry: Mutex<Slot>,
    pub spool: Spool,
    pub storage: Storage,
    /// Wakes the uploader when the spool got a file.
    pub uploaded: Arc<Notify>,
}

/// The routes' shared state.
pub type Shared = Arc<State>;

/// A request as the routes see it: its URI, headers, body, and the path's parameters (decoded)
/// that its route captured.
pub struct Req {
    pub uri: axum::http::Uri,
    pub headers: axum::http::HeaderMap,
    pub body: Body,
    pub params: Vec<String>,
}

impl Req {
    /// The query string as `T`; MLflow's invalid-parameter error when it does not fit.
    pub fn query<T: serde::de::DeserializeOwned>(&self) -> Result<T, Fail> {
        axum::extract::Query::<T>::try_from_uri(&self.uri)
            .map(|q| q.0)
            .map_err(|e| invalid(format!("bad query string: {}", e.body_text())))
    }

    /// Path parameter `i` (empty when the route has fewer).
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }
}

/// Work on the registry, boxed: one blocking task type serves every route.
type Job = Box<dyn FnOnce(&mut Registry) -> Result<Box<dyn Any + Send>, RegistryError> + Send>;

impl State {
    /// Runs `f` on the registry off the async threads; a failure is MLflow's internal error, but
    /// a full disk is MLflow's retryable 503 (clients try again, as when the queue is full).
    pub async fn registry<T, F>(self: &Arc<Self>, f: F) -> Result<T, Fail>
    where
        F: FnOnce(&mut Registry) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        let job: Job = Box::new(move |r| f(r).map(|v| Box::new(v) as Box<dyn Any + Send>));
        let value = self.run(job).await?;
        // The job above boxed exactly a `T`.
        value
            .downcast::<T>()
            .map(|v| *v)
            .map_err(|_| internal("a registry job returned another type"))
    }

    async fn run(self: &Arc<Self>, job: Job) -> Result<Box<dyn Any + Send>, Fail> {
        let state = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            // A panic while the registry was held leaves a connection that is still usable.
            let mut registry = state
                .registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            job(registry.get()?)
        })
        .await;
        match done {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.full => Err(unavailable()),
            Ok(Err(e)) => Err(internal(e.to_string())),
            Err(e) => Err(internal(format!("a registry task failed: {e}"))),
        }
    }

    /// Queues items, answering MLflow's 503 (with `Retry-After`) when the pipeline cannot take
    /// them now.
    pub async fn queue(&self, items: Vec<Item>) -> Result<(), Fail> {
        match self.handle.queue(items).await {
            Ok(()) => Ok(()),
            Err(NotQueued::Busy | NotQueued::Closed) => Err(unavailable()),
            Err(NotQueued::Failed(message)) => Err(internal(message)),
        }
    }
}

/// MLflow's error answer before it becomes a response (small, so that `Result`s holding it stay
/// cheap to pass around). Invariant: `code` is one of MLflow's error codes.
#[derive(Debug)]
pub struct Fail {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After`, in seconds.
    retry_after: Option<u64>,
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_code: self.code.into(),
            message: self.message,
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        r
    }
}

/// A handler's answer: its response, or MLflow's error for early returns with `?`.
pub type Answer = Result<Response, Fail>;

/// Turns a handler's `Result` into its response.
pub fn answer(a: Answer) -> Response {
    a.unwrap_or_else(IntoResponse::into_response)
}

/// MLflow's error answer.
pub fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Fail {
    Fail {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

/// 400 `INVALID_PARAMETER_VALUE`.
pub fn invalid(message: impl Into<String>) -> Fail {
    error(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
}

/// 404 `RESOURCE_DOES_NOT_EXIST`.
pub fn not_found(message: impl Into<String>) -> Fail {
    error(StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", message)
}

/// 500 `INTERNAL_ERROR`.
pub fn internal(message: impl Into<String>) -> Fail {
    error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
}

/// 503 `TEMPORARILY_UNAVAILABLE` with `Retry-After`.
pub fn unavailable() -> Fail {
    Fail {
        retry_after: Some(RETRY_AFTER.as_secs()),
        ..error(
            StatusCode::SERVICE_UNAVAILABLE,
            "TEMPORARILY_UNAVAILABLE",
            "the sidecar is not accepting metrics now; retry later",
        )
    }
}

/// A JSON answer.
pub fn ok(value: &impl Serialize) -> Response {
    axum::Json(value).into_response()
}

/// MLflow's empty answer, `{}`.
pub fn empty() -> Response {
    axum::Json(serde_json::json!({})).into_response()
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`], accepting bare NaN/Infinity; an empty body
/// is `{}`. A larger body is MLflow's JSON error with status 413, answered once the client has
/// sent it (up to [`MAX_DRAINED_BYTES`], so that it hears the answer), never held in memory.
pub async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Fail> {
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0u64;
    let mut over = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("cannot read the request body: {e}")))?;
        seen += chunk.len() as u64;
        if over || buf.len() + chunk.len() > MAX_BODY_BYTES {
            over = true;
            buf = Vec::new();
            if seen > MAX_DRAINED_BYTES {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if over {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST_LIMIT_EXCEEDED",
            format!(
                "the request body is over {MAX_BODY_BYTES} bytes, the most this endpoint takes \
                 for a call; send fewer items per call (MLflow allows 1 MB per runs/log-batch)"
            ),
        ));
    }
    parse_json(&Bytes::from(buf)).map_err(invalid)
}

/// Parses a JSON body, accepting bare NaN/Infinity (Python's `json` writes them).
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the body is not UTF-8".to_string())?;
    let text = float::quote_non_finite(if text.trim().is_empty() { "{}" } else { text });
    serde_json::from_str(&text).map_err(|e| format!("malformed request body: {e}"))
}
