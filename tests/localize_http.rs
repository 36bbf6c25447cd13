//! `periscope localize` from HTTP(S) archives, against the harness's fault-injecting server:
//! formats, options, the record, idempotent re-runs, atomic replacement, retries, resume,
//! checksums, errors with their exit codes, and that credentials never show.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::archive::{self, dir, file, symlink, ZipEntry};
use crate::harness::free_port;
use crate::harness::http_server::{Fault, HttpServer, Resource};
use crate::harness::localize::localize;
use crate::harness::tls::TestCa;

fn record(dest: &Path) -> serde_json::Value {
    let text = fs::read_to_string(dest.join(".periscope/localized.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn entry<'a>(record: &'a serde_json::Value, into: &str) -> &'a serde_json::Value {
    record["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["into"] == into)
        .unwrap_or_else(|| panic!("no record entry for {into}: {record}"))
}

/// Fails unless nothing was published at `DEST/into` and no staging folder is left.
#[track_caller]
pub fn assert_nothing_published(dest: &Path, into: &str) {
    assert!(!dest.join(into).exists(), "{into} was published");
    let staging = dest.join(".periscope/staging");
    if staging.exists() {
        let left: Vec<_> = fs::read_dir(&staging).unwrap().collect();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }
}

/// Bytes that do not compress, so an archive is big enough to be cut mid-body.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn job_tar_gz(version: &str) -> Vec<u8> {
    archive::tar_gz(&[
        dir("job-1/"),
        dir("job-1/src/"),
        file("job-1/src/train.py", b"print('train')\n"),
        file("job-1/VERSION", version.as_bytes()),
        symlink("job-1/latest", "src/train.py"),
    ])
}

#[test]
fn tar_gz_is_unpacked_published_and_recorded() {
    let server = HttpServer::start();
    let body = job_tar_gz("v1");
    server.put("/jobs/training-job.tar.gz", body.clone());
    let dest = tempfile::tempdir().unwrap();
    let ran = localize(
        dest.path(),
        &(server.url("/jobs/training-job.tar.gz") + "#strip=1"),
        &[],
    );
    ran.expect_code(0).expect_output("localized");
    let job = dest.path().join("training-job");
    assert_eq!(
        fs::read_to_string(job.join("src/train.py")).unwrap(),
        "print('train')\n"
    );
    assert_eq!(fs::read_to_string(job.join("VERSION")).unwrap(), "v1");
    assert_eq!(
        fs::read_link(job.join("latest")).unwrap(),
        Path::new("src/train.py")
    );
    let rec = record(dest.path());
    let e = entry(&rec, "training-job");
    assert_eq!(e["kind"], "http");
    assert_eq!(e["revision"]["kind"], "sha256");
    assert_eq!(e["revision"]["id"], archive::sha256_hex(&body));
    assert_eq!(e["files"], 4, "{e}");
    assert_eq!(e["bytes"], 17, "{e}");
    assert_nothing_published(dest.path(), "no-such-folder");
}

#[test]
fn rerun_fetches_nothing_and_a_new_revision_replaces_the_old() {
    let server = HttpServer::start();
    server.put("/job.tar.gz", job_tar_gz("v1"));
    let dest = tempfile::tempdir().unwrap();
    let source = server.url("/job.tar.gz") + "#strip=1";
    localize(dest.path(), &source, &[]).expect_code(0);
    assert_eq!(server.gets("/job.tar.gz"), 1);

    // Same ETag: the restarted initContainer asks (HEAD) but downloads nothing.
    localize(dest.path(), &source, &[])
        .expect_code(0)
        .expect_output("unchanged");
    assert_eq!(server.gets("/job.tar.gz"), 1, "{:?}", server.requests());

    let v2 = archive::tar_gz(&[dir("job-2/"), file("job-2/VERSION", b"v2")]);
    server.put("/job.tar.gz", v2.clone());
    localize(dest.path(), &source, &[])
        .expect_code(0)
        .expect_output("localized");
    assert_eq!(server.gets("/job.tar.gz"), 2);
    let job = dest.path().join("job");
    assert_eq!(fs::read_to_string(job.join("VERSION")).unwrap(), "v2");
    assert!(
        !job.join("src").exists(),
        "the old tree was merged, not replaced"
    );
    assert_eq!(
        entry(&record(dest.path()), "job")["revision"]["id"],
        archive::sha256_hex(&v2)
    );
}

#[test]
fn sha256_option_is_checked_before_publishing() {
    let server = HttpServer::start();
    let body = job_tar_gz("v1");
    server.put("/job.tgz", body.clone());
    let dest = tempfile::tempdir().unwrap();
    let wrong = "00".repeat(32);
    localize(
        dest.path(),
        &format!("{}#sha256={wrong}", server.url("/job.tgz")),
        &[],
    )
    .expect_code(5)
    .expect_output("sha256 mismatch")
    .expect_output(&archive::sha256_hex(&body));
    assert_nothing_published(dest.path(), "job");

    let right = archive::sha256_hex(&body);
    let source = format!("{}#sha256={right}", server.url("/job.tgz"));
    localize(dest.path(), &source, &[]).expect_code(0);
    assert!(dest.path().join("job/job-1/VERSION").exists());
    // A checksum names the content: the re-run does not even ask the server.
    let before = server.requests().len();
    localize(dest.path(), &source, &[])
        .expect_code(0)
        .expect_output("unchanged");
    assert_eq!(server.requests().len(), before);
}

#[test]
fn retries_503_honouring_retry_after_then_succeeds() {
    let server = HttpServer::start();
    server.put("/job.tar.gz", job_tar_gz("v1"));
    server.fault(
        "/job.tar.gz",
        Fault::Status {
            code: 503,
            retry_after: Some(1),
        },
    );
    server.fault(
        "/job.tar.gz",
        Fault::Status {
            code: 429,
            retry_after: None,
        },
    );
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &server.url("/job.tar.gz"), &[])
        .expect_code(0)
        .expect_output("retrying");
    assert_eq!(server.gets("/job.tar.gz"), 3);
    assert!(dest.path().join("job/job-1/VERSION").exists());
}

#[test]
fn resumes_with_range_after_the_connection_is_cut_mid_body() {
    let server = HttpServer::start();
    let big = noise(2 << 20, 7);
    let body = archive::tar_gz(&[file("model.bin", &big), file("README", b"hi")]);
    server.put("/model.tar.gz", body.clone());
    server.fault("/model.tar.gz", Fault::CutAfter(700_000));
    server.fault("/model.tar.gz", Fault::CutAfter(300_000));
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &server.url("/model.tar.gz"), &[]).expect_code(0);
    assert_eq!(fs::read(dest.path().join("model/model.bin")).unwrap(), big);
    let gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=700000-"));
    assert_eq!(gets[2].range.as_deref(), Some("bytes=1000000-"));
    assert!(
        gets[1]
            .if_range
            .as_deref()
            .is_some_and(|v| v.starts_with('"')),
        "{gets:?}"
    );
    assert_eq!(
        entry(&record(dest.path()), "model")["revision"]["id"],
        archive::sha256_hex(&body)
    );
}

