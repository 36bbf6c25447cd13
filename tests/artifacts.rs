//! `periscope artifacts push` and loading saves back with `periscope localize`, against file://,
//! moto's S3 and Azurite on 127.0.0.1; `periscope run --artifacts` end to end with SQLite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::azurite::Azurite;
use crate::harness::proxy::Proxy;
use crate::harness::s3::S3Server;
use crate::harness::{periscope, run, Ran};

/// Deterministic, varied bytes.
fn body(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// A folder of `small` small files in nested folders and one `large_mib` MiB file; returns the
/// expected tree (relative path → content).
pub(crate) fn make_artifacts(
    dir: &Path,
    small: usize,
    large_mib: usize,
) -> BTreeMap<String, Vec<u8>> {
    let mut tree = BTreeMap::new();
    for i in 0..small {
        let rel = format!("ckpt/shard-{:02}/part-{i:04}.bin", i % 7);
        tree.insert(rel, body(i as u32, 100 + (i * 37) % 3000));
    }
    tree.insert("config with space.json".into(), b"{\"lr\":0.1}".to_vec());
    tree.insert("model.bin".into(), body(99, large_mib << 20));
    for (rel, content) in &tree {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    tree
}

/// Every regular file under `dir`, relative, with its content.
pub(crate) fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(root, &p, out);
            } else if meta.is_file() {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn with_env(cmd: &mut std::process::Command, env: &[(&str, String)]) {
    for (k, v) in env {
        cmd.env(k, v);
    }
}

pub(crate) fn push(
    env: &[(&str, String)],
    dir: &Path,
    storage: &str,
    state: &Path,
    extra: &[&str],
) -> Ran {
    let mut cmd = periscope();
    cmd.args(["artifacts", "push"])
        .arg(dir)
        .args(["--storage", storage, "--experiment-id", "exp-1"])
        .args(["--worker", "worker-0", "--state-dir"])
        .arg(state)
        .args(extra);
    with_env(&mut cmd, env);
    run(&mut cmd)
}

fn localize(env: &[(&str, String)], dest: &Path, source: &str) -> Ran {
    localize_with(env, dest, source, &[])
}

fn localize_with(env: &[(&str, String)], dest: &Path, source: &str, extra: &[&str]) -> Ran {
    let mut cmd = periscope();
    cmd.args(["localize", "--dest"])
        .arg(dest)
        .args(["--source", source])
        .args(extra);
    with_env(&mut cmd, env);
    run(&mut cmd)
}

/// The push state file in `state` (there is one per folder and destination).
fn state_file(state: &Path) -> Option<PathBuf> {
    std::fs::read_dir(state).ok()?.find_map(|e| {
        let p = e.ok()?.path();
        let name = p.file_name()?.to_str()?.to_string();
        (name.starts_with("artifacts-") && name.ends_with(".json")).then_some(p)
    })
}

/// Relative paths the push state says are stored whole in the unfinished save.
fn stored_in_state(state: &Path) -> Vec<String> {
    let Some(path) = state_file(state) else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    json["files"]
        .as_object()
        .map(|files| {
            files
                .iter()
                .filter(|(_, k)| k["stored"] == true)
                .map(|(rel, _)| rel.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn file_push_skips_escaping_links_and_fifos_loads_back_and_pushes_once() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    let outside = work.path().join("outside.txt");
    std::fs::write(&outside, "not part of the model").unwrap();
    let expected = make_artifacts(&dir, 300, 64);
    std::os::unix::fs::symlink(&outside, dir.join("escape.txt")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let store = work.path().join("store");
    let storage = format!("file://{}", store.display());
    let state = work.path().join("state");

    let ran = push(&[], &dir, &storage, &state, &[]);
    ran.expect_code(0)
        .expect_output("save 1: 302 files")
        .expect_output("skipped escape.txt: symlink leaves the folder")
        .expect_output("skipped pipe: FIFO");
    let save = store.join("exp-1/worker-0/artifacts/1");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(save.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), 302);
    let skipped: Vec<&str> = manifest["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["escape.txt", "pipe"]);
    assert!(!save.join("escape.txt").exists() && !save.join("pipe").exists());

    // The same content again: no new save.
    push(&[], &dir, &storage, &state, &[])
        .expect_code(0)
        .expect_output("unchanged, identical to save 1");
    assert!(!store.join("exp-1/worker-0/artifacts/2").exists());

    // Loaded back byte-identical, manifest checked.
    let dest = work.path().join("dest");
    localize(
        &[],
        &dest,
        &format!("{storage}/exp-1/worker-0/artifacts/1/"),
    )
    .expect_code(0);
    assert_eq!(read_tree(&dest.join("1")), expected);

    // One file changes: the next save sends it and copies the rest from save 1.
    std::fs::write(dir.join("config with space.json"), b"{\"lr\":0.2}").unwrap();
    push(&[], &dir, &storage, &state, &[])
        .expect_code(0)
        .expect_output("save 2: 302 files")
        .expect_output("1 sent, 301 copied from the previous save");
    assert_eq!(
        std::fs::read(store.join("exp-1/worker-0/artifacts/2/config with space.json")).unwrap(),
        b"{\"lr\":0.2}"
    );

    // `latest` is the highest complete save; an unfinished save 3 (no manifest) is not it.
    std::fs::create_dir_all(store.join("exp-1/worker-0/artifacts/3")).unwrap();
    std::fs::write(store.join("exp-1/worker-0/artifacts/3/half.bin"), b"x").unwrap();
    let latest = work.path().join("latest");
    let source = format!("{storage}/exp-1/worker-0/artifacts/latest/#into=model");
    localize(&[], &latest, &source).expect_code(0);
    let mut expected2 = expected;
    expected2.insert("config with space.json".into(), b"{\"lr\":0.2}".to_vec());
    assert_eq!(read_tree(&latest.join("model")), expected2);
}

#[test]
fn files_named_like_the_saves_own_objects_are_kept_apart_and_load_back() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    // A model folder may well hold its own manifest.json; it must not take the save's.
    let mut expected = make_artifacts(&dir, 5, 0);
    for (rel, content) in [
        ("manifest.json", &b"{\"model\":\"resnet\"}"[..]),
        (".claim", b"mine"),
        (".periscope-user/manifest.json", b"nested"),
        ("ckpt/manifest.json", b"deeper"),
    ] {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        expected.insert(rel.to_string(), content.to_vec());
    }
    let state = work.path().join("state");
    let env = s3.env();
    push(&env, &dir, "s3://models/jobs", &state, &[])
        .expect_code(0)
        .expect_output(&format!("save 1: {} files", expected.len()));
    let save = "jobs/exp-1/worker-0/artifacts/1";
    let manifest = s3.get_text("models", &format!("{save}/manifest.json"));
    assert!(manifest.contains("periscope-artifacts/1"), "{manifest}");
    for (object, content) in [
        (".periscope-user/manifest.json", "{\"model\":\"resnet\"}"),
        (".periscope-user/.claim", "mine"),
        (".periscope-user/.periscope-user/manifest.json", "nested"),
        ("ckpt/manifest.json", "deeper"),
    ] {
        assert_eq!(s3.get_text("models", &format!("{save}/{object}")), content);
    }
    let dest = work.path().join("dest");
    localize(&env, &dest, &format!("s3://models/{save}/")).expect_code(0);
    assert_eq!(read_tree(&dest.join("1")), expected);
    // Save 2 copies the kept-apart files from save 1 by their object names.
    copy_then_load_save_2(&env, &dir, "s3://models/jobs", &state, expected, &[]);
}

#[test]
fn s3_push_loads_back_byte_identical_and_a_tampered_object_is_refused() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    let expected = make_artifacts(&dir, 200, 64);
    let state = work.path().join("state");
    let env = s3.env();
    push(&env, &dir, "s3://models/jobs", &state, &[])
        .expect_code(0)
        .expect_output("save 1: 202 files");
    push(&env, &dir, "s3://models/jobs", &state, &[])
        .expect_code(0)
        .expect_output("unchanged, identical to save 1");
    let keys = s3.list("models", "jobs/exp-1/worker-0/artifacts/");
    assert!(
        keys.iter().all(|(k, _)| k.contains("/artifacts/1/")),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 204, "202 files, the manifest and the claim");

    let source = "s3://models/jobs/exp-1/worker-0/artifacts/1/";
    let dest = work.path().join("dest");
    localize(&env, &dest, source).expect_code(0);
    assert_eq!(read_tree(&dest.join("1")), expected);
    copy_then_load_save_2(
        &env,
        &dir,
        "s3://models/jobs",
        &state,
        expected.clone(),
        &[],
    );

    // Same size, other bytes: only the sha256 tells. Nothing may be published.
    let mut tampered = expected["ckpt/shard-03/part-0010.bin"].clone();
    tampered[0] ^= 0xff;
    s3.put(
        "models",
        "jobs/exp-1/worker-0/artifacts/1/ckpt/shard-03/part-0010.bin",
        &tampered,
    );
    // An extra object the manifest does not name is never loaded.
    s3.put("models", "jobs/exp-1/worker-0/artifacts/1/extra.txt", b"x");
    let fresh = work.path().join("fresh");
    localize(&env, &fresh, source)
        .expect_code(5)
        .expect_output("ckpt/shard-03/part-0010.bin");
    assert!(!fresh.join("1").exists(), "nothing published");
    let staging: Vec<_> = std::fs::read_dir(fresh.join(".periscope/staging"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "staging discarded: {staging:?}");

    // A missing object is refused as well.
    s3.delete(
        "models",
        "jobs/exp-1/worker-0/artifacts/1/ckpt/shard-00/part-0007.bin",
    );
    localize(&env, &fresh, source)
        .expect_code(5)
        .expect_output("part-0007.bin` is missing");
}

/// Writes a file of `len` bytes whose every MiB differs (a varied block with the MiB's index in
/// front, so a part stored in the wrong place changes the digest); returns its sha256.
fn write_big(path: &Path, len: u64) -> String {
    use sha2::Digest;
    use std::io::Write;
    let block = body(7, 1 << 20);
    let mut out = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path).unwrap());
    let mut sha = sha2::Sha256::new();
    let mut written = 0u64;
    let mut chunk = block.clone();
    for i in 0u64.. {
        if written == len {
            break;
        }
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        let n = (len - written).min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).unwrap();
        sha.update(&chunk[..n]);
        written += n as u64;
    }
    out.flush().unwrap();
    hex::encode(sha.finalize())
}

fn sha256_file(path: &Path) -> (u64, String) {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).unwrap();
    let mut sha = sha2::Sha256::new();
    let n = std::io::copy(&mut file, &mut sha).unwrap();
    (n, hex::encode(sha.finalize()))
}

/// Base64 (standard alphabet, padded), as S3 writes checksums.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn s3_parts_carry_their_sha256_for_the_server_to_check_unless_turned_off() {
    use sha2::Digest;
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    write_big(&dir.join("weights.bin"), (20 << 20) + 3);
    let bytes = std::fs::read(dir.join("weights.bin")).unwrap();
    // The server's checksum of a multipart upload: the SHA-256 of its 8 MiB parts' SHA-256s.
    let parts: Vec<u8> = bytes
        .chunks(8 << 20)
        .flat_map(|p| sha2::Sha256::digest(p).to_vec())
        .collect();
    let composite = base64(&sha2::Sha256::digest(&parts));
    let key = |prefix: &str| format!("{prefix}/exp-1/worker-0/artifacts/1/weights.bin");

    let env = s3.env();
    push(&env, &dir, "s3://models/on", &work.path().join("s1"), &[]).expect_code(0);
    assert_eq!(s3.checksum_sha256("models", &key("on")), Some(composite));

    let mut off = s3.env();
    off.push(("AWS_CHECKSUM_ALGORITHM", "none".into()));
    push(&off, &dir, "s3://models/off", &work.path().join("s2"), &[]).expect_code(0);
    assert_eq!(s3.checksum_sha256("models", &key("off")), None);
}

