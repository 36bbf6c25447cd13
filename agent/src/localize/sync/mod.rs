//! Continuous sync for long-lived pods (git-sync's main mode): localize, then check the sources
//! again every period, publishing each new revision as a symlink swap
//! ([`Publish::Link`](super::Publish::Link)) so a reader never sees a mix and one that holds the
//! old revision keeps it, running the [`hook`]s after each new revision, and serving
//! [`health`]'s `/healthz`.
//!
//! The first pass must succeed (a pod must not start on no code); after it, a failed pass is
//! reported, `/healthz` says so, and the revision in place stays until a later pass succeeds. A
//! stop request (SIGTERM) ends the sync between passes or in the middle of one: a pass cut short
//! publishes nothing, since publishing is one rename. This module never prints; the caller is
//! told of each pass's outcomes.

pub mod health;
pub mod hook;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{localize_as, FetchContext, LocalizeError, Outcome, ProgressSink, Publish, SourceSpec};
use crate::error::{Classify, ErrorClass};
use crate::lifecycle::Stop;
use health::SyncHealth;
use hook::Hooks;

/// How a sync runs. Invariant: `period` is non-zero.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Time between the end of one pass and the start of the next.
    pub period: Duration,
    pub hooks: Hooks,
    /// Where `/healthz` is served, if anywhere.
    pub health: Option<SocketAddr>,
}

/// A sync that could not run.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The first pass failed: there is nothing to serve.
    #[error(transparent)]
    First(#[from] LocalizeError),
    #[error("cannot serve /healthz on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot build the HTTP client for the webhook: {0}")]
    Client(#[from] super::http::HttpError),
}

impl Classify for SyncError {
    fn class(&self) -> ErrorClass {
        match self {
            SyncError::First(e) => e.class(),
            SyncError::Listen { .. } => ErrorClass::Usage,
            SyncError::Client(e) => e.class(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SyncError::First(e) => e.hint(),
            SyncError::Listen { .. } => {
                Some("choose a free address for --http-bind (e.g. 127.0.0.1:0)".into())
            }
            SyncError::Client(e) => e.hint(),
        }
    }
}

/// Syncs `specs` into `dest` until `stop` asks to end. `on_pass` is told of every pass that
/// succeeded (what each source became, and whether it was the first pass); the returned address
/// is where `/healthz` is served, reported before the first pass through `on_listen`.
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    specs: &[SourceSpec],
    dest: &Path,
    ctx: &FetchContext,
    settings: &SyncSettings,
    sink: Arc<dyn ProgressSink>,
    mut stop: Stop,
    on_listen: impl FnOnce(SocketAddr),
    mut on_pass: impl FnMut(&[Outcome], bool),
) -> Result<(), SyncError> {
    let health = Arc::new(SyncHealth::default());
    if let Some(addr) = settings.health {
        let listen = |error| SyncError::Listen { addr, error };
        let socket = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
        let bound = socket.local_addr().map_err(listen)?;
        let app = health::router(health.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(socket, app).await {
                tracing::error!(error = %e, "the /healthz endpoint stopped");
            }
        });
        on_listen(bound);
    }
    let client = super::http::client(ctx)?;
    let mut first = true;
    loop {
        // One pass and its hooks; a stop request ends either.
        let work = async {
            let outcomes = localize_as(specs, dest, ctx, sink.clone(), Publish::Link).await?;
            health.succeeded();
            on_pass(&outcomes, first);
            for o in outcomes.iter().filter(|o| !o.skipped) {
                let folder = dest.join(&o.entry.into);
                let failures = settings
                    .hooks
                    .run(&o.entry.revision.id, &folder, &client, &ctx.retry)
                    .await;
                for failure in failures {
                    tracing::warn!(source = %o.entry.url, "{failure}");
                }
            }
            Ok::<_, LocalizeError>(())
        };
        let result = tokio::select! {
            r = work => r,
            _ = stop.next() => {
                tracing::info!("stop requested; the sync ends (nothing half-made is published)");
                return Ok(());
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if first => return Err(e.into()),
            Err(e) => {
                tracing::warn!(
                    "the check failed; the revision in place stays, next check in {}s: {}",
                    settings.period.as_secs_f64(),
                    crate::error::chain(&e)
                );
                health.failed(crate::error::chain(&e));
            }
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(settings.period) => {}
            _ = stop.next() => {
                tracing::info!("stop requested; the sync ends");
                return Ok(());
            }
        }
    }
}
