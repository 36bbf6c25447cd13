//! Checkpoints while training and restored on restart, through the real binary against file://
//! and moto's S3: a training script that saves a checkpoint every few steps under
//! `--artifacts-every`, SIGKILLed mid-run with its whole run, resumes on a new machine from the
//! last complete save (`--restore`); unchanged files are not uploaded again (counted in stored
//! bytes); `--keep-saves` leaves N; a marker save; a final save cut by its deadline and finished
//! by the next start.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::artifacts::read_tree;
use crate::harness::proxy::Proxy;
use crate::harness::s3::S3Server;
use crate::harness::{periscope, run, Ran};

/// A training script: resumes from `<ckpt>/ckpt.json` (printing its starting step), writes a
/// large `weights.bin` once (the part of a model that does not change between checkpoints), then
/// runs `steps` steps, writing the checkpoint every `every` steps as a trainer should: to a
/// temporary name, then renamed. Its pid goes to `$PID_FILE`.
const TRAIN: &str = r#"
import json, os, sys, time
ckpt, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(ckpt, exist_ok=True)
with open(os.environ["PID_FILE"], "w") as f:
    f.write(str(os.getpid()))
path, weights = os.path.join(ckpt, "ckpt.json"), os.path.join(ckpt, "weights.bin")
start = 0
if os.path.exists(path):
    with open(path) as f:
        start = json.load(f)["step"]
print(f"starting at step {start}", flush=True)
if not os.path.exists(weights):
    with open(weights + ".tmp", "wb") as f:
        f.write(os.urandom(3 << 20))
    os.replace(weights + ".tmp", weights)
step = start
for step in range(start + 1, start + steps + 1):
    time.sleep(0.02)
    if step % every == 0:
        with open(path + ".tmp", "w") as f:
            json.dump({"step": step}, f)
        os.replace(path + ".tmp", path)
print(f"ended at step {step}", flush=True)
"#;

const WEIGHTS: u64 = 3 << 20;
const EXPERIMENT: &str = "job-7";
const SAVES: &str = "job-7/worker-0/artifacts";

/// Where the saves go: a folder, or moto's S3 behind a proxy that counts the bytes sent to it.
enum Store {
    File(PathBuf),
    S3 { s3: S3Server, proxy: Proxy },
}

impl Store {
    fn file(dir: &Path) -> Store {
        Store::File(dir.join("store"))
    }

    fn s3() -> Store {
        let s3 = S3Server::start();
        s3.create_bucket("models");
        let proxy = Proxy::start(format!("127.0.0.1:{}", s3.port).parse().unwrap());
        Store::S3 { s3, proxy }
    }

    fn url(&self) -> String {
        match self {
            Store::File(dir) => format!("file://{}", dir.display()),
            Store::S3 { .. } => "s3://models/jobs".into(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Store::File(_) => Vec::new(),
            Store::S3 { s3, proxy } => {
                let mut env = s3.env();
                env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
                env.push(("AWS_ENDPOINT_URL", proxy.url()));
                env
            }
        }
    }

    /// The numbers of the complete saves (with a manifest), ascending.
    fn complete_saves(&self) -> Vec<u64> {
        let mut saves: Vec<u64> = match self {
            Store::File(dir) => std::fs::read_dir(dir.join(SAVES))
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                        .filter(|n: &u64| dir.join(format!("{SAVES}/{n}/manifest.json")).exists())
                        .collect()
                })
                .unwrap_or_default(),
            Store::S3 { s3, .. } => s3
                .list("models", &format!("jobs/{SAVES}/"))
                .into_iter()
                .filter_map(|(key, _)| {
                    let rest = key.strip_prefix(&format!("jobs/{SAVES}/"))?;
                    let n = rest.strip_suffix("/manifest.json")?;
                    n.parse().ok()
                })
                .collect(),
        };
        saves.sort_unstable();
        saves
    }

    /// The step recorded in save `n`'s checkpoint.
    fn step_in(&self, n: u64) -> u64 {
        self.checkpoint_in(n)
            .unwrap_or_else(|| panic!("save {n} holds no checkpoint"))
    }

    /// The step recorded in save `n`'s checkpoint, if it holds one.
    fn checkpoint_in(&self, n: u64) -> Option<u64> {
        let key = format!("{SAVES}/{n}/ckpt.json");
        let text = match self {
            Store::File(dir) => std::fs::read_to_string(dir.join(key)).ok()?,
            Store::S3 { s3, .. } => {
                let listed = s3.list("models", &format!("jobs/{key}"));
                listed.iter().find(|(k, _)| k == &format!("jobs/{key}"))?;
                s3.get_text("models", &format!("jobs/{key}"))
            }
        };
        serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
    }

    /// Bytes stored by uploads: on the local filesystem, the size of the distinct files under the
    /// saves (a server-side copy is a hard link, so it stores nothing new); on S3, what clients
    /// sent to the server.
    fn stored_bytes(&self) -> u64 {
        match self {
            Store::File(dir) => {
                fn walk(dir: &Path, seen: &mut BTreeMap<u64, u64>) {
                    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        let meta = std::fs::symlink_metadata(e.path()).unwrap();
                        if meta.is_dir() {
                            walk(&e.path(), seen);
                        } else {
                            seen.insert(meta.ino(), meta.len());
                        }
                    }
                }
                let mut seen = BTreeMap::new();
                walk(&dir.join(SAVES), &mut seen);
                seen.values().sum()
            }
            Store::S3 { proxy, .. } => {
                proxy.wait_until_clients_gone();
                proxy.sent_upstream()
            }
        }
    }
}