#[test]
fn a_server_that_ignores_range_is_resumed_by_skipping() {
    let server = HttpServer::start();
    let big = noise(1 << 20, 9);
    let body = archive::tar(&[file("data.bin", &big)]);
    server.put("/data.tar", body);
    server.fault("/data.tar", Fault::CutAfter(400_000));
    server.fault("/data.tar", Fault::IgnoreRange);
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &server.url("/data.tar"), &[]).expect_code(0);
    assert_eq!(fs::read(dest.path().join("data/data.bin")).unwrap(), big);
    assert_eq!(server.gets("/data.tar"), 2);
}

#[test]
fn a_stalled_body_is_dropped_after_the_idle_timeout_and_resumed() {
    let server = HttpServer::start();
    let big = noise(1 << 20, 11);
    server.put("/slow.tar.gz", archive::tar_gz(&[file("w.bin", &big)]));
    server.fault(
        "/slow.tar.gz",
        Fault::StallAfter(200_000, Duration::from_secs(60)),
    );
    let dest = tempfile::tempdir().unwrap();
    localize(
        dest.path(),
        &server.url("/slow.tar.gz"),
        &["--idle-timeout", "1"],
    )
    .expect_code(0);
    assert_eq!(fs::read(dest.path().join("slow/w.bin")).unwrap(), big);
    let resumed = server
        .requests()
        .iter()
        .any(|r| r.range.as_deref() == Some("bytes=200000-"));
    assert!(resumed, "{:?}", server.requests());
}

