//! Telling files apart across renames, restarts and inode reuse.
//!
//! A log file is the same file while its `(device, inode)` stays the same *and* its first bytes
//! still match the fingerprint taken when it was first seen. The inode follows a file through a
//! rename (rotation); the fingerprint catches an inode the filesystem reused for a new file after
//! the old one was deleted. The fingerprint covers the first bytes, not the first line, so it works
//! for files that have no newline yet.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// How many leading bytes the fingerprint covers at most.
pub const FINGERPRINT_BYTES: u64 = 1024;

/// Where a file lives on its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The id of a file from its metadata.
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// CRC32C of a file's first `len` bytes. Invariant: `len <= FINGERPRINT_BYTES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u64,
    pub crc: u32,
}

impl Fingerprint {
    /// Takes the fingerprint of an open file (its first bytes, up to the cap).
    pub fn take(file: &File) -> io::Result<Fingerprint> {
        let mut buf = vec![0u8; FINGERPRINT_BYTES as usize];
        let n = read_at_most(file, &mut buf, 0)?;
        Ok(Fingerprint {
            len: n as u64,
            crc: crc32c::crc32c(&buf[..n]),
        })
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken from.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        let mut buf = vec![0u8; self.len as usize];
        let n = read_at_most(file, &mut buf, 0)?;
        Ok(n as u64 == self.len && crc32c::crc32c(&buf[..n]) == self.crc)
    }

    /// Whether the fingerprint still has room to grow (the file was shorter than the cap).
    pub fn is_partial(&self) -> bool {
        self.len < FINGERPRINT_BYTES
    }
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at end of file.
pub fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fingerprint_matches_same_start_and_refuses_a_different_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"no newline yet").unwrap();
        let f = File::open(&path).unwrap();
        let fp = Fingerprint::take(&f).unwrap();
        assert!(fp.is_partial());
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(b" and more").unwrap();
        assert!(fp.matches(&f).unwrap(), "appending keeps the identity");
        std::fs::write(&path, b"another file entirely").unwrap();
        assert!(!fp.matches(&File::open(&path).unwrap()).unwrap());
    }
}
