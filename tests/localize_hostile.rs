//! Hostile archives served over HTTP: each is refused as a whole (exit 5) with a message naming
//! the entry, nothing is published, staging is removed, and nothing outside DEST is touched.
//! Also what is kept on purpose: symlinks and hardlinks inside the tree, modes without
//! setuid/setgid/sticky.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::harness::archive::{self, dir, file, hardlink, symlink, Entry, EntryType, ZipEntry};
use crate::harness::http_server::HttpServer;
use crate::harness::{periscope, run, Ran};
use crate::localize_http::assert_nothing_published;

fn serve_and_localize(body: Vec<u8>, name: &str, extra: &[&str]) -> (tempfile::TempDir, Ran) {
    let server = HttpServer::start();
    server.put(&format!("/{name}"), body);
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("dest");
    let ran = run(periscope()
        .args(["localize", "--dest"])
        .arg(&dest)
        .args(["--source", &server.url(&format!("/{name}"))])
        .args(extra));
    (root, ran)
}

/// Runs a hostile tar and checks the refusal; `outside` must not exist afterwards.
#[track_caller]
fn refused(body: Vec<u8>, name: &str, entry: &str, why: &str) -> tempfile::TempDir {
    let (root, ran) = serve_and_localize(body, name, &[]);
    ran.expect_code(5)
        .expect_output(&format!("`{entry}`"))
        .expect_output(why);
    let into = name.split('.').next().unwrap();
    assert_nothing_published(&root.path().join("dest"), into);
    for outside in ["pwned", "dest/pwned", "dest/.periscope/pwned"] {
        assert!(!root.path().join(outside).exists(), "{outside} was written");
    }
    root
}

fn special(name: &str, kind: EntryType) -> Entry<'_> {
    Entry {
        name,
        kind,
        mode: 0o644,
        data: b"",
        link: "",
    }
}

#[test]
fn absolute_paths_are_refused() {
    // The absolute path points into the test's own temp folder, so a failure cannot harm the host.
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("pwned");
    let name = target.to_str().unwrap();
    let (_r, ran) = serve_and_localize(
        archive::tar_gz(&[file("ok.txt", b"ok"), file(name, b"x")]),
        "evil.tar.gz",
        &[],
    );
    ran.expect_code(5)
        .expect_output(&format!("`{name}`"))
        .expect_output("absolute");
    assert!(!target.exists());
}

#[test]
fn dot_dot_escapes_are_refused() {
    refused(
        archive::tar_gz(&[file("ok.txt", b"ok"), file("a/../../../../../pwned", b"x")]),
        "evil.tar.gz",
        "a/../../../../../pwned",
        "`..`",
    );
}