#[test]
fn a_file_pushed_in_parts_is_checked_part_by_part_on_load_and_a_changed_part_is_named() {
    use sha2::Digest;
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    let len = (20u64 << 20) + 3;
    write_big(&dir.join("weights.bin"), len);
    std::fs::write(dir.join("config.json"), b"{\"lr\":0.1}").unwrap();
    let bytes = std::fs::read(dir.join("weights.bin")).unwrap();
    let part_digests: Vec<String> = bytes
        .chunks(8 << 20)
        .map(|p| hex::encode(sha2::Sha256::digest(p)))
        .collect();
    let state = work.path().join("state");
    let env = s3.env();
    push(&env, &dir, "s3://models/jobs", &state, &[]).expect_code(0);
    let save = |n: u32| format!("jobs/exp-1/worker-0/artifacts/{n}");
    let parts_in = |n: u32| {
        let manifest: serde_json::Value =
            serde_json::from_str(&s3.get_text("models", &format!("{}/manifest.json", save(n))))
                .unwrap();
        let files = manifest["files"].as_array().unwrap().clone();
        let entry = |path: &str| files.iter().find(|f| f["path"] == path).unwrap().clone();
        assert_eq!(entry("config.json").get("parts"), None, "one PUT, no parts");
        entry("weights.bin")["parts"].clone()
    };
    let listed = parts_in(1);
    assert_eq!(listed["size"], 8 << 20);
    assert_eq!(listed["sha256"], serde_json::json!(part_digests));

    // Save 2 copies weights.bin server-side: its parts come from save 1's manifest.
    std::fs::write(dir.join("config.json"), b"{\"lr\":0.2}").unwrap();
    push(&env, &dir, "s3://models/jobs", &state, &[])
        .expect_code(0)
        .expect_output("1 sent, 1 copied from the previous save");
    assert_eq!(parts_in(2), listed);

    // With one connection the file is one request, which checks every part as it streams.
    let load_over = |name: &str, extra: &[&str]| {
        let dest = work.path().join(name);
        let ran = localize_with(&env, &dest, &format!("s3://models/{}/", save(1)), extra);
        (ran, dest)
    };
    let load = |name: &str| load_over(name, &[]);
    for (name, extra) in [("good", &[][..]), ("good-1", &["--concurrency", "1"][..])] {
        let (ran, dest) = load_over(name, extra);
        ran.expect_code(0);
        assert_eq!(std::fs::read(dest.join("1/weights.bin")).unwrap(), bytes);
    }

    // One byte of the second part changed, same size: the load names the part's bytes.
    let mut tampered = bytes.clone();
    tampered[(9 << 20) + 5] ^= 0x01;
    s3.put("models", &format!("{}/weights.bin", save(1)), &tampered);
    for (name, extra) in [
        ("tampered", &[][..]),
        ("tampered-1", &["--concurrency", "1"][..]),
    ] {
        let (ran, dest) = load_over(name, extra);
        ran.expect_code(5)
            .expect_output("`weights.bin` bytes 8388608..16777216 (part 2) have sha256");
        assert!(!dest.join("1").exists(), "nothing published");
    }

    // A manifest from before part digests were listed: the whole file is read back and checked.
    let key = format!("{}/manifest.json", save(1));
    let mut manifest: serde_json::Value =
        serde_json::from_str(&s3.get_text("models", &key)).unwrap();
    for f in manifest["files"].as_array_mut().unwrap() {
        f.as_object_mut().unwrap().remove("parts");
    }
    s3.put(
        "models",
        &key,
        &serde_json::to_vec_pretty(&manifest).unwrap(),
    );
    let (ran, dest) = load("old-manifest");
    ran.expect_code(5).expect_output("`weights.bin` has sha256");
    assert!(!dest.join("1").exists(), "nothing published");
    s3.put("models", &format!("{}/weights.bin", save(1)), &bytes);
    let (ran, dest) = load("old-manifest-good");
    ran.expect_code(0);
    assert_eq!(std::fs::read(dest.join("1/weights.bin")).unwrap(), bytes);
}

