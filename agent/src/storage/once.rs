//! Create-only writes: the first writer of a key wins, and everyone learns what it wrote.
//!
//! Claims (a save number, a worker's folder) are made this way: S3 `If-None-Match: *`, Azure and
//! GCS preconditions, a no-clobber link on the local filesystem. A store without create-only
//! writes gets a read, then a write only when the key is absent; the read-back tells the caller
//! who won either way (a server that ignored the precondition let the last writer win).

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{Service, StorageError};

/// Writes `bytes` at `key` unless something is there already; returns what `key` holds now.
pub async fn put_once(
    store: &Arc<dyn ObjectStore>,
    service: Service,
    key: &Path,
    bytes: &[u8],
) -> Result<bytes::Bytes, StorageError> {
    let failed = |e: &object_store::Error| StorageError::request(service, key.to_string(), e);
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(key, PutPayload::from(bytes.to_vec()), create)
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(object_store::Error::NotImplemented { .. }) => match store.head(key).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                store
                    .put(key, PutPayload::from(bytes.to_vec()))
                    .await
                    .map_err(|e| failed(&e))?;
            }
            Err(e) => return Err(failed(&e)),
        },
        Err(e) => return Err(failed(&e)),
    }
    store
        .get(key)
        .await
        .map_err(|e| failed(&e))?
        .bytes()
        .await
        .map_err(|e| failed(&e))
}
