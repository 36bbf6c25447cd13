//! A script run's stored files into its run's artifacts on the tracking server, so the server's
//! own API (and UI) lists them.
//!
//! Where the run's `artifact_uri` goes:
//! * `mlflow-artifacts:` (the server proxies its artifact store, MLflow 3's default): the file is
//!   streamed from Periscope's storage into the server's artifact proxy (`PUT
//!   /api/2.0/mlflow-artifacts/artifacts/…`), as the mlflow client would upload it;
//! * the same bucket or container as Periscope's storage: a server-side copy;
//! * anything else (another bucket, the server's local disk): not written, with a warning; the
//!   file stays in Periscope's storage, where the metastore's records point.
//!
//! A logged model's files go under the model's name, where MLflow 2 kept them (so
//! `runs:/<run>/<name>` finds them on the server too). An upload made twice (a redelivered batch)
//! overwrites itself. This module never prints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use super::client::ApiClient;
use super::mirror::same_store;
use crate::artifacts::push::under;
use crate::error::{Classify, ErrorClass};
use crate::metrics::model::RunArtifact;
use crate::metrics::sink::SinkError;
use crate::redact::redact_url;
use crate::storage::{self, Service, StorageError, StoreOptions};

/// The sources the files are read from, opened once per stored folder.
#[derive(Default)]
pub struct Sources {
    opened: HashMap<String, (Arc<dyn ObjectStore>, Path, Service)>,
}

impl Sources {
    fn open(&mut self, folder: &str) -> Result<(Arc<dyn ObjectStore>, Path, Service), SinkError> {
        if let Some(found) = self.opened.get(folder) {
            return Ok(found.clone());
        }
        let url = Url::parse(folder).map_err(|e| {
            SinkError::permanent(
                ErrorClass::Usage,
                format!("the stored folder {} is not a URL: {e}", redact_url(folder)),
            )
        })?;
        let (store, path) = storage::open(&url, &StoreOptions::default())
            .map_err(|e| SinkError::permanent(e.class(), e.to_string()))?;
        let service = Service::from_scheme(url.scheme()).unwrap_or(Service::Local);
        self.opened
            .insert(folder.to_string(), (store.clone(), path.clone(), service));
        Ok((store, path, service))
    }
}

/// A failure the pipeline should retry (the store or the server did not answer), or one that
/// only this file suffers (it is skipped with a warning, so the queue goes on).
fn retry_or_skip(class: ErrorClass, message: String) -> Result<(), SinkError> {
    if class == ErrorClass::Network {
        Err(SinkError::transient(class, message))
    } else {
        tracing::warn!(%message, "a script run's file is not in the MLflow run's artifacts; it stays in Periscope's storage");
        Ok(())
    }
}

/// Puts `file` into the server run whose `artifact_uri` is given.
pub async fn deliver(
    client: &ApiClient,
    artifact_uri: &str,
    file: &RunArtifact,
    sources: &mut Sources,
) -> Result<(), SinkError> {
    let (store, folder, service) = sources.open(&file.folder)?;
    let from = under(&folder, &file.path);
    let dest = file.run_path();
    if let Some(proxied) = artifact_uri.strip_prefix("mlflow-artifacts:") {
        // `mlflow-artifacts:/<path>` or `mlflow-artifacts://host:port/<path>`: the path part.
        let path = match proxied.strip_prefix("//") {
            Some(rest) => rest.split_once('/').map_or("", |(_, p)| p),
            None => proxied.trim_start_matches('/'),
        };
        let got = match store.get(&from).await {
            Ok(got) => got,
            Err(e) => {
                let e = StorageError::request(service, from.to_string(), &e);
                return retry_or_skip(e.class(), format!("cannot read {}: {e}", file.url()));
            }
        };
        let size = got.meta.size;
        let body = reqwest::Body::wrap_stream(got.into_stream().map_err(std::io::Error::other));
        let segments: Vec<&str> = path
            .split('/')
            .chain(dest.split('/'))
            .filter(|s| !s.is_empty())
            .collect();
        // At least 5 MB/s: a slow server fails the call, which the queue retries.
        let timeout = Duration::from_secs(60) + Duration::from_secs(size / (5 << 20));
        return match client.put_artifact(&segments, body, size, timeout).await {
            Ok(()) => {
                tracing::debug!(path = %dest, bytes = size, "artifact put into the MLflow run");
                Ok(())
            }
            Err(e) if e.transient() => Err(SinkError::from(e)),
            Err(e) => retry_or_skip(ErrorClass::Integrity, e.to_string()),
        };
    }
    let Ok(target) = Url::parse(artifact_uri) else {
        return retry_or_skip(
            ErrorClass::Usage,
            format!(
                "the run's artifact_uri `{}` is not a URL",
                redact_url(artifact_uri)
            ),
        );
    };
    let source = Url::parse(&file.folder).ok();
    if !source.as_ref().is_some_and(|s| same_store(s, &target)) {
        return retry_or_skip(
            ErrorClass::Usage,
            format!(
                "the run's artifacts ({}) are neither proxied by the server nor in Periscope's \
                 bucket",
                redact_url(artifact_uri)
            ),
        );
    }
    let to = Path::from_url_path(target.path())
        .map(|p| under(&p, &dest))
        .map_err(|e| SinkError::permanent(ErrorClass::Usage, e.to_string()))?;
    match store.copy(&from, &to).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let e = StorageError::request(service, from.to_string(), &e);
            retry_or_skip(e.class(), format!("cannot copy {}: {e}", file.url()))
        }
    }
}
