//! What the metastore learns about the run itself: the code revision `periscope localize`
//! recorded, and the final status from the main container's exit-code file.
//!
//! Params (Submarine's `param` table, one value per key and worker) for each localized source
//! folder `F` in `DEST/.periscope/localized.json`:
//! `code.F.source` (the redacted URL), `code.F.revision` (commit SHA, archive sha256, or ETag
//! digest) and `code.F.revision_kind` (`commit`, `sha256`, `etags`). The first git source also
//! becomes MLflow's standard tags `mlflow.source.git.commit` and `mlflow.source.git.repoURL`
//! (sinks without tags ignore them).
//! This module only reads files and builds items.

use std::path::Path;

use super::model::{Item, Param, RunStatus, Tag};
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

/// MLflow's source tags for the first localized source whose revision is a commit (MLflow has
/// room for one repository); none when no git source was recorded.
pub fn code_tags(code_dir: &Path) -> Vec<Item> {
    let record = Record::load(code_dir);
    let Some(entry) = record
        .sources
        .iter()
        .find(|e| e.revision.kind == RevisionKind::Commit)
    else {
        return Vec::new();
    };
    // The record holds redacted URLs already; redacting again costs nothing and keeps a
    // hand-edited record from leaking a credential into the metastore.
    let url = crate::redact::redact_url(&entry.url);
    // The URL may carry Periscope's own options (`#ref=…`); the repository is what precedes them.
    let repo = url.split('#').next().unwrap_or_default().to_string();
    [
        ("mlflow.source.git.commit", entry.revision.id.clone()),
        ("mlflow.source.git.repoURL", repo),
    ]
    .into_iter()
    .map(|(key, value)| {
        Item::Tag(Tag {
            key: key.into(),
            value,
        })
    })
    .collect()
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
    use crate::localize::record::{Entry, Revision};

    #[test]
    fn the_first_commit_becomes_mlflows_source_tags() {
        let dir = tempfile::tempdir().unwrap();
        assert!(code_tags(dir.path()).is_empty());
        let mut record = Record::default();
        for (into, kind, id) in [
            ("data", RevisionKind::Sha256, "ab"),
            ("training-job", RevisionKind::Commit, "0123abcd"),
        ] {
            record.upsert(Entry {
                into: into.into(),
                url: "https://***@git.example/team/model.git#ref=main".into(),
                kind: "git".into(),
                revision: Revision {
                    kind,
                    id: id.into(),
                },
                fingerprint: None,
                bytes: 1,
                files: 1,
                seconds: 0.1,
                localized_at: "2026-01-01T00:00:00Z".into(),
            });
        }
        std::fs::create_dir_all(dir.path().join(".periscope")).unwrap();
        record.save(dir.path()).unwrap();
        let tags = code_tags(dir.path());
        assert_eq!(
            tags,
            [
                Item::Tag(Tag {
                    key: "mlflow.source.git.commit".into(),
                    value: "0123abcd".into()
                }),
                Item::Tag(Tag {
                    key: "mlflow.source.git.repoURL".into(),
                    value: "https://***@git.example/team/model.git".into()
                }),
            ]
        );
    }

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
