//! Where a followed file's bytes are read from: the file itself, or the decompressed bytes of a
//! gzip file that holds them (a rotated log that `logrotate`'s `compress` replaced while the
//! sidecar was down).
//!
//! A file is taken as gzip when its name ends in `.gz` and it starts with the gzip magic bytes; its
//! content is then its decompressed bytes. Anything else is read as it is.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::identity::{read_at_most, read_full, FileAt, FileId};

/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether `file`, found at `path`, is read through gzip.
pub fn is_gzip(path: &Path, file: &File) -> bool {
    let named = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let mut magic = [0u8; 2];
    named && read_at_most(file, &mut magic, 0).ok() == Some(2) && magic == GZIP_MAGIC
}

/// The content of `file` from its first byte: decompressed when `gzip`.
pub fn content(file: &File, gzip: bool) -> io::Result<Box<dyn Read + '_>> {
    if gzip {
        let mut own = file.try_clone()?;
        own.seek(SeekFrom::Start(0))?;
        Ok(Box::new(MultiGzDecoder::new(BufReader::new(own))))
    } else {
        Ok(Box::new(FileAt { file, pos: 0 }))
    }
}

/// Whether the contents of two files (each decompressed when it is gzip) agree on every byte
/// both hold: one is a prefix of the other, as a copy and the gzip of that copy are.
pub fn agree(a: (&File, bool), b: (&File, bool)) -> io::Result<bool> {
    const BLOCK: usize = 64 << 10;
    let (mut x, mut y) = (content(a.0, a.1)?, content(b.0, b.1)?);
    let (mut bx, mut by) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    loop {
        let (n, m) = (read_full(&mut *x, &mut bx)?, read_full(&mut *y, &mut by)?);
        let both = n.min(m);
        if bx[..both] != by[..both] {
            return Ok(false);
        }
        if both < BLOCK {
            return Ok(true);
        }
    }
}

/// An open file whose content is read at offsets. Invariant: for `Gzip`, `len` is the length of
/// the complete, checked decompressed stream (a gzip source never grows).
pub enum Source {
    Plain(File),
    Gzip {
        file: File,
        len: u64,
        /// The decoder and how far it has read, kept so reading on from there costs nothing.
        reader: Option<Box<(MultiGzDecoder<BufReader<File>>, u64)>>,
    },
}

impl Source {
    /// The source of `file`'s content: the file itself, or (`gzip`) its decompressed stream when
    /// it holds a complete gzip stream ([`Source::gzip`]).
    pub fn of(file: File, gzip: bool) -> Option<Source> {
        if gzip {
            Source::gzip(file).ok().flatten()
        } else {
            Some(Source::Plain(file))
        }
    }

    /// A gzip source, if `file` holds a complete gzip stream (its length is measured by reading it
    /// once, checking its CRC).
    pub fn gzip(file: File) -> io::Result<Option<Source>> {
        let mut stream = content(&file, true)?;
        let mut len = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => len += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
        drop(stream);
        Ok(Some(Source::Gzip {
            file,
            len,
            reader: None,
        }))
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        match self {
            Source::Plain(f) | Source::Gzip { file: f, .. } => f,
        }
    }

    pub fn id(&self) -> io::Result<FileId> {
        Ok(FileId::of(&self.file().metadata()?))
    }

    pub fn is_gzip(&self) -> bool {
        matches!(self, Source::Gzip { .. })
    }

    /// The content's length now.
    pub fn content_len(&self) -> io::Result<u64> {
        match self {
            Source::Plain(f) => Ok(f.metadata()?.len()),
            Source::Gzip { len, .. } => Ok(*len),
        }
    }

    /// Reads up to `buf.len()` bytes of content at `offset`, stopping early only at its end.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Source::Plain(f) => read_at_most(f, buf, offset),
            Source::Gzip { file, reader, .. } => {
                if reader.as_ref().is_none_or(|state| state.1 > offset) {
                    let mut own = file.try_clone()?;
                    own.seek(SeekFrom::Start(0))?;
                    *reader = Some(Box::new((MultiGzDecoder::new(BufReader::new(own)), 0)));
                }
                let Some(state) = reader.as_mut() else {
                    return Ok(0);
                };
                let (decoder, pos) = &mut **state;
                if *pos < offset {
                    let skipped =
                        io::copy(&mut decoder.by_ref().take(offset - *pos), &mut io::sink())?;
                    *pos += skipped;
                    if *pos < offset {
                        return Ok(0);
                    }
                }
                let done = read_full(decoder, buf)?;
                *pos += done as u64;
                Ok(done)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_gzip_file_is_read_at_any_offset_and_a_partial_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).unwrap();
        let gz = enc.finish().unwrap();
        let path = dir.path().join("app.log.1.gz");
        std::fs::write(&path, &gz).unwrap();
        let file = File::open(&path).unwrap();
        assert!(is_gzip(&path, &file));
        let mut src = Source::gzip(file).unwrap().unwrap();
        assert_eq!(src.content_len().unwrap(), data.len() as u64);
        let mut buf = vec![0u8; 1000];
        assert_eq!(src.read_at(&mut buf, 500_000).unwrap(), 1000);
        assert_eq!(buf, data[500_000..501_000]);
        assert_eq!(
            src.read_at(&mut buf, 100).unwrap(),
            1000,
            "reading back restarts"
        );
        assert_eq!(buf, data[100..1100]);
        assert_eq!(src.read_at(&mut buf, data.len() as u64 - 10).unwrap(), 10);

        let copy = dir.path().join("app.log.1");
        std::fs::write(&copy, &data[..700_000]).unwrap();
        let copy = File::open(&copy).unwrap();
        let gz_file = File::open(&path).unwrap();
        assert!(agree((&copy, false), (&gz_file, true)).unwrap());
        assert!(agree((&gz_file, true), (&copy, false)).unwrap());
        let other = dir.path().join("other");
        let mut changed = data[..900_000].to_vec();
        changed[800_000] ^= 1;
        std::fs::write(&other, &changed).unwrap();
        let other = File::open(&other).unwrap();
        assert!(
            agree((&copy, false), (&other, false)).unwrap(),
            "differs past the copy's end"
        );
        assert!(!agree((&gz_file, true), (&other, false)).unwrap());

        std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
        assert!(Source::gzip(File::open(&path).unwrap()).unwrap().is_none());
        let plain = dir.path().join("app.log.1");
        std::fs::write(&plain, &gz).unwrap();
        assert!(
            !is_gzip(&plain, &File::open(&plain).unwrap()),
            "only .gz names are gzip"
        );
    }
}
