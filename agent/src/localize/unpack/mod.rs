//! Safe archive unpacking: the one way an archive (from HTTP, an object store or a local file)
//! becomes files in a staging folder.
//!
//! [`unpack`] is synchronous and streams: tar and tar.gz are unpacked while they are read, with no
//! temporary copy; zip, whose index sits at its end, is spooled to an unlinked temporary file
//! beside the staging folder first. Async callers run it in `spawn_blocking` and hand it a
//! blocking reader (for example `tokio_util::io::SyncIoBridge`). To check `#sha256=`, wrap the
//! reader in a [`HashingReader`] and pass `&mut` to it.
//!
//! A local folder goes through the same guard, entry by entry ([`folder`]).
//!
//! Every entry goes through [`guard`], which refuses the whole archive at the first entry that
//! could write outside the folder, is a device or fifo, or passes a limit; see its docs for the
//! exact rules. This module never publishes: on error the caller removes the staging folder.

mod detect;
pub mod folder;
mod guard;
mod hash;
mod tar;
mod zip;

use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use detect::{from_magic, from_option_or_name, SNIFF_LEN};
pub use hash::{Digest, HashingReader};

use super::{ArchiveFormat, Filter, Limits, SourceOptions, SourceProgress};
use crate::error::{Classify, ErrorClass};

/// How to unpack one source. Invariant: `limits` are at least 1 each (see [`Limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Leading path components removed from every entry (`#strip=N`).
    pub strip: usize,
    /// Size and entry-count limits for what is written.
    pub limits: Limits,
    /// The source's file name (`job.tar.gz`): the format is guessed from its extension when not
    /// given, and `format=none` stores the file under this name.
    pub file_name: String,
    /// Which entries are written (`#include=`, `#exclude=`); every entry is checked regardless.
    pub filter: Filter,
}

