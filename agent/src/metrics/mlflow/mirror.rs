//! Copying a stored save into an MLflow run's artifacts, when the run's `artifact_uri` lies in the
//! same object store (same scheme and bucket or container) as the save.
//!
//! [`plan`] decides whether that can be done, and where: `<artifact_uri>/<worker>/<n>/`. It cannot
//! for MLflow's proxied `mlflow-artifacts:` URIs (only the tracking server writes those), for a
//! bucket other than the save's (Periscope holds credentials for its own storage only), and for
//! local paths (an `artifact_uri` on the tracking server's disk need not be this machine's).
//! [`copy`] then makes a server-side copy of every file the save's manifest names, and of the
//! manifest last, after checking the manifest against the digest recorded with the save. Copies
//! overwrite themselves, so a copy made twice (a redelivered batch) is harmless.
//!
//! The store is built by [`crate::storage`] from the same environment as the save's store. This
//! module never prints.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use url::Url;

use crate::artifacts::manifest::{sha256_hex, Manifest, MANIFEST_FILE};
use crate::artifacts::push::under;
use crate::artifacts::ArtifactsError;
use crate::redact::redact_url;
use crate::storage::{self, Service, StorageError, StoreOptions};

/// Why a save is not copied into the run's artifacts (it is still recorded as a tag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotMirrored {
    /// MLflow serves the run's artifacts itself (`mlflow-artifacts:`, the default of MLflow 2.x
    /// and 3.x servers): where it keeps them is its own setting.
    #[error("the tracking server proxies the run's artifacts ({uri})")]
    Proxied { uri: String },
    /// Another service, bucket or container than the save's.
    #[error("the run's artifacts ({uri}) are not in the save's bucket")]
    OtherStore { uri: String },
    /// A path on the tracking server's filesystem, or one on this machine: they cannot be told
    /// apart, so neither is written.
    #[error("the run's artifacts ({uri}) are a local path")]
    Local { uri: String },
    /// The save's URL or the `artifact_uri` cannot be read as an object store location.
    #[error("cannot use `{uri}`: {reason}")]
    Unusable { uri: String, reason: String },
}

/// Where a save goes. Invariant: `save` and `dest` are paths inside the bucket of `store_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The run's `artifact_uri`, from which the (one) store is built.
    store_url: Url,
    service: Service,
    /// The save folder.
    save: Path,
    /// `<artifact path>/<worker>/<n>`.
    dest: Path,
    /// The destination folder as a URL (redacted, ending in `/`), for messages.
    pub shown: String,
}

/// What [`copy`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

/// Decides whether save `n` of `worker`, stored at `save_url`, can be copied into the run whose
/// artifacts are at `artifact_uri`, and where.
pub fn plan(
    save_url: &str,
    artifact_uri: &str,
    worker: &str,
    n: u64,
) -> Result<Mirror, NotMirrored> {
    let shown = redact_url(artifact_uri);
    let unusable = |uri: &str, reason: String| NotMirrored::Unusable {
        uri: redact_url(uri),
        reason,
    };
    if artifact_uri.starts_with("mlflow-artifacts:") {
        return Err(NotMirrored::Proxied { uri: shown });
    }
    let artifacts = Url::parse(artifact_uri).map_err(|e| unusable(artifact_uri, e.to_string()))?;
    let save = Url::parse(save_url).map_err(|e| unusable(save_url, e.to_string()))?;
    let Some(service) = Service::from_scheme(artifacts.scheme()) else {
        return Err(NotMirrored::OtherStore { uri: shown });
    };
    if service == Service::Local {
        return Err(NotMirrored::Local { uri: shown });
    }
    if !same_store(&save, &artifacts) {
        return Err(NotMirrored::OtherStore { uri: shown });
    }
    let save_path =
        Path::from_url_path(save.path()).map_err(|e| unusable(save_url, e.to_string()))?;
    let dest = Path::from_url_path(artifacts.path())
        .map_err(|e| unusable(artifact_uri, e.to_string()))?
        .join(worker)
        .join(n.to_string());
    Ok(Mirror {
        shown: format!("{}/{worker}/{n}/", shown.trim_end_matches('/')),
        store_url: artifacts,
        service,
        save: save_path,
        dest,
    })
}

/// True when both URLs name the same bucket or container of the same service (a local path
/// never counts: the tracking server's disk need not be this machine's).
pub fn same_store(a: &Url, b: &Url) -> bool {
    let service = Service::from_scheme(a.scheme());
    service.is_some()
        && service != Some(Service::Local)
        && service == Service::from_scheme(b.scheme())
        && a.host_str().is_some_and(|h| !h.is_empty())
        && a.host_str() == b.host_str()
        // abfss://container@account…: the container is the user part.
        && a.username() == b.username()
}