#[test]
fn symlinks_pointing_outside_are_refused() {
    refused(
        archive::tar(&[symlink("up", "../../../../pwned")]),
        "evil.tar",
        "up",
        "points outside",
    );
    refused(
        archive::tar(&[symlink("etc", "/etc")]),
        "evil.tar",
        "etc",
        "absolute path",
    );
    // Each link stays inside on its own; through the first, the second climbs out.
    refused(
        archive::tar(&[
            dir("s/"),
            symlink("s/a", ".."),
            symlink("s/b", "a/../../pwned"),
        ]),
        "evil.tar",
        "s/b",
        "passes through the symlink",
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    refused(
        archive::tar(&[
            dir("real/"),
            symlink("link", "real"),
            file("link/pwned", b"x"),
        ]),
        "evil.tar",
        "link/pwned",
        "through the symlink `link`",
    );
    refused(
        archive::tar(&[file("f", b"x"), symlink("f2", "f"), file("f2", b"y")]),
        "evil.tar",
        "f2",
        "symlink of the same name",
    );
}

#[test]
fn hardlinks_outside_the_tree_are_refused() {
    refused(
        archive::tar(&[hardlink("passwd", "/etc/passwd")]),
        "evil.tar",
        "passwd",
        "hardlink target",
    );
    refused(
        archive::tar(&[hardlink("h", "../../pwned")]),
        "evil.tar",
        "h",
        "hardlink target",
    );
    refused(
        archive::tar(&[hardlink("h", "not-yet-there")]),
        "evil.tar",
        "h",
        "hardlink target",
    );
}

#[test]
fn devices_and_fifos_are_refused() {
    refused(
        archive::tar(&[special("tty", EntryType::Char)]),
        "evil.tar",
        "tty",
        "device node",
    );
    refused(
        archive::tar(&[special("sda", EntryType::Block)]),
        "evil.tar",
        "sda",
        "device node",
    );
    refused(
        archive::tar(&[special("pipe", EntryType::Fifo)]),
        "evil.tar",
        "pipe",
        "fifo",
    );
}

#[test]
fn size_and_file_limits_are_enforced() {
    let body = archive::tar_gz(&[file("a", &[1u8; 1000]), file("b", &[2u8; 1000])]);
    let (root, ran) = serve_and_localize(body.clone(), "big.tar.gz", &["--max-bytes", "1500"]);
    ran.expect_code(5)
        .expect_output("more than 1500 bytes")
        .expect_output("--max-bytes");
    assert_nothing_published(&root.path().join("dest"), "big");
    let (root, ran) = serve_and_localize(body, "many.tar.gz", &["--max-files", "1"]);
    ran.expect_code(5)
        .expect_output("more than 1 files")
        .expect_output("--max-files");
    assert_nothing_published(&root.path().join("dest"), "many");
}

#[test]
fn hostile_zip_entries_are_refused() {
    let z = |name: &'static str, link: Option<&'static str>| ZipEntry {
        name,
        data: b"x",
        link,
        mode: 0o644,
    };
    refused(
        archive::zip(&[z("ok.txt", None), z("../../../../pwned", None)]),
        "evil.zip",
        "../../../../pwned",
        "`..`",
    );
    refused(
        archive::zip(&[z("/tmp/pwned-by-zip", None)]),
        "evil.zip",
        "/tmp/pwned-by-zip",
        "absolute",
    );
    refused(
        archive::zip(&[z("up", Some("../../../.."))]),
        "evil.zip",
        "up",
        "points outside",
    );
    refused(
        archive::zip(&[z("..\\..\\pwned", None)]),
        "evil.zip",
        "../../pwned",
        "`..`",
    );
    assert!(!Path::new("/tmp/pwned-by-zip").exists());
}

#[test]
fn what_is_kept_links_inside_and_modes_without_special_bits() {
    let mut suid = file("top/bin/tool", b"#!/bin/sh\n");
    suid.mode = 0o6755;
    let mut sticky = dir("top/shared/");
    sticky.mode = 0o1777;
    let body = archive::tar_gz(&[
        dir("top/"),
        dir("top/bin/"),
        suid,
        sticky,
        symlink("top/shared/tool", "../bin/tool"),
        hardlink("top/bin/tool-again", "top/bin/tool"),
    ]);
    let (root, ran) = serve_and_localize(body, "kept.tar.gz", &[]);
    ran.expect_code(0);
    let job = root.path().join("dest/kept/top");
    let mode = |p: &str| fs::metadata(job.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/tool"), 0o755, "setuid/setgid must be dropped");
    assert_eq!(mode("shared"), 0o777, "sticky must be dropped");
    assert_eq!(
        fs::read_link(job.join("shared/tool")).unwrap(),
        Path::new("../bin/tool")
    );
    // Hardlinks inside the tree are kept as hardlinks to the file unpacked earlier.
    let a = fs::metadata(job.join("bin/tool")).unwrap();
    let b = fs::metadata(job.join("bin/tool-again")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(fs::read(job.join("shared/tool")).unwrap(), b"#!/bin/sh\n");
}

#[test]
fn strip_applies_to_entries_and_hardlink_targets() {
    let server = HttpServer::start();
    server.put(
        "/s.tar",
        archive::tar(&[
            dir("a/"),
            dir("a/b/"),
            file("a/b/c.txt", b"c"),
            hardlink("a/b/d.txt", "a/b/c.txt"),
            file("a/top.txt", b"gone with strip=2"),
        ]),
    );
    let dest = tempfile::tempdir().unwrap();
    run(periscope()
        .args(["localize", "--dest"])
        .arg(dest.path())
        .args(["--source", &(server.url("/s.tar") + "#strip=2")]))
    .expect_code(0);
    let s = dest.path().join("s");
    assert_eq!(fs::read(s.join("c.txt")).unwrap(), b"c");
    assert_eq!(fs::read(s.join("d.txt")).unwrap(), b"c");
    let mut names: Vec<_> = fs::read_dir(&s)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c.txt", "d.txt"]);
}

/// A git tree may hold an absolute symlink; a later source whose `#into=` passes through it must
/// be refused (exit 5) instead of replacing the folder the link points to.
#[test]
fn a_later_source_is_never_published_through_an_earlier_sources_symlink() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    fs::create_dir_all(outside.join("victim")).unwrap();
    fs::write(outside.join("victim/keep.txt"), "mine").unwrap();
    let repos = crate::harness::git::Repos::new();
    let repo = repos.create("linky");
    std::os::unix::fs::symlink(&outside, repo.work.join("lnk")).unwrap();
    repo.commit(&[("README", "links\n")], &[], "an absolute link");

    let server = HttpServer::start();
    server.put("/victim.tar", archive::tar(&[file("new.txt", b"theirs")]));
    let dest = root.path().join("dest");
    let ran = run(periscope().args(["localize", "--dest"]).arg(&dest).args([
        "--source",
        &format!("git+file://{}#into=r", repo.bare.display()),
        "--source",
        &(server.url("/victim.tar") + "#into=r/lnk/victim"),
    ]));
    ran.expect_code(5)
        .expect_output("r/lnk` is a symlink")
        .expect_output("#into=");
    assert_eq!(
        fs::read_to_string(outside.join("victim/keep.txt")).unwrap(),
        "mine",
        "the folder the link points to was replaced"
    );
    assert!(!outside.join("victim/new.txt").exists());
    assert!(
        fs::read_link(dest.join("r/lnk")).is_ok(),
        "the git tree stays published"
    );
    let staging = dest.join(".periscope/staging");
    assert_eq!(
        fs::read_dir(&staging).unwrap().count(),
        0,
        "staging left behind"
    );
}

/// GNU tar's PAX sparse members (`--sparse --format=pax`) are refused like GNU sparse ones, not
/// published as their map of holes under a `GNUSparseFile.N/` name.
#[test]
fn pax_sparse_members_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let holes = fs::File::create(work.path().join("holes.bin")).unwrap();
    holes.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&holes, b"data after a hole", 3 << 20).unwrap();
    drop(holes);
    let out = std::process::Command::new("tar")
        .current_dir(work.path())
        .args(["--sparse", "--format=pax", "-cf", "sparse.tar", "holes.bin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let body = fs::read(work.path().join("sparse.tar")).unwrap();
    assert!(
        body.windows(11).any(|w| w == b"GNU.sparse."),
        "tar wrote no PAX sparse member"
    );
    let root = refused(body, "sparse.tar", "holes.bin", "sparse file");
    assert!(!root.path().join("dest/sparse").exists());
}

/// A name no Linux filesystem can hold is hostile input (exit 5), not a local failure (exit 7).
#[test]
fn entry_names_longer_than_a_filesystem_holds_are_refused() {
    let long = "n".repeat(300);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, format!("top/{long}.txt"), &b"hi"[..])
        .unwrap();
    let body = builder.into_inner().unwrap();
    refused(
        body,
        "long.tar",
        &format!("top/{long}.txt"),
        "longer than 255 bytes",
    );
}
