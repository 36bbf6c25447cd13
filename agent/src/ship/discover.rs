//! Which files the `--logs` globs match, the path each is stored under, and which matches are
//! refused.
//!
//! A glob's base is the folder before its first wildcard (`/var/log/job/**/*.log` → `/var/log/job`);
//! a matched file is stored under its path relative to that base, so two workers' layouts look the
//! same in storage whatever their mount points are.
//!
//! The folders a glob walks are written by the training container, so what they hold is not
//! trusted: a symlink is followed only when it resolves to a regular file inside the base folder (a
//! link to `/etc/shadow` is refused, as `artifacts push` refuses it), folder symlinks are never
//! followed, FIFOs, sockets and devices are never opened, and a name that is not UTF-8 (which no
//! object key can hold) is refused. [`LogGlob::open`] checks again, on the opened handle, that the
//! file is a regular file inside the base, so a link swapped in after the walk gains nothing.
//!
//! A glob may match a log's rotated names too: [`is_rotated_name`] tells which names rotation
//! gives a log, and [`sort_logs_first`] puts a log before them.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

/// One `--logs` pattern. Invariant: `base` is a prefix of every path the pattern matches, and
/// `rest` is the pattern's part below `base` (its `/`-separated components).
#[derive(Debug, Clone)]
pub struct LogGlob {
    pub pattern: String,
    pub base: PathBuf,
    rest: Vec<glob::Pattern>,
    rest_text: Vec<String>,
    whole_rest: glob::Pattern,
}

/// A bad `--logs` pattern.
#[derive(Debug, thiserror::Error)]
#[error("log pattern `{pattern}`: {reason}")]
pub struct GlobError {
    pub pattern: String,
    pub reason: String,
}

/// A file the pattern matches, with the path it is stored under (relative, `/`-separated, UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub logical: String,
}

/// A path the pattern matches that is not shipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub path: PathBuf,
    pub reason: &'static str,
}

/// Why a symlink is refused.
pub const LEAVES_BASE: &str =
    "a symlink that leaves the glob's base folder is not followed (its target is not shipped)";
/// Why a name is refused.
pub const NOT_UTF8: &str =
    "the file name is not UTF-8, which no storage key can hold; rename the file to ship it";

/// What one walk found.
#[derive(Debug, Default)]
pub struct Matches {
    pub found: Vec<Found>,
    pub refused: Vec<Refusal>,
}

/// Why a matched file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Gone or unreadable (a file can vanish between the walk and the open).
    Io(io::Error),
    Refused(Refusal),
}

