//! Finding event files: every file whose name contains `tfevents`, under a folder, recursively.
//!
//! A run is the folder a file sits in (as TensorBoard sees it). Results are in sorted path order
//! so output is reproducible. This module only lists; it never opens an event file. Folders that
//! vanish while being walked (a job cleaning up) are skipped, not errors; symlinked folders are
//! not followed, so a link loop cannot trap the walk.
//!
//! A mirrored event file may be stored as several *segments*, each a run of whole records: the
//! first under the file's own name, each later one under `<name>.<offset>`, its first byte's
//! offset in the file as [`SEGMENT_DIGITS`] zero-padded digits. The names sort in file order, so
//! TensorBoard, which reads a run's event files in name order, reads the records in order;
//! [`logical_name`] gives back the file a segment belongs to.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

/// How many digits a segment's offset suffix has: enough for any `u64`, so names sort in offset
/// order.
pub const SEGMENT_DIGITS: usize = 20;

/// True when `name` is an event file's name.
pub fn is_event_file_name(name: &str) -> bool {
    name.contains(MARKER)
}

/// The stored name of the segment of event file `name` that starts at byte `start`.
pub fn segment_name(name: &str, start: u64) -> String {
    if start == 0 {
        name.to_owned()
    } else {
        format!("{name}.{start:0width$}", width = SEGMENT_DIGITS)
    }
}

/// The event file a stored segment belongs to, and the segment's first byte: `(name, 0)` for a
/// name without an offset suffix.
pub fn split_segment_name(name: &str) -> (&str, u64) {
    let parsed = name
        .len()
        .checked_sub(SEGMENT_DIGITS + 1)
        .filter(|&dot| name.is_char_boundary(dot))
        .map(|dot| name.split_at(dot))
        .and_then(|(file, suffix)| {
            let digits = suffix.strip_prefix('.')?;
            let all_digits = digits.bytes().all(|b| b.is_ascii_digit());
            let start = digits.parse::<u64>().ok().filter(|_| all_digits)?;
            (start > 0 && is_event_file_name(file)).then_some((file, start))
        });
    parsed.unwrap_or((name, 0))
}

/// The event file a stored segment belongs to (the name itself for anything else).
pub fn logical_name(name: &str) -> &str {
    split_segment_name(name).0
}

/// Which event files under a root are wanted. The default wants every one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only files modified at or after this time: the ones a job wrote, not ones it found there.
    pub since: Option<SystemTime>,
    /// How many folders below the root to look (`None`: no limit).
    pub max_depth: Option<usize>,
    /// Hidden folders (`.git`, `.venv`) and folders named like virtual environments and caches
    /// are not walked.
    pub skip_hidden: bool,
    /// Folders not walked (absolute paths, as the walk meets them).
    pub skip: Vec<PathBuf>,
}

/// A folder searched for the event files a command writes of its own accord (tensorboardX's and
/// PyTorch's `./runs/`, Lightning's `./lightning_logs/`), within a [`Scope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub root: PathBuf,
    pub scope: Scope,
}

/// Every event file under `root`, sorted by relative path.
pub fn discover(root: &Path) -> io::Result<Vec<EventFile>> {
    discover_in(root, &Scope::default())
}

/// The event files under `root` that `scope` wants, sorted by relative path.
pub fn discover_in(root: &Path, scope: &Scope) -> io::Result<Vec<EventFile>> {
    let mut found = Vec::new();
    walk(root, Path::new(""), &mut found, true, scope)?;
    found.sort();
    Ok(found)
}

/// Folder names a search skips with `skip_hidden`: environments and caches, never a job's logs.
const SKIPPED_NAMES: &[&str] = &["node_modules", "venv", "__pycache__", "site-packages"];

fn walk(
    dir: &Path,
    rel: &Path,
    found: &mut Vec<EventFile>,
    is_root: bool,
    scope: &Scope,
) -> io::Result<()> {
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
        let text = name.to_string_lossy();
        if file_type.is_dir() {
            let deep = scope
                .max_depth
                .is_some_and(|max| relative.components().count() > max);
            let hidden = scope.skip_hidden
                && (text.starts_with('.') || SKIPPED_NAMES.contains(&text.as_ref()));
            if !deep && !hidden && !scope.skip.contains(&path) {
                walk(&path, &relative, found, false, scope)?;
            }
        } else if is_event_file_name(&text)
            && (file_type.is_file() || path.is_file())
            && written_since(&path, scope.since)
        {
            found.push(EventFile { relative, path });
        }
    }
    Ok(())
}

/// Whether the file at `path` was modified at or after `since` (always, without a time).
fn written_since(path: &Path, since: Option<SystemTime>) -> bool {
    let Some(since) = since else { return true };
    fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|modified| modified >= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_skips_old_files_hidden_and_skipped_folders_and_depth() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["runs/a", ".venv/x", "data/runs/b", "deep/1/2/3/4", "venv/y"] {
            fs::create_dir_all(root.join(folder)).unwrap();
        }
        let old = root.join("runs/a/events.out.tfevents.0.old");
        fs::write(&old, b"").unwrap();
        let an_hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        let since = SystemTime::now() - std::time::Duration::from_secs(60);
        for f in [
            "runs/a/events.out.tfevents.1.new",
            ".venv/x/events.out.tfevents.2",
            "data/runs/b/events.out.tfevents.3",
            "deep/1/2/3/4/events.out.tfevents.4",
            "venv/y/events.out.tfevents.5",
        ] {
            fs::write(root.join(f), b"").unwrap();
        }
        let scope = Scope {
            since: Some(since),
            max_depth: Some(3),
            skip_hidden: true,
            skip: vec![root.join("data")],
        };
        let found: Vec<PathBuf> = discover_in(root, &scope)
            .unwrap()
            .into_iter()
            .map(|f| f.relative)
            .collect();
        assert_eq!(found, [PathBuf::from("runs/a/events.out.tfevents.1.new")]);
        assert_eq!(discover(root).unwrap().len(), 6, "no scope finds them all");
    }

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

    #[test]
    fn segment_names_sort_in_file_order_and_map_back_to_their_file() {
        let file = "events.out.tfevents.1700000000.host.7.0.v2";
        let names: Vec<String> = [0, 9, 1 << 20, 10 << 30, u64::MAX]
            .iter()
            .map(|&start| segment_name(file, start))
            .collect();
        assert_eq!(names[0], file);
        assert_eq!(names[1], format!("{file}.00000000000000000009"));
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names, "name order is offset order");
        for (name, start) in names.iter().zip([0, 9, 1 << 20, 10 << 30, u64::MAX]) {
            assert_eq!(split_segment_name(name), (file, start));
            assert_eq!(logical_name(name), file);
        }
        // Not segments: a short numeric suffix, a suffix on a name that is not an event file, a
        // zero offset (the first segment has no suffix).
        for other in [
            "events.out.tfevents.1700000000.host.7.0",
            "notes.00000000000000001024",
            "events.out.tfevents.1.h.00000000000000000000",
            "events.out.tfevents.1.h.0000000000000000001x",
        ] {
            assert_eq!(split_segment_name(other), (other, 0), "{other}");
        }
    }
}
