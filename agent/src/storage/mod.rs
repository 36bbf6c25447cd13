//! Object store construction: the one place that turns a URL and the standard environment into an
//! [`ObjectStore`].
//!
//! Every reader and writer of blob storage (localize today, the sidecar's log and tf.events shipping
//! next) calls [`open`], so credentials, endpoints, retries, timeouts and TLS are configured the same
//! way everywhere, and every failure is classified the same way ([`classify`]).
//!
//! Configuration comes from the environment that each cloud's own tools read: `AWS_*` (including
//! `AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION` and web identity), `GOOGLE_*` (including
//! `GOOGLE_APPLICATION_CREDENTIALS`), `AZURE_STORAGE_*` (including the Azurite emulator). This module
//! never reads or writes objects, and never logs a credential: error texts pass through
//! [`scrub`] before they leave it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, Checksum};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{BackoffConfig, Certificate, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{Classify, ErrorClass};
use crate::redact::redact_url;
use crate::retry::RetryPolicy;

/// How to reach a store: retries, timeouts and extra CA certificates. Invariant: the durations are
/// non-zero (a zero timeout would fail every request).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The one retry policy, translated into object_store's retry configuration.
    pub retry: RetryPolicy,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Longest silence allowed while reading a response before the request counts as failed (and
    /// is retried). There is deliberately no limit on a whole request: large objects take long.
    pub idle_timeout: Duration,
    /// Extra CA certificates (PEM) to trust, for private endpoints.
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ca_file: None,
        }
    }
}

/// Which service a URL names. Invariant: decided only by the URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    S3,
    Gcs,
    Azure,
    Local,
}

impl Service {
    /// The service for a URL scheme, if it is an object store scheme.
    pub fn from_scheme(scheme: &str) -> Option<Service> {
        match scheme.to_ascii_lowercase().as_str() {
            "s3" | "s3a" => Some(Service::S3),
            "gs" => Some(Service::Gcs),
            "az" | "azure" | "abfs" | "abfss" | "adl" => Some(Service::Azure),
            "file" => Some(Service::Local),
            _ => None,
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::S3 => "S3",
            Service::Gcs => "Google Cloud Storage",
            Service::Azure => "Azure Blob Storage",
            Service::Local => "the local filesystem",
        }
    }

    /// The environment variables (by prefix) this service is configured from.
    fn env_prefix(self) -> &'static str {
        match self {
            Service::S3 => "AWS_",
            Service::Gcs => "GOOGLE_",
            Service::Azure => "AZURE_",
            Service::Local => "\0",
        }
    }

    /// Where a user should look when credentials are refused.
    fn credential_hint(self) -> &'static str {
        match self {
            Service::S3 => {
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the web identity token) and the bucket policy"
            }
            Service::Gcs => "check GOOGLE_APPLICATION_CREDENTIALS and the bucket's IAM bindings",
            Service::Azure => {
                "check AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or the SAS token)"
            }
            Service::Local => "check the file permissions",
        }
    }

    /// What to do when no credentials were configured and the cloud's metadata service, asked
    /// instead, did not give any.
    fn no_credentials_hint(self) -> &'static str {
        match self {
            Service::S3 => {
                "no AWS credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), or run where an instance role is served"
            }
            Service::Gcs => {
                "no Google credentials were found: set GOOGLE_APPLICATION_CREDENTIALS, or run where a service account is served"
            }
            Service::Azure => {
                "no Azure credentials were found: set AZURE_STORAGE_ACCOUNT_KEY (or a SAS token), or run where a managed identity is served"
            }
            Service::Local => "check the file permissions",
        }
    }

    fn endpoint_hint(self) -> &'static str {
        match self {
            Service::S3 => "check AWS_ENDPOINT_URL, AWS_REGION and the network path to the endpoint",
            Service::Gcs => "check the network path to Google Cloud Storage",
            Service::Azure => {
                "check the storage account endpoint (AZURITE_BLOB_STORAGE_URL for the emulator) and the network"
            }
            Service::Local => "check the path",
        }
    }
}

