//! Finding event files: every file whose name contains `tfevents`, under a folder, recursively.
//!
//! A run is the folder a file sits in (as TensorBoard sees it). Results are in sorted path order
//! so output is reproducible. This module only lists; it never opens an event file. Folders that
//! vanish while being walked (a job cleaning up) are skipped, not errors; symlinked folders are
//! not followed, so a link loop cannot trap the walk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The name fragment that marks an event file.
pub const MARKER: &str = "tfevents";

/// An event file found under a root. Invariant: `path == root.join(&relative)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventFile {
    /// Relative to the root folder given to [`discover`].
    pub relative: PathBuf,
    /// The path to open.
    pub path: PathBuf,
}

impl EventFile {
    /// The run this file belongs to: its folder relative to the root (empty for the root itself).
    pub fn run(&self) -> &Path {
        self.relative.parent().unwrap_or(Path::new(""))
    }
}

/// True when `name` is an event file's name.
pub fn is_event_file_name(name: &str) -> bool {
    name.contains(MARKER)
}

/// Every event file under `root`, sorted by relative path.
pub fn discover(root: &Path) -> io::Result<Vec<EventFile>> {
    let mut found = Vec::new();
    walk(root, Path::new(""), &mut found, true)?;
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, rel: &Path, found: &mut Vec<EventFile>, is_root: bool) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if !is_root && e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let name = entry.file_name();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let path = entry.path();
        let relative = rel.join(&name);
        if file_type.is_dir() {
            walk(&path, &relative, found, false)?;
        } else if is_event_file_name(&name.to_string_lossy())
            && (file_type.is_file() || path.is_file())
        {
            found.push(EventFile { relative, path });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_event_files_recursively_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/eval")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        for f in [
            "b/eval/events.out.tfevents.2.h",
            "a/events.out.tfevents.1.h",
            "a/notes.txt",
            "events.out.tfevents.0.h",
        ] {
            fs::write(root.join(f), b"").unwrap();
        }
        let found = discover(root).unwrap();
        let rel: Vec<_> = found.iter().map(|f| f.relative.clone()).collect();
        assert_eq!(
            rel,
            [
                PathBuf::from("a/events.out.tfevents.1.h"),
                PathBuf::from("b/eval/events.out.tfevents.2.h"),
                PathBuf::from("events.out.tfevents.0.h"),
            ]
        );
        assert_eq!(found[1].run(), Path::new("b/eval"));
        assert_eq!(found[2].run(), Path::new(""));
    }
}
