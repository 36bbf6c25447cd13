//! `periscope localize` from Google Cloud Storage: fake-gcs-server on 127.0.0.1, reached as
//! Google's own client libraries reach an emulator (`STORAGE_EMULATOR_HOST`, no credentials).
//! The emulator refuses uploads through the XML API, so nothing here writes to it through
//! Periscope: objects are put there through its JSON API (see the README's gaps).

use std::path::Path;

use crate::harness::archive::sha256_hex;
use crate::harness::gcs::FakeGcs;
use crate::harness::localize::localize_env;

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

fn record(dest: &Path) -> serde_json::Value {
    serde_json::from_str(&read(dest.join(".periscope/localized.json"))).unwrap()
}

/// 96 MiB of varied bytes: large enough that moving the rest alone takes longer than asking
/// for it in ranges, even from an emulator on this machine.
fn large_body() -> Vec<u8> {
    (0..96u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn gs_prefix_with_a_large_object_is_copied_in_ranges_without_credentials() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("ml-code");
    gcs.put("ml-code", "jobs/j1/train.py", b"print('train')\n");
    gcs.put(
        "ml-code",
        "jobs/j1/conf/settings with space.yaml",
        b"lr: 0.1\n",
    );
    gcs.put("ml-code", "jobs/j1/a/b/c/deep.txt", b"deep");
    let large = large_body();
    gcs.put("ml-code", "jobs/j1/weights.bin", &large);
    gcs.put("ml-code", "jobs/other/not-me.txt", b"outside the prefix");

    let dest = tempfile::tempdir().unwrap();
    let ran = localize_env(
        &gcs.env(),
        dest.path(),
        "gs://ml-code/jobs/j1/",
        &["--concurrency", "4"],
    );
    ran.expect_code(0)
        .expect_output("localized gs://ml-code/jobs/j1/");
    let root = dest.path().join("j1");
    assert_eq!(read(root.join("train.py")), "print('train')\n");
    assert_eq!(
        read(root.join("conf/settings with space.yaml")),
        "lr: 0.1\n"
    );
    assert_eq!(read(root.join("a/b/c/deep.txt")), "deep");
    assert_eq!(std::fs::read(root.join("weights.bin")).unwrap(), large);
    assert!(!dest.path().join("j1/not-me.txt").exists());
    let entry = &record(dest.path())["sources"][0];
    assert_eq!(entry["kind"], "object");
    // Four files and the four folders they are in.
    assert_eq!(entry["files"], 8, "{entry}");

    // The large object came in several requests: the first for all of it, and ranges of the
    // rest, each answered with its part (206).
    let gets: Vec<String> = gcs
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /ml-code/jobs/j1/weights.bin "))
        .collect();
    assert!(gets.iter().any(|r| r.ends_with(" 206")), "{gets:?}");

    // Unchanged on the server: nothing is fetched again.
    let before = gcs.requests().len();
    localize_env(&gcs.env(), dest.path(), "gs://ml-code/jobs/j1/", &[])
        .expect_code(0)
        .expect_output("unchanged gs://ml-code/jobs/j1/");
    let gets = gcs.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("GET /ml-code/jobs/j1/"))
        .count();
    assert_eq!(gets, 0, "{:?}", &gcs.requests()[before..]);
}

#[test]
fn gs_single_object_and_archive_land_under_their_names() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("ml-code");
    gcs.put("ml-code", "models/config.yaml", b"layers: 2\n");
    let archive = crate::harness::archive::tar_gz(&[crate::harness::archive::file(
        "job/run.py",
        b"print(1)\n",
    )]);
    gcs.put("ml-code", "jobs/job.tar.gz", &archive);

    let dest = tempfile::tempdir().unwrap();
    let sha = sha256_hex(b"layers: 2\n");
    localize_env(
        &gcs.env(),
        dest.path(),
        &format!("gs://ml-code/models/config.yaml#sha256={sha}"),
        &[],
    )
    .expect_code(0);
    assert_eq!(
        read(dest.path().join("config.yaml/config.yaml")),
        "layers: 2\n"
    );

    localize_env(
        &gcs.env(),
        dest.path(),
        "gs://ml-code/jobs/job.tar.gz#strip=1&into=job",
        &[],
    )
    .expect_code(0);
    assert_eq!(read(dest.path().join("job/run.py")), "print(1)\n");

    // A key that is not there: not found, exit 3, naming the service.
    localize_env(
        &gcs.env(),
        dest.path(),
        "gs://ml-code/models/nope.yaml",
        &[],
    )
    .expect_code(3)
    .expect_output("gs://ml-code/models/nope.yaml");
}

/// A save of model artifacts in GCS loads as from any store: `latest` is the highest complete
/// save, and every file is checked against its manifest.
#[test]
fn gs_latest_save_of_artifacts_loads_and_is_verified() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    std::fs::create_dir_all(model.join("tokenizer")).unwrap();
    std::fs::write(model.join("model.safetensors"), "safe weights").unwrap();
    std::fs::write(model.join("tokenizer/vocab.txt"), "a\nb\n").unwrap();
    // Saves are made by `artifacts push` into a folder, then copied into the emulator as they
    // are: the emulator takes no uploads from Periscope.
    let store = work.path().join("store");
    let state = work.path().join("state");
    let storage = format!("file://{}", store.display());
    crate::artifacts::push(&[], &model, &storage, &state, &[]).expect_code(0);
    std::fs::write(model.join("model.safetensors"), "better weights").unwrap();
    crate::artifacts::push(&[], &model, &storage, &state, &[]).expect_code(0);

    let gcs = FakeGcs::start();
    gcs.create_bucket("models");
    gcs.put_tree("models", "jobs", &store);
    let dest = work.path().join("dest");
    let source = "gs://models/jobs/exp-1/worker-0/artifacts/latest/#into=m";
    localize_env(&gcs.env(), &dest, source, &[]).expect_code(0);
    assert_eq!(read(dest.join("m/model.safetensors")), "better weights");
    assert_eq!(read(dest.join("m/tokenizer/vocab.txt")), "a\nb\n");

    // A file that differs from the manifest refuses the whole save.
    gcs.put(
        "models",
        "jobs/exp-1/worker-0/artifacts/2/tokenizer/vocab.txt",
        b"a\nB\n",
    );
    let fresh = work.path().join("fresh");
    localize_env(&gcs.env(), &fresh, source, &[])
        .expect_code(5)
        .expect_output("vocab.txt");
    assert!(!fresh.join("m").exists());
}