#[test]
fn s3_push_of_many_small_files_and_one_over_1_gib_loads_back_identical() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    let mut expected = make_artifacts(&dir, 500, 0);
    expected.remove("model.bin");
    std::fs::remove_file(dir.join("model.bin")).unwrap();
    let len = (1u64 << 30) + 4097;
    let big_sha = write_big(&dir.join("weights.safetensors"), len);
    let state = work.path().join("state");
    let env = s3.env();
    push(&env, &dir, "s3://models/jobs", &state, &[])
        .expect_code(0)
        .expect_output("save 1: 502 files, 1.0 GiB");
    let dest = work.path().join("dest");
    localize(&env, &dest, "s3://models/jobs/exp-1/worker-0/artifacts/1/").expect_code(0);
    assert_eq!(
        sha256_file(&dest.join("1/weights.safetensors")),
        (len, big_sha)
    );
    std::fs::remove_file(dest.join("1/weights.safetensors")).unwrap();
    assert_eq!(read_tree(&dest.join("1")), expected);
}

#[test]
fn azurite_push_in_parts_loads_back_byte_identical() {
    let az = Azurite::start();
    az.create_container("models");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    let expected = make_artifacts(&dir, 60, 24);
    let state = work.path().join("state");
    let env = az.env();
    push(
        &env,
        &dir,
        "az://models/jobs",
        &state,
        &["--artifacts-part-size", "5MiB"],
    )
    .expect_code(0)
    .expect_output("save 1: 62 files");
    let dest = work.path().join("dest");
    localize(&env, &dest, "az://models/jobs/exp-1/worker-0/artifacts/1/").expect_code(0);
    assert_eq!(read_tree(&dest.join("1")), expected);
    copy_then_load_save_2(
        &env,
        &dir,
        "az://models/jobs",
        &state,
        expected,
        &["--artifacts-part-size", "5MiB"],
    );
}