const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl LogGlob {
    /// Parses a pattern; it must be absolute or is taken relative to the current folder.
    pub fn new(pattern: &str) -> Result<LogGlob, GlobError> {
        let bad = |reason: String| GlobError {
            pattern: pattern.to_string(),
            reason,
        };
        glob::Pattern::new(pattern).map_err(|e| bad(e.to_string()))?;
        let mut base = PathBuf::new();
        let components: Vec<Component> = Path::new(pattern).components().collect();
        let mut rest_text = Vec::new();
        for (i, c) in components.iter().enumerate() {
            let text = c.as_os_str().to_string_lossy();
            let wild = text.contains(['*', '?', '[']);
            if wild || i == components.len() - 1 || !rest_text.is_empty() {
                // From the first wildcard on (or a plain file name), the rest is matched.
                rest_text.push(text.into_owned());
                continue;
            }
            base.push(c.as_os_str());
        }
        if base.as_os_str().is_empty() {
            base.push(".");
        }
        if rest_text.iter().any(|c| c == "..") {
            return Err(bad(
                "`..` after the first wildcard would leave the base folder".into(),
            ));
        }
        let rest = rest_text
            .iter()
            .map(|c| glob::Pattern::new(c).map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let whole_rest =
            glob::Pattern::new(&rest_text.join("/")).map_err(|e| bad(e.to_string()))?;
        Ok(LogGlob {
            pattern: pattern.to_string(),
            base,
            rest,
            rest_text,
            whole_rest,
        })
    }

    /// Walks the base folder: the regular files the pattern matches now, and what it refused.
    pub fn matches(&self) -> Matches {
        let mut out = Matches::default();
        if let Ok(canonical) = fs::canonicalize(&self.base) {
            self.walk(&self.base, "", true, 0, &canonical, &mut out);
        }
        out
    }

    /// Opens a matched file for reading, after checking on the open handle that it is a regular
    /// file inside the base folder (never blocking on a FIFO).
    pub fn open(&self, path: &Path) -> Result<File, OpenError> {
        let canonical_base = fs::canonicalize(&self.base).map_err(OpenError::Io)?;
        let file = open_read(path, true).map_err(OpenError::Io)?;
        let meta = file.metadata().map_err(OpenError::Io)?;
        if !meta.is_file() {
            return Err(OpenError::Io(io::Error::other("not a regular file")));
        }
        let real = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .or_else(|_| fs::canonicalize(path))
            .map_err(OpenError::Io)?;
        if !real.starts_with(&canonical_base) {
            return Err(OpenError::Refused(Refusal {
                path: path.to_path_buf(),
                reason: LEAVES_BASE,
            }));
        }
        Ok(file)
    }

    /// Walks `dir` (whose path relative to the base is `rel`, ending in `/` unless empty) against
    /// the pattern's components from `depth` on. `utf8` is false below a folder whose name is not.
    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        utf8: bool,
        depth: usize,
        canonical_base: &Path,
        out: &mut Matches,
    ) {
        let Some(component) = self.rest.get(depth) else {
            return;
        };
        let recursive = self.rest_text[depth] == "**";
        let last = depth + 1 == self.rest.len();
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let (text, name_utf8) = match name.to_str() {
                Some(t) => (t.to_string(), utf8),
                None => (name.to_string_lossy().into_owned(), false),
            };
            let path = entry.path();
            let child_rel = format!("{rel}{text}");
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if recursive {
                    self.walk(
                        &path,
                        &format!("{child_rel}/"),
                        name_utf8,
                        depth,
                        canonical_base,
                        out,
                    );
                } else if !last && component.matches_with(&text, MATCH) {
                    self.walk(
                        &path,
                        &format!("{child_rel}/"),
                        name_utf8,
                        depth + 1,
                        canonical_base,
                        out,
                    );
                }
                continue;
            }
            let wanted = if recursive {
                // The walk matched the components above; the whole pattern checks the rest.
                self.whole_rest.matches_with(&child_rel, MATCH)
            } else {
                last && component.matches_with(&text, MATCH)
            };
            if kind.is_symlink() {
                // Resolve it: only a regular file inside the base is followed.
                match fs::canonicalize(&path) {
                    Ok(target) if !target.starts_with(canonical_base) => {
                        if wanted || target.is_dir() && (recursive || !last) {
                            out.refused.push(Refusal {
                                path,
                                reason: LEAVES_BASE,
                            });
                        }
                        continue;
                    }
                    Ok(target) if target.is_file() => {}
                    _ => continue,
                }
            } else if !kind.is_file() {
                continue;
            }
            if !wanted {
                continue;
            }
            if !name_utf8 {
                out.refused.push(Refusal {
                    path,
                    reason: NOT_UTF8,
                });
                continue;
            }
            // Relative, `/`-separated and made of the walk's own entries (never `.` or `..`).
            out.found.push(Found {
                path,
                logical: child_rel,
            });
        }
    }
}

/// Whether file name `name` (no folder) may be a name rotation gave the log named `log`: one that
/// starts with it (`app.log.1`, `app.log-20261206.gz`; also `app.log` itself, moved to another
/// folder by logrotate's `olddir`), or logrotate's `extension` form, where the number or date
/// comes before the log's extension and compression's after it (`app.1.log`, `app.2.log.gz`,
/// `app-20261206.log`).
pub fn is_rotated_name(name: &str, log: &str) -> bool {
    name.starts_with(log) || extension_form_logs(name).any(|l| l == log)
}

/// Whether a file first seen under name `name` may hold what was stored under name `other`
/// (no folders): `other` is the log `name` is a rotated name of, or another rotated name of one
/// of `logs` that `name` is a rotated name of too (rotation moves `app.log.1` to `app.log.2.gz`).
/// The log behind them must be one of `logs` and not `name` itself.
pub fn rotated_together<'a>(
    name: &str,
    other: &str,
    mut logs: impl Iterator<Item = &'a str>,
) -> bool {
    is_rotated_name(name, other)
        || logs.any(|log| log != name && is_rotated_name(name, log) && is_rotated_name(other, log))
}

