//! Tar and tar.gz: streamed entry by entry into the [`Tree`], never buffered whole.
//!
//! This module maps tar entry types onto the guard's few operations and refuses every type the
//! guard has no operation for (devices, fifos, sparse files in the GNU or the PAX format,
//! anything unknown). It must never write to disk itself.

use std::io::{self, Read};

use tar::EntryType;

use super::guard::{shown, Tree};
use super::UnpackError;

/// Unpacks a plain tar stream, then reads the stream to its end (padding after the end blocks).
pub(super) fn unpack(reader: impl Read, tree: &mut Tree<'_>) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(UnpackError::from_read)? {
        let mut entry = entry.map_err(UnpackError::from_read)?;
        let raw = entry.path_bytes().into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let refuse = |what: &str| UnpackError::Unsafe {
            entry: shown(&raw),
            reason: format!("it is {what}, which is never unpacked"),
        };
        match kind {
            // Extension headers the tar crate has already applied to the next entry.
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            EntryType::Char | EntryType::Block => return Err(refuse("a device node")),
            EntryType::Fifo => return Err(refuse("a fifo")),
            EntryType::GNUSparse => return Err(refuse("a sparse file")),
            EntryType::Directory => {
                if let Some(rel) = tree.clean(&raw)? {
                    tree.dir(&rel, &raw, mode)?;
                }
            }
            EntryType::Regular | EntryType::Continuous if raw.ends_with(b"/") => {
                // Pre-POSIX archives mark folders only by the trailing slash.
                if let Some(rel) = tree.clean(&raw)? {
                    tree.dir(&rel, &raw, mode)?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                // PAX sparse members carry a map of holes before their data; unpacked as a plain
                // file they would be written as that map under a made-up `GNUSparseFile.N/` name.
                if let Some(name) = pax_sparse_name(&mut entry)? {
                    return Err(UnpackError::Unsafe {
                        entry: shown(name.as_deref().unwrap_or(&raw)),
                        reason: "it is a sparse file, which is never unpacked".into(),
                    });
                }
                if let Some(rel) = tree.clean(&raw)? {
                    let size = entry.size();
                    tree.file(&rel, &raw, mode, mtime, size, &mut entry)?;
                }
            }
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if let Some(rel) = tree.clean(&raw)? {
                    if kind == EntryType::Symlink {
                        tree.symlink(&rel, &raw, &target)?;
                    } else {
                        tree.hardlink(&rel, &raw, &target)?;
                    }
                }
            }
            _ => return Err(refuse("an entry of an unknown type")),
        }
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::from_read)?;
    Ok(())
}

/// `Some` when the entry's own PAX header describes a sparse file (any `GNU.sparse.*` key: the
/// 0.0, 0.1 and 1.0 formats GNU tar writes with `--sparse --format=pax`), holding the file's real
/// name when the header gives it (`GNU.sparse.name`).
fn pax_sparse_name<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Option<Option<Vec<u8>>>, UnpackError> {
    let Some(extensions) = entry.pax_extensions().map_err(UnpackError::from_read)? else {
        return Ok(None);
    };
    let (mut sparse, mut name) = (false, None);
    for extension in extensions {
        let extension = extension.map_err(UnpackError::from_read)?;
        if extension.key_bytes().starts_with(b"GNU.sparse.") {
            sparse = true;
            if extension.key_bytes() == b"GNU.sparse.name" {
                name = Some(extension.value_bytes().to_vec());
            }
        }
    }
    Ok(sparse.then_some(name))
}

/// Unpacks a gzip-compressed tar stream; every gzip trailer (length and CRC) is checked too.
/// Several gzip members in a row (as `bgzip`, `pigz --independent` or appending writers make)
/// are one stream, as `gzip -d` reads them.
pub(super) fn unpack_gz(reader: impl Read, tree: &mut Tree<'_>) -> Result<(), UnpackError> {
    unpack(flate2::read::MultiGzDecoder::new(reader), tree)
}
