//! `manifest.json`: what one save holds, written last so that its presence means "complete".
//!
//! The manifest lists every stored file (relative path, size, sha256) and every entry of the
//! folder that was deliberately not stored, with the reason. A file pushed in parts also lists
//! the sha256 of each part ([`Parts`]), so a load that fetches it in parallel ranges can check
//! every range as it streams in rather than read the whole file back afterwards. Its
//! [`Manifest::content_digest`] covers only the content (files and skips, in path order), not the
//! save number, time or part digests, so two pushes of the same folder compare equal. This module
//! does no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's object name inside a save folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The claim object of a save: created first, by the push that writes the save.
pub const CLAIM_FILE: &str = ".claim";

/// The folder below a save that holds the files whose path would take a name the save itself
/// uses (see [`object_name`]).
pub const ESCAPED_DIR: &str = ".periscope-user";

/// The object name, below its save folder, of the file at relative path `path`: the path itself,
/// unless it would take one of the save's own names ([`MANIFEST_FILE`] or the claim at the top)
/// or starts in [`ESCAPED_DIR`]; those go below [`ESCAPED_DIR`]. The mapping is one-to-one: a
/// name below `ESCAPED_DIR` is never a path kept as it is.
pub fn object_name(path: &str) -> std::borrow::Cow<'_, str> {
    let first = path.split('/').next().unwrap_or_default();
    if path == MANIFEST_FILE || path == CLAIM_FILE || first == ESCAPED_DIR {
        std::borrow::Cow::Owned(format!("{ESCAPED_DIR}/{path}"))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// The value of [`Manifest::format`]; a reader refuses anything else.
pub const FORMAT: &str = "periscope-artifacts/1";

/// The smallest part a reader trusts for checking a file piece by piece; a manifest naming
/// smaller parts (none that Periscope writes: multipart parts are at least 5 MiB) is checked
/// through the whole file's sha256 instead, so a hostile manifest cannot make a load keep
/// millions of digests.
pub const MIN_CHECKED_PART: u64 = 1 << 20;

/// One stored file. Invariant: `path` is relative, `/`-separated, made of normal components only,
/// and `sha256` is 64 lowercase hex digits of exactly `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The object's name below the save folder when it is not `path` (see [`object_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Digests of the file's parts, for files pushed in parts (absent in saves from before they
    /// were recorded, and for files stored in one request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Parts>,
}

/// The sha256 of each consecutive `size`-byte piece of a file, the last one shorter when the file
/// is not a multiple of `size`. Invariant (as a push writes it): `sha256` has
/// `ceil(file size / size)` entries of 64 lowercase hex digits, and they are digests of the same
/// bytes as the entry's whole-file sha256. A reader checks the shape with [`FileEntry::parts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    pub size: u64,
    pub sha256: Vec<String>,
}

impl FileEntry {
    /// The entry of a stored file, with its object name (see [`object_name`]).
    pub fn new(path: String, size: u64, sha256: String, parts: Option<Parts>) -> FileEntry {
        let object = match object_name(&path) {
            std::borrow::Cow::Owned(name) => Some(name),
            std::borrow::Cow::Borrowed(_) => None,
        };
        FileEntry {
            path,
            size,
            sha256,
            object,
            parts,
        }
    }

    /// The object's name below the save folder.
    pub fn object(&self) -> &str {
        self.object.as_deref().unwrap_or(&self.path)
    }

    /// The part digests, when they have the shape a push writes: a part size of at least
    /// [`MIN_CHECKED_PART`], one well-formed digest per part. `None` means "check the whole
    /// file's sha256".
    pub fn parts(&self) -> Option<&Parts> {
        let parts = self.parts.as_ref()?;
        let well_formed = |d: &String| {
            d.len() == 64
                && d.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        (parts.size >= MIN_CHECKED_PART
            && parts.sha256.len() as u64 == self.size.div_ceil(parts.size).max(1)
            && parts.sha256.iter().all(well_formed))
        .then_some(parts)
    }
}

/// An entry of the folder that was not stored. Invariant: `path` is relative like a file's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// One complete save. Invariant: `files` and `skipped` are sorted by path with no duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The save number `n` of `…/artifacts/<n>/`.
    pub save: u64,
    /// RFC 3339, UTC: when the manifest was written.
    pub created_at: String,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

impl Manifest {
    /// A manifest for `save`, with the entries sorted.
    pub fn new(save: u64, mut files: Vec<FileEntry>, mut skipped: Vec<Skipped>) -> Manifest {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            format: FORMAT.to_string(),
            save,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            files,
            skipped,
        }
    }

