//! Writing a fetched commit's tree into the working folder, with the index that records it.
//!
//! libgit2's checkout writes one file after another on one thread, inflating each blob first:
//! for a 10,000-file tree that is most of a localize's time, with every other core idle. So an
//! ordinary tree is written here instead, by several threads at once, each with its own handle on
//! the repository (libgit2 handles may not be shared between threads), and the index is built
//! from what was written, with the stat data `git status` compares against, so the checkout is
//! clean.
//!
//! "Ordinary" is narrow on purpose. A tree that needs filters (`.gitattributes`, `core.autocrlf`),
//! or holds a name git treats specially (`.git` in any spelling a filesystem might read as such,
//! `..`, a backslash, a trailing dot or space), an unusual mode or a duplicate entry goes to
//! libgit2's checkout, which knows all of git's rules. The fast path writes only below the
//! working folder: folders first, then files (created new, so nothing is written through a link),
//! then symlinks last, so no file is ever written through a link from the same tree.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use git2::build::CheckoutBuilder;
use git2::{FileMode, IndexEntry, IndexTime, Oid, Repository, Tree, TreeWalkMode, TreeWalkResult};

use super::error::GitError;
use super::remote::Target;
use crate::parallel;

/// The ref a fetch by SHA writes into, removed after checkout.
pub const WANT_REF: &str = "refs/periscope/want";

/// Most threads that write one tree: beyond this, they mostly wait on each other's folder locks.
const MAX_THREADS: usize = 8;

/// Points HEAD at `commit` (as a local branch for branches, detached otherwise) and writes the
/// working tree and the index.
pub fn checkout(repo: &Repository, commit: Oid, target: &Target) -> Result<(), GitError> {
    let object = repo.find_commit(commit).map_err(GitError::local)?;
    match target {
        Target::Branch(name) => {
            repo.branch(name, &object, true).map_err(GitError::local)?;
            repo.set_head(&format!("refs/heads/{name}"))
                .map_err(GitError::local)?;
        }
        _ => repo.set_head_detached(commit).map_err(GitError::local)?,
    }
    let tree = object.tree().map_err(GitError::local)?;
    let configured = filters_configured(repo).map_err(GitError::local)?;
    // The plan's own walk finds `.gitattributes` and leaves such trees to libgit2.
    let plan = if configured {
        None
    } else {
        Plan::of(&tree).map_err(GitError::local)?
    };
    match (plan, repo.workdir()) {
        (Some(plan), Some(workdir)) => {
            tracing::debug!(
                files = plan.entries.len(),
                "writing the tree on several threads"
            );
            plan.write(repo, workdir)?;
        }
        _ => {
            tracing::debug!("writing the tree with libgit2's checkout");
            let mut builder = CheckoutBuilder::new();
            builder.force();
            if !configured && !has_attributes(&tree).map_err(GitError::local)? {
                // Loading attributes for every file costs libgit2 a realpath() per path and
                // doubles the checkout time of a 10k-file tree; with no attributes and no
                // autocrlf they change nothing.
                builder.disable_filters(true);
            }
            repo.checkout_head(Some(&mut builder)).map_err(|e| {
                // libgit2 checks every path against git's rules (`.git`, `..`, NTFS and HFS
                // spellings) and stops at the first it refuses.
                if e.class() == git2::ErrorClass::Checkout && e.message().contains("invalid path") {
                    GitError::UnsafePath {
                        detail: e.message().to_string(),
                    }
                } else {
                    GitError::local(e)
                }
            })?;
        }
    }
    if let Ok(mut want) = repo.find_reference(WANT_REF) {
        want.delete().map_err(GitError::local)?;
    }
    Ok(())
}

/// Whether the repository's configuration turns libgit2's filters on for every tree: only
/// `core.autocrlf` and `core.attributesFile` do (in-tree `.gitattributes` is [`has_attributes`]).
fn filters_configured(repo: &Repository) -> Result<bool, git2::Error> {
    let config = repo.config()?;
    let autocrlf = config
        .get_string("core.autocrlf")
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(
        matches!(autocrlf.as_str(), "true" | "input" | "yes" | "on" | "1")
            || config.get_path("core.attributesFile").is_ok(),
    )
}

/// Whether `tree` holds a `.gitattributes` anywhere.
fn has_attributes(tree: &Tree<'_>) -> Result<bool, git2::Error> {
    let mut found = false;
    let walked = tree.walk(TreeWalkMode::PreOrder, |_, entry| {
        if entry.name_bytes() == ATTRIBUTES {
            found = true;
            TreeWalkResult::Abort
        } else {
            TreeWalkResult::Ok
        }
    });
    match walked {
        // Stopping the walk at the first match is reported as an error.
        Err(_) if found => Ok(true),
        Err(e) => Err(e),
        Ok(()) => Ok(false),
    }
}