#[test]
fn a_slow_but_steady_body_is_not_interrupted() {
    let server = HttpServer::start();
    server.put("/steady.tar.gz", job_tar_gz("v1"));
    server.fault("/steady.tar.gz", Fault::Slow(16, Duration::from_millis(20)));
    let dest = tempfile::tempdir().unwrap();
    localize(
        dest.path(),
        &server.url("/steady.tar.gz"),
        &["--idle-timeout", "2"],
    )
    .expect_code(0);
    assert_eq!(server.gets("/steady.tar.gz"), 1);
}

#[test]
fn not_found_is_exit_3() {
    let server = HttpServer::start();
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &server.url("/missing.tar.gz"), &[])
        .expect_code(3)
        .expect_output("HTTP 404");
    assert_nothing_published(dest.path(), "missing");
    assert_eq!(server.gets("/missing.tar.gz"), 1, "404 must not be retried");
}

#[test]
fn refused_credentials_are_exit_4_and_no_secret_is_ever_shown() {
    let server = HttpServer::start();
    server.put_resource(
        "/private.tar.gz",
        Resource {
            body: job_tar_gz("v1"),
            etag: Some("p1".into()),
            auth: Some(("robot".into(), "s3cr3t-t0ken".into())),
        },
    );
    let dest = tempfile::tempdir().unwrap();
    localize(
        dest.path(),
        &server.url_with_auth("robot:wr0ng-pa55", "/private.tar.gz"),
        &[],
    )
    .expect_code(4)
    .expect_output("HTTP 401")
    .refute_output("wr0ng-pa55");
    assert_nothing_published(dest.path(), "private");

    let ok = localize(
        dest.path(),
        &server.url_with_auth("robot:s3cr3t-t0ken", "/private.tar.gz"),
        &["--output", "json"],
    );
    ok.expect_code(0).refute_output("s3cr3t-t0ken");
    let rec = fs::read_to_string(dest.path().join(".periscope/localized.json")).unwrap();
    assert!(!rec.contains("s3cr3t-t0ken"), "{rec}");
    assert!(dest.path().join("private/job-1/VERSION").exists());
}

#[test]
fn an_unreachable_server_is_exit_6_after_retries() {
    let dest = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/job.tar.gz", free_port());
    localize(dest.path(), &url, &["--retries", "2"])
        .expect_code(6)
        .expect_output("cannot connect");
    assert_nothing_published(dest.path(), "job");
}

#[test]
fn a_server_that_keeps_failing_is_exit_6() {
    let server = HttpServer::start();
    server.put("/job.tar.gz", job_tar_gz("v1"));
    for _ in 0..3 {
        server.fault(
            "/job.tar.gz",
            Fault::Status {
                code: 500,
                retry_after: None,
            },
        );
    }
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &server.url("/job.tar.gz"), &["--retries", "3"])
        .expect_code(6)
        .expect_output("HTTP 500");
    assert_eq!(server.gets("/job.tar.gz"), 3);
    assert_nothing_published(dest.path(), "job");
}

#[test]
fn https_needs_the_private_ca_from_ca_file() {
    let ca = TestCa::new();
    let server = HttpServer::start_tls(&ca);
    server.put("/job.tar.gz", job_tar_gz("v1"));
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &server.url("/job.tar.gz"), &["--retries", "1"])
        .expect_code(6)
        .expect_output("--ca-file");
    assert_nothing_published(dest.path(), "job");
    let ca_file = ca.ca_cert.to_str().unwrap();
    localize(
        dest.path(),
        &server.url("/job.tar.gz"),
        &["--ca-file", ca_file],
    )
    .expect_code(0);
    assert!(dest.path().join("job/job-1/VERSION").exists());
}