/// Changes one file, pushes save 2 (the rest copied server-side from save 1) and loads it back.
fn copy_then_load_save_2(
    env: &[(&str, String)],
    dir: &Path,
    storage: &str,
    state: &Path,
    mut expected: BTreeMap<String, Vec<u8>>,
    extra: &[&str],
) {
    let changed = b"{\"lr\":0.3}".to_vec();
    std::fs::write(dir.join("config with space.json"), &changed).unwrap();
    expected.insert("config with space.json".into(), changed);
    let others = expected.len() - 1;
    push(env, dir, storage, state, extra)
        .expect_code(0)
        .expect_output(&format!("1 sent, {others} copied from the previous save"));
    let dest = tempfile::tempdir().unwrap();
    localize(
        env,
        dest.path(),
        &format!("{storage}/exp-1/worker-0/artifacts/2/"),
    )
    .expect_code(0);
    assert_eq!(read_tree(&dest.path().join("2")), expected);
}

#[test]
fn a_push_killed_mid_way_continues_the_same_save_without_sending_stored_files_again() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    let expected = make_artifacts(&dir, 400, 32);
    let state = work.path().join("state");
    let env = s3.env();
    let mut cmd = periscope();
    cmd.args(["artifacts", "push"])
        .arg(&dir)
        .args(["--storage", "s3://models/jobs", "--experiment-id", "exp-1"])
        .args(["--worker", "worker-0", "--artifacts-concurrency", "1"])
        .arg("--state-dir")
        .arg(&state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    with_env(&mut cmd, &env);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_in_state(&state).len() < 64 {
        assert!(Instant::now() < deadline, "the push stored nothing in time");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let recorded = stored_in_state(&state);
    let prefix = "jobs/exp-1/worker-0/artifacts/";
    let before: BTreeMap<String, String> = s3.list("models", prefix).into_iter().collect();
    assert!(
        !before.keys().any(|k| k.ends_with("manifest.json")),
        "the killed push must not have completed"
    );
    assert!(
        recorded.len() < expected.len(),
        "killed before the end: {} of {}",
        recorded.len(),
        expected.len()
    );
    // Any object written again after this would carry a later LastModified.
    std::thread::sleep(Duration::from_millis(1100));

    push(&env, &dir, "s3://models/jobs", &state, &[])
        .expect_code(0)
        .expect_output("save 1: 402 files")
        .expect_output("continued an interrupted push");
    let after: BTreeMap<String, String> = s3.list("models", prefix).into_iter().collect();
    for rel in &recorded {
        let key = format!("{prefix}1/{rel}");
        assert_eq!(
            after.get(&key),
            before.get(&key),
            "{rel} was stored before the kill and must not be sent again"
        );
    }
    assert!(!after.keys().any(|k| k.contains("/artifacts/2/")));
    let dest = work.path().join("dest");
    localize(&env, &dest, &format!("s3://models/{prefix}1/")).expect_code(0);
    assert_eq!(read_tree(&dest.join("1")), expected);
}

/// How many parts of `rel`'s unfinished multipart upload the push state records.
fn parts_in_state(state: &Path, rel: &str) -> usize {
    state_file(state)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|j| j["uploads"][rel]["parts"].as_object().map(|m| m.len()))
        .unwrap_or(0)
}

