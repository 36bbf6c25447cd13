//! Object keys → paths inside the stage, checked like archive entries.
//!
//! A listing is untrusted input: whoever can write to the bucket decides the keys. This module turns
//! a listing into a plan of relative file paths and folders, and refuses the whole listing when any
//! key could land outside the stage or collides with another. It never touches the disk.

use std::collections::{BTreeSet, HashSet};

use object_store::path::Path;
use object_store::ObjectMeta;

use super::ObjectError;
use crate::localize::Filter;

/// One object to copy. Invariant: `rel` is non-empty, relative, and made only of normal
/// components (no `.`, `..`, empty parts or NUL), so `stage.join(rel)` stays inside the stage.
#[derive(Debug, Clone)]
pub struct Planned {
    pub meta: ObjectMeta,
    /// The path below the stage, `/`-separated.
    pub rel: String,
}

/// What a prefix becomes on disk. Invariant: every ancestor of every file is in `dirs`, and no
/// path is both a file and a folder.
#[derive(Debug, Default)]
pub struct Plan {
    pub files: Vec<Planned>,
    /// Folders to create, parents before children.
    pub dirs: Vec<String>,
}

impl Plan {
    /// Total bytes of the files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.meta.size).sum()
    }

    /// Entries written: files and folders, as the limits count them.
    pub fn entries(&self) -> u64 {
        (self.files.len() + self.dirs.len()) as u64
    }
}

/// Why two listed objects with the same path are refused. Stores list a key that begins or ends
/// with `/` under the path without it, so `a.txt` and `/a.txt` (or `a.txt/`) look alike and a
/// download by path reads one of them twice.
pub const ALIASED: &str = "two keys name this same path (one of them begins or ends with `/`, \
                           which no file path can tell apart)";

/// Why a listed object that cannot be read under its listed path is refused: its key most likely
/// begins or ends with `/`, which the listing dropped (or it was deleted while copying).
pub const UNREADABLE: &str = "it was listed but is not found under that name: its key begins or \
                              ends with `/`, which no file path can hold, or it was deleted \
                              while copying";

/// Checks one path segment. object_store's own `Path` already refuses `.`, `..` and control
/// characters when it parses a listing; this is checked again here because the stage's safety must
/// not rest on another crate's parser.
fn check_part(key: &str, part: &str) -> Result<(), ObjectError> {
    let reason = if part.is_empty() {
        "it has an empty path segment"
    } else if part == "." || part == ".." {
        "it climbs out of its folder with `..` or `.`"
    } else if part.contains('/') || part.contains('\0') {
        "it contains a separator or NUL inside a segment"
    } else {
        return Ok(());
    };
    Err(ObjectError::UnsafeKey {
        key: key.to_string(),
        reason: reason.into(),
    })
}

/// The path below the prefix an object lands at, when it is below it (`None` for the prefix's
/// own marker and for what the store listed elsewhere, which [`plan`] refuses).
pub fn rel(prefix: &Path, meta: &ObjectMeta) -> Option<String> {
    let parts: Vec<_> = meta.location.prefix_match(prefix)?.collect();
    (!parts.is_empty()).then(|| {
        parts
            .iter()
            .map(|p| p.as_ref())
            .collect::<Vec<_>>()
            .join("/")
    })
}

/// The listed objects whose path `filter` keeps, with any object [`plan`] has to judge (the
/// prefix's marker, anything listed outside it): what the fingerprint of a prefix covers.
pub fn kept<'a>(
    prefix: &'a Path,
    objects: &'a [ObjectMeta],
    filter: &'a Filter,
) -> impl Iterator<Item = &'a ObjectMeta> + 'a {
    objects
        .iter()
        .filter(move |m| rel(prefix, m).is_none_or(|rel| filter.keeps(&rel)))
}

