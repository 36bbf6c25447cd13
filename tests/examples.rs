//! The example job as checked in: the folder `examples/training-job/` and its two packages,
//! `examples/training-job.tar.gz` and the bare repository `examples/training-job.git`, which the
//! quickstart and the `run` tests localize. Here: both packages hold exactly the folder's files, as
//! `periscope localize` fetches them, so an edit to the folder without `examples/package` fails.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::periscope;

/// `examples/` in this checkout.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .canonicalize()
        .unwrap()
}

/// The commit on `main` of the checked-in repository, read with the git CLI.
pub fn example_commit() -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(examples_dir().join("training-job.git"))
        .args(["rev-parse", "main"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Every regular file under `dir` by relative path, skipping what Periscope and git add.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == ".git" || name == ".periscope" || name == "__pycache__" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_package_is_current(source: &str) {
    let dest = tempfile::tempdir().unwrap();
    let out = periscope()
        .args(["localize", "--source", source, "--dest"])
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{source}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = files(&examples_dir().join("training-job"));
    let got = files(&dest.path().join("training-job"));
    assert!(want.contains_key("train.py"), "{:?}", want.keys());
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&got),
        names(&want),
        "{source} is stale: run examples/package and commit what it writes"
    );
    for (name, bytes) in &want {
        assert!(
            got[name] == *bytes,
            "{source}: {name} differs from examples/training-job/{name}: run examples/package"
        );
    }
}

#[test]
fn the_tar_gz_package_holds_exactly_the_example_folder() {
    let archive = examples_dir().join("training-job.tar.gz");
    assert_package_is_current(&format!("file://{}", archive.display()));
}

#[test]
fn the_git_package_holds_exactly_the_example_folder_at_its_recorded_commit() {
    let repo = examples_dir().join("training-job.git");
    let source = format!("git+file://{}", repo.display());
    assert_package_is_current(&source);
    // The packaging is reproducible: fixed author, committer and dates, so the commit changes only
    // with the content. A second package run in a copy gives the same commit.
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(examples_dir().join("training-job"))
        .arg(examples_dir().join("package"))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("sh")
        .arg(copy.path().join("package"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let again = Command::new("git")
        .arg("--git-dir")
        .arg(copy.path().join("training-job.git"))
        .args(["rev-parse", "main"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        example_commit(),
        "examples/package made a different commit from the same files: the checked-in \
         repository is stale (run examples/package)"
    );
}
