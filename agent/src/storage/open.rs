//! Building a store from a URL and the standard environment of its service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::azure::{AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{BackoffConfig, Certificate, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use super::error::{scrub, StorageError};
use super::service::Service;
use crate::net::proxy::Proxies;
use crate::net::store_client::Connector;
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

/// The service a URL names and the path inside its store, or why the URL names no store
/// location (an unknown scheme, no bucket or container, a path that is not one). Checks the URL
/// alone, so a command can refuse a mistyped URL before it does any work.
pub fn locate(url: &Url) -> Result<(Service, Path), StorageError> {
    let bad_url = |reason: String| StorageError::BadUrl {
        shown: redact_url(url.as_str()),
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
    Ok((service, path))
}

/// [`open_parts`] with an explicit environment.
pub fn open_parts_with_env(
    url: &Url,
    opts: &StoreOptions,
    env: &[(String, String)],
) -> Result<Opened, StorageError> {
    let shown = redact_url(url.as_str());
    let (service, path) = locate(url)?;
    let config_error = |e: object_store::Error| StorageError::Config {
        service,
        shown: shown.clone(),
        message: scrub(&crate::error::chain(&e)),
    };
    let proxies =
        Proxies::from_vars(|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .map_err(|e| StorageError::Config {
                service,
                shown: shown.clone(),
                message: e.to_string(),
            })?;
    let connector = || Connector::new(proxies.clone(), opts.retry.attempts);
    let env = ServiceEnv::of(service, env);
    let (objects, parts) = match service {
        Service::Local => (
            Arc::new(LocalFileSystem::new()) as Arc<dyn ObjectStore>,
            None,
        ),
        Service::S3 => both(s3(url, opts, &env, connector()).map_err(config_error)?),
        Service::Gcs => both(gcs(url, opts, &env, connector()).map_err(config_error)?),
        Service::Azure => both(azure(url, opts, &env, connector()).map_err(config_error)?),
    };
    tracing::debug!(url = %shown, service = service.name(), "object store configured");
    Ok(Opened {
        objects,
        parts,
        path,
    })
}

/// The settings one service reads from the environment: its variables (`AWS_*`, `GOOGLE_*`,
/// `AZURE_*`, and the few others its own tools read, such as `STORAGE_EMULATOR_HOST`) with
/// lowercased names, as object_store's config keys spell them.
struct ServiceEnv<'a> {
    settings: Vec<(String, &'a str)>,
}

impl<'a> ServiceEnv<'a> {
    fn of(service: Service, env: &'a [(String, String)]) -> ServiceEnv<'a> {
        let settings = env
            .iter()
            .filter(|(k, _)| {
                k.starts_with(service.env_prefix()) || service.env_extra().contains(&k.as_str())
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
            .collect();
        ServiceEnv { settings }
    }

    /// A setting's value, unless it is unset or empty.
    fn get(&self, name: &str) -> Option<&'a str> {
        self.settings
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    }

    /// The settings whose names parse as `K` (object_store's config keys for the service);
    /// the others are not object_store's and are left alone.
    fn keys<K: std::str::FromStr>(&self) -> impl Iterator<Item = (K, &'a str)> + '_ {
        self.settings
            .iter()
            .filter_map(|(k, v)| k.parse().ok().map(|key| (key, *v)))
    }
}

/// S3 and S3-compatible servers (`AWS_ENDPOINT_URL`).
fn s3(
    url: &Url,
    opts: &StoreOptions,
    env: &ServiceEnv,
    connector: Connector,
) -> object_store::Result<AmazonS3> {
    let mut builder = AmazonS3Builder::new();
    // Every upload carries its SHA-256 (x-amz-checksum-sha256), which the server checks before it
    // stores a byte: the digest is the one SigV4 computes anyway. Servers that refuse the header
    // are served by AWS_CHECKSUM_ALGORITHM=none.
    let checksum = env.get("aws_checksum_algorithm");
    if checksum.is_none() {
        builder = builder.with_checksum_algorithm(Checksum::SHA256);
    }
    for (key, value) in env.keys::<AmazonS3ConfigKey>() {
        if key == AmazonS3ConfigKey::Checksum
            && (value.is_empty() || value.eq_ignore_ascii_case("none"))
        {
            continue;
        }
        builder = builder.with_config(key, value);
    }
    let endpoint = env.get("aws_endpoint_url").or(env.get("aws_endpoint"));
    let http = endpoint.is_some_and(|e| e.starts_with("http://"));
    if endpoint.is_some() && env.get("aws_virtual_hosted_style_request").is_none() {
        // S3-compatible servers (MinIO, Ceph, moto) are addressed by path, not by a bucket
        // subdomain that no DNS knows.
        builder = builder.with_virtual_hosted_style_request(false);
    }
    builder
        .with_url(url.as_str())
        .with_client_options(client_options(opts, http)?)
        .with_http_connector(connector)
        .with_retry(retry_config(&opts.retry))
        .build()
}

/// Google Cloud Storage (`GOOGLE_APPLICATION_CREDENTIALS` and the other `GOOGLE_*` settings).
///
/// `STORAGE_EMULATOR_HOST` (`host:port` or a URL) points the client at an emulator as it does
/// Google's own client libraries: requests go there, unsigned, so no credentials are needed, and
/// plain http is allowed. An explicit `GOOGLE_BASE_URL` still wins over it.
fn gcs(
    url: &Url,
    opts: &StoreOptions,
    env: &ServiceEnv,
    connector: Connector,
) -> object_store::Result<GoogleCloudStorage> {
    let mut builder = GoogleCloudStorageBuilder::new();
    let emulator = env.get("storage_emulator_host").map(emulator_url);
    if let Some(base) = &emulator {
        builder = builder.with_base_url(base).with_skip_signature(true);
    }
    for (key, value) in env.keys::<GoogleConfigKey>() {
        builder = builder.with_config(key, value);
    }
    let base = env.get("google_base_url").or(emulator.as_deref());
    let http = base.is_some_and(|b| b.starts_with("http://"));
    builder
        .with_url(url.as_str())
        .with_client_options(client_options(opts, http)?)
        .with_http_connector(connector)
        .with_retry(retry_config(&opts.retry))
        .build()
}

/// The base URL for `STORAGE_EMULATOR_HOST`: as Google's libraries read it, `host:port` means
/// plain http; a value with a scheme is taken as it is.
fn emulator_url(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}

/// Azure Blob Storage (`AZURE_STORAGE_*`, including the Azurite emulator).
fn azure(
    url: &Url,
    opts: &StoreOptions,
    env: &ServiceEnv,
    connector: Connector,
) -> object_store::Result<MicrosoftAzure> {
    let mut builder = MicrosoftAzureBuilder::new();
    for (key, value) in env.keys::<AzureConfigKey>() {
        builder = builder.with_config(key, value);
    }
    let emulator = env
        .get("azure_storage_use_emulator")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    let http = emulator
        || env
            .get("azure_storage_endpoint")
            .is_some_and(|e| e.starts_with("http://"));
    builder
        .with_url(url.as_str())
        .with_client_options(client_options(opts, http)?)
        .with_http_connector(connector)
        .with_retry(retry_config(&opts.retry))
        .build()
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
    crate::net::tls::ensure_provider();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Classify, ErrorClass};

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
    fn the_gcs_emulator_needs_no_credentials_and_may_be_plain_http() {
        assert_eq!(emulator_url("127.0.0.1:4443"), "http://127.0.0.1:4443");
        assert_eq!(
            emulator_url("https://gcs.test:8443/"),
            "https://gcs.test:8443"
        );
        let e = env(&[("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")]);
        let (_, path) =
            open_with_env(&url("gs://ml/jobs/a/"), &StoreOptions::default(), &e).unwrap();
        assert_eq!(path.as_ref(), "jobs/a");
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
}
