//! A local folder as a source: walked entry by entry and written through the same [`guard`] as
//! archive entries, so a folder can reach no further outside itself than an archive can.
//!
//! The walk never follows a symlink below the folder it starts from: each folder is opened
//! relative to its parent with `O_NOFOLLOW`, each file is opened the same way and checked to be a
//! regular file by its open handle, and a symlink is recreated by the guard (which refuses
//! absolute targets and targets that leave the tree), never read through. A device, fifo or socket
//! refuses the folder. The folder named by the source may itself be a symlink: the user chose it.
//!
//! Every walk also yields a fingerprint of what it met (each entry's path, kind, size, modification
//! time, inode and link target, in walk order), so a walk that copies nothing can tell whether the
//! folder changed since it was copied. This module only reads the folder; it writes only through
//! the guard.
//!
//! [`guard`]: super::guard

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD};
use sha2::{Digest, Sha256};

use super::guard::{io_err, shown, Tree};
use super::{Input, UnpackError, UnpackOptions};
use crate::localize::SourceProgress;

/// What a folder copy wrote. Invariant: `fingerprint` is what [`fingerprint`] returns for the
/// folder as it was walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderCopy {
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Entries written (files, folders, links).
    pub files: u64,
    /// Hex sha256 over the entries met (see the module docs).
    pub fingerprint: String,
}

/// Copies the folder `src` into the existing, empty folder `dest`, entry by entry through the
/// archive guard (the same rules, `#strip=` and limits as an archive). A folder whose device and
/// inode are `skip`'s (the destination, when it lies inside the source) is left out with all it
/// holds.
pub fn copy_folder(
    src: &Path,
    dest: &Path,
    skip: Option<&Path>,
    opts: &UnpackOptions,
    progress: &SourceProgress,
) -> Result<FolderCopy, UnpackError> {
    let mut tree = Tree::new(dest, opts.strip, opts.limits).filtered(opts.filter.clone());
    let fingerprint = walk(src, skip, true, |rel, found| {
        let Some(clean) = tree.clean(rel)? else {
            return Ok(());
        };
        match found {
            Found::Folder { mode } => tree.dir(&clean, rel, mode),
            Found::Symlink { target } => tree.symlink(&clean, rel, &target),
            Found::File {
                file,
                size,
                mode,
                mtime,
            } => {
                let Some(file) = file else {
                    // The walk opens every file when asked to, as it is here.
                    return Err(io_err("cannot open", src)(io::Error::other(
                        "file not opened",
                    )));
                };
                let mut reader = Input::new(file, progress);
                let written = tree.file(&clean, rel, mode, Some(mtime), size, &mut reader);
                match (written, reader.failure.take()) {
                    // The guard takes any read error for damage; here it is the local disk.
                    (Err(UnpackError::Corrupt { .. }), Some(error)) => {
                        let path = src.join(std::ffi::OsStr::from_bytes(rel));
                        Err(io_err("cannot read", &path)(error))
                    }
                    (done, _) => done,
                }
            }
        }
    })?;
    let (bytes, files) = (tree.bytes(), tree.files());
    tree.finish()?;
    Ok(FolderCopy {
        bytes,
        files,
        fingerprint,
    })
}

/// The fingerprint [`copy_folder`] would record for `src` now, without copying anything.
pub fn fingerprint(src: &Path, skip: Option<&Path>) -> Result<String, UnpackError> {
    walk(src, skip, false, |_, _| Ok(()))
}

/// Refuses a folder that holds anything but folders and regular files (a save of model
/// artifacts holds nothing else), without copying anything.
pub fn check_plain(src: &Path) -> Result<(), UnpackError> {
    walk(src, None, false, |rel, found| match found {
        Found::Symlink { .. } => Err(UnpackError::Unsafe {
            entry: shown(rel),
            reason: "it is a symlink, and a save holds only files and folders".into(),
        }),
        _ => Ok(()),
    })
    .map(|_| ())
}

