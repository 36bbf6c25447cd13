//! What every archive fuzz target checks: any bytes unpacked into a fresh staging folder never
//! panic, never write beside it, and on success leave only files, folders and links that stay
//! inside it, within the limits.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use periscope::localize::unpack::{unpack, UnpackOptions};
use periscope::localize::{ArchiveFormat, Limits, SourceProgress};

/// Small limits keep each run fast; the guard enforces them like any others.
const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_files: 256,
};

/// A fresh folder holding only `stage/` for one run, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "periscope-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(root.join("stage")).unwrap();
        Scratch(root)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Unpacks `data` as `format` with `strip` and checks the invariants.
pub fn check(data: &[u8], format: ArchiveFormat, strip: usize) {
    let scratch = Scratch::new();
    let stage = scratch.0.join("stage");
    let opts = UnpackOptions {
        strip,
        limits: LIMITS,
        file_name: String::new(),
        filter: Default::default(),
    };
    let result = unpack(data, Some(format), &stage, &opts, &SourceProgress::none());
    let beside: Vec<_> = fs::read_dir(&scratch.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["stage"], "written beside the staging folder");
    if let Ok(stats) = result {
        assert!(stats.bytes <= LIMITS.max_bytes && stats.files <= LIMITS.max_files);
        walk(&stage, &stage);
    }
}

/// Every entry is a file, a folder, or a relative link whose target stays under `root`.
fn walk(root: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let kind = meta.file_type();
        if kind.is_dir() {
            walk(root, &path);
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            assert!(target.is_relative(), "{path:?} -> {target:?}");
            let mut depth = path
                .parent()
                .unwrap()
                .strip_prefix(root)
                .unwrap()
                .components()
                .count();
            for part in target.components() {
                match part {
                    Component::ParentDir => {
                        assert!(depth > 0, "{path:?} -> {target:?} climbs out");
                        depth -= 1;
                    }
                    Component::Normal(_) => depth += 1,
                    _ => {}
                }
            }
        } else {
            assert!(kind.is_file(), "{path:?} is neither file, folder nor link");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                meta.permissions().mode() & 0o7000,
                0,
                "{path:?} kept special bits"
            );
        }
    }
}