/// Pushes a folder with a large file through `proxy`, kills the push (SIGKILL) once some of the
/// large file's parts are stored, pushes again and checks, by the bytes the proxy forwarded, that
/// the stored parts were not sent again; then loads the save back.
fn killed_multipart_push_continues(env: &[(&str, String)], storage: &str, proxy: &Proxy) {
    const PART: usize = 5 << 20;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    let expected = make_artifacts(&dir, 20, 120); // model.bin: 24 parts of 5 MiB
    let state = work.path().join("state");
    let mut cmd = periscope();
    cmd.args(["artifacts", "push"])
        .arg(&dir)
        .args(["--storage", storage, "--experiment-id", "exp-1"])
        .args(["--worker", "worker-0", "--artifacts-concurrency", "1"])
        .args(["--artifacts-part-size", "5MiB", "--state-dir"])
        .arg(&state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    with_env(&mut cmd, env);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while parts_in_state(&state, "model.bin") < 8 {
        assert!(Instant::now() < deadline, "no part was recorded in time");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the push ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL, mid-file
    child.wait().unwrap();
    let recorded = parts_in_state(&state, "model.bin");
    assert!(recorded < 24, "killed before the file was complete");

    // The killed push may have left part of a part in its socket; the proxy forwards it still.
    proxy.wait_until_clients_gone();
    let before = proxy.sent_upstream();
    push(
        env,
        &dir,
        storage,
        &state,
        &["--artifacts-part-size", "5MiB"],
    )
    .expect_code(0)
    .expect_output("save 1: 22 files")
    .expect_output("continued an interrupted push")
    .expect_output(&format!(
        "{recorded} parts ({}.0 MiB) of large files were stored by the interrupted push",
        recorded * 5
    ));
    let sent = proxy.sent_upstream() - before;
    let remaining = (120 << 20) - recorded * PART;
    // Everything else sent is small: the small files (under 60 KB), headers and the manifest.
    // One more whole part is allowed: the kill may come after the store took a part and before
    // the push journaled its id (one part at a time here), and such a part must be sent again.
    let extra = (sent as usize).checked_sub(remaining);
    assert!(
        matches!(extra, Some(x) if x < (2 << 20) || (PART..PART + (2 << 20)).contains(&x)),
        "sent {sent} bytes again; the {} parts not yet stored are {remaining} bytes",
        24 - recorded
    );
    assert_eq!(parts_in_state(&state, "model.bin"), 0, "no upload left");
    let dest = work.path().join("dest");
    localize(
        env,
        &dest,
        &format!("{storage}/exp-1/worker-0/artifacts/1/"),
    )
    .expect_code(0);
    assert_eq!(read_tree(&dest.join("1")), expected);
}

#[test]
fn a_push_killed_mid_file_continues_its_s3_multipart_upload() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    let proxy = Proxy::start(format!("127.0.0.1:{}", s3.port).parse().unwrap());
    let mut env = s3.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    killed_multipart_push_continues(&env, "s3://models/jobs", &proxy);
}

#[test]
fn a_push_killed_mid_file_continues_its_azure_block_upload() {
    let az = Azurite::start();
    az.create_container("models");
    let proxy = Proxy::start(format!("127.0.0.1:{}", az.port).parse().unwrap());
    let mut env = az.env();
    env.retain(|(k, _)| *k != "AZURITE_BLOB_STORAGE_URL");
    env.push(("AZURITE_BLOB_STORAGE_URL", proxy.url()));
    killed_multipart_push_continues(&env, "az://models/jobs", &proxy);
}

/// Two pushes of different folders to the same worker at the same moment (each with its own
/// state folder, as `exec --artifacts` and `sidecar --artifacts` have) make two distinct saves,
/// each loading back exactly its own folder.
fn simultaneous_pushes_take_distinct_saves(env: &[(&str, String)], storage: &str) {
    let work = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut trees = Vec::new();
    for who in ["a", "b"] {
        let dir = work.path().join(format!("model-{who}"));
        let mut tree = make_artifacts(&dir, 150, 0);
        let marker = format!("written by push {who}").into_bytes();
        std::fs::write(dir.join("who.txt"), &marker).unwrap();
        tree.insert("who.txt".into(), marker);
        trees.push(tree);
        let mut cmd = periscope();
        cmd.args(["artifacts", "push"])
            .arg(&dir)
            .args(["--storage", storage, "--experiment-id", "exp-1"])
            .args(["--worker", "worker-0", "--state-dir"])
            .arg(work.path().join(format!("state-{who}")))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        with_env(&mut cmd, env);
        children.push(cmd.spawn().unwrap());
    }
    let mut saves = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        // The summary line, `<dir>: save <n>: …` (log lines before it may also say "save").
        let n: u64 = stderr
            .lines()
            .find_map(|line| line.split(": save ").nth(1))
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no save number in: {stderr}"));
        saves.push(n);
    }
    let mut sorted = saves.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 2], "two distinct saves: {saves:?}");
    for (n, tree) in saves.iter().zip(trees) {
        let dest = work.path().join(format!("dest-{n}"));
        localize(
            env,
            &dest,
            &format!("{storage}/exp-1/worker-0/artifacts/{n}/"),
        )
        .expect_code(0);
        assert_eq!(read_tree(&dest.join(n.to_string())), tree, "save {n}");
    }
}

