//! `--keep-saves N`: deleting complete saves older than the newest `N` complete ones.
//!
//! Only complete saves (with a manifest) are counted and deleted; an unfinished save may be one a
//! push is writing or will continue, and is left alone. The newest complete save is never deleted
//! (`N` is at least 1), nor one that a restore is reading (it holds a fresh lease, see
//! [`super::restore`]). A save is first marked (`.pruning/N` beside the saves), then its manifest
//! is deleted, so from that moment no reader takes it for complete, then its other objects, the
//! mark last: a prune cut short (the job ended meanwhile, `kill -9`) leaves a marked save, which
//! the next prune finishes. This module never prints.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::manifest::MANIFEST_FILE;
use super::restore::leased;
use crate::storage::{Service, StorageError};

/// How long a read lease keeps its save: a restore that takes longer than this (or one killed
/// without removing its lease) no longer protects it.
pub const LEASE_TTL: Duration = Duration::from_secs(6 * 3600);

/// The folder beside the saves that holds the mark `N` of a save `N` being deleted. Its name is
/// not a number, so it is never taken for a save.
const PRUNING_DIR: &str = ".pruning";

/// The mark of save `n` under `base` while it is being deleted.
fn mark_of(base: &Path, n: u64) -> Path {
    base.clone().join(PRUNING_DIR).join(n.to_string())
}

/// Deletes the complete saves under `base` older than the newest `keep` complete ones, except
/// those being read, and finishes deleting any save an earlier prune marked; returns the numbers
/// deleted, ascending.
pub async fn prune(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    base: &Path,
    keep: NonZeroUsize,
) -> Result<Vec<u64>, StorageError> {
    let request =
        |key: &Path, e: object_store::Error| StorageError::request(service, key.to_string(), &e);
    let listed = store
        .list_with_delimiter(Some(base))
        .await
        .map_err(|e| request(base, e))?;
    let mut numbers: Vec<u64> = (listed.common_prefixes.iter())
        .filter_map(|p| p.filename()?.parse().ok())
        .collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    let mut complete = 0usize;
    let mut old = Vec::new();
    let mut marked = Vec::new();
    for n in numbers {
        let manifest = base.clone().join(n.to_string()).join(MANIFEST_FILE);
        match store.head(&manifest).await {
            Ok(_) => complete += 1,
            Err(object_store::Error::NotFound { .. }) => {
                let mark = mark_of(base, n);
                match store.head(&mark).await {
                    Ok(_) => marked.push(n),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(request(&mark, e)),
                }
                continue;
            }
            Err(e) => return Err(request(&manifest, e)),
        }
        if complete > keep.get() {
            old.push(n);
        }
    }
    if old.is_empty() && marked.is_empty() {
        return Ok(old);
    }
    let reading = match old.is_empty() {
        true => Default::default(),
        false => leased(store, service, base, LEASE_TTL).await?,
    };
    // A marked save has no manifest left, so nobody reads it: it is finished whatever its lease.
    let mut deleted = Vec::new();
    for n in old.into_iter().rev() {
        if reading.contains(&n) {
            tracing::info!(save = n, "not pruning a save that is being read");
            continue;
        }
        delete_save(store, service, base, n).await?;
        deleted.push(n);
    }
    for n in marked {
        tracing::info!(
            save = n,
            "finishing the deletion of a save an earlier prune began"
        );
        delete_save(store, service, base, n).await?;
        deleted.push(n);
    }
    deleted.sort_unstable();
    if !deleted.is_empty() {
        tracing::info!(deleted = ?deleted, keep = keep.get(), "pruned older saves");
    }
    Ok(deleted)
}