impl UnpackOptions {
    /// Options for a source with file name `file_name` and the URL's `#` options.
    pub fn new(file_name: impl Into<String>, source: &SourceOptions, limits: Limits) -> Self {
        UnpackOptions {
            strip: source.strip,
            limits,
            file_name: file_name.into(),
            filter: source.filter.clone(),
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// The format that was used (after detection).
    pub format: ArchiveFormat,
    /// Bytes of regular files written.
    pub bytes: u64,
    /// Entries written (files, folders, links).
    pub files: u64,
    /// Bytes read from the input, which is always read to its end.
    pub read: u64,
}

/// An archive that was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry (of an archive or a folder) that could write or reveal anything outside the
    /// destination, or of a kind never unpacked.
    #[error("refused `{entry}`: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The archive unpacks to more than a limit allows.
    #[error("the archive unpacks to more than {limit} {what}, the limit")]
    TooBig { what: &'static str, limit: u64 },
    /// The data is not a valid archive of its format (or was cut short).
    #[error("the archive is damaged or not in the format expected: {detail}")]
    Corrupt { detail: String },
    /// Neither the options, the name nor the first bytes say what the file is.
    #[error("cannot tell the archive format of `{name}` from its name or its first bytes")]
    UnknownFormat { name: String },
    /// Reading the input itself failed (the network or the source, not the archive format).
    #[error("reading the source failed: {0}")]
    Read(#[source] io::Error),
    /// A local filesystem operation failed.
    #[error("{action} `{}`: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

impl UnpackError {
    /// An error from reading archive content. It is taken for damage; [`unpack`] turns it into
    /// [`UnpackError::Read`] when the input itself failed.
    pub(crate) fn from_read(e: io::Error) -> UnpackError {
        UnpackError::Corrupt {
            detail: e.to_string(),
        }
    }
}

impl Classify for UnpackError {
    fn class(&self) -> ErrorClass {
        match self {
            UnpackError::Unsafe { .. }
            | UnpackError::TooBig { .. }
            | UnpackError::Corrupt { .. } => ErrorClass::Integrity,
            UnpackError::UnknownFormat { .. } => ErrorClass::Usage,
            UnpackError::Read(_) => ErrorClass::Network,
            UnpackError::Io { .. } => ErrorClass::Io,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            UnpackError::Unsafe { .. } => Some(
                "the source was refused as a whole and nothing was published; it may hold no \
                 absolute paths, `..`, links leaving it, devices, fifos, sockets, sparse files or \
                 names longer than a filesystem holds"
                    .into(),
            ),
            UnpackError::TooBig { what, .. } => Some(format!(
                "nothing was published; raise --max-{what} if the archive is expected to be this big"
            )),
            UnpackError::Corrupt { .. } => Some(
                "check that the URL serves the archive itself (not an error page), or set #format=".into(),
            ),
            UnpackError::UnknownFormat { .. } => Some(
                "add #format=tar, tar.gz, zip, or #format=none to store the file as it is".into(),
            ),
            UnpackError::Read(_) | UnpackError::Io { .. } => None,
        }
    }
}

/// Unpacks `reader` into the existing, empty folder `dest`.
///
/// `format` is the explicit `#format=` option; without it the format comes from
/// `opts.file_name`, then from the first bytes. `ArchiveFormat::None` stores the input as one file
/// named `opts.file_name`. Input bytes are reported to `progress` as they are read. The input is
/// always read to its end, so a [`HashingReader`] under it sees every byte.
pub fn unpack(
    reader: impl Read,
    format: Option<ArchiveFormat>,
    dest: &Path,
    opts: &UnpackOptions,
    progress: &SourceProgress,
) -> Result<UnpackStats, UnpackError> {
    let mut input = Input::new(reader, progress);
    let result = unpack_input(&mut input, format, dest, opts);
    match (result, input.failure.take()) {
        // Whatever the archive code made of it, a failing input is a read failure, not damage.
        (Err(UnpackError::Corrupt { .. }), Some(e)) => Err(UnpackError::Read(e)),
        (Err(e), _) => Err(e),
        (Ok((format, bytes, files)), _) => Ok(UnpackStats {
            format,
            bytes,
            files,
            read: input.read,
        }),
    }
}

fn unpack_input<R: Read>(
    input: &mut Input<'_, R>,
    format: Option<ArchiveFormat>,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<(ArchiveFormat, u64, u64), UnpackError> {
    let head = detect::read_head(input).map_err(UnpackError::from_read)?;
    let format = match from_option_or_name(format, &opts.file_name).or_else(|| from_magic(&head)) {
        Some(f) => f,
        None => {
            return Err(UnpackError::UnknownFormat {
                name: guard::shown(opts.file_name.as_bytes()),
            })
        }
    };
    let mut stream = io::Cursor::new(head).chain(&mut *input);
    let mut tree = guard::Tree::new(dest, opts.strip, opts.limits).filtered(opts.filter.clone());
    match format {
        ArchiveFormat::Tar => tar::unpack(&mut stream, &mut tree)?,
        ArchiveFormat::TarGz => tar::unpack_gz(&mut stream, &mut tree)?,
        ArchiveFormat::Zip => {
            // A zip is never much larger than what it holds; the slack covers headers and the
            // central directory of many small files.
            let max_spool = opts
                .limits
                .max_bytes
                .saturating_add(opts.limits.max_bytes / 8)
                .saturating_add(64 << 20);
            zip::unpack(
                &mut stream,
                crate::fsutil::parent_dir(dest),
                max_spool,
                &mut tree,
            )?
        }
        ArchiveFormat::None => {
            let rel = tree
                .clean(plain_name(&opts.file_name).as_bytes())?
                .ok_or_else(|| UnpackError::UnknownFormat {
                    name: opts.file_name.clone(),
                })?;
            tree.file(
                &rel,
                rel.path().as_os_str().as_encoded_bytes(),
                0o644,
                None,
                0,
                &mut stream,
            )?;
        }
    }
    // Trailing bytes after the archive's end are read too, so the checksum covers the whole input.
    io::copy(&mut stream, &mut io::sink()).map_err(UnpackError::from_read)?;
    let (bytes, files) = (tree.bytes(), tree.files());
    tree.finish()?;
    Ok((format, bytes, files))
}

/// The name a `format=none` file is stored under: the source's last path segment, or `download`
/// when that is not a plain file name.
fn plain_name(name: &str) -> String {
    let ok = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    if ok {
        name.to_string()
    } else {
        "download".to_string()
    }
}

/// The input as the archive code sees it: counts bytes, reports progress, and remembers whether
/// the underlying reader failed. Invariant: `read` is the number of bytes returned.
pub(super) struct Input<'p, R> {
    inner: R,
    read: u64,
    /// The first real error of `inner`, which the archive code only sees a copy of.
    pub(super) failure: Option<io::Error>,
    progress: &'p SourceProgress,
}

impl<'p, R> Input<'p, R> {
    pub(super) fn new(inner: R, progress: &'p SourceProgress) -> Self {
        Input {
            inner,
            read: 0,
            failure: None,
            progress,
        }
    }
}

impl<R: Read> Read for Input<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.read += n as u64;
                self.progress.advance(n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                // Keep the real error for the caller; the archive code gets a copy to fail with.
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failure = Some(e);
                Err(copy)
            }
        }
    }
}

#[cfg(test)]
mod tests;
