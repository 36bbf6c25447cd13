//! What the metastore learns about the run itself: the code revision `periscope localize`
//! recorded, and the final status from the main container's exit-code file.
//!
//! Params (Submarine's `param` table, one value per key and worker) for each localized source
//! folder `F` in `DEST/.periscope/localized.json`:
//! `code.F.source` (the redacted URL), `code.F.revision` (commit SHA, archive sha256, or ETag
//! digest) and `code.F.revision_kind` (`commit`, `sha256`, `etags`).
//! This module only reads files and builds items.

use std::path::Path;

use super::model::{Item, Param, RunStatus};
use crate::localize::record::{Record, RevisionKind};

/// Params describing the code localized into `code_dir` (none when nothing was recorded).
pub fn code_params(code_dir: &Path, worker: &str) -> Vec<Item> {
    let record = Record::load(code_dir);
    let mut items = Vec::new();
    for entry in &record.sources {
        let kind = match entry.revision.kind {
            RevisionKind::Commit => "commit",
            RevisionKind::Sha256 => "sha256",
            RevisionKind::Etags => "etags",
        };
        for (name, value) in [
            ("source", entry.url.as_str()),
            ("revision", entry.revision.id.as_str()),
            ("revision_kind", kind),
        ] {
            items.push(Item::Param(Param {
                key: format!("code.{}.{name}", entry.into),
                value: value.to_string(),
                worker: worker.to_string(),
            }));
        }
    }
    items
}

/// The run's final status from an exit-code file (`0` → Succeeded, anything else → Failed);
/// `None` when the file is missing or unreadable.
pub fn status_from_exit_file(path: &Path) -> Option<RunStatus> {
    let text = std::fs::read_to_string(path).ok()?;
    let code: i64 = text.trim().parse().ok()?;
    Some(if code == 0 {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_submarine_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("exit-code");
        assert_eq!(status_from_exit_file(&f), None);
        std::fs::write(&f, "0\n").unwrap();
        assert_eq!(status_from_exit_file(&f), Some(RunStatus::Succeeded));
        std::fs::write(&f, "137\n").unwrap();
        assert_eq!(status_from_exit_file(&f), Some(RunStatus::Failed));
    }
}
