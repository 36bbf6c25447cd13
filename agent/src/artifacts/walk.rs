//! Which entries of the artifacts folder are stored, and which are skipped and why.
//!
//! Regular files are stored. A symlink is followed only when it resolves to a regular file inside
//! the folder (its content is stored under the link's path); a symlink that leaves the folder, a
//! dangling one, one to a folder (never followed: loops), sockets, FIFOs and devices are listed as
//! skipped, never opened. A FIFO is never opened because opening one blocks until a writer comes.
//! This module only reads metadata; it never reads file content and never writes.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::manifest::Skipped;
use super::ArtifactsError;

/// A regular file to store. Invariant: `rel` is relative, `/`-separated, non-empty UTF-8 made of
/// normal components; `path` is the file (or the link that resolves to it) inside the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub rel: String,
    pub path: PathBuf,
    pub stamp: Stamp,
}

/// What tells that a file changed: size and modification time (ns) and inode. Two equal stamps
/// taken before and after a read mean the read saw one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    /// The stamp of the file at `path` now (following a symlink, as reading does).
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = fs::metadata(path)?;
        Ok(Stamp {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        })
    }
}

/// The folder's content: files to store (sorted by `rel`) and what was skipped.
#[derive(Debug, Default)]
pub struct Walked {
    pub files: Vec<LocalFile>,
    pub skipped: Vec<Skipped>,
}

/// Walks `root`.
pub fn walk(root: &Path) -> Result<Walked, ArtifactsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ArtifactsError::Read { path, error }
    };
    let canonical_root = match fs::canonicalize(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArtifactsError::NotAFolder {
                path: root.to_path_buf(),
            })
        }
        other => other.map_err(io(root))?,
    };
    if !canonical_root.is_dir() {
        return Err(ArtifactsError::NotAFolder {
            path: root.to_path_buf(),
        });
    }
    let mut out = Walked::default();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                out.skipped.push(Skipped {
                    path: format!("{prefix}{}", entry.file_name().to_string_lossy()),
                    reason: "the name is not UTF-8".into(),
                });
                continue;
            };
            let rel = format!("{prefix}{name}");
            let kind = entry.file_type().map_err(io(&path))?;
            let skip = |reason: &str| Skipped {
                path: rel.clone(),
                reason: reason.into(),
            };
            if kind.is_dir() {
                stack.push((path, format!("{rel}/")));
            } else if kind.is_file() {
                let stamp = Stamp::of(&path).map_err(io(&path))?;
                out.files.push(LocalFile { rel, path, stamp });
            } else if kind.is_symlink() {
                match fs::canonicalize(&path) {
                    Err(_) => out.skipped.push(skip("dangling symlink")),
                    Ok(target) if !target.starts_with(&canonical_root) => {
                        out.skipped.push(skip("symlink leaves the folder"))
                    }
                    Ok(target) if target.is_dir() => out.skipped.push(skip(
                        "symlink to a folder (not followed; the folder is saved where it is)",
                    )),
                    Ok(target) if target.is_file() => {
                        let stamp = Stamp::of(&path).map_err(io(&path))?;
                        out.files.push(LocalFile { rel, path, stamp });
                    }
                    Ok(_) => out
                        .skipped
                        .push(skip("symlink to a socket, FIFO or device")),
                }
            } else if kind.is_fifo() {
                out.skipped.push(skip("FIFO"));
            } else if kind.is_socket() {
                out.skipped.push(skip("socket"));
            } else if kind.is_block_device() || kind.is_char_device() {
                out.skipped.push(skip("device"));
            } else {
                out.skipped.push(skip("not a regular file"));
            }
        }
    }
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_files_and_inner_links_and_skips_the_rest() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/w.bin"), "weights").unwrap();
        std::fs::write(root.join("top.txt"), "t").unwrap();
        std::os::unix::fs::symlink("a/b/w.bin", root.join("latest.bin")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("a", root.join("loop")).unwrap();
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
        let fifo = std::ffi::CString::new(root.join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let w = walk(root).unwrap();
        let rels: Vec<_> = w.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["a/b/w.bin", "latest.bin", "top.txt"]);
        let skipped: Vec<_> = w
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        assert_eq!(skipped[0], ("dangling", "dangling symlink"));
        assert_eq!(skipped[1], ("escape", "symlink leaves the folder"));
        assert!(skipped[2].0 == "loop" && skipped[2].1.starts_with("symlink to a folder"));
        assert_eq!(skipped[3], ("pipe", "FIFO"));
        let missing = walk(&root.join("nope")).unwrap_err();
        assert!(
            matches!(missing, ArtifactsError::NotAFolder { .. }),
            "{missing}"
        );
        let file = walk(&root.join("top.txt")).unwrap_err();
        assert!(matches!(file, ArtifactsError::NotAFolder { .. }), "{file}");
    }
}
