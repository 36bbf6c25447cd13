//! `periscope localize` from object stores: S3 (moto), Azure (Azurite) and `file://`, each a real
//! server on 127.0.0.1 started by the harness. GCS is in `localize_gcs.rs` (fake-gcs-server).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::harness::azurite::Azurite;
use crate::harness::s3::S3Server;
use crate::harness::{periscope, run, Ran};

fn localize(env: &[(&str, String)], dest: &Path, sources: &[&str], extra: &[&str]) -> Ran {
    let mut cmd = periscope();
    cmd.args(["localize", "--dest"]).arg(dest);
    for s in sources {
        cmd.args(["--source", s]);
    }
    cmd.args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

fn record(dest: &Path) -> serde_json::Value {
    serde_json::from_str(&read(dest.join(".periscope/localized.json"))).unwrap()
}

/// Every file under `dir`, relative, sorted (folders left out).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// 20 MiB of varied bytes: above the split threshold, so it is fetched in ranges.
fn large_body() -> Vec<u8> {
    (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn s3_prefix_of_many_nested_files_and_a_large_object_is_copied() {
    let s3 = S3Server::start();
    s3.create_bucket("ml-code");
    for i in 0..40 {
        s3.put(
            "ml-code",
            &format!("jobs/j1/src/mod{i:02}.py"),
            format!("print({i})\n").as_bytes(),
        );
    }
    s3.put("ml-code", "jobs/j1/a/b/c/deep.txt", b"deep");
    s3.put("ml-code", "jobs/j1/conf/", b""); // a console-made folder marker
    s3.put(
        "ml-code",
        "jobs/j1/conf/settings with space.yaml",
        b"lr: 0.1\n",
    );
    let large = large_body();
    s3.put("ml-code", "jobs/j1/weights.bin", &large);
    s3.put("ml-code", "jobs/other/not-me.txt", b"outside the prefix");

    let dest = tempfile::tempdir().unwrap();
    let ran = localize(
        &s3.env(),
        dest.path(),
        &["s3://ml-code/jobs/j1/"],
        &["--concurrency", "4"],
    );
    ran.expect_code(0)
        .expect_output("localized s3://ml-code/jobs/j1/");
    let root = dest.path().join("j1");
    let files = tree(&root);
    assert_eq!(files.len(), 43, "{files:?}");
    assert_eq!(read(root.join("src/mod07.py")), "print(7)\n");
    assert_eq!(read(root.join("a/b/c/deep.txt")), "deep");
    assert_eq!(
        read(root.join("conf/settings with space.yaml")),
        "lr: 0.1\n"
    );
    assert_eq!(std::fs::read(root.join("weights.bin")).unwrap(), large);
    assert!(!files.iter().any(|f| f.contains("not-me")));
    let rec = record(dest.path());
    let entry = &rec["sources"][0];
    assert_eq!(entry["kind"], "object");
    assert_eq!(entry["revision"]["kind"], "etags");
    let small: usize = (0..40).map(|i| format!("print({i})\n").len()).sum();
    assert_eq!(entry["bytes"], (small + 4 + 8 + large.len()) as u64);
}

#[test]
fn s3_single_object_with_sha256_lands_under_its_name() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let body = b"weights v1".to_vec();
    s3.put("models", "resnet/model.pt", &body);
    let dest = tempfile::tempdir().unwrap();
    let src = format!("s3://models/resnet/model.pt#sha256={}", sha256_hex(&body));
    localize(&s3.env(), dest.path(), &[&src], &[]).expect_code(0);
    assert_eq!(
        std::fs::read(dest.path().join("model.pt/model.pt")).unwrap(),
        body
    );
    let rec = record(dest.path());
    assert_eq!(rec["sources"][0]["revision"]["kind"], "sha256");
    assert_eq!(rec["sources"][0]["revision"]["id"], sha256_hex(&body));
}

/// With one connection a large object is one plain GET, not a lone range into a file never made.
#[test]
fn s3_large_object_over_one_connection_is_fetched_whole() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let large = large_body();
    s3.put("models", "big/weights.bin", &large);
    let dest = tempfile::tempdir().unwrap();
    let src = format!("s3://models/big/weights.bin#sha256={}", sha256_hex(&large));
    localize(&s3.env(), dest.path(), &[&src], &["--concurrency", "1"]).expect_code(0);
    assert_eq!(
        std::fs::read(dest.path().join("weights.bin/weights.bin")).unwrap(),
        large
    );
    assert_eq!(
        record(dest.path())["sources"][0]["bytes"],
        large.len() as u64
    );
}

#[test]
fn s3_wrong_sha256_exits_5_and_publishes_nothing() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    s3.put("models", "m.bin", b"actual bytes");
    let dest = tempfile::tempdir().unwrap();
    let src = format!("s3://models/m.bin#sha256={}", "00".repeat(32));
    localize(&s3.env(), dest.path(), &[&src], &[])
        .expect_code(5)
        .expect_output("sha256 mismatch");
    assert!(!dest.path().join("m.bin").exists());
    assert_eq!(
        std::fs::read_dir(dest.path().join(".periscope/staging"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "staging left behind"
    );
}

#[test]
fn s3_hostile_key_refuses_the_whole_prefix_with_exit_5() {
    let s3 = S3Server::start();
    s3.create_bucket("evil");
    s3.put("evil", "job/ok.txt", b"fine");
    // Encoded dots reach the server as a literal `..` segment in the key.
    s3.put_raw("evil", "job/%2E%2E/%2E%2E/escaped.txt", b"pwned");
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("code");
    localize(&s3.env(), &dest, &["s3://evil/job/"], &[])
        .expect_code(5)
        .expect_output("..");
    assert!(
        !dest.join("job").exists(),
        "a refused source must publish nothing"
    );
    assert!(!parent.path().join("escaped.txt").exists());
    assert!(!dest.join("escaped.txt").exists());
}

#[test]
fn s3_missing_bucket_and_missing_key_exit_3() {
    let s3 = S3Server::start();
    s3.create_bucket("present");
    let dest = tempfile::tempdir().unwrap();
    localize(
        &s3.env(),
        dest.path(),
        &["s3://absent-bucket/jobs/"],
        &["--retries", "1"],
    )
    .expect_code(3);
    localize(
        &s3.env(),
        dest.path(),
        &["s3://present/no/such/key.bin"],
        &["--retries", "1"],
    )
    .expect_code(3)
    .expect_output("check the bucket and key");
    localize(&s3.env(), dest.path(), &["s3://present/empty-prefix/"], &[])
        .expect_code(3)
        .expect_output("no objects under");
}

#[test]
fn s3_unreachable_endpoint_exits_6_after_few_retries() {
    // A port that was just free: nothing listens there.
    let port = crate::harness::free_port();
    let env = [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "AKIDTESTTEST".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "do-not-print-me".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let dest = tempfile::tempdir().unwrap();
    localize(&env, dest.path(), &["s3://b/p/"], &["--retries", "2"])
        .expect_code(6)
        .expect_output("AWS_ENDPOINT_URL")
        .refute_output("do-not-print-me");
}

#[test]
fn s3_rerun_copies_nothing_and_a_change_replaces_the_tree() {
    let s3 = S3Server::start();
    s3.create_bucket("ml-code");
    s3.put("ml-code", "code/train.py", b"v1");
    s3.put("ml-code", "code/old.py", b"old");
    let dest = tempfile::tempdir().unwrap();
    localize(&s3.env(), dest.path(), &["s3://ml-code/code/"], &[]).expect_code(0);
    let train = dest.path().join("code/train.py");
    let first_inode = std::fs::metadata(&train).unwrap().ino();

    localize(&s3.env(), dest.path(), &["s3://ml-code/code/"], &[])
        .expect_code(0)
        .expect_output("unchanged s3://ml-code/code/");
    assert_eq!(
        std::fs::metadata(&train).unwrap().ino(),
        first_inode,
        "an unchanged source must not be copied again"
    );

    s3.put("ml-code", "code/train.py", b"v2");
    s3.delete("ml-code", "code/old.py");
    localize(&s3.env(), dest.path(), &["s3://ml-code/code/"], &[])
        .expect_code(0)
        .expect_output("localized s3://ml-code/code/");
    assert_eq!(read(&train), "v2");
    assert_eq!(tree(&dest.path().join("code")), ["train.py"]);
}

#[test]
fn s3_wrong_credentials_exit_4_and_right_ones_work() {
    let s3 = S3Server::start();
    s3.create_bucket("private-code");
    s3.put("private-code", "job/train.py", b"secret sauce");
    let (key_id, secret) = s3.enable_auth();
    let mut env = s3.env();
    env.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
    env.push(("AWS_ACCESS_KEY_ID", key_id));
    let dest = tempfile::tempdir().unwrap();

    // No keys at all: the client asks the instance metadata service (a closed local port here,
    // off any cloud), and the user is told that no credentials were found.
    let mut none = periscope();
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        none.env_remove(k);
    }
    none.args(["localize", "--retries", "1", "--dest"])
        .arg(dest.path())
        .args(["--source", "s3://private-code/job/"]);
    for (k, v) in env.iter().filter(|(k, _)| *k != "AWS_ACCESS_KEY_ID") {
        none.env(k, v);
    }
    run(&mut none)
        .expect_code(4)
        .expect_output("no AWS credentials were found: set AWS_ACCESS_KEY_ID");
    assert!(!dest.path().join("job").exists());

    let mut wrong = env.clone();
    wrong.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all".into()));
    localize(
        &wrong,
        dest.path(),
        &["s3://private-code/job/"],
        &["--retries", "1"],
    )
    .expect_code(4)
    .expect_output("AWS_SECRET_ACCESS_KEY")
    .refute_output("not-the-secret-at-all");
    assert!(!dest.path().join("job").exists());
    env.push(("AWS_SECRET_ACCESS_KEY", secret.clone()));
    localize(&env, dest.path(), &["s3://private-code/job/"], &[])
        .expect_code(0)
        .refute_output(&secret);
    assert_eq!(read(dest.path().join("job/train.py")), "secret sauce");
}

#[test]
fn s3_limits_refuse_a_prefix_that_is_too_big() {
    let s3 = S3Server::start();
    s3.create_bucket("ml-code");
    for i in 0..5 {
        s3.put("ml-code", &format!("many/f{i}"), b"x");
    }
    let dest = tempfile::tempdir().unwrap();
    localize(
        &s3.env(),
        dest.path(),
        &["s3://ml-code/many/"],
        &["--max-files", "3"],
    )
    .expect_code(5)
    .expect_output("over the limit");
    localize(
        &s3.env(),
        dest.path(),
        &["s3://ml-code/many/"],
        &["--max-bytes", "4"],
    )
    .expect_code(5);
    assert!(!dest.path().join("many").exists());
}

#[test]
fn azure_prefix_and_single_blob_from_azurite() {
    let az = Azurite::start();
    az.create_container("code");
    az.put("code", "job/train.py", b"print('azure')\n");
    az.put("code", "job/pkg/util.py", b"X = 1\n");
    az.put("code", "weights/w.bin", b"0123456789");
    let dest = tempfile::tempdir().unwrap();
    localize(
        &az.env(),
        dest.path(),
        &["az://code/job/", "azure://code/weights/w.bin#into=w"],
        &[],
    )
    .expect_code(0);
    assert_eq!(read(dest.path().join("job/train.py")), "print('azure')\n");
    assert_eq!(read(dest.path().join("job/pkg/util.py")), "X = 1\n");
    assert_eq!(read(dest.path().join("w/w.bin")), "0123456789");
    // Second run: both unchanged.
    let again = localize(
        &az.env(),
        dest.path(),
        &["az://code/job/", "azure://code/weights/w.bin#into=w"],
        &[],
    );
    again.expect_code(0);
    assert_eq!(
        again.stdout.matches("unchanged").count(),
        2,
        "{}",
        again.stdout
    );
}

#[test]
fn azure_wrong_key_exits_4_without_showing_it() {
    let az = Azurite::start();
    az.create_container("code");
    az.put("code", "job/a.txt", b"a");
    // A well-formed key that is not the account's.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let mut env = az.env();
    env.push(("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1".into()));
    env.push(("AZURE_STORAGE_ACCOUNT_KEY", wrong.into()));
    let dest = tempfile::tempdir().unwrap();
    localize(&env, dest.path(), &["az://code/job/"], &["--retries", "1"])
        .expect_code(4)
        .expect_output("AZURE_STORAGE_ACCOUNT_KEY")
        .refute_output(wrong);
}

#[test]
fn file_urls_and_absolute_paths_are_object_sources() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("proj/lib")).unwrap();
    std::fs::write(src.path().join("proj/main.py"), "main").unwrap();
    std::fs::write(src.path().join("proj/lib/x.py"), "x").unwrap();
    std::fs::write(src.path().join("data.csv"), "a,b\n").unwrap();
    let dest = tempfile::tempdir().unwrap();
    let prefix = format!("file://{}/proj/", src.path().display());
    let single = format!("{}/data.csv", src.path().display());
    localize(&[], dest.path(), &[&prefix, &single], &[]).expect_code(0);
    assert_eq!(tree(&dest.path().join("proj")), ["lib/x.py", "main.py"]);
    assert_eq!(read(dest.path().join("data.csv/data.csv")), "a,b\n");
    let missing = format!("{}/nope.bin", src.path().display());
    localize(&[], dest.path(), &[&missing], &[]).expect_code(3);
}

