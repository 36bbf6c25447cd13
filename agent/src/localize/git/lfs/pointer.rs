//! Git LFS pointer files: the small text a repository stores in place of a large file.
//!
//! ```text
//! version https://git-lfs.github.com/spec/v1
//! oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393
//! size 12345
//! ```
//!
//! This module only reads bytes; it decides nothing about where objects come from.

/// Pointers are smaller than this (the LFS specification's limit); larger blobs are content.
pub const MAX_POINTER_SIZE: usize = 1024;

/// A parsed pointer. Invariant: `oid` is 64 lower-case hexadecimal digits (a sha256).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pointer {
    pub oid: String,
    pub size: u64,
}

/// What the bytes of a blob are, read as a pointer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a pointer: an ordinary file (git-lfs leaves such files as they are).
    NotPointer,
    /// A pointer to one object.
    Pointer(Pointer),
    /// A pointer that needs an LFS extension (`ext-N-NAME` lines) to be turned into the file.
    Extended,
}

/// Reads `bytes` as a pointer.
pub fn parse(bytes: &[u8]) -> Parsed {
    if bytes.len() >= MAX_POINTER_SIZE {
        return Parsed::NotPointer;
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Parsed::NotPointer;
    };
    let mut lines = text.lines();
    match lines.next() {
        Some("version https://git-lfs.github.com/spec/v1")
        | Some("version https://hawser.github.com/spec/v1") => {}
        _ => return Parsed::NotPointer,
    }
    let (mut oid, mut size, mut extended) = (None, None, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once(' ') else {
            return Parsed::NotPointer;
        };
        match key {
            "oid" => {
                oid = value
                    .strip_prefix("sha256:")
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(str::to_ascii_lowercase)
            }
            "size" => size = value.parse::<u64>().ok(),
            k if k.starts_with("ext-") => extended = true,
            _ => {}
        }
    }
    match (oid, size) {
        (Some(_), Some(_)) if extended => Parsed::Extended,
        (Some(oid), Some(size)) => Parsed::Pointer(Pointer { oid, size }),
        _ => Parsed::NotPointer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    #[test]
    fn reads_pointers_and_leaves_everything_else() {
        let text =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 12345\n");
        assert_eq!(
            parse(text.as_bytes()),
            Parsed::Pointer(Pointer {
                oid: OID.into(),
                size: 12345
            })
        );
        let ext = format!(
            "version https://git-lfs.github.com/spec/v1\next-0-foo sha256:{OID}\noid sha256:{OID}\nsize 1\n"
        );
        assert_eq!(parse(ext.as_bytes()), Parsed::Extended);
        for other in [
            "print('hi')\n".to_string(),
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\n"),
            format!("version https://git-lfs.github.com/spec/v1\noid md5:{OID}\nsize 1\n"),
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize -1\n"),
            "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n".to_string(),
        ] {
            assert_eq!(parse(other.as_bytes()), Parsed::NotPointer, "{other}");
        }
        assert_eq!(parse(&[0xff; 10]), Parsed::NotPointer);
    }
}