/// A store that could not be built or a request that failed. The message is already free of
/// credentials (see [`scrub`]).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL cannot name an object store location.
    #[error("`{shown}` is not a usable object store URL: {reason}")]
    BadUrl { shown: String, reason: String },
    /// The environment does not configure the service well enough to build a client.
    #[error("cannot configure {} for `{shown}`: {message}", service.name())]
    Config {
        service: Service,
        shown: String,
        message: String,
    },
    /// A request failed; `class` was decided by [`classify`].
    #[error("{} `{what}`: {message}", service.name())]
    Request {
        service: Service,
        class: ErrorClass,
        /// The object, prefix or URL the request was about.
        what: String,
        message: String,
    },
}

impl StorageError {
    /// Wraps an object_store failure about `what` (a key or redacted URL).
    pub fn request(service: Service, what: impl Into<String>, error: &object_store::Error) -> Self {
        StorageError::Request {
            service,
            class: classify(error),
            what: what.into(),
            message: scrub(&error_chain(error)),
        }
    }
}

impl Classify for StorageError {
    fn class(&self) -> ErrorClass {
        match self {
            StorageError::BadUrl { .. } | StorageError::Config { .. } => ErrorClass::Usage,
            StorageError::Request { class, .. } => *class,
        }
    }

    fn hint(&self) -> Option<String> {
        let text = match self {
            StorageError::BadUrl { .. } => {
                "object store URLs look like s3://bucket/prefix/, gs://bucket/key, az://container/key or file:///path"
                    .to_string()
            }
            StorageError::Config { service, .. } => {
                format!("set the standard environment: {}", service.credential_hint())
            }
            StorageError::Request {
                service,
                class,
                message,
                ..
            } => match class {
                ErrorClass::NotFound => {
                    "check the bucket and key; a prefix must end with `/`".to_string()
                }
                ErrorClass::Auth if asked_metadata_service(message) => {
                    service.no_credentials_hint().to_string()
                }
                ErrorClass::Auth => service.credential_hint().to_string(),
                ErrorClass::Network => service.endpoint_hint().to_string(),
                ErrorClass::Usage => service.endpoint_hint().to_string(),
                _ => return None,
            },
        };
        Some(text)
    }
}

/// Builds the store for `url` from the process environment, and returns it with the path inside
/// it that the URL names (the bucket or container is part of the store, not of the path).
pub fn open(url: &Url, opts: &StoreOptions) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    open_with_env(url, opts, &env)
}

/// A store as [`open`] builds it, with its low-level multipart interface where the service has
/// one. Invariant: `parts`, when present, is the same client as `objects`.
pub struct Opened {
    pub objects: Arc<dyn ObjectStore>,
    /// Multipart uploads whose id and part ids can be kept and continued by a later process
    /// (S3, GCS, Azure); `None` for the local filesystem.
    pub parts: Option<Arc<dyn MultipartStore>>,
    /// The path inside the store that the URL names.
    pub path: Path,
}

/// [`open`], also giving the store's multipart interface (for uploads that survive a restart).
pub fn open_parts(url: &Url, opts: &StoreOptions) -> Result<Opened, StorageError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    open_parts_with_env(url, opts, &env)
}

/// [`open`] with an explicit environment, so configuration can be tested without touching the
/// process environment.
pub fn open_with_env(
    url: &Url,
    opts: &StoreOptions,
    env: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
    let opened = open_parts_with_env(url, opts, env)?;
    Ok((opened.objects, opened.path))
}

/// One client as both interfaces.
fn both<T: ObjectStore + MultipartStore>(
    store: T,
) -> (Arc<dyn ObjectStore>, Option<Arc<dyn MultipartStore>>) {
    let store = Arc::new(store);
    (store.clone(), Some(store))
}

