//! Staging and atomic publish.
//!
//! Fetchers write only into a staging folder under `DEST/.periscope/staging/`, on the same
//! filesystem as `DEST` (which is often an emptyDir mount point, so a sibling of DEST would not
//! be). Publishing is one rename: `DEST/<into>` either does not exist yet, or is swapped with the
//! staged tree in a single `renameat2(RENAME_EXCHANGE)`, so a reader never sees a half-made tree.
//! This module must never write into `DEST/<into>` directly.
//!
//! `DEST/<into>` is reached one folder at a time from `DEST`, each opened with `O_NOFOLLOW`, and
//! the last step is a rename inside the folder so opened. An earlier source may have left a symlink
//! on the way (git trees may hold absolute links): such a path is refused, never followed, so
//! publishing can neither write nor delete anything outside `DEST`. `DEST` itself is the user's
//! choice and may be a symlink.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, CWD};

use crate::error::{Classify, ErrorClass};
use crate::fsutil::sync_tree;

/// A failure while preparing or publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A local filesystem operation failed.
    #[error("{action} `{}`: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    /// The way to the target passes through a symlink (left by an earlier source): following it
    /// could write or delete outside the destination.
    #[error("refusing to publish to `{}`: `{}` is a symlink, which is never followed", target.display(), link.display())]
    Symlink { target: PathBuf, link: PathBuf },
}

impl Classify for PublishError {
    fn class(&self) -> ErrorClass {
        match self {
            PublishError::Io { .. } => ErrorClass::Io,
            PublishError::Symlink { .. } => ErrorClass::Integrity,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            PublishError::Io { .. } => {
                "check that the destination is writable by this user and has free space".into()
            }
            PublishError::Symlink { .. } => {
                "an earlier source put a symlink there; nothing was published for this source: \
                 give it an #into= folder that does not pass through a link"
                    .into()
            }
        })
    }
}

fn ctx<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PublishError + 'a {
    move |error| PublishError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// An exclusive lock on a destination, held while localizing into it, so two processes that share
/// a volume never publish over each other. Released when dropped.
pub struct DestLock {
    _file: File,
}

impl DestLock {
    /// Blocks until the lock on `meta_dir/lock` is held.
    pub fn acquire(meta_dir: &Path) -> Result<DestLock, PublishError> {
        let path = meta_dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ctx("cannot open lock file", &path))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(ctx("cannot lock", &path)(io::Error::last_os_error()));
        }
        Ok(DestLock { _file: file })
    }
}

/// Removes staging folders left by a run that crashed.
pub fn clean_stale_staging(staging_root: &Path) -> Result<(), PublishError> {
    match fs::read_dir(staging_root) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing staging left by an earlier run");
                remove_tree(&path)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("cannot read staging folder", staging_root)(e)),
    }
}

/// Creates a fresh, empty staging folder for one source.
pub fn new_stage(staging_root: &Path, into: &str) -> Result<PathBuf, PublishError> {
    fs::create_dir_all(staging_root).map_err(ctx("cannot create staging folder", staging_root))?;
    let safe = safe_name(into);
    let stage = staging_root.join(format!(
        "{safe}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    fs::create_dir(&stage).map_err(ctx("cannot create staging folder", &stage))?;
    Ok(stage)
}

/// `into` as one file name: letters, digits, `-` and `_` kept, anything else `_`.
fn safe_name(into: &str) -> String {
    into.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The destination a staging folder made by [`new_stage`] belongs to
/// (`DEST/.periscope/staging/<stage>`).
pub fn dest_of_stage(stage: &Path) -> Option<&Path> {
    stage.parent()?.parent()?.parent()
}

/// Removes a folder tree; a missing folder is fine.
pub fn remove_tree(path: &Path) -> Result<(), PublishError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("cannot remove", path)(e)),
    }
}

