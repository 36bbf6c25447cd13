//! The saves already stored under a worker's `artifacts/`: their numbers, and the latest
//! complete one (the highest number with a manifest); and claiming a new number.
//!
//! Two pushes to the same worker at once (`exec --artifacts` and `sidecar --artifacts` in one pod,
//! or a script's `artifacts push` beside them) must not write into the same save. Each push claims
//! its number by creating `<n>/.claim` with a create-only write (S3 `If-None-Match`, Azure and GCS
//! preconditions, a no-clobber link on the local filesystem), and reads it back; a number someone
//! else claimed first is passed over.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::manifest::{Manifest, CLAIM_FILE, MANIFEST_FILE};
use crate::storage::{Service, StorageError};

/// What is stored. Invariant: `latest`, when set, is a complete save whose number is at most
/// `highest`.
#[derive(Debug, Default)]
pub struct Saves {
    /// The highest save number present, complete or not.
    pub highest: Option<u64>,
    /// The latest complete save and its manifest bytes.
    pub latest: Option<(u64, Manifest, Vec<u8>)>,
    /// Every number present, ascending.
    pub numbers: Vec<u64>,
}

impl Saves {
    /// Whether save `n` has a manifest (only the latest is checked: earlier ones do not matter).
    pub fn is_complete(&self, n: u64) -> bool {
        self.latest.as_ref().is_some_and(|(l, _, _)| *l == n)
    }
}

/// Lists the saves under `base` (the `…/artifacts` prefix).
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    base: &Path,
) -> Result<Saves, StorageError> {
    let listed = store
        .list_with_delimiter(Some(base))
        .await
        .map_err(|e| StorageError::request(service, base.to_string(), &e))?;
    let mut numbers: Vec<u64> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    let mut saves = Saves {
        highest: numbers.last().copied(),
        latest: None,
        numbers: numbers.clone(),
    };
    for n in numbers.into_iter().rev() {
        if let Some((m, bytes)) = manifest(store, service, base, n).await? {
            saves.latest = Some((n, m, bytes));
            break;
        }
    }
    Ok(saves)
}

/// Claims save `n` for the push holding `token`: `true` when the claim is ours (made now, or by
/// this push before it was interrupted), `false` when another push claimed `n`.
pub async fn claim(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    base: &Path,
    n: u64,
    token: &str,
) -> Result<bool, StorageError> {
    let key = base.clone().join(n.to_string()).join(CLAIM_FILE);
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(&key, PutPayload::from(token.as_bytes().to_vec()), create)
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(object_store::Error::NotImplemented { .. }) => {
            // A store without create-only writes: the read-back below still catches most races.
            store
                .put(&key, PutPayload::from(token.as_bytes().to_vec()))
                .await
                .map_err(|e| StorageError::request(service, key.to_string(), &e))?;
        }
        Err(e) => return Err(StorageError::request(service, key.to_string(), &e)),
    }
    // Read back: the claim is ours only if it holds our token (a server that ignored the
    // precondition let the last writer win).
    let held = store
        .get(&key)
        .await
        .map_err(|e| StorageError::request(service, key.to_string(), &e))?
        .bytes()
        .await
        .map_err(|e| StorageError::request(service, key.to_string(), &e))?;
    Ok(held.as_ref() == token.as_bytes())
}

/// The manifest of save `n`, if it has a readable one.
pub async fn manifest(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    base: &Path,
    n: u64,
) -> Result<Option<(Manifest, Vec<u8>)>, StorageError> {
    let key = base.clone().join(n.to_string()).join(MANIFEST_FILE);
    match store.get(&key).await {
        Ok(got) => {
            let bytes = got
                .bytes()
                .await
                .map_err(|e| StorageError::request(service, key.to_string(), &e))?;
            let parsed = Manifest::parse(&bytes);
            if parsed.is_none() {
                tracing::warn!(key = %key, "ignoring a manifest that is not a Periscope artifacts manifest");
            }
            Ok(parsed.map(|m| (m, bytes.to_vec())))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(StorageError::request(service, key.to_string(), &e)),
    }
}