/// Plans the copy of `objects` listed under `prefix`, writing only what `filter` keeps (every key
/// is checked all the same).
///
/// Zero-byte objects whose key is a folder of other objects (the "folder markers" consoles create)
/// and the marker of the prefix itself are skipped; a non-empty object that is also a folder is
/// refused, since no tree can hold both.
pub fn plan(prefix: &Path, objects: Vec<ObjectMeta>, filter: &Filter) -> Result<Plan, ObjectError> {
    let mut files = Vec::with_capacity(objects.len());
    for meta in objects {
        let key = meta.location.as_ref().to_string();
        let parts: Vec<String> = match meta.location.prefix_match(prefix) {
            Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
            None => {
                return Err(ObjectError::UnsafeKey {
                    key,
                    reason: "the store listed it outside the requested prefix".into(),
                })
            }
        };
        if parts.is_empty() {
            if meta.size == 0 {
                continue; // The prefix's own folder marker.
            }
            return Err(ObjectError::UnsafeKey {
                key,
                reason: "an object has the prefix's own name; use the key without a trailing `/`"
                    .into(),
            });
        }
        for part in &parts {
            check_part(&key, part)?;
        }
        files.push(Planned {
            meta,
            rel: parts.join("/"),
        });
    }
    let mut dirs = folders_of(&files);
    let mut kept = Vec::with_capacity(files.len());
    let mut seen = HashSet::with_capacity(files.len());
    for f in files {
        if dirs.contains(&f.rel) {
            if f.meta.size == 0 {
                continue; // A folder marker.
            }
            return Err(ObjectError::UnsafeKey {
                key: f.meta.location.to_string(),
                reason: "it is both an object and a folder of other objects".into(),
            });
        }
        if !seen.insert(f.rel.clone()) {
            return Err(ObjectError::UnsafeKey {
                key: f.meta.location.to_string(),
                reason: ALIASED.into(),
            });
        }
        kept.push(f);
    }
    if filter.is_active() {
        kept.retain(|f| filter.keeps(&f.rel));
        dirs = folders_of(&kept);
    }
    kept.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(Plan {
        files: kept,
        // BTreeSet order puts `a` before `a/b`: parents first.
        dirs: dirs.into_iter().collect(),
    })
}

/// Every folder the files are in.
fn folders_of(files: &[Planned]) -> BTreeSet<String> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut at = 0;
        while let Some(i) = f.rel[at..].find('/') {
            dirs.insert(f.rel[..at + i].to_string());
            at += i + 1;
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            location: Path::from_iter(key.split('/')),
            last_modified: chrono::DateTime::UNIX_EPOCH,
            size,
            e_tag: None,
            version: None,
        }
    }

    #[test]
    fn plans_nested_keys_and_skips_folder_markers() {
        let p = plan(
            &Path::from("jobs/j1"),
            vec![
                meta("jobs/j1", 0),
                meta("jobs/j1/a/b/c.txt", 3),
                meta("jobs/j1/a", 0),
                meta("jobs/j1/top.py", 5),
            ],
            &Filter::default(),
        )
        .unwrap();
        let rels: Vec<_> = p.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["a/b/c.txt", "top.py"]);
        assert_eq!(p.dirs, ["a", "a/b"]);
        assert_eq!((p.bytes(), p.entries()), (8, 4));
    }

    #[test]
    fn refuses_a_file_that_is_also_a_folder() {
        let err = plan(
            &Path::ROOT,
            vec![meta("a", 4), meta("a/b", 1)],
            &Filter::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("both an object and a folder"),
            "{err}"
        );
    }

    #[test]
    fn filters_choose_files_after_every_key_is_checked() {
        let mut f = Filter::default();
        f.add_include("*.safetensors").unwrap();
        let objects = vec![
            meta("m/a/w.safetensors", 3),
            meta("m/a/w.bin", 3),
            meta("m/b/w.h5", 3),
        ];
        let p = plan(&Path::from("m"), objects.clone(), &f).unwrap();
        let rels: Vec<_> = p.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            (rels, p.dirs),
            (vec!["a/w.safetensors"], vec!["a".to_string()])
        );
        assert_eq!(kept(&Path::from("m"), &objects, &f).count(), 1);
        // A key left out is still checked.
        let mut hostile = objects;
        hostile.push(meta("m/x.bin", 1));
        hostile.push(meta("m/x.bin/y", 1));
        assert!(plan(&Path::from("m"), hostile, &f).is_err());
    }

    #[test]
    fn refuses_keys_that_alias_one_path() {
        // `a.txt` and `/a.txt` (or `a.txt/`) are listed with the same path.
        let err = plan(
            &Path::ROOT,
            vec![meta("a.txt", 1), meta("a.txt", 2)],
            &Filter::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("begins or ends with `/`"), "{err}");
        // Two folder markers of one folder are still just markers.
        let p = plan(
            &Path::ROOT,
            vec![meta("d", 0), meta("d", 0), meta("d/x", 1)],
            &Filter::default(),
        )
        .unwrap();
        assert_eq!(p.files.len(), 1);
    }

    #[test]
    fn refuses_climbing_parts() {
        // `Path::from_iter` would encode `..`; build the bad part the way a hostile store would.
        for bad in ["..", ".", ""] {
            assert!(check_part("k", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_part("k", "ok.txt").is_ok());
    }
}