/// Moves the staged tree to `DEST/<into>` in one step, replacing whatever was there. `into` is
/// relative and made of normal components only (the [`SourceSpec`](super::SourceSpec) invariant).
pub fn publish(stage: &Path, dest: &Path, into: &str) -> Result<(), PublishError> {
    let target = dest.join(into);
    // Make the staged files durable before the rename makes them visible: after a power cut, a
    // published tree must never hold empty files that the record calls done. This covers every
    // file a fetcher wrote, whichever fetcher it was.
    sync_tree(stage).map_err(ctx("cannot sync", stage))?;
    let names = folder_names(into, &target)?;
    let Some((last, parents)) = names.split_last() else {
        unreachable!("folder_names returns at least one name");
    };
    let parent = open_beneath(dest, parents, &target)?;
    let parent_path = crate::fsutil::parent_dir(&target);
    match rustix::fs::statat(&parent, *last, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => rename_into(stage, &parent, last, &target)?,
        Err(e) => return Err(ctx("cannot inspect", &target)(e.into())),
        // A folder, or a file or symlink where the tree belongs (a symlink there is swapped away
        // like any entry, never followed).
        Ok(_) => match rustix::fs::renameat_with(CWD, stage, &parent, *last, RenameFlags::EXCHANGE)
        {
            // After the exchange, `stage` holds the old tree.
            Ok(()) => remove_tree(stage)?,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                // The filesystem cannot exchange; fall back to two renames (a short gap, no mix).
                let old = stage.with_extension("old");
                rustix::fs::renameat(&parent, *last, CWD, &old)
                    .map_err(|e| ctx("cannot move aside", &target)(e.into()))?;
                rename_into(stage, &parent, last, &target)?;
                remove_tree(&old)?;
            }
            Err(e) => return Err(ctx("cannot publish to", &target)(e.into())),
        },
    }
    rustix::fs::fsync(&parent).map_err(|e| ctx("cannot sync", parent_path)(e.into()))?;
    // A tree published in place replaces revisions kept for a link there.
    prune_revisions(dest, into, &[])
}

/// The folder names of `into` (at least one), each a plain name.
fn folder_names<'a>(into: &'a str, target: &Path) -> Result<Vec<&'a OsStr>, PublishError> {
    let names: Vec<&OsStr> = Path::new(into)
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(ctx("cannot publish to", target)(io::Error::other(
                "the folder name is not a plain relative path",
            ))),
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(ctx("cannot publish to", target)(io::Error::other(
            "the folder name is empty",
        )));
    }
    Ok(names)
}

/// Where [`publish_link`] keeps the revisions its links point at: `DEST/.periscope/revisions/`.
pub const REVISIONS_DIR: &str = "revisions";

/// The prefix of every revision kept for `into`: its safe name and a digest of the name itself,
/// so two names that look alike once made safe (`a/b`, `a_b`) never share revisions.
fn revision_prefix(into: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(into.as_bytes());
    format!("{}-{}@", safe_name(into), &hex::encode(digest)[..8])
}