/// Sorts matched files so that a log comes before its rotated names: by name (`app.log` before
/// `app.log.1`), except that a name in `extension` form of another name matched in its folder
/// (`app.1.log`, which sorts before `app.log`) comes after every other name.
pub fn sort_logs_first<T>(found: &mut [T], logical: impl Fn(&T) -> &str) {
    let all: HashSet<String> = found.iter().map(|f| logical(f).to_string()).collect();
    found.sort_by_cached_key(|f| {
        let path = logical(f);
        let (folder, name) = path.rsplit_once('/').unwrap_or(("", path));
        let rotated = extension_form_logs(name).any(|l| {
            let log = if folder.is_empty() {
                l
            } else {
                format!("{folder}/{l}")
            };
            all.contains(&log)
        });
        (rotated, path.to_string())
    });
}

/// The log names whose rotated name `name` may be in logrotate's `extension` form: `<stem>`, then
/// a marker (`.`, `-` or `_`, then digits and those separators: a number or a date), then the
/// log's extension, maybe followed by a compression's. `app.2.log.gz` gives `app.log` and
/// `app.log.gz`.
fn extension_form_logs(name: &str) -> impl Iterator<Item = String> + '_ {
    let marker_byte = |b: &u8| b.is_ascii_digit() || b"._-".contains(b);
    name.match_indices(['.', '-', '_'])
        .filter(|(i, _)| *i > 0)
        .flat_map(move |(i, _)| {
            let (stem, rest) = name.split_at(i);
            let longest = rest.bytes().take_while(marker_byte).count();
            (1..=longest).flat_map(move |j| {
                let (marker, after) = rest.split_at(j);
                let valid = marker.bytes().any(|b| b.is_ascii_digit()) && after.starts_with('.');
                // The log's extension: up to the next `.` (a compression's), or to the end.
                let ends = after
                    .match_indices('.')
                    .skip(1)
                    .map(|(k, _)| k)
                    .chain([after.len()]);
                ends.filter(move |_| valid)
                    .map(move |k| format!("{stem}{}", &after[..k]))
            })
        })
}

