//! Builds test archives in memory, including hostile ones that well-behaved tools refuse to make
//! (absolute paths, `..`, links out of the tree, devices): entry names are written into the tar
//! header bytes directly.

use std::io::Write;

pub use tar::EntryType;

/// One tar entry: name bytes as given, type, mode, content, link target.
pub struct Entry<'a> {
    pub name: &'a str,
    pub kind: EntryType,
    pub mode: u32,
    pub data: &'a [u8],
    pub link: &'a str,
}

/// A regular file entry.
pub fn file<'a>(name: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        name,
        kind: EntryType::Regular,
        mode: 0o644,
        data,
        link: "",
    }
}

/// A folder entry.
pub fn dir(name: &str) -> Entry<'_> {
    Entry {
        name,
        kind: EntryType::Directory,
        mode: 0o755,
        data: b"",
        link: "",
    }
}

/// A symlink entry.
pub fn symlink<'a>(name: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        name,
        kind: EntryType::Symlink,
        mode: 0o777,
        data: b"",
        link: target,
    }
}

/// A hardlink entry.
pub fn hardlink<'a>(name: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        name,
        kind: EntryType::Link,
        mode: 0o644,
        data: b"",
        link: target,
    }
}

/// A tar archive of the entries, in order.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = e.name.as_bytes();
        assert!(name.len() < 100, "test names must fit the header");
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_mtime(1_700_000_000);
        if !e.link.is_empty() {
            h.set_link_name_literal(e.link).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Gzip of `data`.
pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A tar.gz of the entries.
pub fn tar_gz(entries: &[Entry<'_>]) -> Vec<u8> {
    gz(&tar(entries))
}

/// A zip entry: a file, a folder (name ends with `/`) or a symlink (`link` set).
pub struct ZipEntry<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub link: Option<&'a str>,
    pub mode: u32,
}

/// A zip archive of the entries.
pub fn zip(entries: &[ZipEntry<'_>]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for e in entries {
        let o = zip::write::SimpleFileOptions::default().unix_permissions(e.mode);
        if let Some(target) = e.link {
            w.add_symlink(e.name, target, o).unwrap();
        } else if e.name.ends_with('/') {
            w.add_directory(e.name, o).unwrap();
        } else {
            w.start_file(e.name, o).unwrap();
            w.write_all(e.data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// The sha256 of `data` in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
