//! What a completed save tells the metastore, as items of the metrics pipeline.
//!
//! Submarine and SQLite get a param per save and worker: `artifacts.<n>` = the save's URL (params
//! are immutable, and a save number is never reused, so this fits). MLflow gets a tag
//! `periscope.artifacts.<worker>.<n>` = `<URL> sha256:<manifest digest>`; sinks without tags
//! ignore it. This module only builds items.

use super::push::PushOutcome;
use crate::metrics::model::{Item, Param, Tag};

/// The param key of save `n`.
pub fn param_key(n: u64) -> String {
    format!("artifacts.{n}")
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
        Item::Tag(Tag {
            key: format!("periscope.artifacts.{worker}.{}", outcome.save),
            value: format!("{} sha256:{}", outcome.url, outcome.manifest_sha256),
        }),
    ]
}