#[test]
fn simultaneous_pushes_to_file_storage_take_distinct_saves() {
    let store = tempfile::tempdir().unwrap();
    simultaneous_pushes_take_distinct_saves(&[], &format!("file://{}", store.path().display()));
}

#[test]
fn simultaneous_pushes_to_s3_take_distinct_saves() {
    let s3 = S3Server::start();
    s3.create_bucket("models");
    simultaneous_pushes_take_distinct_saves(&s3.env(), "s3://models/jobs");
}

#[test]
fn a_file_that_keeps_changing_is_named_and_no_save_completes() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("done.txt"), "stable").unwrap();
    let growing = dir.join("growing.bin");
    std::fs::write(&growing, body(1, 32 << 20)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let growing = growing.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&growing)
                .unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"x").unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // The writer is running once the file has grown.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&growing).unwrap().len() <= 32 << 20 {
        assert!(Instant::now() < deadline, "the writer never wrote");
        std::thread::sleep(Duration::from_millis(1));
    }
    let store = work.path().join("store");
    let storage = format!("file://{}", store.display());
    let ran = push(&[], &dir, &storage, &work.path().join("state"), &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    ran.expect_code(7)
        .expect_output("growing.bin")
        .expect_output("changed while it was read");
    // The push fails while hashing, before anything is stored; if it got further, no manifest.
    let stored = if store.exists() {
        read_tree(&store)
    } else {
        BTreeMap::new()
    };
    let manifests = stored
        .into_keys()
        .filter(|k| k.ends_with("manifest.json"))
        .count();
    assert_eq!(manifests, 0, "no save may be marked complete");
}