/// The file whose rules may make libgit2's filters change what a checkout writes.
const ATTRIBUTES: &[u8] = b".gitattributes";

/// What one tree entry becomes in the working folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File {
        executable: bool,
    },
    Symlink,
    /// A submodule's commit: an empty folder, filled by the submodule update.
    Gitlink,
}

/// One non-folder entry to write. Invariant: `path` is relative, `/`-separated, and every
/// component passed [`ordinary_name`].
struct Entry {
    path: Vec<u8>,
    id: Oid,
    kind: Kind,
    /// What was written, recorded by the thread that wrote it.
    written: OnceLock<std::fs::Metadata>,
}

/// A tree the fast path may write. Invariant: folders are listed parents first, and no path
/// appears twice among folders and entries.
struct Plan {
    folders: Vec<Vec<u8>>,
    entries: Vec<Entry>,
}

impl Plan {
    /// The plan for `tree`, or `None` when something in it is for libgit2 to judge.
    fn of(tree: &Tree<'_>) -> Result<Option<Plan>, git2::Error> {
        let mut plan = Plan {
            folders: Vec::new(),
            entries: Vec::new(),
        };
        let mut ordinary = true;
        tree.walk(TreeWalkMode::PreOrder, |root, entry| {
            let name = entry.name_bytes();
            // Attributes may filter what is written: that is libgit2's job.
            if !ordinary_name(name) || name == ATTRIBUTES {
                ordinary = false;
                return TreeWalkResult::Abort;
            }
            let mut path = root.as_bytes().to_vec();
            path.extend_from_slice(name);
            let kind = match entry.filemode() {
                m if m == i32::from(FileMode::Tree) => {
                    plan.folders.push(path);
                    return TreeWalkResult::Ok;
                }
                m if m == i32::from(FileMode::Blob) => Kind::File { executable: false },
                m if m == i32::from(FileMode::BlobExecutable) => Kind::File { executable: true },
                // git refuses a `.gitmodules` that is a link (CVE-2018-11235); let libgit2 say so.
                m if m == i32::from(FileMode::Link) && name != b".gitmodules" => Kind::Symlink,
                m if m == i32::from(FileMode::Commit) => Kind::Gitlink,
                _ => {
                    ordinary = false;
                    return TreeWalkResult::Abort;
                }
            };
            plan.entries.push(Entry {
                path,
                id: entry.id(),
                kind,
                written: OnceLock::new(),
            });
            TreeWalkResult::Ok
        })
        .or_else(|e| if ordinary { Err(e) } else { Ok(()) })?;
        let mut seen = HashSet::new();
        let unique = plan
            .folders
            .iter()
            .chain(plan.entries.iter().map(|e| &e.path))
            .all(|p| seen.insert(p.as_slice()));
        Ok((ordinary && unique).then_some(plan))
    }

    /// Writes the plan under `workdir` (which holds only `.git`) and replaces the index with it.
    fn write(self, repo: &Repository, workdir: &Path) -> Result<(), GitError> {
        let at = |path: &[u8]| workdir.join(OsStr::from_bytes(path));
        let io = |path: &[u8], error: std::io::Error| GitError::Local {
            detail: format!(
                "cannot write `{}` in the checkout: {error}",
                String::from_utf8_lossy(path)
            ),
        };
        for folder in &self.folders {
            std::fs::create_dir(at(folder)).map_err(|e| io(folder, e))?;
        }
        let git_dir = repo.path().to_path_buf();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        let (links, rest): (Vec<&Entry>, Vec<&Entry>) =
            self.entries.iter().partition(|e| e.kind == Kind::Symlink);
        // Files before links: a file's folders are then real folders, never a link just made.
        for batch in [rest, links] {
            parallel::try_for_each_with(
                &batch,
                threads,
                || Repository::open(&git_dir).map_err(GitError::local),
                |repo, entry| {
                    let path = at(&entry.path);
                    let written = write_entry(repo, entry, &path).map_err(|e| match e {
                        Written::Git(e) => GitError::local(e),
                        Written::Io(e) => io(&entry.path, e),
                    })?;
                    // Each entry is in one batch and taken by one thread: set exactly once.
                    let _ = entry.written.set(written);
                    Ok(())
                },
            )?;
        }
        let mut index = repo.index().map_err(GitError::local)?;
        index.clear().map_err(GitError::local)?;
        for entry in &self.entries {
            index.add(&index_entry(entry)).map_err(GitError::local)?;
        }
        index.write().map_err(GitError::local)
    }
}