    /// Parses a stored manifest; `None` when the bytes are not a manifest of this format.
    pub fn parse(bytes: &[u8]) -> Option<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).ok()?;
        (m.format == FORMAT).then_some(m)
    }

    /// The bytes that are stored (pretty JSON, for people who open it).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Hex sha256 over what the save holds (files and skips), independent of number and time.
    pub fn content_digest(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(format!("f\0{}\0{}\0{}\n", f.path, f.size, f.sha256));
        }
        for s in &self.skipped {
            h.update(format!("s\0{}\0{}\n", s.path, s.reason));
        }
        hex::encode(h.finalize())
    }

    /// The entry for a path.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// Hex sha256 of some bytes (the manifest's own digest, recorded in the metastore).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry::new(path.into(), size, "0".repeat(64), None)
    }

    #[test]
    fn files_named_like_the_save_own_objects_are_stored_apart() {
        for (path, object) in [
            ("manifest.json", ".periscope-user/manifest.json"),
            (".claim", ".periscope-user/.claim"),
            (".periscope-user/x", ".periscope-user/.periscope-user/x"),
            ("ckpt/manifest.json", "ckpt/manifest.json"),
            ("manifest.json.bak", "manifest.json.bak"),
            (".periscope-user2", ".periscope-user2"),
        ] {
            let e = entry(path, 1);
            assert_eq!(e.object(), object, "{path}");
            assert_eq!(e.object.is_some(), path != object, "{path}");
        }
        // Only an escaped entry writes `object`.
        let bytes = Manifest::new(1, vec![entry("a", 1)], vec![]).to_bytes();
        assert!(!String::from_utf8(bytes).unwrap().contains("object"));
    }

    #[test]
    fn part_digests_are_used_only_when_they_cover_the_file() {
        let digest = "ab".repeat(32);
        let with = |size: u64, part: u64, n: usize| FileEntry {
            parts: Some(Parts {
                size: part,
                sha256: vec![digest.clone(); n],
            }),
            ..entry("big", size)
        };
        let mib = 1u64 << 20;
        assert!(with(20 * mib + 1, 5 * mib, 5).parts().is_some());
        assert!(with(20 * mib, 5 * mib, 4).parts().is_some());
        assert!(
            with(0, 5 * mib, 1).parts().is_some(),
            "an empty file is one empty part"
        );
        assert!(
            with(20 * mib + 1, 5 * mib, 4).parts().is_none(),
            "one part short"
        );
        assert!(
            with(20 * mib, 5 * mib, 5).parts().is_none(),
            "one part too many"
        );
        assert!(
            with(4096, 1024, 4).parts().is_none(),
            "parts below the minimum"
        );
        let mut upper = with(20 * mib, 5 * mib, 4);
        upper.parts.as_mut().unwrap().sha256[2] = "AB".repeat(32);
        assert!(
            upper.parts().is_none(),
            "a digest that is not lowercase hex"
        );
        assert!(entry("small", 10).parts().is_none());
        // Old manifests have no `parts`, and a manifest without any writes none.
        let old = br#"{"format":"periscope-artifacts/1","save":1,"created_at":"",
            "files":[{"path":"a","size":1,"sha256":"00"}]}"#;
        assert_eq!(Manifest::parse(old).unwrap().files[0].parts, None);
        let bytes = Manifest::new(1, vec![entry("a", 1)], vec![]).to_bytes();
        assert!(!String::from_utf8(bytes).unwrap().contains("parts"));
        // Part digests do not change what the save holds.
        let a = Manifest::new(1, vec![with(20 * mib, 5 * mib, 4)], vec![]);
        let b = Manifest::new(1, vec![entry("big", 20 * mib)], vec![]);
        assert_eq!(a.content_digest(), b.content_digest());
    }

    #[test]
    fn content_digest_ignores_order_number_and_time() {
        let a = Manifest::new(1, vec![entry("b", 1), entry("a", 2)], vec![]);
        let mut b = Manifest::new(7, vec![entry("a", 2), entry("b", 1)], vec![]);
        b.created_at = "2000-01-01T00:00:00Z".into();
        assert_eq!(a.content_digest(), b.content_digest());
        let c = Manifest::new(1, vec![entry("a", 3), entry("b", 1)], vec![]);
        assert_ne!(a.content_digest(), c.content_digest());
        let back = Manifest::parse(&a.to_bytes()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.file("b").map(|f| f.size), Some(1));
        assert!(
            Manifest::parse(br#"{"format":"other","save":1,"created_at":"","files":[]}"#).is_none()
        );
    }
}
