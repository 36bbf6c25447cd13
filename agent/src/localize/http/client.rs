//! Building the HTTP client for archive downloads: rustls, extra CAs from `--ca-file`, timeouts,
//! and the proxy rule every client follows.
//!
//! This module owns the TLS and timeout settings of archive downloads; it never sends a request.

use reqwest::Client;

use super::HttpError;
use crate::localize::FetchContext;

/// A client for one localize run. TLS verification stays on unless `GIT_SSL_NO_VERIFY` asked
/// otherwise; `--ca-file` adds to the system roots rather than replacing them, so a private CA
/// and public servers work in the same run.
pub(super) fn build(ctx: &FetchContext) -> Result<Client, HttpError> {
    crate::net::tls::ensure_provider();
    let mut builder = Client::builder()
        .connect_timeout(ctx.connect_timeout)
        // Applies per read: a stalled body fails after this much silence and is resumed.
        .read_timeout(ctx.idle_timeout)
        .user_agent(concat!("periscope/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &ctx.tls.ca_file {
        let certs = crate::net::ca::certs(path).map_err(|detail| HttpError::CaFile {
            path: path.clone(),
            detail,
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    if ctx.tls.insecure {
        tracing::warn!("TLS certificate verification is off (GIT_SSL_NO_VERIFY)");
        builder = builder.danger_accept_invalid_certs(true);
    }
    let builder = crate::net::proxy::Proxies::from_env()?.apply(builder);
    builder.build().map_err(|e| HttpError::Client {
        detail: crate::net::reqwest_text(&e),
    })
}