/// Why writing one entry failed.
enum Written {
    Git(git2::Error),
    Io(std::io::Error),
}

/// Writes one entry at `path` and returns what was written (`lstat`).
fn write_entry(
    repo: &Repository,
    entry: &Entry,
    path: &PathBuf,
) -> Result<std::fs::Metadata, Written> {
    match entry.kind {
        Kind::File { executable } => {
            let blob = repo.find_blob(entry.id).map_err(Written::Git)?;
            // As git does: 0666 or 0777, less the umask; `create_new` never follows a link.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if executable { 0o777 } else { 0o666 })
                .open(path)
                .map_err(Written::Io)?;
            file.write_all(blob.content()).map_err(Written::Io)?;
            file.metadata().map_err(Written::Io)
        }
        Kind::Symlink => {
            let blob = repo.find_blob(entry.id).map_err(Written::Git)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(blob.content()), path)
                .map_err(Written::Io)?;
            std::fs::symlink_metadata(path).map_err(Written::Io)
        }
        Kind::Gitlink => {
            std::fs::create_dir(path).map_err(Written::Io)?;
            std::fs::symlink_metadata(path).map_err(Written::Io)
        }
    }
}

/// The index entry git would record for `entry` as written: its id and mode from the tree, and
/// the stat data that lets `git status` see the file unchanged without reading it.
fn index_entry(entry: &Entry) -> IndexEntry {
    let mode = match entry.kind {
        Kind::File { executable: false } => FileMode::Blob,
        Kind::File { executable: true } => FileMode::BlobExecutable,
        Kind::Symlink => FileMode::Link,
        Kind::Gitlink => FileMode::Commit,
    };
    // A submodule keeps no stat data.
    let stat = entry.written.get().filter(|_| entry.kind != Kind::Gitlink);
    let time = IndexTime::new(0, 0);
    let mut index_entry = IndexEntry {
        ctime: time,
        mtime: time,
        dev: 0,
        ino: 0,
        mode: u32::from(mode),
        uid: 0,
        gid: 0,
        file_size: 0,
        id: entry.id,
        // libgit2 sets the name-length bits itself.
        flags: 0,
        flags_extended: 0,
        path: entry.path.clone(),
    };
    if let Some(meta) = stat {
        restat(&mut index_entry, meta);
    }
    index_entry
}

/// Records in `entry` the stat data of the file as written (`meta`), which `git status` compares
/// to tell the file unchanged without reading it. The index stores 32-bit fields and truncates,
/// as git does.
pub(super) fn restat(entry: &mut IndexEntry, meta: &std::fs::Metadata) {
    let time = |secs: i64, nanos: i64| IndexTime::new(secs as i32, nanos as u32);
    entry.ctime = time(meta.ctime(), meta.ctime_nsec());
    entry.mtime = time(meta.mtime(), meta.mtime_nsec());
    entry.dev = meta.dev() as u32;
    entry.ino = meta.ino() as u32;
    entry.uid = meta.uid();
    entry.gid = meta.gid();
    entry.file_size = meta.size() as u32;
}

/// Whether a tree entry's name is one the fast path may write as is. Anything git might refuse, or
/// that some filesystem could read as `.git`, goes to libgit2 instead.
fn ordinary_name(name: &[u8]) -> bool {
    if name.is_empty()
        || name == b"."
        || name == b".."
        || name
            .iter()
            .any(|&b| matches!(b, b'/' | b'\\' | b':' | b'~') || b < 0x20)
        || name.ends_with(b".")
        || name.ends_with(b" ")
    {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(b".git") {
        // `.gitignore`, `.github`, `.git-blame-ignore-revs`: but not `.git` or `.git.x`.
        return lower
            .get(4)
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    }
    // Characters HFS+ ignores could hide `.git` inside a name that is not plain ASCII.
    let visible: Vec<u8> = lower.into_iter().filter(u8::is_ascii).collect();
    name.is_ascii() || !visible.windows(3).any(|w| w == b"git")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_everyday_names_take_the_fast_path() {
        for ok in [
            "train.py",
            ".gitignore",
            ".github",
            ".git-blame-ignore-revs",
            "a b",
            "données",
            "x.tar.gz",
        ] {
            assert!(ordinary_name(ok.as_bytes()), "{ok}");
        }
        for special in [
            "",
            ".",
            "..",
            ".git",
            ".GIT",
            ".git ",
            ".git.",
            ".git.x",
            "git~1",
            "a:b",
            "a\\b",
            "a/b",
            "a.",
            "a\n",
            ".g\u{200c}it",
            "gi\u{200d}t",
        ] {
            assert!(!ordinary_name(special.as_bytes()), "{special:?}");
        }
    }
}
