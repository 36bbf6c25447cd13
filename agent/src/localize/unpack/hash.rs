//! A reader that computes the sha256 of everything read through it.
//!
//! Archives are checked against `#sha256=` while they stream: the digest covers exactly the bytes
//! of the source, so callers must call [`HashingReader::finish`], which reads whatever the
//! unpacker left (tar padding, a gzip trailer) before giving the digest.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// The sha256 and length of a whole input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub sha256: [u8; 32],
    pub bytes: u64,
}

impl Digest {
    /// The digest in lowercase hex, as `sha256sum` prints it.
    pub fn hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Wraps a reader and hashes what passes through. Invariant: `bytes` is the number of bytes
/// returned to the caller, and `hasher` has seen exactly those bytes.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads the rest of the input, then returns the digest of all of it.
    pub fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(Digest {
            sha256: self.hasher.finalize().into(),
            bytes: self.bytes,
        })
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_covers_unread_rest() {
        let mut r = HashingReader::new(&b"abc"[..]);
        let mut one = [0u8; 1];
        r.read_exact(&mut one).unwrap();
        let d = r.finish().unwrap();
        assert_eq!(d.bytes, 3);
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
