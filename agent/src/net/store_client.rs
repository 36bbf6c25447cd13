//! The HTTP client of every object store: reqwest as object_store builds it from its options,
//! with the proxy rule of [`super::proxy`], and one short line for each failed try that
//! object_store retries, naming the host (object_store's own lines name none).
//!
//! object_store takes one proxy for all URLs, so a client is built per scheme (`http`, `https`),
//! each with the proxy the rule names for it, and each request goes through the one for its
//! scheme. This module never changes a request or a response.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;

use super::proxy::Proxies;

/// Builds object_store's HTTP clients by the proxy rule. Invariant: `attempts` is the number of
/// tries object_store makes per request (its retries plus one), used only in messages.
#[derive(Debug)]
pub struct Connector {
    proxies: Proxies,
    attempts: u32,
}

impl Connector {
    pub fn new(proxies: Proxies, attempts: u32) -> Connector {
        Connector {
            proxies,
            attempts: attempts.max(1),
        }
    }
}

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client_for = |scheme: &str| {
            let options = match self.proxies.for_scheme(scheme) {
                Some(proxy) => options
                    .clone()
                    .with_proxy_url(proxy)
                    .with_proxy_excludes(self.proxies.no_proxy()),
                // Nothing in the environment names a proxy for this scheme, so reqwest's own
                // reading of it finds none either.
                None => options.clone(),
            };
            ReqwestConnector::default().connect(&options)
        };
        Ok(HttpClient::new(Service {
            http: client_for("http")?,
            https: client_for("https")?,
            proxies: self.proxies.clone(),
            attempts: self.attempts,
            failures: Mutex::new(HashMap::new()),
        }))
    }
}

/// One client per scheme, and the failures in a row per host. Invariant: a host's count is reset
/// by its first success.
#[derive(Debug)]
struct Service {
    http: HttpClient,
    https: HttpClient,
    proxies: Proxies,
    attempts: u32,
    failures: Mutex<HashMap<String, u32>>,
}

impl Service {
    /// Counts one more failure of `host`; returns how many in a row.
    fn failed(&self, host: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(host.to_string()).or_default();
        *count += 1;
        *count
    }

    fn succeeded(&self, host: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(host);
    }

    /// Says what went wrong with one try, in one line, when object_store will try again (the
    /// last failure is the error object_store returns, which the caller reports).
    fn report(&self, uri: &str, result: &Result<HttpResponse, HttpError>) {
        let host = self
            .proxies
            .host_to_resolve(uri)
            .unwrap_or_else(|| "the store".into());
        let retried_status = |status: http::StatusCode| {
            status.is_server_error()
                || status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::REQUEST_TIMEOUT
        };
        match result {
            Ok(response) if retried_status(response.status()) => {
                let n = self.failed(&host);
                if n < self.attempts {
                    tracing::warn!(
                        "`{host}` answered HTTP {} (try {n} of {})",
                        response.status().as_u16(),
                        self.attempts
                    );
                }
            }
            Ok(_) => self.succeeded(&host),
            Err(e) if super::is_dns_failure(e) => {
                let n = self.failed(&host);
                if n < self.attempts {
                    super::warn_unresolved(&host, n, self.attempts, None);
                }
            }
            Err(e) if e.kind() != HttpErrorKind::Unknown && e.kind() != HttpErrorKind::Decode => {
                let n = self.failed(&host);
                if n < self.attempts {
                    tracing::warn!(
                        "cannot reach `{host}`: {} (try {n} of {})",
                        innermost(e),
                        self.attempts
                    );
                }
            }
            Err(_) => {}
        }
    }
}

/// The deepest cause of an error: what actually went wrong, without the layers' prefixes.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

impl HttpService for Service {
    // What `#[async_trait]` (object_store's declaration of the trait) expands to.
    fn call<'life0, 'async_trait>(
        &'life0 self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let uri = req.uri().to_string();
            let client = match req.uri().scheme_str() {
                Some("http") => &self.http,
                _ => &self.https,
            };
            let result = client.execute(req).await;
            self.report(&uri, &result);
            result
        })
    }
}
