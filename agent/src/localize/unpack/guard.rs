//! The safety guard every archive format writes through: entry paths, links, limits and modes.
//!
//! This module owns the rule that nothing an archive says can create, change or reveal anything
//! outside the staging folder. It must never follow a symlink when writing: every parent folder of
//! an entry is checked to be a real folder created inside the tree, files are created with
//! `O_EXCL` (which refuses an existing symlink), and symlink targets are resolved lexically and
//! may not pass through another symlink (checked once all entries are known, since a later entry
//! can turn a name into a link).
//!
//! Decisions worth knowing:
//! * Any `..` component in an entry path is refused, even one that would stay inside: real
//!   archives do not need it, and refusing is simpler to reason about than resolving.
//! * A later entry under a symlinked folder is refused, whether the link points inside or out.
//! * Hardlinks are kept when they point at a regular file already unpacked in this tree (a hard
//!   link inside the staging folder can reach nothing else); any other hardlink is refused.
//! * With `#include=` / `#exclude=`, an entry left out is still checked like any other, then not
//!   written; folders are then made only for what they hold, and a hardlink to a file left out
//!   is left out too (with a warning).
//! * Setuid, setgid and sticky bits are dropped; folders always keep owner `rwx` so the tree can
//!   be replaced and removed later. Owners and groups from the archive are ignored.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::UnpackError;
use crate::localize::{Filter, Limits};

/// Copy buffer size: large enough that syscalls do not dominate on fast disks.
const BUF: usize = 256 * 1024;

/// The longest file name Linux filesystems store (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// The longest path or symlink target the kernel resolves (`PATH_MAX`).
pub(super) const PATH_MAX: usize = 4096;

/// An archive entry path that passed the checks: relative, only normal components, with the
/// `strip` leading components already removed. Invariant: not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Clean(PathBuf);

impl Clean {
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

/// How an entry's name is shown in messages: lossy UTF-8 with control characters escaped, so a
/// hostile name cannot rewrite the user's terminal.
pub(super) fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).escape_debug().to_string()
}

fn unsafe_entry(raw: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: shown(raw),
        reason: reason.into(),
    }
}

/// A symlink created in the tree, kept until the end for the traversal check.
struct Link {
    /// Where the link is, relative to the root.
    at: PathBuf,
    /// The link's raw target, for messages.
    raw_target: Vec<u8>,
    /// The folders (relative to the root) the target's resolution passes through, in order.
    walked: Vec<PathBuf>,
}

/// The writer for one unpack. Invariant: everything it creates is under `root`, and `bytes` and
/// `files` never exceed the limits (the entry that would pass them fails instead).
pub(super) struct Tree<'a> {
    root: &'a Path,
    strip: usize,
    limits: Limits,
    filter: Filter,
    bytes: u64,
    files: u64,
    dir_modes: Vec<(PathBuf, u32)>,
    links: Vec<Link>,
}

impl<'a> Tree<'a> {
    pub(super) fn new(root: &'a Path, strip: usize, limits: Limits) -> Self {
        Tree {
            root,
            strip,
            limits,
            filter: Filter::default(),
            bytes: 0,
            files: 0,
            dir_modes: Vec::new(),
            links: Vec::new(),
        }
    }

