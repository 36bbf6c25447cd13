//! The HTTP side of the MLflow sink: one reqwest client with the tracking server's credentials
//! and TLS settings, JSON calls to `<server>/api/2.0/mlflow/<call>`, and what each failure means
//! for the queue ([`ApiError::transient`], the server's `Retry-After`).
//!
//! This module owns the credentials (they go into request headers only) and must never put one
//! into an error, a log line or a URL it shows. It decides nothing about runs or items.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header;
use reqwest::{Client, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::MlflowUrl;
use crate::error::ErrorClass;
use crate::metrics::sink::SinkError;
use crate::net::{ca, reqwest_text};
use crate::redact::Secret;

/// How the sidecar proves who it is to the tracking server (MLflow's standard variables).
/// Invariant: every credential is a [`Secret`], so no formatting shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `MLFLOW_TRACKING_TOKEN`: `Authorization: Bearer …`.
    Bearer(Secret),
    /// `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`: HTTP Basic.
    Basic {
        user: String,
        password: Secret,
    },
}

/// Transport settings. Invariant: `timeout >= connect_timeout > 0`.
#[derive(Debug, Clone)]
pub struct Transport {
    pub auth: Auth,
    /// `MLFLOW_TRACKING_SERVER_CERT_PATH`: a PEM bundle trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// `MLFLOW_TRACKING_INSECURE_TLS=true`: no certificate verification.
    pub insecure: bool,
    pub connect_timeout: Duration,
    /// A whole call, answer included: a server that hangs fails the call, which is retried.
    pub timeout: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            auth: Auth::None,
            ca_file: None,
            insecure: false,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        }
    }
}

/// A failed call. Invariant: no variant holds a credential (the server's own message is kept:
/// MLflow's error messages describe the request, never its headers).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the MLflow tracking server {server} ({call}): {detail}")]
    Unreachable {
        server: String,
        call: &'static str,
        detail: String,
    },
    #[error(
        "the MLflow tracking server {server} answered {call} with HTTP {status} {code}: {message}"
    )]
    Status {
        server: String,
        call: &'static str,
        status: u16,
        /// MLflow's `error_code` (`RESOURCE_DOES_NOT_EXIST`, …), empty when the body had none.
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the MLflow tracking server {server} sent an unexpected answer to {call}: {detail}")]
    Decode {
        server: String,
        call: &'static str,
        detail: String,
    },
    #[error("cannot set up the HTTP client for the MLflow tracking server: {detail}")]
    Setup { detail: String },
}

impl ApiError {
    /// True when the same call may succeed later: connection failures, timeouts, 429, 5xx, and
    /// answers we cannot read (a proxy's error page while the server restarts).
    pub fn transient(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } | ApiError::Decode { .. } => true,
            ApiError::Status { status, .. } => {
                *status == 429 || *status == 408 || (500..600).contains(status)
            }
            ApiError::Setup { .. } => false,
        }
    }

    /// MLflow's `error_code`, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Status { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }

    /// How long the server asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            ApiError::Unreachable { .. } | ApiError::Decode { .. } => ErrorClass::Network,
            ApiError::Status {
                status: 401 | 403, ..
            } => ErrorClass::Auth,
            ApiError::Status { status: 404, .. } => ErrorClass::NotFound,
            ApiError::Status { .. } if self.transient() => ErrorClass::Network,
            // The server refused what we sent (a bad name, a deleted experiment or run).
            ApiError::Status { .. } => ErrorClass::Integrity,
            ApiError::Setup { .. } => ErrorClass::Usage,
        }
    }
}

impl From<ApiError> for SinkError {
    fn from(e: ApiError) -> SinkError {
        SinkError {
            class: e.class(),
            transient: e.transient(),
            hint: None,
            message: e.to_string(),
        }
    }
}

/// A connection to one tracking server. Cheap to clone (reqwest's client is shared).
/// Invariant: `api` is the server's `…/api/2.0/mlflow/` and `shown` holds no credential.
#[derive(Clone)]
pub struct ApiClient {
    http: Client,
    auth: Auth,
    /// `<server>/api/2.0/mlflow/`, ending with a slash so calls join under it.
    api: url::Url,
    /// The server, redacted, for messages.
    shown: String,
}

