//! `/healthz`, `/readyz` and Prometheus `/metrics` for the sidecar.
//!
//! Liveness means the shipping loop still completes passes (a stuck loop is restarted by the
//! kubelet); readiness means the first pass finished and the metastore takes writes (while it does
//! not, `/readyz` says why; metrics stay queued). `/metrics` is the Prometheus text format
//! written by hand: a few counters do not need a metrics library. This module only reads the
//! counters the pipelines keep; it never changes them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::claim::Token;
use crate::lifecycle::DrainFlag;
use crate::metrics::pipeline::DeliveryStatus;
use crate::retry::Outage;
use crate::ship::LogStats;

/// State the HTTP endpoints read. Invariant: `last_pass_ms` only grows.
#[derive(Debug, Default)]
pub struct Health {
    /// The first pass of every pipeline finished.
    pub ready: AtomicBool,
    /// Unix time in milliseconds of the end of the last pass.
    pub last_pass_ms: AtomicU64,
    /// Set once any loop of the sidecar drains.
    pub draining: DrainFlag,
    /// Bytes read but not yet stored, over all pipelines.
    pub backlog_bytes: AtomicU64,
}

impl Health {
    /// Records that a pass finished.
    pub fn pass_done(&self, backlog: u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_pass_ms.fetch_max(now, Ordering::Relaxed);
        self.backlog_bytes.store(backlog, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }
}

/// What `/metrics` reports.
#[derive(Clone)]
pub struct Observed {
    pub health: Arc<Health>,
    pub logs: Option<Arc<LogStats>>,
    /// Writes of the tf.events mirror's checkpoint, when event files are mirrored.
    pub tfevents: Option<Arc<Outage>>,
    /// How delivery to the metastore goes.
    pub metastore: Option<Arc<DeliveryStatus>>,
    /// The worker claim's token, which the state folder may have had no room for.
    pub claim_token: Option<Arc<Token>>,
    /// A loop that has not finished a pass for this long is reported as not live.
    pub stall_after: Duration,
}

/// The router serving the three endpoints.
pub fn router(observed: Observed) -> Router {
    let live = observed.clone();
    let ready = observed.clone();
    Router::new()
        .route("/healthz", get(move || healthz(live.clone())))
        .route("/readyz", get(move || readyz(ready.clone())))
        .route("/metrics", get(move || metrics(observed.clone())))
}

async fn healthz(o: Observed) -> impl IntoResponse {
    let last = o.health.last_pass_ms.load(Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    if last == 0 || now.saturating_sub(last) <= o.stall_after.as_millis() as u64 {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the shipping loop is stalled\n",
        )
    }
}

async fn readyz(o: Observed) -> impl IntoResponse {
    if !o.health.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string());
    }
    // Data waits meanwhile, nothing is dropped; saying why is what lets someone mend it.
    if let Some(error) = o.logs.as_ref().and_then(|l| l.checkpoint_failing()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cannot save the log checkpoint in the state folder (log uploads wait): {error}\n"
            ),
        );
    }
    if let Some(error) = o.tfevents.as_ref().and_then(|t| t.failing()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot save the tf.events checkpoint in the state folder (event file uploads wait): {error}\n"),
        );
    }
    if let Some(error) = o.metastore.as_ref().and_then(|m| m.queue_writes.failing()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot write the metrics queue in the state folder (metrics sources wait, ingest answers 503): {error}\n"),
        );
    }
    match o.metastore.as_ref().and_then(|m| m.failing()) {
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the metastore does not take writes (metrics stay queued): {error}\n"),
        ),
        None => (StatusCode::OK, "ready\n".to_string()),
    }
}

async fn metrics(o: Observed) -> impl IntoResponse {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "periscope_backlog_bytes",
        "gauge",
        "Bytes read but not yet stored.",
        o.health.backlog_bytes.load(Ordering::Relaxed),
    );
    metric(
        "periscope_draining",
        "gauge",
        "1 while the sidecar drains after a stop request.",
        u64::from(o.health.draining.is_set()),
    );
    if let Some(t) = &o.claim_token {
        metric(
            "periscope_claim_token_unkept",
            "gauge",
            "1 while the state folder has had no room for the worker claim's token (a restart \
             of this sidecar would be taken for another pod).",
            u64::from(!t.is_kept()),
        );
    }
    if let Some(m) = &o.metastore {
        metric(
            "periscope_metastore_failing",
            "gauge",
            "1 while the metastore does not take writes (metrics stay queued).",
            u64::from(m.failing().is_some()),
        );
        metric(
            "periscope_metastore_write_failures_total",
            "counter",
            "Failed metastore writes (each is retried).",
            m.failures(),
        );
        metric(
            "periscope_metrics_queue_write_failing",
            "gauge",
            "1 while the metrics queue cannot be written in the state folder (sources wait).",
            u64::from(m.queue_writes.failing().is_some()),
        );
        metric(
            "periscope_metrics_queue_write_failures_total",
            "counter",
            "Failed metrics queue writes (retried).",
            m.queue_writes.failures(),
        );
    }
    if let Some(t) = &o.tfevents {
        metric(
            "periscope_tfevents_checkpoint_failing",
            "gauge",
            "1 while the tf.events checkpoint cannot be saved (event file uploads wait).",
            u64::from(t.failing().is_some()),
        );
        metric(
            "periscope_tfevents_checkpoint_failures_total",
            "counter",
            "Failed tf.events checkpoint writes (retried).",
            t.failures(),
        );
    }
    if let Some(s) = &o.logs {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            "periscope_log_bytes_read_total",
            "counter",
            "Log bytes read.",
            get(&s.bytes_read),
        );
        metric(
            "periscope_log_bytes_shipped_total",
            "counter",
            "Log bytes stored.",
            get(&s.bytes_shipped),
        );
        metric(
            "periscope_log_chunks_shipped_total",
            "counter",
            "Log chunks stored.",
            get(&s.chunks_shipped),
        );
        metric(
            "periscope_log_upload_failures_total",
            "counter",
            "Failed log chunk uploads (retried).",
            get(&s.upload_failures),
        );
        metric(
            "periscope_log_bytes_lost_total",
            "counter",
            "Log bytes that could not be shipped.",
            get(&s.bytes_lost),
        );
        metric(
            "periscope_log_checkpoint_failing",
            "gauge",
            "1 while the log checkpoint cannot be saved (log uploads wait).",
            u64::from(s.checkpoint_failing().is_some()),
        );
        metric(
            "periscope_log_checkpoint_failures_total",
            "counter",
            "Failed log checkpoint writes (retried).",
            get(&s.checkpoint_failures),
        );
        let oldest = get(&s.oldest_unshipped_ms) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "# HELP periscope_log_oldest_unshipped_seconds Age of the oldest log byte read but not stored.\n\
             # TYPE periscope_log_oldest_unshipped_seconds gauge\nperiscope_log_oldest_unshipped_seconds {oldest}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
