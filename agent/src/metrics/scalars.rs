//! The tf.events source: scalars from the event files under the sidecar's `--tfevents` folders.
//!
//! * Files are found with [`crate::tfevents::discover`] and read incrementally with
//!   [`EventReader`] from a checkpointed [`Position`] per file, so every scalar is read once.
//! * The key is the tag, prefixed with the run folder relative to the root when the file is not
//!   in the root itself: `train/loss` in `ROOT/` gives `train/loss`; in `ROOT/eval/` it gives
//!   `eval/train/loss`. (Several roots with the same run names give the same keys.)
//! * The timestamp is the event's `wall_time` in milliseconds, the step its `step`; NaN and
//!   ±Infinity are kept.
//! * PyTorch's purge (a `SessionLog` START at step S, written by `SummaryWriter(purge_step=S)`):
//!   TensorBoard drops every point of that run with step ≥ S that it read before the START. We do
//!   the same with an [`Item::Purge`] for every key the run has produced so far: the sink deletes
//!   those rows that were stored before it, and the points written after the restart are stored
//!   as usual. So rows already in the metastore for steps ≥ S of that run disappear, as they
//!   disappear from TensorBoard's charts.
//!
//! * Damaged records are skipped and reported as one line per file and pass, with their count and
//!   the first of them, not one line per record.
//!
//! This module reads files and produces items; it never writes the checkpoint or the queue.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::{Item, Metric};
use crate::tfevents::{
    discover_in, DamageSummary, EventItem, EventReader, Position, Scope, Search,
};

/// What the tf.events source has read. Invariant: `files[p]` is a record boundary of file `p`;
/// `run_keys[r]` holds every key emitted for run `r` before those positions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScalarsState {
    pub files: BTreeMap<String, Position>,
    pub run_keys: BTreeMap<String, BTreeSet<String>>,
    /// Files whose framing broke: nothing more is read from them (reported once).
    #[serde(default)]
    pub stopped: BTreeSet<String>,
    /// Damaged records skipped so far.
    #[serde(default)]
    pub skipped: u64,
}

/// The key for `tag` in run folder `run` (relative to the root, `/`-separated; empty for the root).
pub fn key_for(run: &str, tag: &str) -> String {
    if run.is_empty() {
        tag.to_string()
    } else {
        format!("{run}/{tag}")
    }
}

fn run_name(run: &Path) -> String {
    run.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads new scalars from every event file under `roots`, at most about `max_items`. Appends
/// items to `out` and returns the new state.
pub fn read(
    roots: &[PathBuf],
    search: Option<&Search>,
    state: &ScalarsState,
    worker: &str,
    max_items: usize,
    out: &mut Vec<Item>,
) -> io::Result<ScalarsState> {
    let mut state = state.clone();
    let every = Scope::default();
    let roots =
        (roots.iter().map(|r| (r, &every))).chain(search.into_iter().map(|s| (&s.root, &s.scope)));
    for (root, scope) in roots {
        let files = match discover_in(root, scope) {
            Ok(files) => files,
            // The training script has not created the folder yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for file in files {
            if out.len() >= max_items {
                return Ok(state);
            }
            let id = file.path.to_string_lossy().into_owned();
            if state.stopped.contains(&id) {
                continue;
            }
            let run = run_name(file.run());
            let run_id = format!("{}\u{0}{run}", root.display());
            let position = state.files.get(&id).cloned().unwrap_or_default();
            let mut reader = match EventReader::open(&file.path, position) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut damaged = DamageSummary::default();
            while out.len() < max_items {
                match reader.next_event()? {
                    EventItem::Event(ev) => {
                        let keys = state.run_keys.entry(run_id.clone()).or_default();
                        if let Some(from_step) = ev.session_start {
                            if !keys.is_empty() {
                                out.push(Item::Purge {
                                    keys: keys.iter().cloned().collect(),
                                    worker: worker.to_string(),
                                    from_step,
                                });
                            }
                        }
                        for s in ev.scalars {
                            let key = key_for(&run, &s.tag);
                            keys.insert(key.clone());
                            out.push(Item::Metric(Metric {
                                key,
                                value: s.value,
                                step: s.step,
                                timestamp_ms: (s.wall_time * 1000.0).round() as i64,
                                worker: worker.to_string(),
                            }));
                        }
                    }
                    EventItem::Skipped(damage) => {
                        state.skipped += 1;
                        damaged.add(damage);
                    }
                    EventItem::Pending => break,
                    EventItem::Stopped(damage) => {
                        tracing::warn!(file = %file.path.display(), %damage,
                            "tf.events file cannot be read further; its later scalars are not tracked");
                        state.stopped.insert(id.clone());
                        break;
                    }
                }
            }
            if !damaged.is_empty() {
                tracing::warn!(file = %file.path.display(), skipped = damaged.count, summary = %damaged,
                    "tf.events records skipped; their scalars are not tracked");
            }
            state.files.insert(id, reader.position());
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tfevents::{EventWriter, ScalarValue};

    fn metrics(items: &[Item]) -> Vec<(String, i64, f64)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Metric(m) => Some((m.key.clone(), m.step, m.value)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn runs_prefix_keys_and_reading_resumes_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("eval")).unwrap();
        let mut top = EventWriter::create(&root).unwrap();
        let mut eval = EventWriter::create(&root.join("eval")).unwrap();
        top.add_scalar("train/loss", 1, 10.0, ScalarValue::F32(0.5))
            .unwrap();
        eval.add_scalar("acc", 1, 10.0, ScalarValue::F32(0.25))
            .unwrap();
        top.flush().unwrap();
        eval.flush().unwrap();
        let mut out = Vec::new();
        let s1 = read(
            std::slice::from_ref(&root),
            None,
            &ScalarsState::default(),
            "w",
            100,
            &mut out,
        )
        .unwrap();
        let mut got = metrics(&out);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [("eval/acc".into(), 1, 0.25), ("train/loss".into(), 1, 0.5)]
        );
        top.add_scalar("train/loss", 2, 11.0, ScalarValue::F32(f32::NAN))
            .unwrap();
        top.flush().unwrap();
        out.clear();
        let s2 = read(std::slice::from_ref(&root), None, &s1, "w", 100, &mut out).unwrap();
        let got = metrics(&out);
        assert_eq!(got.len(), 1);
        assert!(got[0].2.is_nan());
        out.clear();
        read(&[root], None, &s2, "w", 100, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_session_start_purges_the_runs_keys() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut w = EventWriter::create(&root).unwrap();
        for step in 0..4 {
            w.add_scalar("loss", step, 10.0 + step as f64, ScalarValue::F32(1.0))
                .unwrap();
        }
        w.add_session_start(2, 20.0).unwrap();
        w.add_scalar("loss", 2, 21.0, ScalarValue::F32(9.0))
            .unwrap();
        w.flush().unwrap();
        let mut out = Vec::new();
        read(&[root], None, &ScalarsState::default(), "w", 100, &mut out).unwrap();
        let purge = out
            .iter()
            .position(|i| matches!(i, Item::Purge { .. }))
            .unwrap();
        assert_eq!(purge, 4);
        assert!(
            matches!(&out[4], Item::Purge { keys, from_step: 2, .. } if keys == &["loss".to_string()])
        );
        assert_eq!(metrics(&out[5..]), [("loss".into(), 2, 9.0)]);
    }
}