impl ApiClient {
    /// Builds the client: rustls with the system roots plus the optional CA bundle.
    pub fn new(server: &MlflowUrl, transport: &Transport) -> Result<ApiClient, ApiError> {
        crate::net::tls::ensure_provider();
        let mut builder = Client::builder()
            .connect_timeout(transport.connect_timeout)
            .timeout(transport.timeout)
            .user_agent(concat!("periscope/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &transport.ca_file {
            let certs = ca::certs(path).map_err(|detail| ApiError::Setup {
                detail: format!(
                    "MLFLOW_TRACKING_SERVER_CERT_PATH {}: {detail}",
                    path.display()
                ),
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        if transport.insecure {
            tracing::warn!(
                "TLS certificate verification of the MLflow server is off (MLFLOW_TRACKING_INSECURE_TLS)"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| ApiError::Setup {
            detail: reqwest_text(&e),
        })?;
        Ok(ApiClient {
            http,
            auth: transport.auth.clone(),
            api: server.api_base(),
            shown: server.to_string(),
        })
    }

    /// The server, redacted.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `POST <call>` with a JSON body already encoded (callers measure batch sizes).
    pub async fn post<T: DeserializeOwned>(
        &self,
        call: &'static str,
        body: Vec<u8>,
    ) -> Result<T, ApiError> {
        let request = self
            .http
            .post(self.url(call)?)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(call, request).await
    }

    /// `POST <call>` with `body` encoded as JSON.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        call: &'static str,
        body: &impl Serialize,
    ) -> Result<T, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Setup {
            detail: format!("cannot encode the {call} request: {e}"),
        })?;
        self.post(call, bytes).await
    }

    /// `GET <call>?query`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        call: &'static str,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let mut url = self.url(call)?;
        url.query_pairs_mut().extend_pairs(query);
        let request = self.http.get(url);
        self.send(call, request).await
    }

    /// `PUT` `len` bytes streamed from `body` into the server's artifact proxy, at
    /// `<server>/api/2.0/mlflow-artifacts/artifacts/<segments…>`; the call may take `timeout`
    /// (large files take longer than an API call).
    pub async fn put_artifact(
        &self,
        segments: &[&str],
        body: reqwest::Body,
        len: u64,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        const CALL: &str = "mlflow-artifacts upload";
        let mut url = self
            .api
            .join("../mlflow-artifacts/artifacts/")
            .map_err(|e| ApiError::Setup {
                detail: format!("cannot form the URL of {CALL}: {e}"),
            })?;
        url.path_segments_mut()
            .map_err(|()| ApiError::Setup {
                detail: format!("cannot form the URL of {CALL}"),
            })?
            .pop_if_empty()
            .extend(segments);
        let request = self
            .http
            .put(url)
            .timeout(timeout)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .body(body);
        self.send::<serde_json::Value>(CALL, request)
            .await
            .map(drop)
    }

    fn url(&self, call: &'static str) -> Result<url::Url, ApiError> {
        self.api.join(call).map_err(|e| ApiError::Setup {
            detail: format!("cannot form the URL of {call}: {e}"),
        })
    }

    /// Adds the credentials. reqwest marks these headers sensitive, so they never appear in its
    /// Debug output.
    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
            Auth::Basic { user, password } => request.basic_auth(user, Some(password.expose())),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        call: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let unreachable = |e: reqwest::Error| ApiError::Unreachable {
            server: self.shown.clone(),
            call,
            detail: reqwest_text(&e),
        };
        let response = self.authorize(request).send().await.map_err(unreachable)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::retry::parse_retry_after);
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(status_error(&self.shown, call, status, &bytes, retry_after));
        }
        // MLflow answers `{}` for calls that return nothing; an empty body means the same.
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|e| ApiError::Decode {
            server: self.shown.clone(),
            call,
            detail: e.to_string(),
        })
    }
}

/// The error for a non-2xx answer, from MLflow's `{"error_code", "message"}` body when there is
/// one (a proxy's HTML page is shortened to its first line).
fn status_error(
    server: &str,
    call: &'static str,
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ApiError {
    let (code, message) = match serde_json::from_slice::<super::api::ErrorBody>(body) {
        Ok(b) => (b.error_code, b.message),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let first = text.lines().next().unwrap_or_default();
            (String::new(), first.chars().take(200).collect())
        }
    };
    ApiError::Status {
        server: server.to_string(),
        call,
        status: status.as_u16(),
        code,
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorization(auth: Auth) -> Option<reqwest::header::HeaderValue> {
        let server = MlflowUrl::parse("http://127.0.0.1:1").unwrap();
        let transport = Transport {
            auth,
            ..Transport::default()
        };
        let client = ApiClient::new(&server, &transport).unwrap();
        let request = client
            .authorize(client.http.get(client.url("runs/get").unwrap()))
            .build()
            .unwrap();
        request.headers().get(header::AUTHORIZATION).cloned()
    }

    #[test]
    fn credentials_go_into_a_sensitive_authorization_header() {
        assert_eq!(authorization(Auth::None), None);
        let bearer = authorization(Auth::Bearer(Secret::new("tok"))).unwrap();
        assert_eq!(bearer, "Bearer tok");
        assert!(bearer.is_sensitive());
        let basic = authorization(Auth::Basic {
            user: "user".into(),
            password: Secret::new("pass"),
        })
        .unwrap();
        assert_eq!(basic, "Basic dXNlcjpwYXNz");
        assert!(basic.is_sensitive());
    }

    #[test]
    fn a_missing_ca_bundle_is_a_setup_error_naming_the_variable() {
        let server = MlflowUrl::parse("https://127.0.0.1:1").unwrap();
        let transport = Transport {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Transport::default()
        };
        let Err(e) = ApiClient::new(&server, &transport) else {
            panic!("a missing CA bundle was accepted");
        };
        assert!(!e.transient());
        let text = e.to_string();
        assert!(
            text.contains("MLFLOW_TRACKING_SERVER_CERT_PATH /nonexistent/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn status_codes_map_to_transient_or_permanent() {
        let e = |status: u16| {
            status_error(
                "http://127.0.0.1:1",
                "runs/log-batch",
                StatusCode::from_u16(status).unwrap(),
                br#"{"error_code":"X","message":"m"}"#,
                None,
            )
        };
        for s in [429, 500, 502, 503, 504] {
            assert!(e(s).transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409] {
            assert!(!e(s).transient(), "{s}");
        }
        let sink: SinkError = e(401).into();
        assert_eq!(sink.class, ErrorClass::Auth);
        let sink: SinkError = e(400).into();
        assert_eq!(sink.class, ErrorClass::Integrity);
        assert!(sink.message.contains("HTTP 400 X: m"), "{}", sink.message);
        let html = status_error(
            "s",
            "runs/get",
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway\n<body>",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(html.code(), None);
        assert_eq!(html.retry_after(), Some(Duration::from_secs(3)));
        assert!(html.to_string().ends_with("<html>bad gateway"), "{html}");
    }
}