/// Publishes the staged tree as git-sync does: the tree moves to
/// `DEST/.periscope/revisions/<name>@<revision>-<random>`, and `DEST/<into>` becomes a relative
/// symlink to it, swapped in one rename. A reader sees the old tree or the new one, never a mix;
/// one that holds the old tree open (its working folder, open files) keeps reading it. The
/// revision the link pointed at before is kept until the next swap replaces it in turn; older
/// ones are removed. A folder published in place earlier is moved aside in the same way.
pub fn publish_link(
    stage: &Path,
    dest: &Path,
    into: &str,
    revision: &str,
) -> Result<(), PublishError> {
    let target = dest.join(into);
    sync_tree(stage).map_err(ctx("cannot sync", stage))?;
    let names = folder_names(into, &target)?;
    let Some((last, parents)) = names.split_last() else {
        unreachable!("folder_names returns at least one name");
    };
    let revisions = dest.join(super::META_DIR).join(REVISIONS_DIR);
    fs::create_dir_all(&revisions).map_err(ctx("cannot create", &revisions))?;
    let prefix = revision_prefix(into);
    let name = format!(
        "{prefix}{}-{:08x}",
        revision.get(..12).unwrap_or(revision),
        rand::random::<u32>()
    );
    let kept = revisions.join(&name);
    fs::rename(stage, &kept).map_err(ctx("cannot keep revision", &kept))?;
    let parent = open_beneath(dest, parents, &target)?;
    let value = format!(
        "{}{}/{REVISIONS_DIR}/{name}",
        "../".repeat(parents.len()),
        super::META_DIR
    );
    let temporary = format!(
        ".{}.link-{:08x}",
        last.to_string_lossy(),
        rand::random::<u32>()
    );
    rustix::fs::symlinkat(value.as_str(), &parent, temporary.as_str())
        .map_err(|e| ctx("cannot make a link in", &target)(e.into()))?;
    let previous = match rustix::fs::statat(&parent, *last, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => None,
        Err(e) => return Err(ctx("cannot inspect", &target)(e.into())),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            rustix::fs::readlinkat(&parent, *last, Vec::new())
                .ok()
                .and_then(|v| {
                    let v = v.to_string_lossy().into_owned();
                    v.rsplit('/').next().map(str::to_string)
                })
        }
        // A tree published in place: swapped with the link, then kept as the previous revision.
        Ok(_) => {
            rustix::fs::renameat_with(
                &parent,
                temporary.as_str(),
                &parent,
                *last,
                RenameFlags::EXCHANGE,
            )
            .map_err(|e| ctx("cannot publish to", &target)(e.into()))?;
            let aside = format!("{prefix}in-place-{:08x}", rand::random::<u32>());
            rustix::fs::renameat(&parent, temporary.as_str(), CWD, revisions.join(&aside))
                .map_err(|e| ctx("cannot move aside", &target)(e.into()))?;
            rustix::fs::fsync(&parent)
                .map_err(|e| ctx("cannot sync", crate::fsutil::parent_dir(&target))(e.into()))?;
            return prune_revisions(dest, into, &[&name, &aside]);
        }
    };
    rustix::fs::renameat(&parent, temporary.as_str(), &parent, *last)
        .map_err(|e| ctx("cannot publish to", &target)(e.into()))?;
    rustix::fs::fsync(&parent)
        .map_err(|e| ctx("cannot sync", crate::fsutil::parent_dir(&target))(e.into()))?;
    let mut keep = vec![name.as_str()];
    keep.extend(previous.as_deref());
    prune_revisions(dest, into, &keep)
}

/// Removes the revisions kept for `into` except those named in `keep`.
fn prune_revisions(dest: &Path, into: &str, keep: &[&str]) -> Result<(), PublishError> {
    let revisions = dest.join(super::META_DIR).join(REVISIONS_DIR);
    let prefix = revision_prefix(into);
    let entries = match fs::read_dir(&revisions) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx("cannot read", &revisions)(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && !keep.contains(&name.as_str()) {
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

fn rename_into(
    stage: &Path,
    parent: &OwnedFd,
    name: &OsStr,
    target: &Path,
) -> Result<(), PublishError> {
    rustix::fs::renameat(CWD, stage, parent, name)
        .map_err(|e| ctx("cannot publish to", target)(e.into()))
}

/// Opens `dest/names…` as a folder, creating what is missing, one component at a time and never
/// through a symlink.
fn open_beneath(dest: &Path, names: &[&OsStr], target: &Path) -> Result<OwnedFd, PublishError> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    fs::create_dir_all(dest).map_err(ctx("cannot create", dest))?;
    let mut dir = rustix::fs::openat(CWD, dest, dir_flags, Mode::empty())
        .map_err(|e| ctx("cannot open", dest)(e.into()))?;
    let mut at = dest.to_path_buf();
    for name in names {
        at.push(name);
        let opened = rustix::fs::openat(&dir, *name, dir_flags | OFlags::NOFOLLOW, Mode::empty());
        dir = match opened {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, *name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(ctx("cannot create", &at)(e.into())),
                }
                rustix::fs::openat(&dir, *name, dir_flags | OFlags::NOFOLLOW, Mode::empty())
                    .map_err(|e| not_a_folder(e, &dir, name, &at, target))?
            }
            Err(e) => return Err(not_a_folder(e, &dir, name, &at, target)),
        };
    }
    Ok(dir)
}

