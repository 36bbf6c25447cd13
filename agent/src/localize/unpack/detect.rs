//! Which archive format a source is: from `#format=`, then the file name, then magic bytes.
//!
//! This module only decides; it never reads more than the first [`SNIFF_LEN`] bytes and never
//! writes anything.

use std::io::{self, Read};

use crate::localize::ArchiveFormat;

/// Bytes needed to recognise every supported format (the ustar magic sits at offset 257).
pub const SNIFF_LEN: usize = 512;

/// The format from the explicit option or the name alone, or `None` when only the content can
/// tell.
pub fn from_option_or_name(explicit: Option<ArchiveFormat>, name: &str) -> Option<ArchiveFormat> {
    explicit.or_else(|| ArchiveFormat::from_name(name))
}

/// The format the first bytes of a file show, if any.
pub fn from_magic(head: &[u8]) -> Option<ArchiveFormat> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveFormat::TarGz)
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(ArchiveFormat::Zip)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(ArchiveFormat::Tar)
    } else {
        None
    }
}

/// Reads up to [`SNIFF_LEN`] bytes (fewer only at the end of the input).
pub fn read_head(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    reader.take(SNIFF_LEN as u64).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_wins_then_name_then_magic() {
        assert_eq!(
            from_option_or_name(Some(ArchiveFormat::Zip), "a.tar.gz"),
            Some(ArchiveFormat::Zip)
        );
        assert_eq!(
            from_option_or_name(None, "a.TGZ"),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(from_option_or_name(None, "download"), None);
        assert_eq!(from_magic(&[0x1f, 0x8b, 8]), Some(ArchiveFormat::TarGz));
        assert_eq!(from_magic(b"PK\x03\x04rest"), Some(ArchiveFormat::Zip));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(from_magic(&tar), Some(ArchiveFormat::Tar));
        assert_eq!(from_magic(b"hello"), None);
    }
}
