//! Where each mirrored event file is stored.
//!
//! `<worker prefix>/tfevents/<folder label>/<path under the folder>`, each file as segments named
//! by [`segment_name`]. With one `--tfevents` folder the label is empty, so the stored tree is the
//! folder's own tree and TensorBoard shows the same run names. With several, each folder's label
//! is its path relative to the folders' deepest common ancestor (`/logs/train` and `/logs/eval`
//! give `train/` and `eval/`; `/a/tb` and `/b/tb` give `a/tb/` and `b/tb/`), so two folders that
//! hold the same file name never share a key, and a file reached through two nested folders has
//! one key and is mirrored once.

use std::path::{Component, Path as FsPath, PathBuf};

use object_store::path::{Path, PathPart};

use crate::tfevents::discover::segment_name;

/// The folder under a worker's prefix that holds the mirror.
pub const TFEVENTS_DIR: &str = "tfevents";

/// Stored names for the files under a set of folders. Invariant: `labels[i]` belongs to the
/// i-th folder given to [`Layout::new`], `/`-separated without empty parts.
#[derive(Debug, Clone)]
pub struct Layout {
    base: Path,
    labels: Vec<String>,
}

impl Layout {
    pub fn new(worker_prefix: &Path, roots: &[PathBuf]) -> Layout {
        Layout {
            base: join(worker_prefix, [TFEVENTS_DIR]),
            labels: labels(roots),
        }
    }

    /// The stored path, relative to the mirror's base, of the file at `relative` under the
    /// `root`-th folder: the key that names this file in the checkpoint too.
    pub fn name(&self, root: usize, relative: &FsPath) -> String {
        let parts = self.labels[root]
            .split('/')
            .map(str::to_owned)
            .chain(relative.components().filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            }))
            .filter(|s| !s.is_empty());
        parts.collect::<Vec<_>>().join("/")
    }

    /// The stored folder holding the file `name` (as [`Layout::name`] gives it), and its file name.
    pub fn folder(&self, name: &str) -> (Path, String) {
        let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
        (join(&self.base, dir.split('/')), file.to_owned())
    }

    /// The key of the segment of file `name` that starts at byte `start`.
    pub fn segment_key(&self, name: &str, start: u64) -> Path {
        let (folder, file) = self.folder(name);
        join(&folder, [segment_name(&file, start)])
    }

    /// A key under the mirror's base whose name marks no event file, for staging uploads.
    pub fn staging_key(&self) -> Path {
        join(&self.base, [".periscope-upload"])
    }
}

/// `base` with more parts appended (empty parts skipped; each part is encoded as needed).
fn join<I, S>(base: &Path, more: I) -> Path
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut parts: Vec<PathPart<'static>> = base
        .parts()
        .map(|p| p.as_ref().to_string().into())
        .collect();
    parts.extend(
        more.into_iter()
            .filter(|s| !s.as_ref().is_empty())
            .map(|s| PathPart::from(s.as_ref().to_string())),
    );
    Path::from_iter(parts)
}

/// Each folder's label: empty for a single folder, else its path under the common ancestor.
fn labels(roots: &[PathBuf]) -> Vec<String> {
    if roots.len() <= 1 {
        return vec![String::new(); roots.len()];
    }
    let absolute: Vec<Vec<String>> = roots.iter().map(|r| normal_parts(r)).collect();
    let common = absolute.iter().skip(1).fold(absolute[0].len(), |n, parts| {
        n.min(
            absolute[0]
                .iter()
                .zip(parts)
                .take_while(|(a, b)| a == b)
                .count(),
        )
    });
    absolute
        .iter()
        .map(|parts| parts[common..].join("/"))
        .collect()
}

/// The parts of `path` made absolute (against the working folder) with `.` and `..` resolved
/// lexically, as the folders are named, not where links lead.
fn normal_parts(path: &FsPath) -> Vec<String> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut parts: Vec<String> = Vec::new();
    for c in absolute.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(roots: &[&str], files: &[(usize, &str)]) -> Vec<String> {
        let roots: Vec<PathBuf> = roots.iter().map(PathBuf::from).collect();
        let layout = Layout::new(&Path::from("p/exp/w0"), &roots);
        files
            .iter()
            .map(|(root, rel)| layout.name(*root, FsPath::new(rel)))
            .collect()
    }

    #[test]
    fn one_folder_is_stored_as_its_own_tree() {
        assert_eq!(
            names(&["/logs/tb"], &[(0, "run-a/events.out.tfevents.1")]),
            ["run-a/events.out.tfevents.1"]
        );
    }

    #[test]
    fn several_folders_are_told_apart_by_their_path_under_the_common_ancestor() {
        assert_eq!(
            names(
                &["/logs/train", "/logs/eval/"],
                &[(0, "events.out.tfevents.1"), (1, "events.out.tfevents.1")]
            ),
            ["train/events.out.tfevents.1", "eval/events.out.tfevents.1"]
        );
        assert_eq!(
            names(
                &["/a/tb", "/b/./tb", "/c/x/../tb"],
                &[(0, "e.tfevents"), (1, "e.tfevents"), (2, "e.tfevents")]
            ),
            ["a/tb/e.tfevents", "b/tb/e.tfevents", "c/tb/e.tfevents"]
        );
    }

    #[test]
    fn a_file_under_nested_folders_has_one_name() {
        assert_eq!(
            names(
                &["/logs", "/logs/eval"],
                &[
                    (0, "eval/events.out.tfevents.1"),
                    (1, "events.out.tfevents.1")
                ]
            ),
            ["eval/events.out.tfevents.1", "eval/events.out.tfevents.1"]
        );
    }

    #[test]
    fn segment_keys_sit_beside_each_other_in_the_files_folder() {
        let layout = Layout::new(&Path::from("p/exp/w0"), &[PathBuf::from("/tb")]);
        let name = layout.name(0, FsPath::new("run/events.out.tfevents.9.h"));
        assert_eq!(
            layout.segment_key(&name, 0).as_ref(),
            "p/exp/w0/tfevents/run/events.out.tfevents.9.h"
        );
        assert_eq!(
            layout.segment_key(&name, 1 << 20).as_ref(),
            "p/exp/w0/tfevents/run/events.out.tfevents.9.h.00000000000001048576"
        );
        let top = layout.name(0, FsPath::new("events.out.tfevents.9.h"));
        assert_eq!(
            layout.folder(&top),
            (
                Path::from("p/exp/w0/tfevents"),
                "events.out.tfevents.9.h".to_owned()
            )
        );
        let staging = layout.staging_key();
        assert!(
            !staging.filename().unwrap().contains("tfevents"),
            "{staging}"
        );
    }
}