/// [`open_parts`] with an explicit environment.
pub fn open_parts_with_env(
    url: &Url,
    opts: &StoreOptions,
    env: &[(String, String)],
) -> Result<Opened, StorageError> {
    let shown = redact_url(url.as_str());
    let bad_url = |reason: String| StorageError::BadUrl {
        shown: shown.clone(),
        reason,
    };
    let service = Service::from_scheme(url.scheme()).ok_or_else(|| {
        bad_url(format!(
            "scheme `{}` is not one of s3, gs, az, azure, abfs, abfss, file",
            url.scheme()
        ))
    })?;
    if service != Service::Local && url.host_str().is_none_or(str::is_empty) {
        return Err(bad_url("it names no bucket or container".into()));
    }
    let path = Path::from_url_path(url.path()).map_err(|e| bad_url(e.to_string()))?;
    let config_error = |e: object_store::Error| StorageError::Config {
        service,
        shown: shown.clone(),
        message: scrub(&error_chain(&e)),
    };
    let settings: Vec<(String, &str)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(service.env_prefix()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    let setting = |name: &str| {
        settings
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    };
    let retry = retry_config(&opts.retry);
    let (objects, parts) = match service {
        Service::Local => (
            Arc::new(LocalFileSystem::new()) as Arc<dyn ObjectStore>,
            None,
        ),
        Service::S3 => {
            let mut builder = AmazonS3Builder::new();
            // Every upload carries its SHA-256 (x-amz-checksum-sha256), which the server checks
            // before it stores a byte: the digest is the one SigV4 computes anyway. Servers that
            // refuse the header are served by AWS_CHECKSUM_ALGORITHM=none.
            let checksum = setting("aws_checksum_algorithm");
            if checksum.is_none() {
                builder = builder.with_checksum_algorithm(Checksum::SHA256);
            }
            for (key, value) in &settings {
                if key == "aws_checksum_algorithm"
                    && (value.is_empty() || value.eq_ignore_ascii_case("none"))
                {
                    continue;
                }
                if let Ok(k) = key.parse() {
                    builder = builder.with_config(k, *value);
                }
            }
            let endpoint = setting("aws_endpoint_url").or(setting("aws_endpoint"));
            let http = endpoint.is_some_and(|e| e.starts_with("http://"));
            if endpoint.is_some() && setting("aws_virtual_hosted_style_request").is_none() {
                // S3-compatible servers (MinIO, Ceph, moto) are addressed by path, not by a
                // bucket subdomain that no DNS knows.
                builder = builder.with_virtual_hosted_style_request(false);
            }
            let client = client_options(opts, http).map_err(config_error)?;
            both(
                builder
                    .with_url(url.as_str())
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(config_error)?,
            )
        }
        Service::Gcs => {
            let mut builder = GoogleCloudStorageBuilder::new();
            for (key, value) in &settings {
                if let Ok(k) = key.parse() {
                    builder = builder.with_config(k, *value);
                }
            }
            let client = client_options(opts, false).map_err(config_error)?;
            both(
                builder
                    .with_url(url.as_str())
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(config_error)?,
            )
        }
        Service::Azure => {
            let mut builder = MicrosoftAzureBuilder::new();
            for (key, value) in &settings {
                if let Ok(k) = key.parse() {
                    builder = builder.with_config(k, *value);
                }
            }
            let emulator = setting("azure_storage_use_emulator")
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
            let http = emulator
                || setting("azure_storage_endpoint").is_some_and(|e| e.starts_with("http://"));
            let client = client_options(opts, http).map_err(config_error)?;
            both(
                builder
                    .with_url(url.as_str())
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(config_error)?,
            )
        }
    };
    tracing::debug!(url = %shown, service = service.name(), "object store configured");
    Ok(Opened {
        objects,
        parts,
        path,
    })
}

/// Our [`RetryPolicy`] in object_store's terms: the same number of tries and the same backoff
/// bounds, so `--retries` means one thing for every client.
pub fn retry_config(policy: &RetryPolicy) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: policy.base,
            max_backoff: policy.max_delay,
            base: 2.0,
        },
        max_retries: policy.attempts.saturating_sub(1) as usize,
        // Bounded by the attempts instead; a slow but working transfer must not be cut off.
        retry_timeout: Duration::from_secs(15 * 60),
    }
}

