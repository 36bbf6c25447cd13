//! What the metastore learns about the run itself: the code revision `periscope localize`
//! recorded, and the final status from the main container's exit-code file.
//!
//! Params (Submarine's `param` table, one value per key and worker) for each source folder `F`
//! the run's code came from (the sidecar's: every entry of `/code/.periscope/localized.json`;
//! `periscope run`'s: exactly the sources it localized):
//! `code.F.source` (the redacted URL), `code.F.revision` (commit SHA, archive sha256, or ETag
//! digest) and `code.F.revision_kind` (`commit`, `sha256`, `etags`). The first git source also
//! becomes MLflow's standard tags `mlflow.source.git.commit` and `mlflow.source.git.repoURL`
//! (sinks without tags ignore them).
//! A script that ends its run FAILED or KILLED through the ingest endpoint leaves a mark in the
//! state folder ([`remember_script_failure`]), so the final status is Failed even when the main
//! container then exits 0, across sidecar restarts too; the mark goes once that status is stored.
//! This module only reads and writes these files and builds items.

use std::path::Path;

use super::model::{Item, Param, RunStatus, Tag};
use super::MetricsError;
use crate::localized::{Entry, RevisionKind};

/// Params describing the code the run came from (none for none).
pub fn code_params(code: &[Entry], worker: &str) -> Vec<Item> {
    let mut items = Vec::new();
    for entry in code {
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

/// MLflow's source tags for the first source whose revision is a commit (MLflow has room for
/// one repository); none when the code came from no git source.
pub fn code_tags(code: &[Entry]) -> Vec<Item> {
    let Some(entry) = code
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

/// The mark a script's FAILED or KILLED `end_run` leaves in the state folder.
const SCRIPT_FAILED_FILE: &str = "script-failed";

/// Records, durably, that the script ended its run as failed.
pub fn remember_script_failure(state_dir: &Path) -> Result<(), MetricsError> {
    let path = state_dir.join(SCRIPT_FAILED_FILE);
    crate::fsutil::write_atomic(&path, b"FAILED\n")
        .map_err(|source| MetricsError::Checkpoint { path, source })
}

/// Forgets the mark once the final status that includes it is stored.
pub fn forget_script_failure(state_dir: &Path) {
    let _ = std::fs::remove_file(state_dir.join(SCRIPT_FAILED_FILE));
}

/// The final status: the exit code's, unless the script itself ended the run as failed.
pub fn final_status(exit_file: &Path, state_dir: &Path) -> Option<RunStatus> {
    let status = status_from_exit_file(exit_file)?;
    Some(if state_dir.join(SCRIPT_FAILED_FILE).exists() {
        RunStatus::Failed
    } else {
        status
    })
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
    use crate::localized::{Record, Revision};

    #[test]
    fn a_script_that_failed_its_run_overrules_a_zero_exit_code_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let exit = dir.path().join("exit-code");
        assert_eq!(final_status(&exit, dir.path()), None);
        std::fs::write(&exit, "0\n").unwrap();
        assert_eq!(final_status(&exit, dir.path()), Some(RunStatus::Succeeded));
        remember_script_failure(dir.path()).unwrap();
        assert_eq!(final_status(&exit, dir.path()), Some(RunStatus::Failed));
        std::fs::write(&exit, "3\n").unwrap();
        assert_eq!(final_status(&exit, dir.path()), Some(RunStatus::Failed));
        forget_script_failure(dir.path());
        std::fs::write(&exit, "0\n").unwrap();
        assert_eq!(final_status(&exit, dir.path()), Some(RunStatus::Succeeded));
    }

    #[test]
    fn the_first_commit_becomes_mlflows_source_tags() {
        let dir = tempfile::tempdir().unwrap();
        assert!(code_tags(&[]).is_empty());
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
                patterns: Default::default(),
                bytes: 1,
                files: 1,
                seconds: 0.1,
                localized_at: "2026-01-01T00:00:00Z".into(),
            });
        }
        std::fs::create_dir_all(dir.path().join(".periscope")).unwrap();
        record.save(dir.path()).unwrap();
        let tags = code_tags(&Record::load(dir.path()).sources);
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