/// The error for a path component that could not be opened as a folder: a symlink is refused as
/// unsafe; anything else is a local failure.
fn not_a_folder(
    error: rustix::io::Errno,
    dir: &OwnedFd,
    name: &OsStr,
    at: &Path,
    target: &Path,
) -> PublishError {
    let is_link = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
    if is_link {
        PublishError::Symlink {
            target: target.to_path_buf(),
            link: at.to_path_buf(),
        }
    } else if error == rustix::io::Errno::NOTDIR {
        ctx("cannot publish below", at)(io::Error::other("it is not a folder"))
    } else {
        ctx("cannot open", at)(error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_then_replaces_in_one_step() {
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join(".periscope/staging");
        let target = root.path().join("job");
        let s1 = new_stage(&staging, "job").unwrap();
        fs::write(s1.join("a.txt"), "one").unwrap();
        publish(&s1, root.path(), "job").unwrap();
        assert_eq!(fs::read_to_string(target.join("a.txt")).unwrap(), "one");
        let s2 = new_stage(&staging, "job").unwrap();
        fs::write(s2.join("b.txt"), "two").unwrap();
        publish(&s2, root.path(), "job").unwrap();
        assert!(!target.join("a.txt").exists());
        assert_eq!(fs::read_to_string(target.join("b.txt")).unwrap(), "two");
        assert_eq!(
            fs::read_dir(&staging).unwrap().count(),
            0,
            "old tree left behind"
        );
    }

    #[test]
    fn links_swap_revisions_and_keep_the_previous_one_until_the_next() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path();
        let staging = dest.join(".periscope/staging");
        let revisions = dest.join(".periscope/revisions");
        let publish_rev = |text: &str, rev: &str| {
            let stage = new_stage(&staging, "team/job").unwrap();
            fs::write(stage.join("v.txt"), text).unwrap();
            publish_link(&stage, dest, "team/job", rev).unwrap();
        };
        // A tree published in place first: the link replaces it, and it is kept as the previous.
        let stage = new_stage(&staging, "team/job").unwrap();
        fs::write(stage.join("v.txt"), "zero").unwrap();
        publish(&stage, dest, "team/job").unwrap();
        publish_rev("one", "1111111111111111");
        let link = dest.join("team/job");
        assert!(link.is_symlink());
        let value = fs::read_link(&link).unwrap();
        assert!(value.starts_with("../.periscope/revisions/"), "{value:?}");
        assert_eq!(fs::read_to_string(link.join("v.txt")).unwrap(), "one");
        assert_eq!(fs::read_dir(&revisions).unwrap().count(), 2);
        let first = link.canonicalize().unwrap();
        let mut held = fs::File::open(first.join("v.txt")).unwrap();
        publish_rev("two", "2222222222222222");
        assert_eq!(fs::read_to_string(link.join("v.txt")).unwrap(), "two");
        assert_eq!(fs::read_to_string(first.join("v.txt")).unwrap(), "one");
        assert_eq!(fs::read_dir(&revisions).unwrap().count(), 2);
        publish_rev("three", "3333333333333333");
        assert!(!first.exists(), "the revision before the previous is kept");
        assert_eq!(fs::read_dir(&revisions).unwrap().count(), 2);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut held, &mut text).unwrap();
        assert_eq!(
            text, "one",
            "an open file of an old revision stays readable"
        );
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
        // Published in place again: the link and its revisions go.
        let stage = new_stage(&staging, "team/job").unwrap();
        fs::write(stage.join("v.txt"), "four").unwrap();
        publish(&stage, dest, "team/job").unwrap();
        assert!(!link.is_symlink());
        assert_eq!(fs::read_dir(&revisions).unwrap().count(), 0);
    }

    #[test]
    fn never_publishes_through_a_symlink() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("dest");
        let outside = root.path().join("outside");
        fs::create_dir_all(outside.join("victim")).unwrap();
        fs::write(outside.join("victim/keep.txt"), "mine").unwrap();
        fs::create_dir_all(dest.join("r")).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("r/lnk")).unwrap();
        let stage = new_stage(&dest.join(".periscope/staging"), "v").unwrap();
        fs::write(stage.join("new.txt"), "theirs").unwrap();
        let err = publish(&stage, &dest, "r/lnk/victim").unwrap_err();
        assert!(matches!(err, PublishError::Symlink { .. }), "{err}");
        assert_eq!(err.class(), ErrorClass::Integrity);
        assert_eq!(
            fs::read_to_string(outside.join("victim/keep.txt")).unwrap(),
            "mine"
        );
        assert!(!outside.join("victim/new.txt").exists());
        // The link itself may be replaced: that writes inside DEST only.
        publish(&stage, &dest, "r/lnk").unwrap();
        assert!(dest.join("r/lnk").is_dir() && !dest.join("r/lnk").is_symlink());
        assert!(outside.join("victim/keep.txt").exists());
    }
}
