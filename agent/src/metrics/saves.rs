//! What a completed artifacts save tells the metastore, as items of the metrics pipeline.
//!
//! Two items per new save: the param `artifacts.<n>` = the save's URL, which Submarine and SQLite
//! store per worker (params are immutable, and a save number is never reused, so this fits), and
//! an [`ArtifactsSave`] that MLflow turns into the tag [`mlflow_tag`] and, where its artifact
//! store is the same object store, into the run's artifacts (see [`super::mlflow::mirror`]).
//! Sinks without tags or artifacts ignore the second. This module only builds items.

use super::model::{ArtifactsSave, Item, Param, Tag};
use crate::artifacts::PushOutcome;

/// The param key of save `n`.
pub fn param_key(n: u64) -> String {
    format!("artifacts.{n}")
}

/// MLflow's tag for a save: `periscope.artifacts.<worker>.<n>` = `<URL> sha256:<manifest
/// digest>`. Per worker, since workers may share one run (`MLFLOW_RUN_ID`).
pub fn mlflow_tag(save: &ArtifactsSave) -> Tag {
    Tag {
        key: format!("periscope.artifacts.{}.{}", save.worker, save.save),
        value: format!("{} sha256:{}", save.url, save.manifest_sha256),
    }
}

/// The items for one push (none when nothing new was saved).
pub fn items(outcome: &PushOutcome, worker: &str) -> Vec<Item> {
    if outcome.unchanged {
        return Vec::new();
    }
    vec![
        Item::Param(Param {
            key: param_key(outcome.save),
            value: outcome.url.clone(),
            worker: worker.to_string(),
        }),
        Item::Artifacts(ArtifactsSave {
            worker: worker.to_string(),
            save: outcome.save,
            url: outcome.url.clone(),
            manifest_sha256: outcome.manifest_sha256.clone(),
        }),
    ]
}
