//! Zip: spooled to a temporary file (its index is at the end), then unpacked entry by entry into
//! the [`Tree`].
//!
//! The spool lives beside the staging folder, on the same filesystem, and is unlinked as soon as
//! it is created, so a crash leaves nothing behind. This module must never write outside the
//! spool and the tree.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::guard::{io_err, shown, Tree};
use super::UnpackError;

/// The largest symlink target read from a zip entry (Linux's PATH_MAX).
const MAX_LINK: u64 = 4096;

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// Spools `reader` into a temporary file in `spool_dir`, then unpacks it. `max_spool` bounds the
/// spool so a hostile server cannot fill the disk with a file that is not what it claims.
pub(super) fn unpack(
    mut reader: impl Read,
    spool_dir: &Path,
    max_spool: u64,
    tree: &mut Tree<'_>,
) -> Result<(), UnpackError> {
    let path = spool_dir.join(format!(
        ".zip-spool-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut spool = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("cannot create", &path))?;
    // Unlinked at once: the open handle keeps the data, and nothing is left after a crash.
    std::fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut spooled = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::from_read(e)),
        };
        spooled += n as u64;
        if spooled > max_spool {
            return Err(UnpackError::TooBig {
                what: "bytes",
                limit: max_spool,
            });
        }
        spool
            .write_all(&buf[..n])
            .map_err(io_err("cannot write", &path))?;
    }
    spool
        .seek(SeekFrom::Start(0))
        .map_err(io_err("cannot read", &path))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(spool)).map_err(corrupt)?;
    // The central directory says how many entries follow: refuse early rather than at the limit.
    tree.check_entry_count(archive.len() as u64)?;
    for index in 0..archive.len() {
        let mut file = archive.by_index(index).map_err(corrupt)?;
        // Zip writers on Windows use `\`; treating it as a separator lets the guard see `..\`.
        let raw: Vec<u8> = file
            .name_raw()
            .iter()
            .map(|b| if *b == b'\\' { b'/' } else { *b })
            .collect();
        let mode = file.unix_mode();
        let kind = mode.map(|m| m & S_IFMT).filter(|k| *k != 0);
        let perm = mode.map(|m| m & 0o7777);
        if file.is_dir() || kind == Some(S_IFDIR) {
            if let Some(rel) = tree.clean(&raw)? {
                tree.dir(&rel, &raw, perm.unwrap_or(0o755))?;
            }
            continue;
        }
        match kind {
            None | Some(S_IFREG) => {
                if let Some(rel) = tree.clean(&raw)? {
                    let size = file.size();
                    tree.file(&rel, &raw, perm.unwrap_or(0o644), None, size, &mut file)?;
                }
            }
            Some(S_IFLNK) => {
                let mut target = Vec::new();
                (&mut file)
                    .take(MAX_LINK)
                    .read_to_end(&mut target)
                    .map_err(UnpackError::from_read)?;
                if let Some(rel) = tree.clean(&raw)? {
                    tree.symlink(&rel, &raw, &target)?;
                }
            }
            Some(_) => {
                return Err(UnpackError::Unsafe {
                    entry: shown(&raw),
                    reason: "it is a device node, fifo or socket, which is never unpacked".into(),
                })
            }
        }
    }
    Ok(())
}

fn corrupt(e: zip::result::ZipError) -> UnpackError {
    UnpackError::Corrupt {
        detail: e.to_string(),
    }
}
