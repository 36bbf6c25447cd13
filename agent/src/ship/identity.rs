//! Telling files apart across renames, copies, restarts and inode reuse.
//!
//! A followed file is known by four things, each catching what the others miss:
//! - its `(device, inode)` ([`FileId`]), which follows it through a rename;
//! - a [`Fingerprint`] of its first bytes, a cheap first filter (many files can share it: a fixed
//!   banner at the top of every generation);
//! - a [`Window`] over the bytes just before an offset that was read, which changes when the file
//!   was truncated and written again past that offset, whatever its first bytes are;
//! - the CRC32C of everything stored so far (a [`Prefix`]), which tells whether another file (a
//!   copy made by `copytruncate`, a gzip made by `compress`) holds the same bytes.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// How many leading bytes the fingerprint covers at most; also the size of a [`Window`].
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
        Ok(Fingerprint::of(&buf[..n]))
    }

    /// The fingerprint of content that starts with `head`.
    pub fn of(head: &[u8]) -> Fingerprint {
        let n = head.len().min(FINGERPRINT_BYTES as usize);
        Fingerprint {
            len: n as u64,
            crc: crc32c::crc32c(&head[..n]),
        }
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken from.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        let mut buf = vec![0u8; self.len as usize];
        let n = read_at_most(file, &mut buf, 0)?;
        Ok(n as u64 == self.len && crc32c::crc32c(&buf[..n]) == self.crc)
    }

    /// Whether content starting with `head` (at least `self.len` bytes of it) matches.
    pub fn matches_head(&self, head: &[u8]) -> bool {
        head.len() as u64 >= self.len && crc32c::crc32c(&head[..self.len as usize]) == self.crc
    }

    /// Whether the fingerprint still has room to grow (the file was shorter than the cap).
    pub fn is_partial(&self) -> bool {
        self.len < FINGERPRINT_BYTES
    }
}

/// CRC32C of the bytes `[end - len, end)` of a file. Invariant: `len <= min(end, FINGERPRINT_BYTES)`.
/// A window with `len == 0` (at offset 0) matches every file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Window {
    pub end: u64,
    pub len: u64,
    pub crc: u32,
}

impl Window {
    /// The window over the last bytes of `bytes`, which end at offset `end` of their file.
    pub fn of_bytes(end: u64, bytes: &[u8]) -> Window {
        let len = bytes.len().min(FINGERPRINT_BYTES as usize);
        Window {
            end,
            len: len as u64,
            crc: crc32c::crc32c(&bytes[bytes.len() - len..]),
        }
    }

    /// Takes the window of `file` that ends at `end` (shorter when the file is).
    pub fn take(file: &File, end: u64) -> io::Result<Window> {
        let len = end.min(FINGERPRINT_BYTES);
        let mut buf = vec![0u8; len as usize];
        let n = read_at_most(file, &mut buf, end - len)?;
        Ok(Window::of_bytes(end - len + n as u64, &buf[..n]))
    }

    /// Whether `file` still holds, before `end`, the bytes this window was taken from.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        if self.len == 0 {
            return Ok(true);
        }
        let mut buf = vec![0u8; self.len as usize];
        let n = read_at_most(file, &mut buf, self.end - self.len)?;
        Ok(n as u64 == self.len && crc32c::crc32c(&buf) == self.crc)
    }
}

/// CRC32C of a file's first `len` bytes: enough to tell whether another file holds the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Prefix {
    pub len: u64,
    pub crc: u32,
}

impl Prefix {
    /// The prefix extended by `bytes`.
    pub fn then(self, bytes: &[u8]) -> Prefix {
        Prefix {
            len: self.len + bytes.len() as u64,
            crc: crc32c::crc32c_append(self.crc, bytes),
        }
    }
}

/// The CRC32C of a stream's bytes at chosen offsets, read once from its start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// The prefixes at the chosen offsets the stream reached, in order.
    pub at: Vec<Prefix>,
    /// The whole stream, when it ended before the read limit.
    pub end: Option<Prefix>,
    /// The stream ended early with an error (a gzip file still being written, or damaged).
    pub broken: bool,
}