/// Copies the save into the run's artifacts (see the module docs). `manifest_sha256` is the
/// digest recorded with the save: a manifest that no longer matches it is an integrity failure and
/// nothing is copied.
pub async fn copy(
    mirror: &Mirror,
    manifest_sha256: &str,
    options: &StoreOptions,
    concurrency: usize,
) -> Result<Copied, ArtifactsError> {
    let (store, _) = storage::open(&mirror.store_url, options)?;
    let request = |key: &Path, e: &object_store::Error| {
        StorageError::request(mirror.service, key.to_string(), e)
    };
    let manifest_key = mirror.save.clone().join(MANIFEST_FILE);
    let bytes = store
        .get(&manifest_key)
        .await
        .map_err(|e| request(&manifest_key, &e))?
        .bytes()
        .await
        .map_err(|e| request(&manifest_key, &e))?;
    let integrity = |reason: &str| ArtifactsError::Integrity {
        save: manifest_key.to_string(),
        reason: reason.to_string(),
    };
    if sha256_hex(&bytes) != manifest_sha256 {
        return Err(integrity(
            "its manifest is not the one recorded with the save",
        ));
    }
    let manifest = Manifest::parse(&bytes).ok_or_else(|| integrity("unreadable manifest"))?;
    // Owned keys, so the stream's futures borrow nothing from the manifest.
    let copies: Vec<(Path, Path)> = manifest
        .files
        .iter()
        .map(|f| {
            (
                under(&mirror.save, f.object()),
                under(&mirror.dest, f.object()),
            )
        })
        .collect();
    futures::stream::iter(copies)
        .map(|(from, to)| {
            let store = store.clone();
            async move { store.copy(&from, &to).await.map_err(|e| request(&from, &e)) }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    // Last, as in the save itself: a folder with a manifest holds every file it names.
    let to = mirror.dest.clone().join(MANIFEST_FILE);
    store
        .copy(&manifest_key, &to)
        .await
        .map_err(|e| request(&manifest_key, &e))?;
    Ok(Copied {
        files: manifest.files.len() as u64,
        bytes: manifest.bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "s3://models/jobs/exp-1/worker-0/artifacts/3/";

    #[test]
    fn a_run_in_the_saves_bucket_gets_a_folder_per_worker_and_save() {
        let m = plan(SAVE, "s3://models/mlflow/1/abc/artifacts", "worker-0", 3).unwrap();
        assert_eq!(m.save.as_ref(), "jobs/exp-1/worker-0/artifacts/3");
        assert_eq!(m.dest.as_ref(), "mlflow/1/abc/artifacts/worker-0/3");
        assert_eq!(m.shown, "s3://models/mlflow/1/abc/artifacts/worker-0/3/");
        assert_eq!(m.service, Service::S3);
        // s3a:// names the same buckets.
        assert!(plan(SAVE, "s3a://models/x/artifacts/", "worker-0", 3).is_ok());
        let m = plan(
            "gs://b/p/e/w/artifacts/1/",
            "gs://b/mlflow/2/r/artifacts",
            "w",
            1,
        )
        .unwrap();
        assert_eq!(m.dest.as_ref(), "mlflow/2/r/artifacts/w/1");
    }

    #[test]
    fn proxied_local_and_other_stores_are_not_written() {
        let not = |uri: &str| plan(SAVE, uri, "worker-0", 3).unwrap_err();
        assert!(matches!(
            not("mlflow-artifacts:/1/abc/artifacts"),
            NotMirrored::Proxied { .. }
        ));
        assert!(matches!(
            not("mlflow-artifacts://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc"),
            NotMirrored::Proxied { .. }
        ));
        assert!(matches!(
            not("s3://other-bucket/mlflow/1/abc/artifacts"),
            NotMirrored::OtherStore { .. }
        ));
        assert!(matches!(
            not("gs://models/mlflow/1/abc/artifacts"),
            NotMirrored::OtherStore { .. }
        ));
        assert!(matches!(
            not("wasbs://models@acct.blob.core.windows.net/mlflow"),
            NotMirrored::OtherStore { .. }
        ));
        assert!(matches!(
            not("file:///srv/mlruns/1/abc/artifacts"),
            NotMirrored::Local { .. }
        ));
        assert!(matches!(
            not("./mlruns/1/abc/artifacts"),
            NotMirrored::Unusable { .. }
        ));
        assert!(matches!(not(""), NotMirrored::Unusable { .. }));
        // A save on the local filesystem never matches a cloud artifact store.
        let e = plan(
            "file:///data/storage/e/w/artifacts/1/",
            "s3://models/mlflow",
            "w",
            1,
        )
        .unwrap_err();
        assert!(matches!(e, NotMirrored::OtherStore { .. }));
    }

    #[test]
    fn credentials_in_an_artifact_uri_are_not_shown() {
        let e = plan(SAVE, "s3://models/x?X-Amz-Signature=SECRET", "w", 1);
        let shown = match e {
            Ok(m) => m.shown,
            Err(e) => e.to_string(),
        };
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