    /// The same tree, writing only the entries `filter` keeps.
    pub(super) fn filtered(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Whether an entry that passed the checks is written.
    fn keeps(&self, rel: &Clean) -> bool {
        self.filter.keeps(&rel.path().to_string_lossy())
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn files(&self) -> u64 {
        self.files
    }

    /// Checks an entry path and removes `strip` components; `None` means the entry vanishes under
    /// `strip` (like `tar --strip-components`).
    pub(super) fn clean(&self, raw: &[u8]) -> Result<Option<Clean>, UnpackError> {
        if raw.is_empty() {
            return Err(unsafe_entry(raw, "the entry has an empty name"));
        }
        if raw[0] == b'/' {
            return Err(unsafe_entry(raw, "the path is absolute"));
        }
        let mut parts = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    return Err(unsafe_entry(
                        raw,
                        "the path contains `..` and could climb out of the destination",
                    ))
                }
                _ if part.len() > NAME_MAX => {
                    return Err(unsafe_entry(
                        raw,
                        format!("a path component is longer than {NAME_MAX} bytes, which no Linux filesystem holds"),
                    ))
                }
                _ => parts.push(part),
            }
        }
        if raw.len() > PATH_MAX {
            return Err(unsafe_entry(
                raw,
                format!("the path is longer than {PATH_MAX} bytes"),
            ));
        }
        if parts.len() <= self.strip {
            return Ok(None);
        }
        let mut path = PathBuf::new();
        for part in &parts[self.strip..] {
            path.push(OsStr::from_bytes(part));
        }
        Ok(Some(Clean(path)))
    }

    /// Refuses an archive that announces more entries than the limit allows.
    pub(super) fn check_entry_count(&self, entries: u64) -> Result<(), UnpackError> {
        if entries > self.limits.max_files {
            return Err(UnpackError::TooBig {
                what: "files",
                limit: self.limits.max_files,
            });
        }
        Ok(())
    }

    fn count_entry(&mut self) -> Result<(), UnpackError> {
        if self.files >= self.limits.max_files {
            return Err(UnpackError::TooBig {
                what: "files",
                limit: self.limits.max_files,
            });
        }
        self.files += 1;
        Ok(())
    }

    fn add_bytes(&mut self, n: u64) -> Result<(), UnpackError> {
        match self.bytes.checked_add(n) {
            Some(total) if total <= self.limits.max_bytes => {
                self.bytes = total;
                Ok(())
            }
            _ => Err(UnpackError::TooBig {
                what: "bytes",
                limit: self.limits.max_bytes,
            }),
        }
    }

    /// Makes sure every parent folder of `rel` is a real folder inside the tree (creating missing
    /// ones) and returns the entry's full path. Refuses to go through a symlink or a file.
    fn parent_ready(&self, rel: &Clean, raw: &[u8]) -> Result<PathBuf, UnpackError> {
        let mut at = self.root.to_path_buf();
        let parent = rel.path().parent().unwrap_or(Path::new(""));
        for part in parent.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(
                        raw,
                        format!(
                            "it would be written through the symlink `{}`",
                            self.rel_shown(&at)
                        ),
                    ))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(unsafe_entry(
                        raw,
                        format!("its parent `{}` is not a folder", self.rel_shown(&at)),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&at).map_err(io_err("cannot create folder", &at))?;
                }
                Err(e) => return Err(io_err("cannot inspect", &at)(e)),
            }
        }
        Ok(self.root.join(rel.path()))
    }

    /// Makes room for a new non-folder entry at `full`: a regular file from an earlier entry of
    /// the same name is replaced (later entries win, as with `tar`); anything else is refused.
    fn clear_for_file(&self, full: &Path, raw: &[u8]) -> Result<(), UnpackError> {
        match fs::symlink_metadata(full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot inspect", full)(e)),
            Ok(m) if m.file_type().is_symlink() => Err(unsafe_entry(
                raw,
                "it would be written through a symlink of the same name",
            )),
            Ok(m) if m.is_dir() => Err(unsafe_entry(
                raw,
                "a folder of the same name is already in the archive",
            )),
            Ok(_) => fs::remove_file(full).map_err(io_err("cannot replace", full)),
        }
    }

    fn rel_shown(&self, full: &Path) -> String {
        full.strip_prefix(self.root)
            .unwrap_or(full)
            .display()
            .to_string()
    }

    /// Creates a folder entry; its mode is applied at the end so a read-only folder can still be
    /// filled.
    pub(super) fn dir(&mut self, rel: &Clean, raw: &[u8], mode: u32) -> Result<(), UnpackError> {
        if self.filter.is_active() {
            // Made only if something kept lands in it; its mode is applied then.
            self.dir_modes.push((self.root.join(rel.path()), mode));
            return Ok(());
        }
        self.count_entry()?;
        let full = self.parent_ready(rel, raw)?;
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(unsafe_entry(
                    raw,
                    "it would be written through a symlink of the same name",
                ))
            }
            Ok(_) => {
                return Err(unsafe_entry(
                    raw,
                    "a file of the same name is already in the archive",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&full).map_err(io_err("cannot create folder", &full))?;
            }
            Err(e) => return Err(io_err("cannot inspect", &full)(e)),
        }
        self.dir_modes.push((full, mode));
        Ok(())
    }

    /// Writes a regular file from `content`, refusing it as soon as the byte limit is passed
    /// (`declared` is the size the archive claims; the bytes actually read are counted too).
    pub(super) fn file(
        &mut self,
        rel: &Clean,
        raw: &[u8],
        mode: u32,
        mtime: Option<u64>,
        declared: u64,
        content: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        if !self.keeps(rel) {
            return Ok(());
        }
        self.count_entry()?;
        if self.bytes.saturating_add(declared) > self.limits.max_bytes {
            return Err(UnpackError::TooBig {
                what: "bytes",
                limit: self.limits.max_bytes,
            });
        }
        let full = self.parent_ready(rel, raw)?;
        self.clear_for_file(&full, raw)?;
        // O_EXCL: never opens an existing path, so never follows a symlink planted there.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(io_err("cannot create", &full))?;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::from_read(e)),
            };
            self.add_bytes(n as u64)?;
            file.write_all(&buf[..n])
                .map_err(io_err("cannot write", &full))?;
        }
        finish_file(&file, &full, mode, mtime)
    }

    /// Creates a symlink whose target must stay inside the tree.
    pub(super) fn symlink(
        &mut self,
        rel: &Clean,
        raw: &[u8],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        if self.keeps(rel) {
            self.count_entry()?;
        }
        if target.is_empty() {
            return Err(unsafe_entry(raw, "the symlink has an empty target"));
        }
        if target.len() > PATH_MAX {
            return Err(unsafe_entry(
                raw,
                format!("the symlink target is longer than {PATH_MAX} bytes"),
            ));
        }
        if target[0] == b'/' {
            return Err(unsafe_entry(
                raw,
                format!(
                    "the symlink points to the absolute path `{}`",
                    shown(target)
                ),
            ));
        }
        let walked = resolve_inside(rel.path(), target).ok_or_else(|| {
            unsafe_entry(
                raw,
                format!(
                    "the symlink target `{}` points outside the destination",
                    shown(target)
                ),
            )
        })?;
        if !self.keeps(rel) {
            return Ok(());
        }
        let full = self.parent_ready(rel, raw)?;
        self.clear_for_file(&full, raw)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &full)
            .map_err(io_err("cannot create symlink", &full))?;
        self.links.push(Link {
            at: rel.path().to_path_buf(),
            raw_target: target.to_vec(),
            walked,
        });
        Ok(())
    }

    /// Creates a hardlink to a regular file already unpacked in this tree.
    pub(super) fn hardlink(
        &mut self,
        rel: &Clean,
        raw: &[u8],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        if self.keeps(rel) {
            self.count_entry()?;
        }
        let outside = || {
            unsafe_entry(
                raw,
                format!(
                    "the hardlink target `{}` is not a file unpacked earlier inside the destination",
                    shown(target)
                ),
            )
        };
        // Targets are archive paths too: the same checks and the same `strip` apply.
        let target_rel = self
            .clean(target)
            .map_err(|_| outside())?
            .ok_or_else(outside)?;
        if !self.keeps(rel) {
            return Ok(());
        }
        if !self.keeps(&target_rel) {
            tracing::warn!(entry = %shown(raw), target = %shown(target),
                "left out: a hardlink to a file the include/exclude patterns leave out");
            return Ok(());
        }
        let mut at = self.root.to_path_buf();
        for part in target_rel.path().components() {
            at.push(part);
            let meta = fs::symlink_metadata(&at).map_err(|_| outside())?;
            if meta.file_type().is_symlink() {
                return Err(outside());
            }
        }
        if !fs::symlink_metadata(&at)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            return Err(outside());
        }
        let full = self.parent_ready(rel, raw)?;
        self.clear_for_file(&full, raw)?;
        fs::hard_link(&at, &full).map_err(io_err("cannot create hardlink", &full))
    }

    /// Final checks and modes, once every entry is written: no symlink target passes through
    /// another symlink, and folders get their modes (deepest first).
    pub(super) fn finish(mut self) -> Result<(), UnpackError> {
        for link in &self.links {
            for folder in &link.walked {
                let through = fs::symlink_metadata(self.root.join(folder))
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if through {
                    return Err(unsafe_entry(
                        link.at.as_os_str().as_bytes(),
                        format!(
                            "the symlink target `{}` passes through the symlink `{}`",
                            shown(&link.raw_target),
                            folder.display()
                        ),
                    ));
                }
            }
        }
        self.dir_modes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode) in &self.dir_modes {
            // A folder entry left unmade by the patterns has nothing to set.
            let made = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
            if !made {
                continue;
            }
            let mode = (mode & 0o777) | 0o700;
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(io_err("cannot set the mode of", path))?;
        }
        Ok(())
    }
}

