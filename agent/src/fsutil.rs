//! Durable file operations: the one way Periscope writes a file that must survive a crash.
//!
//! A checkpoint or record that is half-written after `kill -9` or a power cut is worse than an
//! old one. [`write_atomic`] writes a temporary file beside the target, fsyncs it, renames it over
//! the target and fsyncs the folder, so a reader sees either the old content or the new, never a mix.
//! [`sync_tree`] makes a whole staged tree durable before it is published.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `contents` atomically and durably.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether a write failed for want of room on the disk (full, or over quota): it may work once
/// room is made, unlike a wrong setting.
pub fn no_room(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    Ok(room(path)?.0)
}

/// Whether the filesystem holding `path` has no room left to write a file: under 1 MiB free for
/// an unprivileged writer, or no free inode. For errors that do not say why (SQLite's "unable to
/// open database file").
pub fn out_of_room(path: &Path) -> bool {
    room(path).is_ok_and(|(bytes, inodes)| bytes < (1 << 20) || inodes == Some(0))
}

/// Free bytes, and free inodes (`None` where the filesystem does not count them), for an
/// unprivileged writer on the filesystem holding `path`.
fn room(path: &Path) -> io::Result<(u64, Option<u64>)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the zeroed struct we own from a NUL-terminated path we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    let inodes = (st.f_files > 0).then_some(st.f_favail as u64);
    Ok((bytes, inodes))
}

/// Fsyncs a folder, so that renames and new entries in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Dirty bytes of other writers below which one `syncfs` is always the cheaper way to make a
/// tree durable: flushing them costs less than the fsync calls it saves.
const SYNCFS_SLACK: u64 = 256 << 20;
/// About what one fsync costs, in bytes of writeback, when fsyncs run in parallel: many small
/// files are cheaper to flush with one `syncfs` than file by file, each fsync committing the
/// journal.
const FSYNC_COST_BYTES: u64 = 128 << 10;
/// fsyncs in flight at once: they wait on the disk, not the CPU, and the filesystem commits
/// concurrent ones together.
const FSYNC_THREADS: usize = 16;

/// How to make a tree durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TreeSync {
    /// One `syncfs`: flushes the whole filesystem, other writers' dirty pages included.
    Filesystem,
    /// fsync every file and folder of the tree, in parallel.
    EachFile,
}

/// Chooses the cheaper way, knowing the system's dirty bytes and the tree's files and bytes:
/// `syncfs` unless other writers have much more unwritten data than this tree (a node where other
/// pods are writing checkpoints), which `syncfs` would wait for too.
fn choose(dirty: u64, files: u64, bytes: u64) -> TreeSync {
    let others = dirty.saturating_sub(bytes);
    if others > SYNCFS_SLACK.saturating_add(files.saturating_mul(FSYNC_COST_BYTES)) {
        TreeSync::EachFile
    } else {
        TreeSync::Filesystem
    }
}

/// The system's dirty page-cache bytes (`Dirty:` of /proc/meminfo), if readable.
fn dirty_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Dirty:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Makes every file and folder below `root` durable, by whichever way [`choose`] finds cheaper.
/// Symlinks are entries of their folder and are made durable with it.
pub fn sync_tree(root: &Path) -> io::Result<()> {
    let dirty = dirty_bytes();
    if dirty.is_none_or(|d| d <= SYNCFS_SLACK) {
        return syncfs(root);
    }
    let (mut files, mut dirs, mut bytes) = (Vec::new(), vec![root.to_path_buf()], 0u64);
    let mut i = 0;
    while let Some(dir) = dirs.get(i).cloned() {
        i += 1;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                bytes += entry.metadata()?.len();
                files.push(entry.path());
            }
        }
    }
    match choose(dirty.unwrap_or(0), files.len() as u64, bytes) {
        TreeSync::Filesystem => syncfs(root),
        TreeSync::EachFile => {
            tracing::debug!(
                files = files.len(),
                bytes,
                "other writers have much unwritten data; syncing the tree file by file"
            );
            fsync_all(&files, &dirs)
        }
    }
}

/// fsyncs files (data) and folders (entries) on [`FSYNC_THREADS`] threads.
fn fsync_all(files: &[std::path::PathBuf], dirs: &[std::path::PathBuf]) -> io::Result<()> {
    let all: Vec<(&std::path::PathBuf, bool)> = files
        .iter()
        .map(|f| (f, true))
        .chain(dirs.iter().map(|d| (d, false)))
        .collect();
    crate::parallel::try_for_each(&all, FSYNC_THREADS, |(path, is_file)| {
        let opened = File::open(path)?;
        if *is_file {
            opened.sync_data()
        } else {
            opened.sync_all()
        }
    })
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, without waiting
/// for it: a hint that makes a later fsync or syncfs quicker. Errors are ignored, since
/// durability never depends on it (filesystems without the call simply write later).
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range on a descriptor we own, open for the duration of the call; it reads
    // no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Flushes the filesystem that holds `path`.
fn syncfs(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path)?;
    // SAFETY: syncfs on a descriptor we own, open for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncfs_unless_other_writers_hold_much_more_unwritten_data() {
        let mib = 1u64 << 20;
        // Little dirty data anywhere: one syncfs.
        assert_eq!(choose(100 * mib, 10, 90 * mib), TreeSync::Filesystem);
        // Most of the dirty data is this tree's own.
        assert_eq!(choose(1200 * mib, 1000, 1024 * mib), TreeSync::Filesystem);
        // A neighbour's 4 GiB checkpoint is still being written.
        assert_eq!(choose(5120 * mib, 1000, 1024 * mib), TreeSync::EachFile);
        // A 10,000-file checkout: 10,000 fsyncs cost more than flushing 1 GiB of others' data.
        assert_eq!(choose(1024 * mib, 10_000, 40 * mib), TreeSync::Filesystem);
        assert_eq!(choose(8192 * mib, 10_000, 40 * mib), TreeSync::EachFile);
    }

    #[test]
    fn both_ways_sync_a_tree_of_files_folders_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"x").unwrap();
        fs::write(root.join("g"), b"y").unwrap();
        std::os::unix::fs::symlink("g", root.join("link")).unwrap();
        let files = vec![root.join("a/b/f"), root.join("g")];
        let dirs = vec![root.to_path_buf(), root.join("a"), root.join("a/b")];
        fsync_all(&files, &dirs).unwrap();
        sync_tree(root).unwrap();
        // A file that vanished is an error, not a silent pass.
        let err = fsync_all(&[root.join("gone")], &dirs).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }
}