#[test]
fn run_with_artifacts_records_the_save_in_the_metastore() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let mut cmd = periscope();
    cmd.args(["run", "--data-dir"])
        .arg(&data)
        .args(["--experiment-id", "exp-run", "--artifacts"])
        .arg(&model)
        .args(["--", "sh", "-c"])
        .arg(format!("printf weights > '{}/model.bin'", model.display()));
    run(&mut cmd)
        .expect_code(0)
        .expect_output("save 1: 1 files");
    let mut show = periscope();
    show.args(["runs", "show", "exp-run", "--data-dir"])
        .arg(&data);
    let shown = run(&mut show);
    shown.expect_code(0);
    let url = format!(
        "file://{}/exp-run/worker-0/artifacts/1/",
        data.join("storage").display()
    );
    shown.expect_output(&format!("worker-0 save 1: {url}"));
    let dest = work.path().join("dest");
    localize(&[], &dest, &url).expect_code(0);
    assert_eq!(std::fs::read(dest.join("1/model.bin")).unwrap(), b"weights");
}

/// Waits for a child with a deadline, so a hang fails the test instead of blocking it.
fn wait(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the command did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sidecar_saves_artifacts_when_the_job_ends_and_records_the_param() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    let expected = make_artifacts(&model, 20, 1);
    let state = work.path().join("state");
    let exit_file = work.path().join("exit-code");
    let store = work.path().join("store");
    let mut cmd = periscope();
    cmd.args(["sidecar", "--storage"])
        .arg(format!("file://{}", store.display()))
        .args(["--experiment-id", "exp-s", "--worker", "worker-1"])
        // A free port: tests run in parallel, and the default 9090 may be taken.
        .args(["--listen", "127.0.0.1:0"])
        .args(["--poll-interval", "0.1", "--state-dir"])
        .arg(&state)
        .arg("--code-dir")
        .arg(work.path().join("no-code"))
        .arg("--exit-when-file")
        .arg(&exit_file)
        .arg("--artifacts")
        .arg(&model)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::fs::write(&exit_file, "0\n").unwrap();
    assert_eq!(wait(&mut child, Duration::from_secs(60)), Some(0));
    let url = format!("file://{}/exp-s/worker-1/artifacts/1/", store.display());
    let mut params = periscope();
    params
        .args(["metrics", "show", "exp-s", "--params", "--state-dir"])
        .arg(&state);
    run(&mut params)
        .expect_code(0)
        .expect_output("artifacts.1")
        .expect_output(&url);
    let dest = work.path().join("dest");
    localize(&[], &dest, &url).expect_code(0);
    assert_eq!(read_tree(&dest.join("1")), expected);
}