#[test]
fn zip_tar_magic_bytes_and_plain_files() {
    let server = HttpServer::start();
    server.put(
        "/code.zip",
        archive::zip(&[
            ZipEntry {
                name: "pkg/",
                data: b"",
                link: None,
                mode: 0o755,
            },
            ZipEntry {
                name: "pkg/run.sh",
                data: b"#!/bin/sh\n",
                link: None,
                mode: 0o755,
            },
            ZipEntry {
                name: "pkg/run",
                data: b"",
                link: Some("run.sh"),
                mode: 0o777,
            },
        ]),
    );
    server.put("/data.tar", archive::tar(&[file("a.txt", b"a")]));
    // No extension: the gzip magic bytes decide.
    server.put("/download", job_tar_gz("magic"));
    server.put("/weights.bin", b"\x00\x01raw-weights".to_vec());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    for source in [
        server.url("/code.zip"),
        server.url("/data.tar"),
        server.url("/download") + "#into=magic&strip=1",
        server.url("/weights.bin") + "#format=none&into=models",
    ] {
        localize(d, &source, &[]).expect_code(0);
    }
    assert_eq!(fs::read(d.join("code/pkg/run.sh")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::read_link(d.join("code/pkg/run")).unwrap(),
        Path::new("run.sh")
    );
    assert_eq!(fs::read(d.join("data/a.txt")).unwrap(), b"a");
    assert_eq!(fs::read(d.join("magic/VERSION")).unwrap(), b"magic");
    assert_eq!(
        fs::read(d.join("models/weights.bin")).unwrap(),
        b"\x00\x01raw-weights"
    );
    let rec = record(d);
    assert_eq!(rec["sources"].as_array().unwrap().len(), 4, "{rec}");

    server.put("/page", b"<html>not an archive</html>".to_vec());
    localize(d, &server.url("/page"), &[])
        .expect_code(2)
        .expect_output("#format=");
    assert_nothing_published(d, "page");
}

#[test]
fn each_attempt_that_makes_progress_earns_a_fresh_retry_budget() {
    let server = HttpServer::start();
    let big = noise(1 << 20, 13);
    server.put("/flaky.tar", archive::tar(&[file("f.bin", &big)]));
    for cut in [100_000, 200_000, 300_000] {
        server.fault("/flaky.tar", Fault::CutAfter(cut));
    }
    let dest = tempfile::tempdir().unwrap();
    // One try per budget: only the progress rule lets three cuts in a row still finish.
    localize(dest.path(), &server.url("/flaky.tar"), &["--retries", "1"]).expect_code(0);
    assert_eq!(fs::read(dest.path().join("flaky/f.bin")).unwrap(), big);
    assert_eq!(server.gets("/flaky.tar"), 4);

    // Without progress, the budget runs out.
    server.fault("/flaky.tar", Fault::CutAfter(0));
    let other = tempfile::tempdir().unwrap();
    localize(other.path(), &server.url("/flaky.tar"), &["--retries", "1"])
        .expect_code(6)
        .expect_output("broke off");
    assert_nothing_published(other.path(), "flaky");
}

#[test]
fn a_file_replaced_mid_download_is_never_spliced() {
    let server = HttpServer::start();
    let old = archive::tar(&[file("w.bin", &noise(1 << 20, 21))]);
    let new = archive::tar(&[file("w.bin", &noise(1 << 20, 22))]);
    server.put("/w.tar", old);
    server.fault("/w.tar", Fault::CutAfter(300_000));
    server.fault("/w.tar", Fault::Replace(new));
    let dest = tempfile::tempdir().unwrap();
    localize(dest.path(), &server.url("/w.tar"), &[])
        .expect_code(6)
        .expect_output("changed on the server");
    assert_nothing_published(dest.path(), "w");
    // The resume was conditional on the old ETag, so the server sent the new file whole.
    let gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2);
    assert!(gets[1].if_range.is_some(), "{gets:?}");
}

#[test]
fn a_presigned_url_that_refuses_head_is_probed_with_a_one_byte_get() {
    let server = HttpServer::start();
    server.put("/signed.tar.gz", job_tar_gz("v1"));
    let dest = tempfile::tempdir().unwrap();
    let source = server.url("/signed.tar.gz") + "?X-Amz-Signature=abcdef0123";
    localize(dest.path(), &source, &[]).expect_code(0);
    server.fault("/signed.tar.gz", Fault::RefuseHead);
    localize(dest.path(), &source, &[])
        .expect_code(0)
        .expect_output("unchanged")
        .refute_output("abcdef0123");
    let ranged: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.range)
        .collect();
    assert_eq!(ranged, [None, Some("bytes=0-0".to_string())]);
}