fn client_options(opts: &StoreOptions, allow_http: bool) -> object_store::Result<ClientOptions> {
    // Every cloud store builds its reqwest client from these options.
    crate::tls::ensure_provider();
    let mut client = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(opts.connect_timeout)
        .with_read_timeout(opts.idle_timeout)
        .with_timeout_disabled();
    if let Some(path) = &opts.ca_file {
        let pem = std::fs::read(path).map_err(|e| object_store::Error::Generic {
            store: "TLS",
            source: format!("cannot read CA file `{}`: {e}", path.display()).into(),
        })?;
        for cert in Certificate::from_pem_bundle(&pem)? {
            client = client.with_root_certificate(cert);
        }
    }
    Ok(client)
}

/// What kind of failure an object_store error is, as a user acts on it.
///
/// object_store keeps HTTP statuses of some requests (listing, for one) inside a private error
/// type, visible only in its message; the message is the only stable place left to read them from.
pub fn classify(error: &object_store::Error) -> ErrorClass {
    use object_store::Error as E;
    // Only a client without configured credentials asks the metadata service; that it failed
    // (unreachable off the cloud, most often) means the user gave no usable credentials.
    if asked_metadata_service(&error_chain(error)) {
        return ErrorClass::Auth;
    }
    match error {
        E::NotFound { .. } => return ErrorClass::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => return ErrorClass::Auth,
        E::InvalidPath { .. } => return ErrorClass::Integrity,
        E::UnknownConfigurationKey { .. } | E::NotSupported { .. } | E::NotImplemented { .. } => {
            return ErrorClass::Usage
        }
        E::Precondition { .. } | E::NotModified { .. } => return ErrorClass::Network,
        _ => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<object_store::client::HttpError>()
            .is_some()
        {
            return ErrorClass::Network;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => ErrorClass::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorClass::Io,
                _ => ErrorClass::Io,
            };
        }
        if let Some(status) = status_in(&e.to_string()) {
            return match status {
                404 => ErrorClass::NotFound,
                401 | 403 => ErrorClass::Auth,
                // A wrong region or a malformed request: the configuration is wrong.
                400 | 301 | 307 => ErrorClass::Usage,
                _ => ErrorClass::Network,
            };
        }
        source = e.source();
    }
    // The server answered something we could not use (an unexpected body, a redirect loop).
    ErrorClass::Network
}

/// Whether an error came from a request to a cloud metadata service for credentials: AWS
/// instance metadata (IMDSv2 token or role credentials), Azure managed identity, GCE metadata.
fn asked_metadata_service(message: &str) -> bool {
    const PATHS: [&str; 4] = [
        "/latest/api/token",
        "/latest/meta-data/iam/security-credentials",
        "/metadata/identity/oauth2/token",
        "/computeMetadata/v1/",
    ];
    PATHS.iter().any(|p| message.contains(p))
}