/// Opens `path` for reading without ever blocking (a FIFO swapped in opens at once and is then
/// refused as not a regular file) and, unless `follow`, without following a symlink.
pub fn open_read(path: &Path, follow: bool) -> io::Result<File> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | nofollow)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(g: &LogGlob) -> Vec<String> {
        let mut m: Vec<String> = g.matches().found.into_iter().map(|f| f.logical).collect();
        m.sort();
        m
    }

    #[test]
    fn base_is_the_folder_before_the_first_wildcard() {
        assert_eq!(
            LogGlob::new("/var/log/job/**/*.log").unwrap().base,
            Path::new("/var/log/job")
        );
        assert_eq!(
            LogGlob::new("/logs/stdout.log").unwrap().base,
            Path::new("/logs")
        );
        assert_eq!(LogGlob::new("*.log").unwrap().base, Path::new("."));
        assert!(LogGlob::new("/x/[").is_err());
        assert!(LogGlob::new("/x/*/../y").is_err());
    }

    #[test]
    fn matches_files_with_relative_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/x.log"), "1").unwrap();
        std::fs::write(dir.path().join("a/y.txt"), "2").unwrap();
        std::fs::write(dir.path().join("top.log"), "3").unwrap();
        let g = LogGlob::new(&format!("{}/**/*.log", dir.path().display())).unwrap();
        assert_eq!(
            names(&g),
            vec!["a/b/x.log".to_string(), "top.log".to_string()]
        );
        let g = LogGlob::new(&format!("{}/*/b/*.log", dir.path().display())).unwrap();
        assert_eq!(names(&g), vec!["a/b/x.log".to_string()]);
        let g = LogGlob::new(&format!("{}/top.log", dir.path().display())).unwrap();
        assert_eq!(names(&g), vec!["top.log".to_string()]);
    }

    #[test]
    fn logrotate_names_are_rotated_names_of_their_log() {
        for name in [
            "app.log.1",
            "app.log.2.gz",
            "app.log-20261206",
            "app.log-20261206.gz",
            "app.1.log",
            "app.12.log.gz",
            "app.2.log.zst",
            "app-20261206.log",
            "app-20261206.log.gz",
            "app-2026-12-06_13.log.xz",
            "app_1.log",
        ] {
            assert!(is_rotated_name(name, "app.log"), "{name}");
        }
        assert!(is_rotated_name("train.stdout.3.log", "train.stdout.log"));
        assert!(is_rotated_name("train.3.stdout.log.gz", "train.stdout.log"));
        assert!(is_rotated_name("my-app.1.log", "my-app.log"));
        for (name, log) in [
            ("app.log", "app.1.log"),
            ("apps.1.log", "app.log"),
            ("app.x.log", "app.log"),
            ("app.1.logs", "app.log"),
            ("app.1.txt", "app.log"),
            ("app.1", "app.log"),
            ("other.1.log", "app.log"),
        ] {
            assert!(!is_rotated_name(name, log), "{name} of {log}");
        }
    }

    #[test]
    fn rotated_names_of_one_log_are_rotated_together_and_a_log_is_not_its_own_rotation() {
        let logs = ["app.log", "app.log.1", "app.log.2.gz", "worker.log"];
        for (name, other) in [
            ("app.log.2.gz", "app.log.1"),
            ("app.log.1", "app.log.2.gz"),
            ("app.log.1", "app.log"),
            ("app.2.log.gz", "app.1.log"),
        ] {
            assert!(
                rotated_together(name, other, logs.into_iter().chain(["app.log"])),
                "{name} with {other}"
            );
        }
        for (name, other) in [
            ("app.log", "app.log.1"),
            ("app.log.1", "worker.log"),
            ("app.log.1", "worker.log.1"),
        ] {
            assert!(
                !rotated_together(name, other, logs.into_iter()),
                "{name} with {other}"
            );
        }
    }

    #[test]
    fn a_log_sorts_before_its_rotated_names() {
        let mut found = vec![
            "app.2.log.gz",
            "a/app.1.log",
            "app.1.log",
            "app.log.1",
            "a/app.log",
            "app.log",
            "app-20261206.log",
            "b.1.log",
            "app.2026.txt",
        ];
        sort_logs_first(&mut found, |f| f);
        assert_eq!(
            found,
            vec![
                "a/app.log",
                "app.2026.txt",
                "app.log",
                "app.log.1",
                "b.1.log",
                "a/app.1.log",
                "app-20261206.log",
                "app.1.log",
                "app.2.log.gz",
            ]
        );
    }

    #[test]
    fn symlinks_out_of_the_base_and_non_utf8_names_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let outside = dir.path().join("secret");
        std::fs::create_dir_all(logs.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("key"), "secret").unwrap();
        std::fs::write(logs.join("real.log"), "ok").unwrap();
        std::os::unix::fs::symlink(outside.join("key"), logs.join("shadow.log")).unwrap();
        std::os::unix::fs::symlink(logs.join("real.log"), logs.join("alias.log")).unwrap();
        std::os::unix::fs::symlink(&outside, logs.join("out")).unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"bad-\xff.log");
        std::fs::write(logs.join(bad), "x").unwrap();
        let g = LogGlob::new(&format!("{}/**/*.log", logs.display())).unwrap();
        let m = g.matches();
        let mut found: Vec<&str> = m.found.iter().map(|f| f.logical.as_str()).collect();
        found.sort();
        assert_eq!(found, vec!["alias.log", "real.log"]);
        let mut refused: Vec<(String, &str)> = m
            .refused
            .iter()
            .map(|r| {
                (
                    r.path.file_name().unwrap().to_string_lossy().into_owned(),
                    r.reason,
                )
            })
            .collect();
        refused.sort();
        assert_eq!(
            refused,
            vec![
                ("bad-\u{fffd}.log".to_string(), NOT_UTF8),
                ("out".to_string(), LEAVES_BASE),
                ("shadow.log".to_string(), LEAVES_BASE),
            ]
        );
        assert!(matches!(
            g.open(&logs.join("shadow.log")),
            Err(OpenError::Refused(_))
        ));
        assert!(g.open(&logs.join("alias.log")).is_ok());
    }
}
