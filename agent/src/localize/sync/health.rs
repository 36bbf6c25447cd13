//! `/healthz` of a continuous sync: 200 once a pass has succeeded and while the last one did; 503
//! before the first, and after a failed one, saying why. A sync whose source is unreachable keeps
//! serving the revision it has; the endpoint tells the kubelet (or a person) that it is stale.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// What the last pass of the sync loop found. Invariant: `error` is the last pass's failure, or
/// `None` after a pass that succeeded.
#[derive(Debug, Default)]
pub struct SyncHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    passes: u64,
    error: Option<String>,
}

impl SyncHealth {
    /// A pass succeeded.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        state.passes += 1;
        state.error = None;
    }

    /// A pass failed with `error` (the revision in place stays).
    pub fn failed(&self, error: String) {
        let mut state = self.lock();
        state.passes += 1;
        state.error = Some(error);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status and body `/healthz` answers with.
    pub fn answer(&self) -> (StatusCode, String) {
        let state = self.lock();
        match (&state.error, state.passes) {
            (_, 0) => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
            (None, _) => (StatusCode::OK, "ok\n".into()),
            (Some(e), _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the last check failed (the revision in place stays): {e}\n"),
            ),
        }
    }
}

/// The router serving `/healthz`.
pub fn router(health: Arc<SyncHealth>) -> Router {
    Router::new().route("/healthz", get(move || async move { health.answer() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_after_a_good_pass_and_unhealthy_after_a_failed_one() {
        let h = SyncHealth::default();
        assert_eq!(h.answer().0, StatusCode::SERVICE_UNAVAILABLE);
        h.succeeded();
        assert_eq!(h.answer().0, StatusCode::OK);
        h.failed("cannot resolve host `x`".into());
        let (status, body) = h.answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("cannot resolve host"), "{body}");
        h.succeeded();
        assert_eq!(h.answer().0, StatusCode::OK);
    }
}