fn status_in(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

fn error_chain(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// Removes credentials from an error text: every URL in it goes through [`redact_url`] (which hides
/// query values such as SAS signatures), and the text is cut to one line.
pub fn scrub(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one_line
        .split(' ')
        .map(|word| {
            if word.contains("://") {
                redact_url(word)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn s3_with_endpoint_builds_and_names_the_prefix() {
        let e = env(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let (store, path) =
            open_with_env(&url("s3://bucket/models/v1/"), &StoreOptions::default(), &e).unwrap();
        assert_eq!(path.as_ref(), "models/v1");
        assert!(store.to_string().contains("bucket"), "{store}");
    }

    #[test]
    fn gs_urls_parse_and_configure_from_application_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("sa.json");
        std::fs::write(
            &creds,
            // The form `gcloud auth application-default login` writes; no key to parse.
            r#"{"type":"authorized_user","client_id":"id.apps.googleusercontent.com",
               "client_secret":"not-a-secret","refresh_token":"not-a-token"}"#,
        )
        .unwrap();
        let e = env(&[("GOOGLE_APPLICATION_CREDENTIALS", creds.to_str().unwrap())]);
        let (store, path) = open_with_env(
            &url("gs://ml-bucket/jobs/job-42/"),
            &StoreOptions::default(),
            &e,
        )
        .unwrap();
        assert_eq!(path.as_ref(), "jobs/job-42");
        assert!(store.to_string().contains("ml-bucket"), "{store}");

        let broken = dir.path().join("broken.json");
        std::fs::write(
            &broken,
            r#"{"type":"service_account","client_email":"x@p.iam.gserviceaccount.com",
               "private_key_id":"1","private_key":"not a key"}"#,
        )
        .unwrap();
        for bad in ["/nonexistent/sa.json", broken.to_str().unwrap()] {
            let e = env(&[("GOOGLE_APPLICATION_CREDENTIALS", bad)]);
            let err =
                open_with_env(&url("gs://ml-bucket/x"), &StoreOptions::default(), &e).unwrap_err();
            assert_eq!(err.class(), ErrorClass::Usage, "{bad}: {err}");
        }
    }

    #[test]
    fn azure_without_an_account_is_a_usage_error() {
        let err =
            open_with_env(&url("az://container/x"), &StoreOptions::default(), &[]).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Usage, "{err}");
        let e = env(&[("AZURE_STORAGE_USE_EMULATOR", "true")]);
        let (_, path) = open_with_env(
            &url("az://container/a/b.tar.gz"),
            &StoreOptions::default(),
            &e,
        )
        .unwrap();
        assert_eq!(path.as_ref(), "a/b.tar.gz");
    }

    #[test]
    fn local_paths_and_bad_urls() {
        let (_, path) =
            open_with_env(&url("file:///srv/data/"), &StoreOptions::default(), &[]).unwrap();
        assert_eq!(path.as_ref(), "srv/data");
        for bad in ["https://h.test/x", "s3:///nobucket"] {
            let err = open_with_env(&url(bad), &StoreOptions::default(), &[]).unwrap_err();
            assert_eq!(err.class(), ErrorClass::Usage, "{bad}: {err}");
        }
    }

    #[test]
    fn retry_config_follows_the_policy() {
        let c = retry_config(&RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        });
        assert_eq!(c.max_retries, 2);
        assert_eq!(c.backoff.init_backoff, Duration::from_millis(50));
        assert_eq!(c.backoff.max_backoff, Duration::from_secs(2));
    }

    #[test]
    fn classifies_statuses_hidden_in_messages() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_string().into(),
        };
        let cases = [
            (
                "Server returned non-2xx status code: 404 Not Found: NoSuchBucket",
                ErrorClass::NotFound,
            ),
            (
                "Server returned non-2xx status code: 403 Forbidden: ",
                ErrorClass::Auth,
            ),
            (
                "Server returned non-2xx status code: 503 Service Unavailable",
                ErrorClass::Network,
            ),
            (
                "Server returned non-2xx status code: 400 Bad Request",
                ErrorClass::Usage,
            ),
        ];
        for (msg, class) in cases {
            assert_eq!(classify(&generic(msg)), class, "{msg}");
        }
    }

    #[test]
    fn a_failed_metadata_credential_request_means_no_credentials() {
        let imds = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://169.254.169.254/latest/api/token in 2s, after 7 retries: HTTP error: error sending request".into(),
        };
        assert_eq!(classify(&imds), ErrorClass::Auth);
        let e = StorageError::request(Service::S3, "s3://b/k", &imds);
        let hint = e.hint().unwrap_or_default();
        assert!(hint.starts_with("no AWS credentials were found"), "{hint}");
        // A refused request to the bucket itself keeps the ordinary credentials hint.
        let denied = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 403 Forbidden: ".into(),
        };
        let e = StorageError::request(Service::S3, "s3://b/k", &denied);
        assert!(e
            .hint()
            .unwrap_or_default()
            .starts_with("check AWS_ACCESS_KEY_ID"));
    }

    #[test]
    fn scrub_hides_query_secrets() {
        let shown = scrub(
            "Error performing GET https://acct.blob.core.windows.net/c/k?sig=SECRET&sv=1 in 2s",
        );
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("acct.blob.core.windows.net"), "{shown}");
    }
}