#[test]
fn gcs_urls_are_configured_from_google_application_credentials() {
    let dest = tempfile::tempdir().unwrap();
    let env = [(
        "GOOGLE_APPLICATION_CREDENTIALS",
        "/nonexistent/service-account.json".to_string(),
    )];
    localize(&env, dest.path(), &["gs://ml-bucket/jobs/j1/"], &[])
        .expect_code(2)
        .expect_output("Google Cloud Storage")
        .expect_output("GOOGLE_APPLICATION_CREDENTIALS");
}

#[test]
fn s3_archive_keys_are_streamed_and_unpacked() {
    use crate::harness::archive::{file, tar_gz, zip, ZipEntry};
    let s3 = S3Server::start();
    s3.create_bucket("releases");
    let tgz = tar_gz(&[
        file("training-job/train.py", b"print('tgz')\n"),
        file("training-job/lib/util.py", b"U = 1\n"),
    ]);
    s3.put("releases", "jobs/training-job.tar.gz", &tgz);
    let zipped = zip(&[ZipEntry {
        name: "a/z.txt",
        data: b"zipped",
        link: None,
        mode: 0o644,
    }]);
    s3.put("releases", "jobs/blob-without-extension", &zipped);
    let dest = tempfile::tempdir().unwrap();
    let with_sha = format!(
        "s3://releases/jobs/training-job.tar.gz#strip=1&sha256={}",
        sha256_hex(&tgz)
    );
    localize(
        &s3.env(),
        dest.path(),
        &[
            &with_sha,
            "s3://releases/jobs/blob-without-extension#format=zip&into=z",
        ],
        &[],
    )
    .expect_code(0);
    assert_eq!(
        read(dest.path().join("training-job/train.py")),
        "print('tgz')\n"
    );
    assert_eq!(
        read(dest.path().join("training-job/lib/util.py")),
        "U = 1\n"
    );
    assert_eq!(read(dest.path().join("z/a/z.txt")), "zipped");
    let rec = record(dest.path());
    let tj = rec["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["into"] == "training-job")
        .unwrap();
    assert_eq!(tj["revision"]["kind"], "sha256");
    assert_eq!(tj["revision"]["id"], sha256_hex(&tgz));

    // Same archive, checksum that does not match: refused, old tree kept.
    let wrong = format!(
        "s3://releases/jobs/training-job.tar.gz#strip=1&sha256={}",
        "11".repeat(32)
    );
    localize(&s3.env(), dest.path(), &[&wrong], &[]).expect_code(5);
    assert_eq!(
        read(dest.path().join("training-job/train.py")),
        "print('tgz')\n"
    );
}

#[test]
fn s3_hostile_archive_key_is_refused_with_exit_5() {
    use crate::harness::archive::{file, tar_gz};
    let s3 = S3Server::start();
    s3.create_bucket("releases");
    let evil = tar_gz(&[file("ok.txt", b"ok"), file("../../escape.txt", b"pwned")]);
    s3.put("releases", "evil.tar.gz", &evil);
    let parent = tempfile::tempdir().unwrap();
    let dest = parent.path().join("code");
    localize(&s3.env(), &dest, &["s3://releases/evil.tar.gz"], &[])
        .expect_code(5)
        .expect_output("escape.txt");
    assert!(!dest.join("evil").exists());
    assert!(!parent.path().join("escape.txt").exists());
}

/// A local folder is checked like an archive: a symlink in it is recreated only when it stays
/// inside; one that leads out (absolute or by `..`, to a file or a folder) or a fifo refuses the
/// whole source with exit 5, and nothing outside the folder is copied.
#[test]
fn folder_sources_refuse_links_that_leave_them() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("secret");
    std::fs::create_dir_all(secret.join("keys")).unwrap();
    std::fs::write(secret.join("shadow"), "root:$6$hash").unwrap();
    std::fs::write(secret.join("keys/id"), "PRIVATE").unwrap();
    type Plant<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, Plant); 4] = [
        ("shadow", &|job| {
            symlink(secret.join("shadow"), job.join("shadow")).unwrap()
        }),
        ("up", &|job| {
            symlink("../../secret/shadow", job.join("sub/up")).unwrap()
        }),
        ("keys", &|job| {
            symlink(secret.join("keys"), job.join("keys")).unwrap()
        }),
        ("pipe", &|job| {
            let c = std::ffi::CString::new(job.join("pipe").to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }),
    ];
    for (name, plant) in cases {
        let job = root.path().join(format!("job-{name}"));
        std::fs::create_dir_all(job.join("sub")).unwrap();
        std::fs::write(job.join("train.py"), "print(1)").unwrap();
        plant(&job);
        let dest = root.path().join(format!("dest-{name}"));
        // With the trailing slash, the form that has always meant "this folder".
        localize(&[], &dest, &[&format!("{}/", job.display())], &[])
            .expect_code(5)
            .expect_output(&format!("{name}`"))
            .refute_output("root:$6$hash");
        assert!(
            !dest.join(format!("job-{name}")).exists(),
            "{name}: published"
        );
        let staging = dest.join(".periscope/staging");
        assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    }
    // Links that stay inside are kept as links; modes too, without setuid.
    let job = root.path().join("kept");
    std::fs::create_dir_all(job.join("bin")).unwrap();
    std::fs::write(job.join("bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        job.join("bin/tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    symlink("bin/tool", job.join("latest")).unwrap();
    let dest = root.path().join("dest-kept");
    localize(&[], &dest, &[&format!("{}/", job.display())], &[]).expect_code(0);
    assert_eq!(
        std::fs::read_link(dest.join("kept/latest")).unwrap(),
        Path::new("bin/tool")
    );
    let mode = std::fs::metadata(dest.join("kept/bin/tool"))
        .unwrap()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
}

/// A folder is a folder with or without the trailing slash, relative paths are taken from the
/// working folder, and what is missing or mistyped says so.
#[test]
fn folder_sources_are_plain_paths() {
    let root = tempfile::tempdir().unwrap();
    let job = root.path().join("myjob");
    std::fs::create_dir_all(job.join("lib")).unwrap();
    std::fs::write(job.join("train.py"), "print('hi')").unwrap();
    std::fs::write(job.join("lib/util.py"), "U = 1").unwrap();
    let in_root = |dest: &str, source: &str| {
        run(periscope()
            .current_dir(root.path())
            .args(["localize", "--dest", dest, "--source", source]))
    };
    for (i, source) in [job.to_str().unwrap(), "./myjob", "myjob/", "myjob"]
        .into_iter()
        .enumerate()
    {
        let dest = format!("dest{i}");
        in_root(&dest, source)
            .expect_code(0)
            .expect_output(&format!("localized {}", job.display()));
        assert_eq!(
            tree(&root.path().join(&dest).join("myjob")),
            ["lib/util.py", "train.py"],
            "{source}"
        );
        let rec = record(&root.path().join(&dest));
        assert_eq!(rec["sources"][0]["revision"]["kind"], "etags");
    }
    // Again: nothing changed, nothing copied; a change is seen.
    in_root("dest1", "./myjob")
        .expect_code(0)
        .expect_output("unchanged");
    std::fs::write(job.join("train.py"), "print('v2')").unwrap();
    in_root("dest1", "./myjob")
        .expect_code(0)
        .expect_output("localized");
    assert_eq!(
        read(root.path().join("dest1/myjob/train.py")),
        "print('v2')"
    );

    // The working folder itself, with the destination inside it: the destination is left out.
    run(periscope().current_dir(&job).args([
        "localize",
        "--dest",
        "out",
        "--source",
        ".#into=copy",
    ]))
    .expect_code(0);
    assert_eq!(
        tree(&job.join("out/copy")),
        ["lib/util.py", "train.py"],
        "the destination was copied into itself"
    );

    in_root("d", "./nope/")
        .expect_code(3)
        .expect_output(&format!("no such folder `{}/nope`", root.path().display()))
        .refute_output("bucket");
    in_root("d", "nope")
        .expect_code(3)
        .expect_output("no such file or folder")
        .expect_output("https://");
    in_root("d", "myjob/train.py/")
        .expect_code(2)
        .expect_output("is a file, not a folder");
    in_root("d", "s3:/bucket/x")
        .expect_code(2)
        .expect_output("`s3:` looks like a URL scheme");
    assert!(!root.path().join("d/nope").exists());
}

/// Without --dest, localize writes to /code only where that folder exists (a pod's volume); on a
/// machine without it, it asks for --dest instead of creating /code at the filesystem root.
#[test]
fn no_dest_and_no_code_folder_asks_for_dest() {
    if Path::new("/code").exists() {
        eprintln!("skipped: /code exists on this machine, so it is the default destination");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("train.py"), "print(1)").unwrap();
    run(periscope()
        .env_remove("PERISCOPE_DEST")
        .env_remove("GIT_SYNC_ROOT")
        .args(["localize", "--source"])
        .arg(format!("{}#into=job", src.path().display())))
    .expect_code(2)
    .expect_output("no --dest given, and /code")
    .expect_output("add --dest DIR");
    assert!(!Path::new("/code").exists(), "/code was created");
}

/// Stores list `a.txt`, `/a.txt` and `a.txt/` under one path: two such keys would be one file
/// (downloaded twice from one of them), and a lone `a.txt/` cannot be read under the path listed.
/// Either way the prefix is refused as unsafe (exit 5) and nothing is published.
#[test]
fn s3_keys_with_a_leading_or_trailing_slash_are_refused() {
    let s3 = S3Server::start();
    for (bucket, keys) in [
        ("trailing", vec![("job/a.txt", "A"), ("job/a.txt/", "B")]),
        ("leading", vec![("a.txt", "A"), ("/a.txt", "C")]),
        (
            "lone-trailing",
            vec![("job/a.txt/", "B"), ("job/b.txt", "b")],
        ),
        ("lone-leading", vec![("/a.txt", "C"), ("b.txt", "b")]),
    ] {
        s3.create_bucket(bucket);
        for (key, body) in &keys {
            s3.put_raw(bucket, key, body.as_bytes());
        }
        let dest = tempfile::tempdir().unwrap();
        let source = format!("s3://{bucket}/#into=all");
        localize(&s3.env(), dest.path(), &[&source], &["--retries", "1"])
            .expect_code(5)
            .expect_output("a.txt` is unsafe")
            .expect_output("begins or ends with `/`");
        assert!(!dest.path().join("all").exists(), "{bucket}: published");
    }
}

/// A model folder holding the same weights three ways: `#include=` / `#exclude=` choose what is
/// copied from an S3 prefix, and the patterns are recorded, so that other patterns are never
/// taken for "unchanged".
#[test]
fn s3_prefix_include_and_exclude_choose_the_files_and_are_recorded() {
    let s3 = S3Server::start();
    s3.create_bucket("hub");
    for (key, body) in [
        ("bert/pytorch_model.bin", "bin"),
        ("bert/model.safetensors", "st"),
        ("bert/tf_model.h5", "h5"),
        ("bert/config.json", "{}"),
        ("bert/onnx/model.onnx", "onnx"),
        ("bert/onnx/config.json", "{}"),
    ] {
        s3.put("hub", key, body.as_bytes());
    }
    let dest = tempfile::tempdir().unwrap();
    let only = "s3://hub/bert/#include=*.safetensors,*.json&exclude=onnx";
    localize(&s3.env(), dest.path(), &[only], &[]).expect_code(0);
    assert_eq!(
        tree(&dest.path().join("bert")),
        ["config.json", "model.safetensors"]
    );
    let rec = record(dest.path());
    assert_eq!(
        rec["sources"][0]["include"],
        serde_json::json!(["*.safetensors", "*.json"])
    );
    assert_eq!(rec["sources"][0]["exclude"], serde_json::json!(["onnx"]));
    assert_eq!(rec["sources"][0]["files"], 2);
    localize(&s3.env(), dest.path(), &[only], &[])
        .expect_code(0)
        .expect_output("unchanged");
    // A change to a file left out changes nothing that was copied.
    s3.put("hub", "bert/tf_model.h5", b"h5 v2");
    localize(&s3.env(), dest.path(), &[only], &[])
        .expect_code(0)
        .expect_output("unchanged");

    let other = "s3://hub/bert/#exclude=*.bin,*.h5,onnx/";
    localize(&s3.env(), dest.path(), &[other], &[])
        .expect_code(0)
        .expect_output("localized");
    assert_eq!(
        tree(&dest.path().join("bert")),
        ["config.json", "model.safetensors"]
    );
    let rec = record(dest.path());
    assert!(rec["sources"][0].get("include").is_none(), "{rec}");

    localize(
        &s3.env(),
        dest.path(),
        &["s3://hub/bert/#include=*.gguf"],
        &[],
    )
    .expect_code(2)
    .expect_output("patterns leave nothing")
    .expect_output("*.gguf");
    assert_eq!(
        tree(&dest.path().join("bert")),
        ["config.json", "model.safetensors"],
        "a refused run keeps the tree"
    );
    localize(
        &s3.env(),
        dest.path(),
        &["git+https://h.invalid/r.git#include=*.py"],
        &[],
    )
    .expect_code(2)
    .expect_output("not git");
}

/// The same patterns on a local folder and on an archive (matched after `#strip=`).
#[test]
fn folder_and_archive_include_and_exclude() {
    use crate::harness::archive::{dir, file, tar_gz};
    use crate::harness::http_server::HttpServer;
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    std::fs::create_dir_all(model.join("ckpt")).unwrap();
    for (rel, body) in [
        ("w.bin", "bin"),
        ("w.safetensors", "st"),
        ("ckpt/step-1.bin", "old"),
        ("README.md", "hi"),
    ] {
        std::fs::write(model.join(rel), body).unwrap();
    }
    let server = HttpServer::start();
    server.put(
        "/model.tar.gz",
        tar_gz(&[
            dir("top/"),
            dir("top/ckpt/"),
            file("top/w.bin", b"bin"),
            file("top/w.safetensors", b"st"),
            file("top/ckpt/step-1.bin", b"old"),
            file("top/README.md", b"hi"),
        ]),
    );
    let dest = root.path().join("dest");
    localize(
        &[],
        &dest,
        &[
            &format!("{}#exclude=*.bin", model.display()),
            &(server.url("/model.tar.gz") + "#strip=1&include=*.safetensors,ckpt/&into=arch"),
        ],
        &[],
    )
    .expect_code(0);
    assert_eq!(tree(&dest.join("model")), ["README.md", "w.safetensors"]);
    assert_eq!(
        tree(&dest.join("arch")),
        ["ckpt/step-1.bin", "w.safetensors"]
    );
}

/// Loading part of a save of model artifacts: only the files the patterns keep are fetched, and
/// each of them is still checked against the save's manifest.
#[test]
fn s3_save_loaded_in_part_is_still_verified() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for (rel, body) in [
        ("model.safetensors", "safe weights"),
        ("model.bin", "pickled weights"),
        ("config.json", "{\"layers\":2}"),
    ] {
        std::fs::write(model.join(rel), body).unwrap();
    }
    let state = work.path().join("state");
    crate::artifacts::push(&s3.env(), &model, "s3://models/jobs", &state, &[]).expect_code(0);
    let save = "jobs/exp-1/worker-0/artifacts/1";
    let source = format!("s3://models/{save}/#include=*.safetensors,*.json&into=m");

    // The file left out may even be damaged: it is not loaded.
    s3.put("models", &format!("{save}/model.bin"), b"pickled WEIGHTS");
    let dest = work.path().join("dest");
    localize(&s3.env(), &dest, &[&source], &[]).expect_code(0);
    assert_eq!(tree(&dest.join("m")), ["config.json", "model.safetensors"]);
    assert_eq!(read(dest.join("m/model.safetensors")), "safe weights");
    assert_eq!(record(&dest)["sources"][0]["files"], 2);

    // A file that is loaded and differs from the manifest refuses the whole save.
    s3.put(
        "models",
        &format!("{save}/model.safetensors"),
        b"SAFE weights",
    );
    let fresh = work.path().join("fresh");
    localize(&s3.env(), &fresh, &[&source], &[])
        .expect_code(5)
        .expect_output("model.safetensors");
    assert!(!fresh.join("m").exists());
}