#[test]
fn exec_saves_artifacts_after_the_command_and_keeps_its_exit_code() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let store = work.path().join("store");
    let marker = work.path().join("ran");
    let exec = |storage: Option<&str>| {
        let mut cmd = periscope();
        cmd.args(["exec", "--capture-dir"])
            .arg(work.path().join("logs"))
            .args([
                "--experiment-id",
                "exp-e",
                "--worker",
                "worker-0",
                "--state-dir",
            ])
            .arg(work.path().join("state"))
            .arg("--artifacts")
            .arg(&model);
        if let Some(s) = storage {
            cmd.args(["--storage", s]);
        }
        cmd.args(["--", "sh", "-c"]).arg(format!(
            "printf w > '{}/w.bin'; touch '{}'; exit 3",
            model.display(),
            marker.display()
        ));
        run(&mut cmd)
    };
    // Without storage the pod is misconfigured: refused before the command runs.
    exec(None).expect_code(2).expect_output("--storage");
    assert!(!marker.exists());
    exec(Some(&format!("file://{}", store.display())))
        .expect_code(3)
        .expect_output("save 1: 1 files");
    assert_eq!(
        std::fs::read(store.join("exp-e/worker-0/artifacts/1/w.bin")).unwrap(),
        b"w"
    );
    assert!(store
        .join("exp-e/worker-0/artifacts/1/manifest.json")
        .exists());
}
