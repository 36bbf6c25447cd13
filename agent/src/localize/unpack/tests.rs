//! Unit tests for the unpack API; the end-to-end hostile-archive cases run the real binary in
//! `tests/localize_hostile.rs`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;

use super::*;

/// A tar entry: raw name bytes (unchecked, so hostile names are possible), type, mode, data, link.
fn entry(name: &[u8], kind: ::tar::EntryType, mode: u32, data: &[u8], link: &[u8]) -> Vec<u8> {
    let mut h = ::tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    if !link.is_empty() {
        h.set_link_name_literal(link).unwrap();
    }
    h.set_cksum();
    let mut b = ::tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    let mut bytes = b.into_inner().unwrap();
    bytes.truncate(bytes.len() - 1024); // drop the end blocks; `tar_of` adds them once
    bytes
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn run(
    data: &[u8],
    format: Option<ArchiveFormat>,
    name: &str,
    strip: usize,
) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("stage");
    fs::create_dir(&dest).unwrap();
    let opts = UnpackOptions {
        strip,
        limits: Limits::default(),
        file_name: name.into(),
        filter: Default::default(),
    };
    let r = unpack(data, format, &dest, &opts, &SourceProgress::none());
    (root, r)
}

use ::tar::EntryType as T;

#[test]
fn tar_gz_streams_with_strip_modes_and_inner_links() {
    let data = gz(&tar_of(&[
        entry(b"top/", T::Directory, 0o755, b"", b""),
        entry(b"top/bin/run.sh", T::Regular, 0o4755, b"#!/bin/sh\n", b""),
        entry(b"top/latest", T::Symlink, 0o777, b"", b"bin/run.sh"),
        entry(b"top/again.sh", T::Link, 0o644, b"", b"top/bin/run.sh"),
    ]));
    // No extension: the gzip magic bytes decide.
    let (root, r) = run(&data, None, "download", 1);
    let stats = r.unwrap();
    let stage = root.path().join("stage");
    assert_eq!(stats.format, ArchiveFormat::TarGz);
    assert_eq!(
        (stats.files, stats.bytes, stats.read),
        (3, 10, data.len() as u64)
    );
    let mode = fs::metadata(stage.join("bin/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid must be dropped");
    assert_eq!(
        fs::read_link(stage.join("latest")).unwrap().to_str(),
        Some("bin/run.sh")
    );
    assert_eq!(fs::read(stage.join("again.sh")).unwrap(), b"#!/bin/sh\n");
}

#[test]
fn multi_member_gzip_is_one_stream() {
    let tar = tar_of(&[entry(b"a.txt", T::Regular, 0o644, &[b'a'; 3000], b"")]);
    let (first, second) = tar.split_at(1000);
    let data = [gz(first), gz(second)].concat();
    let (root, r) = run(&data, None, "x.tar.gz", 0);
    assert_eq!(r.unwrap().bytes, 3000);
    assert_eq!(
        fs::read(root.path().join("stage/a.txt")).unwrap().len(),
        3000
    );
}

#[test]
fn hostile_tar_entries_are_refused_by_name() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            entry(b"/etc/evil", T::Regular, 0o644, b"x", b""),
            "/etc/evil",
        ),
        (
            entry(b"a/../../evil", T::Regular, 0o644, b"x", b""),
            "a/../../evil",
        ),
        (entry(b"up", T::Symlink, 0o777, b"", b"../outside"), "up"),
        (entry(b"abs", T::Symlink, 0o777, b"", b"/etc"), "abs"),
        (entry(b"hard", T::Link, 0o644, b"", b"/etc/passwd"), "hard"),
        (entry(b"tty", T::Char, 0o644, b"", b""), "tty"),
        (entry(b"pipe", T::Fifo, 0o644, b"", b""), "pipe"),
    ];
    for (e, name) in cases {
        let (_root, r) = run(&tar_of(&[e]), Some(ArchiveFormat::Tar), "x.tar", 0);
        let err = r.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Integrity, "{name}: {err}");
        assert!(err.to_string().contains(&format!("`{name}`")), "{err}");
    }
    // A later entry written through an earlier symlink, even one pointing inside.
    let data = tar_of(&[
        entry(b"d", T::Directory, 0o755, b"", b""),
        entry(b"link", T::Symlink, 0o777, b"", b"d"),
        entry(b"link/f", T::Regular, 0o644, b"x", b""),
    ]);
    let err = run(&data, Some(ArchiveFormat::Tar), "x.tar", 0)
        .1
        .unwrap_err();
    assert!(
        err.to_string().contains("through the symlink `link`"),
        "{err}"
    );
}

#[test]
fn zip_and_plain_files() {
    let mut w = ::zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let o = ::zip::write::SimpleFileOptions::default().unix_permissions(0o6755);
    w.add_directory("job/", o).unwrap();
    w.start_file("job/train.py", o).unwrap();
    w.write_all(b"print(1)\n").unwrap();
    w.add_symlink("job/link", "train.py", o).unwrap();
    let data = w.finish().unwrap().into_inner();
    let (root, r) = run(&data, None, "job.zip", 0);
    assert_eq!(r.unwrap().files, 3);
    let stage = root.path().join("stage");
    assert_eq!(fs::read(stage.join("job/train.py")).unwrap(), b"print(1)\n");
    let mode = fs::metadata(stage.join("job/train.py"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    // The spool beside the stage is gone.
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);

    let mut w = ::zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    w.start_file("..\\evil.txt", o).unwrap();
    w.write_all(b"x").unwrap();
    let err = run(&w.finish().unwrap().into_inner(), None, "e.zip", 0)
        .1
        .unwrap_err();
    assert!(err.to_string().contains("evil.txt"), "{err}");

    let (root, r) = run(b"weights", Some(ArchiveFormat::None), "model.bin", 0);
    assert_eq!(r.unwrap().bytes, 7);
    assert_eq!(
        fs::read(root.path().join("stage/model.bin")).unwrap(),
        b"weights"
    );

    let err = run(b"<html>", None, "download", 0).1.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Usage);
}

#[test]
fn a_failing_input_is_a_read_error_not_damage() {
    struct Fails(Vec<u8>);
    impl Read for Fails {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }
    let mut data = tar_of(&[entry(b"big", T::Regular, 0o644, &[7u8; 5000], b"")]);
    data.truncate(3000);
    let root = tempfile::tempdir().unwrap();
    let opts = UnpackOptions::new("a.tar", &SourceOptions::default(), Limits::default());
    let err = unpack(
        Fails(data),
        None,
        root.path(),
        &opts,
        &SourceProgress::none(),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Read(_)), "{err}");
}

#[test]
fn zip_entries_marked_as_fifo_or_device_are_refused() {
    let mut w = ::zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let o = ::zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    w.start_file("pipe", o).unwrap();
    let mut data = w.finish().unwrap().into_inner();
    // The writer only makes files, folders and links; rewrite the central directory's external
    // attributes (offset 38 of the entry) to a fifo, as a hand-made archive could.
    let cd = data
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("central directory");
    let fifo: u32 = (0o010644u32) << 16;
    data[cd + 38..cd + 42].copy_from_slice(&fifo.to_le_bytes());
    data[cd + 5] = 3; // made by: Unix, so the mode is read
    let err = run(&data, None, "p.zip", 0).1.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Integrity);
    assert!(
        err.to_string().contains("`pipe`") && err.to_string().contains("fifo"),
        "{err}"
    );
}