/// Deletes save `n` under `base`: marks it, deletes its manifest, then everything else in it,
/// and the mark last.
async fn delete_save(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    base: &Path,
    n: u64,
) -> Result<(), StorageError> {
    let request =
        |key: &Path, e: object_store::Error| StorageError::request(service, key.to_string(), &e);
    let prefix = &base.clone().join(n.to_string());
    let mark = mark_of(base, n);
    (store.put(&mark, PutPayload::from_static(b"")).await).map_err(|e| request(&mark, e))?;
    let manifest = prefix.clone().join(MANIFEST_FILE);
    match store.delete(&manifest).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(request(&manifest, e)),
    }
    let keys: Vec<Path> = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(|e| request(prefix, e))?;
    futures::stream::iter(keys)
        .map(|key| async move {
            match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(request(&key, e)),
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    match store.delete(&mark).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(request(&mark, e)),
    }
    crate::storage::remove_empty_folders(service, &base.clone().join(PRUNING_DIR));
    crate::storage::remove_empty_folders(service, prefix);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    /// Every key under `base`.
    async fn keys(store: &Arc<dyn ObjectStore>, base: &Path) -> Vec<String> {
        (store.list(Some(base)).map_ok(|m| m.location.to_string()))
            .try_collect()
            .await
            .unwrap()
    }

    async fn put(store: &Arc<dyn ObjectStore>, key: &str) {
        store
            .put(&Path::from(key), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn keeps_the_newest_complete_saves_unfinished_ones_and_those_being_read() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for n in 1..=5 {
            put(&store, &format!("w/artifacts/{n}/model.bin")).await;
            if n != 4 {
                put(&store, &format!("w/artifacts/{n}/manifest.json")).await;
            }
        }
        // Save 1 is being read.
        put(&store, "w/artifacts/.reading/1/abc").await;
        let base = Path::from("w/artifacts");
        let keep = NonZeroUsize::new(2).unwrap();
        let deleted = prune(&store, Service::Local, &base, keep).await.unwrap();
        assert_eq!(deleted, [2]);
        let left = keys(&store, &base).await;
        assert!(
            left.iter().all(|k| !k.starts_with("w/artifacts/2/")),
            "{left:?}"
        );
        for kept in [
            "1/manifest.json",
            "3/manifest.json",
            "4/model.bin",
            "5/manifest.json",
        ] {
            assert!(
                left.contains(&format!("w/artifacts/{kept}")),
                "{kept}: {left:?}"
            );
        }
        // Once save 1 is no longer read, it goes too; the newest complete save always stays.
        store
            .delete(&Path::from("w/artifacts/.reading/1/abc"))
            .await
            .unwrap();
        let one = NonZeroUsize::new(1).unwrap();
        assert_eq!(
            prune(&store, Service::Local, &base, one).await.unwrap(),
            [1, 3]
        );
        assert!(store
            .head(&Path::from("w/artifacts/5/manifest.json"))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_save_whose_prune_was_cut_after_its_manifest_went_is_finished_by_the_next() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for n in 1..=3 {
            put(&store, &format!("w/artifacts/{n}/model.bin")).await;
            put(&store, &format!("w/artifacts/{n}/manifest.json")).await;
        }
        // What a prune of save 1 cut after its manifest was deleted leaves.
        put(&store, "w/artifacts/.pruning/1").await;
        store
            .delete(&Path::from("w/artifacts/1/manifest.json"))
            .await
            .unwrap();
        // An unfinished save (a push writing it) is left alone.
        put(&store, "w/artifacts/4/model.bin").await;
        let base = Path::from("w/artifacts");
        let keep = NonZeroUsize::new(2).unwrap();
        assert_eq!(
            prune(&store, Service::Local, &base, keep).await.unwrap(),
            [1]
        );
        let left = keys(&store, &base).await;
        assert!(
            left.iter().all(|k| !k.starts_with("w/artifacts/1/")),
            "{left:?}"
        );
        assert!(left.contains(&"w/artifacts/4/model.bin".to_string()));
        // A whole prune leaves no mark behind.
        let one = NonZeroUsize::new(1).unwrap();
        assert_eq!(
            prune(&store, Service::Local, &base, one).await.unwrap(),
            [2]
        );
        let left = keys(&store, &base).await;
        assert!(left.iter().all(|k| !k.contains(".pruning")), "{left:?}");
    }
}