fn with_env(cmd: &mut Command, env: &[(&str, String)]) {
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// `periscope run` of the training script on a machine whose data folder is `data`, its
/// checkpoints in `<data>/ckpt`, saved every 300 ms and restored first; `resume` continues the
/// run that `data` holds.
fn train_run(store: &Store, data: &Path, steps: u32, pid_file: &Path, resume: bool) -> Command {
    let ckpt = data.join("ckpt");
    let script = data.parent().unwrap().join("train.py");
    std::fs::write(&script, TRAIN).unwrap();
    let mut cmd = periscope();
    cmd.arg("run")
        .arg("--data-dir")
        .arg(data)
        .args(["--storage", &store.url(), "--experiment-id", EXPERIMENT])
        .arg("--artifacts")
        .arg(&ckpt)
        .arg("--restore")
        .arg(&ckpt)
        .args(["--artifacts-every", "300ms"])
        // Output stored within 0.2 s; the worker's folder taken over 1 s after a lost machine.
        .args(["--chunk-age", "0.2", "--claim-lease", "1"])
        .args(resume.then_some("--resume"))
        .args(["--", "python3"])
        .arg(&script)
        .arg(&ckpt)
        .args([steps.to_string(), "5".into()])
        .env("PID_FILE", pid_file);
    with_env(&mut cmd, &store.env());
    cmd
}

/// Waits until `store` holds at least `n` complete saves, the last with a checkpoint.
fn wait_for_saves(store: &Store, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = || {
        let saves = store.complete_saves();
        saves.len() >= n && store.checkpoint_in(*saves.last().unwrap()).is_some()
    };
    while !done() {
        assert!(Instant::now() < deadline, "{n} saves were not made in time");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs `periscope` and the training script it runs (in a process group of its own), the way
/// a spot VM's loss ends both.
fn kill_whole_run(child: &mut Child, pid_file: &Path) {
    let script: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.kill().unwrap();
    // SAFETY: signalling the script this test started (through periscope), by its pid.
    unsafe { libc::kill(script, libc::SIGKILL) };
    child.wait().unwrap();
}

/// What `logs cat` prints of the run's stdout, as stored.
fn stored_stdout(store: &Store) -> String {
    let url = format!("{}/{EXPERIMENT}/worker-0/logs/stdout.log", store.url());
    let mut cmd = periscope();
    cmd.args(["logs", "cat", &url]);
    with_env(&mut cmd, &store.env());
    run(&mut cmd).stdout
}

/// A run killed mid-training (a spot VM lost with its disk), started again on a new machine
/// (a fresh data folder) with `--restore`: it takes the worker's folder over once the lost
/// run's lease lapses, resumes from the step of the last complete save, and stores its output
/// beside the first run's; the large file that never changed was uploaded once across every
/// save. The first machine, back afterwards, finds the worker finished and is refused (exit 9).
fn killed_run_resumes_from_its_last_save(store: &Store) {
    let work = tempfile::tempdir().unwrap();
    let pid_file = work.path().join("train.pid");
    let mut first = train_run(
        store,
        &work.path().join("vm-1"),
        1_000_000,
        &pid_file,
        false,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_saves(store, 3, &mut first);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stored_stdout(store).contains("starting at step 0\n") {
        assert!(
            Instant::now() < deadline,
            "the first run's output was not stored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_whole_run(&mut first, &pid_file);

    let saves = store.complete_saves();
    let last = *saves.last().unwrap();
    let step = store.step_in(last);
    assert!(step > 0 && step % 5 == 0, "save {last} holds step {step}");
    // Several saves, but the 3 MiB of weights went up once: later saves copied them.
    let stored = store.stored_bytes();
    assert!(
        (WEIGHTS..WEIGHTS + WEIGHTS / 2).contains(&stored),
        "{} saves stored {stored} bytes; the weights are {WEIGHTS}",
        saves.len()
    );

    let ran = run(&mut train_run(
        store,
        &work.path().join("vm-2"),
        12,
        &pid_file,
        false,
    ));
    ran.expect_code(0)
        .expect_output("took the worker's folder over")
        .expect_output(&format!("restored save {last} (2 files"))
        .expect_output(&format!("starting at step {step}\n"))
        .expect_output(&format!("ended at step {}\n", step + 12));
    let latest = *store.complete_saves().last().unwrap();
    assert_eq!(store.step_in(latest), step + 10);
    // The restored weights are the same bytes: still not uploaded again.
    assert!(
        store.stored_bytes() < WEIGHTS + WEIGHTS / 2,
        "{}",
        ran.stderr
    );
    // Both machines' output is stored, the lost run's first.
    let stdout = stored_stdout(store);
    let resumed = format!("starting at step {step}\n");
    let (Some(a), Some(b)) = (stdout.find("starting at step 0\n"), stdout.find(&resumed)) else {
        panic!("{stdout}");
    };
    assert!(a < b, "{stdout}");

    // The first machine comes back: the worker has finished on vm-2, so it is refused.
    let back = run(&mut train_run(
        store,
        &work.path().join("vm-1"),
        12,
        &pid_file,
        true,
    ));
    back.expect_code(9);
    assert!(
        back.stderr.contains("whose job succeeded"),
        "{}",
        back.stderr
    );
    assert!(!back.stdout.contains("starting at step"));
}

#[test]
fn a_run_killed_mid_training_resumes_from_its_last_save_on_file_storage() {
    let work = tempfile::tempdir().unwrap();
    killed_run_resumes_from_its_last_save(&Store::file(work.path()));
}

#[test]
fn a_run_killed_mid_training_resumes_from_its_last_save_on_s3() {
    killed_run_resumes_from_its_last_save(&Store::s3());
}

/// A script that writes checkpoints 1 to 4, touching the marker after each and waiting until it
/// is gone; then it checks that the latest complete save holds the checkpoint it just wrote.
const MARKED: &str = r#"
import glob, json, os, sys, time
ckpt, marker, saves = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(ckpt, exist_ok=True)
for step in range(1, 5):
    with open(os.path.join(ckpt, "ckpt.tmp"), "w") as f:
        json.dump({"step": step}, f)
    os.replace(os.path.join(ckpt, "ckpt.tmp"), os.path.join(ckpt, "ckpt.json"))
    open(marker, "w").close()
    deadline = time.time() + 30
    while os.path.exists(marker):
        if time.time() > deadline:
            sys.exit(9)
        time.sleep(0.05)
    done = [int(os.path.basename(os.path.dirname(m))) for m in glob.glob(saves + "/*/manifest.json")]
    with open(os.path.join(saves, str(max(done)), "ckpt.json")) as f:
        if json.load(f)["step"] != step:
            sys.exit(8)
print("every marker save held its checkpoint", flush=True)
"#;

#[test]
fn a_marker_save_is_complete_when_the_marker_goes_and_keep_saves_leaves_n() {
    let work = tempfile::tempdir().unwrap();
    let store = Store::file(work.path());
    let Store::File(root) = &store else {
        unreachable!()
    };
    let (ckpt, marker) = (work.path().join("ckpt"), work.path().join("save-now"));
    let script = work.path().join("marked.py");
    std::fs::write(&script, MARKED).unwrap();
    let ran = run(periscope()
        .arg("exec")
        // As in every container of an Indexed Job's pod: the worker is worker-0.
        .env("JOB_COMPLETION_INDEX", "0")
        .arg("--capture-dir")
        .arg(work.path().join("logs"))
        .arg("--artifacts")
        .arg(&ckpt)
        .arg("--artifacts-marker")
        .arg(&marker)
        .args(["--keep-saves", "2", "--storage", &store.url()])
        .args(["--experiment-id", EXPERIMENT, "--state-dir"])
        .arg(work.path().join("state"))
        .args(["--", "python3"])
        .arg(&script)
        .arg(&ckpt)
        .arg(&marker)
        .arg(root.join(SAVES)));
    ran.expect_code(0)
        .expect_output("every marker save held its checkpoint")
        .expect_output("4 save(s) while the command ran (4 on the marker)")
        .expect_output("pruned save(s) 1, 2 (--keep-saves)")
        .expect_output("unchanged, identical to save 4");
    assert!(!marker.exists());
    // Only the newest two saves are left, with nothing of the others.
    assert_eq!(store.complete_saves(), [3, 4]);
    let left: Vec<String> = std::fs::read_dir(root.join(SAVES))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n == "1" || n == "2"),
        "pruned saves leave nothing: {left:?}"
    );
    assert_eq!((store.step_in(3), store.step_in(4)), (3, 4));
}

/// How many files the push state in `state` says are stored whole in an unfinished save.
fn stored_in_state(state: &Path) -> usize {
    let file = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("artifacts-")
        })
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert!(json["save"].is_u64(), "the state names the unfinished save");
    json["files"]
        .as_object()
        .unwrap()
        .values()
        .filter(|k| k["stored"] == true)
        .count()
}

fn exec_saving(store: &Store, work: &Path, dir: &Path, script: &str) -> Command {
    let mut cmd = periscope();
    // As in every container of an Indexed Job's pod: the worker is worker-0.
    cmd.env("JOB_COMPLETION_INDEX", "0")
        .arg("exec")
        .arg("--capture-dir")
        .arg(work.join("logs"))
        .arg("--artifacts")
        .arg(dir)
        .args(["--storage", &store.url(), "--experiment-id", EXPERIMENT])
        .args(["--artifacts-concurrency", "1", "--final-save-timeout", "1s"])
        .arg("--state-dir")
        .arg(work.join("state"))
        .args(["--", "sh", "-c", script]);
    with_env(&mut cmd, &store.env());
    cmd
}

/// SIGTERM while the job runs (a pod being deleted): the final save of 1,500 files, sent one at a
/// time, is cut by --final-save-timeout, says so, and exits 6; the next start with the same state
/// folder continues that save without sending again the files it stored, and the save restores
/// byte for byte.
#[test]
fn a_final_save_cut_by_its_deadline_is_finished_by_the_next_start() {
    let store = Store::s3();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("ckpt");
    let mut expected = BTreeMap::new();
    for i in 0..1500 {
        let rel = format!("shard-{:02}/part-{i:04}.bin", i % 10);
        let body: Vec<u8> = (0..2000u32).map(|b| (b * 7 + i) as u8).collect();
        std::fs::create_dir_all(dir.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(dir.join(&rel), &body).unwrap();
        expected.insert(rel, body);
    }
    let ready = work.path().join("ready");
    let script = format!("touch {}; sleep 600", ready.display());
    let out = crate::harness::sigterm_when_ready(
        &mut exec_saving(&store, work.path(), &dir, &script),
        &ready,
        Duration::from_secs(60),
    );
    let cut = Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    cut.expect_code(6)
        .expect_output("the final save was cut by --final-save-timeout")
        .expect_output("save 1 is unfinished with");
    let stored = stored_in_state(&work.path().join("state"));
    assert!(
        (1..1500).contains(&stored),
        "cut midway: {stored} files stored"
    );
    assert!(store.complete_saves().is_empty());

    let next = run(&mut exec_saving(&store, work.path(), &dir, "true"));
    next.expect_code(0)
        .expect_output("save 1: 1,500 files")
        .expect_output("already stored (continued an interrupted push)");
    // The files stored before the cut were not sent again (the start may have stored more
    // before the command ended, and the final save continued from there).
    let line = (next.stderr.lines())
        .find(|l| l.contains("save 1: 1,500 files"))
        .unwrap();
    let already: usize = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" already stored (continued an interrupted push)"))
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(
        already >= stored,
        "{already} already stored, {stored} before: {line}"
    );
    assert_eq!(store.complete_saves(), [1]);
    let restored = work.path().join("restored");
    let mut cmd = periscope();
    cmd.args(["artifacts", "restore"]).arg(&restored).args([
        "--storage",
        &store.url(),
        "--experiment-id",
        EXPERIMENT,
    ]);
    with_env(&mut cmd, &store.env());
    run(&mut cmd)
        .expect_code(0)
        .expect_output(r#"{"outcome":"restored","save":1}"#);
    assert_eq!(read_tree(&restored), expected);
}

/// `artifacts restore` as an initContainer runs it: nothing stored yet is a first start (exit 0,
/// said so); run again after a save, it restores; again, it does nothing; a folder with files of
/// its own is kept as it is.
#[test]
fn restore_says_what_it_did_and_is_idempotent() {
    let work = tempfile::tempdir().unwrap();
    let store = Store::file(work.path());
    let dir = work.path().join("ckpt");
    // The experiment `artifacts::push` pushes to.
    let restore = |into: &Path| {
        run(periscope().args(["artifacts", "restore"]).arg(into).args([
            "--storage",
            &store.url(),
            "--experiment-id",
            "exp-1",
        ]))
    };
    restore(&dir)
        .expect_code(0)
        .expect_output(r#"{"outcome":"nothing-yet","save":null}"#)
        .expect_output("nothing to restore yet");
    let model = work.path().join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(model.join("sub/w.bin"), b"weights").unwrap();
    crate::artifacts::push(&[], &model, &store.url(), &work.path().join("state"), &[])
        .expect_code(0);
    restore(&dir)
        .expect_code(0)
        .expect_output(r#"{"outcome":"restored","save":1}"#);
    assert_eq!(read_tree(&dir), read_tree(&model));
    assert!(!dir.join(".periscope-restore").exists());
    restore(&dir)
        .expect_code(0)
        .expect_output(r#"{"outcome":"already-there","save":1}"#);
    std::fs::write(dir.join("newer.bin"), b"written since").unwrap();
    restore(&dir)
        .expect_code(0)
        .expect_output(r#"{"outcome":"kept-local","save":1}"#);
    assert_eq!(
        std::fs::read(dir.join("newer.bin")).unwrap(),
        b"written since"
    );
}

/// A native sidecar saves the folder while the job runs (the same saves as `exec` and `run`),
/// keeps the newest two, and records in the metastore the saves it kept.
#[test]
fn a_sidecar_saves_while_the_job_runs_and_records_the_saves_it_keeps() {
    let work = tempfile::tempdir().unwrap();
    let store = Store::file(work.path());
    let (ckpt, state) = (work.path().join("ckpt"), work.path().join("state"));
    let exit_file = work.path().join("exit-code");
    std::fs::create_dir_all(&ckpt).unwrap();
    let sidecar = crate::artifacts::sidecar_saving;
    let child = sidecar(&store.url(), (EXPERIMENT, "worker-0"), work.path(), &ckpt)
        .args(["--artifacts-every", "200ms", "--keep-saves", "2"])
        .env("PERISCOPE_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for step in 1..=3 {
        std::fs::write(ckpt.join("ckpt.tmp"), format!("{{\"step\": {step}}}")).unwrap();
        std::fs::rename(ckpt.join("ckpt.tmp"), ckpt.join("ckpt.json")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while store
            .complete_saves()
            .last()
            .and_then(|n| store.checkpoint_in(*n))
            != Some(step)
        {
            assert!(
                Instant::now() < deadline,
                "step {step} was not saved in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::fs::write(&exit_file, "0\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 save(s) while the command ran (0 on the marker), the last save 3")
            && stderr.contains("pruned save(s) 1 (--keep-saves)")
            && stderr.contains("unchanged, identical to save 3"),
        "{stderr}"
    );
    assert_eq!(store.complete_saves(), [2, 3]);
    let params = run(periscope()
        .args(["metrics", "show", EXPERIMENT, "--params", "--state-dir"])
        .arg(&state));
    params
        .expect_code(0)
        .expect_output("artifacts.2")
        .expect_output("artifacts.3")
        .refute_output("artifacts.1");
}

/// The commands of `manifests/overlays/checkpoints` as two pods in a row run them (volumes mapped
/// to folders): the first pod's restore finds nothing yet, its training container saves on the
/// marker the script touches; the second pod, on fresh volumes, restores that checkpoint.
#[test]
fn the_checkpoints_overlay_commands_save_and_restore_across_pods() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/overlays/checkpoints/checkpoints.yaml"
    );
    let patch: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).expect("the overlay parses");
    let spec = &patch["spec"]["template"]["spec"];
    let container = |list: &str, name: &str, field: &str| -> Vec<String> {
        let c = (spec[list].as_array().unwrap().iter())
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {list}"));
        (c[field].as_array().unwrap().iter())
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let restore_args = container("initContainers", "periscope-restore", "args");
    let training = container("containers", "training", "command");
    assert_eq!(training[..2], ["/periscope/bin/periscope", "exec"]);
    let wrapper = &training[2..training.iter().position(|a| a == "--").unwrap()];

    let work = tempfile::tempdir().unwrap();
    let store = Store::file(work.path());
    let pod = |n: u32| work.path().join(format!("pod-{n}"));
    // A volume's mountPath becomes a folder of the pod.
    let map = |pod: &Path, arg: &str| {
        ["/checkpoints", "/periscope"]
            .iter()
            .find_map(|mount| {
                let rest = arg.strip_prefix(mount)?;
                Some(format!("{}{mount}{rest}", pod.display()))
            })
            .unwrap_or_else(|| arg.to_string())
    };
    // The container's environment (the ConfigMap's storage, the Job's name, the overlay's
    // CHECKPOINT_DIR) and, for the script, where the marker is.
    let container_run = |pod: &Path, args: &[String], extra: &[&str]| {
        std::fs::create_dir_all(pod.join("periscope")).unwrap();
        let mut cmd = periscope();
        cmd.args(args.iter().map(|a| map(pod, a)))
            .args(extra)
            .env("PERISCOPE_STORAGE", store.url())
            .env("JOB_ID", "training-job")
            .env("JOB_COMPLETION_INDEX", "0")
            .env("CHECKPOINT_DIR", map(pod, "/checkpoints"))
            .env("MARKER", map(pod, "/periscope/save-now"));
        run(&mut cmd)
    };
    container_run(&pod(1), &restore_args, &[])
        .expect_code(0)
        .expect_output(r#"{"outcome":"nothing-yet","save":null}"#);
    let script = "echo '{\"step\": 40}' > \"$CHECKPOINT_DIR/ckpt.tmp\" && \
                  mv \"$CHECKPOINT_DIR/ckpt.tmp\" \"$CHECKPOINT_DIR/ckpt.json\" && \
                  touch \"$MARKER\" && while [ -e \"$MARKER\" ]; do sleep 0.1; done";
    assert!(wrapper.iter().any(|a| a == "/periscope/save-now"));
    let mut training_args = wrapper.to_vec();
    training_args.insert(0, "exec".into());
    container_run(&pod(1), &training_args, &["--", "sh", "-c", script])
        .expect_code(0)
        .expect_output("1 save(s) while the command ran (1 on the marker)");
    let Store::File(root) = &store else {
        unreachable!()
    };
    let saves = root.join("training-job/worker-0/artifacts");
    assert!(saves.join("1/manifest.json").exists());

    container_run(&pod(2), &restore_args, &[])
        .expect_code(0)
        .expect_output(r#"{"outcome":"restored","save":1}"#);
    let restored = std::fs::read_to_string(pod(2).join("checkpoints/ckpt.json")).unwrap();
    assert_eq!(restored.trim(), "{\"step\": 40}");
}
