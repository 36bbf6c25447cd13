//! What earlier attempts of a worker stored under its `logs/` folder, so an attempt that took the
//! folder over (see [`crate::sidecar::claim`]) numbers its generations after theirs and never
//! writes over their chunks.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;

use super::key::{under, Entry, LOGS_DIR};

/// The key of a log path relative to a worker's `logs/` folder, as [`stored_generations`] names
/// it: each `/`-separated part of `logical` one encoded segment.
pub fn relative_key(logical: &str) -> String {
    under(&Path::default(), logical).as_ref().to_string()
}

/// The highest generation stored per log path (by [`relative_key`]) under `worker_prefix`.
pub async fn stored_generations(
    store: &Arc<dyn ObjectStore>,
    worker_prefix: &Path,
) -> Result<BTreeMap<String, u64>, object_store::Error> {
    let logs = worker_prefix.clone().join(LOGS_DIR);
    let depth = logs.parts().count();
    let listed: Vec<_> = match store.list(Some(&logs)).try_collect().await {
        Ok(listed) => listed,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut highest = BTreeMap::new();
    for meta in listed {
        let Some((log, entry)) = Entry::listed(&meta.location, depth) else {
            continue;
        };
        let g = highest.entry(log.join("/")).or_insert(0);
        *g = entry.generation().max(*g);
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::key::{chunk_key, link_key, log_folder, ChunkName};
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn the_highest_generation_of_each_path_is_found_by_the_name_a_new_file_gets() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let worker = Path::from("runs/exp/worker-0");
        let chunk = |generation, start, end| ChunkName {
            generation,
            start,
            end,
        };
        let keys = [
            chunk_key(&log_folder(&worker, "train.log"), chunk(1, 0, 10)),
            chunk_key(&log_folder(&worker, "train.log"), chunk(3, 0, 5)),
            link_key(&log_folder(&worker, "train.log.1"), 2),
            chunk_key(&log_folder(&worker, "sub dir/eval #1.log"), chunk(1, 0, 7)),
            // Not under logs/, or not a chunk: ignored.
            worker.clone().join("claim.json"),
            log_folder(&worker, "train.log").join("notes.txt"),
        ];
        for key in &keys {
            store.put(key, "x".into()).await.unwrap();
        }
        let found = stored_generations(&store, &worker).await.unwrap();
        let expected: BTreeMap<String, u64> = [
            (relative_key("train.log"), 3),
            (relative_key("train.log.1"), 2),
            (relative_key("sub dir/eval #1.log"), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(found, expected);
        let empty = stored_generations(&store, &Path::from("runs/exp/worker-9"))
            .await
            .unwrap();
        assert!(empty.is_empty());
    }
}
