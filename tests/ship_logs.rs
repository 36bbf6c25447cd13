//! `periscope sidecar` log shipping: exactly once across `kill -9`, rotation (rename and
//! copytruncate), storage outages and SIGTERM drains, checked byte for byte with `logs cat`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::harness::azurite::Azurite;
use crate::harness::proxy::Proxy;
use crate::harness::s3::S3Server;
use crate::harness::{periscope, run};

/// How the test writer rotates its log.
#[derive(Clone, Copy)]
enum Rotation {
    /// Alternate: rename the file away and create a new one, then copy it and truncate in place.
    RenameAndCopytruncate,
}

/// Writes numbered lines to `dir/app.log` at about `rate` bytes/s, rotating every `rotate_every`
/// bytes, until `total` bytes were written. Returns every byte written to the path, in order.
fn write_log(
    dir: &Path,
    total: usize,
    rotate_every: usize,
    rate: usize,
    _rotation: Rotation,
) -> Vec<u8> {
    let path = dir.join("app.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut written = Vec::with_capacity(total + 4096);
    let mut since_rotation = 0usize;
    let mut rotations = 0;
    let start = Instant::now();
    let mut i = 0u64;
    let mut batch = Vec::with_capacity(64 * 1024);
    while written.len() < total {
        batch.clear();
        while batch.len() < 64 * 1024 {
            // Lines of varied length; some long, to cross chunk boundaries mid-line.
            let pad = (i % 97) as usize * if i % 1000 == 0 { 50 } else { 1 };
            writeln!(batch, "{i:010} {}", "x".repeat(pad)).unwrap();
            i += 1;
        }
        file.write_all(&batch).unwrap();
        written.extend_from_slice(&batch);
        since_rotation += batch.len();
        if since_rotation >= rotate_every {
            since_rotation = 0;
            rotations += 1;
            let rotated = dir.join(format!("app.log.{rotations}"));
            if rotations % 2 == 1 {
                fs::rename(&path, &rotated).unwrap();
                file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
            } else {
                fs::copy(&path, &rotated).unwrap();
                file.set_len(0).unwrap();
            }
        }
        // Pace the writer so a restart window never spans two rotations.
        let due = Duration::from_secs_f64(written.len() as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    file.sync_all().unwrap();
    written
}

struct Sidecar {
    storage: String,
    glob: String,
    state: PathBuf,
    exit_file: PathBuf,
    env: Vec<(&'static str, String)>,
    chunk_age: &'static str,
}

impl Sidecar {
    fn command(&self) -> Command {
        let mut cmd = periscope();
        cmd.args([
            "sidecar",
            "--storage",
            &self.storage,
            "--logs",
            &self.glob,
            "--state-dir",
        ])
        .arg(&self.state)
        .args(["--experiment-id", "exp-1", "--worker", "worker-0"])
        .args([
            "--chunk-bytes",
            "1MiB",
            "--chunk-age",
            self.chunk_age,
            "--poll-interval",
            "0.1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--exit-when-file")
        .arg(&self.exit_file)
        .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        cmd
    }

    /// Starts a sidecar whose stderr is appended to `<state>.stderr`, so nothing blocks on a
    /// full pipe and the test can read what every run said.
    fn spawn(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_log())
            .unwrap();
        self.command().stderr(log).spawn().unwrap()
    }

    fn stderr_log(&self) -> PathBuf {
        self.state.with_extension("stderr")
    }

    /// Runs until it exits by itself; returns (exit code, stderr).
    fn finish(&self) -> (Option<i32>, String) {
        let child = self.command().spawn().unwrap();
        let out = wait_with_timeout(child, Duration::from_secs(180));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn wait_with_timeout(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sidecar did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn kill9(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// `periscope logs cat` of the test log, as bytes.
fn logs_cat(storage: &str, env: &[(&'static str, String)]) -> Vec<u8> {
    logs_cat_path(storage, env, "worker-0/logs/app.log", None)
}

#[track_caller]
fn assert_same_bytes(stored: &[u8], written: &[u8]) {
    if stored != written {
        let first = stored
            .iter()
            .zip(written)
            .position(|(a, b)| a != b)
            .unwrap_or(stored.len().min(written.len()));
        let show = |b: &[u8]| {
            String::from_utf8_lossy(&b[first.saturating_sub(40)..(first + 40).min(b.len())])
                .into_owned()
        };
        panic!(
            "stored log differs from what was written: {} vs {} bytes (sha256 {} vs {}), first difference at byte {first}:\nstored:  {:?}\nwritten: {:?}",
            stored.len(),
            written.len(),
            hex::encode(Sha256::digest(stored)),
            hex::encode(Sha256::digest(written)),
            show(stored),
            show(written)
        );
    }
}

/// Kills the sidecar at random moments while `writer` runs; returns the writer's bytes.
fn run_with_kills(
    sc: &Sidecar,
    writer: thread::JoinHandle<Vec<u8>>,
    outage: Option<&dyn Fn(bool)>,
) -> Vec<u8> {
    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut kills = 0;
    let mut outage_done = outage.is_none();
    while !writer.is_finished() {
        let mut child = sc.spawn();
        thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        if !outage_done && kills == 2 {
            let set_down = outage.unwrap();
            set_down(true);
            thread::sleep(Duration::from_secs(20));
            set_down(false);
            outage_done = true;
        }
        kill9(&mut child);
        kills += 1;
    }
    eprintln!("killed the sidecar {kills} times");
    assert!(kills >= 3, "the writer finished too fast to test restarts");
    writer.join().unwrap()
}

#[test]
fn exactly_once_across_kill9_and_rotation_to_file_storage() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let store = dir.path().join("store");
    fs::create_dir_all(&store).unwrap();
    let sc = Sidecar {
        storage: format!("file://{}", store.display()),
        glob: format!("{}/*.log", logs.display()),
        state: dir.path().join("state"),
        exit_file: dir.path().join("exit-code"),
        env: Vec::new(),
        chunk_age: "0.3",
    };
    let writer_dir = logs.clone();
    let writer = thread::spawn(move || {
        write_log(
            &writer_dir,
            200 << 20,
            12 << 20,
            12 << 20,
            Rotation::RenameAndCopytruncate,
        )
    });
    let written = run_with_kills(&sc, writer, None);
    fs::write(&sc.exit_file, "0\n").unwrap();
    let (code, stderr) = sc.finish();
    assert_eq!(code, Some(0), "final drain failed:\n{stderr}");
    assert!(!stderr.contains("lost"), "no loss expected:\n{stderr}");
    assert_same_bytes(&logs_cat(&sc.storage, &[]), &written);
    // `logs ls` shows the path with its rotated generations.
    let ran = run(periscope().args(["logs", "ls", &format!("{}/exp-1", sc.storage)]));
    ran.expect_code(0).expect_output("worker-0/logs/app.log");
}

#[test]
fn sigterm_drain_stores_lines_written_before_and_during_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let store = dir.path().join("store");
    let sc = Sidecar {
        storage: format!("file://{}", store.display()),
        glob: format!("{}/*.log", logs.display()),
        state: dir.path().join("state"),
        exit_file: dir.path().join("never"),
        env: Vec::new(),
        chunk_age: "0.3",
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (writer_dir, writer_stop) = (logs.clone(), stop.clone());
    let writer = thread::spawn(move || {
        let mut f = File::create(writer_dir.join("app.log")).unwrap();
        let mut written = Vec::new();
        let mut i = 0;
        while !writer_stop.load(Ordering::SeqCst) {
            let line = format!("step {i} loss {}\n", 1.0 / (i + 1) as f64);
            f.write_all(line.as_bytes()).unwrap();
            written.extend_from_slice(line.as_bytes());
            i += 1;
            thread::sleep(Duration::from_millis(2));
        }
        written
    });
    let child = sc.spawn();
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // The main container is gone, but its last lines are still being flushed.
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_bytes(&logs_cat(&sc.storage, &[]), &written);
}

#[test]
fn a_file_deleted_before_it_was_shipped_is_reported_as_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let mut sc = Sidecar {
        storage: format!("file://{}", dir.path().join("store").display()),
        glob: format!("{}/*.log", logs.display()),
        state: dir.path().join("state"),
        exit_file: dir.path().join("exit-code"),
        env: Vec::new(),
        chunk_age: "0.3",
    };
    fs::write(logs.join("app.log"), vec![b'a'; 1000]).unwrap();
    // A long chunk age: the sidecar reads the file but has not shipped it when it is killed.
    sc.chunk_age = "600";
    let mut child = sc.spawn();
    let state_file = sc.state.join("logs-checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(&state_file)
        .unwrap_or_default()
        .contains("\"seen_size\":1000")
    {
        assert!(
            Instant::now() < deadline,
            "sidecar never picked up the file"
        );
        thread::sleep(Duration::from_millis(50));
    }
    kill9(&mut child);
    fs::remove_file(logs.join("app.log")).unwrap();
    fs::write(&sc.exit_file, "0\n").unwrap();
    sc.chunk_age = "0.3";
    let (code, stderr) = sc.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("lost") && stderr.contains("bytes=1000"),
        "the loss must be reported:\n{stderr}"
    );
    let checkpoint = fs::read_to_string(&state_file).unwrap();
    assert!(
        checkpoint.contains("\"bytes\":1000"),
        "the loss must be recorded: {checkpoint}"
    );
}

#[test]
fn exactly_once_across_kill9_rotation_and_a_20s_s3_outage() {
    let s3 = S3Server::start();
    s3.create_bucket("logs");
    // The sidecar reaches moto through a proxy that the test takes down for 20 s: a real outage
    // (connections refused) that keeps moto's stored objects.
    let proxy = Proxy::start(format!("127.0.0.1:{}", s3.port).parse().unwrap());
    let mut env = s3.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy.url()));
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let sc = Sidecar {
        storage: "s3://logs/jobs".into(),
        glob: format!("{}/*.log", logs.display()),
        state: dir.path().join("state"),
        exit_file: dir.path().join("exit-code"),
        env: env.clone(),
        chunk_age: "0.3",
    };
    let writer_dir = logs.clone();
    let writer = thread::spawn(move || {
        write_log(
            &writer_dir,
            60 << 20,
            12 << 20,
            2 << 20,
            Rotation::RenameAndCopytruncate,
        )
    });
    let outage = |down: bool| {
        if down {
            proxy.take_down()
        } else {
            proxy.bring_up()
        }
    };
    let written = run_with_kills(&sc, writer, Some(&outage));
    fs::write(&sc.exit_file, "0\n").unwrap();
    let (code, stderr) = sc.finish();
    assert_eq!(code, Some(0), "final drain failed:\n{stderr}");
    assert!(!stderr.contains("lost"), "no loss expected:\n{stderr}");
    let earlier = fs::read_to_string(sc.stderr_log()).unwrap();
    assert!(
        earlier.contains("log upload failed"),
        "the outage was never felt:\n{earlier}"
    );
    assert!(!earlier.contains("lost"), "no loss expected:\n{earlier}");
    assert_same_bytes(&logs_cat(&sc.storage, &env), &written);
}

#[test]
fn exactly_once_across_kill9_and_rotation_to_azurite() {
    let azurite = Azurite::start();
    azurite.create_container("logs");
    let env = azurite.env();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let sc = Sidecar {
        storage: "az://logs/jobs".into(),
        glob: format!("{}/*.log", logs.display()),
        state: dir.path().join("state"),
        exit_file: dir.path().join("exit-code"),
        env: env.clone(),
        chunk_age: "0.3",
    };
    let writer_dir = logs.clone();
    let writer = thread::spawn(move || {
        write_log(
            &writer_dir,
            24 << 20,
            6 << 20,
            6 << 20,
            Rotation::RenameAndCopytruncate,
        )
    });
    let written = run_with_kills(&sc, writer, None);
    fs::write(&sc.exit_file, "0\n").unwrap();
    let (code, stderr) = sc.finish();
    assert_eq!(code, Some(0), "final drain failed:\n{stderr}");
    assert_same_bytes(&logs_cat(&sc.storage, &env), &written);
}

#[test]
fn health_readiness_and_prometheus_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("app.log"), "hello\nworld\n").unwrap();
    let port = crate::harness::free_port();
    let mut child = periscope()
        .args(["sidecar", "--storage"])
        .arg(format!("file://{}", dir.path().join("store").display()))
        .arg("--logs")
        .arg(format!("{}/*.log", logs.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args([
            "--experiment-id",
            "e",
            "--chunk-age",
            "0.2",
            "--poll-interval",
            "0.1",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::harness::rawhttp::wait_for_port(port, "sidecar", Duration::from_secs(20));
    let get = |path: &str| crate::harness::rawhttp::request(port, "GET", path, &[], b"");
    assert_eq!(get("/healthz").status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = get("/metrics");
        if m.body.contains("periscope_log_bytes_shipped_total 12") {
            assert_eq!(m.status, 200);
            assert!(
                m.body.contains("# TYPE periscope_backlog_bytes gauge"),
                "{}",
                m.body
            );
            assert!(
                m.body.contains("periscope_log_bytes_lost_total 0"),
                "{}",
                m.body
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 12 bytes never showed as shipped:\n{}",
            m.body
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get("/readyz").status, 200);
    kill9(&mut child);
}

/// Debian installs logrotate in /usr/sbin, which a non-root PATH may lack.
fn logrotate_bin() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/logrotate");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("logrotate")
    }
}

/// A log written line by line by an application that real `logrotate` rotates. Every line is
/// numbered, so a line lost or stored twice shows. Like a real application, the writer reopens
/// its file after a `create` rotation, keeps writing through its handle under `copytruncate`,
/// and (with a banner) starts every new file with the same banner.
struct RotatedLog {
    dir: PathBuf,
    conf: PathBuf,
    state: PathBuf,
    reopen: bool,
    /// `dateext` with seconds in `dateformat`: rotations are a second apart, so names differ.
    dated: bool,
    banner: Option<Vec<u8>>,
    file: File,
    written: Vec<u8>,
    line: u64,
    rotations: u32,
}

impl RotatedLog {
    /// `options` are the lines of the logrotate stanza (e.g. `create`, `compress`).
    fn new(root: &Path, options: &[&str], banner: Option<Vec<u8>>) -> RotatedLog {
        let dir = root.join("logs");
        fs::create_dir_all(&dir).unwrap();
        let conf = root.join("logrotate.conf");
        fs::write(
            &conf,
            format!(
                "{}/app.log {{\n    missingok\n{}}}\n",
                dir.display(),
                options
                    .iter()
                    .map(|o| format!("    {o}\n"))
                    .collect::<String>()
            ),
        )
        .unwrap();
        let path = dir.join("app.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut log = RotatedLog {
            dir,
            conf,
            state: root.join("logrotate.state"),
            reopen: !options.contains(&"copytruncate"),
            dated: options.contains(&"dateext"),
            banner,
            file,
            written: Vec::new(),
            line: 0,
            rotations: 0,
        };
        log.write_banner();
        log
    }

    fn write_banner(&mut self) {
        if let Some(b) = self.banner.clone() {
            self.file.write_all(&b).unwrap();
            self.written.extend_from_slice(&b);
        }
    }

    fn write_lines(&mut self, n: usize) {
        let mut batch = Vec::new();
        for _ in 0..n {
            // Lines of varied length, some long, so chunks end mid-line.
            let pad = (self.line % 89) as usize * if self.line % 500 == 0 { 40 } else { 1 };
            writeln!(batch, "line {:09} {}", self.line, "x".repeat(pad)).unwrap();
            self.line += 1;
        }
        self.file.write_all(&batch).unwrap();
        self.written.extend_from_slice(&batch);
    }

    /// `logrotate -f -s STATE CONF`, as cron would run it; then the application carries on.
    fn rotate(&mut self) {
        if self.dated {
            thread::sleep(Duration::from_millis(1100));
        }
        let out = Command::new(logrotate_bin())
            .args(["-f", "-s"])
            .arg(&self.state)
            .arg(&self.conf)
            .output()
            .expect("logrotate runs (tests/run installs it)");
        assert!(
            out.status.success(),
            "logrotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.rotations += 1;
        if self.reopen {
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("app.log"))
                .unwrap();
        }
        self.write_banner();
    }
}

/// Kills `child` with -9 and lets a new sidecar drain what is left, as a restarted pod would.
/// Returns what the draining sidecar said.
fn kill_and_drain(sc: &Sidecar, child: &mut Child) -> String {
    kill9(child);
    fs::write(&sc.exit_file, "0\n").unwrap();
    let (code, stderr) = sc.finish();
    assert_eq!(code, Some(0), "final drain failed:\n{stderr}");
    stderr
}

/// A sidecar storing to `root/store` what `glob` matches, its state and exit file in `root`.
fn folder_sidecar(root: &Path, glob: &str) -> Sidecar {
    Sidecar {
        storage: format!("file://{}", root.join("store").display()),
        glob: glob.to_string(),
        state: root.join("state"),
        exit_file: root.join("exit-code"),
        env: Vec::new(),
        chunk_age: "0.2",
    }
}

/// The sidecar for a glob that matches `app.log` and every rotated name of it.
fn rotation_sidecar(root: &Path) -> Sidecar {
    logs_sidecar(root, "app.log*")
}

/// A [`folder_sidecar`] for `pattern` in the folder `root/logs`.
fn logs_sidecar(root: &Path, pattern: &str) -> Sidecar {
    folder_sidecar(root, &format!("{}/{pattern}", root.join("logs").display()))
}

/// Compares what `logs cat` gave with what was written, line by line, naming lines lost and
/// lines stored twice.
#[track_caller]
fn assert_same_lines(stored: &[u8], written: &[u8]) {
    if stored == written {
        return;
    }
    let (s, w) = (line_counts(stored), line_counts(written));
    let doubled = s
        .iter()
        .filter(|(l, n)| **n > w.get(*l).copied().unwrap_or(0))
        .count();
    let lost = w
        .iter()
        .filter(|(l, n)| **n > s.get(*l).copied().unwrap_or(0))
        .count();
    let first = stored
        .split(|&c| c == b'\n')
        .zip(written.split(|&c| c == b'\n'))
        .position(|(a, b)| a != b);
    panic!(
        "stored log differs from what was written: {} vs {} bytes, {} vs {} lines, {lost} lines lost, {doubled} lines stored too often, first different line: {first:?}",
        stored.len(),
        written.len(),
        stored.split(|&c| c == b'\n').count(),
        written.split(|&c| c == b'\n').count(),
    );
}

fn line_counts(b: &[u8]) -> std::collections::HashMap<&[u8], usize> {
    let mut m = std::collections::HashMap::new();
    for l in b.split(|&c| c == b'\n') {
        *m.entry(l).or_default() += 1;
    }
    m
}

/// `logs ls --json` of the test worker.
fn logs_ls_json(storage: &str) -> Vec<serde_json::Value> {
    let ran = run(periscope().args(["logs", "ls", "--json", &format!("{storage}/exp-1")]));
    ran.expect_code(0);
    ran.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `logs cat` of one path of the test experiment (as `logs ls` prints it), maybe one generation
/// of it.
fn logs_cat_path(
    storage: &str,
    env: &[(&'static str, String)],
    path: &str,
    generation: Option<u64>,
) -> Vec<u8> {
    let mut cmd = periscope();
    cmd.args(["logs", "cat", &format!("{storage}/exp-1/{path}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    if let Some(g) = generation {
        cmd.args(["--generation", &g.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "logs cat {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The content of a rotated file on disk (decompressed for a `.gz`).
fn content_on_disk(path: &Path) -> Vec<u8> {
    let raw = fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&raw[..]), &mut out)
            .unwrap();
        out
    } else {
        raw
    }
}

/// Every line written to `app.log` is in `logs cat …/app.log` once; the bytes stored under all
/// names add up to the bytes written (nothing is stored twice); and each rotated file still on
/// disk is, byte for byte, what `logs cat` gives for the newest generation of its name.
#[track_caller]
fn assert_stored_once(sc: &Sidecar, log: &RotatedLog) {
    let listed = logs_ls_json(&sc.storage);
    let stored = logs_cat(&sc.storage, &[]);
    let total: u64 = listed.iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    if stored != log.written || total != log.written.len() as u64 {
        eprintln!(
            "stored: {listed:#?}\nsidecar said:\n{}",
            fs::read_to_string(sc.stderr_log()).unwrap_or_default()
        );
    }
    assert_same_lines(&stored, &log.written);
    assert_eq!(
        total,
        log.written.len() as u64,
        "bytes stored under all names vs bytes written: {listed:#?}"
    );
    let mut rotated = 0;
    for entry in fs::read_dir(&log.dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name == "app.log" {
            continue;
        }
        let l = listed
            .iter()
            .find(|l| l["path"] == format!("worker-0/logs/{name}"))
            .unwrap_or_else(|| panic!("{name} is not listed: {listed:#?}"));
        let from = &l["rotated_from"];
        assert_eq!(from["path"], "app.log", "{name}: {l:#}");
        let stored = logs_cat_path(
            &sc.storage,
            &[],
            &format!("worker-0/logs/{name}"),
            from["generation"].as_u64(),
        );
        let on_disk = content_on_disk(&log.dir.join(&name));
        if stored != on_disk {
            eprintln!(
                "{name}: logs cat of generation {} differs from the file: {listed:#?}\nsidecar said:\n{}",
                from["generation"],
                fs::read_to_string(sc.stderr_log()).unwrap_or_default()
            );
        }
        assert_same_lines(&stored, &on_disk);
        rotated += 1;
    }
    assert!(rotated >= 2, "too few rotated files to check");
}

/// Waits until a sidecar started at `since` follows `app.log` as it is now: its checkpoint,
/// written since then, holds a generation of `app.log` that starts with the file's first bytes
/// and was read from that path up to its size.
fn wait_followed(sc: &Sidecar, log: &RotatedLog, since: std::time::SystemTime) {
    let path = log.dir.join("app.log");
    let size = fs::metadata(&path).unwrap().len();
    let file = sc.state.join("logs-checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fresh = fs::metadata(&file)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= since);
        let cp: serde_json::Value =
            serde_json::from_slice(&fs::read(&file).unwrap_or_default()).unwrap_or_default();
        let head = fs::read(&path).unwrap();
        let follows = cp["files"].as_array().is_some_and(|files| {
            files.iter().any(|f| {
                // Its first bytes, not only its path, inode or size: copytruncate keeps those.
                let fp_len = f["fingerprint"]["len"].as_u64().unwrap_or(0) as usize;
                f["logical"] == "app.log"
                    && f["path"] == path.to_str().unwrap()
                    && f["detached"] == false
                    && f["seen_size"].as_u64() >= Some(size)
                    && fp_len > 0
                    && fp_len <= head.len()
                    && f["fingerprint"]["crc"].as_u64()
                        == Some(u64::from(crc32c::crc32c(&head[..fp_len])))
            })
        });
        if fresh && follows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar never followed app.log ({size} bytes, starting {:?}): {cp:#}\n{}",
            String::from_utf8_lossy(&head[..head.len().min(30)]),
            fs::read_to_string(sc.stderr_log()).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes, rotates with real logrotate 8 times and drains, with the sidecar running (and killed
/// with -9 and restarted between some rotations when `kills`). Each generation is seen by the
/// sidecar once (a file written and rotated away between two of its looks is stored under the
/// name it was first seen at); lines written after that are rotated sometimes at once, before
/// the sidecar read them, sometimes after it caught up, sometimes after it finished the last
/// rotated file.
fn rotate_under_the_sidecar(options: &[&str], kills: bool) {
    let dir = tempfile::tempdir().unwrap();
    let sc = rotation_sidecar(dir.path());
    let mut log = RotatedLog::new(dir.path(), options, None);
    let started = std::time::SystemTime::now();
    let mut child = sc.spawn();
    let mut rng = rand::rng();
    for round in 0..8 {
        log.write_lines(rng.random_range(100..1000));
        wait_followed(&sc, &log, started);
        log.write_lines(rng.random_range(0..2500));
        if round % 4 == 3 {
            // Long enough for the sidecar to finish the last rotated file and forget its handle:
            // its inode may then be reused by the next copy logrotate makes.
            thread::sleep(Duration::from_millis(2500));
        } else if round % 2 == 0 {
            thread::sleep(Duration::from_millis(400));
        }
        if kills && round % 3 == 1 {
            kill9(&mut child);
            log.write_lines(rng.random_range(100..1000));
            log.rotate();
            log.write_lines(rng.random_range(100..1000));
            let started = std::time::SystemTime::now();
            child = sc.spawn();
            // A file rotated twice before the sidecar ever saw it is stored under the name it
            // was first seen at: restarts must be quicker than rotations.
            wait_followed(&sc, &log, started);
        } else {
            log.rotate();
        }
    }
    log.write_lines(1000);
    thread::sleep(Duration::from_millis(500));
    let stderr = kill_and_drain(&sc, &mut child);
    let earlier = fs::read_to_string(sc.stderr_log()).unwrap_or_default();
    assert!(
        !earlier.contains("lost") && !stderr.contains("lost") && !earlier.contains("panicked"),
        "no loss or crash expected:\n{earlier}\n{stderr}"
    );
    assert_stored_once(&sc, &log);
}

#[test]
fn logrotate_create_with_a_glob_matching_rotated_names_stores_every_line_once() {
    rotate_under_the_sidecar(&["rotate 3", "create"], false);
}

#[test]
fn logrotate_copytruncate_with_a_glob_matching_rotated_names_stores_every_line_once() {
    rotate_under_the_sidecar(&["rotate 3", "copytruncate"], false);
}

#[test]
fn logrotate_compress_stores_the_gzip_of_a_rotated_file_as_a_name_not_as_bytes() {
    rotate_under_the_sidecar(&["rotate 3", "create", "compress"], false);
}

#[test]
fn logrotate_copytruncate_delaycompress_stores_every_line_once() {
    rotate_under_the_sidecar(
        &["rotate 4", "copytruncate", "compress", "delaycompress"],
        false,
    );
}

#[test]
fn logrotate_with_kill9_between_rotations_stores_every_line_once() {
    rotate_under_the_sidecar(&["rotate 5", "create", "compress"], true);
    rotate_under_the_sidecar(&["rotate 5", "copytruncate", "compress"], true);
}

/// A 4 KiB banner (longer than the fingerprint) an application writes first in every file.
fn long_banner() -> Vec<u8> {
    let mut banner = b"=== training job: model resnet50, 8 GPUs, config ".to_vec();
    banner.extend(std::iter::repeat_n(b'=', 4096 - banner.len() - 1));
    banner.push(b'\n');
    banner
}

/// Every generation starts with the same 4 KiB banner (longer than the fingerprint). While the
/// sidecar is down, copytruncate rotates the log and the application writes more than was read
/// before: the file keeps its inode, its size and its first KiB. Only its bytes past the banner
/// tell that it is another generation; the rest of the old one is in the compressed copy.
#[test]
fn generations_sharing_a_banner_are_told_apart_across_kill9_and_copytruncate() {
    let dir = tempfile::tempdir().unwrap();
    let sc = rotation_sidecar(dir.path());
    let mut log = RotatedLog::new(
        dir.path(),
        &["rotate 3", "copytruncate", "compress"],
        Some(long_banner()),
    );
    let mut child = sc.spawn();
    log.write_lines(2000);
    let state_file = sc.state.join("logs-checkpoint.json");
    let shipped = format!("\"shipped\":{}", log.written.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&state_file)
        .unwrap_or_default()
        .contains(&shipped)
    {
        assert!(
            Instant::now() < deadline,
            "the first lines were never shipped"
        );
        thread::sleep(Duration::from_millis(50));
    }
    kill9(&mut child);
    log.write_lines(300); // read by nobody before the rotation
    log.rotate();
    log.write_lines(6000);
    let mut child = sc.spawn();
    thread::sleep(Duration::from_millis(1500));
    log.rotate();
    log.write_lines(500);
    thread::sleep(Duration::from_millis(500));
    kill_and_drain(&sc, &mut child);
    assert_stored_once(&sc, &log);
}

/// The sidecar starts where logrotate already left rotated files: those are files of their own
/// (first seen at their rotated names), yet the copies logrotate later makes at the same names
/// hold the log's bytes, and are stored once, as links.
#[test]
fn copies_made_at_names_first_seen_as_files_of_their_own_are_stored_once() {
    rotations_before_and_under_the_sidecar(
        &["rotate 3", "copytruncate"],
        "app.log*",
        &["app.log.1", "app.log.2", "app.log.3"],
    );
}

/// As above with a 4 KiB banner at the top of every file: the sidecar's look at the log is
/// satisfied by any generation (they share their first KiB), so rotations often come within
/// milliseconds, before the sidecar has read past the banner of the generation between them.
#[test]
fn copytruncate_rotations_of_logs_sharing_a_banner_are_stored_once_in_order() {
    rotations_of(
        &["rotate 3", "copytruncate", "compress", "delaycompress"],
        "app.log*",
        &["app.log.1", "app.log.2.gz", "app.log.3.gz"],
        Some(long_banner()),
    );
}

/// logrotate's `extension .log` puts the number before the extension (`app.1.log`, compressed
/// `app.1.log.gz`): those are rotated names of `app.log` too, also where the sidecar first saw
/// them as files of their own, whether logrotate renames and compresses the log or copies it.
#[test]
fn logrotate_extension_names_first_seen_at_start_are_stored_once() {
    rotations_before_and_under_the_sidecar(
        &["rotate 3", "create", "compress", "extension .log"],
        "app*.log*",
        &["app.1.log.gz", "app.2.log.gz", "app.3.log.gz"],
    );
    rotations_before_and_under_the_sidecar(
        &[
            "rotate 3",
            "copytruncate",
            "compress",
            "delaycompress",
            "extension .log",
        ],
        "app*.log*",
        &["app.1.log", "app.2.log.gz", "app.3.log.gz"],
    );
    rotations_before_and_under_the_sidecar(
        &[
            "rotate 3",
            "create",
            "compress",
            "extension .log",
            "dateext",
            "dateformat -%Y%m%d-%s",
        ],
        "app*.log*",
        &["app-*.log.gz"; 3],
    );
}

/// At start, `app.log` holds only the banner its rotated copy `app.1.log` (which sorts before it)
/// starts with: it is the log, not a copy of `app.1.log` being written.
#[test]
fn a_log_holding_only_its_banner_at_start_is_not_taken_for_a_copy_of_its_rotated_name() {
    let dir = tempfile::tempdir().unwrap();
    let sc = logs_sidecar(dir.path(), "app*.log*");
    let options = [
        "rotate 3",
        "copytruncate",
        "compress",
        "delaycompress",
        "extension .log",
    ];
    let mut log = RotatedLog::new(dir.path(), &options, Some(long_banner()));
    for _ in 0..2 {
        log.write_lines(1000);
        log.rotate();
    }
    let rotated = fs::read(log.dir.join("app.1.log")).unwrap();
    let since = log.written.len() - long_banner().len();
    let mut child = sc.spawn();
    // Long enough for the sidecar to see the log holding only its banner.
    thread::sleep(Duration::from_millis(500));
    log.write_lines(2000);
    thread::sleep(Duration::from_millis(500));
    let drain = kill_and_drain(&sc, &mut child);
    for (name, written) in [("app.log", &log.written[since..]), ("app.1.log", &rotated)] {
        let stored = logs_cat_path(&sc.storage, &[], &format!("worker-0/logs/{name}"), None);
        if stored != *written {
            eprintln!(
                "{name}: {:#?}\nsidecar said:\n{}\n{drain}",
                logs_ls_json(&sc.storage),
                fs::read_to_string(sc.stderr_log()).unwrap_or_default()
            );
        }
        assert_same_lines(&stored, written);
    }
}

/// Rotates `app.log` twice with `options` before the sidecar (storing what `glob`, in the logs
/// folder, matches) starts, then six times under it. Every line written since the start is in
/// `logs cat …/app.log` once, the bytes stored under all names add up to the bytes written, and
/// each rotated file on disk at the end (their names, sorted, match the patterns `rotated`) is,
/// byte for byte, the newest generation of its name.
fn rotations_before_and_under_the_sidecar(options: &[&str], glob: &str, rotated: &[&str]) {
    rotations_of(options, glob, rotated, None);
}

/// [`rotations_before_and_under_the_sidecar`], each file starting with `banner`.
fn rotations_of(options: &[&str], glob: &str, rotated: &[&str], banner: Option<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let sc = logs_sidecar(dir.path(), glob);
    let mut log = RotatedLog::new(dir.path(), options, banner);
    for _ in 0..2 {
        log.write_lines(1000);
        log.rotate();
    }
    // What `app.log` holds at start (maybe a banner) is stored under it; the rotated files there
    // at start are files of their own, stored as they are (a `.gz` compressed).
    let before_start =
        log.written.len() - fs::metadata(log.dir.join("app.log")).unwrap().len() as usize;
    let there_at_start: u64 = fs::read_dir(&log.dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "app.log")
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let started = std::time::SystemTime::now();
    let mut child = sc.spawn();
    for _ in 0..6 {
        log.write_lines(2000);
        wait_followed(&sc, &log, started);
        log.rotate();
    }
    log.write_lines(500);
    thread::sleep(Duration::from_millis(500));
    let drain = kill_and_drain(&sc, &mut child);
    let listed = logs_ls_json(&sc.storage);
    let total: u64 = listed.iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    assert_eq!(
        total,
        there_at_start + (log.written.len() - before_start) as u64,
        "bytes stored under all names vs bytes there at start and written since: {listed:#?}\nsidecar said:\n{}\n{drain}",
        fs::read_to_string(sc.stderr_log()).unwrap_or_default()
    );
    let stored = logs_cat_path(&sc.storage, &[], "worker-0/logs/app.log", None);
    if stored != log.written[before_start..] {
        eprintln!(
            "stored: {listed:#?}\nsidecar said:\n{}\n{drain}",
            fs::read_to_string(sc.stderr_log()).unwrap_or_default()
        );
    }
    assert_same_lines(&stored, &log.written[before_start..]);
    let mut on_disk: Vec<String> = fs::read_dir(&log.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "app.log")
        .collect();
    on_disk.sort();
    assert!(
        on_disk.len() == rotated.len()
            && on_disk
                .iter()
                .zip(rotated)
                .all(|(n, p)| glob::Pattern::new(p).unwrap().matches(n)),
        "the rotated names logrotate left: {on_disk:?}, expected {rotated:?}"
    );
    for name in &on_disk {
        let l = listed
            .iter()
            .find(|l| l["path"] == format!("worker-0/logs/{name}"))
            .unwrap_or_else(|| panic!("{name} is not listed: {listed:#?}"));
        assert_eq!(l["rotated_from"]["path"], "app.log", "{name}: {l:#}");
        let newest = l["rotated_from"]["generation"].as_u64();
        let stored = logs_cat_path(&sc.storage, &[], &format!("worker-0/logs/{name}"), newest);
        assert_same_lines(&stored, &content_on_disk(&log.dir.join(name)));
    }
}

/// Every generation starts with the same 4 KiB banner. The sidecar has read only the banner of
/// the newest generation when it is paused (SIGSTOP, as a starved or swapped-out process is);
/// meanwhile the application writes past the banner and real logrotate rotates with
/// `copytruncate` once, then (the second time) twice, and the application writes on. Each time
/// the log keeps its inode, its first KiB and the bytes before the sidecar's read offset; only
/// the copies tell what happened. Every line is stored once, in order, under `app.log`, and each
/// rotated name is its own generation.
#[test]
fn banner_generations_rotated_while_the_sidecar_was_paused_are_stored_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sc = rotation_sidecar(dir.path());
    let banner = long_banner();
    let mut log = RotatedLog::new(
        dir.path(),
        &["rotate 4", "copytruncate", "compress", "delaycompress"],
        Some(banner.clone()),
    );
    let mut child = sc.spawn();
    let mut generation = 1;
    for rotations in [1, 2] {
        shipped(&sc, generation, banner.len() as u64);
        pause(&child);
        for _ in 0..rotations {
            log.write_lines(2000);
            log.rotate();
        }
        log.write_lines(1500);
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        generation += rotations;
        // Once the new generation is read to its end, a plain rotation starts the next one with
        // its banner.
        shipped(
            &sc,
            generation,
            fs::metadata(log.dir.join("app.log")).unwrap().len(),
        );
        log.rotate();
        generation += 1;
    }
    log.write_lines(500);
    kill_and_drain(&sc, &mut child);
    assert_stored_once(&sc, &log);
}

/// Stops `child` (SIGSTOP) and waits until the kernel says it is stopped.
fn pause(child: &Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    // The state is the field after the command name in parentheses.
    while !fs::read_to_string(&stat)
        .unwrap_or_default()
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
    {
        assert!(Instant::now() < deadline, "the sidecar did not stop");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The sidecar's checkpoint entry of `app.log` (at its own path) of `generation`, once there is
/// one that satisfies `ok`; fails after 30 s.
fn wait_generation(sc: &Sidecar, generation: u64, ok: impl Fn(&serde_json::Value) -> bool) {
    let file = sc.state.join("logs-checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cp: serde_json::Value =
            serde_json::from_slice(&fs::read(&file).unwrap_or_default()).unwrap_or_default();
        let found = cp["files"].as_array().is_some_and(|files| {
            files.iter().any(|f| {
                f["logical"] == "app.log"
                    && f["generation"].as_u64() == Some(generation)
                    && f["detached"] == false
                    && ok(f)
            })
        });
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} of app.log never got there: {cp:#}\n{}",
            fs::read_to_string(sc.stderr_log()).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the sidecar has stored the first `bytes` of `generation` of `app.log`.
fn shipped(sc: &Sidecar, generation: u64, bytes: u64) {
    wait_generation(sc, generation, |f| f["shipped"].as_u64() == Some(bytes));
}

/// A log name given with a leading `/` (copied from a path), as a second argument, or without
/// the worker and `logs/`, is found; a name that is not stored gets the names that are.
#[test]
fn logs_cat_finds_a_name_given_with_a_slash_or_says_which_names_exist() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("app.log"), "step 1 loss 0.5\n").unwrap();
    fs::write(logs.join("app.log.1"), "step 0 loss 0.9\n").unwrap();
    let sc = folder_sidecar(dir.path(), &format!("{}/app.log*", logs.display()));
    let mut child = sc.spawn();
    thread::sleep(Duration::from_millis(1500));
    kill_and_drain(&sc, &mut child);
    let exp = format!("{}/exp-1", sc.storage);
    for args in [
        vec![exp.clone(), "/app.log".into()],
        vec![format!("{exp}/"), "worker-0/logs/app.log".into()],
        vec![format!("{exp}/worker-0/logs//app.log")],
        vec![format!("{exp}/app.log")],
        vec![format!("{exp}/worker-0"), "/app.log".into()],
    ] {
        let ran = run(periscope().args(["logs", "cat"]).args(&args));
        ran.expect_code(0);
        assert_eq!(ran.stdout, "step 1 loss 0.5\n", "{args:?}");
    }
    run(periscope().args(["logs", "cat", &exp, "/app.log.2"]))
        .expect_code(3)
        .expect_output("no stored log is named `app.log.2`")
        .expect_output("worker-0/logs/app.log, worker-0/logs/app.log.1");
}

/// Unmounts a filesystem mounted for a test when dropped.
pub(crate) struct Mounted(pub(crate) PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The port a sidecar started with `--listen 127.0.0.1:0` serves its probes on, from its log.
fn probe_port(sc: &Sidecar) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let said = fs::read_to_string(sc.stderr_log()).unwrap_or_default();
        let port = said
            .lines()
            .filter(|l| l.contains("serving /healthz"))
            .filter_map(|l| l.rsplit_once("addr=127.0.0.1:"))
            .filter_map(|(_, p)| p.split_whitespace().next()?.parse().ok())
            .next_back();
        if let Some(port) = port {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar never served its probes:\n{said}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The state folder fills up while logs are written: the sidecar keeps running, says once that
/// it cannot save its checkpoint (and in /readyz and /metrics), and once space returns stores
/// every line once, also what was written meanwhile.
#[test]
fn a_full_state_folder_makes_log_uploads_wait_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let sc = logs_sidecar(dir.path(), "app.log");
    fs::create_dir_all(&sc.state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&sc.state)
        .status()
        .expect("cannot run mount");
    assert!(
        mounted.success(),
        "this test mounts a 48 MiB tmpfs as the state folder: run it as root"
    );
    let _mounted = Mounted(sc.state.clone());
    let mut log = RotatedLog::new(dir.path(), &["copytruncate"], None);
    log.write_lines(1000);
    let mut child = sc.spawn();
    let port = probe_port(&sc);
    let get = |path: &str| crate::harness::rawhttp::request(port, "GET", path, &[], b"");
    let shipped = |n: usize| {
        get("/metrics")
            .body
            .contains(&format!("periscope_log_bytes_shipped_total {n}\n"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shipped(log.written.len()) {
        assert!(
            Instant::now() < deadline,
            "the first lines were never shipped"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Fill the state folder.
    let filler = sc.state.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    log.write_lines(3000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = get("/readyz");
        if ready.status == 503 {
            assert!(
                ready.body.contains("cannot save the log checkpoint"),
                "{}",
                ready.body
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said the checkpoint cannot be saved"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let metrics = get("/metrics").body;
    assert!(
        metrics.contains("periscope_log_checkpoint_failing 1"),
        "{metrics}"
    );
    log.write_lines(2000);
    thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the sidecar exited on a full state folder"
    );
    // Space returns.
    fs::remove_file(&filler).unwrap();
    log.write_lines(500);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get("/readyz").status != 200 || !shipped(log.written.len()) {
        assert!(
            Instant::now() < deadline,
            "log uploads never resumed: {}",
            get("/metrics").body
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(get("/metrics")
        .body
        .contains("periscope_log_checkpoint_failing 0"));
    kill_and_drain(&sc, &mut child);
    let said = fs::read_to_string(sc.stderr_log()).unwrap();
    assert_eq!(
        said.matches("cannot save the log checkpoint").count(),
        1,
        "said once:\n{said}"
    );
    assert!(said.contains("log uploads resume"), "{said}");
    assert_same_lines(&logs_cat(&sc.storage, &[]), &log.written);
    let total: u64 = logs_ls_json(&sc.storage)
        .iter()
        .map(|l| l["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(total, log.written.len() as u64, "nothing stored twice");
}

#[test]
fn a_log_symlink_that_leaves_the_log_folder_is_not_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let secret_dir = dir.path().join("etc");
    fs::create_dir_all(&logs).unwrap();
    fs::create_dir_all(&secret_dir).unwrap();
    fs::write(
        secret_dir.join("shadow"),
        "root:$6$secret-hash:19000:0:99999:7:::\n",
    )
    .unwrap();
    fs::write(secret_dir.join("key.log"), "a private key\n").unwrap();
    // What a hostile training container can put into the folder it writes logs to.
    std::os::unix::fs::symlink(secret_dir.join("shadow"), logs.join("shadow.log")).unwrap();
    std::os::unix::fs::symlink(&secret_dir, logs.join("etc")).unwrap();
    std::os::unix::fs::symlink("../etc/shadow", logs.join("relative.log")).unwrap();
    fs::write(logs.join("app.log"), "step 1 loss 0.5\n").unwrap();
    std::os::unix::fs::symlink("app.log", logs.join("alias.log")).unwrap();
    let sc = folder_sidecar(dir.path(), &format!("{}/**/*.log", logs.display()));
    let mut child = sc.spawn();
    thread::sleep(Duration::from_millis(1500));
    let stderr = kill_and_drain(&sc, &mut child);
    let store = dir.path().join("store");
    let ran = run(periscope().args(["logs", "ls", &format!("file://{}/exp-1", store.display())]));
    ran.expect_code(0)
        .expect_output("worker-0/logs/app.log")
        .refute_output("shadow")
        .refute_output("relative")
        .refute_output("key.log");
    let stored = String::from_utf8_lossy(
        &std::process::Command::new("grep")
            .args(["-rl", "secret-hash"])
            .arg(&store)
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(stored.is_empty(), "secret stored in {stored}");
    let said = fs::read_to_string(sc.stderr_log()).unwrap() + &stderr;
    for name in ["shadow.log", "relative.log", "logs/etc"] {
        assert!(
            said.contains(name) && said.contains("leaves the glob's base folder"),
            "{name} must be reported:\n{said}"
        );
    }
    assert_eq!(
        fs::read_to_string(sc.stderr_log())
            .unwrap()
            .matches("shadow.log")
            .count(),
        1,
        "said once per run:\n{said}"
    );
}

#[test]
fn every_name_logs_ls_prints_reads_back_and_a_non_utf8_name_is_reported() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(logs.join("日本")).unwrap();
    let names = [
        "训练日志.log",
        "日本/ログ.log",
        "café.log",
        "what?.log",
        "hash#1.log",
        "100%.log",
        "a b.log",
        "[x]{y}.log",
        "back\\slash.log",
    ];
    for (i, n) in names.iter().enumerate() {
        fs::write(logs.join(n), format!("content of {i}: {n}\n")).unwrap();
    }
    let bad = std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9.log");
    fs::write(logs.join(bad), "not shipped\n").unwrap();
    let sc = folder_sidecar(dir.path(), &format!("{}/**/*.log", logs.display()));
    fs::write(&sc.exit_file, "0\n").unwrap();
    let (code, stderr) = sc.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("not UTF-8").count(),
        1,
        "the name that cannot be stored is reported once:\n{stderr}"
    );
    let listed = logs_ls_json(&sc.storage);
    assert_eq!(listed.len(), names.len(), "{listed:#?}");
    for l in &listed {
        let path = l["path"].as_str().unwrap();
        let stored = String::from_utf8(logs_cat_path(&sc.storage, &[], path, None)).unwrap();
        let i: usize = stored
            .strip_prefix("content of ")
            .and_then(|s| s.split(':').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{path}: {stored}"));
        assert_eq!(stored, format!("content of {i}: {}\n", names[i]), "{path}");
    }
    // The table prints the same spelling, and the unescaped one works too.
    let ran = run(periscope().args(["logs", "ls", &format!("{}/exp-1", sc.storage)]));
    ran.expect_code(0)
        .expect_output("worker-0/logs/训练日志.log")
        .expect_output("worker-0/logs/what%3F.log");
    assert_eq!(
        logs_cat_path(&sc.storage, &[], "worker-0/logs/日本/ログ.log", None),
        "content of 1: 日本/ログ.log\n".as_bytes()
    );
}