/// One entry the walk met.
enum Found {
    Folder {
        mode: u32,
    },
    /// A regular file, opened without following links when the walk opens files.
    File {
        file: Option<File>,
        size: u64,
        mode: u32,
        mtime: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// A folder still to be read: its parent's handle and its name there, so that it is opened (with
/// `O_NOFOLLOW`) only when its turn comes and open handles stay as few as the tree is deep.
struct Pending {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    rel: Vec<u8>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Walks `root` depth first, names in byte order, each folder before what it holds, and calls
/// `visit` with each entry's path relative to `root`. Returns the fingerprint of the walk.
fn walk(
    root: &Path,
    skip: Option<&Path>,
    open_files: bool,
    mut visit: impl FnMut(&[u8], Found) -> Result<(), UnpackError>,
) -> Result<String, UnpackError> {
    let skip = match skip {
        Some(path) => rustix::fs::stat(path).ok().map(|st| (st.st_dev, st.st_ino)),
        None => None,
    };
    let top = rustix::fs::openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("cannot open folder", root)(e.into()))?;
    let mut hasher = Sha256::new();
    let mut stack = vec![(Arc::new(top), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let shown_dir = root.join(std::ffi::OsStr::from_bytes(&rel));
        let mut names: Vec<Vec<u8>> = Vec::new();
        let listing = Dir::read_from(&*dir)
            .map_err(|e| io_err("cannot read folder", &shown_dir)(e.into()))?;
        for entry in listing {
            let entry = entry.map_err(|e| io_err("cannot read folder", &shown_dir)(e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort();
        let mut folders = Vec::new();
        for name in names {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                [&rel[..], b"/", &name[..]].concat()
            };
            let path = || root.join(std::ffi::OsStr::from_bytes(&child));
            let st = rustix::fs::statat(&*dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err("cannot inspect", &path())(e.into()))?;
            let kind = FileType::from_raw_mode(st.st_mode);
            if kind == FileType::Directory && skip == Some((st.st_dev, st.st_ino)) {
                tracing::info!(folder = %path().display(), "leaving out the destination, which lies inside the source folder");
                continue;
            }
            let mode = st.st_mode & 0o7777;
            let found = match kind {
                FileType::Directory => {
                    folders.push(Pending {
                        parent: dir.clone(),
                        name: name.clone(),
                        rel: child.clone(),
                    });
                    Found::Folder { mode }
                }
                FileType::RegularFile => Found::File {
                    file: match open_files {
                        true => Some(open_file(&dir, &name, &st, &path())?),
                        false => None,
                    },
                    size: st.st_size as u64,
                    mode,
                    mtime: st.st_mtime.max(0) as u64,
                },
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&*dir, name.as_slice(), Vec::new())
                        .map_err(|e| io_err("cannot read link", &path())(e.into()))?;
                    Found::Symlink {
                        target: target.into_bytes(),
                    }
                }
                _ => {
                    return Err(UnpackError::Unsafe {
                        entry: shown(&child),
                        reason: "it is a device node, fifo or socket, which is never copied".into(),
                    })
                }
            };
            hash_entry(&mut hasher, &child, &st, &found);
            visit(&child, found)?;
        }
        // Reversed, so that the first name is read next.
        for pending in folders.into_iter().rev() {
            let fd = rustix::fs::openat(
                &*pending.parent,
                pending.name.as_slice(),
                DIR_FLAGS,
                Mode::empty(),
            )
            .map_err(|e| {
                let path = root.join(std::ffi::OsStr::from_bytes(&pending.rel));
                changed_or(e, &pending.rel, || {
                    io_err("cannot open folder", &path)(e.into())
                })
            })?;
            stack.push((Arc::new(fd), pending.rel));
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Opens a regular file met by the walk without following a link, and checks that the handle is
/// the file that was inspected (a file swapped for something else meanwhile is refused).
fn open_file(dir: &OwnedFd, name: &[u8], seen: &Stat, path: &Path) -> Result<File, UnpackError> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())
        .map_err(|e| changed_or(e, name, || io_err("cannot open", path)(e.into())))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err("cannot inspect", path)(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_ino != seen.st_ino {
        return Err(changed(name));
    }
    // Reads block as usual: O_NONBLOCK only kept the open from waiting on a fifo put there.
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())
        .map_err(|e| io_err("cannot open", path)(e.into()))?;
    Ok(File::from(fd))
}

/// A symlink met where a folder or file was (`ELOOP`, `ENOTDIR`) means the folder changed under
/// the walk, in the one way that could lead outside it: refused. Other errors are local failures.
fn changed_or(
    error: rustix::io::Errno,
    rel: &[u8],
    other: impl FnOnce() -> UnpackError,
) -> UnpackError {
    match error {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => changed(rel),
        _ => other(),
    }
}

fn changed(rel: &[u8]) -> UnpackError {
    UnpackError::Unsafe {
        entry: shown(rel),
        reason: "it was replaced while the folder was copied".into(),
    }
}

fn hash_entry(hasher: &mut Sha256, rel: &[u8], st: &Stat, found: &Found) {
    hasher.update(rel);
    hasher.update(
        format!(
            "\0{:o}:{}:{}.{}:{}",
            st.st_mode, st.st_size, st.st_mtime, st.st_mtime_nsec, st.st_ino
        )
        .as_bytes(),
    );
    if let Found::Symlink { target } = found {
        hasher.update(b"\0");
        hasher.update(target);
    }
    hasher.update(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localize::Limits;
    use std::fs;

    fn opts() -> UnpackOptions {
        UnpackOptions {
            strip: 0,
            limits: Limits::default(),
            file_name: String::new(),
            filter: Default::default(),
        }
    }

    #[test]
    fn copy_and_fingerprint_agree_and_see_changes() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/c.txt"), "c").unwrap();
        fs::write(src.join("top.txt"), "top").unwrap();
        std::os::unix::fs::symlink("a/b/c.txt", src.join("link")).unwrap();
        let stage = root.path().join("stage");
        fs::create_dir(&stage).unwrap();
        let copied = copy_folder(&src, &stage, None, &opts(), &SourceProgress::none()).unwrap();
        assert_eq!((copied.bytes, copied.files), (4, 5));
        assert_eq!(fs::read_to_string(stage.join("link")).unwrap(), "c");
        assert_eq!(fingerprint(&src, None).unwrap(), copied.fingerprint);
        fs::write(src.join("a/b/c.txt"), "C").unwrap();
        assert_ne!(fingerprint(&src, None).unwrap(), copied.fingerprint);
        // The skipped folder (a destination inside the source) is not walked at all.
        let with_skip = fingerprint(&src, Some(&src.join("a"))).unwrap();
        fs::write(src.join("a/more.txt"), "x").unwrap();
        assert_eq!(fingerprint(&src, Some(&src.join("a"))).unwrap(), with_skip);
    }

    #[test]
    fn a_save_may_hold_no_symlink() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/w.bin"), "w").unwrap();
        check_plain(root.path()).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("d/h")).unwrap();
        let err = check_plain(root.path()).unwrap_err().to_string();
        assert!(err.contains("d/h") && err.contains("symlink"), "{err}");
    }
}