/// Resolves a relative symlink target lexically from the link's folder. Returns the folders the
/// resolution passes through (each must later prove to be a real folder), or `None` when the
/// target climbs above the root.
fn resolve_inside(link: &Path, target: &[u8]) -> Option<Vec<PathBuf>> {
    let mut at: Vec<&OsStr> = link
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let parts: Vec<&[u8]> = target
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    let mut walked = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if *part == b".." {
            at.pop()?;
        } else {
            at.push(OsStr::from_bytes(part));
        }
        // Every step but the last is a folder the kernel will look up while following the link.
        if i + 1 < parts.len() && !at.is_empty() {
            walked.push(at.iter().collect());
        }
    }
    Some(walked)
}

fn finish_file(file: &File, full: &Path, mode: u32, mtime: Option<u64>) -> Result<(), UnpackError> {
    // Only the permission bits: setuid, setgid and sticky are dropped on purpose.
    file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
        .map_err(io_err("cannot set the mode of", full))?;
    if let Some(secs) = mtime {
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        // A filesystem that cannot store times is no reason to refuse the source.
        if let Err(e) = file.set_modified(when) {
            tracing::debug!(path = %full.display(), error = %e, "cannot set modification time");
        }
    }
    Ok(())
}

/// Maps a local filesystem error to [`UnpackError::Io`].
pub(super) fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> UnpackError + 'p {
    move |error| UnpackError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, strip: usize) -> Tree<'_> {
        Tree::new(root, strip, Limits::default())
    }

    #[test]
    fn cleans_paths_and_strips() {
        let root = tempfile::tempdir().unwrap();
        let t = tree(root.path(), 1);
        assert_eq!(
            t.clean(b"top/./a//b.txt").unwrap().unwrap().path(),
            Path::new("a/b.txt")
        );
        assert_eq!(t.clean(b"top/").unwrap(), None);
        let long_part = [b'x'; 256];
        let long_path = b"ab/".repeat(1400);
        for bad in [
            &b"/etc/passwd"[..],
            b"a/../../x",
            b"..",
            b"",
            &long_part,
            &long_path,
        ] {
            assert!(
                matches!(t.clean(bad), Err(UnpackError::Unsafe { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn symlink_resolution_stays_inside() {
        assert!(resolve_inside(Path::new("a/link"), b"../b").is_some());
        assert!(resolve_inside(Path::new("a/link"), b"../../b").is_none());
        assert!(resolve_inside(Path::new("link"), b"..").is_none());
        assert_eq!(
            resolve_inside(Path::new("s/b"), b"a/../x").unwrap(),
            vec![PathBuf::from("s/a"), PathBuf::from("s")]
        );
    }

    #[test]
    fn refuses_link_chains_that_escape() {
        let root = tempfile::tempdir().unwrap();
        let mut t = tree(root.path(), 0);
        let b = t.clean(b"s/b").unwrap().unwrap();
        let a = t.clean(b"s/a").unwrap().unwrap();
        // Each link alone stays inside lexically; but `s/a` is the root, so `s/b` -> `s/a/../..`
        // really climbs above it. Order does not matter: the check runs at the end.
        t.symlink(&b, b"s/b", b"a/../..").unwrap();
        t.symlink(&a, b"s/a", b"..").unwrap();
        let err = t.finish().unwrap_err().to_string();
        assert!(
            err.contains("s/b") && err.contains("passes through"),
            "{err}"
        );
    }

    #[test]
    fn enforces_limits() {
        let root = tempfile::tempdir().unwrap();
        let mut t = Tree::new(
            root.path(),
            0,
            Limits {
                max_bytes: 10,
                max_files: 2,
            },
        );
        let f = t.clean(b"f").unwrap().unwrap();
        t.file(&f, b"f", 0o644, None, 5, &mut &b"12345"[..])
            .unwrap();
        // The declared size lies; the bytes actually read still count.
        let g = t.clean(b"g").unwrap().unwrap();
        let err = t
            .file(&g, b"g", 0o644, None, 1, &mut &b"123456"[..])
            .unwrap_err();
        assert!(matches!(err, UnpackError::TooBig { what: "bytes", .. }));
        let h = t.clean(b"h").unwrap().unwrap();
        let err = t.dir(&h, b"h", 0o755).unwrap_err();
        assert!(matches!(err, UnpackError::TooBig { what: "files", .. }));
    }
}