impl Scanned {
    /// The prefix of exactly `len` bytes, if it was taken.
    pub fn prefix(&self, len: u64) -> Option<Prefix> {
        self.at
            .iter()
            .chain(self.end.iter())
            .find(|p| p.len == len)
            .copied()
    }

    /// How long the stream is known to be: its end, or (when it goes on) past the last offset.
    pub fn len_at_least(&self) -> u64 {
        self.end
            .map(|e| e.len)
            .or(self.at.last().map(|p| p.len))
            .unwrap_or(0)
    }
}

/// Reads `stream` from its start and takes its CRC32C at each of `offsets`, reading at most one
/// byte past the largest of them (so a huge or endless stream costs no more than that).
pub fn scan_prefixes(stream: &mut dyn Read, offsets: &[u64]) -> Scanned {
    let mut offsets: Vec<u64> = offsets.to_vec();
    offsets.sort_unstable();
    offsets.dedup();
    let limit = offsets.last().copied().unwrap_or(0) + 1;
    let mut out = Scanned::default();
    let mut cur = Prefix::default();
    let mut next = offsets.iter().copied().peekable();
    while next.peek() == Some(&0) {
        out.at.push(cur);
        next.next();
    }
    let mut buf = vec![0u8; 256 << 10];
    while cur.len < limit {
        let want = ((limit - cur.len) as usize).min(buf.len());
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => {
                out.end = Some(cur);
                return out;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                out.broken = true;
                out.end = Some(cur);
                return out;
            }
        };
        let mut data = &buf[..n];
        while let Some(&o) = next.peek() {
            if o > cur.len + data.len() as u64 {
                break;
            }
            let take = (o - cur.len) as usize;
            cur = cur.then(&data[..take]);
            data = &data[take..];
            out.at.push(cur);
            next.next();
        }
        cur = cur.then(data);
    }
    out
}

/// A file read from an offset on, through `read_at` (so the handle's own offset is never used).
pub struct FileAt<'a> {
    pub file: &'a File,
    pub pos: u64,
}

impl Read for FileAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at end of file.
pub fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    read_full(&mut FileAt { file, pos: offset }, buf)
}

/// Reads from `stream` until `buf` is full or the stream ends.
pub fn read_full(stream: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match stream.read(&mut buf[done..]) {
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

    #[test]
    fn a_window_sees_a_rewrite_behind_a_shared_banner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let banner = vec![b'#'; 2000];
        let mut first = banner.clone();
        first.extend_from_slice(b"step 1 loss 0.9\nstep 2 loss 0.8\n");
        std::fs::write(&path, &first).unwrap();
        let f = File::open(&path).unwrap();
        let fp = Fingerprint::take(&f).unwrap();
        let w = Window::take(&f, first.len() as u64).unwrap();
        let mut second = banner;
        second.extend_from_slice(b"epoch 7 accuracy 0.5\nepoch 8 accuracy 0.6\n");
        std::fs::write(&path, &second).unwrap();
        assert!(fp.matches(&f).unwrap(), "the banner hides the rewrite");
        assert!(!w.matches(&f).unwrap(), "the window does not");
    }

    #[test]
    fn prefixes_are_taken_at_each_offset_and_at_the_end() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let s = scan_prefixes(&mut &data[..], &[0, 10, 5000]);
        assert_eq!(s.at.len(), 3);
        assert_eq!(s.prefix(10).unwrap().crc, crc32c::crc32c(&data[..10]));
        assert_eq!(s.prefix(5000).unwrap().crc, crc32c::crc32c(&data[..5000]));
        assert_eq!(s.end, None, "reading stops one byte past the last offset");
        assert_eq!(s.len_at_least(), 5000);
        let s = scan_prefixes(&mut &data[..], &[20_000]);
        assert_eq!(
            s.end,
            Some(Prefix {
                len: 10_000,
                crc: crc32c::crc32c(&data)
            })
        );
        assert_eq!(
            Prefix::default().then(&data[..7]).then(&data[7..10]).crc,
            crc32c::crc32c(&data[..10])
        );
    }
}
